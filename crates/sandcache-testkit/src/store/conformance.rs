//! The store conformance suite: what every [`Store`] must do, as named
//! steps (object_store's `integration.rs`). Call [`run`] from a backend's or
//! a wrapper's tests, on a store of its own (an empty prefix).
//!
//! The steps run in order on one store, each on what the ones before it
//! left (said at each step): `site/small`, `site/big`, `site/sm-other`,
//! `other/x` and `pool/ab/new`.

use bytes::Bytes;
use futures::StreamExt;
use sandcache_store::{BodyStream, Store, StoreError};

/// Every step, in order.
pub async fn run(store: &dyn Store) {
    missing_keys_are_not_found(store).await;
    small_objects_round_trip(store).await;
    let big = large_objects_go_multipart(store).await;
    ranged_reads(store, &big).await;
    an_overwrite_replaces_whole(store).await;
    a_failing_body_leaves_the_previous_object(store).await;
    listings_by_prefix(store).await;
    deletes_are_idempotent(store).await;
    put_new_never_leaves_a_mix(store).await;
    bad_keys_are_refused(store).await;
}

/// A body of these chunks.
pub fn body(chunks: Vec<Vec<u8>>) -> BodyStream {
    futures::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from(c)))).boxed()
}

/// The whole object at `key`.
pub async fn read_all(store: &dyn Store, key: &str) -> Vec<u8> {
    store.get(key).await.unwrap().bytes().await.unwrap()
}

/// A missing key is NotFound, distinct from failures.
pub async fn missing_keys_are_not_found(store: &dyn Store) {
    let err = store.get("site/missing.tgz").await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(store.head("site/missing.tgz").await.unwrap().is_none());
}

/// Small object: one PUT. Leaves `site/small` ("hello world").
pub async fn small_objects_round_trip(store: &dyn Store) {
    let n = store.put("site/small", body(vec![b"hello ".to_vec(), b"world".to_vec()])).await.unwrap();
    assert_eq!(n, 11);
    assert_eq!(read_all(store, "site/small").await, b"hello world");
    let info = store.head("site/small").await.unwrap().unwrap();
    assert_eq!(info.size, 11);
}

/// Large object: multipart, in uneven chunks. Leaves `site/big` (13 MiB),
/// and returns its content.
pub async fn large_objects_go_multipart(store: &dyn Store) -> Vec<u8> {
    let big: Vec<u8> = (0..(13u32 << 20) / 4).flat_map(|i| i.to_le_bytes()).collect();
    let chunks: Vec<Vec<u8>> = big.chunks(3 << 20 | 17).map(<[u8]>::to_vec).collect();
    assert_eq!(store.put("site/big", body(chunks)).await.unwrap(), big.len() as u64);
    assert_eq!(read_all(store, "site/big").await, big);
    big
}

/// Ranged reads of `site/big`, whose content is `big`.
pub async fn ranged_reads(store: &dyn Store, big: &[u8]) {
    let obj = store.get_range("site/big", 1000..1100).await.unwrap();
    assert_eq!(obj.size, big.len() as u64);
    assert_eq!(obj.bytes().await.unwrap(), &big[1000..1100]);
    // Across the local store's 1 MiB chunks, and to the very end.
    let len = big.len() as u64;
    for range in [(1 << 20) - 5..(3 << 20) + 7, len - 100..len, 0..len] {
        let obj = store.get_range("site/big", range.clone()).await.unwrap();
        assert_eq!(obj.bytes().await.unwrap(), &big[range.start as usize..range.end as usize], "{range:?}");
    }
}

/// Overwrite replaces whole. Leaves `site/small` ("v2").
pub async fn an_overwrite_replaces_whole(store: &dyn Store) {
    store.put("site/small", body(vec![b"v2".to_vec()])).await.unwrap();
    assert_eq!(read_all(store, "site/small").await, b"v2");
}

/// A body that fails leaves the previous object (`site/small`, "v2")
/// untouched.
pub async fn a_failing_body_leaves_the_previous_object(store: &dyn Store) {
    let failing: BodyStream =
        futures::stream::iter(vec![Ok(Bytes::from(vec![7u8; 6 << 20])), Err(std::io::Error::other("writer died"))])
            .boxed();
    let err = store.put("site/small", failing).await.unwrap_err();
    assert!(matches!(err, StoreError::Body { .. }), "{err}");
    assert_eq!(read_all(store, "site/small").await, b"v2");
    let failing_small: BodyStream =
        futures::stream::iter(vec![Ok(Bytes::from_static(b"x")), Err(std::io::Error::other("died"))]).boxed();
    assert!(store.put("site/small", failing_small).await.is_err());
    assert_eq!(read_all(store, "site/small").await, b"v2");
}

/// Listing by prefix, partial last segment included; no temp files. With
/// `site/big` and `site/small` there, leaves `site/sm-other` and `other/x`.
pub async fn listings_by_prefix(store: &dyn Store) {
    store.put("site/sm-other", body(vec![b"o".to_vec()])).await.unwrap();
    store.put("other/x", body(vec![b"x".to_vec()])).await.unwrap();
    let keys: Vec<String> = store.list("site/sm").await.unwrap().into_iter().map(|o| o.key).collect();
    assert_eq!(keys, ["site/sm-other", "site/small"]);
    let keys: Vec<String> = store.list("site/").await.unwrap().into_iter().map(|o| o.key).collect();
    assert_eq!(keys, ["site/big", "site/sm-other", "site/small"]);
    // A bounded listing: the first ones, in order.
    let keys: Vec<String> = store.list_first("site/", 2).await.unwrap().into_iter().map(|o| o.key).collect();
    assert_eq!(keys, ["site/big", "site/sm-other"]);
    assert!(store.list_first("nothing/", 2).await.unwrap().is_empty());
}

/// Delete (of `site/small`), idempotently.
pub async fn deletes_are_idempotent(store: &dyn Store) {
    store.delete("site/small").await.unwrap();
    store.delete("site/small").await.unwrap();
    assert!(store.get("site/small").await.unwrap_err().is_not_found());
}

/// put_new writes a missing key; over an existing one it never leaves a
/// mix: the local store refuses (Ok(false)), S3 refuses with 412, and
/// Garage, which ignores If-None-Match, may overwrite whole. Expects
/// nothing under `pool/`; leaves `pool/ab/new`.
pub async fn put_new_never_leaves_a_mix(store: &dyn Store) {
    assert!(store.put_new("pool/ab/new", bytes::Bytes::from_static(b"first")).await.unwrap());
    assert_eq!(read_all(store, "pool/ab/new").await, b"first");
    let again = store.put_new("pool/ab/new", bytes::Bytes::from_static(b"other")).await.unwrap();
    let now = read_all(store, "pool/ab/new").await;
    assert!(now == b"first" || (again && now == b"other"), "{again} {now:?}");
    if store.to_string().starts_with("file://") {
        assert!(!again, "the local store never overwrites");
    }
    let keys: Vec<String> = store.list("pool/").await.unwrap().into_iter().map(|o| o.key).collect();
    assert_eq!(keys, ["pool/ab/new"], "no temp file is left");
}

/// Bad keys are refused before any request.
pub async fn bad_keys_are_refused(store: &dyn Store) {
    for bad in ["", "/abs", "a/../b", "a//b"] {
        assert!(matches!(store.get(bad).await.unwrap_err(), StoreError::InvalidKey { .. }), "{bad:?}");
    }
}
