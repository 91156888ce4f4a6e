//! The admin plane as the binary sets it up: it refuses to serve a
//! tokenless admin API beyond loopback, serves the admin routes on a unix
//! socket or a port of their own and `/metrics` on another, and takes the
//! per-pod tokens `sandcache admin-token` makes.

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::Stdio;

use serde_json::Value;

use crate::support::{bin, http, start_serve};

/// `serve` that must not start: its exit code and stderr.
fn refused(args: &[&str], envs: &[(&str, &str)]) -> (i32, String) {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = bin();
    cmd.arg("serve").args(args).arg("--dir").arg(tmp.path().join("d")).arg("--state-dir").arg(tmp.path().join("s"));
    cmd.env_remove("SANDCACHE_ADMIN_TOKEN").env_remove("SANDCACHE_ADMIN_TOKEN_FILE").env_remove("APP_PORT");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_tokenless_admin_api_beyond_loopback_does_not_start() {
    for listen in ["0.0.0.0:0", "[::]:0"] {
        let (code, err) = refused(&["--listen", listen], &[]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("refusing to serve the admin API on") && err.contains(listen), "{err}");
        assert!(err.contains("SANDCACHE_ADMIN_TOKEN_FILE") && err.contains("--admin-without-token"), "{err}");
    }
    // The default listen address is every interface.
    let (code, err) = refused(&[], &[]);
    assert_eq!(code, 2, "{err}");
    // An admin listener beyond loopback, too, even with the main port's
    // routes off.
    let (code, err) =
        refused(&["--listen", "0.0.0.0:0", "--admin-on-main", "false", "--admin-listen", "0.0.0.0:0"], &[]);
    assert!(code == 2 && err.contains("refusing"), "{err}");
    let (code, err) = refused(&["--listen", "127.0.0.1:0", "--admin-on-main", "false"], &[]);
    assert!(code == 2 && err.contains("needs --admin-listen"), "{err}");
    let tmp = tempfile::tempdir().unwrap();
    let bad_key = tmp.path().join("key");
    fs::write(&bad_key, "not hex").unwrap();
    let (code, err) = refused(&["--listen", "127.0.0.1:0"], &[("SANDCACHE_ADMIN_KEY_FILE", bad_key.to_str().unwrap())]);
    assert!(code == 2 && err.contains("SANDCACHE_ADMIN_KEY_FILE") && err.contains("64 hex digits"), "{err}");
}

#[test]
fn the_admin_api_on_a_unix_socket_and_metrics_on_a_port_of_their_own() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("admin.sock");
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let admin = format!("unix:{}", sock.display());
    let metrics = format!("127.0.0.1:{metrics_port}");
    let serve = start_serve(
        tmp.path(),
        &[],
        &["--admin-listen", &admin, "--admin-on-main", "false", "--metrics-listen", &metrics],
    );
    let meta = fs::symlink_metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "only the runner's uid may connect");
    let curl = |args: &[&str]| {
        let out =
            std::process::Command::new("curl").args(["-s", "-o", "-", "-w", "\n%{http_code}"]).args(args).output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    };
    let status = curl(&["--unix-socket", sock.to_str().unwrap(), "http://admin/sandbox/status"]);
    if !status.is_empty() {
        assert!(status.ends_with("\n200"), "{status}");
        let v: Value = serde_json::from_str(status.lines().next().unwrap()).unwrap();
        assert_eq!(v["deployed"], false);
        let other = curl(&["--unix-socket", sock.to_str().unwrap(), "http://admin/site/page"]);
        assert!(other.ends_with("\n404"), "the admin listener proxies nothing: {other}");
    } else {
        eprintln!("no curl: the unix socket's routes are checked in process only");
    }
    // The main port serves no admin route, and proxies none either.
    let reply = http(serve.port, "GET", "/sandbox/status", None, "").unwrap();
    assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
    // /metrics on its own port; on the main port it is the site's path.
    let reply = http(metrics_port, "GET", "/metrics", None, "").unwrap();
    assert!(reply.starts_with("HTTP/1.1 200") && reply.contains("sandcache_"), "{reply}");
    let reply = http(serve.port, "GET", "/metrics", None, "").unwrap();
    assert!(reply.starts_with("HTTP/1.1 503") && reply.contains("not deployed"), "{reply}");
    let log = serve.stop();
    assert!(log.contains("admin API on unix socket"), "{log}");
}

#[test]
fn per_pod_tokens_from_the_cli_open_that_pod_only() {
    let tmp = tempfile::tempdir().unwrap();
    let master = tmp.path().join("master");
    fs::write(&master, format!("{}\n", "4e".repeat(32))).unwrap();
    let admin_token = |pod: &str, extra: &[&str]| {
        let out = bin()
            .args(["admin-token", "--master-file", master.to_str().unwrap(), "--pod", pod])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let key_file = tmp.path().join("pod-key");
    fs::write(&key_file, admin_token("runner-0", &["--pod-key"])).unwrap();
    fs::set_permissions(&key_file, fs::Permissions::from_mode(0o400)).unwrap();
    let serve = start_serve(tmp.path(), &[("SANDCACHE_ADMIN_KEY_FILE", key_file.to_str().unwrap())], &[]);
    let mine = admin_token("runner-0", &["--ttl", "60"]);
    let theirs = admin_token("runner-1", &[]);
    let reply = http(serve.port, "GET", "/sandbox/status", Some(&mine), "").unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    for (cred, status) in [(Some(theirs.as_str()), "401"), (None, "401")] {
        let reply = http(serve.port, "GET", "/sandbox/status", cred, "").unwrap();
        assert!(reply.starts_with(&format!("HTTP/1.1 {status}")), "{reply}");
    }
    let out =
        bin().args(["admin-token", "--master-file", master.to_str().unwrap(), "--pod", "p", "--ttl", "0"]).output();
    let err = String::from_utf8_lossy(&out.unwrap().stderr).into_owned();
    assert!(err.contains("--ttl 0"), "{err}");
    let log = serve.stop();
    assert!(!log.contains(&mine) && !log.contains(&"4e".repeat(32)), "no credential in the log");
}
