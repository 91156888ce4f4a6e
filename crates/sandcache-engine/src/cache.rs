//! The cache: a store and a key, or the reason there is none; and the one
//! boundary where an operation becomes an [`Outcome`].

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sandcache_store::{Store, StoreOptions};

use crate::config::{CacheConfig, seed_env};
use crate::error::{Error, error_chain};
use crate::layout::validate_key;
use crate::outcome::{Done, Op, Outcome, Reason, Skip};

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

    /// The store and key of an enabled cache, for the administrative
    /// commands: an error when it is disabled or unusable.
    pub(crate) fn enabled(&self) -> Result<(&dyn Store, &str), Error> {
        match &self.inner {
            Inner::Enabled { store, key } => Ok((store.as_ref(), key.as_str())),
            Inner::Disabled => Err(Error::Disabled),
            Inner::Invalid(skip) => Err(Error::Unusable(skip.clone())),
        }
    }

    /// The one boundary where an operation becomes an outcome, and its
    /// error a reason: disabled and unusable caches skip without a call,
    /// and `run` is bounded by the total deadline (dropped when it passes,
    /// which cancels its blocking work).
    pub(crate) async fn bounded<'a, Fut>(
        &'a self,
        op: Op,
        timeout: Duration,
        run: impl FnOnce(&'a Arc<dyn Store>, &'a str, Instant) -> Fut,
    ) -> Outcome
    where
        Fut: Future<Output = Result<Done, Error>> + 'a,
    {
        let start = Instant::now();
        let (key, store) = self.labels();
        let result = match &self.inner {
            Inner::Disabled => Err(Error::Disabled.into_skip()),
            Inner::Invalid(skip) => Err(skip.clone()),
            Inner::Enabled { store, key } => {
                // A panic anywhere inside (the S3 client, extraction, our
                // own code) ends here as a skip, never as a failed caller.
                let guarded = std::panic::AssertUnwindSafe(run(store, key, start + timeout));
                match tokio::time::timeout(timeout, futures::FutureExt::catch_unwind(guarded)).await {
                    // The one place an error becomes a reason.
                    Ok(Ok(r)) => r.map_err(Error::into_skip),
                    Ok(Err(payload)) => Err(Skip::panicked(op.as_str(), payload.as_ref())),
                    Err(_) => Err(Skip::new(
                        Reason::TimedOut,
                        format!("{} did not finish within its {} s deadline", op.as_str(), timeout.as_secs_f32()),
                    )),
                }
            }
        };
        Outcome { op, result, elapsed: start.elapsed(), key, store, from_key: None, generation: None, hot: None }
    }
}
