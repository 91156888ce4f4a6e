//! S3's failures: a missing bucket is an error, not a miss; a stalled body
//! ends at the idle timeout.

use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use sandcache_store::{S3Spec, S3Store, Store, StoreError, StoreOptions};

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
