//! Prometheus metrics: what makes a failing cache visible.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sandcache_engine::{Op, Outcome};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    op: &'static str,
    /// `done`, or the skip reason.
    reason: &'static str,
}

/// The runner's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    duration: Family<OpLabels, Histogram>,
    outcomes: Family<OutcomeLabels, Counter>,
    bytes: Family<OpLabels, Counter>,
    transferred: Family<OpLabels, Counter>,
    files: Family<OpLabels, Counter>,
    worker_starts: Counter,
    worker_failures: Counter,
    worker_restarts: Counter,
    worker_up: prometheus_client::metrics::gauge::Gauge,
    deploys: Family<DeployLabels, Counter>,
    deploy_duration: Histogram,
    proxied: Family<ProxyLabels, Counter>,
    upstream: Histogram,
    tiers: Family<TierLabels, Counter>,
    pool: Family<PoolLabels, Counter>,
    phases: Family<PhaseLabels, Histogram>,
    worker_boot: Histogram,
    first_response: Histogram,
    worker_tail_restarts: Counter,
    prewarms: Family<DeployLabels, Counter>,
    prewarm_duration: Histogram,
    restores_by_mode: Family<ModeLabels, Counter>,
    files_written: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabels {
    /// `full` or `delta`.
    mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    /// `hot` (to hot-ready) or `tail` (from hot-ready to the end).
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    /// `added` (uploaded by a snapshot) or `reused` (already in the pool).
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierLabels {
    /// `exact`, `fallback` or `cold`. The key is in the logs and status,
    /// not here: one label value per key would not scale.
    tier: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeployLabels {
    /// `ok`, `error` or `cancelled`.
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProxyLabels {
    /// `2xx`, `5xx`, ...
    class: &'static str,
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Restore => "restore",
        Op::Snapshot => "snapshot",
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sandcache");
        let duration = Family::<OpLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0])
        });
        registry.register(
            "cache_duration_seconds",
            "Time taken by cache restores and snapshots, whatever their outcome",
            duration.clone(),
        );
        let outcomes = Family::<OutcomeLabels, Counter>::default();
        registry.register("cache_outcomes", "Cache operations by outcome: done or the skip reason", outcomes.clone());
        let bytes = Family::<OpLabels, Counter>::default();
        registry.register("cache_bytes", "File content bytes restored or snapshotted", bytes.clone());
        let transferred = Family::<OpLabels, Counter>::default();
        registry.register("cache_transferred_bytes", "Bytes moved to or from the store", transferred.clone());
        let files = Family::<OpLabels, Counter>::default();
        registry.register("cache_files", "Files restored or snapshotted", files.clone());
        let worker_starts = Counter::default();
        registry.register("worker_starts", "Worker processes started", worker_starts.clone());
        let worker_failures = Counter::default();
        registry.register(
            "worker_failures",
            "Workers that failed to start, to become ready, or exited on their own",
            worker_failures.clone(),
        );
        let worker_restarts = Counter::default();
        registry.register(
            "worker_restarts",
            "Workers restarted after they exited on their own once ready",
            worker_restarts.clone(),
        );
        let worker_up = prometheus_client::metrics::gauge::Gauge::default();
        registry.register("worker_up", "1 while the worker is ready, else 0", worker_up.clone());
        let deploys = Family::<DeployLabels, Counter>::default();
        registry.register("deploys", "Deploys by outcome: ok, error or cancelled", deploys.clone());
        let deploy_duration = Histogram::new([0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0]);
        registry.register(
            "deploy_duration_seconds",
            "Time from a deploy request to its answer",
            deploy_duration.clone(),
        );
        let proxied = Family::<ProxyLabels, Counter>::default();
        registry.register(
            "proxied_requests",
            "Requests proxied to the worker, by response status class",
            proxied.clone(),
        );
        let upstream = Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0]);
        registry.register(
            "upstream_latency_seconds",
            "Time from forwarding a request to the worker's response headers",
            upstream.clone(),
        );
        for outcome in ["ok", "error", "cancelled"] {
            let _ = deploys.get_or_create(&DeployLabels { outcome });
        }
        for class in CLASSES {
            let _ = proxied.get_or_create(&ProxyLabels { class });
        }
        let tiers = Family::<TierLabels, Counter>::default();
        registry.register(
            "restore_tier",
            "Restores by the tier that served them: the exact key, a fallback, or none (cold)",
            tiers.clone(),
        );
        for tier in ["exact", "fallback", "cold"] {
            let _ = tiers.get_or_create(&TierLabels { tier });
        }
        let pool = Family::<PoolLabels, Counter>::default();
        registry.register(
            "snapshot_pool_bytes",
            "Bytes of packs native snapshots added to the shared pool, and reused from it",
            pool.clone(),
        );
        for kind in ["added", "reused"] {
            let _ = pool.get_or_create(&PoolLabels { kind });
        }
        let phases = Family::<PhaseLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0])
        });
        registry.register(
            "restore_phase_seconds",
            "Hot-first restores: time to hot-ready (hot), then until the rest landed or failed (tail)",
            phases.clone(),
        );
        for phase in ["hot", "tail"] {
            let _ = phases.get_or_create(&PhaseLabels { phase });
        }
        let worker_boot = Histogram::new([0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0]);
        registry.register(
            "worker_boot_seconds",
            "Time from starting a deploy's worker to it listening on its port",
            worker_boot.clone(),
        );
        let first_response = Histogram::new([0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0]);
        registry.register(
            "first_response_seconds",
            "Time from a deploy request to the worker's first proxied response",
            first_response.clone(),
        );
        let worker_tail_restarts = Counter::default();
        registry.register(
            "worker_tail_restarts",
            "Workers started again because they exited before the restore's tail landed",
            worker_tail_restarts.clone(),
        );
        let prewarms = Family::<DeployLabels, Counter>::default();
        registry.register(
            "prewarms",
            "Pre-warms of DENO_DIR with the pool-wide base, by outcome (ok, error)",
            prewarms.clone(),
        );
        for outcome in ["ok", "error"] {
            let _ = prewarms.get_or_create(&DeployLabels { outcome });
        }
        let prewarm_duration = Histogram::new([0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0]);
        registry.register("prewarm_seconds", "Time a pre-warm took (at low priority)", prewarm_duration.clone());
        let restores_by_mode = Family::<ModeLabels, Counter>::default();
        registry.register(
            "restores_by_mode",
            "Done restores by how they wrote the dir: whole (full) or only what differs (delta)",
            restores_by_mode.clone(),
        );
        for mode in ["full", "delta"] {
            let _ = restores_by_mode.get_or_create(&ModeLabels { mode });
        }
        let files_written = Counter::default();
        registry.register("restore_files_written", "Files (and symlinks) done restores wrote", files_written.clone());
        // Every label set exists from the start, so a dashboard sees zeros.
        for op in [Op::Restore, Op::Snapshot] {
            let labels = OpLabels { op: op_name(op) };
            let _ = duration.get_or_create(&labels);
            let _ = bytes.get_or_create(&labels);
            let _ = transferred.get_or_create(&labels);
            let _ = files.get_or_create(&labels);
            let _ = outcomes.get_or_create(&OutcomeLabels { op: op_name(op), reason: "done" });
            for reason in sandcache_engine::Reason::ALL {
                let _ = outcomes.get_or_create(&OutcomeLabels { op: op_name(op), reason: reason.as_str() });
            }
        }
        Metrics {
            registry,
            duration,
            outcomes,
            bytes,
            transferred,
            files,
            worker_starts,
            worker_failures,
            worker_restarts,
            worker_up,
            deploys,
            deploy_duration,
            proxied,
            upstream,
            tiers,
            pool,
            phases,
            worker_boot,
            first_response,
            worker_tail_restarts,
            prewarms,
            prewarm_duration,
            restores_by_mode,
            files_written,
        }
    }
}

impl Metrics {
    pub fn record(&self, o: &Outcome) {
        let op = op_name(o.op);
        self.duration.get_or_create(&OpLabels { op }).observe(o.elapsed.as_secs_f64());
        let reason = o.reason().map_or("done", |r| r.as_str());
        self.outcomes.get_or_create(&OutcomeLabels { op, reason }).inc();
        if o.op == Op::Restore && o.reason() != Some(sandcache_engine::Reason::Disabled) {
            self.tiers.get_or_create(&TierLabels { tier: o.hit().unwrap_or("cold") }).inc();
        }
        if let (Op::Restore, Ok(d)) = (o.op, &o.result) {
            self.restores_by_mode.get_or_create(&ModeLabels { mode: d.mode.as_str() }).inc();
            self.files_written.inc_by(d.files_written);
        }
        if let (Op::Snapshot, Ok(d)) = (o.op, &o.result) {
            self.pool.get_or_create(&PoolLabels { kind: "added" }).inc_by(d.pool_added);
            self.pool.get_or_create(&PoolLabels { kind: "reused" }).inc_by(d.pool_reused);
        }
        if let Ok(d) = &o.result {
            self.bytes.get_or_create(&OpLabels { op }).inc_by(d.bytes);
            self.transferred.get_or_create(&OpLabels { op }).inc_by(d.transferred);
            self.files.get_or_create(&OpLabels { op }).inc_by(d.files);
        }
    }

    /// A pre-warm ended: restored (`ok`) or not (`error`), after `took`.
    pub(crate) fn prewarmed(&self, ok: bool, took: std::time::Duration) {
        self.prewarms.get_or_create(&DeployLabels { outcome: if ok { "ok" } else { "error" } }).inc();
        self.prewarm_duration.observe(took.as_secs_f64());
    }

    pub fn worker_started(&self) {
        self.worker_starts.inc();
    }

    pub fn worker_failed(&self) {
        self.worker_failures.inc();
    }

    pub(crate) fn deployed(&self, outcome: &'static str, took: std::time::Duration) {
        self.deploys.get_or_create(&DeployLabels { outcome }).inc();
        self.deploy_duration.observe(took.as_secs_f64());
    }

    /// A proxied request's answer (its status) and, when the worker sent
    /// headers, how long that took.
    pub(crate) fn proxied(&self, status: u16, upstream: Option<std::time::Duration>) {
        let class = CLASSES[usize::from(status / 100).clamp(1, 5) - 1];
        self.proxied.get_or_create(&ProxyLabels { class }).inc();
        if let Some(t) = upstream {
            self.upstream.observe(t.as_secs_f64());
        }
    }

    pub(crate) fn restore_phases(&self, hot: std::time::Duration, tail: std::time::Duration) {
        self.phases.get_or_create(&PhaseLabels { phase: "hot" }).observe(hot.as_secs_f64());
        self.phases.get_or_create(&PhaseLabels { phase: "tail" }).observe(tail.as_secs_f64());
    }

    pub(crate) fn worker_boot(&self, took: std::time::Duration) {
        self.worker_boot.observe(took.as_secs_f64());
    }

    pub(crate) fn first_response(&self, took: std::time::Duration) {
        self.first_response.observe(took.as_secs_f64());
    }

    pub(crate) fn worker_tail_restart(&self) {
        self.worker_tail_restarts.inc();
    }

    pub fn worker_restarted(&self) {
        self.worker_restarts.inc();
    }

    pub fn worker_up(&self, up: bool) {
        self.worker_up.set(i64::from(up));
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
