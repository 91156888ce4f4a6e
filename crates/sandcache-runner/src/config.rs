//! How the runner behaves: [`RunnerConfig`], which the binary fills from
//! flags and the environment.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use sandcache_engine::{CacheConfig, Format, Limits};
use sandcache_store::StoreOptions;

use crate::admin::AdminAuth;
use crate::isolation::WorkerUser;
use crate::worker::Restarts;

/// How the runner behaves. Library code reads no environment: the binary
/// fills this from flags and env vars.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// The cache dir (`DENO_DIR`, default `/deno-dir`).
    pub deno_dir: PathBuf,
    /// Where the site is cloned and the worker runs.
    pub work_dir: PathBuf,
    /// Runner-wide cache settings; a deploy's `DECO_CACHE_S3_*` override them.
    pub cache_defaults: CacheConfig,
    pub store_options: StoreOptions,
    pub restore_timeout: Duration,
    /// Bounds on what a restore may expand to (size, entries, path length).
    pub restore_limits: Limits,
    pub snapshot_timeout: Duration,
    /// Bound on the snapshot taken at undeploy or shutdown.
    pub final_snapshot_timeout: Duration,
    pub snapshot_format: Format,
    /// The worker must listen on `PORT` within this (`PORT_TIMEOUT`).
    pub port_timeout: Duration,
    /// The cache dir must not change for this long after the worker is ready
    /// before the deps-ready snapshot is taken.
    pub settle: Duration,
    /// How often the cache dir is checked while settling.
    pub settle_poll: Duration,
    /// Give up on a dir that never settles after this long.
    pub settle_max_wait: Duration,
    /// SIGTERM to SIGKILL.
    pub stop_grace: Duration,
    pub clone_timeout: Duration,
    /// How long a proxied request waits for the worker's response headers
    /// (then 504). A body that has started is not bounded.
    pub proxy_timeout: Duration,
    /// How a worker that exits after it was ready is restarted.
    pub worker_restarts: Restarts,
    /// A default `runCommand`, used only when the repo has `default_entry`.
    pub default_run_command: Option<Vec<String>>,
    pub default_entry: String,
    /// The runner's own environment, which the worker inherits minus secrets.
    pub runner_env: Vec<(String, String)>,
    /// Legacy build cache variables from the runner's env (deploy envs win).
    pub legacy_vars: BTreeMap<String, String>,
    /// Who may call the admin plane (`/sandbox/*`): a token, a pod key for
    /// short-lived tokens, or neither (then only local peers that are not
    /// the worker).
    pub admin: AdminAuth,
    /// Serve the admin routes on the main port too (the platform calls
    /// them there); off once it calls a separate admin listener. Either
    /// way, no path under `/sandbox` is ever proxied to the worker.
    pub admin_on_main: bool,
    /// Serve `/metrics` on the main port (behind the admin check); off when
    /// a metrics listener of its own serves it, and then `/metrics` is the
    /// site's.
    pub metrics_on_main: bool,
    /// Who the worker (and the clone) runs as; `None`: the runner's own
    /// uid. `sandcache serve` as root defaults to [`WorkerUser::DEFAULT`].
    pub worker_user: Option<WorkerUser>,
    /// The runner's own directory, which the worker must not be able to
    /// write: the cache's lock, state and index (`cache/`), and the
    /// worker's fresh HOME and TMPDIR (`worker/`).
    pub state_dir: PathBuf,
    /// The runner is a child subreaper (or PID 1): undeploy also kills
    /// every descendant of the runner (a worker's orphans are among them).
    /// The daemon also reaps exited orphans as they come
    /// ([`start_orphan_reaper`](crate::isolation::start_orphan_reaper)).
    pub sweep_descendants: bool,
    /// Runner-wide fallbacks (keys, or `prefix/`es), tried after a deploy's
    /// own `DECO_CACHE_S3_FALLBACK_KEYS`. Only ever read.
    pub fallbacks: Vec<String>,
    /// Pre-warm DENO_DIR with this key (or the newest generation under
    /// this `prefix/`) while no site is deployed (see `prewarm`).
    pub prewarm: Option<String>,
    /// How often an idle runner checks the pre-warmed base for a newer
    /// generation.
    pub prewarm_refresh: Duration,
    /// Start the worker at `hot-ready` (the hot set in place), while the
    /// rest of the cache lands (`SANDCACHE_HOT_FIRST=0` turns it off).
    pub hot_first: bool,
    /// Let proxied requests through while the tail lands, instead of
    /// holding them until it has (`--serve-during-tail`). For sites whose
    /// whole working set is hot: a request that needs a file still missing
    /// makes the app fetch it again, or fail.
    pub serve_during_tail: bool,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            deno_dir: "/deno-dir".into(),
            work_dir: std::env::temp_dir().join("sandcache-site"),
            cache_defaults: CacheConfig::default(),
            store_options: StoreOptions::default(),
            restore_timeout: Duration::from_secs(30),
            restore_limits: Limits::default(),
            snapshot_timeout: Duration::from_secs(600),
            final_snapshot_timeout: Duration::from_secs(60),
            snapshot_format: Format::Native,
            port_timeout: Duration::from_secs(60),
            settle: Duration::from_secs(10),
            settle_poll: Duration::from_secs(1),
            settle_max_wait: Duration::from_secs(600),
            stop_grace: Duration::from_secs(10),
            clone_timeout: Duration::from_secs(120),
            proxy_timeout: Duration::from_secs(60),
            worker_restarts: Restarts::default(),
            default_run_command: None,
            default_entry: "main.ts".into(),
            runner_env: Vec::new(),
            legacy_vars: BTreeMap::new(),
            fallbacks: Vec::new(),
            admin: AdminAuth::default(),
            admin_on_main: true,
            metrics_on_main: true,
            worker_user: None,
            state_dir: std::env::temp_dir().join(format!("sandcache-runner-{}", rustix::process::getuid().as_raw())),
            sweep_descendants: false,
            prewarm: None,
            prewarm_refresh: Duration::from_secs(300),
            hot_first: true,
            serve_during_tail: false,
        }
    }
}
