//! A store that passes every call to another, with hooks for tests: lost
//! objects, slow ranged reads, panics, and counts of what was asked
//! (object_store's `ThrottledStore`, for sandcache's [`Store`]).
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use std::time::Duration;
//! # use sandcache_store::{LocalStore, Store};
//! # use sandcache_testkit::store::{Method, Wrapped};
//! let inner: Arc<dyn Store> = Arc::new(LocalStore::new("/tmp/store"));
//! let store = Arc::new(Wrapped::new(inner).gone(["site/a.tree".to_owned()]).delay_ranged(Duration::from_secs(60)));
//! // ... a restore through `store` ...
//! assert_eq!(store.calls(Method::Get), 1);
//! ```

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use sandcache_store::{BodyStream, GetObject, ObjectInfo, Store, StoreError};

/// The [`Store`] methods, for [`Wrapped::panic_on`] and [`Wrapped::calls`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    GetRange,
    Put,
    PutNew,
    Head,
    List,
    ListFirst,
    Delete,
}

const METHODS: usize = 8;

/// A whole-object GET of a key that answers `true` is `NotFound`.
type Gone = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// Passes every call to `inner`, except where a hook says otherwise. With
/// no hook it is the inner store, counted; its name is the inner store's.
pub struct Wrapped {
    inner: Arc<dyn Store>,
    name: Option<String>,
    gone: Vec<Gone>,
    ranged_delay: Duration,
    pack_delay: Duration,
    panics: Vec<(Method, &'static str)>,
    body_panic: Option<&'static str>,
    calls: [AtomicU64; METHODS],
    /// Every call, in order: its method and key (or prefix).
    log: std::sync::Mutex<Vec<(Method, String)>>,
    ranged_bytes: AtomicU64,
    delayed: AtomicU64,
}

impl Wrapped {
    pub fn new(inner: Arc<dyn Store>) -> Wrapped {
        Wrapped {
            inner,
            name: None,
            gone: Vec::new(),
            ranged_delay: Duration::ZERO,
            pack_delay: Duration::ZERO,
            panics: Vec::new(),
            body_panic: None,
            calls: Default::default(),
            log: Default::default(),
            ranged_bytes: AtomicU64::new(0),
            delayed: AtomicU64::new(0),
        }
    }

    /// Shown as `name` (`Display`) instead of the inner store's name.
    pub fn named(mut self, name: &str) -> Wrapped {
        self.name = Some(name.to_owned());
        self
    }

    /// Objects the store has lost: a whole-object GET of one is `NotFound`
    /// (ranged GETs, HEAD and listings still see them).
    pub fn gone(self, keys: impl IntoIterator<Item = String>) -> Wrapped {
        let keys: Vec<String> = keys.into_iter().collect();
        self.gone_if(move |key| keys.iter().any(|g| g == key))
    }

    /// As [`Wrapped::gone`], for every key that answers `true`.
    pub fn gone_if(mut self, gone: impl Fn(&str) -> bool + Send + Sync + 'static) -> Wrapped {
        self.gone.push(Box::new(gone));
        self
    }

    /// Every ranged GET waits `delay` before it is passed on (zero: none).
    pub fn delay_ranged(mut self, delay: Duration) -> Wrapped {
        self.ranged_delay = delay;
        self
    }

    /// Every GET of a pack, whole or ranged, waits `delay` before it is
    /// passed on: content that comes slower than a deadline, however a
    /// restore asks for it.
    pub fn delay_packs(mut self, delay: Duration) -> Wrapped {
        self.pack_delay = delay;
        self
    }

    /// A call of `method` panics with `message`, before reaching the inner
    /// store: a bug in the store's client.
    pub fn panic_on(mut self, method: Method, message: &'static str) -> Wrapped {
        self.panics.push((method, message));
        self
    }

    /// A whole-object GET answers as the inner store does, but its body
    /// panics with `message` when first polled: a bug in body decoding.
    pub fn panic_in_body(mut self, message: &'static str) -> Wrapped {
        self.body_panic = Some(message);
        self
    }

    /// How many calls of `method` reached this store.
    pub fn calls(&self, method: Method) -> u64 {
        self.calls[method as usize].load(Ordering::SeqCst)
    }

    /// Every call that reached this store, in order: its method and the key
    /// (or a listing's prefix).
    pub fn log(&self) -> Vec<(Method, String)> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The bytes asked for by ranged GETs.
    pub fn ranged_bytes(&self) -> u64 {
        self.ranged_bytes.load(Ordering::SeqCst)
    }

    /// How many ranged GETs waited (see [`Wrapped::delay_ranged`]).
    pub fn delayed(&self) -> u64 {
        self.delayed.load(Ordering::SeqCst)
    }

    fn called(&self, method: Method, key: &str) {
        self.calls[method as usize].fetch_add(1, Ordering::SeqCst);
        self.log.lock().unwrap_or_else(|p| p.into_inner()).push((method, key.to_owned()));
        if let Some((_, message)) = self.panics.iter().find(|(m, _)| *m == method) {
            panic!("{message}");
        }
    }
}

impl fmt::Debug for Wrapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wrapped").field("inner", &self.inner).field("name", &self.name).finish_non_exhaustive()
    }
}

impl fmt::Display for Wrapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => f.write_str(name),
            None => self.inner.fmt(f),
        }
    }
}

#[async_trait::async_trait]
impl Store for Wrapped {
    async fn get(&self, key: &str) -> Result<GetObject, StoreError> {
        self.called(Method::Get, key);
        if self.gone.iter().any(|gone| gone(key)) {
            return Err(StoreError::NotFound { key: key.into() });
        }
        if key.ends_with(".pack") && !self.pack_delay.is_zero() {
            tokio::time::sleep(self.pack_delay).await;
        }
        let mut obj = self.inner.get(key).await?;
        if let Some(message) = self.body_panic {
            obj.stream =
                Box::pin(futures::stream::poll_fn(move |_| -> std::task::Poll<Option<_>> { panic!("{message}") }));
        }
        Ok(obj)
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<GetObject, StoreError> {
        self.called(Method::GetRange, key);
        self.ranged_bytes.fetch_add(range.end - range.start, Ordering::SeqCst);
        if !self.ranged_delay.is_zero() {
            self.delayed.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.ranged_delay).await;
        }
        if key.ends_with(".pack") && !self.pack_delay.is_zero() {
            tokio::time::sleep(self.pack_delay).await;
        }
        self.inner.get_range(key, range).await
    }
    async fn put(&self, key: &str, body: BodyStream) -> Result<u64, StoreError> {
        self.called(Method::Put, key);
        self.inner.put(key, body).await
    }
    async fn put_new(&self, key: &str, bytes: Bytes) -> Result<bool, StoreError> {
        self.called(Method::PutNew, key);
        self.inner.put_new(key, bytes).await
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        self.called(Method::Head, key);
        self.inner.head(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.called(Method::List, prefix);
        self.inner.list(prefix).await
    }
    async fn list_first(&self, prefix: &str, max: usize) -> Result<Vec<ObjectInfo>, StoreError> {
        self.called(Method::ListFirst, prefix);
        self.inner.list_first(prefix, max).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.called(Method::Delete, key);
        self.inner.delete(key).await
    }
}
