//! The admin plane over a real socket: no path under `/sandbox`, however
//! written, reaches the worker, and no request reaches it with the admin
//! credential, whatever its path. A worker records every request it gets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use sandcache_runner::admin::Key;
use sandcache_runner::{AdminAuth, Peer, Runner};
use sandcache_testkit::http;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::support::Served;

const TOKEN: &str = "fleet-token-5f1e";

/// Logs each request (method, path, headers) as a JSON line to $RECORD,
/// and answers `from-worker`.
const RECORDER: &str = r#"
import http.server, json, os
log = open(os.environ["RECORD"], "a")
class H(http.server.BaseHTTPRequestHandler):
    def any(self):
        n = int(self.headers.get("content-length") or 0)
        if n:
            self.rfile.read(n)
        log.write(json.dumps({"method": self.command, "path": self.path, "headers": list(self.headers.items())}) + "\n")
        log.flush()
        self.send_response(200)
        self.send_header("content-length", "11")
        self.end_headers()
        self.wfile.write(b"from-worker")
    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = any
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

/// One raw HTTP/1.1 request, the path sent byte for byte as given.
async fn raw(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = http::Request::new(method, path).header("host", "site.example").header("connection", "close");
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let resp = http::send(addr, &req.timeout(Duration::from_secs(30))).await.unwrap();
    (resp.status(), resp.body().to_owned())
}

struct Recorder {
    addr: SocketAddr,
    record: std::path::PathBuf,
    _served: Served,
    _tmp: tempfile::TempDir,
}

/// A runner with `admin`, deployed with the recorder. As root the worker
/// gets a uid of its own, as in production: with the runner's own uid, the
/// peer check must also look at who holds a socket, and a worker another
/// test forks at that moment holds the test's socket too (until its exec),
/// which is refused as the worker's. Each test its own `uid`: a deploy
/// kills every process of its worker's uid.
async fn serve_with_recorder(admin: AdminAuth, uid: u32) -> Recorder {
    let tmp = tempfile::tempdir().unwrap();
    let record = tmp.path().join("record.jsonl");
    std::fs::write(&record, "").unwrap();
    let mut cfg = super::test_config(tmp.path());
    cfg.admin = admin;
    if rustix::process::geteuid().is_root() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&record, Some(uid), Some(uid)).unwrap();
        cfg.worker_user = Some(sandcache_runner::isolation::WorkerUser { uid, gid: uid });
    }
    let served = Served::start(cfg).await;
    let (addr, runner) = (served.addr, served.runner.clone());
    let body = json!({"site": "recorder", "runCommand": ["python3", "-c", RECORDER],
        "envs": {"RECORD": record.display().to_string()}});
    let (s, v) = super::call_with(&runner, "POST", "/sandbox/deploy", body, Some(TOKEN)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let start = Instant::now();
    while raw(addr, "GET", "/ready", &[]).await.1 != "from-worker" {
        assert!(start.elapsed() < Duration::from_secs(30), "the recorder never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Recorder { addr, record, _served: served, _tmp: tmp }
}

fn recorded(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The security review's paths (and more readings of the same), each with
/// the platform's token: the runner answers every one itself.
const ADMIN_PATHS: [&str; 15] = [
    "/sandbox/deploy/",
    "/sandbox/status/",
    "/Sandbox/status",
    "/sandbox/logs",
    "//sandbox/status",
    "/sandbox//status",
    "/sandbox/%73tatus",
    "/SANDBOX/DEPLOY",
    "/sandbox/./status",
    "/x/../sandbox/status",
    "/%2573andbox/status",
    "/sandbox;x/status",
    "/sandbox/cache/snapshot/",
    "/sandbox",
    "/%5Csandbox/status",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_admin_path_and_no_admin_credential_reaches_the_worker() {
    let s = serve_with_recorder(AdminAuth { token: Some(TOKEN.into()), ..Default::default() }, 20023).await;
    let bearer = format!("Bearer {TOKEN}");
    let before = recorded(&s.record).len();
    for path in ADMIN_PATHS {
        for method in ["GET", "POST", "DELETE"] {
            let (status, body) = raw(s.addr, method, path, &[("authorization", &bearer)]).await;
            assert_ne!(body, "from-worker", "{method} {path} reached the worker");
            assert!(status == 404 || status == 405 || status == 400, "{method} {path}: {status} {body}");
        }
    }
    assert_eq!(recorded(&s.record).len(), before, "the worker saw an admin path: {:?}", recorded(&s.record));

    // The site's own paths with the token: the worker gets the request,
    // never the token; the site's own Authorization passes as it was.
    let site_auth = "Basic c2l0ZTpwYXNzd29yZA==";
    for path in ["/", "/api/orders?x=1", "/sandboxes"] {
        let (status, body) = raw(s.addr, "GET", path, &[("authorization", &bearer)]).await;
        assert_eq!((status, body.as_str()), (200, "from-worker"), "{path}");
        let (_, body) = raw(s.addr, "POST", path, &[("authorization", site_auth), ("authorization", &bearer)]).await;
        assert_eq!(body, "from-worker", "{path}");
        let (_, body) = raw(s.addr, "GET", path, &[("authorization", &format!("bearer  {TOKEN} "))]).await;
        assert_eq!(body, "from-worker", "{path}");
    }
    let seen = recorded(&s.record);
    assert_eq!(seen.len(), before + 9, "{seen:?}");
    let all = serde_json::to_string(&seen).unwrap();
    assert!(!all.contains(TOKEN), "the admin token reached the worker: {all}");
    let with_site_auth = seen.iter().filter(|r| r["method"] == "POST").collect::<Vec<_>>();
    for r in with_site_auth {
        let auths: Vec<&str> = r["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h[0].as_str().unwrap().eq_ignore_ascii_case("authorization"))
            .map(|h| h[1].as_str().unwrap())
            .collect();
        assert_eq!(auths, [site_auth], "the site's own header passes untouched: {r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_pod_tokens_open_the_admin_api_and_never_reach_the_worker() {
    let key = Key::from_hex(&"5a".repeat(32)).unwrap().pod_key("runner-7");
    let other = Key::from_hex(&"5a".repeat(32)).unwrap().pod_key("runner-8");
    let s = serve_with_recorder(
        AdminAuth { token: Some(TOKEN.into()), pod_key: Some(key.clone()), ..Default::default() },
        20024,
    )
    .await;
    let now = sandcache_runner::admin::token::unix_now();
    let mine = format!("Bearer {}", key.mint(now + 60));
    let theirs = format!("Bearer {}", other.mint(now + 60));
    let stale = format!("Bearer {}", key.mint(now.saturating_sub(1)));
    assert_eq!(raw(s.addr, "GET", "/sandbox/status", &[("authorization", &mine)]).await.0, 200);
    for (cred, why) in [(&theirs, "token not made for this pod"), (&stale, "token expired")] {
        let (status, body) = raw(s.addr, "GET", "/sandbox/status", &[("authorization", cred)]).await;
        assert_eq!(status, 401, "{body}");
        assert!(body.contains(why), "{body}");
    }
    for cred in [&mine, &theirs, &stale] {
        assert_eq!(raw(s.addr, "GET", "/page", &[("authorization", cred)]).await.1, "from-worker");
    }
    let all = std::fs::read_to_string(&s.record).unwrap();
    assert!(!all.contains("sandcache-admin.v1."), "a per-pod token reached the worker: {all}");
}

/// The guard's decisions for peers the kernel names otherwise: a peer on
/// another host needs a token (or the explicit flag), and a local address
/// no socket has is refused even with one.
#[tokio::test]
async fn remote_and_unattributable_peers_need_what_the_policy_says() {
    let tmp = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let local = listener.local_addr().unwrap();
    let remote = Peer::Tcp { local, remote: "198.51.100.7:40000".parse().unwrap() };
    let nobody = Peer::Tcp { local, remote: "127.0.0.1:9".parse().unwrap() };
    let status = |runner: Arc<Runner>, peer: Peer, token: Option<&'static str>| async move {
        let mut req = Request::builder().uri("/sandbox/status");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let mut req = req.body(axum::body::Body::empty()).unwrap();
        req.extensions_mut().insert(ConnectInfo(peer));
        sandcache_runner::app(runner).oneshot(req).await.unwrap().status()
    };
    let open = Runner::new(super::test_config(tmp.path()));
    assert_eq!(status(open.clone(), remote, None).await, StatusCode::FORBIDDEN, "no token: not from another host");
    assert_eq!(status(open.clone(), nobody, None).await, StatusCode::FORBIDDEN, "a peer nobody holds");
    let mut cfg = super::test_config(tmp.path());
    cfg.admin.remote_without_token = true;
    let flagged = Runner::new(cfg);
    assert_eq!(status(flagged.clone(), remote, None).await, StatusCode::OK, "the explicit flag lets hosts in");
    assert_eq!(status(flagged, nobody, None).await, StatusCode::FORBIDDEN, "never an unattributable one");
    let mut cfg = super::test_config(tmp.path());
    cfg.admin.token = Some(TOKEN.into());
    let guarded = Runner::new(cfg);
    assert_eq!(status(guarded.clone(), remote, Some(TOKEN)).await, StatusCode::OK);
    assert_eq!(status(guarded.clone(), remote, None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(guarded, nobody, Some(TOKEN)).await, StatusCode::FORBIDDEN, "even with the token");
}

/// `/metrics` on the main port is behind the admin check; moved to a
/// listener of its own, the main port's path is the site's.
#[tokio::test]
async fn metrics_follow_the_admin_check_or_move_away() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = super::test_config(tmp.path());
    cfg.admin.token = Some(TOKEN.into());
    let runner = Runner::new(cfg.clone());
    let (s, _) = super::call_with(&runner, "GET", "/metrics", Value::Null, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = super::call_with(&runner, "GET", "/metrics", Value::Null, Some(TOKEN)).await;
    assert_eq!(s, StatusCode::OK);
    cfg.metrics_on_main = false;
    let runner = Runner::new(cfg);
    let (s, v) = super::call_with(&runner, "GET", "/metrics", Value::Null, Some(TOKEN)).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "the site's path, and no site is deployed: {v}");
    let req = Request::builder().uri("/metrics").body(axum::body::Body::empty()).unwrap();
    let resp = sandcache_runner::metrics_app(runner).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

/// With the admin routes off the main port, every /sandbox path there is
/// the runner's 404; the admin listener serves them and proxies nothing.
#[tokio::test]
async fn the_admin_listener_serves_what_the_main_port_no_longer_does() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = super::test_config(tmp.path());
    cfg.admin_on_main = false;
    let runner = Runner::new(cfg);
    let (s, _) = super::call(&runner, "GET", "/sandbox/status", Value::Null).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let req = |uri: &str| Request::builder().uri(uri).body(axum::body::Body::empty()).unwrap();
    let admin = sandcache_runner::admin_app(runner.clone());
    assert_eq!(admin.clone().oneshot(req("/sandbox/status")).await.unwrap().status(), StatusCode::OK);
    assert_eq!(admin.clone().oneshot(req("/_healthcheck")).await.unwrap().status(), StatusCode::OK);
    assert_eq!(admin.oneshot(req("/anything")).await.unwrap().status(), StatusCode::NOT_FOUND, "nothing proxied");
}
