//! `sandcache`: restore and snapshot a dependency directory.
//!
//! Exit codes: 0 when the operation completed or was skipped (the cache is
//! advisory), 1 when skipped under `--strict`, 2 for usage and configuration
//! errors.

mod admin_token;
mod env_vars;
mod progress;
mod runtime;
mod serve;
mod settings;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use sandcache_engine::{Cache, Outcome, Progress, Reason, RestoreOptions, SnapshotOptions};
use sandcache_store::StoreOptions;
use tracing_subscriber::EnvFilter;

use crate::runtime::runtime;
use crate::settings::{FormatArg, LimitArgs, StoreArgs, parse_fallback};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(name = "sandcache", version, about = "Warm-start cache for ephemeral sandboxes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format.
    #[arg(long, global = true, env = env_vars::SANDCACHE_LOG_FORMAT, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Restore a directory from the cache (atomic, bounded, advisory).
    Restore {
        #[command(flatten)]
        common: Common,
        /// Hard total deadline in seconds.
        #[arg(long, env = env_vars::SANDCACHE_TIMEOUT, default_value = "30", value_name = "SECS")]
        timeout: f64,
        /// Pack downloads in flight (native format).
        #[arg(long, default_value = "8", value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
        concurrency: u16,
        #[command(flatten)]
        limits: LimitArgs,
        /// Give everything restored to USER, UID or UID:GID (as root): how a
        /// runner hands DENO_DIR to its worker.
        #[arg(long, value_name = "USER", value_parser = parse_owner)]
        owner: Option<(u32, u32)>,
        /// When KEY has nothing usable, try F: a key, or a prefix ending in
        /// `/` (the newest generation of any key under it). Repeatable; the
        /// first usable generation wins. Fallbacks are only read.
        #[arg(long = "fallback", value_name = "F", env = env_vars::DECO_CACHE_S3_FALLBACK_KEYS, value_delimiter = ',')]
        #[arg(value_parser = parse_fallback)]
        fallbacks: Vec<String>,
        /// Two phases: the hot files (those the app read after the last
        /// restore), every directory and symlink first, swapped in at once
        /// (logged as hot-ready; `hot_ms` in --json); then the rest, each
        /// file whole or not at all. A generation without a hot set
        /// restores in one phase.
        #[arg(long)]
        hot_first: bool,
    },
    /// Upload a directory to the cache (streamed, bounded memory).
    Snapshot {
        #[command(flatten)]
        common: Common,
        /// Archive format: native (zstd, fast) or tgz (the seed's layout).
        #[arg(long, value_enum, default_value = "native")]
        format: FormatArg,
        /// Deadline in seconds.
        #[arg(long, default_value = "600", value_name = "SECS")]
        timeout: f64,
        /// Upload even if nothing changed since the last restore or snapshot.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Run the sandbox runner daemon (the seed's deploy API).
    Serve(Box<serve::ServeArgs>),
    /// Print a short-lived admin token for one pod (or that pod's key),
    /// made from the platform's master key.
    AdminToken(admin_token::AdminTokenArgs),
    /// Delete old generations (of one key with --key, else of every key)
    /// and, store-wide, the shared packs nothing kept needs.
    Gc {
        #[command(flatten)]
        store: StoreArgs,
        /// Newest generations to keep.
        #[arg(long, default_value = "3", value_name = "N")]
        keep: usize,
        /// Nothing younger than this many seconds is deleted (in-flight
        /// snapshots upload their packs before their manifest).
        #[arg(long, default_value = "3600", value_name = "SECS")]
        grace: u64,
        /// Store-wide: the fraction of kept pool objects read whole and
        /// checked against their names each run, at random (0.1: a bad
        /// object nobody reported is found in 10 daily runs, expected).
        /// Marked objects and objects of the wrong length are always read.
        #[arg(long, default_value_t = sandcache_engine::DEFAULT_VERIFY_RATE, value_name = "FRACTION", value_parser = parse_rate)]
        verify_rate: f64,
        /// Store-wide: most bytes read to verify pool objects in one run.
        #[arg(long, default_value_t = sandcache_engine::DEFAULT_VERIFY_BYTES, value_name = "BYTES")]
        verify_bytes: u64,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Delete everything stored for a key (when its site is deleted): the
    /// next restore is a miss. Content shared with other keys is left to gc.
    Delete {
        #[command(flatten)]
        store: StoreArgs,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Print a cache key derived from a repo's dependency files (deno.json,
    /// package.json, their lockfiles): it changes when the dependencies do,
    /// and only then.
    Key {
        /// The repo; the dependency files are looked for at its top level.
        #[arg(long, value_name = "DIR")]
        repo: PathBuf,
        /// Put the key under P: `P/lock-<hash>`.
        #[arg(long, value_name = "P")]
        prefix: Option<String>,
        /// Print `{"key", "files", "hash"}` as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
struct Common {
    /// The directory to restore into or snapshot from.
    #[arg(long, env = env_vars::DENO_DIR, default_value = "/deno-dir", value_name = "DIR")]
    dir: PathBuf,
    #[command(flatten)]
    store: StoreArgs,
    /// Print one JSON object with the outcome on stdout.
    #[arg(long)]
    json: bool,
    /// Exit 1 when the operation was skipped (miss, failure, empty...).
    #[arg(long)]
    strict: bool,
    /// Only warnings and errors on stderr; no progress bar.
    #[arg(long, short)]
    quiet: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let common = match &cli.command {
        Command::Restore { common, .. } | Command::Snapshot { common, .. } => common,
        Command::Serve(args) => {
            init_logging(cli.log_format, false);
            return serve::run(args);
        }
        Command::Gc { store, keep, grace, verify_rate, verify_bytes, json } => {
            init_logging(cli.log_format, false);
            let opts = sandcache_engine::GcOptions {
                keep: *keep,
                grace: Duration::from_secs(*grace),
                verify_rate: *verify_rate,
                verify_bytes: *verify_bytes,
            };
            return gc(store, opts, *json);
        }
        Command::Delete { store, json } => {
            init_logging(cli.log_format, false);
            return delete(store, *json);
        }
        Command::Key { repo, prefix, json } => return key(repo, prefix.as_deref(), *json),
        Command::AdminToken(args) => return admin_token::run(args),
    };
    init_logging(cli.log_format, common.quiet);
    let op = if matches!(cli.command, Command::Restore { .. }) { "restore" } else { "snapshot" };
    let cache = match open_cache(&common.store) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            if common.json {
                // Scripts reading stdout get an answer too; the exit code says usage.
                let key = common.store.key.clone().unwrap_or_default();
                let v = serde_json::json!({"ok": false, "op": op, "reason": "config", "detail": format!("{e:#}"), "key": key});
                println!("{v}");
            }
            return ExitCode::from(2);
        }
    };
    let timeout = match &cli.command {
        Command::Restore { timeout, .. } | Command::Snapshot { timeout, .. } => *timeout,
        Command::Serve(_)
        | Command::Gc { .. }
        | Command::Delete { .. }
        | Command::Key { .. }
        | Command::AdminToken(_) => {
            unreachable!("handled above")
        }
    };
    let Some(timeout) = Duration::try_from_secs_f64(timeout).ok().filter(|t| !t.is_zero()) else {
        eprintln!("error: --timeout must be a positive number of seconds");
        return ExitCode::from(2);
    };
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let progress = Arc::new(Progress::default());
    let show_bar = !common.json && !common.quiet;
    let outcome = runtime.block_on(async {
        match &cli.command {
            Command::Restore { common, concurrency, limits, owner, fallbacks, hot_first, .. } => {
                // What it creates gets its final mode at once (no chmod per
                // file); everything else it creates names its mode.
                rustix::process::umask(rustix::fs::Mode::empty());
                let _bar = progress::Bar::start("restore", &progress, show_bar);
                let opts = RestoreOptions {
                    timeout,
                    limits: limits.limits(),
                    concurrency: usize::from(*concurrency),
                    progress: Some(progress.clone()),
                    owner: *owner,
                    fallbacks: fallbacks.clone(),
                    hot_first: *hot_first,
                    ..Default::default()
                };
                let outcome = if *hot_first {
                    let mut handle = cache.restore_handle(&common.dir, &opts);
                    if let Some(at) = handle.hot_ready().await {
                        let hot_ms = at.as_millis() as u64;
                        tracing::info!(target: "sandbox-cache", hot_ms, "hot-ready: {} holds the hot set after {hot_ms}ms", common.dir.display());
                    }
                    handle.finish().await
                } else {
                    cache.restore(&common.dir, &opts).await
                };
                if outcome.reason() == Some(Reason::TooLarge) {
                    tracing::warn!(
                        target: "sandbox-cache",
                        "if this cache is expected to be that large, raise --max-bytes / --max-files ({} / {})",
                        env_vars::SANDCACHE_MAX_BYTES,
                        env_vars::SANDCACHE_MAX_FILES
                    );
                }
                outcome
            }
            Command::Snapshot { common, format, force, limits, .. } => {
                let _bar = progress::Bar::start("snapshot", &progress, show_bar);
                let opts = SnapshotOptions {
                    format: (*format).into(),
                    timeout,
                    force: *force,
                    limits: limits.limits(),
                    progress: Some(progress.clone()),
                    ..Default::default()
                };
                let outcome = cache.snapshot(&common.dir, &opts).await;
                if outcome.reason() == Some(Reason::TooLarge) {
                    tracing::warn!(
                        target: "sandbox-cache",
                        "if this cache is expected to be that large, raise --max-bytes / --max-files ({} / {}); \
                         a restore needs the same",
                        env_vars::SANDCACHE_MAX_BYTES,
                        env_vars::SANDCACHE_MAX_FILES
                    );
                }
                outcome
            }
            Command::Serve(_)
        | Command::Gc { .. }
        | Command::Delete { .. }
        | Command::Key { .. }
        | Command::AdminToken(_) => {
                unreachable!("handled above")
            }
        }
    });
    report(&outcome, common.json);
    // The old tree is removed after the swap, off the critical path; a CLI
    // waits for that before exiting so nothing is left behind.
    if !sandcache_engine::wait_for_background(Duration::from_secs(120)) {
        tracing::warn!("background cleanup still running at exit; the next run finishes it");
    }
    let code = if common.strict && !outcome.is_done() { 1 } else { 0 };
    // Everything is done and written: the runtime's threads are not torn
    // down one by one (each hands its allocator cache back, page by page:
    // ~10% of a small restore's CPU, after its work is over).
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::process::exit(code)
}

/// `sandcache gc`: an administrative command, so failures exit 1.
fn gc(store: &StoreArgs, opts: sandcache_engine::GcOptions, json: bool) -> ExitCode {
    if opts.keep == 0 {
        eprintln!("error: --keep must be at least 1: gc never deletes the newest generation");
        return ExitCode::from(2);
    }
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    // With a key, that key's old generations; without, the whole store,
    // shared pool included.
    let (target, result) = if store.key.as_deref().is_some_and(|k| !k.trim().is_empty()) {
        let cache = match open_cache(store) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(2);
            }
        };
        (cache.location(), runtime.block_on(cache.gc(&opts)))
    } else {
        let opened = store.store_spec().and_then(|spec| {
            let spec = spec.ok_or_else(|| anyhow::anyhow!("the store is `off`: nothing to collect (pass --store)"))?;
            Ok(sandcache_store::open(&spec, &StoreOptions::default())?)
        });
        let store = match opened {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(2);
            }
        };
        (store.to_string(), runtime.block_on(sandcache_engine::gc_store(store.as_ref(), &opts)))
    };
    match result {
        Ok(report) => {
            if json {
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: gc of {target} failed: {}", sandcache_engine::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// `sandcache delete`: administrative, so failures exit 1; a key that holds
/// nothing is not one.
fn delete(store: &StoreArgs, json: bool) -> ExitCode {
    let cache = match open_cache(store) {
        Ok(c) if !c.is_enabled() => {
            eprintln!("error: the store is `off`: nothing to delete from (pass --store)");
            return ExitCode::from(2);
        }
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            if json {
                println!("{}", serde_json::json!({"ok": false, "op": "delete", "error": format!("{e:#}")}));
            }
            return ExitCode::from(2);
        }
    };
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let (key, store) = cache.labels();
    match runtime.block_on(cache.delete()) {
        Ok(report) => {
            if json {
                let mut v = serde_json::to_value(&report).unwrap_or_default();
                v["ok"] = true.into();
                v["op"] = "delete".into();
                v["key"] = key.into();
                v["store"] = store.into();
                println!("{v}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let e = sandcache_engine::error_chain(&e);
            if json {
                let v = serde_json::json!({"ok": false, "op": "delete", "key": key, "store": store, "error": e});
                println!("{v}");
            }
            eprintln!("error: delete of {} failed: {e}", cache.location());
            ExitCode::FAILURE
        }
    }
}

/// `sandcache key`: the lockfile key of a repo. Any file it cannot read or
/// parse is a usage error (2) naming it: a key from part of the files would
/// be wrong, and a caller falls back to another key.
fn key(repo: &Path, prefix: Option<&str>, json: bool) -> ExitCode {
    match sandcache_engine::lock_key(repo, prefix) {
        Ok(k) => {
            if json {
                println!("{}", serde_json::json!({"key": k.key, "files": k.files, "hash": k.hash}));
            } else {
                println!("{}", k.key);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let flag = if matches!(e, sandcache_engine::LockKeyError::InvalidPrefix(_)) { "--prefix: " } else { "" };
            let msg = format!("{flag}{}", sandcache_engine::error_chain(&e));
            eprintln!("error: {msg}");
            if json {
                println!("{}", serde_json::json!({"error": msg}));
            }
            ExitCode::from(2)
        }
    }
}

/// The cache the store flags name, checked the way its first request
/// would check it (bucket, region, endpoint, key, credentials from the
/// environment), so that bad configuration is a usage error naming the flag
/// or variable, not a skip.
fn open_cache(store: &StoreArgs) -> anyhow::Result<Cache> {
    let config = store.config()?;
    let cache = Cache::open(&config, &StoreOptions::default());
    match cache.unusable() {
        Some(skip) => anyhow::bail!("{}", skip.detail),
        None => Ok(cache),
    }
}

fn report(outcome: &Outcome, json: bool) {
    if json {
        println!("{}", outcome.to_json());
    }
}

fn init_logging(format: LogFormat, quiet: bool) {
    let default = if quiet { "warn" } else { "info" };
    let filter = std::env::var(env_vars::SANDCACHE_LOG)
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(|| progress::LogWriter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `--verify-rate`: a fraction from 0 to 1.
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("`{s}` is not a fraction from 0 to 1 (0.1 reads a tenth of the pool each run)")),
    }
}

fn parse_owner(spec: &str) -> Result<(u32, u32), String> {
    sandcache_runner::isolation::WorkerUser::parse(spec).map(|u| (u.uid, u.gid))
}
