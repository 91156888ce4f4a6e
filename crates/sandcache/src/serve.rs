//! `sandcache serve`: flags and environment to a runner config, then run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use sandcache_engine::CacheConfig;
use sandcache_runner::isolation::{self, WorkerUser};
use sandcache_runner::{Runner, RunnerConfig};

use crate::FormatArg;
use crate::env_vars;
use crate::settings::LimitArgs;
use crate::settings::StoreArgs;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on. Default: 0.0.0.0:$APP_PORT (8000).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// The cache dir the worker gets as DENO_DIR.
    #[arg(long, env = env_vars::DENO_DIR, default_value = "/deno-dir", value_name = "DIR")]
    dir: PathBuf,
    /// Where the site is cloned and the worker runs.
    #[arg(long, env = env_vars::SANDCACHE_WORK_DIR, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Runner-wide cache store; a deploy's DECO_CACHE_S3_* override it.
    /// Without one (and without DECO_CACHE_S3_BUCKET) the cache is off until
    /// a deploy enables it. `local` is the embedded default store.
    #[command(flatten)]
    store: StoreArgs,
    /// Runner-wide fallbacks, tried after a deploy's own
    /// DECO_CACHE_S3_FALLBACK_KEYS: a key, or a prefix ending in `/`.
    /// Repeatable. Read-only: snapshots write the deploy's key only.
    #[arg(long = "fallback-key", value_name = "F", env = env_vars::DECO_CACHE_S3_FALLBACK_KEYS)]
    #[arg(value_delimiter = ',', value_parser = crate::parse_fallback)]
    fallbacks: Vec<String>,
    /// Restore deadline in seconds.
    #[arg(long, env = env_vars::SANDCACHE_TIMEOUT, default_value = "30", value_name = "SECS")]
    restore_timeout: f64,
    /// Start the worker at hot-ready (the files its last run read are in
    /// place) while the rest of the cache lands; `0`/`false` waits for all.
    #[arg(long, env = env_vars::SANDCACHE_HOT_FIRST, default_value = "true", value_name = "BOOL")]
    #[arg(value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    hot_first: bool,
    /// Let proxied requests through while the cache's tail lands, instead
    /// of holding them until it has. Only for sites whose whole working set
    /// is hot: a request needing a file still missing makes the app fetch
    /// it again (a cold miss), or fail if it cannot.
    #[arg(long, env = env_vars::SANDCACHE_SERVE_DURING_TAIL)]
    serve_during_tail: bool,
    /// Bounds on what the deploy's restore may expand to.
    #[command(flatten)]
    limits: LimitArgs,
    /// Format of the snapshots the runner takes.
    #[arg(long, value_enum, default_value = "native")]
    format: FormatArg,
    /// Seconds the worker has to listen on its PORT.
    #[arg(long, env = env_vars::PORT_TIMEOUT, default_value = "60", value_name = "SECS")]
    port_timeout: f64,
    /// Seconds the cache dir must stay unchanged after the worker is ready
    /// before the deps-ready snapshot.
    #[arg(long, env = env_vars::SANDCACHE_SETTLE_SECS, default_value = "10", value_name = "SECS")]
    settle: f64,
    /// Seconds `git clone` may take (its whole process group is killed then).
    #[arg(long, env = env_vars::SANDCACHE_CLONE_TIMEOUT, default_value = "120", value_name = "SECS")]
    clone_timeout: f64,
    /// Seconds a proxied request waits for the worker's response headers
    /// before a 504 (a body that has started streams on).
    #[arg(long, env = env_vars::SANDCACHE_PROXY_TIMEOUT, default_value = "60", value_name = "SECS")]
    proxy_timeout: f64,
    /// Seconds the final snapshot (at undeploy and shutdown) may take,
    /// waiting for a running snapshot included.
    #[arg(long, env = env_vars::SANDCACHE_FINAL_SNAPSHOT_SECS, default_value = "60", value_name = "SECS")]
    final_snapshot_timeout: f64,
    /// Seconds between SIGTERM and SIGKILL when stopping the worker.
    #[arg(long, default_value = "10", value_name = "SECS")]
    stop_grace: f64,
    /// Default run command (whitespace-separated) for deploys that give none.
    #[arg(long, env = env_vars::SANDCACHE_RUN_COMMAND, value_name = "CMD")]
    run_command: Option<String>,
    /// The file the default run command needs in the repo.
    #[arg(long, env = env_vars::SANDCACHE_RUN_ENTRY, default_value = "main.ts", value_name = "FILE")]
    run_entry: String,
    /// Who the worker runs as: USER, UID or UID:GID. As root the default is
    /// 10001:10001; `root` must be said explicitly. Not root: the runner's
    /// own uid (the only one it can use).
    #[arg(long, env = env_vars::SANDCACHE_WORKER_USER, value_name = "USER")]
    worker_user: Option<String>,
    /// The runner's own directory (lock, state and index of the cache; the
    /// worker's HOME and TMPDIR). Default: /var/lib/sandcache as root,
    /// else $XDG_STATE_HOME/sandcache.
    #[arg(long, env = env_vars::SANDCACHE_STATE_DIR, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Add iptables/ip6tables rules that reject the worker uid's traffic to
    /// the cloud credential endpoints (needs CAP_NET_ADMIN).
    #[arg(long)]
    block_metadata: bool,
}

fn secs(v: f64, what: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(v)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{what} must be a positive number of seconds"))
}

fn config(args: &ServeArgs) -> Result<(String, RunnerConfig), String> {
    let listen = match &args.listen {
        Some(l) => l.clone(),
        None => {
            let port = std::env::var(env_vars::APP_PORT).unwrap_or_else(|_| "8000".into());
            port.parse::<u16>().map_err(|_| format!("{}={port:?} is not a port number", env_vars::APP_PORT))?;
            format!("0.0.0.0:{port}")
        }
    };
    // The runner-wide store is off unless one is named: the seed enables the
    // cache only when a bucket is given.
    let named = args.store.store.is_some() || std::env::var_os(env_vars::DECO_CACHE_S3_BUCKET).is_some();
    let store = if named { args.store.store_spec().map_err(|e| format!("{e:#}"))? } else { None };
    if let Some(key) = &args.store.key {
        sandcache_engine::validate_key(key)?;
    }
    let env: Vec<(String, String)> = std::env::vars().collect();
    let legacy_vars = env.iter().filter(|(k, _)| env_vars::LEGACY_CACHE_VARS.contains(&k.as_str())).cloned().collect();
    let default_run_command = args
        .run_command
        .as_ref()
        .map(|c| c.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .filter(|v| !v.is_empty());
    let me = WorkerUser::current();
    let root = me.is_root();
    let worker_user = match (&args.worker_user, root) {
        (Some(spec), _) => {
            let u = WorkerUser::parse(spec)?;
            if u.is_separate() && !root {
                return Err(format!(
                    "--worker-user {spec}: only root can start the worker as another user (the runner is uid {})",
                    me.uid
                ));
            }
            Some(u)
        }
        (None, true) => Some(WorkerUser::DEFAULT),
        (None, false) => None,
    };
    let state_dir = match &args.state_dir {
        Some(d) => d.clone(),
        None if root => PathBuf::from("/var/lib/sandcache"),
        None => dirs::state_dir()
            .map(|d| d.join("sandcache"))
            .ok_or("no state dir: set --state-dir or SANDCACHE_STATE_DIR")?,
    };
    let admin_token = match std::env::var(env_vars::SANDCACHE_ADMIN_TOKEN).ok().filter(|t| !t.is_empty()) {
        Some(t) => Some(t),
        None => match std::env::var_os(env_vars::SANDCACHE_ADMIN_TOKEN_FILE) {
            Some(f) => Some(
                std::fs::read_to_string(&f)
                    .map_err(|e| format!("{}={}: {e}", env_vars::SANDCACHE_ADMIN_TOKEN_FILE, Path::new(&f).display()))?
                    .trim()
                    .to_owned(),
            )
            .filter(|t| !t.is_empty()),
            None => None,
        },
    };
    let cfg = RunnerConfig {
        deno_dir: args.dir.clone(),
        work_dir: args.work_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("sandcache-site")),
        cache_defaults: CacheConfig { store, key: args.store.key.clone() },
        restore_timeout: secs(args.restore_timeout, "--restore-timeout")?,
        restore_limits: args.limits.limits(),
        snapshot_format: args.format.into(),
        port_timeout: secs(args.port_timeout, "--port-timeout")?,
        settle: secs(args.settle, "--settle")?,
        stop_grace: secs(args.stop_grace, "--stop-grace")?,
        proxy_timeout: secs(args.proxy_timeout, "--proxy-timeout")?,
        clone_timeout: secs(args.clone_timeout, "--clone-timeout")?,
        final_snapshot_timeout: secs(args.final_snapshot_timeout, "--final-snapshot-timeout")?,
        default_run_command,
        default_entry: args.run_entry.clone(),
        admin_token,
        worker_user,
        state_dir,
        sweep_descendants: true,
        runner_env: env,
        legacy_vars,
        fallbacks: args.fallbacks.clone(),
        hot_first: args.hot_first,
        serve_during_tail: args.serve_during_tail,
        ..RunnerConfig::default()
    };
    Ok((listen, cfg))
}

pub fn run(args: &ServeArgs) -> ExitCode {
    let (listen, cfg) = match config(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // Before any thread or child exists: /proc/<runner> closed to every
    // other process of its uid, and the worker's orphans adopted.
    if let Err(e) = isolation::make_non_dumpable() {
        eprintln!("error: cannot make the runner non-dumpable: {e}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = isolation::become_subreaper() {
        eprintln!("warning: cannot become a child subreaper ({e}); a worker's orphans may outlive undeploy");
    }
    if args.block_metadata {
        let user = cfg.worker_user.unwrap_or_else(WorkerUser::current);
        if let Err(e) = isolation::block_metadata(user.uid) {
            eprintln!("error: --block-metadata: {e}");
            return ExitCode::from(2);
        }
    }
    let runtime = match crate::runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(&listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on {listen}: {e}");
                return ExitCode::from(2);
            }
        };
        let runner = Runner::new(cfg);
        let second = runner.clone();
        let shutdown = async move {
            shutdown_signal().await;
            tracing::info!(target: "sandbox", "signal received: shutting down (a second signal exits at once)");
            tokio::spawn(async move {
                shutdown_signal().await;
                tracing::warn!(target: "sandbox", "second signal: exiting at once, without the final snapshot");
                second.kill_workers_now();
                std::process::exit(1);
            });
        };
        match sandcache_runner::serve(listener, runner, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// SIGTERM (the pod is stopping) or Ctrl-C.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
