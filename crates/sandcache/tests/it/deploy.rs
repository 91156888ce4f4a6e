//! `deploy/` (deploy/README.md): the runner image, the Kubernetes warm pool,
//! the IAM policies and the S3 lifecycle. There is no Docker daemon,
//! registry or cluster here, so:
//! - the Dockerfile's RUN steps are scripts, run here against a temp root
//!   (the cargo build is replaced by the binary `cargo test` built, apt by a
//!   check of the host's packages);
//! - the manifests, policies and lifecycle are parsed, the fields that
//!   matter asserted, and checked against each other, the image and the docs
//!   (agent-sandbox's template and warm pool in [`agent_sandbox`]);
//! - the init container's rules go into a network namespace's iptables;
//! - the runner runs a site with only the manifest's capabilities, under a
//!   read-only root;
//! - the lifecycle is applied to Garage, and the maintenance Job's gc runs
//!   against it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sandcache_testkit::serve::Serve;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::support::{bin, http, run};

/// The warm pool through agent-sandbox: the template's pod is the
/// Deployment's, and the CRD fields used are agent-sandbox's.
mod agent_sandbox;

/// The credential endpoints (docs/threat-model.md).
const ENDPOINTS: [&str; 5] = ["169.254.169.254", "169.254.170.23", "169.254.170.2", "fd00:ec2::254", "fd00:ec2::23"];

/// What a root runner needs to switch to and manage the worker's uid
/// (deploy/README.md has why, one by one).
const RUNNER_CAPS: [&str; 6] = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "KILL", "SETGID", "SETUID"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn read(rel: &str) -> String {
    fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every document of a YAML file, as JSON values.
fn yaml(rel: &str) -> Vec<Value> {
    let text = read(rel);
    yaml_serde::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .collect()
}

/// The one document of `kind` in a YAML file.
fn kind(rel: &str, kind: &str) -> Value {
    let mut found: Vec<Value> = yaml(rel).into_iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "{rel}: one {kind}");
    found.remove(0)
}

/// The document of `kind` named `name` in a YAML file.
fn named(rel: &str, kind: &str, name: &str) -> Value {
    let found = yaml(rel).into_iter().find(|d| d["kind"] == kind && d["metadata"]["name"] == name);
    found.unwrap_or_else(|| panic!("{rel}: no {kind} {name}"))
}

fn json_file(rel: &str) -> Value {
    serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn have(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
}

/// Root and these tools, or a skip; CI runs as root with them installed.
fn root_with(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&&str> = tools.iter().filter(|t| !have(t)).collect();
    if is_root() && missing.is_empty() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none() || !is_root(), "{test}: CI runs as root with {tools:?}: {missing:?}");
    eprintln!("skipping {test}: needs root and {tools:?} (missing: {missing:?})");
    false
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().map(|s| s.as_str().expect("a string").to_owned()).collect()).unwrap_or_default()
}

/// The value of `--name V` or `--name=V` in an argument list.
fn flag(args: &[String], name: &str) -> Option<String> {
    let eq = format!("{name}=");
    args.iter()
        .enumerate()
        .find_map(|(i, a)| if a == name { args.get(i + 1).cloned() } else { a.strip_prefix(&eq).map(str::to_owned) })
}

/// A Kubernetes quantity (`512Mi`, `1Gi`, `3G`) in bytes.
fn quantity(q: &str) -> u64 {
    let units = [("Ki", 1u64 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30), ("Ti", 1 << 40), ("k", 1000), ("M", 1_000_000)];
    let units = units.into_iter().chain([("G", 1_000_000_000), ("", 1)]);
    units
        .into_iter()
        .find_map(|(u, m)| q.strip_suffix(u).and_then(|n| n.parse::<u64>().ok()).map(|n| n * m))
        .unwrap_or_else(|| panic!("not a quantity: {q}"))
}

// ------------------------------------------------------------ the Dockerfile

/// One instruction of deploy/Dockerfile, with the stage it is in and the
/// ARG and ENV values in effect there (what a RUN step sees).
#[derive(Debug, Clone)]
struct Instruction {
    stage: String,
    op: String,
    rest: String,
    env: BTreeMap<String, String>,
}

/// `${NAME}` replaced from `vars`; an unknown name is an error.
fn subst(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find('}').map(|e| i + e).unwrap_or_else(|| panic!("unclosed ${{ in {s}"));
        let name = &rest[i + 2..end];
        out.push_str(vars.get(name).unwrap_or_else(|| panic!("{name} is not set where {s} uses it")));
        rest = &rest[end + 1..];
    }
    out + rest
}

/// deploy/Dockerfile, instruction by instruction: the subset it uses
/// (comments, `\` continuations, ARG, ENV `k=v`, FROM … AS stage).
fn dockerfile() -> Vec<Instruction> {
    let text = read("deploy/Dockerfile");
    let mut lines = Vec::new();
    let mut cur = String::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || (line.is_empty() && cur.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                cur.push_str(head);
                cur.push(' ');
            }
            None => {
                cur.push_str(line);
                lines.push(std::mem::take(&mut cur));
            }
        }
    }
    let (mut global, mut env) = (BTreeMap::new(), BTreeMap::new());
    let mut stage: Option<String> = None;
    let mut out = Vec::new();
    for line in lines {
        let (op, rest) = line.split_once(char::is_whitespace).unwrap_or_else(|| panic!("{line}"));
        let mut rest = rest.trim().to_owned();
        assert_eq!(op, op.to_uppercase(), "instructions in capitals: {line}");
        match op {
            "ARG" => {
                let (k, v) = rest.split_once('=').map_or((rest.as_str(), None), |(k, v)| (k, Some(v)));
                let v = v.map(|v| subst(v, &env)).or_else(|| global.get(k).cloned());
                let v = v.unwrap_or_else(|| panic!("ARG {k} has no default: the steps could not run as built"));
                if stage.is_none() {
                    global.insert(k.to_owned(), v);
                } else {
                    env.insert(k.to_owned(), v);
                }
            }
            "FROM" => {
                let words: Vec<&str> = rest.split_whitespace().collect();
                assert!(words.len() == 3 && words[1] == "AS", "FROM IMAGE AS STAGE: {line}");
                stage = Some(words[2].to_owned());
                env.clear();
                rest = subst(words[0], &global);
            }
            "ENV" => {
                let before = env.clone();
                for tok in rest.split_whitespace() {
                    let (k, v) = tok.split_once('=').unwrap_or_else(|| panic!("ENV k=v only: {line}"));
                    assert!(!v.contains(['"', '\'']), "unquoted ENV values only: {line}");
                    env.insert(k.to_owned(), subst(v, &before));
                }
            }
            _ => {}
        }
        out.push(Instruction { stage: stage.clone().unwrap_or_default(), op: op.to_owned(), rest, env: env.clone() });
    }
    out
}

/// The runtime stage's environment: the image's ENV (and ARGs in effect).
fn image_env() -> BTreeMap<String, String> {
    dockerfile().into_iter().rfind(|i| i.op == "ENTRYPOINT").expect("an ENTRYPOINT").env
}

/// The steps run as the image build runs them: each RUN is one script of
/// deploy/image/ (the build context at /src), each build stage's /out is
/// copied onto the runtime's /; here one temp dir is every stage's root.
/// Substituted: the cargo build (the binary cargo test built) and apt-get
/// (a check that the host has the packages). About 2 s on a warm cache.
#[test]
fn image_steps_run_as_scripts_without_docker() {
    let started = Instant::now();
    let steps = dockerfile();
    let root = tempfile::tempdir().unwrap();
    let stages: BTreeSet<&str> = steps.iter().filter(|s| s.op == "FROM").map(|s| s.stage.as_str()).collect();
    assert_eq!(stages, BTreeSet::from(["build", "deno", "runtime"]), "the stages the README describes");
    let images: Vec<&str> = steps.iter().filter(|s| s.op == "FROM").map(|s| s.rest.as_str()).collect();
    assert!(images.iter().all(|i| i.contains("bookworm")), "one Debian release (the binary's glibc): {images:?}");

    // Nothing enters the image but the stages' /out and what RUN steps do.
    for copy in steps.iter().filter(|s| s.op == "COPY") {
        let from = copy.rest.strip_prefix("--from=").and_then(|r| r.strip_suffix(" /out/ /"));
        let from = from.unwrap_or_else(|| panic!("COPY --from=STAGE /out/ / only: {}", copy.rest));
        assert!(copy.stage == "runtime" && stages.contains(from) && from != "runtime", "{copy:?}");
    }
    let entry: Vec<String> = serde_json::from_str(&steps.iter().rfind(|s| s.op == "ENTRYPOINT").unwrap().rest).unwrap();
    assert_eq!(entry, ["/usr/local/bin/sandcache", "serve"]);
    let user = steps.iter().rfind(|s| s.op == "USER").map(|s| s.rest.as_str());
    assert_eq!(user, Some("0:0"), "the runner is root, so it can switch to the worker uid");

    let mut ran = Vec::new();
    for step in steps.iter().filter(|s| s.op == "RUN") {
        assert!(
            !step.rest.contains(['&', ';', '|', '>', '<', '`', '$']),
            "one script per RUN, no shell: {}",
            step.rest
        );
        let words: Vec<&str> = step.rest.split_whitespace().collect();
        let first_cmd = words.iter().position(|w| !w.starts_with("--")).unwrap();
        assert!(words[..first_cmd].contains(&"--mount=type=bind,target=/src"), "the context at /src: {}", step.rest);
        let script = words[first_cmd].strip_prefix("/src/").unwrap_or_else(|| panic!("a script under /src: {step:?}"));
        assert!(script.starts_with("deploy/image/") && script.ends_with(".sh"), "a deploy/image script: {script}");
        let path = repo().join(script);
        assert!(fs::metadata(&path).unwrap().mode() & 0o111 != 0, "{script} is executable");
        let args = &words[first_cmd + 1..];
        if script.ends_with("/packages.sh") {
            assert_eq!(args, ["--install"]);
            host_has_the_packages(&path);
            ran.push(format!("{script} (checked on the host: --list)"));
            continue;
        }
        assert_eq!(args, [if step.stage == "runtime" { "/" } else { "/out" }], "{script}: its stage's root");
        let mut cmd = Command::new(&path);
        cmd.arg(root.path()).envs(&step.env);
        if script.ends_with("/build.sh") {
            cmd.env("SANDCACHE_PREBUILT_BIN", env!("CARGO_BIN_EXE_sandcache"));
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{script} failed: {stderr}");
        eprint!("{stderr}");
        ran.push(script.to_owned());
    }
    let names: Vec<&str> =
        ran.iter().map(|s| s.split(' ').next().unwrap().trim_start_matches("deploy/image/")).collect();
    assert_eq!(names, ["build.sh", "install-deno.sh", "packages.sh", "rootfs.sh"]);

    let r = root.path();
    let version = |bin: &Path| {
        let out = Command::new(bin).arg("--version").output().unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        assert!(out.status.success(), "{} --version", bin.display());
        String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().to_owned()
    };
    assert_eq!(version(&r.join("usr/local/bin/sandcache")), format!("sandcache {}", env!("CARGO_PKG_VERSION")));
    let pinned = steps.iter().find(|s| s.stage == "deno" && s.op == "RUN").unwrap().env["DENO_VERSION"].clone();
    let deno = version(&r.join("usr/local/bin/deno"));
    assert!(deno.starts_with(&format!("deno {pinned} ")), "the pinned Deno: {deno}");
    let tests_deno = read("scripts/install-deno.sh");
    assert!(tests_deno.contains(&format!("SANDCACHE_DENO_VERSION:-{pinned}}}")), "the tests run the image's Deno");

    let env = image_env();
    let (uid, gid) = (&env["WORKER_UID"], &env["WORKER_GID"]);
    assert_eq!(env["SANDCACHE_WORKER_USER"], format!("{uid}:{gid}"));
    let lines = |f: &str| fs::read_to_string(r.join(f)).unwrap().lines().map(str::to_owned).collect::<Vec<_>>();
    let worker = |f: &str| lines(f).into_iter().filter(|l| l.starts_with("sandcache-worker:")).collect::<Vec<_>>();
    assert_eq!(
        worker("etc/passwd"),
        [format!("sandcache-worker:x:{uid}:{gid}:sandcache worker:/nonexistent:/usr/sbin/nologin")]
    );
    assert_eq!(worker("etc/group"), [format!("sandcache-worker:x:{gid}:")]);
    for (dir, mode) in [
        (env["DENO_DIR"].as_str(), 0o755),
        (Path::new(&env["SANDCACHE_WORK_DIR"]).parent().unwrap().to_str().unwrap(), 0o755),
        (env["SANDCACHE_STATE_DIR"].as_str(), 0o711),
        ("/tmp", 0o1777),
    ] {
        let meta = fs::symlink_metadata(r.join(dir.trim_start_matches('/'))).unwrap();
        assert!(meta.is_dir(), "{dir}");
        assert_eq!(meta.mode() & 0o7777, mode, "{dir}: mode {:o}", meta.mode() & 0o7777);
        if is_root() {
            assert_eq!((meta.uid(), meta.gid()), (0, 0), "{dir} is root's");
        }
    }

    // Run again (a rebuilt layer): no second worker entry.
    let rootfs = steps.iter().find(|s| s.op == "RUN" && s.rest.contains("rootfs.sh")).unwrap();
    let again = Command::new(repo().join("deploy/image/rootfs.sh")).arg(r).envs(&rootfs.env).output().unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(worker("etc/passwd").len(), 1);
    eprintln!("ran {ran:?} against {} in {:?}", r.display(), started.elapsed());
}

/// apt-get runs in the image build only: here the host must already have
/// each package packages.sh installs (on CI, a Debian image as root).
fn host_has_the_packages(script: &Path) {
    let out = Command::new(script).arg("--list").output().unwrap();
    assert!(out.status.success());
    let packages: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    assert!(["ca-certificates", "git", "iptables"].iter().all(|p| packages.iter().any(|q| q == p)), "{packages:?}");
    if !have("dpkg-query") {
        assert!(std::env::var_os("CI").is_none(), "CI is Debian: dpkg-query is missing");
        eprintln!("packages.sh: not a Debian host, not checking {packages:?}");
        return;
    }
    let missing: Vec<&String> = packages
        .iter()
        .filter(|p| {
            let q = Command::new("dpkg-query").args(["-W", "-f=${Status}", p]).output().unwrap();
            String::from_utf8_lossy(&q.stdout) != "install ok installed"
        })
        .collect();
    if !missing.is_empty() {
        assert!(std::env::var_os("CI").is_none(), "CI has every package the image installs; missing {missing:?}");
        eprintln!("packages.sh: the host lacks {missing:?}: not checking them");
        return;
    }
    for tool in [["git", "--version"], ["iptables", "--version"], ["ip6tables", "--version"]] {
        let ok = Command::new(tool[0]).arg(tool[1]).output().is_ok_and(|o| o.status.success());
        assert!(ok, "{} runs", tool[0]);
    }
    assert!(Path::new("/etc/ssl/certs/ca-certificates.crt").is_file(), "the CA bundle");
    eprintln!(
        "packages.sh: apt-get not run; the host has {packages:?} (dpkg), and git, iptables and the CA bundle work"
    );
}

// ------------------------------------------------------------ Kubernetes

/// A container of the pool's pod: `list` is `containers` or `initContainers`.
fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    let all = pod[list].as_array().unwrap_or_else(|| panic!("no {list}"));
    all.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no {list} named {name}"))
}

/// A container's `env`, every value a string as Kubernetes requires.
fn env_of(c: &Value) -> BTreeMap<String, String> {
    let entries = c["env"].as_array().cloned().unwrap_or_default();
    entries
        .iter()
        .map(|e| {
            let v = e["value"].as_str().unwrap_or_else(|| panic!("env {} needs a string value: {e}", e["name"]));
            (e["name"].as_str().unwrap().to_owned(), v.to_owned())
        })
        .collect()
}

/// Runs a container's command on the host with `tools` replaced by stubs
/// that only record their arguments: what it would do, without root.
fn recorded(command: &[String], tools: &[&str]) -> BTreeSet<String> {
    let stubs = tempfile::tempdir().unwrap();
    let log = stubs.path().join("calls");
    for tool in tools {
        let stub = stubs.path().join(tool);
        fs::write(&stub, format!("#!/bin/sh\necho \"{tool} $*\" >>'{}'\n", log.display())).unwrap();
        fs::set_permissions(&stub, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!("{}:{}", stubs.path().display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new(&command[0]).args(&command[1..]).env("PATH", path).output().unwrap();
    assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
    fs::read_to_string(&log).unwrap_or_default().lines().map(str::to_owned).collect()
}

/// The rules docs/threat-model.md gives, for a worker uid.
fn expected_rules(uid: &str) -> BTreeSet<String> {
    ENDPOINTS
        .iter()
        .map(|a| {
            let tool = if a.contains(':') { "ip6tables" } else { "iptables" };
            format!("{tool} -I OUTPUT -d {a} -m owner --uid-owner {uid} -j REJECT")
        })
        .collect()
}

/// The manifests parse, and hold what the runner needs: probes on the
/// runner's paths and port, a grace period covering preStop + stop grace +
/// final snapshot, the hardening, an emptyDir for every dir the runner
/// writes, the init container's rules for the worker uid (NET_ADMIN there
/// only), IRSA on the ServiceAccount, and one worker uid everywhere.
#[test]
fn manifests_parse_and_hold_what_the_runner_needs() {
    let deployment = kind("deploy/k8s/deployment.yaml", "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let sa = named("deploy/k8s/serviceaccount.yaml", "ServiceAccount", pod["serviceAccountName"].as_str().unwrap());
    let image = image_env();
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&deployment["spec"]["selector"]["matchLabels"], labels, "the selector matches the pods");
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 1, "a warm pool");

    // Identity: IRSA on the ServiceAccount, no Kubernetes API token.
    let role = sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].as_str().unwrap();
    assert!(role.starts_with("arn:aws:iam::") && role.contains(":role/"), "{role}");
    assert_eq!(sa["automountServiceAccountToken"], false);
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert!(read("deploy/k8s/serviceaccount.yaml").contains("Pod Identity"), "the Pod Identity alternative is said");

    // The pod: root (the kubelet then writes token files 0600, root's), no
    // host namespaces, no fsGroup the worker could be in.
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        assert!(pod[host].is_null() || pod[host] == false, "{host}");
    }
    assert_eq!(pod["enableServiceLinks"], false, "the runner's env reaches the worker: no service variables");
    let psc = &pod["securityContext"];
    assert_eq!((psc["runAsUser"].as_u64(), psc["seccompProfile"]["type"].as_str()), (Some(0), Some("RuntimeDefault")));
    assert!(psc["fsGroup"].is_null(), "no fsGroup: secrets and tokens stay root's alone");

    let runner = container(pod, "containers", "runner");
    let env = env_of(runner);
    let raw = read("deploy/k8s/deployment.yaml");
    for v in env.values().filter(|v| v.chars().all(|c| c.is_ascii_digit() || c == ':')) {
        // YAML 1.1 (Kubernetes) reads 10001:10001 as a base-60 number.
        assert!(raw.contains(&format!("\"{v}\"")), "{v} must be quoted in the manifest");
    }

    // The image and the manifest agree on the dirs, the port and the worker.
    for k in ["DENO_DIR", "SANDCACHE_WORK_DIR", "SANDCACHE_STATE_DIR", "SANDCACHE_WORKER_USER", "APP_PORT"] {
        assert_eq!(env.get(k), image.get(k), "{k}: the manifest and the image's ENV");
    }
    let worker = env["SANDCACHE_WORKER_USER"].clone();
    let (uid, _gid) = worker.split_once(':').unwrap();
    assert_eq!(uid, image["WORKER_UID"], "the image's worker user");
    let port: u64 = env["APP_PORT"].parse().unwrap();
    assert_eq!(runner["ports"][0]["containerPort"].as_u64(), Some(port));
    let probe = |p: &str| (runner[p]["httpGet"]["path"].as_str(), runner[p]["httpGet"]["port"].as_u64());
    assert_eq!(probe("readinessProbe"), (Some("/_healthcheck"), Some(port)));
    assert_eq!(probe("livenessProbe"), (Some("/deco/_liveness"), Some(port)));

    // The flags are serve's: the entrypoint plus these args parse.
    let args = strings(&runner["args"]);
    let out = bin().arg("serve").args(&args).arg("--help").output().unwrap();
    assert!(out.status.success(), "sandcache serve {args:?}: {}", String::from_utf8_lossy(&out.stderr));

    // The grace period covers preStop, the worker's stop grace and the
    // final snapshot's bound, as set here (or the runner's defaults).
    let secs = |v: Option<String>, default: f64| v.map_or(default, |s| s.parse::<f64>().unwrap());
    let stop_grace = secs(flag(&args, "--stop-grace"), 10.0);
    let final_snapshot = secs(
        flag(&args, "--final-snapshot-timeout").or_else(|| env.get("SANDCACHE_FINAL_SNAPSHOT_SECS").cloned()),
        60.0,
    );
    let pre_stop = strings(&runner["lifecycle"]["preStop"]["exec"]["command"]);
    assert_eq!(pre_stop.len(), 2, "preStop: a sleep: {pre_stop:?}");
    assert!(pre_stop[0].ends_with("/sleep"));
    let pre_stop: f64 = pre_stop[1].parse().unwrap();
    let grace = pod["terminationGracePeriodSeconds"].as_f64().unwrap();
    let needed = pre_stop + stop_grace + final_snapshot;
    eprintln!(
        "grace: {pre_stop} preStop + {stop_grace} stop grace + {final_snapshot} final snapshot = {needed} s; {grace} s given"
    );
    assert!(grace >= needed + 5.0, "terminationGracePeriodSeconds {grace} < {needed} + a margin");

    // Hardening: every container; capabilities: the six the runner needs,
    // NET_ADMIN in the rules' init container only.
    let mut all: Vec<(&str, &Value)> = vec![("runner", runner)];
    for c in pod["initContainers"].as_array().unwrap() {
        all.push((c["name"].as_str().unwrap(), c));
        assert_eq!(c["image"], runner["image"], "the init containers use the runner's image (iptables is in it)");
    }
    for (name, c) in &all {
        let sc = &c["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
        assert!(sc["privileged"].is_null() || sc["privileged"] == false, "{name}");
        assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"], "{name}");
        let added: BTreeSet<String> = strings(&sc["capabilities"]["add"]).into_iter().collect();
        let want: BTreeSet<String> = match *name {
            "runner" => RUNNER_CAPS.iter().map(|s| s.to_string()).collect(),
            "close-credential-endpoints" => ["NET_ADMIN".to_string()].into(),
            _ => BTreeSet::new(),
        };
        assert_eq!(added, want, "{name}'s capabilities");
        assert!(c["resources"]["limits"]["memory"].is_string(), "{name}: a memory limit");
    }

    // The init container adds exactly the threat model's rules, for the
    // worker uid (run with stub iptables: what it would do).
    let doc = read("docs/threat-model.md");
    assert!(ENDPOINTS.iter().all(|a| doc.contains(a)), "the threat model names the same endpoints");
    let rules = container(pod, "initContainers", "close-credential-endpoints");
    let calls = recorded(&strings(&rules["command"]), &["iptables", "ip6tables"]);
    assert_eq!(calls, expected_rules(uid), "the init container's rules");
    assert_eq!(strings(&rules["command"])[..2], ["/bin/sh", "-ec"], "a failed rule fails the pod");

    // Volumes: an emptyDir (with a size limit) for every dir the runner
    // writes, the root file system read-only; the work dir inside one (the
    // runner removes and re-creates it, which a mount point refuses).
    let volumes: BTreeMap<String, &Value> =
        pod["volumes"].as_array().unwrap().iter().map(|v| (v["name"].as_str().unwrap().to_owned(), v)).collect();
    let mounts: BTreeMap<String, &Value> = runner["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["mountPath"].as_str().unwrap().to_owned(), volumes[m["name"].as_str().unwrap()]))
        .collect();
    let work_parent = Path::new(&env["SANDCACHE_WORK_DIR"]).parent().unwrap().to_str().unwrap().to_owned();
    let mut sized = 0;
    for dir in [&env["DENO_DIR"], &work_parent, &"/tmp".to_owned(), &env["SANDCACHE_STATE_DIR"]] {
        let v = mounts.get(dir.as_str()).unwrap_or_else(|| panic!("no volume at {dir}"));
        let limit =
            v["emptyDir"]["sizeLimit"].as_str().unwrap_or_else(|| panic!("{dir}: an emptyDir with a sizeLimit"));
        sized += quantity(limit);
    }
    assert!(quantity(mounts[env["DENO_DIR"].as_str()]["emptyDir"]["sizeLimit"].as_str().unwrap()) >= 500 << 20);
    let limits = &runner["resources"]["limits"];
    assert!(sized <= quantity(limits["ephemeral-storage"].as_str().unwrap()), "the emptyDirs fit the storage limit");
    assert!(!mounts.contains_key(&env["SANDCACHE_WORK_DIR"]), "the work dir is not a mount point");
    let prepare = container(pod, "initContainers", "prepare-dirs");
    let calls = recorded(&strings(&prepare["command"]), &["chmod"]);
    assert_eq!(calls, BTreeSet::from([format!("chmod 0755 {work_parent}"), "chmod 1777 /tmp".to_owned()]));
    let prepared: BTreeSet<(String, String)> = prepare["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap().to_owned(), m["mountPath"].as_str().unwrap().to_owned()))
        .collect();
    for dir in [work_parent.as_str(), "/tmp"] {
        let name = mounts[dir]["name"].as_str().unwrap().to_owned();
        assert!(prepared.contains(&(name, dir.to_owned())), "prepare-dirs mounts {dir}");
    }

    // The admin credential: this pod's key, which derive-admin-key writes
    // from the platform's master (a Secret 0400 that only that init
    // container mounts) into an in-memory emptyDir the runner mounts
    // read-only. No token in the manifest, no master in the runner.
    assert!(!env.contains_key("SANDCACHE_ADMIN_TOKEN"), "the token is never in the manifest");
    let key_dir = Path::new(&env["SANDCACHE_ADMIN_KEY_FILE"]).parent().unwrap().to_str().unwrap().to_owned();
    let key_volume = mounts[&key_dir];
    assert_eq!(key_volume["emptyDir"]["medium"], "Memory", "the pod key is never on the node's disk");
    let key_mount = runner["volumeMounts"].as_array().unwrap().iter().find(|m| m["mountPath"] == key_dir.as_str());
    assert_eq!(key_mount.unwrap()["readOnly"], true);
    let derive = container(pod, "initContainers", "derive-admin-key");
    let master_volume = volumes.values().find(|v| v["secret"].is_object()).expect("the master's Secret volume");
    assert_eq!(master_volume["secret"]["defaultMode"].as_u64(), Some(0o400));
    let master_name = master_volume["name"].as_str().unwrap();
    let mounted_in = |c: &Value| c["volumeMounts"].as_array().unwrap().iter().any(|m| m["name"] == master_name);
    assert!(mounted_in(derive) && !mounted_in(runner), "only derive-admin-key mounts the master");
    let pod_name = &derive["env"].as_array().unwrap().iter().find(|e| e["name"] == "POD_NAME").unwrap();
    assert_eq!(pod_name["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
    // Its script, run here with the dirs moved under a temp dir: the key
    // the runner reads is `admin-token --pod-key` for the pod, 0600.
    let t = tempfile::tempdir().unwrap();
    let master_dir =
        derive["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == master_name).unwrap()["mountPath"]
            .as_str()
            .unwrap()
            .to_owned();
    fs::create_dir_all(t.path().join(master_dir.trim_start_matches('/'))).unwrap();
    fs::create_dir_all(t.path().join(key_dir.trim_start_matches('/'))).unwrap();
    let master_file = t.path().join(master_dir.trim_start_matches('/')).join("key");
    fs::write(&master_file, "7c".repeat(32)).unwrap();
    let script = strings(&derive["command"])[2]
        .replace(&master_dir, &t.path().join(master_dir.trim_start_matches('/')).display().to_string())
        .replace(&key_dir, &t.path().join(key_dir.trim_start_matches('/')).display().to_string());
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_sandcache")).parent().unwrap().display().to_string();
    let out = Command::new("/bin/sh")
        .args(["-ec", &script])
        .env("POD_NAME", "sandcache-runner-abc12")
        .env("PATH", format!("{bin_dir}:{}", std::env::var("PATH").unwrap_or_default()))
        .output()
        .unwrap();
    assert!(out.status.success(), "derive-admin-key: {}", String::from_utf8_lossy(&out.stderr));
    let key_file = t.path().join(env["SANDCACHE_ADMIN_KEY_FILE"].trim_start_matches('/'));
    let want = bin()
        .args(["admin-token", "--master-file"])
        .arg(&master_file)
        .args(["--pod", "sandcache-runner-abc12", "--pod-key"])
        .output()
        .unwrap();
    assert_eq!(fs::read_to_string(&key_file).unwrap(), String::from_utf8(want.stdout).unwrap());
    assert_eq!(fs::metadata(&key_file).unwrap().mode() & 0o777, 0o600, "written under umask 077");

    // The admin listener and /metrics have ports of their own, declared.
    let declared: BTreeSet<u64> =
        runner["ports"].as_array().unwrap().iter().map(|p| p["containerPort"].as_u64().unwrap()).collect();
    for (flag_name, what) in [("--admin-listen", "admin"), ("--metrics-listen", "metrics")] {
        let addr = flag(&args, flag_name).unwrap_or_else(|| panic!("{flag_name} in the runner's args"));
        let port: u64 = addr.rsplit_once(':').unwrap().1.parse().unwrap();
        assert!(declared.contains(&port), "the {what} port {port} is declared");
    }

    // Maintenance: its own account and role, no root, no capability.
    let cron = kind("deploy/k8s/gc-cronjob.yaml", "CronJob");
    assert_eq!(cron["spec"]["concurrencyPolicy"], "Forbid", "one sweep at a time");
    let jpod = &cron["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    let msa = named("deploy/k8s/serviceaccount.yaml", "ServiceAccount", jpod["serviceAccountName"].as_str().unwrap());
    let mrole = msa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].as_str().unwrap();
    assert_ne!(mrole, role, "maintenance has its own role");
    assert_eq!(msa["automountServiceAccountToken"], false);
    assert_eq!(jpod["automountServiceAccountToken"], false);
    assert_eq!(jpod["securityContext"]["runAsNonRoot"], true);
    let gc = &jpod["containers"][0];
    assert!(gc["securityContext"]["capabilities"]["add"].is_null());
    assert_eq!(strings(&gc["securityContext"]["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(strings(&gc["args"])[0], "gc");
}

/// The NetworkPolicy opens each of the runner's ports to its callers
/// alone: the sites' port to the ingress (and the platform, which calls the
/// admin routes there until it moves), the admin port to the platform, the
/// metrics port to Prometheus; nothing else reaches the pod.
#[test]
fn the_network_policy_opens_each_port_to_its_callers_alone() {
    let deployment = kind("deploy/k8s/deployment.yaml", "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let runner = container(pod, "containers", "runner");
    let args = strings(&runner["args"]);
    let port_of = |f: &str| flag(&args, f).unwrap().rsplit_once(':').unwrap().1.parse::<u64>().unwrap();
    let main: u64 = env_of(runner)["APP_PORT"].parse().unwrap();
    let np = kind("deploy/k8s/networkpolicy.yaml", "NetworkPolicy");
    assert_eq!(np["spec"]["podSelector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"]);
    assert_eq!(strings(&np["spec"]["policyTypes"]), ["Ingress"]);
    let mut who: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for rule in np["spec"]["ingress"].as_array().unwrap() {
        let from: BTreeSet<String> = rule["from"]
            .as_array()
            .expect("every rule names who")
            .iter()
            .map(|f| f["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"].as_str().unwrap().to_owned())
            .collect();
        for p in rule["ports"].as_array().expect("every rule names its ports") {
            who.entry(p["port"].as_u64().unwrap()).or_default().extend(from.iter().cloned());
        }
    }
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(who[&main], set(&["INGRESS_NAMESPACE", "PLATFORM_NAMESPACE"]));
    assert_eq!(who[&port_of("--admin-listen")], set(&["PLATFORM_NAMESPACE"]));
    assert_eq!(who[&port_of("--metrics-listen")], set(&["MONITORING_NAMESPACE"]));
    assert_eq!(who.len(), 3, "no other port is open: {who:?}");
}

/// The core manifests against Kubernetes' own schemas, strictly (unknown
/// fields refused), with `kubernetes-validate` (PyPI; `.ci/run` installs it
/// and sets SANDCACHE_KUBERNETES_VALIDATE), for the oldest and newest
/// Kubernetes it carries that EKS still runs.
#[test]
fn kubernetes_manifests_validate_strictly() {
    let test = "kubernetes_manifests_validate_strictly";
    let hint = "scripts/install-kubernetes-validate.sh";
    let Some(tool) = sandcache_testkit::ci::var_or_skip("SANDCACHE_KUBERNETES_VALIDATE", test, hint) else { return };
    let files: Vec<PathBuf> = ["deployment", "networkpolicy", "serviceaccount", "gc-cronjob"]
        .iter()
        .map(|f| repo().join(format!("deploy/k8s/{f}.yaml")))
        .collect();
    for version in ["1.31.0", "1.37.0"] {
        let out = Command::new(&tool).args(["--strict", "-k", version]).args(&files).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "kubernetes-validate --strict -k {version}:\n{text}");
        assert_eq!(text.matches(" passed for resource ").count(), 5, "every resource checked: {text}");
    }
    // Strict means strict: a misspelt field fails.
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.yaml");
    fs::write(&bad, read("deploy/k8s/networkpolicy.yaml").replace("policyTypes:", "policyType:")).unwrap();
    let out = Command::new(&tool).arg("--strict").arg(&bad).output().unwrap();
    assert!(!out.status.success(), "a misspelt field must fail");
}

/// The init container's script, run as root in a network namespace of its
/// own: iptables and ip6tables accept every rule (the isolation tests show
/// such rules refuse the worker uid).
#[test]
fn init_container_rules_load_into_iptables() {
    if !root_with("init_container_rules_load_into_iptables", &["unshare", "iptables", "ip6tables"]) {
        return;
    }
    let deployment = kind("deploy/k8s/deployment.yaml", "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let command = strings(&container(pod, "initContainers", "close-credential-endpoints")["command"]);
    let worker = env_of(container(pod, "containers", "runner"))["SANDCACHE_WORKER_USER"].clone();
    let uid = worker.split_once(':').unwrap().0.to_owned();
    let out = Command::new("unshare")
        .args(["--net", "sh", "-ec", "\"$@\"; iptables -S OUTPUT; ip6tables -S OUTPUT", "sh"])
        .args(&command)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for a in ENDPOINTS {
        let cidr = if a.contains(':') { format!("{a}/128") } else { format!("{a}/32") };
        let rule = format!("-A OUTPUT -d {cidr} -m owner --uid-owner {uid} -j REJECT");
        assert!(listed.lines().any(|l| l.starts_with(&rule)), "{rule} in:\n{listed}");
    }
}

/// `sandcache serve` as root with nothing but the manifest's capabilities
/// (bounding set, no_new_privs as allowPrivilegeEscalation: false), a
/// read-only root and its dirs as mount points: a deploy restores a cache
/// with a 0700 dir, clones as the worker, runs it; the worker's own 0700
/// dir is snapshotted; undeploy stops it and empties everything; a second
/// deploy works. Without any one of the six, one of these fails (how
/// deploy/README.md justifies them).
#[test]
fn the_runner_works_with_only_the_manifest_capabilities() {
    let test = "the_runner_works_with_only_the_manifest_capabilities";
    if !root_with(test, &["unshare", "setpriv", "git", "python3"]) {
        return;
    }
    let deployment = kind("deploy/k8s/deployment.yaml", "Deployment");
    let runner = container(&deployment["spec"]["template"]["spec"], "containers", "runner");
    let caps = strings(&runner["securityContext"]["capabilities"]["add"]);
    // Its own uid: every deploy kills all processes of the worker's uid.
    let uid = 20041;
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    fs::set_permissions(t, fs::Permissions::from_mode(0o755)).unwrap();
    for dir in ["deno-dir", "work", "state", "out"] {
        fs::create_dir(t.join(dir)).unwrap();
    }
    fs::set_permissions(t.join("out"), fs::Permissions::from_mode(0o777)).unwrap();

    // The site's cache, with a dir only its owner can enter.
    let seed = t.join("seed");
    fs::create_dir_all(seed.join("npm/pkg")).unwrap();
    fs::create_dir_all(seed.join("private")).unwrap();
    fs::write(seed.join("npm/pkg/index.js"), "export default 1;\n").unwrap();
    fs::write(seed.join("private/f"), "only the owner\n").unwrap();
    fs::set_permissions(seed.join("private/f"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(seed.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    let store = format!("file://{}", t.join("store").display());
    let (code, json, err) =
        run(bin().args(["snapshot", "--key", "site/cache.tgz", "--store", &store, "--json", "--dir"]).arg(&seed));
    assert_eq!((code, json["ok"].as_bool()), (0, Some(true)), "{err}");

    // The site's repo, the worker's (git refuses another owner's).
    let src = sandcache_testkit::site::repo(&t.join("src"), &[("main.ts", "console.log(1);\n")], None);
    src.git(&["clone", "-q", "--bare", ".", "../repo.git"]);
    let chown = Command::new("chown").args(["-R", &format!("{uid}:{uid}")]).arg(t.join("repo.git")).status();
    assert!(chown.unwrap().success());

    let bounding =
        format!("-all,{}", caps.iter().map(|c| format!("+{}", c.to_lowercase())).collect::<Vec<_>>().join(","));
    // A mount namespace: the runner's dirs are file systems of their own
    // (emptyDirs: 0777 as the kubelet makes them, the work dir's parent 0755
    // as prepare-dirs leaves it), / read-only but for the test's dir; then
    // only the manifest's capabilities.
    let wrap = r#"t=$1; shift
        mount --bind "$t" "$t"
        mount -t tmpfs -o mode=0777 deno-dir "$t/deno-dir"
        mount -t tmpfs -o mode=0755 work "$t/work"
        mount -t tmpfs -o mode=0777 state "$t/state"
        mount -o remount,bind,ro /
        if touch /.sandcache-ro-probe 2>/dev/null; then rm -f /.sandcache-ro-probe; echo "/ is writable" >&2; exit 9; fi
        exec "$@""#;
    let log = t.join("serve.log");
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-ec", wrap, "sh"])
        .arg(t)
        .args(["setpriv", "--bounding-set", &bounding, "--inh-caps", "-all", "--no-new-privs", "--"])
        .arg(env!("CARGO_BIN_EXE_sandcache"))
        .env("SANDCACHE_LOG", "debug");
    for var in ["SANDCACHE_STORE", "DECO_CACHE_S3_BUCKET", "DECO_CACHE_S3_KEY", "DENO_DIR", "SANDCACHE_ADMIN_TOKEN"] {
        cmd.env_remove(var);
    }
    let served = Serve::command(cmd, t)
        .work_dir(&t.join("work/site"))
        .args(["--store", &store, "--worker-user", &format!("{uid}:{uid}"), "--settle", "1"])
        .args(["--final-snapshot-timeout", "20"])
        .log(&log)
        .start();
    let port = served.port;
    let mut server = Stopped(served.into_child(), uid);
    let server = &mut server.0;
    let logs =
        || fs::read_to_string(&log).unwrap_or_default() + &fs::read_to_string(t.join("serve.err")).unwrap_or_default();

    let worker = r#"import os, sys, http.server
out, d = sys.argv[1], os.environ["DENO_DIR"]
reads = []
for p in ["npm/pkg/index.js", "private/f"]:
    try:
        open(os.path.join(d, p)).read(); reads.append(p + " ok")
    except OSError as e:
        reads.append(p + " " + str(e))
os.makedirs(os.path.join(d, "mine/private"), exist_ok=True)
open(os.path.join(d, "mine/private/f"), "w").write("the worker's")
os.chmod(os.path.join(d, "mine/private/f"), 0o600); os.chmod(os.path.join(d, "mine/private"), 0o700)
os.makedirs("closed", exist_ok=True); os.chmod("closed", 0o700)
open(os.path.join(out, "worker"), "w").write("%d:%d|%s" % (os.getuid(), os.getgid(), ";".join(reads)))
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), http.server.SimpleHTTPRequestHandler).serve_forever()
"#;
    let body = json!({
        "site": "site",
        "repo": format!("file://{}", t.join("repo.git").display()),
        "runCommand": ["python3", "-c", worker, t.join("out").display().to_string()],
    })
    .to_string();
    let status = || {
        let reply = http(port, "GET", "/sandbox/status", None, "").unwrap_or_default();
        serde_json::from_str::<Value>(reply.split_once("\r\n\r\n").map_or("", |(_, b)| b)).unwrap_or(Value::Null)
    };
    for round in 1..=2 {
        let _ = fs::remove_file(t.join("out/worker"));
        let reply = http(port, "POST", "/sandbox/deploy", None, &body).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "round {round}: {reply}\n{}", logs());
        // Round 1 waits for the deps-ready snapshot of the worker's files.
        let start = Instant::now();
        while (round == 1 && status()["cache"]["snapshot"].is_null()) || !t.join("out/worker").exists() {
            assert!(start.elapsed() < Duration::from_secs(30), "round {round}: {}\n{}", status(), logs());
            std::thread::sleep(Duration::from_millis(100));
        }
        let s = status();
        assert_eq!(s["cache"]["restore"]["ok"], true, "round {round}: the restore: {s}");
        if round == 1 {
            let (snapshot, restore) = (&s["cache"]["snapshot"], &s["cache"]["restore"]);
            assert_eq!(snapshot["ok"], true, "the worker's files snapshotted: {s}");
            assert!(snapshot["files"].as_u64() > restore["files"].as_u64(), "its 0600 file in a 0700 dir too: {s}");
        }
        let seen = fs::read_to_string(t.join("out/worker")).unwrap();
        let want = format!("{uid}:{uid}|npm/pkg/index.js ok;private/f ok");
        assert_eq!(seen, want, "round {round}: the worker's uid, and the restored tree is its own");
        let reply = http(port, "DELETE", "/sandbox/deploy", None, "").unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "round {round}: {reply}\n{}", logs());
        assert_eq!(fs::read_dir(t.join("deno-dir")).unwrap().count(), 0, "round {round}: DENO_DIR emptied");
        assert!(!t.join("work/site").exists(), "round {round}: the work dir removed");
        let left = processes_of(uid);
        assert!(left.is_empty(), "round {round}: processes of the worker survived: {left:?}");
    }
    let pid = rustix::process::Pid::from_raw(server.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    assert!(server.wait().unwrap().success(), "{}", logs());
    let logs = logs();
    for denied in ["Operation not permitted", "Permission denied", "Read-only file system"] {
        assert!(!logs.contains(denied), "{denied} in the runner's log:\n{logs}");
    }
}

/// The pids of every process of `uid`.
fn processes_of(uid: u32) -> Vec<i32> {
    let entries = fs::read_dir("/proc").unwrap().filter_map(Result::ok);
    entries
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<i32>().ok()?, fs::metadata(e.path()).ok()?)))
        .filter(|(_, m)| m.uid() == uid)
        .map(|(pid, _)| pid)
        .collect()
}

/// A `sandcache serve` that a failed assertion must not leave running, nor
/// its worker's uid: SIGTERM (it undeploys), SIGKILL after 30 s, then
/// SIGKILL to whatever that uid still runs (the runner may have lacked KILL).
struct Stopped(std::process::Child, u32);

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let pid = rustix::process::Pid::from_raw(self.0.id() as i32).unwrap();
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let start = Instant::now();
            while matches!(self.0.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
        for pid in processes_of(self.1).into_iter().filter_map(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

// ------------------------------------------------------------ IAM and S3

fn statements(policy: &Value) -> Vec<Value> {
    assert_eq!(policy["Version"], "2012-10-17");
    policy["Statement"].as_array().unwrap().clone()
}

/// A policy's allowed actions by resource (and their condition): no
/// wildcard action, no `*` resource, everything in BUCKET (under PREFIX for
/// objects).
fn allowed(rel: &str) -> BTreeMap<String, (BTreeSet<String>, Value)> {
    by_resource(rel, "Allow")
}

/// A policy's denied actions by resource (and their condition), checked
/// as [`allowed`]'s are.
fn denied(rel: &str) -> BTreeMap<String, (BTreeSet<String>, Value)> {
    by_resource(rel, "Deny")
}

fn by_resource(rel: &str, effect: &str) -> BTreeMap<String, (BTreeSet<String>, Value)> {
    let mut out: BTreeMap<String, (BTreeSet<String>, Value)> = BTreeMap::new();
    for s in statements(&json_file(rel)) {
        assert!(s["Effect"] == "Allow" || s["Effect"] == "Deny", "{rel}: {s}");
        if s["Effect"] != effect {
            continue;
        }
        let list = |v: &Value| if v.is_string() { vec![v.as_str().unwrap().to_owned()] } else { strings(v) };
        let actions = list(&s["Action"]);
        assert!(!actions.is_empty() && actions.iter().all(|a| a.starts_with("s3:") && !a.contains('*')), "{rel}: {s}");
        assert!(s["NotAction"].is_null() && s["NotResource"].is_null(), "{rel}: {s}");
        for r in list(&s["Resource"]) {
            assert_ne!(r, "*", "{rel}: {s}");
            assert!(r == "arn:aws:s3:::BUCKET" || r.starts_with("arn:aws:s3:::BUCKET/PREFIX/"), "{rel}: {r}");
            let entry = out.entry(r).or_default();
            entry.0.extend(actions.iter().cloned());
            entry.1 = s["Condition"].clone();
        }
    }
    out
}

/// Least privilege, as docs/threat-model.md has it: the sandbox role reads
/// the prefix, lists it, writes its own site's objects (the `site`
/// principal tag), creates pool objects only with `If-None-Match` (so never
/// overwrites one, whatever else it is granted), deletes nothing;
/// maintenance lists, reads and deletes and writes nothing (gc and delete
/// only list, read and delete). And the objects a snapshot writes are all
/// where WriteOwnSite and CreateInSharedPool allow.
#[test]
fn iam_policies_are_least_privilege() {
    let set = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let list_condition = json!({"StringLike": {"s3:prefix": ["PREFIX/*"]}});

    let sandbox = allowed("deploy/iam/sandbox-policy.json");
    let bucket = &sandbox["arn:aws:s3:::BUCKET"];
    assert_eq!((&bucket.0, &bucket.1), (&set(&["s3:ListBucket"]), &list_condition));
    assert_eq!(sandbox["arn:aws:s3:::BUCKET/PREFIX/*"].0, set(&["s3:GetObject"]));
    let own = &sandbox["arn:aws:s3:::BUCKET/PREFIX/${aws:PrincipalTag/site}/*"];
    assert_eq!(own.0, set(&["s3:PutObject", "s3:AbortMultipartUpload"]));
    // The pool: create only, one PUT with `If-None-Match` (the condition
    // key is present: S3 then refuses an existing name with 412); and the
    // same denied without it, so that no other grant (a site tagged `pool`,
    // or WriteOwnSite widened to PREFIX/* without per-deploy sessions) can
    // overwrite a pool object. Multipart cannot carry the header: the pool
    // has none (`put_new` is one PUT; pool::every_pool_write_is_one_put_...).
    let pool = &sandbox["arn:aws:s3:::BUCKET/PREFIX/pool/*"];
    assert_eq!(pool.0, set(&["s3:PutObject"]));
    assert_eq!(pool.1, json!({"Null": {"s3:if-none-match": "false"}}));
    assert_eq!(sandbox.len(), 4);
    let deny = denied("deploy/iam/sandbox-policy.json");
    assert_eq!(deny.len(), 1, "{deny:?}");
    let never = &deny["arn:aws:s3:::BUCKET/PREFIX/pool/*"];
    assert_eq!((&never.0, &never.1), (&set(&["s3:PutObject"]), &json!({"Null": {"s3:if-none-match": "true"}})));
    // The S3 store sends it for every pool write: put_new is a PUT in
    // object_store's create mode, which it forces on.
    let s3 = read("crates/sandcache-store/src/s3.rs");
    assert!(
        s3.contains("PutMode::Create") && s3.contains("S3ConditionalPut::ETagMatch"),
        "put_new sends If-None-Match"
    );
    assert!(!read("deploy/iam/sandbox-policy.json").contains("Delete"), "no sandbox deletes");
    // The same document as the threat model's.
    let doc = read("docs/threat-model.md");
    let section = &doc[doc.find("## Per-site writes: IAM").unwrap()..];
    let block = section.split("```json").nth(1).unwrap().split("```").next().unwrap();
    let documented: Value = serde_json::from_str(block).unwrap();
    assert_eq!(documented, json_file("deploy/iam/sandbox-policy.json"), "deploy/iam and docs/threat-model.md agree");

    let maintenance = allowed("deploy/iam/maintenance-policy.json");
    let bucket = &maintenance["arn:aws:s3:::BUCKET"];
    assert_eq!((&bucket.0, &bucket.1), (&set(&["s3:ListBucket"]), &list_condition));
    assert_eq!(maintenance["arn:aws:s3:::BUCKET/PREFIX/*"].0, set(&["s3:GetObject", "s3:DeleteObject"]));
    assert_eq!(maintenance.len(), 2);
    assert!(denied("deploy/iam/maintenance-policy.json").is_empty());
    // Every object a snapshot writes is one WriteOwnSite or CreateInSharedPool
    // covers: the store's root stands for PREFIX, the key is the runner's
    // default for a site.
    let tmp = tempfile::tempdir().unwrap();
    let (dir, store) = (tmp.path().join("deno-dir"), tmp.path().join("store"));
    sandcache_testkit::tree::sample_tree(&dir);
    for round in 0..2 {
        fs::write(dir.join(format!("changed-{round}.js")), format!("export default {round};\n")).unwrap();
        let (code, json, err) = run(bin()
            .args(["snapshot", "--key", "site/cache.tgz", "--json", "--store"])
            .arg(&store)
            .arg("--dir")
            .arg(&dir));
        assert_eq!((code, json["ok"].as_bool()), (0, Some(true)), "{err}");
    }
    let mut written = Vec::new();
    let mut dirs = vec![store.clone()];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() { dirs.push(p) } else { written.push(p.strip_prefix(&store).unwrap().display().to_string()) }
        }
    }
    assert!(!written.is_empty());
    for object in &written {
        assert!(
            object.starts_with("site/") || object.starts_with("pool/"),
            "a snapshot writes {object}, outside PREFIX/<site>/ and PREFIX/pool/: update the sandbox policy"
        );
    }
    // If gc starts writing, this policy (and the README) must change too.
    let gc = read("crates/sandcache-engine/src/gc.rs");
    assert!(gc.contains(".delete(") && gc.contains(".list(") && !gc.contains(".put("), "gc lists, reads and deletes");
}

/// The AWS CLI's JSON for a lifecycle configuration, as the XML S3 takes:
/// objects are elements; a list repeats its singular (`Rules` → `Rule`).
fn lifecycle_xml(config: &Value) -> String {
    fn escape(s: &str) -> String {
        s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
    }
    fn element(name: &str, v: &Value, out: &mut String) {
        match v {
            Value::Array(items) => {
                let one = name.strip_suffix('s').unwrap_or(name);
                items.iter().for_each(|i| element(one, i, out));
            }
            Value::Object(m) => {
                out.push_str(&format!("<{name}>"));
                m.iter().for_each(|(k, v)| element(k, v, out));
                out.push_str(&format!("</{name}>"));
            }
            Value::String(s) => out.push_str(&format!("<{name}>{}</{name}>", escape(s))),
            other => out.push_str(&format!("<{name}>{other}</{name}>")),
        }
    }
    let mut body = String::new();
    config.as_object().unwrap().iter().for_each(|(k, v)| element(k, v, &mut body));
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><LifecycleConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{body}</LifecycleConfiguration>"#
    )
}

/// One signed S3 request (SigV4 by object_store's signer); status and body.
async fn s3(method: http::Method, url: &str, body: String) -> (u16, String) {
    use object_store::client::{HttpConnector, ReqwestConnector};
    let credential = object_store::aws::AwsCredential {
        key_id: std::env::var("AWS_ACCESS_KEY_ID").unwrap(),
        secret_key: std::env::var("AWS_SECRET_ACCESS_KEY").unwrap(),
        token: std::env::var("AWS_SESSION_TOKEN").ok(),
    };
    let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-west-2".into());
    let mut request = http::Request::builder().method(method).uri(url).body(body.into()).unwrap();
    object_store::aws::AwsAuthorizer::new(&credential, "s3", &region).try_authorize(&mut request, None).unwrap();
    let options = object_store::ClientOptions::new().with_allow_http(true);
    let client = ReqwestConnector::default().connect(&options).unwrap();
    let response = client.execute(request).await.unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = response.status().as_u16();
    let bytes = response.into_body().bytes().await.unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// The local Garage's CLI and config (scripts/dev-s3.sh), if found.
fn garage() -> Option<Command> {
    let home = std::env::var("HOME").ok()?;
    let state = std::env::var("SANDCACHE_S3_STATE").unwrap_or_else(|_| format!("{home}/.cache/sandcache-dev-s3"));
    let config = Path::new(&state).join("garage.toml");
    let cargo_bin = format!("{}/bin/garage", std::env::var("CARGO_HOME").unwrap_or_else(|_| format!("{home}/.cargo")));
    let bin = std::env::var("GARAGE_BIN")
        .ok()
        .or_else(|| have("garage").then(|| "garage".to_owned()))
        .or_else(|| Path::new(&cargo_bin).exists().then_some(cargo_bin))?;
    config.exists().then(|| {
        let mut c = Command::new(bin);
        c.arg("-c").arg(config);
        c
    })
}

/// deploy/s3/lifecycle.json: aborts incomplete multipart uploads after a
/// day and expires nothing (gc does that); applied to Garage (a bucket of
/// its own when the garage CLI is at hand, else the test bucket: an abort
/// rule is harmless there), it is accepted and reads back, while a broken
/// variant is refused.
#[tokio::test]
async fn lifecycle_is_accepted_and_reads_back_from_s3() {
    let config = json_file("deploy/s3/lifecycle.json");
    let rules = config["Rules"].as_array().unwrap();
    assert_eq!(config.as_object().unwrap().len(), 1, "Rules only");
    for rule in rules {
        assert_eq!(rule["Status"], "Enabled");
        assert_eq!(rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"], 1);
        assert_eq!(rule["Filter"]["Prefix"], "PREFIX/");
        for expiry in ["Expiration", "NoncurrentVersionExpiration", "Transitions", "NoncurrentVersionTransitions"] {
            assert!(rule[expiry].is_null(), "{expiry}: expiry is gc's (it knows what generations reference)");
        }
    }
    let Some(spec) = sandcache_testkit::s3::spec("lifecycle") else { return };
    let endpoint = spec.endpoint.clone().expect("the test server has an endpoint");
    // The test's random prefix names the bucket too.
    let own = spec.prefix.rsplit('/').next().unwrap().replace("t-lifecycle-", "t-lifecycle-bucket-");
    let key_id = std::env::var("AWS_ACCESS_KEY_ID").unwrap();
    let made = garage().is_some_and(|mut g| {
        g.args(["bucket", "create", &own]).output().is_ok_and(|o| o.status.success())
            && garage()
                .unwrap()
                .args(["bucket", "allow", "--read", "--write", "--owner", &own, "--key", &key_id])
                .output()
                .is_ok_and(|o| o.status.success())
    });
    let bucket = if made { own.clone() } else { spec.bucket.clone() };
    eprintln!(
        "lifecycle: applying to bucket {bucket}{}",
        if made { " (made for this test)" } else { " (the test bucket)" }
    );
    let url = format!("{}/{bucket}?lifecycle", endpoint.trim_end_matches('/'));
    let before = if made { None } else { Some(s3(http::Method::GET, &url, String::new()).await) };

    let ours = read("deploy/s3/lifecycle.json").replace("PREFIX/", &format!("{}/", spec.prefix));
    let xml = lifecycle_xml(&serde_json::from_str(&ours).unwrap());
    let (code, answer) = s3(http::Method::PUT, &url, xml.clone()).await;
    assert_eq!(code, 200, "PutBucketLifecycleConfiguration: {answer}\n{xml}");
    let (code, back) = s3(http::Method::GET, &url, String::new()).await;
    assert_eq!(code, 200, "{back}");
    let compact: String = back.split_whitespace().collect();
    for part in [
        format!("<ID>{}</ID>", rules[0]["ID"].as_str().unwrap()),
        "<Status>Enabled</Status>".into(),
        format!("<Prefix>{}/</Prefix>", spec.prefix),
        "<AbortIncompleteMultipartUpload><DaysAfterInitiation>1</DaysAfterInitiation>".into(),
    ] {
        assert!(compact.contains(&part), "{part} in {back}");
    }
    // Accepted means checked: a bad status is refused.
    let broken = lifecycle_xml(&serde_json::from_str(&ours.replace("Enabled", "enabled")).unwrap());
    let (code, answer) = s3(http::Method::PUT, &url, broken).await;
    assert!((400..500).contains(&code), "a broken configuration is refused: {code} {answer}");

    if made {
        let out = garage().unwrap().args(["bucket", "delete", "--yes", &own]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    } else {
        match before {
            Some((200, previous)) => assert_eq!(s3(http::Method::PUT, &url, previous).await.0, 200),
            _ => assert!(s3(http::Method::DELETE, &url, String::new()).await.0 < 300),
        }
    }
}

/// The maintenance Job's command, args and env as written (placeholders
/// filled, static keys standing in for its role), with nothing else of the
/// environment, as a non-root uid when the test is root: gc runs and
/// reports on a key with a generation.
#[test]
fn maintenance_job_runs_gc_as_written() {
    let Some(spec) = sandcache_testkit::s3::spec("maintenance") else { return };
    let cron = kind("deploy/k8s/gc-cronjob.yaml", "CronJob");
    let pod = &cron["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let uid = pod["securityContext"]["runAsUser"].as_u64().unwrap();
    let fill = |s: &str| {
        s.replace("BUCKET", &spec.bucket)
            .replace("PREFIX", &spec.prefix)
            .replace("REGION", &spec.region)
            .replace("SITE", "site")
    };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    sandcache_testkit::tree::sample_tree(&src);
    let store = format!("s3://{}/{}", spec.bucket, spec.prefix);
    let (code, json, err) =
        run(bin().args(["snapshot", "--key", "site/cache.tgz", "--store", &store, "--json", "--dir"]).arg(&src));
    assert_eq!((code, json["ok"].as_bool()), (0, Some(true)), "{err}");

    let command = strings(&c["command"]);
    assert_eq!(command, ["/usr/local/bin/sandcache"]);
    let mut cmd = if is_root() && have("setpriv") {
        let mut s = Command::new("setpriv");
        s.args(["--reuid", &uid.to_string(), "--regid", &uid.to_string(), "--clear-groups", "--no-new-privs", "--"]);
        s.arg(env!("CARGO_BIN_EXE_sandcache"));
        s
    } else {
        Command::new(env!("CARGO_BIN_EXE_sandcache"))
    };
    cmd.env_clear().env("PATH", "/usr/bin:/bin").args(strings(&c["args"]).iter().map(|a| fill(a)));
    for (k, v) in env_of(c) {
        cmd.env(k, fill(&v));
    }
    for k in ["AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        cmd.env(k, std::env::var(k).unwrap());
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["generations_kept"], 1, "{report}");
}
