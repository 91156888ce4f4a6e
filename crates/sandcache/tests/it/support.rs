//! What the CLI's tests share: the binary with a clean environment, its
//! JSON output, and a blocking HTTP request to `serve`.

use std::path::Path;
use std::process::{Command, Output};

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
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(60))).ok()?;
    let auth = token.map(|t| format!("authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// `--worker-user` for a test that runs `serve` as root: a uid of its own
/// (`20000 + n`), since every deploy kills all processes of its worker's
/// uid. Not root: nothing (the worker shares the runner's uid).
pub fn worker_user_for_test(n: u32) -> Vec<String> {
    if rustix::process::geteuid().is_root() { vec!["--worker-user".into(), format!("{}", 20000 + n)] } else { vec![] }
}

pub fn local(cmd: &str, dir: &Path, store: &Path, key: &str) -> Command {
    let mut c = bin();
    c.arg(cmd).arg("--dir").arg(dir).arg("--store").arg(store).arg("--key").arg(key).arg("--json");
    c
}
