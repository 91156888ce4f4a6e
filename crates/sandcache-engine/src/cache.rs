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

    /// The store, when this cache has one to use.
    fn store(&self) -> Option<&Arc<dyn Store>> {
        match &self.inner {
            Inner::Enabled { store, .. } => Some(store),
            _ => None,
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

/// Stores opened once per spec, with one set of options, and shared by the
/// caches made from them. A daemon's restores and snapshots then reuse the
/// store's connections (a TCP and TLS handshake each) and credentials (a
/// token fetched from Pod Identity or IRSA, refreshed by the client),
/// where [`Cache::open`] starts afresh each time. A few specs at most (a
/// runner's own, and those of deploy bodies): the oldest goes first.
#[derive(Debug)]
pub struct Stores {
    opts: StoreOptions,
    opened: std::sync::Mutex<Vec<(sandcache_store::StoreSpec, Arc<dyn Store>)>>,
}

/// Most stores a [`Stores`] keeps open.
const STORES_KEPT: usize = 4;

impl Stores {
    pub fn new(opts: StoreOptions) -> Stores {
        Stores { opts, opened: Default::default() }
    }

    /// The cache a config names, as [`Cache::open`] makes it, over the store
    /// opened for the same spec before, if any.
    pub fn cache(&self, config: &CacheConfig) -> Cache {
        let (Some(spec), Some(key)) = (&config.store, &config.key) else {
            return Cache::open(config, &self.opts);
        };
        let mut opened = self.opened.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, store)) = opened.iter().find(|(s, _)| s == spec) {
            return Cache::new(store.clone(), key.clone());
        }
        let cache = Cache::open(config, &self.opts);
        if let Some(store) = cache.store() {
            if opened.len() >= STORES_KEPT {
                opened.remove(0);
            }
            opened.push((spec.clone(), store.clone()));
        }
        cache
    }
}

#[cfg(test)]
mod tests {
    use sandcache_store::StoreSpec;

    use super::*;

    #[test]
    fn stores_open_each_spec_once() {
        let stores = Stores::new(StoreOptions::default());
        let config = |store: &str, key: &str| CacheConfig {
            store: Some(StoreSpec::Local(std::path::PathBuf::from(store))),
            key: Some(key.to_owned()),
        };
        let a = stores.cache(&config("/nonexistent/a", "site/one"));
        let b = stores.cache(&config("/nonexistent/a", "site/two"));
        let c = stores.cache(&config("/nonexistent/c", "site/one"));
        assert!(Arc::ptr_eq(a.store().unwrap(), b.store().unwrap()), "one spec, one store");
        assert!(!Arc::ptr_eq(a.store().unwrap(), c.store().unwrap()));
        // Keys are checked per cache, as Cache::open checks them.
        assert!(stores.cache(&config("/nonexistent/a", "../bad")).unusable().is_some());
        assert!(stores.cache(&CacheConfig { store: None, key: None }).store().is_none());
        // A few specs at most.
        for i in 0..10 {
            stores.cache(&config(&format!("/nonexistent/{i}"), "k"));
        }
        assert_eq!(stores.opened.lock().unwrap().len(), STORES_KEPT);
    }
}
