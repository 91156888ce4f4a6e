//! One conformance suite, run against every backend: the local directory and
//! a real S3-compatible server (Garage, from scripts/dev-s3.sh).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use sandcache_store::{BodyStream, LocalStore, S3Spec, S3Store, Store, StoreError, StoreOptions, StoreSpec};

fn body(chunks: Vec<Vec<u8>>) -> BodyStream {
    futures::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from(c)))).boxed()
}

async fn read_all(store: &dyn Store, key: &str) -> Vec<u8> {
    store.get(key).await.unwrap().bytes().await.unwrap()
}

async fn conformance(store: Arc<dyn Store>) {
    // A missing key is NotFound, distinct from failures.
    let err = store.get("site/missing.tgz").await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(store.head("site/missing.tgz").await.unwrap().is_none());

    // Small object: one PUT.
    let n = store.put("site/small", body(vec![b"hello ".to_vec(), b"world".to_vec()])).await.unwrap();
    assert_eq!(n, 11);
    assert_eq!(read_all(store.as_ref(), "site/small").await, b"hello world");
    let info = store.head("site/small").await.unwrap().unwrap();
    assert_eq!(info.size, 11);

    // Large object: multipart, in uneven chunks.
    let big: Vec<u8> = (0..(13u32 << 20) / 4).flat_map(|i| i.to_le_bytes()).collect();
    let chunks: Vec<Vec<u8>> = big.chunks(3 << 20 | 17).map(<[u8]>::to_vec).collect();
    assert_eq!(store.put("site/big", body(chunks)).await.unwrap(), big.len() as u64);
    assert_eq!(read_all(store.as_ref(), "site/big").await, big);

    // Ranged reads.
    let obj = store.get_range("site/big", 1000..1100).await.unwrap();
    assert_eq!(obj.size, big.len() as u64);
    let part: Vec<Bytes> = obj.stream.try_collect().await.unwrap();
    assert_eq!(part.concat(), &big[1000..1100]);
    // Across the local store's 1 MiB chunks, and to the very end.
    let len = big.len() as u64;
    for range in [(1 << 20) - 5..(3 << 20) + 7, len - 100..len, 0..len] {
        let obj = store.get_range("site/big", range.clone()).await.unwrap();
        let part: Vec<Bytes> = obj.stream.try_collect().await.unwrap();
        assert_eq!(part.concat(), &big[range.start as usize..range.end as usize], "{range:?}");
    }

    // Overwrite replaces whole.
    store.put("site/small", body(vec![b"v2".to_vec()])).await.unwrap();
    assert_eq!(read_all(store.as_ref(), "site/small").await, b"v2");

    // A body that fails leaves the previous object untouched.
    let failing: BodyStream =
        futures::stream::iter(vec![Ok(Bytes::from(vec![7u8; 6 << 20])), Err(std::io::Error::other("writer died"))])
            .boxed();
    let err = store.put("site/small", failing).await.unwrap_err();
    assert!(matches!(err, StoreError::Body { .. }), "{err}");
    assert_eq!(read_all(store.as_ref(), "site/small").await, b"v2");
    let failing_small: BodyStream =
        futures::stream::iter(vec![Ok(Bytes::from_static(b"x")), Err(std::io::Error::other("died"))]).boxed();
    assert!(store.put("site/small", failing_small).await.is_err());
    assert_eq!(read_all(store.as_ref(), "site/small").await, b"v2");

    // Listing by prefix, partial last segment included; no temp files.
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

    // Delete, idempotently.
    store.delete("site/small").await.unwrap();
    store.delete("site/small").await.unwrap();
    assert!(store.get("site/small").await.unwrap_err().is_not_found());

    // put_new writes a missing key; over an existing one it never leaves a
    // mix: the local store refuses (Ok(false)), S3 refuses with 412, and
    // Garage, which ignores If-None-Match, may overwrite whole.
    assert!(store.put_new("pool/ab/new", bytes::Bytes::from_static(b"first")).await.unwrap());
    assert_eq!(read_all(store.as_ref(), "pool/ab/new").await, b"first");
    let again = store.put_new("pool/ab/new", bytes::Bytes::from_static(b"other")).await.unwrap();
    let now = read_all(store.as_ref(), "pool/ab/new").await;
    assert!(now == b"first" || (again && now == b"other"), "{again} {now:?}");
    if store.to_string().starts_with("file://") {
        assert!(!again, "the local store never overwrites");
    }
    let keys: Vec<String> = store.list("pool/").await.unwrap().into_iter().map(|o| o.key).collect();
    assert_eq!(keys, ["pool/ab/new"], "no temp file is left");

    // Bad keys are refused before any request.
    for bad in ["", "/abs", "a/../b", "a//b"] {
        assert!(matches!(store.get(bad).await.unwrap_err(), StoreError::InvalidKey { .. }), "{bad:?}");
    }
}

#[tokio::test]
async fn local_store_conformance() {
    let dir = tempfile::tempdir().unwrap();
    conformance(Arc::new(LocalStore::new(dir.path()))).await;
}

#[tokio::test]
async fn s3_store_conformance() {
    let Some(spec) = sandcache_testkit::s3::spec("store-conformance") else { return };
    let store = S3Store::new(&spec, &StoreOptions::default()).unwrap();
    assert!(store.to_string().starts_with("s3://"));
    conformance(Arc::new(store)).await;
}

#[tokio::test]
async fn s3_missing_bucket_is_an_error_not_a_miss() {
    let Some(mut spec) = sandcache_testkit::s3::spec("bad-bucket") else { return };
    spec.bucket = "no-such-bucket-sandcache".into();
    let store = S3Store::new(&spec, &StoreOptions { max_retries: 0, ..Default::default() }).unwrap();
    let err = store.get("k").await.unwrap_err();
    eprintln!("{err:?}");
    assert!(!err.is_not_found(), "a missing bucket is misconfiguration, not a first wake-up: {err}");
}

#[tokio::test]
async fn s3_stalled_body_ends_at_the_idle_timeout() {
    let addr = sandcache_testkit::net::stalling_server(vec![0; 1000]).await;
    let mut spec = S3Spec::new("bucket");
    spec.endpoint = Some(format!("http://{addr}"));
    let opts = StoreOptions {
        idle_timeout: Duration::from_millis(500),
        max_retries: 0,
        retry_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let store = S3Store::new(&spec, &opts).unwrap();
    let start = std::time::Instant::now();
    let obj = store.get("k").await.unwrap();
    let result: Result<Vec<Bytes>, StoreError> = obj.stream.try_collect().await;
    assert!(result.is_err(), "a stalled body must fail, not hang");
    assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
}

#[test]
fn specs_display_round_trip() {
    for s in ["s3://bkt", "s3://bkt/p/q", "file:///tmp/x"] {
        assert_eq!(s.parse::<StoreSpec>().unwrap().to_string(), s);
    }
}
