//! The pointer (`K.d/latest`): a restore finds a key's newest root in one
//! GET, without a listing, and lists as before when the pointer is missing,
//! unreadable, or names what cannot be restored; gc and delete keep it from
//! naming a generation they remove.

use std::fs;
use std::sync::Arc;
use std::time::Duration;

use sandcache_engine::{Cache, GcOptions};
use sandcache_store::{LocalStore, Store};
use sandcache_testkit::store::{Method, Wrapped};
use sandcache_testkit::tree::sample_tree;

use crate::support::{quick, snap};
use crate::{get, put, settle, stores};

const KEY: &str = "site/cache";
const POINTER: &str = "site/cache.d/latest";
const PIECES: &str = "site/cache.d/latest-pieces";

/// A test dir with the sample tree in `src`.
fn sample_src() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    sample_tree(&src);
    (tmp, src)
}

fn generations(log: &[(Method, String)]) -> Vec<&str> {
    log.iter().filter(|(m, k)| *m == Method::Get && k.contains(".d/manifests/")).map(|(_, k)| k.as_str()).collect()
}

/// With a pointer, a restore lists nothing and never reads the manifest
/// object: the pointer (beside a HEAD of the key, for a single archive
/// stored there) gives the root, then its pieces and packs follow. Two
/// sequential requests before it knows what to write.
#[tokio::test]
async fn a_restore_reads_the_pointer_instead_of_listing() {
    let (tmp, src) = sample_src();
    for store in stores("pointer-read", tmp.path()) {
        let cache = Cache::new(store.clone(), KEY);
        assert!(cache.snapshot(&src, &snap()).await.is_done());
        assert!(store.head(POINTER).await.unwrap().is_some(), "{store}: the snapshot wrote the pointer");
        let wrapped = Arc::new(Wrapped::new(store.clone()));
        let dir = tmp.path().join(format!("out-{}", rand::random::<u32>()));
        let out = Cache::new(wrapped.clone(), KEY).restore(&dir, &quick()).await;
        assert!(out.is_done(), "{store}: {}", out.to_json());
        let log = wrapped.log();
        assert_eq!(wrapped.calls(Method::List) + wrapped.calls(Method::ListFirst), 0, "{store}: {log:?}");
        assert!(generations(&log).is_empty(), "{store}: the root came with the pointer: {log:?}");
        // The first requests, sent together: the pointer and the HEAD.
        let first: Vec<_> = log.iter().take(2).map(|(m, k)| (*m, k.as_str())).collect();
        assert!(first.contains(&(Method::Get, POINTER)) && first.contains(&(Method::Head, KEY)), "{log:?}");
        assert_eq!(
            fs::read(dir.join("npm/registry.npmjs.org/pkg/1.0.0/package.json")).unwrap(),
            fs::read(src.join("npm/registry.npmjs.org/pkg/1.0.0/package.json")).unwrap()
        );
    }
    settle();
}

/// Missing (a generation an older binary wrote), not a pointer, another
/// key's, or naming a root that does not decode: the restore lists, and
/// restores the newest generation.
#[tokio::test]
async fn a_missing_or_bad_pointer_falls_back_to_the_listing() {
    let (tmp, src) = sample_src();
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(tmp.path().join("store")));
    let cache = Cache::new(store.clone(), KEY);
    assert!(cache.snapshot(&src, &snap()).await.is_done());
    assert!(Cache::new(store.clone(), "other/cache").snapshot(&src, &snap()).await.is_done());
    let other = get(store.as_ref(), "other/cache.d/latest").await;
    let good = get(store.as_ref(), POINTER).await;
    let generation = String::from_utf8_lossy(&good).lines().nth(1).unwrap().to_owned();
    let mut bad_root = good[..good.len() - 8].to_vec();
    bad_root.extend_from_slice(b"garbage!");
    let cases: [(&str, Option<Vec<u8>>); 4] = [
        ("missing", None),
        ("not a pointer", Some(b"{\"hello\": 1}".to_vec())),
        ("another key's", Some(other)),
        ("an undecodable root", Some(bad_root)),
    ];
    for (what, pointer) in cases {
        store.delete(POINTER).await.unwrap();
        if let Some(p) = pointer {
            put(store.as_ref(), POINTER, p).await;
        }
        let wrapped = Arc::new(Wrapped::new(store.clone()));
        let dir = tmp.path().join(format!("out-{}", rand::random::<u32>()));
        let out = Cache::new(wrapped.clone(), KEY).restore(&dir, &quick()).await;
        assert!(out.is_done(), "{what}: {}", out.to_json());
        assert_eq!(wrapped.calls(Method::List), 1, "{what}: {:?}", wrapped.log());
        assert_eq!(generations(&wrapped.log()), [generation.as_str()], "{what}");
        assert_eq!(
            fs::read(dir.join("npm/registry.npmjs.org/pkg/1.0.0/package.json")).unwrap(),
            fs::read(src.join("npm/registry.npmjs.org/pkg/1.0.0/package.json")).unwrap(),
            "{what}"
        );
    }
    settle();
}

/// gc removes a pointer naming a generation it deletes (before deleting
/// it), and leaves one naming a kept generation; delete removes it first.
#[tokio::test]
async fn gc_and_delete_never_leave_a_pointer_to_a_removed_generation() {
    let (tmp, src) = sample_src();
    for store in stores("pointer-gc", tmp.path()) {
        let cache = Cache::new(store.clone(), KEY);
        assert!(cache.snapshot(&src, &snap()).await.is_done());
        let first = get(store.as_ref(), POINTER).await;
        // Generation names are millisecond stamps: the next is newer.
        tokio::time::sleep(Duration::from_millis(5)).await;
        fs::write(src.join("new.txt"), b"a second generation").unwrap();
        assert!(cache.snapshot(&src, &snap()).await.is_done());
        let keep = GcOptions { keep: 1, grace: Duration::ZERO, ..Default::default() };

        // The pointer names the newest: gc keeps it.
        let r = cache.gc(&keep).await.unwrap();
        assert_eq!(r.generations_deleted, 1, "{store}: {r:?}");
        assert!(store.head(POINTER).await.unwrap().is_some(), "{store}: the pointer names the kept generation");

        // A stale pointer (a racing writer, an older binary) naming the
        // generation gc deletes goes with it, per key and store-wide.
        for store_wide in [false, true] {
            fs::write(src.join("new.txt"), format!("generation {store_wide}")).unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert!(cache.snapshot(&src, &snap()).await.is_done());
            let stale = get(store.as_ref(), POINTER).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
            fs::write(src.join("new.txt"), format!("generation {store_wide} again")).unwrap();
            assert!(cache.snapshot(&src, &snap()).await.is_done());
            put(store.as_ref(), POINTER, stale).await;
            let r = match store_wide {
                false => cache.gc(&keep).await.unwrap(),
                true => sandcache_engine::gc_store(store.as_ref(), &keep).await.unwrap(),
            };
            assert!(r.generations_deleted >= 1, "{store}: {r:?}");
            assert!(store.head(POINTER).await.unwrap().is_none(), "{store} (store-wide {store_wide}): pointer left");
            let dir = tmp.path().join(format!("out-{}", rand::random::<u32>()));
            let out = cache.restore(&dir, &quick()).await;
            assert!(out.is_done(), "{store}: {}", out.to_json());
            assert_eq!(fs::read(dir.join("new.txt")).unwrap(), format!("generation {store_wide} again").as_bytes());
        }

        put(store.as_ref(), POINTER, first).await;
        cache.delete().await.unwrap();
        assert!(store.head(POINTER).await.unwrap().is_none(), "{store}: delete removed the pointer");
        assert!(store.list("site/cache.d/").await.unwrap().is_empty());
    }
    settle();
}

/// The pieces a restore read are kept beside the state: the next restore
/// (here of the same generation) asks the store for none of them. A local
/// piece that is not what its name says is ignored, fetched again, and
/// never reported as a bad pool object.
#[tokio::test]
async fn pieces_already_held_are_not_fetched_again() {
    let (tmp, src) = sample_src();
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(tmp.path().join("store")));
    assert!(Cache::new(store.clone(), KEY).snapshot(&src, &snap()).await.is_done());
    // Without the copies beside the pointer: here, pieces come from the
    // store or the local cache.
    store.delete(PIECES).await.unwrap();
    let dir = tmp.path().join("deno-dir");
    let pieces_of = |w: &Wrapped| w.log().iter().filter(|(_, k)| k.ends_with(".tree")).count();
    let restore = || async {
        let wrapped = Arc::new(Wrapped::new(store.clone()));
        let out = Cache::new(wrapped.clone(), KEY).restore(&dir, &quick()).await;
        assert!(out.is_done(), "{}", out.to_json());
        settle();
        wrapped
    };
    assert!(pieces_of(&*restore().await) > 0, "the first restore fetches its pieces");
    assert_eq!(pieces_of(&*restore().await), 0, "the second holds them");
    let cache = tmp.path().join(".deno-dir.sandcache-pieces");
    let held: Vec<_> = fs::read_dir(&cache).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(!held.is_empty());
    for p in &held {
        let len = fs::metadata(p).unwrap().len() as usize;
        fs::write(p, vec![b'x'; len]).unwrap();
    }
    // Beside the pieces, the generation's root (kept for a delta from it;
    // a damaged one is fetched again too, but is no piece).
    let state = fs::read_to_string(tmp.path().join(".deno-dir.sandcache-state.json")).unwrap();
    let generation =
        serde_json::from_str::<serde_json::Value>(&state).unwrap()["generation"].as_str().unwrap().to_owned();
    let root = format!("{}.tree", blake3::hash(format!("root of {generation}").as_bytes()).to_hex());
    assert!(held.iter().any(|p| p.ends_with(&root)), "the root is kept");
    assert_eq!(pieces_of(&*restore().await), held.len() - 1, "damaged local pieces are fetched again");
    assert!(store.list("pool/bad/").await.unwrap().is_empty(), "and not reported");
    assert_eq!(fs::read(dir.join("npm/registry.npmjs.org/pkg/1.0.0/package.json")).unwrap(), b"{\"name\":\"pkg\"}");
}

/// A site's snapshot, made in a dir restored from the base, copies beside
/// its pointer the pieces the base lacks: a pod holding the base restores
/// the site as a delta with no request for a piece, its new pack
/// downloading while the manifest is read. A damaged copy costs
/// only the requests: the pieces come from the pool, nothing is marked bad.
#[tokio::test]
async fn the_pieces_a_pod_holding_the_base_lacks_come_with_the_pointer() {
    let (tmp, src) = sample_src();
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(tmp.path().join("store")));
    assert!(Cache::new(store.clone(), "base/cache").snapshot(&src, &snap()).await.is_done());
    let from_base = sandcache_engine::RestoreOptions { fallbacks: vec!["base/cache".into()], ..quick() };
    let site = tmp.path().join("site/deno-dir");
    assert!(Cache::new(store.clone(), KEY).restore(&site, &from_base).await.is_done());
    let added = site.join("npm/registry.npmjs.org/added/1.0.0");
    fs::create_dir_all(&added).unwrap();
    fs::write(added.join("index.js"), b"export const added = 1;").unwrap();
    assert!(Cache::new(store.clone(), KEY).snapshot(&site, &snap()).await.is_done());
    assert!(store.head(PIECES).await.unwrap().is_some());

    let pieces_of = |w: &Wrapped| w.log().iter().filter(|(_, k)| k.ends_with(".tree")).count();
    let pod = |n: &str| tmp.path().join(format!("pod-{n}/deno-dir"));
    let pod_restore = |dir: std::path::PathBuf| {
        let store = store.clone();
        async move {
            let out = Cache::new(store.clone(), "base/cache").restore(&dir, &quick()).await;
            assert!(out.is_done(), "{}", out.to_json());
            settle();
            let wrapped = Arc::new(Wrapped::new(store));
            let out = Cache::new(wrapped.clone(), KEY).restore(&dir, &quick()).await;
            assert!(out.is_done(), "{}", out.to_json());
            assert_eq!(out.to_json()["mode"], "delta", "{}", out.to_json());
            assert_eq!(
                fs::read(dir.join("npm/registry.npmjs.org/added/1.0.0/index.js")).unwrap(),
                b"export const added = 1;"
            );
            wrapped
        }
    };
    let wrapped = pod_restore(pod("a")).await;
    assert_eq!(pieces_of(&wrapped), 0, "{:?}", wrapped.log());
    // The package's new pack (small, and one the base lacks) downloaded
    // whole from the moment the root was in, not asked for by range after
    // the diff.
    let packs = |m: Method| wrapped.log().iter().filter(|(x, k)| *x == m && k.ends_with(".pack")).count();
    assert_eq!((packs(Method::Get), packs(Method::GetRange)), (1, 0), "{:?}", wrapped.log());

    // Every copied piece damaged (its header kept): fetched from the pool.
    let copy = get(store.as_ref(), PIECES).await;
    let body = copy.windows(2).position(|w| w == b"\n\n").unwrap() + 2;
    let damaged: Vec<u8> = copy.iter().enumerate().map(|(i, b)| if i >= body { b ^ 0x5a } else { *b }).collect();
    put(store.as_ref(), PIECES, damaged).await;
    let wrapped = pod_restore(pod("b")).await;
    assert!(pieces_of(&wrapped) > 0);
    assert!(store.list("pool/bad/").await.unwrap().is_empty(), "a damaged copy is no bad pool object");
    settle();
}
