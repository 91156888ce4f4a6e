//! Pre-warming: while no site is deployed, the pool-wide base (`--prewarm`,
//! a key or a `prefix/`) is restored into DENO_DIR, so that a deploy's
//! restore writes only what its site adds to the base.
//!
//! * It runs only while the runner is idle: at start, and after each
//!   undeploy (which empties DENO_DIR first, as always). It is refreshed
//!   every `--prewarm-refresh` while idle, so a long-idle pod is not
//!   stale: with the key's pointer that check is one GET, and a restore of
//!   an unchanged generation writes nothing.
//! * It is advisory and bounded as any restore (the restore timeout), and
//!   runs at low priority: its own runtime, whose threads (and every thread
//!   they start: the writers, background removals) run at nice 19, which
//!   also makes their IO the lowest best-effort level.
//! * A deploy cancels it first (`Prewarm::cancel`): its future is dropped
//!   (a restore's staging goes, a delta leaves every unit whole), the
//!   dir's lock is free within `CANCEL_BOUND`, and the deploy's restore
//!   starts from whatever the state proves.
//! * No worker ever runs against the pre-warmed tree before a deploy's own
//!   restore has made it that site's, and DENO_DIR is kept at a deploy only
//!   while `Prewarm::pristine` says nothing but pre-warms wrote it since
//!   it was last emptied.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sandcache_engine::{Outcome, RestoreOptions};

use crate::runner::{Phase, Runner, lock};
use crate::workdirs;

/// How long an idle runner without `--prewarm` waits before removing the
/// old trees emptying DENO_DIR left: a deploy that comes sooner removes
/// them after its own restore.
pub(crate) const IDLE_CLEANUP: Duration = Duration::from_secs(10);

/// The runtime pre-warms run on: one worker thread, a few blocking ones,
/// all at low CPU and IO priority. One per process, never dropped.
fn low_priority_runtime() -> Option<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .max_blocking_threads(8)
                .thread_name("sandcache-prewarm")
                .on_thread_start(lower_priority)
                .enable_all()
                .build()
                .inspect_err(|e| tracing::warn!(target: "sandbox-cache", "no pre-warm runtime: {e}"))
                .ok()
        })
        .as_ref()
}

/// The calling thread at nice 19 (per thread on Linux, where `who` 0 is
/// the calling thread, and inherited by the threads it starts). With no IO
/// priority of its own, a thread's IO priority follows its nice value: the
/// lowest best-effort level, for the schedulers that weigh them (BFQ). The
/// idle IO class would need `ioprio_set`, which no safe wrapper offers.
fn lower_priority() {
    if let Err(e) = rustix::process::setpriority_process(None, 19) {
        tracing::debug!(target: "sandbox-cache", "the pre-warm runs at normal priority: {e}");
    }
}

impl Runner {
    /// Starts pre-warming (with `--prewarm`, while idle): now, then every
    /// `--prewarm-refresh`. Does nothing when one is running already.
    /// [`serve`](crate::serve) calls it as it starts; an undeploy, or a
    /// deploy that failed, when the runner is idle again.
    ///
    /// Without `--prewarm`, an idle runner still removes, after
    /// [`IDLE_CLEANUP`], the old trees that emptying DENO_DIR moved aside
    /// (a restore removes them after its swap, off its critical path; see
    /// [`sandcache_engine::clear_dir`]).
    pub fn start_prewarm(self: &Arc<Self>) {
        // A runner shutting down (the undeploy of its shutdown calls this
        // too) starts nothing: the runtime outlives it.
        if self.prewarm.stopped() {
            return;
        }
        let Some(runtime) = low_priority_runtime() else { return };
        let mut task = lock(&self.prewarm.task);
        if task.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let Some(source) = self.cfg.prewarm.clone() else {
            lock(&self.prewarm.status).state = "off";
            let this = self.clone();
            *task = Some(runtime.spawn(async move {
                tokio::time::sleep(IDLE_CLEANUP).await;
                this.remove_leftovers().await;
            }));
            return;
        };
        {
            let mut status = lock(&self.prewarm.status);
            status.source = Some(source.clone());
            status.state = "waiting";
        }
        let this = self.clone();
        *task = Some(runtime.spawn(async move {
            loop {
                if !matches!(&*lock(&this.phase), Phase::Idle) {
                    return;
                }
                this.prewarm_once(&source).await;
                // What a failed pre-warm did not remove after a swap.
                this.remove_leftovers().await;
                tokio::time::sleep(this.cfg.prewarm_refresh).await;
            }
        }));
    }

    /// One pre-warm: DENO_DIR emptied first unless pristine, then the base
    /// restored into it (a delta over what an earlier pre-warm left).
    async fn prewarm_once(&self, source: &str) {
        lock(&self.prewarm.status).state = "running";
        let started = Instant::now();
        let prepared = match workdirs::prepare_state_dir(&self.cfg) {
            Err(e) => Err(e),
            Ok(()) if self.prewarm.pristine() => Ok(()),
            Ok(()) => workdirs::clear(&self.cfg, &self.cfg.deno_dir).await.map_err(|e| e.to_string()),
        };
        if let Err(e) = prepared {
            tracing::warn!(target: "sandbox-cache", "pre-warm: {e}");
            let mut status = lock(&self.prewarm.status);
            (status.state, status.error) = ("failed", Some(e));
            return;
        }
        self.prewarm.set_pristine(true);
        let user = self.worker_user();
        // A key, or the newest generation under a `prefix/` (as a
        // fallback): the key itself is then the prefix's name, which holds
        // nothing.
        let key = source.trim_end_matches('/');
        let fallbacks = if source.ends_with('/') { vec![source.to_owned()] } else { Vec::new() };
        let mut config = self.cfg.cache_defaults.clone();
        config.key = Some(key.to_owned());
        let cache = self.prewarm_stores.cache(&config);
        let opts = RestoreOptions {
            timeout: self.cfg.restore_timeout,
            limits: self.cfg.restore_limits,
            owner: user.is_separate().then_some((user.uid, user.gid)),
            state_dir: Some(workdirs::cache_state_dir(&self.cfg)),
            hot_first: false,
            fallbacks,
            // The deploy's delta then reads the pre-warmed generation
            // from memory, and finds it checked against the disk while the
            // pod was idle (when nothing happened in it since).
            remember: true,
            watch_idle: true,
            ..Default::default()
        };
        let outcome = cache.restore(&self.cfg.deno_dir, &opts).await;
        // The deploys' side of the same store opened now, while idle (its
        // client, TLS roots parsed: some 4 ms of a core), not at the
        // deploy, where the pre-warmed delta's check waited behind it.
        let _ = self.stores.cache(&config);
        self.finish_prewarm(outcome, started);
    }

    /// Old trees moved aside, removed while the runner is idle.
    async fn remove_leftovers(&self) {
        if !matches!(&*lock(&self.phase), Phase::Idle) {
            return;
        }
        let state = workdirs::cache_state_dir(&self.cfg);
        match sandcache_engine::remove_leftovers(&self.cfg.deno_dir, Some(&state), self.cfg.restore_timeout).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(target: "sandbox", "removing {n} old trees beside DENO_DIR while idle"),
            Err(e) => tracing::debug!(target: "sandbox", "could not remove what is left beside DENO_DIR: {e}"),
        }
    }

    fn finish_prewarm(&self, outcome: Outcome, started: Instant) {
        let took = started.elapsed();
        self.metrics.prewarmed(outcome.is_done(), took);
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let mut status = lock(&self.prewarm.status);
        status.state = if outcome.is_done() { "ready" } else { "failed" };
        if outcome.is_done() {
            (status.from_key, status.generation) = (outcome.from_key.clone(), outcome.generation.clone());
        }
        status.ms = Some(took.as_millis() as u64);
        status.at = Some(at);
        status.outcome = Some(outcome.to_json());
        status.error = None;
        tracing::info!(target: "sandbox-cache", ms = took.as_millis() as u64, "pre-warm {}: {}", status.state, outcome.to_json());
    }
}
