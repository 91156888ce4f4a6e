//! What the runner's tests share: a runner config under a test dir, calls
//! to the app in process, waiting on its status, and a runner served on a
//! loopback port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use sandcache_runner::{Runner, RunnerConfig};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::ServiceExt;

pub fn test_config(tmp: &Path) -> RunnerConfig {
    RunnerConfig {
        deno_dir: tmp.join("deno-dir"),
        work_dir: tmp.join("site"),
        restore_timeout: Duration::from_secs(10),
        settle: Duration::from_millis(600),
        settle_poll: Duration::from_millis(100),
        stop_grace: Duration::from_secs(3),
        port_timeout: Duration::from_secs(30),
        runner_env: std::env::vars().collect(),
        state_dir: tmp.join("state"),
        ..RunnerConfig::default()
    }
}

pub async fn call(runner: &Arc<Runner>, method: &str, uri: &str, body: Value) -> (StatusCode, Value) {
    call_with(runner, method, uri, body, None).await
}

pub async fn call_with(
    runner: &Arc<Runner>,
    method: &str,
    uri: &str,
    body: Value,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri).header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let body = if body.is_null() { Body::empty() } else { Body::from(body.to_string()) };
    let resp = sandcache_runner::app(runner.clone()).oneshot(req.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let value =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, value)
}

pub async fn raw_call(runner: &Arc<Runner>, method: &str, uri: &str, body: Vec<u8>) -> (StatusCode, String) {
    let req = Request::builder().method(method).uri(uri).body(Body::from(body)).unwrap();
    let resp = sandcache_runner::app(runner.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// Deploy envs naming a store at `addr` (one that stalls, in these tests).
pub fn stalled_store_envs(addr: std::net::SocketAddr) -> BTreeMap<&'static str, String> {
    [
        ("DECO_CACHE_S3_BUCKET", "bucket".to_owned()),
        ("DECO_CACHE_S3_KEY", "site/cache.tgz".to_owned()),
        ("DECO_CACHE_S3_ENDPOINT", format!("http://{addr}")),
    ]
    .into_iter()
    .collect()
}

/// Polls status until `pred` holds, for at most `secs`.
pub async fn wait_status(runner: &Arc<Runner>, secs: u64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let (_, s) = call(runner, "GET", "/sandbox/status", Value::Null).await;
        if pred(&s) {
            return s;
        }
        assert!(start.elapsed() < Duration::from_secs(secs), "timed out waiting for {what}: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A runner served on a loopback port, as the binary serves it
/// (`serve(listener, shutdown)`); dropped, it shuts down.
pub struct Served {
    pub addr: SocketAddr,
    pub runner: Arc<Runner>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Served {
    pub async fn start(cfg: RunnerConfig) -> Served {
        let runner = Runner::new(cfg);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(sandcache_runner::serve(listener, runner.clone(), async {
            let _ = stopped.await;
        }));
        Served { addr, runner, stop: Some(stop), task }
    }

    /// Shuts it down (the runner undeploys) and returns what `serve` did.
    pub async fn stop(mut self) -> std::io::Result<()> {
        self.stop.take().unwrap().send(()).unwrap();
        (&mut self.task).await.unwrap()
    }
}

/// For a test that runs the worker as a uid of its own: a test dir that
/// uid can pass through (0755), or `None` (said) when not root.
pub fn root_tmp(why: &str) -> Option<tempfile::TempDir> {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipping: needs root to {why}");
        return None;
    }
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    Some(tmp)
}

/// A runner whose deploy restores from a store that never answers (the
/// restore deadline `restore_timeout`), and that deploy, under way: the
/// test dir, the runner, and the deploy's answer to come.
pub async fn deploy_on_a_stalled_store(
    restore_timeout: Duration,
) -> (tempfile::TempDir, Arc<Runner>, tokio::task::JoinHandle<(StatusCode, Value)>) {
    let tmp = tempfile::tempdir().unwrap();
    let addr = sandcache_testkit::net::stalling_server(vec![0x1f, 0x8b]).await;
    let mut cfg = test_config(tmp.path());
    cfg.restore_timeout = restore_timeout;
    let runner = Runner::new(cfg);
    let (r2, envs) = (runner.clone(), stalled_store_envs(addr));
    let deploy = tokio::spawn(async move {
        call(&r2, "POST", "/sandbox/deploy", serde_json::json!({"site": "s", "runCommand": [], "envs": envs})).await
    });
    (tmp, runner, deploy)
}
