//! What the CLI's tests share: the binary with a clean environment, its
//! JSON output, a blocking HTTP request to `serve`, and `serve` itself as
//! the tests start it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sandcache_testkit::http::{self, Request};
use sandcache_testkit::serve::{Serve, ServeProcess};

pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sandcache"));
    // Nothing from the developer's shell decides where the store is.
    for var in [
        "SANDCACHE_STORE",
        "DECO_CACHE_S3_BUCKET",
        "DECO_CACHE_S3_KEY",
        "DENO_DIR",
        "SANDCACHE_TIMEOUT",
        "SANDCACHE_MAX_BYTES",
        "SANDCACHE_MAX_FILES",
        "SANDCACHE_MAX_PATH_LEN",
    ] {
        c.env_remove(var);
    }
    c
}

pub fn run(cmd: &mut Command) -> (i32, serde_json::Value, String) {
    let out: Output = cmd.output().expect("run sandcache");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = serde_json::from_str(stdout.trim()).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), json, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// One HTTP/1.1 request to `sandcache serve` on `port`; the whole answer,
/// or `None` if it does not listen (yet).
pub fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: &str) -> Option<String> {
    let req = Request::new(method, path)
        .header("host", "x")
        .bearer(token)
        .json(body)
        .timeout(std::time::Duration::from_secs(60));
    http::send_blocking(([127, 0, 0, 1], port).into(), &req).ok().map(|r| r.text)
}

/// `--worker-user` for a test that runs `serve` as root: a uid of its own
/// (`20000 + n`), since every deploy kills all processes of its worker's
/// uid. Not root: nothing (the worker shares the runner's uid).
pub fn worker_user_for_test(n: u32) -> Vec<String> {
    if rustix::process::geteuid().is_root() { vec!["--worker-user".into(), format!("{}", 20000 + n)] } else { vec![] }
}

/// A test dir a worker's uid can pass through (0755), and in it `out`, a
/// dir it can write (0777) for what the worker reports.
pub fn tmp_with_out() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    for (d, mode) in [(tmp.path(), 0o755), (out_dir.as_path(), 0o777)] {
        fs::set_permissions(d, fs::Permissions::from_mode(mode)).unwrap();
    }
    (tmp, out_dir)
}

pub fn local(cmd: &str, dir: &Path, store: &Path, key: &str) -> Command {
    let mut c = bin();
    c.arg(cmd).arg("--dir").arg(dir).arg("--store").arg(store).arg("--key").arg(key).arg("--json");
    c
}

/// `sandcache serve` from [`bin`], its dirs under `tmp`, without the
/// developer's admin token.
pub fn serve(tmp: &Path) -> Serve {
    Serve::command(bin(), tmp).env_remove("SANDCACHE_ADMIN_TOKEN")
}

/// `serve` as the isolation and admin-plane tests run it, started: debug
/// logs, a 1 s settle, `envs`, then `extra` arguments.
pub fn start_serve(tmp: &Path, envs: &[(&str, &str)], extra: &[&str]) -> ServeProcess {
    start_serve_on("127.0.0.1", tmp, envs, extra)
}

/// As [`start_serve`], on `host` (`[::]` for every address).
pub fn start_serve_on(host: &str, tmp: &Path, envs: &[(&str, &str)], extra: &[&str]) -> ServeProcess {
    let mut s = serve(tmp).host(host).args(["--settle", "1"]).args(extra).env("SANDCACHE_LOG", "debug");
    for (k, v) in envs {
        s = s.env(k, v);
    }
    s.start()
}
