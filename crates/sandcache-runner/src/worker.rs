//! The site's worker process: started in its own process group, logged line
//! by line, watched until it listens, stopped with TERM, grace, then KILL.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rustix::process::{Pid, Signal};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

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
];

/// True for variables that never reach the worker, even when forwarded:
/// the legacy build cache's keys and the site's scoped cache credentials.
pub fn never_forwarded(name: &str) -> bool {
    name.starts_with("ADMIN_S3_") || sandcache_engine::seed_env::CREDENTIALS.contains(&name)
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

/// A running worker.
#[derive(Debug)]
pub struct Worker {
    pub port: u16,
    pgid: Option<Pid>,
    child: Arc<tokio::sync::Mutex<Child>>,
    state: watch::Receiver<WorkerState>,
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

impl Worker {
    /// Starts `argv` in `cwd` with exactly `env`, and watches it until it
    /// accepts connections on `port` (or exits, or `ready_timeout` passes).
    pub(crate) fn spawn(
        argv: &[String],
        cwd: &Path,
        env: &BTreeMap<String, String>,
        port: u16,
        ready_timeout: Duration,
        user: Option<crate::isolation::WorkerUser>,
    ) -> Result<Worker, SpawnError> {
        let program = argv[0].clone();
        let mut cmd = Command::new(&program);
        if let Some(u) = user {
            // std clears the supplementary groups when root drops to a uid.
            cmd.uid(u.uid).gid(u.gid);
        }
        cmd.args(&argv[1..])
            .current_dir(cwd)
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => SpawnError::NotFound { program: program.clone() },
            _ => SpawnError::Io { program: program.clone(), source },
        })?;
        let pgid = child.id().and_then(|id| Pid::from_raw(id as i32));
        if let Some(out) = child.stdout.take() {
            tokio::spawn(log_lines(out, "stdout"));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(log_lines(err, "stderr"));
        }
        let (tx, rx) = watch::channel(WorkerState::Starting);
        let child = Arc::new(tokio::sync::Mutex::new(child));
        tokio::spawn(watch_readiness(child.clone(), port, ready_timeout, tx));
        Ok(Worker { port, pgid, child, state: rx })
    }

    pub fn state(&self) -> WorkerState {
        *self.state.borrow()
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

    /// TERM to the whole group, `grace` to exit, then KILL.
    pub async fn stop(&self, grace: Duration) {
        let Some(pgid) = self.pgid else { return };
        let _ = rustix::process::kill_process_group(pgid, Signal::TERM);
        let mut child = self.child.lock().await;
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            tracing::warn!(target: "sandbox", "worker did not exit within {grace:?} of SIGTERM; killing its group");
        }
        // Whatever is left of the group (grandchildren included) goes now.
        let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
        let _ = child.wait().await;
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

async fn watch_readiness(
    child: Arc<tokio::sync::Mutex<Child>>,
    port: u16,
    timeout: Duration,
    tx: watch::Sender<WorkerState>,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.lock().await.try_wait() {
            tracing::warn!(target: "sandbox", "worker exited before it was ready: {status}");
            let _ = tx.send(WorkerState::Failed);
            return;
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            tracing::info!(target: "sandbox", "worker ready on port {port}");
            let _ = tx.send(WorkerState::Ready);
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(target: "sandbox", "worker did not listen on port {port} within {timeout:?}");
            let _ = tx.send(WorkerState::Failed);
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Ready: notice if it dies later.
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        match child.lock().await.try_wait() {
            Ok(Some(status)) => {
                tracing::warn!(target: "sandbox", "worker exited: {status}");
                let _ = tx.send(WorkerState::Failed);
                return;
            }
            Ok(None) => {}
            Err(_) => return,
        }
        if tx.is_closed() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
