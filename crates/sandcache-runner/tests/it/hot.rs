//! Hot-first deploys: the worker starts at hot-ready while the rest of the
//! cache lands; requests wait for it; a worker that needed a file that was
//! not hot starts again, once, when the tail is in.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use sandcache_engine::{Cache, Format, SnapshotOptions};
use sandcache_runner::Runner;
use sandcache_store::{S3Store, Store, StoreOptions};
use sandcache_testkit::faults::{At, Direction, Fault, FaultProxy, Plan};
use sandcache_testkit::tree::{noise, settle_times};
use serde_json::{Value, json};

use super::{call, raw_call, test_config};

fn at_root(spec: &sandcache_store::S3Spec) -> sandcache_store::S3Spec {
    let mut root = spec.clone();
    root.prefix = String::new();
    root
}

/// A cache whose hot set is `npm/hot/*`, and whose tail (read by range,
/// past what a restore prefetches whole) holds `npm/cold/needed.js`.
async fn publish(store: &Arc<dyn Store>, key: &str, src: &Path) {
    let files: Vec<(String, Vec<u8>)> = vec![
        ("a-big/one.bin".into(), noise(9 << 20, "one")),
        ("a-big/two.bin".into(), noise(9 << 20, "two")),
        ("npm/cold/needed.js".into(), b"export const needed = true;\n".to_vec()),
        ("npm/hot/main.js".into(), b"export const hot = 1;\n".to_vec()),
        ("npm/hot/dep.js".into(), b"export const dep = 2;\n".to_vec()),
    ];
    for (rel, data) in &files {
        let p = src.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        settle_times(&p);
    }
    for rel in ["npm/hot/main.js", "npm/hot/dep.js"] {
        std::fs::read(src.join(rel)).unwrap();
    }
    let out = Cache::new(store.clone(), key)
        .snapshot(src, &SnapshotOptions { format: Format::Native, ..Default::default() })
        .await;
    assert!(out.is_done(), "{}", out.to_json());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_needs_a_cold_file_starts_again_once_the_tail_lands() {
    let Some(spec) = sandcache_testkit::s3::spec("runner-hot-first") else { return };
    let tmp = tempfile::tempdir().unwrap();
    // The runner names a bucket (the store's root, where the pool lives)
    // and a key under the test's prefix: publish the same way.
    let direct: Arc<dyn Store> = Arc::new(S3Store::new(&at_root(&spec), &StoreOptions::default()).unwrap());
    let key = format!("{}/site/hot", spec.prefix);
    publish(&direct, &key, &tmp.path().join("src")).await;

    // Every ranged read (the tail's) waits 2 s at the proxy.
    let proxy = FaultProxy::start(spec.endpoint.as_deref().unwrap()).await;
    proxy.set(Some(Plan {
        fault: Fault::Latency(Duration::from_secs(2)),
        at: At::Start,
        direction: Direction::RangedDownload,
        index: 0,
        sticky: true,
    }));
    let mut cfg = test_config(tmp.path());
    cfg.restore_timeout = Duration::from_secs(20);
    let runner = Runner::new(cfg);
    let envs = json!({
        "DECO_CACHE_S3_BUCKET": spec.bucket,
        "DECO_CACHE_S3_KEY": key,
        "DECO_CACHE_S3_ENDPOINT": proxy.url(),
    });
    // The app needs a file that was not hot: without it, it exits.
    let script = r#"
        test -f "$DENO_DIR/npm/cold/needed.js" || { echo "needed.js is missing" >&2; exit 1; }
        cd "$DENO_DIR/npm" && exec python3 -m http.server "$PORT" --bind 127.0.0.1
    "#;
    let started = Instant::now();
    let (s, v) = call(
        &runner,
        "POST",
        "/sandbox/deploy",
        json!({"site": "hot", "runCommand": ["sh", "-c", script], "envs": envs}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let deployed = started.elapsed();
    assert!(deployed < Duration::from_secs(2), "the deploy answered at hot-ready, before the tail: {deployed:?}");

    // A request now waits for the tail, then for the restarted worker.
    let (s, body) = raw_call(&runner, "GET", "/cold/needed.js", vec![]).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(body.contains("needed = true"), "{body}");
    assert!(started.elapsed() >= Duration::from_secs(2), "it waited for the tail");

    let (_, st) = call(&runner, "GET", "/sandbox/status", Value::Null).await;
    assert_eq!(st["cache"]["restore"]["ok"], true, "{st}");
    assert_eq!(st["worker_restarts"], 1, "{st}");
    let t = &st["timings"];
    let (hot, tail) = (t["hot_ms"].as_u64().unwrap(), t["tail_ms"].as_u64().unwrap());
    assert!(tail >= 1500, "the tail took the proxy's delay: {t}");
    assert!(hot < 2000, "hot-ready came before it: {t}");
    assert!(t["boot_ms"].as_u64().is_some() && t["first_response_ms"].as_u64().is_some(), "{t}");
    let (_, metrics) = raw_call(&runner, "GET", "/metrics", vec![]).await;
    assert!(metrics.contains("sandcache_worker_tail_restarts_total 1"), "{metrics}");
    assert!(metrics.contains("sandcache_restore_phase_seconds_count{phase=\"tail\"} 1"), "{metrics}");
    assert!(metrics.contains("sandcache_first_response_seconds_count 1"), "{metrics}");
    assert_eq!(call(&runner, "DELETE", "/sandbox/deploy", Value::Null).await.0, StatusCode::OK);
    proxy.set(None);
}

/// `--serve-during-tail`: requests go through at once; with hot-first off
/// the deploy answers only once everything landed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_during_tail_and_hot_first_off() {
    let Some(spec) = sandcache_testkit::s3::spec("runner-hot-modes") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let direct: Arc<dyn Store> = Arc::new(S3Store::new(&at_root(&spec), &StoreOptions::default()).unwrap());
    let key = format!("{}/site/modes", spec.prefix);
    publish(&direct, &key, &tmp.path().join("src")).await;
    let proxy = FaultProxy::start(spec.endpoint.as_deref().unwrap()).await;
    let delay = Plan {
        fault: Fault::Latency(Duration::from_secs(2)),
        at: At::Start,
        direction: Direction::RangedDownload,
        index: 0,
        sticky: true,
    };
    let envs = json!({
        "DECO_CACHE_S3_BUCKET": spec.bucket,
        "DECO_CACHE_S3_KEY": key,
        "DECO_CACHE_S3_ENDPOINT": proxy.url(),
    });
    // An app whose working set is hot.
    let script = r#"cd "$DENO_DIR/npm" && exec python3 -m http.server "$PORT" --bind 127.0.0.1"#;
    for (hot_first, serve_during_tail) in [(true, true), (false, false)] {
        proxy.set(Some(delay));
        let mut cfg = test_config(&tmp.path().join(format!("{hot_first}")));
        cfg.restore_timeout = Duration::from_secs(20);
        cfg.hot_first = hot_first;
        cfg.serve_during_tail = serve_during_tail;
        let runner = Runner::new(cfg);
        let started = Instant::now();
        let body = json!({"site": "modes", "runCommand": ["sh", "-c", script], "envs": envs});
        let (s, v) = call(&runner, "POST", "/sandbox/deploy", body).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (s, page) = raw_call(&runner, "GET", "/hot/main.js", vec![]).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        let served = started.elapsed();
        let (_, st) = call(&runner, "GET", "/sandbox/status", Value::Null).await;
        if hot_first {
            assert!(served < Duration::from_secs(2), "served during the tail: {served:?} {st}");
            assert!(st["timings"]["hot_ms"].as_u64().is_some(), "{st}");
        } else {
            assert!(served >= Duration::from_secs(2), "everything first: {served:?}");
            assert!(st["timings"]["hot_ms"].is_null(), "{st}");
            assert!(st["cache"]["restore"]["hot_ms"].is_null(), "{st}");
        }
        assert_eq!(call(&runner, "DELETE", "/sandbox/deploy", Value::Null).await.0, StatusCode::OK);
    }
    proxy.set(None);
}
