//! `sandcache serve`: flags and environment to a runner config, then run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use sandcache_engine::CacheConfig;
use sandcache_runner::isolation::{self, WorkerUser};
use sandcache_runner::{Runner, RunnerConfig};

use crate::env_vars;
use crate::settings::{FormatArg, LimitArgs, StoreArgs};

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
    #[arg(value_delimiter = ',', value_parser = crate::settings::parse_fallback)]
    fallbacks: Vec<String>,
    /// Pre-warm DENO_DIR while no site is deployed: a key, or a prefix
    /// ending in `/` (its newest generation), from the runner-wide store.
    /// For a generic pool, the platform's shared base; for a tenant pool,
    /// the site's own key. A deploy's restore then writes only what differs.
    #[arg(long, value_name = "F", env = env_vars::SANDCACHE_PREWARM)]
    #[arg(value_parser = crate::settings::parse_fallback)]
    prewarm: Option<String>,
    /// How often an idle runner looks for a newer generation of the
    /// pre-warmed base, in seconds.
    #[arg(long, value_name = "SECS", env = env_vars::SANDCACHE_PREWARM_REFRESH_SECS, default_value = "300")]
    #[arg(value_parser = clap::value_parser!(u64).range(1..))]
    prewarm_refresh_secs: u64,
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
    /// A separate admin listener that the proxy never shares: HOST:PORT, or
    /// unix:PATH (a socket only the runner's uid may connect to). It serves
    /// the admin routes, the probes and /metrics.
    #[arg(long, env = env_vars::SANDCACHE_ADMIN_LISTEN, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Serve the admin routes on the main port too, where the platform
    /// calls them today; `false` once it calls --admin-listen. No path
    /// under /sandbox is ever proxied to the worker either way.
    #[arg(long, env = env_vars::SANDCACHE_ADMIN_ON_MAIN, default_value = "true", value_name = "BOOL")]
    #[arg(value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    admin_on_main: bool,
    /// Serve /metrics on a listener of its own (HOST:PORT), open to
    /// scrapers on other hosts, never to the worker; the main port's copy
    /// is then off (and /metrics there is the site's).
    #[arg(long, env = env_vars::SANDCACHE_METRICS_LISTEN, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Start although the admin API listens beyond loopback with no token
    /// or key: any peer on another host may then deploy, snapshot and
    /// undeploy. Only behind a NetworkPolicy that admits the platform alone.
    #[arg(long, env = env_vars::SANDCACHE_ADMIN_WITHOUT_TOKEN)]
    admin_without_token: bool,
}

/// Where the admin listener goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AdminAddr {
    Tcp(String),
    Unix(PathBuf),
}

/// What `serve` listens on, and the runner's config.
#[derive(Debug)]
struct Plan {
    listen: String,
    admin_listen: Option<AdminAddr>,
    metrics_listen: Option<String>,
    cfg: RunnerConfig,
}

/// Whether every address `addr` resolves to is a loopback one. One that
/// does not resolve counts as not loopback: the check fails closed.
fn is_loopback(addr: &str) -> bool {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs().is_ok_and(|mut all| {
        let mut any = false;
        all.all(|a| {
            any = true;
            a.ip().is_loopback()
        }) && any
    })
}

fn secs(v: f64, what: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(v)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{what} must be a positive number of seconds"))
}

fn config(args: &ServeArgs) -> Result<Plan, String> {
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
            Some(f) => {
                Some(read_secret(env_vars::SANDCACHE_ADMIN_TOKEN_FILE, Path::new(&f))?).filter(|t| !t.is_empty())
            }
            None => None,
        },
    };
    let pod_key = match std::env::var_os(env_vars::SANDCACHE_ADMIN_KEY_FILE) {
        Some(f) => {
            let text = read_secret(env_vars::SANDCACHE_ADMIN_KEY_FILE, Path::new(&f))?;
            Some(
                sandcache_runner::admin::Key::from_hex(&text)
                    .map_err(|e| format!("{}={}: {e}", env_vars::SANDCACHE_ADMIN_KEY_FILE, Path::new(&f).display()))?,
            )
        }
        None => None,
    };
    let admin_listen = match &args.admin_listen {
        None => None,
        Some(a) => match a.strip_prefix("unix:") {
            Some("") => return Err("--admin-listen unix: needs a path (unix:/run/sandcache/admin.sock)".into()),
            Some(p) => Some(AdminAddr::Unix(PathBuf::from(p))),
            None => Some(AdminAddr::Tcp(a.clone())),
        },
    };
    if !args.admin_on_main && admin_listen.is_none() {
        return Err("--admin-on-main false needs --admin-listen: the admin API would be nowhere".into());
    }
    // Fail closed: without a credential, the admin API listens on
    // loopback (or a unix socket) only, unless the operator says otherwise.
    let credential = admin_token.is_some() || pod_key.is_some();
    if !credential && !args.admin_without_token {
        let mut open: Vec<&str> = Vec::new();
        if args.admin_on_main && !is_loopback(&listen) {
            open.push(&listen);
        }
        if let Some(AdminAddr::Tcp(a)) = &admin_listen {
            if !is_loopback(a) {
                open.push(a);
            }
        }
        if !open.is_empty() {
            return Err(format!(
                "refusing to serve the admin API on {} without a token: anyone who reaches that address could \
                 deploy any site here. Set {} (or {}, or {}), listen on loopback, or pass --admin-without-token \
                 behind a NetworkPolicy that admits the platform alone",
                open.join(" and "),
                env_vars::SANDCACHE_ADMIN_TOKEN_FILE,
                env_vars::SANDCACHE_ADMIN_TOKEN,
                env_vars::SANDCACHE_ADMIN_KEY_FILE,
            ));
        }
    }
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
        admin: sandcache_runner::AdminAuth {
            token: admin_token,
            pod_key,
            remote_without_token: args.admin_without_token && !credential,
        },
        admin_on_main: args.admin_on_main,
        metrics_on_main: args.metrics_listen.is_none(),
        worker_user,
        state_dir,
        sweep_descendants: true,
        runner_env: env,
        legacy_vars,
        fallbacks: args.fallbacks.clone(),
        prewarm: args.prewarm.clone(),
        prewarm_refresh: std::time::Duration::from_secs(args.prewarm_refresh_secs),
        hot_first: args.hot_first,
        serve_during_tail: args.serve_during_tail,
        ..RunnerConfig::default()
    };
    Ok(Plan { listen, admin_listen, metrics_listen: args.metrics_listen.clone(), cfg })
}

/// A secret file's text, trimmed: read once, at most 4 KiB.
fn read_secret(var: &str, path: &Path) -> Result<String, String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(4096).read_to_string(&mut text))
        .map_err(|e| format!("{var}={}: {e}", path.display()))?;
    Ok(text.trim().to_owned())
}

/// Binds the admin listener; a unix socket is made 0600, replacing a stale
/// socket (never any other file) left at its path.
async fn bind_admin(addr: &AdminAddr) -> Result<sandcache_runner::AdminListener, String> {
    use sandcache_runner::AdminListener;
    match addr {
        AdminAddr::Tcp(a) => tokio::net::TcpListener::bind(a)
            .await
            .map(AdminListener::Tcp)
            .map_err(|e| format!("cannot listen on {a} (--admin-listen): {e}")),
        AdminAddr::Unix(path) => {
            use std::os::unix::fs::{FileTypeExt, PermissionsExt};
            let shown = path.display();
            match std::fs::symlink_metadata(path) {
                Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)
                    .map_err(|e| format!("cannot remove the stale socket {shown} (--admin-listen): {e}"))?,
                Ok(_) => return Err(format!("--admin-listen unix:{shown}: the path exists and is not a socket")),
                Err(_) => {}
            }
            let l = tokio::net::UnixListener::bind(path)
                .map_err(|e| format!("cannot listen on unix:{shown} (--admin-listen): {e}"))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("cannot make unix:{shown} 0600 (--admin-listen): {e}"))?;
            Ok(AdminListener::Unix(l))
        }
    }
}

pub fn run(args: &ServeArgs) -> ExitCode {
    let Plan { listen, admin_listen, metrics_listen, cfg } = match config(args) {
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
    let runtime = match crate::runtime::runtime() {
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
        let mut extra = sandcache_runner::ExtraListeners::default();
        if let Some(addr) = &admin_listen {
            match bind_admin(addr).await {
                Ok(l) => extra.admin = Some(l),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        if let Some(addr) = &metrics_listen {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => extra.metrics = Some(l),
                Err(e) => {
                    eprintln!("error: cannot listen on {addr} (--metrics-listen): {e}");
                    return ExitCode::from(2);
                }
            }
        }
        let runner = Runner::new(cfg);
        // Said once: what the worker could still reach.
        for (warn, line) in runner.startup_report() {
            if warn {
                tracing::warn!(target: "sandbox", "{line}");
            } else {
                tracing::info!(target: "sandbox", "{line}");
            }
        }
        // A subreaper (or PID 1) adopts every orphan below it: the exited
        // ones are collected, so none stays a zombie.
        isolation::start_orphan_reaper();
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
        match sandcache_runner::serve_with(listener, extra, runner, shutdown).await {
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
