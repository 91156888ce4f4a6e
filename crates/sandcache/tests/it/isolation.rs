//! A hostile site against `sandcache serve` run as root, as in production:
//! static keys, an admin token (or none) and a credential token file in the
//! runner's environment. The site's worker tries the runner's `/proc`, the
//! token file, the runner's own files, another site's key and the admin
//! API; every attempt must fail while the site still works. Then leftovers
//! across two sites: a `setsid` process and a poisoned DENO_DIR. Then the
//! credential endpoints, closed to the worker uid in a network namespace.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use sandcache_testkit::wait_for;
use serde_json::{Value, json};

use crate::support::{bin, http, run, start_serve, start_serve_on};

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A temp dir others can pass through (the worker has another uid).
fn open_tmp() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    tmp
}

/// The body of an HTTP answer.
fn body(reply: &str) -> &str {
    reply.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

fn status_of(port: u16, token: Option<&str>) -> Value {
    let reply = http(port, "GET", "/sandbox/status", token, "").unwrap_or_default();
    serde_json::from_str(body(&reply)).unwrap_or(Value::Null)
}

fn probe_run(with_token: bool) {
    let Some(spec) = sandcache_testkit::s3::spec("isolation") else { return };
    let tmp = open_tmp();
    let endpoint = spec.endpoint.clone().expect("the test server has an endpoint");
    let aws_key_id = std::env::var("AWS_ACCESS_KEY_ID").unwrap();
    let aws_secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap();
    let admin_s3 = "ADMINS3SECRET-isolation-77";
    let admin_token = "ADMINTOKEN-isolation-88";
    let token_value = "WEBIDENTITYTOKEN-isolation-99";
    // The credential token file, mounted as the docs say: 0400, the runner's.
    let secrets = tmp.path().join("secrets");
    fs::create_dir(&secrets).unwrap();
    fs::set_permissions(&secrets, fs::Permissions::from_mode(0o755)).unwrap();
    let token_file = secrets.join("token");
    fs::write(&token_file, token_value).unwrap();
    fs::set_permissions(&token_file, fs::Permissions::from_mode(0o400)).unwrap();
    let probe = tmp.path().join("probe.py");
    fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/probe_worker.py"), &probe).unwrap();
    fs::set_permissions(&probe, fs::Permissions::from_mode(0o644)).unwrap();

    // The site already has a cache, so the deploy restores a tree. The
    // store is the bucket, as the deploy names it (the shared pool lives
    // at the store's root), and the test's prefix is part of the keys.
    let store = format!("s3://{}", spec.bucket);
    let (hostile_key, victim_key) = (format!("{}/hostile/cache", spec.prefix), format!("{}/victim/cache", spec.prefix));
    let seed = tmp.path().join("seed");
    sandcache_testkit::tree::sample_tree(&seed);
    let (code, out, err) = run(bin()
        .args(["snapshot", "--key", &hostile_key, "--store", &store, "--json", "--dir"])
        .arg(&seed)
        .env("AWS_ENDPOINT_URL", &endpoint));
    assert_eq!((code, out["ok"].as_bool()), (0, Some(true)), "{out} {err}");

    // With a token, the platform also gives the deploy credentials scoped
    // to the site, and the runner's own are wrong: the cache works only if
    // the runner uses the deploy's, and the worker sees neither.
    let scoped = with_token;
    let runner_secret = if scoped { "WRONGRUNNERSECRET-isolation-66" } else { aws_secret.as_str() };
    let mut envs = vec![
        ("AWS_ACCESS_KEY_ID", aws_key_id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", runner_secret),
        ("ADMIN_S3_SECRET_ACCESS_KEY", admin_s3),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
    ];
    let token_path = token_file.display().to_string();
    envs.push(("AWS_WEB_IDENTITY_TOKEN_FILE", &token_path));
    if with_token {
        envs.push(("SANDCACHE_ADMIN_TOKEN", admin_token));
    }
    let serve = start_serve(tmp.path(), &envs, &[]);
    let token = with_token.then_some(admin_token);
    let state = tmp.path().join("state");
    let runner_files = ["deno-dir.sandcache.lock", "deno-dir.sandcache-state.json", "deno-dir.sandcache-index.json"]
        .map(|f| state.join("cache").join(f).display().to_string())
        .join(":");
    let victim_url = format!("{endpoint}/{}/{}/victim/cache", spec.bucket, spec.prefix);
    let mut envs = json!({
        "DECO_CACHE_S3_BUCKET": spec.bucket,
        "DECO_CACHE_S3_KEY": format!("{}/hostile/cache", spec.prefix),
        "DECO_CACHE_S3_ENDPOINT": endpoint,
        "PROBE_TOKEN_FILE": token_path,
        "PROBE_RUNNER_FILES": runner_files,
        "PROBE_STATE_DIR": state.display().to_string(),
        "PROBE_BESIDE": tmp.path().join(".deno-dir.sandcache.lock").display().to_string(),
        "PROBE_VICTIM_URL": victim_url,
        "PROBE_RUNNER_PORT": serve.port.to_string(),
        "PROBE_RESTORED_FILE": tmp.path().join("deno-dir/npm/registry.npmjs.org/pkg/1.0.0/lib/index.js").display().to_string(),
    });
    if scoped {
        envs["DECO_CACHE_S3_ACCESS_KEY_ID"] = json!(aws_key_id);
        envs["DECO_CACHE_S3_SECRET_ACCESS_KEY"] = json!(aws_secret);
    }
    let deploy = json!({"site": "hostile", "runCommand": ["python3", probe.display().to_string()], "envs": envs});
    let reply = http(serve.port, "POST", "/sandbox/deploy", token, &deploy.to_string()).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    wait_for("the worker ready", 30, || status_of(serve.port, token)["worker"] == "ready");
    let st = status_of(serve.port, token);
    assert_eq!(st["cache"]["restore"]["ok"], true, "the site's cache was restored: {st}");

    // The worker's record, through the runner's proxy: it serves.
    let reply = http(serve.port, "GET", "/", None, "").unwrap();
    assert!(reply.lines().next().is_some_and(|l| l.contains(" 200 ")), "{reply}");
    let got: Value = serde_json::from_str(body(&reply)).unwrap();
    eprintln!("isolation (token: {with_token}): {}", serde_json::to_string_pretty(&got).unwrap());
    let result = |k: &str| got[k].as_str().unwrap_or_else(|| panic!("no result {k}: {got}")).to_owned();
    let denied = |k: &str| assert!(result(k).starts_with("denied"), "{k} must fail: {}", result(k));
    let allowed = |k: &str| assert!(result(k).starts_with("ok"), "{k} must work: {}", result(k));
    for k in ["runner environ", "runner mem", "runner fds", "signal runner", "token file"] {
        denied(k);
    }
    for f in runner_files.split(':') {
        denied(&format!("write {f}"));
        denied(&format!("replace {f}"));
    }
    denied("create in state dir");
    denied("create beside dir");
    denied("put another site's key");
    for k in ["admin status", "admin snapshot", "admin undeploy", "admin deploy"] {
        denied(k);
        let expected = if with_token { "401" } else { "403" };
        assert!(result(k).contains(expected), "{k}: {}", result(k));
    }
    let cred_env = result("credential env");
    for name in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "ADMIN_S3_",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "SANDCACHE_ADMIN",
        "DECO_CACHE_S3_ACCESS_KEY_ID",
        "DECO_CACHE_S3_SECRET_ACCESS_KEY",
    ] {
        assert!(!cred_env.contains(name), "{name} reached the worker's env: {cred_env}");
    }
    for k in ["write deno dir", "rewrite a restored file", "write work dir", "write home", "write tmpdir"] {
        allowed(k);
    }
    assert_eq!((got["uid"].as_u64(), got["gid"].as_u64()), (Some(10001), Some(10001)), "the default worker user");
    assert_eq!(got["groups"], json!([]), "no supplementary groups");
    assert!(got["home"].as_str().unwrap().starts_with(state.to_str().unwrap()), "its own HOME: {got}");
    let everything = body(&reply).to_owned();
    for secret in [aws_secret.as_str(), admin_s3, admin_token, token_value] {
        assert!(!everything.contains(secret), "the worker got a secret");
    }

    // Still one site, still deployed: nothing the worker called took effect.
    let st = status_of(serve.port, Some(admin_token));
    assert_eq!((st["site"].as_str(), st["deployed"].as_bool()), (Some("hostile"), Some(true)), "{st}");
    // The module the site added is snapshotted under its own key...
    let reply = http(serve.port, "POST", "/sandbox/cache/snapshot", token, "").unwrap();
    assert!(reply.starts_with("HTTP/1.1 202"), "{reply}");
    wait_for("the snapshot", 60, || status_of(serve.port, Some(admin_token))["cache"]["snapshot"]["ok"] == true);
    let check = tmp.path().join("check");
    let (_, out, err) = run(bin()
        .args(["restore", "--key", &hostile_key, "--store", &store, "--json", "--dir"])
        .arg(&check)
        .env("AWS_ENDPOINT_URL", &endpoint));
    assert_eq!(out["ok"], true, "{out} {err}");
    assert!(check.join("npm/registry.npmjs.org/added-at-run-time/1.0.0/index.js").exists());
    // ...and nothing exists under the victim's.
    let (_, out, err) = run(bin()
        .args(["restore", "--key", &victim_key, "--store", &store, "--json", "--dir"])
        .arg(tmp.path().join("victim"))
        .env("AWS_ENDPOINT_URL", &endpoint));
    assert_eq!(out["reason"], "not_found", "{out} {err}");
    let reply = http(serve.port, "DELETE", "/sandbox/deploy", token, "").unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let log = serve.stop();
    for secret in [aws_secret.as_str(), admin_s3, admin_token, token_value] {
        assert!(!log.contains(secret), "a secret reached the runner's log");
    }
    if !with_token {
        let refusal = log.lines().find(|l| l.contains("refused POST /sandbox/deploy from"));
        assert!(refusal.is_some_and(|l| l.contains("the admin API is not open to the worker")), "refusals are logged");
    }
    assert!(!log.contains("is readable by the worker"), "the token file is mounted right: {log}");
}

/// With and without an admin token, one after the other: both use the
/// default worker uid, and each deploy kills every process of that uid.
#[test]
fn a_hostile_worker_reaches_nothing_of_the_runner() {
    if !is_root() {
        eprintln!("skipping: the worker user needs root");
        return;
    }
    probe_run(true);
    probe_run(false);
}

/// The worker against a runner with no token that listens on every address
/// (`--admin-without-token`): IPv4, IPv6, v4-mapped, the pod's own
/// addresses, the review's TIME_WAIT + `SO_REUSEADDR` trick, a connection
/// used by a child after its maker closed it, a half-closed one, and an
/// undeploy sent on a socket closed at once. None gets in, and the site
/// stays deployed.
#[test]
fn the_worker_reaches_no_admin_route_by_any_socket_trick() {
    if !is_root() {
        eprintln!("skipping: the worker user needs root");
        return;
    }
    let tmp = open_tmp();
    let probe = tmp.path().join("probe_admin.py");
    fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/probe_admin.py"), &probe).unwrap();
    fs::set_permissions(&probe, fs::Permissions::from_mode(0o644)).unwrap();
    let serve = start_serve_on("[::]", tmp.path(), &[], &["--admin-without-token", "--worker-user", "20014"]);
    let deploy = json!({"site": "hostile", "runCommand": ["python3", probe.display().to_string()],
        "envs": {"PROBE_RUNNER_PORT": serve.port.to_string()}});
    let reply = http(serve.port, "POST", "/sandbox/deploy", None, &deploy.to_string()).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    wait_for("the worker ready", 60, || status_of(serve.port, None)["worker"] == "ready");
    let reply = http(serve.port, "GET", "/", None, "").unwrap();
    let got: Value = serde_json::from_str(body(&reply)).unwrap_or_else(|e| panic!("{e}: {reply}"));
    eprintln!("socket tricks: {}", serde_json::to_string_pretty(&got).unwrap());
    assert_eq!(got["uid"], 20014, "the probe ran as the worker");
    assert_eq!(got["time_wait listed"], true, "the trick's TIME_WAIT line existed: {got}");
    let mut tried = 0;
    for (name, result) in got.as_object().unwrap() {
        let Some(r) = result.as_str() else { continue };
        if name == "sent then closed" {
            continue;
        }
        tried += 1;
        assert!(r.starts_with("denied") && !r.contains(" 200 "), "{name} got in: {r}");
    }
    assert!(tried >= 7, "every trick ran: {got}");
    let st = status_of(serve.port, None);
    assert_eq!((st["site"].as_str(), st["deployed"].as_bool()), (Some("hostile"), Some(true)), "{st}");
    serve.stop();
}

/// Site A leaves a `setsid` double-forked process and a poisoned package in
/// DENO_DIR; site B, with no cache of its own, must find neither.
#[test]
fn nothing_of_one_site_survives_into_the_next() {
    if !is_root() {
        eprintln!("skipping: the worker user needs root");
        return;
    }
    let tmp = open_tmp();
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    fs::set_permissions(&out, fs::Permissions::from_mode(0o777)).unwrap();
    let store = tmp.path().join("store");
    let serve = start_serve(
        tmp.path(),
        &[],
        &["--store", store.to_str().unwrap(), "--worker-user", "20011", "--restore-timeout", "10"],
    );
    let o = out.display();
    let site_a = format!(
        "mkdir -p \"$DENO_DIR/npm/registry.npmjs.org/evil/1.0.0\" && \
         echo 'globalThis.pwned = true' > \"$DENO_DIR/npm/registry.npmjs.org/evil/1.0.0/index.js\"; \
         ( setsid sh -c 'echo $$ > {o}/leftover.pid; exec sleep 600' & ); \
         exec python3 -m http.server \"$PORT\" --bind 127.0.0.1"
    );
    let deploy = |site: &str, script: &str| {
        let body = json!({"site": site, "runCommand": ["sh", "-c", script]}).to_string();
        let reply = http(serve.port, "POST", "/sandbox/deploy", None, &body).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        wait_for("the worker ready", 30, || status_of(serve.port, None)["worker"] == "ready");
    };
    deploy("a", &site_a);
    let pid_file = out.join("leftover.pid");
    wait_for("the leftover's pid", 20, || fs::read_to_string(&pid_file).is_ok_and(|s| !s.trim().is_empty()));
    let leftover: u32 = fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    assert!(Path::new(&format!("/proc/{leftover}")).exists(), "the leftover runs");
    let reply = http(serve.port, "DELETE", "/sandbox/deploy", None, "").unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_eq!(status_of(serve.port, None)["cache"]["snapshot"]["ok"], true, "site A's cache was snapshotted");
    // Gone, and reaped: not even a zombie is left.
    wait_for("the leftover to be gone", 10, || !Path::new(&format!("/proc/{leftover}")).exists());
    assert_eq!(fs::read_dir(tmp.path().join("deno-dir")).unwrap().count(), 0, "undeploy empties DENO_DIR");

    // Site B: a miss, from an empty DENO_DIR.
    let site_b = format!(
        "find \"$DENO_DIR\" > {o}/b-listing; ps -eo uid=,pid=,args= > {o}/b-ps; \
         exec python3 -m http.server \"$PORT\" --bind 127.0.0.1"
    );
    deploy("b", &site_b);
    assert_eq!(status_of(serve.port, None)["cache"]["restore"]["reason"], "not_found");
    let listing = fs::read_to_string(out.join("b-listing")).unwrap();
    assert!(!listing.contains("evil"), "site B saw site A's package: {listing}");
    assert_eq!(listing.lines().count(), 1, "DENO_DIR is empty for site B: {listing}");
    let ps = fs::read_to_string(out.join("b-ps")).unwrap();
    assert!(!ps.contains("sleep 600"), "site A's process is alive under site B: {ps}");
    let reply = http(serve.port, "DELETE", "/sandbox/deploy", None, "").unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    // B's key holds nothing of A.
    let (_, out_b, err) = run(bin()
        .args(["restore", "--key", "b/cache.tgz", "--json", "--store", store.to_str().unwrap(), "--dir"])
        .arg(tmp.path().join("b-check")));
    assert!(out_b["reason"] == "not_found" || out_b["reason"] == "empty" || out_b["ok"] == true, "{out_b} {err}");
    assert!(!tmp.path().join("b-check/npm/registry.npmjs.org/evil").exists(), "site A's package under B's key");
    serve.stop();
}

/// `--block-metadata` in a network namespace of the test's own, with fake
/// credential endpoints on their real addresses: root reaches them, the
/// worker uid is refused on every one.
#[test]
fn the_credential_endpoints_are_closed_to_the_worker() {
    let tools = ["unshare", "iptables", "ip6tables", "ip", "curl"];
    if !is_root()
        || tools.iter().any(|t| {
            Command::new("sh").args(["-c", &format!("command -v {t}")]).output().map_or(true, |o| !o.status.success())
        })
    {
        assert!(std::env::var_os("CI").is_none() || !is_root(), "CI runs as root with {tools:?} installed");
        eprintln!("skipping: needs root and {tools:?}");
        return;
    }
    let tmp = open_tmp();
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    fs::set_permissions(&out, fs::Permissions::from_mode(0o777)).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/metadata.sh");
    let status = Command::new("unshare")
        .arg("--net")
        .arg("bash")
        .arg(&script)
        .arg(env!("CARGO_BIN_EXE_sandcache"))
        .arg(tmp.path())
        .arg("20012")
        .status()
        .unwrap();
    assert!(status.success(), "{}", fs::read_to_string(out.join("serve.log")).unwrap_or_default());
    let read = |f: &str| -> Value {
        serde_json::from_str(&fs::read_to_string(out.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"))).unwrap()
    };
    let (root, worker) = (read("root.json"), read("worker.json"));
    eprintln!("credential endpoints: root {root}, worker {worker}");
    for host in ["169.254.169.254", "169.254.170.23", "169.254.170.2", "fd00:ec2::23", "fd00:ec2::254"] {
        assert_eq!(root[host], "connected", "the fake endpoint {host} listens: {root}");
        let w = worker[host].as_str().unwrap();
        assert!(w.starts_with("refused"), "the worker reached {host}: {w}");
    }
    let rules = fs::read_to_string(out.join("rules")).unwrap();
    assert!(rules.contains("--uid-owner 20012") && rules.contains("REJECT"), "{rules}");
}
