//! `/sandbox/status`: where the runner is, the worker, the timings of the
//! last deploy, and the last cache outcomes. [`Status`] is the API's
//! contract: its fields are the keys, in order.

use std::time::Duration;

use sandcache_engine::Outcome;
use serde::Serialize;

use crate::runner::{LastDeploy, Phase, Runner, lock};
use crate::worker::{Worker, WorkerState};

/// `GET /sandbox/status`: no secrets, only names, states and outcomes.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Always `true`: the seed's sign of a sandbox runner.
    pub sandbox: bool,
    /// A site is deployed (or being undeployed).
    pub deployed: bool,
    /// A deploy is running.
    pub deploying: bool,
    pub site: Option<String>,
    pub worker: WorkerState,
    /// Restarts of the current worker so far.
    pub worker_restarts: u32,
    /// How its last run ended (`exit status: 3`, `signal: 9 (SIGKILL)`).
    pub worker_last_exit: Option<String>,
    /// `idle`, the deploy's step (`restoring`, `cloning`, `legacy_cache`,
    /// `starting`), `ready`, `failed` or `undeploying`.
    pub phase: &'static str,
    pub last_deploy: Option<LastDeploy>,
    pub timings: Timings,
    pub cache: CacheStatus,
    /// The pre-warm (`--prewarm`): its state and last outcome.
    pub prewarm: crate::runner::PrewarmStatus,
}

/// What the last deploy's user waited for, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Timings {
    /// To hot-ready (a hot-first restore).
    pub hot_ms: Option<u64>,
    /// From hot-ready to the end of the tail; `None` while it lands.
    pub tail_ms: Option<u64>,
    /// From the worker's start to its listening.
    pub boot_ms: Option<u64>,
    /// From the deploy request to the worker's first proxied response.
    pub first_response_ms: Option<u64>,
}

/// The cache's last outcomes and what is running.
#[derive(Debug, Clone, Serialize)]
pub struct CacheStatus {
    /// The last restore's outcome: the object `sandcache restore --json`
    /// prints.
    pub restore: Option<serde_json::Value>,
    /// The last snapshot's outcome, as `sandcache snapshot --json` prints it.
    pub snapshot: Option<serde_json::Value>,
    pub snapshot_running: bool,
    /// A hot-first restore's tail is still landing.
    pub tail_landing: bool,
}

impl Runner {
    /// `/sandbox/status`: no secrets, only names, states and outcomes.
    pub fn status(&self) -> Status {
        let (deployed, deploying, site, worker, (restarts, last_exit), phase) = match &*lock(&self.phase) {
            Phase::Idle => (false, false, None, WorkerState::None, (0, None), "idle"),
            Phase::Deploying { site, step, .. } => {
                (false, true, Some(site.clone()), WorkerState::None, (0, None), *step)
            }
            Phase::Undeploying { site } => {
                (true, false, Some(site.clone()), WorkerState::None, (0, None), "undeploying")
            }
            Phase::Deployed(d) => {
                let state = d.worker.as_ref().map_or(WorkerState::None, Worker::state);
                let phase = match state {
                    WorkerState::Starting => "starting",
                    WorkerState::Failed => "failed",
                    WorkerState::Ready | WorkerState::None => "ready",
                };
                let restarts = d.worker.as_ref().map_or((0, None), Worker::restarts);
                (true, false, Some(d.site.clone()), state, restarts, phase)
            }
        };
        let (last_deploy, restore, snapshot, hot_first, total) = {
            let history = lock(&self.history);
            let total = history.restore.as_ref().filter(|o| o.hot.is_some()).map(|o| o.elapsed);
            let outcome = |o: &Option<Outcome>| o.as_ref().map(Outcome::to_json);
            (history.deploy.clone(), outcome(&history.restore), outcome(&history.snapshot), history.hot, total)
        };
        let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
        let (hot, landing) = (hot_first.map(|(h, _)| h), hot_first.is_some_and(|(_, l)| l));
        let (boot, first_response) = match &*lock(&self.phase) {
            Phase::Deployed(d) => (d.worker.as_ref().and_then(Worker::boot), d.first_response.get().copied()),
            _ => (None, None),
        };
        let timings = Timings {
            hot_ms: ms(hot),
            tail_ms: ms(hot.zip(total.filter(|_| !landing)).map(|(h, t)| t.saturating_sub(h))),
            boot_ms: ms(boot),
            first_response_ms: ms(first_response),
        };
        Status {
            sandbox: true,
            deployed,
            deploying,
            site,
            worker,
            worker_restarts: restarts,
            worker_last_exit: last_exit,
            phase,
            last_deploy,
            timings,
            cache: CacheStatus { restore, snapshot, snapshot_running: self.snapshots.running(), tail_landing: landing },
            prewarm: {
                let mut prewarm = self.prewarm.status();
                prewarm.checked = prewarm.state == "ready" && sandcache_engine::idle_checked(&self.cfg.deno_dir);
                prewarm
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RunnerConfig;
    use serde_json::json;

    #[test]
    fn the_keys_and_values_are_the_api() {
        let idle = serde_json::to_value(Runner::new(RunnerConfig::default()).status()).unwrap();
        let timings = json!({"hot_ms": null, "tail_ms": null, "boot_ms": null, "first_response_ms": null});
        let cache = json!({"restore": null, "snapshot": null, "snapshot_running": false, "tail_landing": false});
        assert_eq!(
            idle,
            json!({
                "sandbox": true, "deployed": false, "deploying": false, "site": null, "worker": "none",
                "worker_restarts": 0, "worker_last_exit": null, "phase": "idle", "last_deploy": null,
                "timings": timings, "cache": cache,
                "prewarm": {"state": "off", "source": null, "from_key": null, "generation": null, "ms": null, "at": null,
                    "outcome": null, "error": null, "checked": false},
            })
        );
        let ok = LastDeploy { ok: true, outcome: None, error: None, at: 7, ms: 3 };
        assert_eq!(serde_json::to_value(ok).unwrap(), json!({"ok": true, "at": 7, "ms": 3}));
        let failed =
            LastDeploy { ok: false, outcome: Some("cancelled"), error: Some("Deploy cancelled".into()), at: 7, ms: 3 };
        assert_eq!(
            serde_json::to_value(failed).unwrap(),
            json!({"ok": false, "outcome": "cancelled", "error": "Deploy cancelled", "at": 7, "ms": 3})
        );
    }
}
