//! The runner and its state: where it is ([`Phase`]), the deployment, what
//! the last deploy, restore and snapshot did ([`History`]), the snapshot
//! lock; and what every job needs of it: the worker user, the sweep, the
//! record of an outcome, the proxy's target. Its jobs are `impl Runner`
//! blocks in files of their own, which use this file and never the other
//! way: `lifecycle.rs` (deploy, undeploy, shutdown), `snapshots.rs` and
//! `status.rs`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sandcache_engine::{Cache, Outcome};
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::config::RunnerConfig;
use crate::isolation::{SweepScope, WorkerUser};
use crate::metrics::Metrics;
use crate::worker::{Worker, WorkerState};

/// A deployed site: its cache (for the snapshots), its worker, and what the
/// status and the proxy need of this deploy.
pub(crate) struct Deployment {
    pub site: String,
    pub cache: Cache,
    pub worker: Option<Worker>,
    /// Readiness, then the deps-ready snapshot; an undeploy aborts it.
    pub watcher: Mutex<Option<JoinHandle<()>>>,
    /// A hot-first restore's second phase, while it lands.
    pub tail: Option<Arc<TailWatch>>,
    /// When the deploy request came.
    pub started: Instant,
    /// From the deploy request to the first response the worker sent.
    pub first_response: std::sync::OnceLock<Duration>,
}

/// The second phase of a hot-first restore, running in the background
/// while the worker starts. Dropped (an undeploy, a cancelled deploy), it
/// stops the restore: its writers stop, its temporary files go, and the
/// dir keeps its `incomplete` marker, so no snapshot stores it.
pub(crate) struct TailWatch {
    landed: tokio::sync::watch::Receiver<bool>,
    task: tokio::task::AbortHandle,
}

impl Drop for TailWatch {
    fn drop(&mut self) {
        self.stop();
    }
}

impl TailWatch {
    /// The tail `task`, which sends `true` on `landed` once it is over.
    pub(crate) fn new(landed: tokio::sync::watch::Receiver<bool>, task: tokio::task::AbortHandle) -> TailWatch {
        TailWatch { landed, task }
    }

    /// Cancels the tail if it is still landing.
    pub(crate) fn stop(&self) {
        self.task.abort();
    }

    /// Waits until the tail has landed (or failed: either way, it is over),
    /// up to `within`. Whether it is over.
    pub(crate) async fn landed_within(&self, within: Duration) -> bool {
        let mut rx = self.landed.clone();
        tokio::time::timeout(within, rx.wait_for(|l| *l)).await.is_ok_and(|r| r.is_ok())
    }

    pub(crate) fn watch(&self) -> tokio::sync::watch::Receiver<bool> {
        self.landed.clone()
    }
}

pub(crate) enum Phase {
    Idle,
    /// `cancel` set to true stops the deploy where it is (DELETE). `step`
    /// is where it is: restoring, cloning, legacy_cache, starting.
    Deploying {
        site: String,
        cancel: tokio::sync::watch::Sender<bool>,
        step: &'static str,
    },
    Deployed(Arc<Deployment>),
    Undeploying {
        site: String,
    },
}

/// What the last deploy, restore and snapshot did, whatever the phase is
/// now: `/sandbox/status` shows it, and an undeploy keeps it.
#[derive(Debug, Default)]
pub(crate) struct History {
    pub deploy: Option<LastDeploy>,
    pub restore: Option<Outcome>,
    pub snapshot: Option<Outcome>,
    /// The current deploy's hot-first restore: when it was hot-ready, and
    /// whether its tail is still landing.
    pub hot: Option<(Duration, bool)>,
}

/// How the last deploy ended, as `/sandbox/status` shows it: `{ok, at, ms}`,
/// and `outcome` and `error` when it failed.
#[derive(Debug, Clone, Serialize)]
pub struct LastDeploy {
    pub ok: bool,
    /// A failure: `error`, or `cancelled` (an undeploy stopped it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<&'static str>,
    /// A failure: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it ended, in Unix milliseconds.
    pub at: u64,
    /// How long it took, in milliseconds.
    pub ms: u64,
}

/// Snapshots run one at a time; a manual one can be cancelled.
#[derive(Debug, Default)]
pub(crate) struct Snapshots {
    /// Held while a snapshot runs.
    pub one_at_a_time: Arc<tokio::sync::Mutex<()>>,
    /// The latest manual snapshot's task, for the final snapshot to cancel.
    pub manual: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Snapshots {
    pub fn running(&self) -> bool {
        self.one_at_a_time.try_lock().is_err()
    }
}

/// The sandbox runner: one site at a time.
pub struct Runner {
    pub(crate) cfg: RunnerConfig,
    pub(crate) phase: Mutex<Phase>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) client: crate::proxy::HttpClient,
    pub(crate) snapshots: Snapshots,
    /// What the last deploy, restore and snapshot did.
    pub(crate) history: Mutex<History>,
    /// The pool-wide base, restored into DENO_DIR while idle.
    pub(crate) prewarm: Prewarm,
    /// The stores deploys' restores use, each opened once: the next
    /// deploy reuses the last one's connections and credentials (with
    /// IRSA, an STS request before the first read).
    pub(crate) stores: sandcache_engine::Stores,
    /// The pre-warm's own: its connections are driven by its low-priority
    /// runtime, which a deploy's reads must not wait for.
    pub(crate) prewarm_stores: sandcache_engine::Stores,
}

/// A lock whose holder panicked is still usable: every value behind one
/// is whole between statements.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Runner {
    pub fn new(cfg: RunnerConfig) -> Arc<Runner> {
        Arc::new(Runner {
            phase: Mutex::new(Phase::Idle),
            metrics: Arc::new(Metrics::default()),
            client: crate::proxy::client(),
            snapshots: Snapshots::default(),
            history: Mutex::new(History::default()),
            prewarm: Default::default(),
            stores: sandcache_engine::Stores::new(cfg.store_options.clone()),
            prewarm_stores: sandcache_engine::Stores::new(cfg.store_options.clone()),
            cfg,
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The deploy in progress is at `step` (`/sandbox/status`'s phase).
    pub(crate) fn set_step(&self, step: &'static str) {
        if let Phase::Deploying { step: now, .. } = &mut *lock(&self.phase) {
            *now = step;
        }
    }

    /// The first response the worker sent for this deploy: the time from
    /// the deploy request to it is what a user waits for.
    pub(crate) fn first_response(&self, d: &Deployment, status: u16) {
        let mut first = false;
        let took = *d.first_response.get_or_init(|| {
            first = true;
            d.started.elapsed()
        });
        if first {
            let ms = took.as_millis() as u64;
            tracing::info!(target: "sandbox", first_response_ms = ms, status, "first response ({status}) {ms}ms after the deploy request");
            self.metrics.first_response(took);
        }
    }

    pub(crate) fn record(&self, o: Outcome) {
        self.metrics.record(&o);
        let mut history = lock(&self.history);
        let slot = match o.op {
            sandcache_engine::Op::Restore => &mut history.restore,
            sandcache_engine::Op::Snapshot => &mut history.snapshot,
        };
        *slot = Some(o);
    }

    /// What the runner says once at startup about the worker's reach:
    /// `(is_warning, line)`.
    pub fn startup_report(&self) -> Vec<(bool, String)> {
        let dirs = [self.cfg.deno_dir.as_path(), self.cfg.work_dir.as_path()];
        crate::isolation::startup_report(self.worker_user(), &self.cfg.admin, &self.cfg.runner_env, &dirs)
    }

    /// Who the worker runs as.
    pub fn worker_user(&self) -> WorkerUser {
        self.cfg.worker_user.unwrap_or_else(WorkerUser::current)
    }

    /// Kills every process the worker may have left: all of the worker's
    /// uid when it has its own, and the runner's descendants when it is a
    /// subreaper.
    pub(crate) async fn sweep(&self) {
        let Some(scope) = self.sweep_scope() else { return };
        let killed = tokio::task::spawn_blocking(move || crate::isolation::sweep(scope, Duration::from_secs(5)))
            .await
            .unwrap_or(0);
        if killed > 0 {
            tracing::info!(target: "sandbox", "killed {killed} leftover worker processes");
        }
    }

    fn sweep_scope(&self) -> Option<SweepScope> {
        let user = self.worker_user();
        let scope = SweepScope {
            uid: (user.is_separate() && !user.is_root()).then_some(user.uid),
            descendants: self.cfg.sweep_descendants,
        };
        (scope.uid.is_some() || scope.descendants).then_some(scope)
    }

    /// For a process about to exit at once (a second signal): kills every
    /// worker process now, with no grace and no snapshot.
    pub fn kill_workers_now(&self) {
        if let Some(scope) = self.sweep_scope() {
            crate::isolation::sweep(scope, Duration::from_secs(1));
        }
    }

    /// The worker's port for a proxied request. A request that comes while
    /// the worker starts or restarts (or the deploy runs) waits for it, up
    /// to `PORT_TIMEOUT`, as the seed held them; then 503 `worker starting`.
    pub(crate) async fn worker_target(
        &self,
    ) -> Result<(std::net::SocketAddr, Arc<Deployment>), (axum::http::StatusCode, &'static str)> {
        use axum::http::StatusCode;
        let deadline = tokio::time::Instant::now() + self.cfg.port_timeout;
        let d = loop {
            match &*lock(&self.phase) {
                Phase::Deployed(d) => break d.clone(),
                Phase::Deploying { .. } if tokio::time::Instant::now() < deadline => {}
                Phase::Deploying { .. } => return Err((StatusCode::SERVICE_UNAVAILABLE, "worker starting")),
                _ => {
                    return Err((
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Sandbox mode: not deployed yet. POST /sandbox/deploy to assign a site.",
                    ));
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let Some(w) = &d.worker else {
            return Err((StatusCode::SERVICE_UNAVAILABLE, "no worker for this deploy"));
        };
        // No request sees a file still missing: it waits for the tail,
        // which ends (landed or failed) within the restore's deadline.
        if let (Some(tail), false) = (&d.tail, self.cfg.serve_during_tail) {
            tail.landed_within(self.cfg.restore_timeout).await;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match w.ready_within(left).await {
            WorkerState::Ready => Ok((w.addr(), d.clone())),
            WorkerState::Starting => Err((StatusCode::SERVICE_UNAVAILABLE, "worker starting")),
            WorkerState::Failed => Err((StatusCode::FAILED_DEPENDENCY, "Error while starting worker")),
            WorkerState::None => Err((StatusCode::SERVICE_UNAVAILABLE, "no worker")),
        }
    }
}

/// How long a deploy waits for a cancelled pre-warm to let go of the dir.
pub(crate) const CANCEL_BOUND: Duration = Duration::from_secs(2);

/// What `/sandbox/status` shows of the pre-warm.
#[derive(Debug, Clone, Serialize)]
pub struct PrewarmStatus {
    /// `off` (no `--prewarm`), `waiting` (for the runner to be idle, or the
    /// next refresh), `running`, `ready`, `failed` (the last one did not
    /// restore: the reason is in `outcome`) or `cancelled` (by a deploy).
    pub state: &'static str,
    /// What is pre-warmed: the key or `prefix/`.
    pub source: Option<String>,
    /// The key whose generation is in DENO_DIR.
    pub from_key: Option<String>,
    /// That generation (a manifest's name).
    pub generation: Option<String>,
    /// How long the last pre-warm took, in milliseconds.
    pub ms: Option<u64>,
    /// When the last one ended, in Unix milliseconds.
    pub at: Option<u64>,
    /// The last pre-warm's outcome: the object `sandcache restore --json`
    /// prints.
    pub outcome: Option<serde_json::Value>,
    /// Why the last one could not start (the dirs could not be prepared).
    pub error: Option<String>,
    /// Whether DENO_DIR was checked against the pre-warmed generation
    /// while idle, and nothing happened in it since: a deploy's delta
    /// then starts without a check of its own.
    pub checked: bool,
}

impl Default for PrewarmStatus {
    fn default() -> Self {
        PrewarmStatus {
            state: "off",
            source: None,
            from_key: None,
            generation: None,
            ms: None,
            at: None,
            outcome: None,
            error: None,
            checked: false,
        }
    }
}

/// The runner's pre-warm: its task, and what it did.
#[derive(Debug, Default)]
pub(crate) struct Prewarm {
    pub(crate) status: Mutex<PrewarmStatus>,
    pub(crate) task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// DENO_DIR holds nothing but what pre-warms wrote since it was last
    /// emptied: a deploy may restore over it.
    pristine: AtomicBool,
    /// The runner is shutting down: no pre-warm starts any more.
    stopped: AtomicBool,
}

impl Prewarm {
    pub(crate) fn status(&self) -> PrewarmStatus {
        lock(&self.status).clone()
    }

    pub(crate) fn pristine(&self) -> bool {
        self.pristine.load(Ordering::SeqCst)
    }

    /// DENO_DIR was just emptied, or a deploy's restore is about to make it
    /// a site's.
    pub(crate) fn set_pristine(&self, pristine: bool) {
        self.pristine.store(pristine, Ordering::SeqCst);
    }

    /// No pre-warm starts from now on (shutdown).
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    pub(crate) fn stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Stops a running pre-warm: its future is dropped, and this waits (up
    /// to [`CANCEL_BOUND`]) until it has let go of the dir. Returns whether
    /// one was running.
    pub(crate) async fn cancel(&self) -> bool {
        let Some(task) = lock(&self.task).take() else { return false };
        if task.is_finished() {
            return false;
        }
        task.abort();
        let started = Instant::now();
        if tokio::time::timeout(CANCEL_BOUND, task).await.is_err() {
            tracing::warn!(target: "sandbox-cache", "the pre-warm did not stop within {CANCEL_BOUND:?}");
        }
        let mut status = lock(&self.status);
        if status.state == "running" {
            status.state = "cancelled";
        }
        tracing::info!(target: "sandbox-cache", ms = started.elapsed().as_millis() as u64, "pre-warm cancelled");
        true
    }
}
