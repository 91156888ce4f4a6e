//! The site's worker process: started in its own process group, logged line
//! by line, watched until it listens, stopped with TERM, grace, then KILL.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use tokio::sync::watch;

use crate::isolation::OwnChild;

/// Where a worker is in its life, as `/sandbox/status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    None,
    Starting,
    Ready,
    Failed,
}

/// Variables the worker never inherits from the runner: the keys that write
/// the cache and the build cache. The worker may run untrusted code. A deploy
/// may still forward any of them explicitly in its `envs`, except `ADMIN_S3_*`.
pub const SCRUBBED: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "SANDCACHE_ADMIN_TOKEN",
    "SANDCACHE_ADMIN_TOKEN_FILE",
    "SANDCACHE_ADMIN_KEY_FILE",
];

/// True for variables that never reach the worker, even when forwarded:
/// the legacy build cache's keys, the site's scoped cache credentials and
/// the runner's own admin credential.
pub fn never_forwarded(name: &str) -> bool {
    name.starts_with("ADMIN_S3_")
        || name.starts_with("SANDCACHE_ADMIN_")
        || sandcache_engine::seed_env::CREDENTIALS.contains(&name)
}

/// The worker's environment: the runner's own minus credentials, plus the
/// deploy's `envs` (minus `ADMIN_S3_*`), plus `PORT` and `DENO_DIR`.
pub fn environment(
    runner_env: impl IntoIterator<Item = (String, String)>,
    deploy_envs: &BTreeMap<String, String>,
    port: u16,
    deno_dir: &Path,
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> =
        runner_env.into_iter().filter(|(k, _)| !SCRUBBED.contains(&k.as_str()) && !never_forwarded(k)).collect();
    for (k, v) in deploy_envs {
        if !never_forwarded(k) {
            env.insert(k.clone(), v.clone());
        }
    }
    env.insert("PORT".into(), port.to_string());
    env.insert("DENO_DIR".into(), deno_dir.display().to_string());
    env
}

/// A free loopback port for the worker.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// How a worker that exits after it was ready is restarted.
#[derive(Debug, Clone, Copy)]
pub struct Restarts {
    /// Restarts allowed in a row (a worker that stays ready for a minute
    /// starts the count again); past it the worker is `failed`.
    pub max: u32,
    /// The first delay; each next one doubles, up to `max_delay`.
    pub delay: Duration,
    pub max_delay: Duration,
}

impl Default for Restarts {
    fn default() -> Self {
        Restarts { max: 5, delay: Duration::from_millis(500), max_delay: Duration::from_secs(10) }
    }
}

/// What to run, kept for restarts: `argv` in `cwd` with exactly `env` (as
/// `user`, if given), which must listen on `port` within `ready_timeout`.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub argv: Vec<String>,
    pub cwd: std::path::PathBuf,
    pub env: BTreeMap<String, String>,
    pub port: u16,
    pub ready_timeout: Duration,
    pub user: Option<crate::isolation::WorkerUser>,
}

/// What the supervisor shares with the rest of the runner.
#[derive(Debug, Default)]
struct Shared {
    stopping: std::sync::atomic::AtomicBool,
    pgid: std::sync::Mutex<Option<u32>>,
    restarts: std::sync::atomic::AtomicU32,
    last_exit: std::sync::Mutex<Option<String>>,
    /// The worker listens on `[::1]` only.
    ipv6_only: std::sync::atomic::AtomicBool,
    /// From the first start to the first time it listened.
    boot: std::sync::OnceLock<Duration>,
    /// It was restarted once because it exited before the restore's tail
    /// landed.
    tail_restart: std::sync::atomic::AtomicBool,
}

/// A running worker, supervised: started in its own process group, watched
/// until it listens, restarted (with backoff, up to a cap) when it exits
/// after it was ready, and stopped with TERM, grace, then KILL.
#[derive(Debug)]
pub struct Worker {
    pub port: u16,
    shared: Arc<Shared>,
    state: watch::Receiver<WorkerState>,
    supervisor: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("runCommand `{program}` was not found")]
    NotFound { program: String },
    #[error("failed to start runCommand `{program}`")]
    Io {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

impl Spec {
    /// Starts a run of the worker, marked as the runner's own child before
    /// any await ([`spawn_own`](crate::isolation::spawn_own)): a worker
    /// that exits at once keeps its status for the supervisor, and the fork
    /// does not hold up the async thread it was asked on.
    async fn start(&self) -> Result<(Child, OwnChild), SpawnError> {
        let program = self.argv[0].clone();
        let (args, cwd, env) = (self.argv[1..].to_vec(), self.cwd.clone(), self.env.clone());
        let configure = move |cmd: &mut tokio::process::Command| {
            cmd.args(args)
                .current_dir(cwd)
                .env_clear()
                .envs(env)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .kill_on_drop(true);
        };
        let path = self.env.get("PATH").cloned();
        let (mut child, own) =
            crate::isolation::spawn_own(&program, path, self.user, configure).await.map_err(|source| {
                match source.kind() {
                    std::io::ErrorKind::NotFound => SpawnError::NotFound { program: program.clone() },
                    _ => SpawnError::Io { program: program.clone(), source },
                }
            })?;
        if let Some(out) = child.stdout.take() {
            tokio::spawn(log_lines(out, "stdout"));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(log_lines(err, "stderr"));
        }
        Ok((child, own))
    }
}

impl Worker {
    /// Starts `spec` and supervises it, restarting it as `restarts` says;
    /// `tail` is a hot-first restore's, `true` once it is over. A program
    /// that cannot be started at all is an error here; everything later is
    /// a state.
    pub(crate) async fn spawn(
        spec: Spec,
        restarts: Restarts,
        metrics: Arc<crate::metrics::Metrics>,
        tail: Option<watch::Receiver<bool>>,
    ) -> Result<Worker, SpawnError> {
        let port = spec.port;
        // Whether this run starts on an incomplete tree: read before the
        // start, so a tail landing meanwhile cannot hide it.
        let during_tail = tail.as_ref().is_some_and(|t| !*t.borrow());
        let child = spec.start().await?;
        metrics.worker_started();
        let shared = Arc::new(Shared::default());
        let (tx, rx) = watch::channel(WorkerState::Starting);
        let supervisor = Supervisor { spec, shared: shared.clone(), state: tx, restarts, metrics, tail };
        let supervisor = tokio::spawn(supervise(supervisor, child, during_tail));
        Ok(Worker { port, shared, state: rx, supervisor: tokio::sync::Mutex::new(Some(supervisor)) })
    }

    pub fn state(&self) -> WorkerState {
        *self.state.borrow()
    }

    /// Where requests reach it: loopback, IPv4 unless it listens on `[::1]` only.
    pub fn addr(&self) -> std::net::SocketAddr {
        let ip: std::net::IpAddr = if self.shared.ipv6_only.load(std::sync::atomic::Ordering::Relaxed) {
            std::net::Ipv6Addr::LOCALHOST.into()
        } else {
            std::net::Ipv4Addr::LOCALHOST.into()
        };
        std::net::SocketAddr::new(ip, self.port)
    }

    /// From the first start to the first time it listened on its port.
    pub fn boot(&self) -> Option<Duration> {
        self.shared.boot.get().copied()
    }

    /// Restarts so far, and how the last run ended (`exit status: 1`).
    pub fn restarts(&self) -> (u32, Option<String>) {
        let last = self.shared.last_exit.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (self.shared.restarts.load(std::sync::atomic::Ordering::Relaxed), last)
    }

    /// Waits until the worker is ready or has failed.
    pub async fn settled(&self) -> WorkerState {
        let mut rx = self.state.clone();
        loop {
            let s = *rx.borrow_and_update();
            if s != WorkerState::Starting {
                return s;
            }
            if rx.changed().await.is_err() {
                return *rx.borrow();
            }
        }
    }

    /// Waits up to `within` for the worker to be ready (it may be starting
    /// or restarting); its state then.
    pub async fn ready_within(&self, within: Duration) -> WorkerState {
        tokio::time::timeout(within, self.settled()).await.unwrap_or(WorkerState::Starting)
    }

    /// TERM to the whole group, `grace` to exit, then KILL; no restart.
    pub async fn stop(&self, grace: Duration) {
        self.shared.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        let Some(mut supervisor) = self.supervisor.lock().await.take() else { return };
        // Whatever is left of the group (grandchildren included) goes at
        // the end, even after the worker itself exited.
        let pgid = || *self.shared.pgid.lock().unwrap_or_else(|p| p.into_inner());
        let ended = crate::isolation::kill::terminate_group(pgid, grace, &mut supervisor).await;
        if !ended {
            tracing::warn!(target: "sandbox", "worker did not exit within {grace:?} of SIGTERM; killing its group");
            let _ = tokio::time::timeout(Duration::from_secs(5), supervisor).await;
        }
    }
}

/// What the supervisor holds for the worker's whole life.
struct Supervisor {
    spec: Spec,
    shared: Arc<Shared>,
    /// Where the worker is, for the rest of the runner.
    state: watch::Sender<WorkerState>,
    restarts: Restarts,
    metrics: Arc<crate::metrics::Metrics>,
    /// A hot-first restore's tail: `true` once it is over.
    tail: Option<watch::Receiver<bool>>,
}

/// Runs the worker, `child` its first run (started `during_tail`, and
/// marked the runner's own child until it is waited for here):
/// readiness, then its exit, then (unless it is being stopped, or it
/// failed before it was ever ready) a restart after a backoff, up to the
/// cap.
async fn supervise(supervisor: Supervisor, child: (Child, OwnChild), during_tail: bool) {
    use std::sync::atomic::Ordering;
    let Supervisor { spec, shared, state: tx, restarts, metrics, tail } = supervisor;
    let mut in_a_row = 0u32;
    let first_start = tokio::time::Instant::now();
    let mut during_tail = during_tail;
    // The run's guard is replaced only once the run was waited for.
    let (mut child, mut _waited_here) = child;
    loop {
        *shared.pgid.lock().unwrap_or_else(|p| p.into_inner()) = child.id();
        let ready = wait_ready(&mut child, spec.port, spec.ready_timeout, &shared).await;
        let ready_at = tokio::time::Instant::now();
        let status = match ready {
            Readiness::Ready => {
                if shared.boot.set(first_start.elapsed()).is_ok() {
                    let boot_ms = first_start.elapsed().as_millis() as u64;
                    tracing::info!(target: "sandbox", port = spec.port, boot_ms, "worker ready on port {} after {boot_ms}ms", spec.port);
                    metrics.worker_boot(first_start.elapsed());
                } else {
                    tracing::info!(target: "sandbox", port = spec.port, "worker ready on port {}", spec.port);
                }
                let _ = tx.send(WorkerState::Ready);
                metrics.worker_up(true);
                child.wait().await.ok()
            }
            Readiness::Exited(status) => Some(status),
            Readiness::TimedOut if shared.stopping.load(Ordering::SeqCst) => return,
            Readiness::TimedOut => {
                tracing::warn!(target: "sandbox", port = spec.port, "worker did not listen on port {} within {:?}", spec.port, spec.ready_timeout);
                metrics.worker_failed();
                let _ = tx.send(WorkerState::Failed);
                return;
            }
        };
        metrics.worker_up(false);
        let exit = status.map_or_else(|| "unknown".to_owned(), |s| s.to_string());
        *shared.last_exit.lock().unwrap_or_else(|p| p.into_inner()) = Some(exit.clone());
        if shared.stopping.load(Ordering::SeqCst) {
            tracing::info!(target: "sandbox", "worker stopped ({exit})");
            return;
        }
        metrics.worker_failed();
        // It started while the restore's tail was still landing, and may
        // have needed a file that was not hot: once the tail is in, it
        // starts again, once, whether it had been ready or not (and however
        // late its exit was seen).
        if let Some(tail) = tail.as_ref().filter(|_| during_tail) {
            if !shared.tail_restart.swap(true, Ordering::SeqCst) {
                tracing::warn!(target: "sandbox", exit = %exit, "worker exited ({exit}) after starting before the cache's tail landed; starting it again once it has");
                metrics.worker_tail_restart();
                let _ = tx.send(WorkerState::Starting);
                let mut tail = tail.clone();
                let _ = tail.wait_for(|landed| *landed).await;
                let Some(next) = restart(&spec, &shared, &tx, &metrics).await else { return };
                (child, _waited_here) = next;
                during_tail = false;
                continue;
            }
        }
        if !matches!(ready, Readiness::Ready) {
            tracing::warn!(target: "sandbox", exit = %exit, "worker exited before it was ready: {exit}");
            let _ = tx.send(WorkerState::Failed);
            return;
        }
        if ready_at.elapsed() >= Duration::from_secs(60) {
            in_a_row = 0;
        }
        if in_a_row >= restarts.max {
            tracing::warn!(target: "sandbox", exit = %exit, "worker exited ({exit}) after {in_a_row} restarts in a row; giving up");
            let _ = tx.send(WorkerState::Failed);
            return;
        }
        let delay = restarts.delay.saturating_mul(1 << in_a_row.min(16)).min(restarts.max_delay);
        in_a_row += 1;
        tracing::warn!(target: "sandbox", exit = %exit, "worker exited after it was ready ({exit}); restarting in {delay:?}");
        let _ = tx.send(WorkerState::Starting);
        tokio::time::sleep(delay).await;
        during_tail = tail.as_ref().is_some_and(|t| !*t.borrow());
        let Some(next) = restart(&spec, &shared, &tx, &metrics).await else { return };
        (child, _waited_here) = next;
    }
}

/// Starts the worker again, counted; `None` when it is being stopped or
/// cannot be started (then `failed`).
async fn restart(
    spec: &Spec,
    shared: &Shared,
    tx: &watch::Sender<WorkerState>,
    metrics: &crate::metrics::Metrics,
) -> Option<(Child, OwnChild)> {
    use std::sync::atomic::Ordering;
    if shared.stopping.load(Ordering::SeqCst) {
        return None;
    }
    match spec.start().await {
        Ok(c) => {
            shared.restarts.fetch_add(1, Ordering::Relaxed);
            metrics.worker_started();
            metrics.worker_restarted();
            Some(c)
        }
        Err(e) => {
            tracing::warn!(target: "sandbox", "worker restart failed: {e}");
            let _ = tx.send(WorkerState::Failed);
            None
        }
    }
}

enum Readiness {
    Ready,
    Exited(std::process::ExitStatus),
    TimedOut,
}

/// Polls until the worker accepts a connection on `port` (IPv4 or IPv6
/// loopback), exits, or `timeout` passes.
async fn wait_ready(child: &mut Child, port: u16, timeout: Duration, shared: &Shared) -> Readiness {
    let started = tokio::time::Instant::now();
    let deadline = started + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Readiness::Exited(status);
        }
        let v4 = tokio::net::TcpStream::connect(("127.0.0.1", port));
        let v6 = tokio::net::TcpStream::connect(("::1", port));
        let (v4, v6) = tokio::join!(v4, v6);
        if v4.is_ok() || v6.is_ok() {
            shared.ipv6_only.store(v4.is_err(), std::sync::atomic::Ordering::Relaxed);
            return Readiness::Ready;
        }
        if tokio::time::Instant::now() >= deadline || shared.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return match child.try_wait() {
                Ok(Some(status)) => Readiness::Exited(status),
                _ => Readiness::TimedOut,
            };
        }
        // Every poll is two connection attempts on loopback (refused in
        // microseconds): every 5 ms while a boot is likely to end, so the
        // first response waits 2.5 ms on average for it, then every 25 ms.
        let every = if started.elapsed() < Duration::from_secs(3) { 5 } else { 25 };
        tokio::time::sleep(Duration::from_millis(every)).await;
    }
}

/// Longest worker log line kept; the rest of a longer one is dropped, with
/// a marker saying how much.
pub(crate) const MAX_LOG_LINE: usize = 16 << 10;

/// Logs the worker's output line by line. Bytes, not UTF-8: any byte
/// sequence is logged (lossily) and never ends the capture; a line is cut
/// at [`MAX_LOG_LINE`] and the pipe is always drained, so a worker can
/// neither die of SIGPIPE nor grow the runner's memory.
async fn log_lines(stream: impl tokio::io::AsyncRead + Unpin, which: &'static str) {
    let mut reader = BufReader::with_capacity(64 << 10, stream);
    let mut line: Vec<u8> = Vec::with_capacity(256);
    let mut dropped = 0usize;
    let emit = |line: &mut Vec<u8>, dropped: &mut usize| {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\r');
        if *dropped > 0 {
            tracing::info!(target: "worker", stream = which, truncated = *dropped, "{text}… [{} more bytes]", *dropped);
        } else {
            tracing::info!(target: "worker", stream = which, "{text}");
        }
        line.clear();
        *dropped = 0;
    };
    loop {
        let buf = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(buf) => buf,
        };
        let (chunk, end) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        let room = MAX_LOG_LINE.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        dropped += chunk.len().saturating_sub(room);
        let used = end.unwrap_or(buf.len());
        reader.consume(used);
        if end.is_some() {
            emit(&mut line, &mut dropped);
        }
    }
    if !line.is_empty() || dropped > 0 {
        emit(&mut line, &mut dropped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The orphan reaper (here in a loop, as fast as it goes) never takes a
    /// worker's run: one that exits at once still reports how it ended.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worker_that_exits_at_once_keeps_its_status_from_the_orphan_reaper() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let reaper = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    crate::isolation::reap_orphans();
                }
            })
        };
        for _ in 0..10 {
            let spec = Spec {
                argv: vec!["/bin/sh".into(), "-c".into(), "exit 3".into()],
                cwd: std::env::temp_dir(),
                env: BTreeMap::new(),
                port: free_port().unwrap(),
                ready_timeout: Duration::from_secs(3),
                user: None,
            };
            let worker = Worker::spawn(spec, Restarts::default(), Arc::default(), None).await.unwrap();
            assert_eq!(worker.settled().await, WorkerState::Failed);
            assert_eq!(worker.restarts().1.as_deref(), Some("exit status: 3"));
        }
        stop.store(true, Ordering::Relaxed);
        reaper.join().unwrap();
    }

    #[test]
    fn the_worker_gets_no_cache_keys() {
        let runner = vec![
            ("PATH".to_owned(), "/bin".to_owned()),
            ("AWS_SECRET_ACCESS_KEY".to_owned(), "secret".to_owned()),
            ("AWS_SESSION_TOKEN".to_owned(), "token".to_owned()),
            ("ADMIN_S3_SECRET_ACCESS_KEY".to_owned(), "admin".to_owned()),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE".to_owned(), "/var/run/token".to_owned()),
        ];
        let mut deploy = BTreeMap::new();
        deploy.insert("SITE_VAR".to_owned(), "1".to_owned());
        deploy.insert("ADMIN_S3_ACCESS_KEY_ID".to_owned(), "forwarded?".to_owned());
        deploy.insert("AWS_SECRET_ACCESS_KEY".to_owned(), "explicit".to_owned());
        let env = environment(runner, &deploy, 4242, Path::new("/deno-dir"));
        assert_eq!(env.get("PATH").map(String::as_str), Some("/bin"));
        assert_eq!(env.get("SITE_VAR").map(String::as_str), Some("1"));
        assert_eq!(env.get("PORT").map(String::as_str), Some("4242"));
        assert_eq!(env.get("DENO_DIR").map(String::as_str), Some("/deno-dir"));
        assert!(!env.contains_key("AWS_SESSION_TOKEN") && !env.contains_key("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"));
        assert!(!env.keys().any(|k| k.starts_with("ADMIN_S3_")), "never, even when forwarded");
        assert_eq!(env.get("AWS_SECRET_ACCESS_KEY").map(String::as_str), Some("explicit"), "explicitly forwarded");
    }
}
