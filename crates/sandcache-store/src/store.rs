//! The interface the engine needs from an object store, and the objects
//! it hands back.

use std::fmt;
use std::ops::Range;
use std::time::SystemTime;

use bytes::Bytes;
use futures::stream::BoxStream;

use crate::error::StoreError;

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
