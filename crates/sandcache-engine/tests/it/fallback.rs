//! The restore fallback chain: the exact key, then keys and prefixes, the
//! first usable generation wins, within one deadline.

use std::fs;
use std::sync::Arc;

use sandcache_engine::{Cache, Reason, RestoreOptions, SnapshotOptions};
use sandcache_store::Store;
use sandcache_testkit::tree::{assert_same_tree, sample_tree};

use crate::{put, settle, stores};

fn with_fallbacks(f: &[&str]) -> RestoreOptions {
    RestoreOptions { fallbacks: f.iter().map(|s| s.to_string()).collect(), ..Default::default() }
}

/// A tree that differs from `sample_tree` by one file, so which one was
/// restored shows.
fn variant(root: &std::path::Path, name: &str) {
    sample_tree(root);
    fs::write(root.join("variant.txt"), name).unwrap();
}

async fn snapshot(store: &Arc<dyn Store>, key: &str, dir: &std::path::Path) {
    let out =
        Cache::new(store.clone(), key).snapshot(dir, &SnapshotOptions { force: true, ..Default::default() }).await;
    assert!(out.is_done(), "{key}: {}", out.to_json());
}

#[tokio::test]
async fn the_exact_key_wins_then_fallbacks_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, other) = (tmp.path().join("base"), tmp.path().join("other"));
    variant(&base, "base");
    variant(&other, "other");
    for store in stores("fallback-order", tmp.path()) {
        snapshot(&store, "base/deno", &base).await;
        snapshot(&store, "other/deno", &other).await;
        let site = Cache::new(store.clone(), "site/cache.tgz");

        // Nothing under the key: the first fallback that has something.
        let dir = tmp.path().join(format!("d-{}", rand::random::<u32>()));
        let out = site.restore(&dir, &with_fallbacks(&["missing/key", "base/deno", "other/deno"])).await;
        assert!(out.is_done(), "{}", out.to_json());
        let json = out.to_json();
        assert_eq!((json["hit"].as_str(), json["from_key"].as_str()), (Some("fallback"), Some("base/deno")), "{json}");
        assert_same_tree(&base, &dir);
        settle();

        // The first snapshot after a fallback writes the site's own key
        // (not `unchanged`: the dir matches the base, not the key), and
        // never the base.
        let base_generations = store.list("base/deno.d/manifests/").await.unwrap().len();
        let out = site.snapshot(&dir, &SnapshotOptions::default()).await;
        assert!(out.is_done(), "{}", out.to_json());
        assert_eq!(store.list("base/deno.d/manifests/").await.unwrap().len(), base_generations);

        // Now the key itself has a generation: exact.
        let dir2 = tmp.path().join(format!("d-{}", rand::random::<u32>()));
        let out = site.restore(&dir2, &with_fallbacks(&["other/deno"])).await;
        let json = out.to_json();
        assert_eq!(
            (json["hit"].as_str(), json["from_key"].as_str()),
            (Some("exact"), Some("site/cache.tgz")),
            "{json}"
        );
        assert_same_tree(&base, &dir2);

        // Nothing anywhere: a miss, `hit` null.
        let out =
            Cache::new(store.clone(), "nobody/cache").restore(&tmp.path().join("e"), &with_fallbacks(&["none/"])).await;
        assert_eq!(out.reason(), Some(Reason::NotFound), "{}", out.to_json());
        assert!(out.to_json()["hit"].is_null());
        settle();
    }
}

#[tokio::test]
async fn a_prefix_means_the_newest_generation_of_any_key_under_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (old, new) = (tmp.path().join("old"), tmp.path().join("new"));
    variant(&old, "old");
    variant(&new, "new");
    for store in stores("fallback-prefix", tmp.path()) {
        snapshot(&store, "base/v1", &old).await;
        // Manifest names start with their creation time in ms.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        snapshot(&store, "base/v2", &new).await;
        snapshot(&store, "based-not-under/x", &old).await;
        let dir = tmp.path().join(format!("d-{}", rand::random::<u32>()));
        let out = Cache::new(store.clone(), "site/k").restore(&dir, &with_fallbacks(&["base/"])).await;
        assert_eq!(out.to_json()["from_key"], "base/v2", "{}", out.to_json());
        assert_same_tree(&new, &dir);
        settle();
    }
}

/// A generation that is garbage, or whose pack is gone, falls through to
/// the next candidate; nothing of it is ever written.
#[tokio::test]
async fn a_corrupt_or_incomplete_generation_falls_through() {
    let tmp = tempfile::tempdir().unwrap();
    let (good, bad) = (tmp.path().join("good"), tmp.path().join("bad"));
    variant(&good, "good");
    variant(&bad, "bad");
    for store in stores("fallback-corrupt", tmp.path()) {
        snapshot(&store, "base/good", &good).await;
        // The site's own key: a manifest that is not one.
        put(store.as_ref(), "site/k.d/manifests/9999999999999-deadbeef.json.zst", b"not zstd".to_vec()).await;
        // A fallback whose packs are gone.
        snapshot(&store, "base/incomplete", &bad).await;
        let named = |k: &'static str| {
            let store = store.clone();
            async move {
                let (_, m) = sandcache_testkit::generations::manifests(store.as_ref(), k).await.unwrap().remove(0);
                m.packs.iter().map(|p| sandcache_testkit::generations::pack_location(k, &m, &p.id)).collect::<Vec<_>>()
            }
        };
        let keep = named("base/good").await;
        for p in named("base/incomplete").await.into_iter().filter(|p| !keep.contains(p)) {
            store.delete(&p).await.unwrap();
        }
        let dir = tmp.path().join(format!("d-{}", rand::random::<u32>()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("previous"), b"kept until the swap").unwrap();
        let opts = with_fallbacks(&["base/incomplete", "base/good"]);
        let out = Cache::new(store.clone(), "site/k").restore(&dir, &opts).await;
        assert_eq!(out.to_json()["from_key"], "base/good", "{}", out.to_json());
        assert_same_tree(&good, &dir);

        // Every candidate unusable: the last reason, and the dir as it was.
        let dir = tmp.path().join(format!("d-{}", rand::random::<u32>()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("previous"), b"kept").unwrap();
        let out = Cache::new(store.clone(), "site/k").restore(&dir, &with_fallbacks(&["base/incomplete"])).await;
        assert!(!out.is_done(), "{}", out.to_json());
        assert_eq!(fs::read(dir.join("previous")).unwrap(), b"kept");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "nothing of a bad generation is written");
        settle();
    }
}

#[tokio::test]
async fn invalid_fallbacks_are_ignored_by_the_library() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    sample_tree(&src);
    let store: Arc<dyn Store> = Arc::new(sandcache_store::LocalStore::new(tmp.path().join("store")));
    snapshot(&store, "base/ok", &src).await;
    let opts = with_fallbacks(&["../escape", "/abs", "a//b/", "", "base/ok"]);
    let out = Cache::new(store, "site/k").restore(&tmp.path().join("d"), &opts).await;
    assert_eq!(out.to_json()["from_key"], "base/ok", "{}", out.to_json());
    for bad in ["../x", "/abs", "a//", "", "x/../"] {
        assert!(sandcache_engine::validate_fallback(bad).is_err(), "{bad:?}");
    }
    for good in ["base/", "base/deno", "a/b/"] {
        assert!(sandcache_engine::validate_fallback(good).is_ok(), "{good:?}");
    }
    settle();
}
