//! Object stores for sandcache.
//!
//! [`Store`] is the small interface the engine needs: streamed reads (whole or
//! ranged), streamed atomic writes, head, list and delete. Two backends
//! implement it: [`S3Store`] (any S3-compatible server, through `object_store`)
//! and [`LocalStore`] (a directory, the embedded default).
//!
//! A write is atomic for readers: until it completes, a reader sees the old
//! object or none, never a partial one (S3 multipart completion, or a rename
//! on the local filesystem).
//!
//! ```no_run
//! # async fn demo() -> Result<(), sandcache_store::StoreError> {
//! use sandcache_store::{open, StoreSpec, StoreOptions};
//! let spec: StoreSpec = "s3://my-bucket/caches".parse()?;
//! let store = open(&spec, &StoreOptions::default())?;
//! let object = store.get("site/cache.tgz").await?;
//! println!("{} bytes", object.size);
//! # Ok(()) }
//! ```

mod error;
mod local;
mod profile;
mod recycle;
mod s3;
mod spec;

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::stream::BoxStream;

pub use error::StoreError;
pub use local::LocalStore;
pub use recycle::Recycler;
pub use s3::S3Store;
pub use spec::{S3Spec, StaticCredentials, StoreSpec};

/// A stream of object bytes.
pub type ByteStream = BoxStream<'static, Result<Bytes, StoreError>>;

/// A body to write: the upload is aborted if it yields an error.
pub type BodyStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// An object being read.
pub struct GetObject {
    /// Total size of the object (not of the range).
    pub size: u64,
    pub stream: ByteStream,
}

impl GetObject {
    /// The whole body (or range), read into memory: for small objects such
    /// as manifests, and for tests (object_store's `GetResult::bytes`).
    pub async fn bytes(self) -> Result<Vec<u8>, StoreError> {
        let parts: Vec<Bytes> = futures::TryStreamExt::try_collect(self.stream).await?;
        Ok(parts.concat())
    }
}

impl fmt::Debug for GetObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetObject").field("size", &self.size).finish_non_exhaustive()
    }
}

/// What a store knows about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub last_modified: SystemTime,
}

/// The operations sandcache needs from an object store. Keys are
/// `/`-separated relative names (`site/cache.tgz`); a store may place them
/// under its own prefix.
#[async_trait::async_trait]
pub trait Store: fmt::Debug + fmt::Display + Send + Sync {
    /// Reads a whole object. A missing key is [`StoreError::NotFound`].
    async fn get(&self, key: &str) -> Result<GetObject, StoreError>;
    /// Reads a byte range of an object.
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<GetObject, StoreError>;
    /// Writes an object from a stream, atomically; returns the bytes written.
    async fn put(&self, key: &str, body: BodyStream) -> Result<u64, StoreError>;
    /// Size and age of an object, or `None` when it does not exist.
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError>;
    /// Every object whose key starts with `prefix`.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError>;
    /// At most `max` objects whose key starts with `prefix`: the first in
    /// the server's (lexical) order, sorted. A bounded listing, for a
    /// prefix anyone may fill (S3 lists 1,000 keys a page: no more pages
    /// than `max` needs are requested).
    async fn list_first(&self, prefix: &str, max: usize) -> Result<Vec<ObjectInfo>, StoreError> {
        let mut all = self.list(prefix).await?;
        all.truncate(max);
        Ok(all)
    }
    /// Deletes an object; deleting a missing one is not an error.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Writes a whole object only if none exists under the key; `Ok(false)`
    /// when one did and nothing was written. For content-addressed objects
    /// that must never be overwritten. Where the server does not enforce
    /// conditional writes (Garage ignores `If-None-Match`), a racing writer
    /// may still overwrite: callers must not depend on it for correctness.
    /// Always one request, never a multipart upload (whose parts cannot
    /// carry the condition): the sandbox policy requires `If-None-Match`
    /// for every write to the pool.
    async fn put_new(&self, key: &str, bytes: Bytes) -> Result<bool, StoreError> {
        if self.head(key).await?.is_some() {
            return Ok(false);
        }
        self.put(key, Box::pin(futures::stream::once(async move { Ok(bytes) }))).await?;
        Ok(true)
    }
}

/// Timeouts and retries for network stores. They nest inside the engine's
/// total deadline, which always wins.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Establishing a connection.
    pub connect_timeout: Duration,
    /// A response body that sends nothing for this long has stalled.
    pub idle_timeout: Duration,
    /// One whole request, body included (object_store's default is 30 s,
    /// too short for large objects on slow links).
    pub request_timeout: Duration,
    /// Retries of a failed request (with backoff), within `retry_timeout`.
    pub max_retries: usize,
    pub retry_timeout: Duration,
    /// Bytes per multipart part on upload.
    pub part_size: usize,
    /// Parts uploaded at once.
    pub upload_concurrency: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(600),
            max_retries: 3,
            retry_timeout: Duration::from_secs(20),
            part_size: 8 << 20,
            upload_concurrency: 4,
        }
    }
}

/// Opens the store a spec names. No request is made yet.
pub fn open(spec: &StoreSpec, opts: &StoreOptions) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match spec {
        StoreSpec::Local(path) => Arc::new(LocalStore::new(path.clone())),
        StoreSpec::S3(s3) => Arc::new(S3Store::new(s3, opts)?),
    })
}

/// Checks a key: relative, `/`-separated, no empty, `.` or `..` segments.
pub fn check_key(key: &str) -> Result<(), StoreError> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key.split('/').any(|s| s.is_empty() || s == "." || s == "..")
        || key.contains('\0');
    if bad {
        return Err(StoreError::InvalidKey { key: key.to_owned() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        assert!(check_key("site/cache.tgz").is_ok());
        for bad in ["", "/abs", "a//b", "../x", "a/./b", "a/"] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
    }
}
