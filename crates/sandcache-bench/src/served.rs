//! A runner served on a loopback port for the first-response tables, and
//! what they measure with: deploy to first 200, undeploy, the machine's CPU.

use std::time::{Duration, Instant};

use sandcache_runner::{Runner, RunnerConfig};
use sandcache_testkit::http::{self, Request};
use serde_json::Value;

/// The runner's admin token: the worker runs as the benchmark's own uid,
/// and without a token the admin API is refused to anything that might be
/// the worker.
pub(crate) const TOKEN: &str = "bench-admin-token";

pub(crate) async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Option<(u16, String)> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let req = Request::new(method, path).bearer(Some(TOKEN)).json(body);
    let resp = http::send(addr, &req).await.ok()?;
    Some((resp.status(), resp.body().to_owned()))
}

pub(crate) async fn status(addr: std::net::SocketAddr) -> Value {
    let (_, body) = http(addr, "GET", "/sandbox/status", None).await.unwrap_or_default();
    serde_json::from_str(&body).unwrap_or(Value::Null)
}

/// One runner, served on a loopback port.
pub(crate) struct Served {
    pub(crate) addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Served {
    pub(crate) async fn start(cfg: RunnerConfig) -> Served {
        let runner = Runner::new(cfg);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(sandcache_runner::serve(listener, runner, async {
            let _ = rx.await;
        }));
        Served { addr, stop: Some(tx), task }
    }

    pub(crate) async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = self.task.await;
    }
}

/// A deploy, then GET / until the first 200: seconds, and the status then.
pub(crate) async fn deploy_to_first_200(s: &Served, body: &Value) -> (f64, Value) {
    let start = Instant::now();
    let (code, text) = http(s.addr, "POST", "/sandbox/deploy", Some(body)).await.expect("deploy");
    assert_eq!(code, 200, "deploy: {text}");
    loop {
        if let Some((200, _)) = http(s.addr, "GET", "/", None).await {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(300), "no 200 within 300 s: {}", status(s.addr).await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (start.elapsed().as_secs_f64(), status(s.addr).await)
}

/// Undeploys (the final snapshot records what the boot read: the hot set).
/// The next deploy is a second deploy on the same runner, as a reused pod
/// sees it: the emptied dir's old tree waits beside it (a restore removes it
/// after its swap), so no deploy creates files beside a mass delete. What
/// background work is running (a snapshot's cleanup) is waited for.
pub(crate) async fn undeploy(s: &Served) {
    let (code, text) = http(s.addr, "DELETE", "/sandbox/deploy", None).await.expect("undeploy");
    assert_eq!(code, 200, "undeploy: {text}");
    tokio::task::spawn_blocking(|| sandcache_engine::wait_for_background(Duration::from_secs(120)))
        .await
        .expect("background cleanup");
}

/// The whole machine's CPU ticks so far, busy and in all, over every core
/// (`/proc/stat`): what a deploy costs, whichever process (runner, store,
/// Deno) spends it.
pub(crate) fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).take(8).filter_map(|x| x.parse().ok()).collect();
    let (idle, total) = (v.get(3)? + v.get(4)?, v.iter().sum::<u64>());
    Some((total - idle, total))
}

pub(crate) fn cores() -> usize {
    std::fs::read_to_string("/proc/stat").map_or(1, |s| {
        s.lines().filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit)).count().max(1)
    })
}

/// Over a run on `cores` cores: the share of the machine busy, and the CPU
/// seconds that is.
pub(crate) fn cpu_used(
    before: Option<(u64, u64)>,
    after: Option<(u64, u64)>,
    secs: f64,
    cores: usize,
) -> Option<(f64, f64)> {
    let ((b0, t0), (b1, t1)) = (before?, after?);
    let busy = (b1 - b0) as f64 / (t1 - t0).max(1) as f64;
    Some((busy, busy * secs * cores as f64))
}

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}
