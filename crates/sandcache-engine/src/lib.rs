//! sandcache's engine: restore a directory from a store, snapshot it back.
//!
//! The cache is advisory, and the types say so: [`Cache::restore`] and
//! [`Cache::snapshot`] never fail their caller. They return an [`Outcome`],
//! either done (files, bytes, time) or skipped with a [`Reason`]: disabled,
//! not found, timed out, store error, corrupt, unsafe, empty, unchanged...
//! A skipped restore means a cold start: slower, never broken.
//!
//! Guarantees:
//! * a restore is bounded by its total deadline, stalls included;
//! * the directory holds its previous content or the complete new content,
//!   never a mix: extraction goes to a staging dir swapped into place;
//! * nothing is written outside the directory, whatever the archive says;
//! * a snapshot of a missing or empty directory uploads nothing, and a
//!   failed one leaves the stored cache as it was.
//!
//! ```no_run
//! # async fn demo() {
//! use std::collections::HashMap;
//! use sandcache_engine::{Cache, CacheConfig, RestoreOptions};
//! let envs: HashMap<String, String> = HashMap::new(); // the deploy body's envs
//! let cache = Cache::open(&CacheConfig::from_envs(&envs), &Default::default());
//! let outcome = cache.restore("/deno-dir".as_ref(), &RestoreOptions::default()).await;
//! println!("{}", outcome.to_json());
//! # }
//! ```

mod background;
mod bad;
mod bookkeeping;
mod config;
mod delete;
mod gc;
mod layout;
mod lockkey;
mod native;
mod options;
mod outcome;
mod pipe;
mod restore;
mod snapshot;
mod target;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sandcache_store::{Store, StoreOptions};

pub use background::wait_for_background;
pub use config::{CacheConfig, seed_env};
pub use delete::DeleteReport;
pub use gc::{DEFAULT_VERIFY_BYTES, DEFAULT_VERIFY_RATE, GcOptions, GcReport, gc_store};
pub use layout::{validate_fallback, validate_key};
pub use lockkey::{LOCK_KEY_FILES, LockKey, LockKeyError, lock_key};
pub use options::{Format, RestoreOptions, SnapshotOptions};
pub use outcome::{Done, Op, Outcome, Reason, Skip};
pub use restore::RestoreHandle;
pub use sandcache_archive::{Limits, Progress};

/// A cache: a store and the key of one directory's cache in it.
#[derive(Debug, Clone)]
pub struct Cache {
    inner: Inner,
}

#[derive(Debug, Clone)]
enum Inner {
    Disabled,
    /// Configured, but unusable: every operation skips with this.
    Invalid(Skip),
    Enabled {
        store: Arc<dyn Store>,
        key: String,
    },
}

impl Cache {
    /// A cache that does nothing: every operation skips as `disabled`.
    pub fn disabled() -> Cache {
        Cache { inner: Inner::Disabled }
    }

    /// A cache over an open store. An invalid key makes every operation skip
    /// with reason `config`.
    pub fn new(store: Arc<dyn Store>, key: impl Into<String>) -> Cache {
        let key = key.into();
        match validate_key(&key) {
            Ok(()) => Cache { inner: Inner::Enabled { store, key } },
            Err(why) => Cache { inner: Inner::Invalid(Skip::new(Reason::Config, why)) },
        }
    }

    /// Opens the store a config names. Never fails: a disabled config gives
    /// a disabled cache, an unusable one a cache that skips with `config`.
    pub fn open(config: &CacheConfig, opts: &StoreOptions) -> Cache {
        let Some(spec) = &config.store else {
            return Cache::disabled();
        };
        let Some(key) = &config.key else {
            let why = format!("no cache key for {spec} (set {})", seed_env::KEY);
            return Cache { inner: Inner::Invalid(Skip::new(Reason::Config, why)) };
        };
        match std::panic::catch_unwind(|| sandcache_store::open(spec, opts)) {
            Ok(Ok(store)) => Cache::new(store, key.clone()),
            Ok(Err(e)) => Cache { inner: Inner::Invalid(Skip::new(Reason::Config, error_chain(&e))) },
            Err(payload) => Cache { inner: Inner::Invalid(Skip::panicked("opening the store", payload.as_ref())) },
        }
    }

    /// Why this cache cannot be used, when it was configured but its
    /// configuration is unusable (every operation would skip with this).
    pub fn unusable(&self) -> Option<&Skip> {
        match &self.inner {
            Inner::Invalid(skip) => Some(skip),
            _ => None,
        }
    }

    pub fn is_enabled(&self) -> bool {
        !matches!(self.inner, Inner::Disabled)
    }

    /// Where the cache lives, for logs: `s3://bucket/prefix/key`.
    pub fn location(&self) -> String {
        match &self.inner {
            Inner::Enabled { store, key } => format!("{store}/{key}"),
            _ => String::new(),
        }
    }

    /// The key and the store's location, for reports (empty when unusable).
    pub fn labels(&self) -> (String, String) {
        match &self.inner {
            Inner::Enabled { store, key } => (key.clone(), store.to_string()),
            _ => (String::new(), String::new()),
        }
    }

    /// The one boundary where an operation becomes an outcome: disabled and
    /// unusable caches skip without a call, and `run` is bounded by the total
    /// deadline (dropped when it passes, which cancels its blocking work).
    async fn bounded<'a, Fut>(
        &'a self,
        op: Op,
        timeout: Duration,
        run: impl FnOnce(&'a Arc<dyn Store>, &'a str, Instant) -> Fut,
    ) -> Outcome
    where
        Fut: Future<Output = Result<Done, Skip>> + 'a,
    {
        let start = Instant::now();
        let (key, store) = self.labels();
        let result = match &self.inner {
            Inner::Disabled => Err(Skip::new(Reason::Disabled, "no cache store configured")),
            Inner::Invalid(skip) => Err(skip.clone()),
            Inner::Enabled { store, key } => {
                // A panic anywhere inside (the S3 client, extraction, our
                // own code) ends here as a skip, never as a failed caller.
                let guarded = std::panic::AssertUnwindSafe(run(store, key, start + timeout));
                match tokio::time::timeout(timeout, futures::FutureExt::catch_unwind(guarded)).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(payload)) => Err(Skip::panicked(op.as_str(), payload.as_ref())),
                    Err(_) => Err(Skip::new(
                        Reason::TimedOut,
                        format!("{} did not finish within its {} s deadline", op.as_str(), timeout.as_secs_f32()),
                    )),
                }
            }
        };
        Outcome { op, result, elapsed: start.elapsed(), key, store, from_key: None, hot: None }
    }
}

/// Empties `dir` between two sites, so nothing of one reaches the next: its
/// content is moved aside at once (renamed, or entry by entry when `dir` is
/// a mount point) and removed in the background, and the state and index
/// recorded for it are dropped. Afterwards `dir` exists and is empty. Takes
/// the dir's lock, waiting up to `timeout`.
pub async fn clear_dir(
    dir: &std::path::Path,
    state_dir: Option<&std::path::Path>,
    timeout: Duration,
) -> std::io::Result<()> {
    let target = target::Target::resolve_for_restore(dir)?.with_state_dir(state_dir);
    if std::fs::symlink_metadata(&target.dir).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(std::io::Error::other(format!("{} is a symlink; it is never followed", target.dir.display())));
    }
    let _lock = target.lock(Instant::now() + timeout).await?;
    let mut trash = target.leftovers();
    trash.extend(target.clear()?);
    target.forget();
    background::remove_in_background(trash);
    Ok(())
}

/// An error and its sources, `: `-joined, for one-line reasons.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

pub(crate) fn mb(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1e6)
}
