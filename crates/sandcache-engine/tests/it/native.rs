//! The native format: dedup, incremental uploads, verification, gc, and
//! reading every older format.

use std::fs;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use sandcache_engine::{Cache, Format, GcOptions, Reason, RestoreOptions, SnapshotOptions};
use sandcache_store::{LocalStore, Store};
use sandcache_testkit::tree::{assert_same_tree, fs_state, sample_tree};

use crate::support::snap;

async fn keys(store: &dyn Store, prefix: &str) -> Vec<String> {
    store.list(prefix).await.unwrap().into_iter().map(|o| o.key).collect()
}

/// The pool's packs (not its manifest pieces).
async fn pool_packs(store: &dyn Store) -> Vec<String> {
    keys(store, "pool/").await.into_iter().filter(|k| k.ends_with(".pack")).collect()
}

#[tokio::test]
async fn an_unchanged_dir_uploads_nothing_and_one_new_file_uploads_one_small_pack() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("deno-dir");
    sample_tree(&dir);
    // 1 MiB that does not compress, so pack sizes mean something.
    let noise: Vec<u8> =
        (0..(1u32 << 18)).flat_map(|i| i.wrapping_mul(2654435761).rotate_left(7).to_le_bytes()).collect();
    fs::write(dir.join("remote/noise.bin"), noise).unwrap();
    for store in super::stores("dedup", tmp.path()) {
        let cache = Cache::new(store.clone(), "site/cache");
        let first = cache.snapshot(&dir, &snap()).await;
        assert!(first.is_done(), "{:?}", first.result);
        let packs = pool_packs(store.as_ref()).await;
        assert_eq!(packs.len(), 1);
        assert_eq!(keys(store.as_ref(), "site/cache.d/manifests/").await.len(), 1);

        // Without the fingerprint shortcut, the native path itself finds
        // every file stored: zero packs, no new generation.
        let forced = cache.snapshot(&dir, &SnapshotOptions { force: true, ..snap() }).await;
        assert_eq!(forced.reason(), Some(Reason::Unchanged), "{:?}", forced.result);
        assert_eq!(pool_packs(store.as_ref()).await, packs);
        assert_eq!(keys(store.as_ref(), "site/cache.d/manifests/").await.len(), 1);

        // One new file: one small pack and a manifest.
        fs::write(dir.join("remote/added.js"), b"export const added = 1;\n").unwrap();
        let second = cache.snapshot(&dir, &snap()).await;
        let done = second.result.clone().unwrap();
        let full = first.result.clone().unwrap();
        assert_eq!(pool_packs(store.as_ref()).await.len(), 2);
        assert!(done.transferred * 20 < full.transferred, "at most 5% of a full upload: {done:?} vs {full:?}");

        // The new generation restores to the new tree, old content included.
        let dest = tmp.path().join(format!("dest-{}", store.to_string().len()));
        let out = cache.restore(&dest, &RestoreOptions::default()).await;
        assert!(out.is_done(), "{:?}", out.result);
        assert_same_tree(&dir, &dest);
        fs::remove_file(dir.join("remote/added.js")).unwrap();
    }
    super::settle();
}

#[tokio::test]
async fn large_files_span_frames_and_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    fs::create_dir_all(dir.join("bin")).unwrap();
    let big: Vec<u8> = (0..(11u32 << 20) / 4).flat_map(|i| (i.wrapping_mul(2654435761)).to_le_bytes()).collect();
    fs::write(dir.join("bin/esbuild"), &big).unwrap();
    fs::write(dir.join("bin/small"), b"small after big").unwrap();
    fs::write(dir.join("a-first"), b"before").unwrap();
    fs::write(dir.join("empty"), b"").unwrap();
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(tmp.path().join("store")));
    let cache = Cache::new(store, "k");
    assert!(cache.snapshot(&dir, &snap()).await.is_done());
    let dest = tmp.path().join("dest");
    let out = cache.restore(&dest, &RestoreOptions::default()).await;
    assert!(out.is_done(), "{:?}", out.result);
    assert_eq!(out.result.unwrap().files, 4);
    assert_same_tree(&dir, &dest);
}

#[tokio::test]
async fn a_corrupted_pack_is_caught_and_the_dir_is_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    sample_tree(&src);
    let store_dir = tmp.path().join("store");
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(&store_dir));
    let cache = Cache::new(store.clone(), "k");
    assert!(cache.snapshot(&src, &snap()).await.is_done());
    let pack = pool_packs(store.as_ref()).await.remove(0);
    let path = store_dir.join(&pack);
    let mut bytes = fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    let dir = tmp.path().join("t/deno-dir");
    sample_tree(&dir);
    fs::write(dir.join("mine"), b"local").unwrap();
    let before = fs_state(&dir);
    let out = cache.restore(&dir, &RestoreOptions::default()).await;
    assert_eq!(out.reason(), Some(Reason::Corrupt), "{:?}", out.result);
    super::settle();
    assert_eq!(before, fs_state(&dir));
}

#[tokio::test]
async fn gc_keeps_the_newest_generations_and_honours_grace() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    sample_tree(&dir);
    for store in super::stores("gc", tmp.path()) {
        let cache = Cache::new(store.clone(), "site/cache");
        for i in 0..5 {
            // Each generation adds a file and replaces another.
            fs::write(dir.join(format!("remote/gen-{i}.js")), vec![b'a' + i as u8; 10_000]).unwrap();
            if i > 0 {
                fs::remove_file(dir.join(format!("remote/gen-{}.js", i - 1))).unwrap();
            }
            assert!(cache.snapshot(&dir, &snap()).await.is_done());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(keys(store.as_ref(), "site/cache.d/manifests/").await.len(), 5);
        // Within the grace period nothing goes.
        let r = cache.gc(&GcOptions { keep: 1, grace: Duration::from_secs(3600), ..Default::default() }).await.unwrap();
        assert_eq!((r.generations_deleted, r.packs_deleted), (0, 0), "{r:?}");
        let r = sandcache_engine::gc_store(
            store.as_ref(),
            &GcOptions { keep: 1, grace: Duration::from_secs(3600), ..Default::default() },
        )
        .await
        .unwrap();
        assert_eq!((r.generations_deleted, r.packs_deleted), (0, 0), "{r:?}");
        // Past it, with a key: only that key's old generations go; the
        // shared pool is the store-wide sweep's.
        let pool = keys(store.as_ref(), "pool/").await.len();
        let r = cache.gc(&GcOptions { keep: 2, grace: Duration::ZERO, ..Default::default() }).await.unwrap();
        assert_eq!((r.generations_deleted, r.packs_deleted), (3, 0), "{r:?}");
        assert_eq!(keys(store.as_ref(), "site/cache.d/manifests/").await.len(), 2);
        assert_eq!(keys(store.as_ref(), "pool/").await.len(), pool);
        // The store-wide sweep drops the packs only the deleted ones used.
        let r = sandcache_engine::gc_store(
            store.as_ref(),
            &GcOptions { keep: 2, grace: Duration::ZERO, ..Default::default() },
        )
        .await
        .unwrap();
        assert_eq!((r.generations_kept, r.generations_deleted), (2, 0), "{r:?}");
        assert!(r.packs_deleted >= 2 && r.bytes_freed > 0, "{r:?}");
        assert_eq!(keys(store.as_ref(), "pool/").await.len(), pool - r.packs_deleted);
        let dest = tmp.path().join(format!("dest-{}", store.to_string().len()));
        let out = cache.restore(&dest, &RestoreOptions::default()).await;
        assert!(out.is_done(), "the newest generation is whole after gc: {:?}", out.result);
        assert_same_tree(&dir, &dest);
    }
    super::settle();
}

/// Every older format restores: the seed's tgz (tested elsewhere), the
/// legacy build cache's tar.zst and plain tar.
#[tokio::test]
async fn single_archive_formats_still_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    sample_tree(&src);
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(tmp.path().join("store")));
    for (key, flag) in [("site/cache.tar.zst", "--zstd"), ("site/cache.tar", "--no-auto-compress")] {
        let out = std::process::Command::new("tar").args([flag, "-cf", "-", "-C"]).arg(&src).arg(".").output().unwrap();
        assert!(out.status.success());
        let body = futures::stream::once(async move { Ok(Bytes::from(out.stdout)) }).boxed();
        store.put(key, body).await.unwrap();
        let dest = tmp.path().join(key.replace('/', "_"));
        let r = Cache::new(store.clone(), key).restore(&dest, &RestoreOptions::default()).await;
        assert!(r.is_done(), "{key}: {:?}", r.result);
        assert_same_tree(&src, &dest);
    }
    super::settle();
}

/// When both exist, the newer of a native generation and a single archive
/// under the same key wins.
#[tokio::test]
async fn the_newer_of_native_and_tgz_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    sample_tree(&a);
    sample_tree(&b);
    fs::write(b.join("remote/only-in-b"), b"b").unwrap();
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(tmp.path().join("store")));
    let cache = Cache::new(store, "site/cache.tgz");
    assert!(cache.snapshot(&a, &snap()).await.is_done());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(cache.snapshot(&b, &SnapshotOptions { format: Format::Tgz, ..Default::default() }).await.is_done());
    let dest = tmp.path().join("dest");
    assert!(cache.restore(&dest, &RestoreOptions::default()).await.is_done());
    assert_same_tree(&b, &dest);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    fs::write(a.join("remote/newest"), b"a").unwrap();
    assert!(cache.snapshot(&a, &snap()).await.is_done());
    let dest2 = tmp.path().join("dest2");
    assert!(cache.restore(&dest2, &RestoreOptions::default()).await.is_done());
    assert_same_tree(&a, &dest2);
    super::settle();
}

/// `unchanged` means the store still holds the generation the dir matches:
/// after the store lost it (wiped, or the key deleted), the same dir is
/// uploaded again, whether it was last snapshotted or restored, in both
/// formats (issue 12, point 3).
#[tokio::test]
async fn a_store_that_lost_the_cache_gets_it_again() {
    for format in [Format::Native, Format::Tgz] {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, store_dir) = (tmp.path().join("deno-dir"), tmp.path().join("store"));
        sample_tree(&dir);
        let cache = Cache::new(Arc::new(LocalStore::new(store_dir.clone())), "site/cache");
        let opts = SnapshotOptions { format, ..Default::default() };
        assert!(cache.snapshot(&dir, &opts).await.is_done(), "{format:?}");
        assert_eq!(cache.snapshot(&dir, &opts).await.reason(), Some(Reason::Unchanged), "{format:?}");
        fs::remove_dir_all(&store_dir).unwrap();
        let again = cache.snapshot(&dir, &opts).await;
        assert!(again.is_done(), "{format:?}: {}", again.to_json());
        assert_eq!(cache.snapshot(&dir, &opts).await.reason(), Some(Reason::Unchanged), "{format:?}");

        // Restored, then the store wiped: the restored dir goes up again.
        let restored = tmp.path().join("restored");
        assert!(cache.restore(&restored, &RestoreOptions::default()).await.is_done());
        sandcache_engine::wait_for_background(Duration::from_secs(10));
        assert_eq!(cache.snapshot(&restored, &opts).await.reason(), Some(Reason::Unchanged), "{format:?}");
        fs::remove_dir_all(&store_dir).unwrap();
        let again = cache.snapshot(&restored, &opts).await;
        assert!(again.is_done(), "{format:?} after restore: {}", again.to_json());
    }
}

/// Under the usual umask (022), entries are created with their final modes
/// where it keeps them and set explicitly where it does not: 0777 and 0666
/// come back as they were, as do 0600 and 0700, restored whole and hot-first.
#[tokio::test]
async fn modes_come_back_exact_whatever_the_umask_clears() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let modes = [("open/all.js", 0o777), ("open/rw.js", 0o666), ("shut/own.js", 0o600), ("shut/x.sh", 0o700)];
    for (rel, mode) in modes {
        let p = src.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, rel).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }
    fs::set_permissions(src.join("open"), fs::Permissions::from_mode(0o777)).unwrap();
    fs::set_permissions(src.join("shut"), fs::Permissions::from_mode(0o700)).unwrap();
    // One file read: a hot set, so the hot-first restore has two phases.
    sandcache_testkit::tree::settle_times(&src.join("open/all.js"));
    sandcache_testkit::tree::settle_times(&src.join("open/rw.js"));
    fs::read(src.join("open/all.js")).unwrap();
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(tmp.path().join("store")));
    let cache = Cache::new(store, "site/modes");
    assert!(cache.snapshot(&src, &snap()).await.is_done());
    for hot_first in [false, true] {
        let dest = tmp.path().join(format!("dest-{hot_first}"));
        let out = cache.restore(&dest, &RestoreOptions { hot_first, ..Default::default() }).await;
        assert!(out.is_done(), "{:?}", out.result);
        assert_same_tree(&src, &dest);
    }
}
