//! Snapshots: the deps-ready one (once the worker is ready and the cache
//! dir has settled), one on request, and the final one at undeploy; one at
//! a time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sandcache_engine::{Cache, SnapshotOptions};

use crate::error::DeployError;
use crate::runner::{Deployment, Phase, Runner, lock};
use crate::workdirs;
use crate::worker::WorkerState;

impl Runner {
    /// Waits for the worker to be ready and the cache dir to stop changing,
    /// then snapshots. Never before readiness: a cold, near-empty cache must
    /// not replace a good one (the seed's review finding).
    /// Background removals stay `paused` until then.
    pub(crate) async fn after_ready(
        self: Arc<Self>,
        d: Arc<Deployment>,
        port: u16,
        paused: sandcache_engine::RemovalsPaused,
    ) {
        let Some(worker) = &d.worker else { return };
        // The tail first: until it lands the dir is not the cache (and a
        // snapshot would skip as `incomplete`).
        if let Some(tail) = &d.tail {
            tail.landed_within(self.cfg.restore_timeout).await;
        }
        let settled = worker.settled().await;
        drop(paused);
        if settled != WorkerState::Ready {
            tracing::warn!(target: "sandbox", "worker on port {port} failed to start; no deps-ready snapshot");
            return;
        }
        if !d.cache.is_enabled() {
            return;
        }
        let dir = self.cfg.deno_dir.clone();
        let fingerprint = || {
            let dir = dir.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    sandcache_archive::fingerprint(&dir, true, &Default::default()).ok()
                })
                .await
                .ok()
                .flatten()
            }
        };
        let ready_at = Instant::now();
        let mut last = fingerprint().await;
        let mut stable_since = Instant::now();
        loop {
            tokio::time::sleep(self.cfg.settle_poll).await;
            let now = fingerprint().await;
            if now != last {
                last = now;
                stable_since = Instant::now();
            } else if stable_since.elapsed() >= self.cfg.settle {
                break;
            }
            if ready_at.elapsed() >= self.cfg.settle_max_wait {
                tracing::warn!(target: "sandbox-cache", "cache dir never settled; leaving the snapshot to undeploy");
                return;
            }
        }
        tracing::info!(target: "sandbox-cache", "deps ready (cache dir settled for {:?}); snapshotting", self.cfg.settle);
        self.snapshot(&d.cache, self.cfg.snapshot_timeout).await;
    }

    /// Takes a snapshot unless one is running. Returns whether it ran.
    pub(crate) async fn snapshot(&self, cache: &Cache, timeout: Duration) -> bool {
        let Ok(_one_at_a_time) = self.snapshots.one_at_a_time.try_lock() else {
            tracing::info!(target: "sandbox-cache", "a snapshot is already running");
            return false;
        };
        self.snapshot_now(cache, timeout).await;
        true
    }

    /// The final snapshot: waits for a running one, then takes its own while
    /// holding the lock, so no other snapshot can slip in between.
    ///
    /// One bound covers both: a manual snapshot still running when it runs
    /// out is cancelled (its upload never becomes a generation), and this
    /// one gets what is left.
    pub(crate) async fn final_snapshot(&self, cache: &Cache) {
        let bound = self.cfg.final_snapshot_timeout;
        let deadline = tokio::time::Instant::now() + bound;
        let Ok(_one_at_a_time) = tokio::time::timeout_at(deadline, self.snapshots.one_at_a_time.lock()).await else {
            if let Some(h) = lock(&self.snapshots.manual).take() {
                h.abort();
            }
            tracing::warn!(target: "sandbox-cache", "a running snapshot did not end within the final snapshot's {bound:?}; cancelled it");
            return;
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return;
        }
        self.snapshot_now(cache, left).await;
    }

    async fn snapshot_now(&self, cache: &Cache, timeout: Duration) {
        // A cache this runner could not restore is not worth uploading.
        let opts = SnapshotOptions {
            format: self.cfg.snapshot_format,
            timeout,
            limits: self.cfg.restore_limits,
            state_dir: Some(workdirs::cache_state_dir(&self.cfg)),
            owner: Some(self.worker_user().uid).filter(|_| self.worker_user().is_separate()),
            ..Default::default()
        };
        let o = cache.snapshot(&self.cfg.deno_dir, &opts).await;
        self.record(o);
    }

    /// `POST /sandbox/cache/snapshot`: starts a detached snapshot now.
    /// Returns whether one started (`false`: one is already running).
    pub(crate) fn request_snapshot(self: &Arc<Self>) -> Result<bool, DeployError> {
        let d = match &*lock(&self.phase) {
            Phase::Deployed(d) => d.clone(),
            _ => return Err(DeployError::Conflict("Not deployed".into())),
        };
        // Held from here, not from when the task first runs: a final
        // snapshot (SIGTERM) right after this answer must find it running.
        let Ok(one_at_a_time) = self.snapshots.one_at_a_time.clone().try_lock_owned() else {
            return Ok(false);
        };
        let this = self.clone();
        let task = tokio::spawn(async move {
            let _one_at_a_time = one_at_a_time;
            this.snapshot_now(&d.cache, this.cfg.snapshot_timeout).await;
        });
        *lock(&self.snapshots.manual) = Some(task.abort_handle());
        Ok(true)
    }
}
