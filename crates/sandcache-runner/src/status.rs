//! `/sandbox/status`: where the runner is, the worker, the timings of the
//! last deploy, and the last cache outcomes.

use std::time::Duration;

use sandcache_engine::Outcome;
use serde_json::json;

use crate::runner::{Phase, Runner, lock};
use crate::worker::{Worker, WorkerState};

impl Runner {
    /// `/sandbox/status`: no secrets, only names, states and outcomes.
    pub fn status(&self) -> serde_json::Value {
        let (deployed, deploying, site, worker, (restarts, last_exit), phase) = match &*lock(&self.phase) {
            Phase::Idle => (false, false, None, WorkerState::None, (0, None), "idle"),
            Phase::Deploying { site, .. } => {
                (false, true, Some(site.clone()), WorkerState::None, (0, None), *lock(&self.deploy_step))
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
        let timings = json!({
            "hot_ms": ms(hot),
            "tail_ms": ms(hot.zip(total.filter(|_| !landing)).map(|(h, t)| t.saturating_sub(h))),
            "boot_ms": ms(boot),
            "first_response_ms": ms(first_response),
        });
        json!({
            "sandbox": true,
            "deployed": deployed,
            "deploying": deploying,
            "site": site,
            "worker": worker,
            "worker_restarts": restarts,
            "worker_last_exit": last_exit,
            "phase": phase,
            "last_deploy": last_deploy,
            "timings": timings,
            "cache": {
                "restore": restore,
                "snapshot": snapshot,
                "snapshot_running": self.snapshotting.try_lock().is_err(),
                "tail_landing": landing,
            },
        })
    }
}
