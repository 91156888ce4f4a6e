//! The `sandcache` binary: exit codes, output, credentials from EKS Pod
//! Identity, and a real Deno app restored from Garage with no network.

use std::fs;
use std::path::Path;
use std::process::Command;

use sandcache_testkit::serve::Serve;
use sandcache_testkit::tree::{assert_same_tree, sample_tree};

use crate::support::{bin, http, local, run, tmp_with_out, worker_user_for_test};

#[test]
fn snapshot_and_restore_print_one_json_object_and_exit_0() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, store) = (tmp.path().join("src"), tmp.path().join("store"));
    sample_tree(&src);
    let (code, json, stderr) = run(&mut local("snapshot", &src, &store, "site/cache"));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!((json["ok"].as_bool(), json["op"].as_str()), (Some(true), Some("snapshot")), "{json}");
    assert!(json["files"].as_u64().unwrap() >= 5 && json["bytes"].as_u64().unwrap() > 0);
    assert_eq!(json["store"], format!("file://{}", store.display()));
    assert!(stderr.contains("snapshotted"), "the seed's log line: {stderr}");

    let dest = tmp.path().join("dest");
    let (code, json, stderr) = run(&mut local("restore", &dest, &store, "site/cache"));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!((json["ok"].as_bool(), json["reason"].is_null()), (Some(true), true), "{json}");
    assert!(stderr.contains("restored cache from"), "{stderr}");
    let files = json["files"].as_u64().unwrap();
    assert_eq!((json["mode"].as_str(), json["files_written"].as_u64()), (Some("full"), Some(files)), "{json}");
    assert_eq!(json["bytes_written"], json["bytes"], "{json}");
    assert_same_tree(&src, &dest);

    // Again: the dir holds that generation, untouched: a delta that writes
    // nothing.
    let (code, json, stderr) = run(&mut local("restore", &dest, &store, "site/cache"));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!((json["mode"].as_str(), json["files_written"].as_u64()), (Some("delta"), Some(0)), "{json}");
    assert_eq!((json["files"].as_u64(), json["bytes_written"].as_u64()), (Some(files), Some(0)), "{json}");
    assert!(stderr.contains("delta"), "{stderr}");
    assert_same_tree(&src, &dest);

    // Unchanged and empty are skips: exit 0, or 1 under --strict.
    let (code, json, _) = run(&mut local("snapshot", &src, &store, "site/cache"));
    assert_eq!((code, json["reason"].as_str()), (0, Some("unchanged")));
    let (code, json, _) = run(local("snapshot", &tmp.path().join("none"), &store, "site/cache").arg("--strict"));
    assert_eq!((code, json["reason"].as_str()), (1, Some("empty")));
}

/// `gc --json` says what it verified: a pool object overwritten with other
/// bytes, nobody having reported it, is found by a full sample and goes
/// with the generation naming it.
#[test]
fn gc_reports_what_it_verified() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, store) = (tmp.path().join("src"), tmp.path().join("store"));
    sample_tree(&src);
    let (code, _, stderr) = run(&mut local("snapshot", &src, &store, "site/cache"));
    assert_eq!(code, 0, "{stderr}");
    let pack = walkdir(&store.join("pool")).into_iter().find(|p| p.extension().is_some_and(|e| e == "pack")).unwrap();
    let len = std::fs::metadata(&pack).unwrap().len() as usize;
    std::fs::write(&pack, vec![0x5a; len]).unwrap();
    let gc = |rate: &str| {
        let mut c = bin();
        c.args(["gc", "--grace", "0", "--json", "--verify-rate", rate, "--store"]).arg(&store);
        run(&mut c)
    };
    let (code, json, stderr) = gc("0");
    assert_eq!(
        (code, json["objects_verified"].as_u64(), json["bad_objects"].as_u64()),
        (0, Some(0), Some(0)),
        "{stderr}"
    );
    let (code, json, stderr) = gc("1");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        (json["bad_objects"].as_u64(), json["generations_withdrawn_bad"].as_u64()),
        (Some(1), Some(1)),
        "{json}"
    );
    assert!(json["objects_verified"].as_u64().unwrap() >= 1 && json["false_marks"] == 0, "{json}");
    assert!(!pack.exists());
}

fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() { out.extend(walkdir(&p)) } else { out.push(p) }
    }
    out
}

#[test]
fn a_miss_is_exit_0_and_exit_1_under_strict() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, store) = (tmp.path().join("d"), tmp.path().join("store"));
    let (code, json, stderr) = run(&mut local("restore", &dir, &store, "never/cache.tgz"));
    assert_eq!((code, json["reason"].as_str(), json["ok"].as_bool()), (0, Some("not_found"), Some(false)));
    assert!(stderr.contains("no cache yet") && stderr.contains("(cold start)"), "{stderr}");
    let (code, _, _) = run(local("restore", &dir, &store, "never/cache.tgz").arg("--strict"));
    assert_eq!(code, 1);
    let (code, json, _) = run(local("restore", &dir, Path::new("off"), "k").arg("--strict"));
    assert_eq!((code, json["reason"].as_str()), (1, Some("disabled")));
}

#[test]
fn usage_and_configuration_errors_exit_2_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["restore", "--dir", "x"], "no cache key"),
        (vec!["restore", "--key", "../k"], "invalid cache key"),
        (vec!["restore", "--key", "k", "--store", "gs://b"], "unknown scheme"),
        (vec!["restore", "--key", "k", "--store", "s3://"], "missing bucket"),
        (vec!["restore", "--key", "k", "--timeout", "0"], "--timeout"),
        (vec!["restore", "--key", "k", "--store", "s3://bkt", "--endpoint", "localhost:9000"], "http://"),
        (vec!["snapshot", "--key", "k", "--format", "zip"], "invalid value"),
        (vec!["frobnicate"], "unrecognized subcommand"),
        (vec!["gc", "--verify-rate", "2"], "not a fraction from 0 to 1"),
    ];
    for (args, expect) in cases {
        let out = bin().args(&args).current_dir(tmp.path()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expect), "{args:?}: expected {expect:?} in {stderr}");
    }
}

/// `--max-files` (or its variable) bounds a restore: a bigger cache is
/// skipped as too_large, the output names the limit, and the previous dir
/// stays as it was. A bad size names its flag and exits 2.
#[test]
fn restore_limits_are_configurable() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, store) = (tmp.path().join("src"), tmp.path().join("store"));
    sample_tree(&src);
    for (format, key) in [("native", "site/native"), ("tgz", "site/cache.tgz")] {
        let (code, json, stderr) = run(local("snapshot", &src, &store, key).args(["--format", format]));
        assert_eq!((code, json["ok"].as_bool()), (0, Some(true)), "{format}: {json} {stderr}");

        let dir = tmp.path().join(format!("previous-{format}"));
        fs::create_dir_all(dir.join("npm/old")).unwrap();
        fs::write(dir.join("npm/old/index.js"), b"the previous tree").unwrap();
        let before = sandcache_testkit::tree::listing(&dir);
        let by_flag = run(local("restore", &dir, &store, key).args(["--max-files", "3"]));
        let by_env = run(local("restore", &dir, &store, key).env("SANDCACHE_MAX_FILES", "3"));
        for (how, (code, json, stderr)) in [("--max-files", by_flag), ("SANDCACHE_MAX_FILES", by_env)] {
            assert_eq!(code, 0, "{format} {how}: a skip is exit 0: {stderr}");
            assert_eq!(json["reason"].as_str(), Some("too_large"), "{format} {how}: {json}");
            let detail = json["detail"].as_str().unwrap_or_default();
            assert!(detail.contains("entry count limit of 3"), "{format} {how}: {detail}");
            assert!(stderr.contains("limit of 3") && stderr.contains("--max-files"), "{format} {how}: {stderr}");
            assert_eq!(sandcache_testkit::tree::listing(&dir), before, "{format} {how}: the previous dir is intact");
            let leftovers: Vec<_> = fs::read_dir(tmp.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains("sandcache-staging") || n.contains("sandcache-trash"))
                .collect();
            assert!(leftovers.is_empty(), "{format} {how}: no staging left: {leftovers:?}");
        }
        // Within the limits, the same cache restores.
        let (code, json, stderr) = run(local("restore", &dir, &store, key).args(["--max-bytes", "1M"]));
        assert_eq!((code, json["ok"].as_bool()), (0, Some(true)), "{format}: {json} {stderr}");
        assert_same_tree(&src, &dir);
        let (_, json, _) = run(local("restore", &dir, &store, key).args(["--max-bytes", "100K"]));
        assert_eq!(json["reason"].as_str(), Some("too_large"), "{format}: 300 KB of content: {json}");
    }

    for (args, env, expect) in [
        (vec!["--max-bytes", "lots"], None, ["--max-bytes", "'lots'"]),
        (vec!["--max-bytes", "1.5G"], None, ["--max-bytes", "'1.5G'"]),
        (vec![], Some(("SANDCACHE_MAX_BYTES", "lots")), ["--max-bytes", "'lots'"]),
        (vec!["--max-files", "many"], None, ["--max-files", "'many'"]),
        (vec!["--max-files", "0"], None, ["--max-files", "'0'"]),
        (vec!["--max-path-len", "0"], None, ["--max-path-len", "'0'"]),
    ] {
        let mut cmd = local("restore", &tmp.path().join("d"), &store, "site/native");
        cmd.args(&args);
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let (code, _, stderr) = run(&mut cmd);
        assert_eq!(code, 2, "{args:?} {env:?}: {stderr}");
        for e in expect {
            assert!(stderr.contains(e), "{args:?} {env:?}: expected {e:?} in {stderr}");
        }
    }
}

/// A snapshot of a tree the sandbox filled: a 15 TiB sparse file (and a
/// FIFO) is refused as too_large before it is read, under the default
/// bound or one set by flag or variable; allowed, it is read until the
/// deadline and the process exits right after (its reading thread stops;
/// before, a FIFO kept the CLI alive 637 s after it printed timed_out).
#[test]
fn snapshot_limits_and_deadline_bound_a_hostile_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, store) = (tmp.path().join("deno-dir"), tmp.path().join("store"));
    sample_tree(&dir);
    let fifo = rustix::fs::Mode::from_raw_mode(0o644);
    rustix::fs::mknodat(rustix::fs::CWD, dir.join("fifo"), rustix::fs::FileType::Fifo, fifo, 0).unwrap();
    if let Err(e) = fs::File::create(dir.join("huge")).and_then(|f| f.set_len(15 << 40)) {
        eprintln!("skipping: no 15 TiB sparse file here: {e}");
        return;
    }
    for format in ["native", "tgz"] {
        let key = format!("site/{format}");
        let timed = |cmd: &mut Command| {
            let start = std::time::Instant::now();
            let r = run(cmd.args(["--format", format]));
            (r, start.elapsed())
        };
        let ((code, json, stderr), took) = timed(&mut local("snapshot", &dir, &store, &key));
        assert_eq!((code, json["reason"].as_str()), (0, Some("too_large")), "{format}: {json} {stderr}");
        assert!(json["detail"].as_str().unwrap().contains("huge"), "{json}");
        assert!(stderr.contains("--max-bytes"), "{stderr}");
        assert!(took < std::time::Duration::from_secs(5), "{format}: {took:?}");
        for (how, mut cmd) in [
            ("--max-files", local("snapshot", &dir, &store, &key)),
            ("SANDCACHE_MAX_BYTES", local("snapshot", &dir, &store, &key)),
        ] {
            match how {
                "--max-files" => cmd.args(["--max-files", "3", "--max-bytes", "16T"]),
                _ => cmd.env("SANDCACHE_MAX_BYTES", "1K"),
            };
            let ((code, json, _), _) = timed(&mut cmd);
            assert_eq!((code, json["reason"].as_str()), (0, Some("too_large")), "{format} {how}: {json}");
        }
        let ((code, json, stderr), took) =
            timed(local("snapshot", &dir, &store, &key).args(["--max-bytes", "16T", "--timeout", "2"]));
        assert_eq!((code, json["reason"].as_str()), (0, Some("timed_out")), "{format}: {json} {stderr}");
        assert!(took < std::time::Duration::from_secs(3), "{format}: the process took {took:?} for a 2 s deadline");
        eprintln!("{format}: timed out and exited after {took:?}");
    }
}

#[test]
fn env_vars_configure_dir_key_and_store() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    sample_tree(&src);
    let store = tmp.path().join("store");
    let out = bin()
        .args(["snapshot", "--json"])
        .env("DENO_DIR", &src)
        .env("DECO_CACHE_S3_KEY", "site/env.tgz")
        .env("SANDCACHE_STORE", format!("file://{}", store.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(store.join("site/env.tgz.d/manifests").is_dir(), "a native generation under the key");
}

#[test]
fn no_progress_bar_without_a_terminal_or_with_json() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    sample_tree(&src);
    let store = tmp.path().join("store");
    let out =
        bin().args(["snapshot", "--key", "k"]).arg("--dir").arg(&src).arg("--store").arg(&store).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success());
    assert!(!stderr.contains('\r') && !stderr.contains("\x1b["), "no bar or colours when not a TTY: {stderr:?}");
    assert!(out.stdout.is_empty(), "stdout stays clean without --json");
}

/// On a terminal (a pty from `script`), the bar shows; with --json it does not.
#[test]
fn the_progress_bar_shows_on_a_terminal() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipping: util-linux `script` is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    sample_tree(&src);
    let store = tmp.path().join("store");
    let line = |extra: &str| {
        format!(
            "{} snapshot --force --key k --dir {} --store {} {extra}",
            env!("CARGO_BIN_EXE_sandcache"),
            src.display(),
            store.display()
        )
    };
    let tty = |cmd: String| {
        let out = Command::new("script").args(["-qec", &cmd, "/dev/null"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let shown = tty(line(""));
    assert!(shown.contains("snapshot") && shown.contains("files"), "bar on a TTY: {shown:?}");
    let quiet = tty(line("--json"));
    assert!(!quiet.contains(" files ·"), "no bar with --json: {quiet:?}");
}

/// EKS Pod Identity: credentials come from a loopback endpoint with a token
/// file, and nothing else in the environment.
#[tokio::test]
async fn pod_identity_credentials_are_enough() {
    let Some(spec) = sandcache_testkit::s3::spec("pod-identity") else { return };
    let (key_id, secret) =
        (std::env::var("AWS_ACCESS_KEY_ID").unwrap(), std::env::var("AWS_SECRET_ACCESS_KEY").unwrap());
    let token = format!("pod-identity-token-{}", std::process::id());
    let (url, hits) = sandcache_testkit::net::credentials_server(token.clone(), key_id, secret).await;
    let tmp = tempfile::tempdir().unwrap();
    let token_file = tmp.path().join("eks-pod-identity-token");
    fs::write(&token_file, &token).unwrap();
    let src = tmp.path().join("src");
    sample_tree(&src);
    let store = format!("s3://{}/{}", spec.bucket, spec.prefix);
    let envs: Vec<(String, String)> = vec![
        ("PATH".into(), std::env::var("PATH").unwrap()),
        ("HOME".into(), tmp.path().display().to_string()),
        ("AWS_ENDPOINT_URL".into(), spec.endpoint.clone().unwrap()),
        ("AWS_REGION".into(), spec.region.clone()),
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI".into(), url.clone()),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE".into(), token_file.display().to_string()),
    ];
    let pod = |cmd: &str, dir: &Path| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sandcache"));
        c.env_clear().envs(envs.iter().map(|(k, v)| (k, v)));
        c.args([cmd, "--json", "--key", "site/cache", "--store", &store]).arg("--dir").arg(dir);
        c
    };
    // The credentials server runs on this test's runtime: run the CLI off it.
    let blocking = |mut c: Command| tokio::task::spawn_blocking(move || run(&mut c));
    let snap = blocking(pod("snapshot", &src)).await.unwrap();
    assert_eq!(snap.1["ok"], true, "{snap:?}");
    let dest = tmp.path().join("dest");
    let got = blocking(pod("restore", &dest)).await.unwrap();
    assert_eq!(got.1["ok"], true, "{got:?}");
    assert_same_tree(&src, &dest);
    assert!(hits.load(std::sync::atomic::Ordering::SeqCst) >= 2, "credentials came from the endpoint");

    // A wrong token is refused by the endpoint: a store error, exit 0.
    fs::write(&token_file, "wrong").unwrap();
    let (code, json, _) = blocking(pod("restore", &tmp.path().join("other"))).await.unwrap();
    assert_eq!((code, json["reason"].as_str()), (0, Some("store_error")), "{json}");
}

/// A real Deno app: cache its npm deps, snapshot to Garage, delete the
/// DENO_DIR, restore, and run it with `--cached-only` and no network.
#[test]
fn deno_app_runs_offline_from_a_restored_cache() {
    let Some(spec) = sandcache_testkit::s3::spec("deno-e2e") else { return };
    let Some(deno) = sandcache_testkit::deno::binary("deno_app_runs_offline_from_a_restored_cache") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let app = tmp.path().join("app");
    fs::create_dir(&app).unwrap();
    fs::write(
        app.join("main.ts"),
        r#"import ms from "npm:ms@2.1.3";
import isNumber from "npm:is-number@7.0.0";
import kleur from "npm:kleur@4.1.5";
console.log(`ready ${ms(90_000)} ${isNumber(7)} ${kleur.bold("ok").length > 0}`);
"#,
    )
    .unwrap();
    let deno_dir = tmp.path().join("deno-dir");
    let deno = |args: &[&str], offline: bool| {
        let mut c = Command::new(&deno);
        c.args(args).current_dir(&app).env("DENO_DIR", &deno_dir).env("NO_COLOR", "1");
        if offline {
            // Any attempt to reach a registry fails fast.
            for var in ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"] {
                c.env(var, "http://127.0.0.1:9");
            }
        }
        c.output().unwrap()
    };
    let cached = deno(&["cache", "main.ts"], false);
    assert!(cached.status.success(), "deno cache: {}", String::from_utf8_lossy(&cached.stderr));

    let store = format!("s3://{}/{}", spec.bucket, spec.prefix);
    let sc = |cmd: &str| {
        let mut c = bin();
        c.args([cmd, "--json", "--key", "site/cache", "--store", &store]).arg("--dir").arg(&deno_dir);
        run(&mut c)
    };
    let (code, json, stderr) = sc("snapshot");
    assert_eq!((code, json["ok"].as_bool()), (0, Some(true)), "{json} {stderr}");
    fs::remove_dir_all(&deno_dir).unwrap();

    let cold = deno(&["run", "--cached-only", "--allow-env", "main.ts"], true);
    assert!(!cold.status.success(), "without the cache, --cached-only must fail");

    let (code, json, stderr) = sc("restore");
    assert_eq!((code, json["ok"].as_bool()), (0, Some(true)), "{json} {stderr}");
    let warm = deno(&["run", "--cached-only", "--allow-env", "main.ts"], true);
    let stdout = String::from_utf8_lossy(&warm.stdout);
    assert!(warm.status.success(), "deno run: {}", String::from_utf8_lossy(&warm.stderr));
    assert_eq!(stdout.trim(), "ready 2m true true");
}

/// A restore killed mid-download (SIGKILL, no cleanup at all) leaves the dir
/// as it was; the next run removes the staging dir it left behind.
#[tokio::test]
async fn a_killed_restore_leaves_the_dir_intact_and_the_next_run_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("deno-dir");
    sample_tree(&dir);
    let before = sandcache_testkit::tree::fs_state(&dir);
    // Headers and the start of a gzip stream, then silence: the restore is
    // mid-extraction when it is killed.
    let addr = sandcache_testkit::net::stalling_server(vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]).await;
    let mut child = bin()
        .args(["restore", "--key", "site/cache.tgz", "--store", "s3://bucket", "--timeout", "60", "-q"])
        .args(["--endpoint", &format!("http://{addr}")])
        .env("AWS_ACCESS_KEY_ID", "GKtest")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .arg("--dir")
        .arg(&dir)
        .spawn()
        .unwrap();
    let staging_exists = || {
        fs::read_dir(tmp.path())
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().contains("sandcache-staging"))
    };
    let start = std::time::Instant::now();
    while !staging_exists() {
        assert!(start.elapsed() < std::time::Duration::from_secs(20), "the restore never started extracting");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(before, sandcache_testkit::tree::fs_state(&dir), "the dir is exactly as it was");
    assert!(staging_exists(), "SIGKILL leaves the staging dir");

    // The next run, from a good store, finds and removes it.
    let src = tmp.path().join("src");
    sample_tree(&src);
    let store = tmp.path().join("store");
    assert_eq!(run(&mut local("snapshot", &src, &store, "site/cache")).0, 0);
    let (code, json, _) = run(&mut local("restore", &dir, &store, "site/cache"));
    assert_eq!((code, json["ok"].as_bool()), (0, Some(true)));
    assert!(!staging_exists(), "leftover staging removed by the next run");
}

/// `sandcache serve` on SIGTERM stops the worker, cleans the work dir and
/// exits 0.
#[test]
fn serve_stops_its_worker_and_cleans_up_on_sigterm() {
    let (tmp, out_dir) = tmp_with_out();
    let work = tmp.path().join("site");
    let start = std::time::Instant::now();
    let served = Serve::command(bin(), tmp.path()).args(worker_user_for_test(3)).start();
    let port = served.port;
    let mut server = served.into_child();
    let request = |method: &str, path: &str, body: &str| http(port, method, path, None, body);
    let pid_file = out_dir.join("worker.pid");
    let script = format!("echo $$ > {}; exec python3 -m http.server \"$PORT\" --bind 127.0.0.1", pid_file.display());
    let body = serde_json::json!({"site": "s", "runCommand": ["sh", "-c", script]}).to_string();
    let reply = request("POST", "/sandbox/deploy", &body).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    while !pid_file.exists() || fs::read_to_string(&pid_file).unwrap().trim().is_empty() {
        assert!(start.elapsed() < std::time::Duration::from_secs(20), "the worker never started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let worker: i32 = fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    assert!(work.exists());
    let pid = rustix::process::Pid::from_raw(server.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = server.wait().unwrap();
    assert!(status.success(), "serve exits 0 on SIGTERM: {status}");
    assert!(!work.exists(), "the work dir is cleaned");
    let alive = rustix::process::test_kill_process(rustix::process::Pid::from_raw(worker).unwrap()).is_ok();
    assert!(!alive, "the worker was stopped");
}

/// Bad S3 configuration never panics (object_store panics signing a
/// request with a bad bucket): a bad bucket is a usage error naming the
/// flag (exit 2); a bad endpoint or region is a `config` skip in JSON; the
/// same bucket in a deploy body is a `config` skip and the deploy goes on
/// cold (issue 12, point 4).
#[test]
fn bad_s3_configuration_never_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let (code, json, err) =
        run(bin().args(["restore", "--store", "s3://no_such bucket!", "--key", "k", "--json", "--dir"]).arg(&dir));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--store") && err.contains("not a valid S3 bucket name"), "{err}");
    assert_eq!((json["ok"].as_bool(), json["reason"].as_str()), (Some(false), Some("config")), "{json}");
    // Each value is blamed by the flag or variable it came from.
    /// Flags, variables, the name the error must give, and the field.
    type Case = (&'static [&'static str], &'static [(&'static str, &'static str)], &'static str, &'static str);
    let cases: [Case; 5] = [
        (&["--endpoint", "http://exa mple"], &[], "--endpoint", "endpoint"),
        (&["--region", "us west"], &[], "--region", "region"),
        (&[], &[("AWS_ENDPOINT_URL", "ftp://h")], "AWS_ENDPOINT_URL", "endpoint"),
        (&[], &[("DECO_CACHE_S3_REGION", "a/b")], "DECO_CACHE_S3_REGION", "region"),
        (&[], &[("AWS_ACCESS_KEY_ID", "AKIA X")], "AWS_ACCESS_KEY_ID", "printable ASCII"),
    ];
    for (args, envs, names, field) in cases {
        let mut cmd = bin();
        cmd.args(["restore", "--store", "s3://sandcache", "--key", "k", "--json", "--dir"]).arg(&dir).args(args);
        cmd.env_remove("AWS_ENDPOINT_URL").env_remove("AWS_REGION").env_remove("AWS_DEFAULT_REGION");
        cmd.env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE").env("AWS_SECRET_ACCESS_KEY", "x");
        cmd.envs(envs.iter().copied());
        let (code, json, err) = run(&mut cmd);
        assert_eq!(code, 2, "{args:?} {envs:?}: {json} {err}");
        assert!(err.contains(names) && err.contains(field), "{args:?} {envs:?}: {err}");
        assert_eq!(json["reason"], "config", "{json}");
    }
    let (code, _, err) =
        run(bin().env("DECO_CACHE_S3_BUCKET", "Bad_Bucket").args(["restore", "--key", "k", "--dir"]).arg(&dir));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("DECO_CACHE_S3_BUCKET"), "{err}");
}

/// `restore --hot-first` SIGKILLed in its second phase: the tree is usable
/// (the hot set and whatever landed, every file whole), snapshots skip it as
/// `incomplete`, and the next restore completes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_killed_in_its_second_phase_leaves_a_usable_tree_the_next_completes() {
    use std::io::BufRead;
    let Some(spec) = sandcache_testkit::s3::spec("cli-hot-kill") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    sample_tree(&src);
    fs::create_dir_all(src.join("npm/big")).unwrap();
    for i in 0..3 {
        fs::write(src.join(format!("npm/big/{i}.bin")), sandcache_testkit::tree::noise(6 << 20, &format!("{i}")))
            .unwrap();
    }
    // Enough entries for a manifest in pieces: then the restore prefetches
    // the hot packs whole, and only the second phase reads by range.
    fs::create_dir_all(src.join("npm/many")).unwrap();
    for i in 0..600 {
        fs::write(src.join(format!("npm/many/m{i:03}.js")), format!("export const m = {i};\n")).unwrap();
    }
    // As a restore leaves them, then a boot that reads two files: the hot set.
    sandcache_testkit::tree::settle_times(&src);
    let hot: Vec<std::path::PathBuf> = ["npm/many/m000.js", "npm/many/m001.js"].iter().map(|r| src.join(r)).collect();
    for p in &hot {
        fs::read(p).unwrap();
    }
    let store = format!("s3://{}/{}", spec.bucket, spec.prefix);
    let endpoint = spec.endpoint.clone().unwrap();
    let s3 = |cmd: &str, dir: &Path, endpoint: &str| {
        let mut c = bin();
        c.args([cmd, "--store", &store, "--endpoint", endpoint, "--key", "site/cache", "--json", "--dir"]).arg(dir);
        c
    };
    assert_eq!(run(&mut s3("snapshot", &src, &endpoint)).0, 0);

    // Every ranged read (the second phase's) stalls at the proxy.
    let proxy = sandcache_testkit::faults::FaultProxy::start(&endpoint).await;
    proxy.set(Some(sandcache_testkit::faults::Plan {
        fault: sandcache_testkit::faults::Fault::Latency(std::time::Duration::from_secs(60)),
        at: sandcache_testkit::faults::At::Start,
        direction: sandcache_testkit::faults::Direction::RangedDownload,
        index: 0,
        sticky: true,
    }));
    let dir = tmp.path().join("deno-dir");
    let mut child = s3("restore", &dir, &proxy.url())
        .args(["--hot-first", "--timeout", "120"])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("hot-ready") {
            break;
        }
    }
    assert!(seen.contains("hot-ready"), "{seen}");
    child.kill().unwrap();
    child.wait().unwrap();

    // Usable: the hot files whole, and every file there as stored.
    for p in &hot {
        assert_eq!(fs::read(dir.join(p.strip_prefix(&src).unwrap())).unwrap(), fs::read(p).unwrap());
    }
    let mut checked = 0;
    for (rel, data) in sandcache_testkit::tree::contents(&dir) {
        let name = rel.rsplit('/').next().unwrap_or(&rel);
        if !name.starts_with(".sandcache-tail-") && fs::symlink_metadata(src.join(&rel)).unwrap().is_file() {
            assert_eq!(data, fs::read(src.join(&rel)).unwrap(), "{rel} is whole");
            checked += 1;
        }
    }
    assert!(!dir.join("npm/big/2.bin").exists() || checked > 0);
    // Never stored partial; the next restore completes it.
    let (code, json, _) = run(&mut s3("snapshot", &dir, &endpoint));
    assert_eq!((code, json["reason"].as_str()), (0, Some("incomplete")), "{json}");
    let (code, json, stderr) = run(&mut s3("restore", &dir, &endpoint));
    assert_eq!((code, json["ok"].as_bool()), (0, Some(true)), "{stderr}");
    assert_same_tree(&src, &dir);
    let (code, json, _) = run(&mut s3("snapshot", &dir, &endpoint));
    assert_ne!(json["reason"].as_str(), Some("incomplete"), "{json}");
    assert_eq!(code, 0);
    proxy.set(None);
    // Uninterrupted, --json gives hot_ms beside ms.
    let fresh = tmp.path().join("fresh");
    let (code, json, stderr) = run(s3("restore", &fresh, &endpoint).arg("--hot-first"));
    assert_eq!((code, json["ok"].as_bool()), (0, Some(true)), "{stderr}");
    assert!(json["hot_ms"].as_u64().unwrap() <= json["ms"].as_u64().unwrap(), "{json}");
    assert!(stderr.contains("hot-ready"), "{stderr}");
    assert_same_tree(&src, &fresh);
}
