//! Pre-warmed pods: the pool-wide base restored into DENO_DIR while idle,
//! cancelled by a deploy, kept for the deploy's restore, and never seen by
//! a worker of another site.

use std::path::Path;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use sandcache_engine::{Cache, CacheConfig, SnapshotOptions};
use sandcache_runner::Runner;
use sandcache_store::{LocalStore, StoreSpec};
use serde_json::{Value, json};

use crate::support::{call, test_config, wait_status};

/// A base in a local store, with two npm packages.
async fn base(store: &Path, tmp: &Path) {
    let src = tmp.join("base-src");
    for name in ["base-pkg", "other-pkg"] {
        let pkg = src.join(format!("npm/registry.npmjs.org/{name}/1.0.0"));
        std::fs::create_dir_all(&pkg).unwrap();
        std::fs::write(pkg.join("index.js"), "export const base = 1;\n").unwrap();
        std::fs::write(pkg.join("package.json"), format!(r#"{{"name":"{name}","version":"1.0.0"}}"#)).unwrap();
    }
    let cache = Cache::new(std::sync::Arc::new(LocalStore::new(store)), "base/deno");
    let out = cache.snapshot(&src, &SnapshotOptions::default()).await;
    assert!(out.is_done(), "{}", out.to_json());
}

/// A runner config for `tmp` that pre-warms the base (stored there first,
/// in a local store) and restores with no key of its own.
async fn prewarming_config(tmp: &Path) -> sandcache_runner::RunnerConfig {
    let store = tmp.join("store");
    base(&store, tmp).await;
    let mut cfg = test_config(tmp);
    cfg.cache_defaults = CacheConfig { store: Some(StoreSpec::Local(store)), key: None };
    cfg.prewarm = Some("base/deno".into());
    cfg
}

/// Deploys site `a` with a worker that runs `script`, then serves; the
/// status once it is ready.
async fn deploy_sh(runner: &std::sync::Arc<Runner>, script: &str) -> Value {
    let script = format!("{script}; exec python3 -m http.server \"$PORT\" --bind 127.0.0.1");
    let (s, v) =
        call(runner, "POST", "/sandbox/deploy", json!({"site": "a", "runCommand": ["sh", "-c", script]})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    wait_status(runner, 20, "the worker", |s| s["worker"] == "ready").await
}

/// Idle, the runner pre-warms DENO_DIR with the base; a deploy whose
/// fallback is the base restores over it; its worker's writes do not
/// survive the undeploy, after which the pod pre-warms again.
#[tokio::test]
async fn an_idle_runner_prewarms_and_a_deploy_restores_over_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = prewarming_config(tmp.path()).await;
    cfg.fallbacks = vec!["base/deno".into()];
    let deno_dir = cfg.deno_dir.clone();
    let runner = Runner::new(cfg);
    let (_, st) = call(&runner, "GET", "/sandbox/status", Value::Null).await;
    assert_eq!(st["prewarm"]["state"], "off", "not started yet: {st}");
    runner.start_prewarm();
    let st = wait_status(&runner, 20, "the pre-warm", |s| s["prewarm"]["state"] == "ready").await;
    assert_eq!(st["prewarm"]["source"], "base/deno", "{st}");
    assert_eq!(st["prewarm"]["from_key"], "base/deno", "{st}");
    assert_eq!(st["prewarm"]["outcome"]["ok"], true, "{st}");
    let index = deno_dir.join("npm/registry.npmjs.org/base-pkg/1.0.0/index.js");
    assert!(index.is_file(), "the base is in DENO_DIR");
    assert!(runner.metrics().encode().contains("prewarms_total{outcome=\"ok\"} 1"));

    // A worker that records what it finds, and leaves a file behind.
    let script =
        format!("ls -R \"$DENO_DIR\" > {}/seen.txt; echo site-a > \"$DENO_DIR/left-by-a\"", tmp.path().display());
    let st = deploy_sh(&runner, &script).await;
    assert_eq!(st["cache"]["restore"]["ok"], true, "{st}");
    assert_eq!(st["cache"]["restore"]["from_key"], "base/deno", "the fallback, over the pre-warm: {st}");
    let seen = std::fs::read_to_string(tmp.path().join("seen.txt")).unwrap();
    assert!(seen.contains("base-pkg"), "the worker sees its restored cache: {seen}");
    let (s, _) = call(&runner, "DELETE", "/sandbox/deploy", Value::Null).await;
    assert_eq!(s, StatusCode::OK);
    // Emptied at undeploy, then pre-warmed again: nothing of site a.
    let st =
        wait_status(&runner, 20, "the next pre-warm", |s| s["prewarm"]["state"] == "ready" && s["phase"] == "idle")
            .await;
    assert!(index.is_file(), "{st}");
    assert!(!deno_dir.join("left-by-a").exists(), "site a's file survived into the pre-warm");
    sandcache_engine::wait_for_background(Duration::from_secs(10));
}

/// Once pre-warmed, the runner checks DENO_DIR while idle and watches it;
/// a file edited after that check (its size and mtime kept) voids it, and
/// the deploy's delta checks for itself and writes the file again: never
/// trusted.
#[tokio::test]
async fn a_file_edited_after_the_idle_check_is_written_again() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = prewarming_config(tmp.path()).await;
    cfg.fallbacks = vec!["base/deno".into()];
    let deno_dir = cfg.deno_dir.clone();
    let runner = Runner::new(cfg);
    runner.start_prewarm();
    wait_status(&runner, 20, "the check made while idle", |s| s["prewarm"]["checked"] == true).await;
    let index = deno_dir.join("npm/registry.npmjs.org/base-pkg/1.0.0/index.js");
    let mtime = std::fs::metadata(&index).unwrap().modified().unwrap();
    std::fs::write(&index, "export const base = 2;\n").unwrap();
    std::fs::File::options().write(true).open(&index).unwrap().set_modified(mtime).unwrap();
    let (_, st) = call(&runner, "GET", "/sandbox/status", Value::Null).await;
    assert_eq!(st["prewarm"]["checked"], false, "the edit voids the check: {st}");
    let script =
        format!("cat \"$DENO_DIR/npm/registry.npmjs.org/base-pkg/1.0.0/index.js\" > {}/seen.txt", tmp.path().display());
    let st = deploy_sh(&runner, &script).await;
    let restore = &st["cache"]["restore"];
    // Its package, whole; the other one kept.
    assert_eq!((&restore["mode"], &restore["files_written"]), (&json!("delta"), &json!(2)), "{st}");
    let seen = std::fs::read_to_string(tmp.path().join("seen.txt")).unwrap();
    assert_eq!(seen, "export const base = 1;\n", "the edited file was trusted");
    assert_eq!(call(&runner, "DELETE", "/sandbox/deploy", Value::Null).await.0, StatusCode::OK);
    sandcache_engine::wait_for_background(Duration::from_secs(10));
}

/// A deploy during a pre-warm (here stuck on a store that never answers)
/// cancels it within a bound, and its own restore runs at once.
#[tokio::test]
async fn a_deploy_cancels_a_running_prewarm() {
    let tmp = tempfile::tempdir().unwrap();
    let addr = sandcache_testkit::net::stalling_server(vec![]).await;
    let mut cfg = test_config(tmp.path());
    let mut spec = sandcache_store::S3Spec::new("bucket");
    spec.endpoint = Some(format!("http://{addr}"));
    let (key_id, secret) = ("key".to_owned(), "secret".to_owned());
    spec.credentials = Some(sandcache_store::StaticCredentials { key_id, secret, session_token: None });
    cfg.cache_defaults = CacheConfig { store: Some(StoreSpec::S3(spec)), key: None };
    cfg.restore_timeout = Duration::from_secs(60);
    cfg.prewarm = Some("base/".into());
    let runner = Runner::new(cfg);
    runner.start_prewarm();
    wait_status(&runner, 10, "the pre-warm to start", |s| s["prewarm"]["state"] == "running").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The deploy's own restore uses the same stalled store: it is cancelled
    // in turn by an undeploy. What matters is how soon the pre-warm goes.
    let started = Instant::now();
    let r2 = runner.clone();
    let deploy =
        tokio::spawn(async move { call(&r2, "POST", "/sandbox/deploy", json!({"site": "s", "runCommand": []})).await });
    let st = wait_status(&runner, 5, "the pre-warm cancelled", |s| s["prewarm"]["state"] == "cancelled").await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "the pre-warm took {took:?} to stop (restore timeout 60 s): {st}");
    assert_eq!(st["deploying"], true, "{st}");
    let (s, _) = call(&runner, "DELETE", "/sandbox/deploy", Value::Null).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = deploy.await.unwrap();
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
}

/// After an undeploy, the old site's tree waits (moved aside, removed after
/// the next restore or when idle), closed to the next site's worker: it
/// cannot read a file of it, though both run as the same uid.
#[tokio::test]
async fn the_next_worker_cannot_reach_the_old_tree_while_it_waits() {
    let Some(tmp) = crate::support::root_tmp("run the worker as a uid of its own") else { return };
    let mut cfg = test_config(tmp.path());
    cfg.worker_user = Some(sandcache_runner::isolation::WorkerUser { uid: 20027, gid: 20027 });
    let runner = Runner::new(cfg);
    let report = tmp.path().join("report.txt");
    std::fs::write(&report, "").unwrap();
    std::os::unix::fs::chown(&report, Some(20027), Some(20027)).unwrap();
    let serve = "exec python3 -m http.server \"$PORT\" --bind 127.0.0.1";
    let a = format!("echo site-a-secret > \"$DENO_DIR/secret\"; {serve}");
    let (s, v) = call(&runner, "POST", "/sandbox/deploy", json!({"site": "a", "runCommand": ["sh", "-c", a]})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    wait_status(&runner, 20, "site a", |s| s["worker"] == "ready").await;
    assert_eq!(call(&runner, "DELETE", "/sandbox/deploy", Value::Null).await.0, StatusCode::OK);
    let b = format!(
        "for t in \"$(dirname \"$DENO_DIR\")\"/.deno-dir.sandcache-trash-*; do cat \"$t/secret\"; done > {r} 2>&1; {serve}",
        r = report.display()
    );
    let (s, v) = call(&runner, "POST", "/sandbox/deploy", json!({"site": "b", "runCommand": ["sh", "-c", b]})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    wait_status(&runner, 20, "site b", |s| s["worker"] == "ready").await;
    let seen = std::fs::read_to_string(&report).unwrap();
    assert!(!seen.contains("site-a-secret") && seen.contains("Permission denied"), "{seen}");
    assert_eq!(call(&runner, "DELETE", "/sandbox/deploy", Value::Null).await.0, StatusCode::OK);
}

/// Old trees (what emptying DENO_DIR moved aside) are not removed while a
/// deploy's worker starts: the removal waits until the worker is ready,
/// then goes on.
#[tokio::test]
async fn old_trees_wait_until_the_deploys_worker_is_ready() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = test_config(tmp.path());
    let deno_dir = cfg.deno_dir.clone();
    let runner = Runner::new(cfg);
    // A worker that listens only after a while.
    let script = "sleep 1.5; exec python3 -m http.server \"$PORT\" --bind 127.0.0.1";
    let (s, v) =
        call(&runner, "POST", "/sandbox/deploy", json!({"site": "a", "runCommand": ["sh", "-c", script]})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // An old tree beside DENO_DIR, as emptying it leaves one, removed now.
    let old = deno_dir.with_file_name(".deno-dir.sandcache-trash-old");
    std::fs::create_dir_all(old.join("npm/p/1.0.0")).unwrap();
    std::fs::write(old.join("npm/p/1.0.0/index.js"), "old").unwrap();
    let found = sandcache_engine::remove_leftovers(&deno_dir, None, Duration::from_secs(5)).await.unwrap();
    assert_eq!(found, 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, st) = call(&runner, "GET", "/sandbox/status", Value::Null).await;
    assert_ne!(st["worker"], "ready", "{st}");
    assert!(old.join("npm/p/1.0.0/index.js").exists(), "removed while the worker was starting");
    wait_status(&runner, 20, "the worker", |s| s["worker"] == "ready").await;
    assert!(sandcache_engine::wait_for_background(Duration::from_secs(10)));
    assert!(!old.exists(), "not removed once the worker was ready");
    let (s, _) = call(&runner, "DELETE", "/sandbox/deploy", Value::Null).await;
    assert_eq!(s, StatusCode::OK);
}

/// A runner that shut down pre-warms no more: its refresh loop is stopped,
/// and the undeploy of its shutdown, or anything else, starts none again
/// (the loop's runtime outlives the runner; another runner may use the
/// same DENO_DIR).
#[tokio::test]
async fn a_runner_that_shut_down_prewarms_no_more() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = prewarming_config(tmp.path()).await;
    cfg.prewarm_refresh = Duration::from_millis(200);
    let deno_dir = cfg.deno_dir.clone();
    let runner = Runner::new(cfg);
    runner.start_prewarm();
    wait_status(&runner, 20, "the pre-warm", |s| s["prewarm"]["state"] == "ready").await;
    runner.shutdown().await;
    // Emptied by someone else: neither the refresh nor a new start fills it.
    std::fs::remove_dir_all(&deno_dir).unwrap();
    runner.start_prewarm();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!deno_dir.exists(), "a pre-warm ran after the shutdown");
}
