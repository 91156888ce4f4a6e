//! What the engine's tests share: the stores they run on, whole-object
//! reads and writes, waiting for background work, and option presets.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use sandcache_engine::{Format, RestoreOptions, SnapshotOptions};
use sandcache_store::{LocalStore, S3Store, Store, StoreOptions};

/// The stores every test runs on: local always, S3 when the server is up.
pub fn stores(test: &str, tmp: &Path) -> Vec<Arc<dyn Store>> {
    let mut v: Vec<Arc<dyn Store>> = vec![Arc::new(LocalStore::new(tmp.join("store")))];
    if let Some(spec) = sandcache_testkit::s3::spec(test) {
        v.push(Arc::new(S3Store::new(&spec, &StoreOptions::default()).unwrap()));
    }
    v
}

pub async fn put(store: &dyn Store, key: &str, bytes: Vec<u8>) {
    let body = futures::stream::once(async move { Ok(Bytes::from(bytes)) }).boxed();
    store.put(key, body).await.unwrap();
}

pub async fn get(store: &dyn Store, key: &str) -> Vec<u8> {
    store.get(key).await.unwrap().bytes().await.unwrap()
}

pub fn settle() {
    assert!(sandcache_engine::wait_for_background(Duration::from_secs(30)));
}

/// A restore bounded at 20 s.
pub fn quick() -> RestoreOptions {
    RestoreOptions { timeout: Duration::from_secs(20), ..Default::default() }
}

/// A native snapshot.
pub fn snap() -> SnapshotOptions {
    SnapshotOptions { format: Format::Native, ..Default::default() }
}

/// The sample tree in `tmp/src`, snapshotted (native) under `key` in a
/// local store at `tmp/store`: the source and the cache.
pub async fn stored_sample(tmp: &Path, key: &str) -> (std::path::PathBuf, sandcache_engine::Cache) {
    let src = tmp.join("src");
    sandcache_testkit::tree::sample_tree(&src);
    let cache = sandcache_engine::Cache::new(Arc::new(LocalStore::new(tmp.join("store"))), key);
    assert!(cache.snapshot(&src, &SnapshotOptions::default()).await.is_done());
    (src, cache)
}
