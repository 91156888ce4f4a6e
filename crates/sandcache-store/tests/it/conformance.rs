//! One conformance suite, run against every backend: the local directory and
//! a real S3-compatible server (Garage, from scripts/dev-s3.sh), plain and
//! behind what tests put in front of a store.

use std::sync::Arc;
use std::time::Duration;

use sandcache_store::{LocalStore, S3Spec, S3Store, Store, StoreOptions};
use sandcache_testkit::faults::FaultProxy;
use sandcache_testkit::store::{Method, Wrapped, conformance};
use sandcache_testkit::throttle::{ThrottleOptions, ThrottledProxy};

#[tokio::test]
async fn local_store_conformance() {
    let dir = tempfile::tempdir().unwrap();
    conformance::run(&LocalStore::new(dir.path())).await;
}

#[tokio::test]
async fn s3_store_conformance() {
    let Some(spec) = sandcache_testkit::s3::spec("store-conformance") else { return };
    let store = S3Store::new(&spec, &StoreOptions::default()).unwrap();
    assert!(store.to_string().starts_with("s3://"));
    conformance::run(&store).await;
}

/// The test server through `spec`'s endpoint replaced by `endpoint`.
fn via(spec: &S3Spec, endpoint: String) -> S3Store {
    let mut via = spec.clone();
    via.endpoint = Some(endpoint);
    S3Store::new(&via, &StoreOptions::default()).unwrap()
}

/// The fault proxy with no fault planned is the server itself.
#[tokio::test]
async fn s3_behind_the_fault_proxy_conformance() {
    let Some(spec) = sandcache_testkit::s3::spec("store-conformance-faults") else { return };
    let proxy = FaultProxy::start(spec.endpoint.as_deref().unwrap()).await;
    conformance::run(&via(&spec, proxy.url())).await;
    assert_eq!(proxy.injected(), 0);
}

/// The throttled link the benchmark puts between a pod and its store.
#[tokio::test]
async fn s3_behind_a_throttled_link_conformance() {
    let Some(spec) = sandcache_testkit::s3::spec("store-conformance-throttled") else { return };
    let hostport = spec.endpoint.as_deref().unwrap().trim_start_matches("http://").trim_end_matches('/').to_owned();
    let opts =
        ThrottleOptions { bytes_per_sec: 200 << 20, connect_delay: Duration::from_millis(2), ..Default::default() };
    let link = ThrottledProxy::relay_to(&hostport, opts).await.unwrap();
    conformance::run(&via(&spec, link.url())).await;
    assert!(link.bytes() > 13 << 20, "the big object went through the link");
}

/// The wrapper store with no hook but a delay on ranged reads, on each
/// backend: what it counts, it passes on.
#[tokio::test]
async fn wrapped_store_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let mut inners: Vec<Arc<dyn Store>> = vec![Arc::new(LocalStore::new(dir.path()))];
    if let Some(spec) = sandcache_testkit::s3::spec("store-conformance-wrapped") {
        inners.push(Arc::new(S3Store::new(&spec, &StoreOptions::default()).unwrap()));
    }
    for inner in inners {
        let store = Wrapped::new(inner.clone()).delay_ranged(Duration::from_millis(5));
        assert_eq!(store.to_string(), inner.to_string());
        conformance::run(&store).await;
        assert_eq!(store.calls(Method::GetRange), 4, "{inner}");
        assert_eq!(store.delayed(), 4, "{inner}");
        assert_eq!(store.ranged_bytes(), 100 + (2 << 20) + 12 + 100 + (13 << 20), "{inner}");
        assert!(store.calls(Method::Get) > 0 && store.calls(Method::PutNew) == 2, "{inner}");
    }
}
