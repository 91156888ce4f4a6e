//! Restore and snapshot end to end, on the local store and on a real
//! S3-compatible server (Garage): every outcome reason, the deadline with a
//! stalled server, staging and swap, and interop with the seed's tar.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sandcache_engine::{Cache, Format, Limits, Reason, RestoreOptions, SnapshotOptions};
use sandcache_store::{LocalStore, S3Spec, S3Store, Store, StoreOptions};
use sandcache_testkit::raw::Raw;
use sandcache_testkit::tree::{assert_same_tree, fs_state, sample_tree};

use crate::support::{get, put, quick, settle, stores};

#[tokio::test]
async fn snapshot_then_restore_round_trips_in_both_formats() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src/deno-dir");
    sample_tree(&src);
    for store in stores("roundtrip", tmp.path()) {
        for (format, key) in [(Format::Native, "site/cache.native"), (Format::Tgz, "site/cache.tgz")] {
            let cache = Cache::new(store.clone(), key);
            let opts = SnapshotOptions { format, force: true, ..Default::default() };
            let snap = cache.snapshot(&src, &opts).await;
            assert!(snap.is_done(), "{store} {format:?}: {:?}", snap.result);
            let done = snap.result.clone().unwrap();
            assert!(done.files >= 5 && done.transferred > 0);

            let dest = tmp.path().join(format!("dest-{key}")).join("deno-dir");
            let out = cache.restore(&dest, &quick()).await;
            assert!(out.is_done(), "{store} {format:?}: {:?}", out.result);
            assert_eq!(out.result.unwrap().files, done.files);
            assert_same_tree(&src, &dest);
            let json = out_json(&cache.restore(&dest, &quick()).await);
            assert_eq!(json["ok"], true);
            assert_eq!(json["op"], "restore");
            assert_eq!(json["key"], key);
            for field in ["reason", "ms", "files", "bytes", "store"] {
                assert!(json.get(field).is_some(), "{field} in {json}");
            }
        }
    }
    settle();
}

fn out_json(o: &sandcache_engine::Outcome) -> serde_json::Value {
    o.to_json()
}

#[tokio::test]
async fn a_disabled_cache_calls_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::disabled();
    let r = cache.restore(&tmp.path().join("d"), &quick()).await;
    assert_eq!(r.reason(), Some(Reason::Disabled));
    let s = cache.snapshot(tmp.path(), &SnapshotOptions::default()).await;
    assert_eq!(s.reason(), Some(Reason::Disabled));
    assert!(!tmp.path().join("d").exists(), "a disabled restore touches nothing");
}

#[tokio::test]
async fn a_first_wake_up_is_not_found() {
    let tmp = tempfile::tempdir().unwrap();
    for store in stores("notfound", tmp.path()) {
        let cache = Cache::new(store, "never/written.tgz");
        let dir = tmp.path().join("deno-dir");
        let out = cache.restore(&dir, &quick()).await;
        assert_eq!(out.reason(), Some(Reason::NotFound), "{:?}", out.result);
        assert!(!dir.exists());
    }
}

#[tokio::test]
async fn empty_dirs_never_replace_a_good_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    sample_tree(&good);
    let empty = tmp.path().join("empty");
    fs::create_dir_all(empty.join("npm/registry.npmjs.org")).unwrap();
    for store in stores("empty", tmp.path()) {
        let cache = Cache::new(store.clone(), "site/cache");
        assert!(cache.snapshot(&good, &SnapshotOptions::default()).await.is_done());
        let before = store.list("site/").await.unwrap();
        for dir in [empty.clone(), tmp.path().join("missing")] {
            let out = cache.snapshot(&dir, &SnapshotOptions::default()).await;
            assert_eq!(out.reason(), Some(Reason::Empty), "{:?}", out.result);
        }
        assert_eq!(store.list("site/").await.unwrap(), before, "the stored cache is untouched");
    }
}

#[tokio::test]
async fn unchanged_dirs_are_not_uploaded_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("deno-dir");
    sample_tree(&dir);
    for store in stores("unchanged", tmp.path()) {
        let cache = Cache::new(store.clone(), "site/cache");
        assert!(cache.snapshot(&dir, &SnapshotOptions::default()).await.is_done());
        let again = cache.snapshot(&dir, &SnapshotOptions::default()).await;
        assert_eq!(again.reason(), Some(Reason::Unchanged));
        // Deno rewriting its SQLite caches is not a change.
        fs::write(dir.join("dep_analysis_cache_v2-wal"), b"new wal frames").unwrap();
        assert_eq!(cache.snapshot(&dir, &SnapshotOptions::default()).await.reason(), Some(Reason::Unchanged));
        fs::write(dir.join("remote/new-module.js"), b"export {}").unwrap();
        assert!(cache.snapshot(&dir, &SnapshotOptions::default()).await.is_done());

        // Right after a restore, the restored tree is unchanged too.
        let restored = tmp.path().join(format!("restored-{}", store.to_string().len()));
        assert!(cache.restore(&restored, &quick()).await.is_done());
        settle();
        assert_eq!(cache.snapshot(&restored, &SnapshotOptions::default()).await.reason(), Some(Reason::Unchanged));
        // Another key is another cache.
        let other = Cache::new(store.clone(), "site/other");
        assert!(other.snapshot(&restored, &SnapshotOptions::default()).await.is_done());
        fs::remove_file(dir.join("remote/new-module.js")).unwrap();
    }
}

/// A failed restore leaves the dir exactly as it was, and leaves no staging.
async fn assert_rejected_and_untouched(
    store: Arc<dyn Store>,
    bytes: Vec<u8>,
    limits: Limits,
    want: Reason,
    tmp: &Path,
) {
    put(store.as_ref(), "site/bad", bytes).await;
    let dir = tmp.join("deno-dir");
    if !dir.exists() {
        sample_tree(&dir);
    }
    let before = fs_state(tmp);
    let cache = Cache::new(store, "site/bad");
    let out = cache.restore(&dir, &RestoreOptions { limits, ..quick() }).await;
    assert_eq!(out.reason(), Some(want), "{:?}", out.result);
    settle();
    // The store, and sandcache's own lock and state files beside the dir, aside.
    let ours = |l: &String| l.contains("/store/") || l.contains(".sandcache.lock") || l.contains(".sandcache-state");
    let after: Vec<String> = fs_state(tmp).into_iter().filter(|l| !ours(l)).collect();
    let before: Vec<String> = before.into_iter().filter(|l| !ours(l)).collect();
    assert_eq!(before, after, "the dir and its surroundings are as they were; no staging is left");
}

#[tokio::test]
async fn corrupt_unsafe_and_oversized_archives_are_rejected_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, store) in stores("rejects", tmp.path()).into_iter().enumerate() {
        let work = tmp.path().join(format!("w{i}"));
        fs::create_dir_all(&work).unwrap();
        let garbage = b"definitely not an archive".repeat(40);
        assert_rejected_and_untouched(store.clone(), garbage, Limits::default(), Reason::Corrupt, &work).await;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&Raw::default().file("npm/a.js", &[1; 200_000]).finish()).unwrap();
        let gz = gz.finish().unwrap();
        let truncated = gz[..gz.len() / 2].to_vec();
        assert_rejected_and_untouched(store.clone(), truncated, Limits::default(), Reason::Corrupt, &work).await;
        let escape = Raw::default().file("npm/ok.js", b"ok").file("../../escape", b"x").finish();
        assert_rejected_and_untouched(store.clone(), escape, Limits::default(), Reason::Unsafe, &work).await;
        let link =
            Raw::default().entry(b"l", tar::EntryType::Symlink, b"/etc", b"", 0o777).file("l/passwd", b"x").finish();
        assert_rejected_and_untouched(store.clone(), link, Limits::default(), Reason::Unsafe, &work).await;
        let big = Raw::default().file("big", &vec![0; 2 << 20]).finish();
        let limits = Limits { max_bytes: 1 << 20, ..Limits::default() };
        assert_rejected_and_untouched(store.clone(), big, limits, Reason::TooLarge, &work).await;
    }
}

#[tokio::test]
async fn a_stalled_server_ends_the_restore_within_its_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    // Headers, a little body, then silence.
    let addr = sandcache_testkit::net::stalling_server(vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]).await;
    let silent = sandcache_testkit::net::silent_server().await;
    for addr in [addr, silent] {
        let mut spec = S3Spec::new("bucket");
        spec.endpoint = Some(format!("http://{addr}"));
        let store = S3Store::new(&spec, &StoreOptions::default()).unwrap();
        let cache = Cache::new(Arc::new(store), "site/cache.tgz");
        let dir = tmp.path().join("deno-dir");
        if !dir.exists() {
            sample_tree(&dir);
        }
        let before = fs_state(&dir);
        let start = Instant::now();
        let opts = RestoreOptions { timeout: Duration::from_secs(2), ..Default::default() };
        let out = cache.restore(&dir, &opts).await;
        let took = start.elapsed();
        assert_eq!(out.reason(), Some(Reason::TimedOut), "{:?}", out.result);
        assert!(took < Duration::from_secs(3), "deadline 2 s, took {took:?}");
        settle();
        assert_eq!(before, fs_state(&dir));
    }
}

#[tokio::test]
async fn an_unreachable_store_is_a_store_error() {
    let tmp = tempfile::tempdir().unwrap();
    // Bind then drop: nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut spec = S3Spec::new("bucket");
    spec.endpoint = Some(format!("http://127.0.0.1:{port}"));
    let opts = StoreOptions { max_retries: 1, retry_timeout: Duration::from_secs(2), ..Default::default() };
    let cache = Cache::new(Arc::new(S3Store::new(&spec, &opts).unwrap()), "site/cache.tgz");
    let out = cache.restore(&tmp.path().join("d"), &quick()).await;
    assert_eq!(out.reason(), Some(Reason::StoreError), "{:?}", out.result);
    let src = tmp.path().join("src");
    sample_tree(&src);
    let out = cache.snapshot(&src, &SnapshotOptions::default()).await;
    assert_eq!(out.reason(), Some(Reason::StoreError), "{:?}", out.result);
    // A failed snapshot records nothing: the next one tries again.
    assert_eq!(cache.snapshot(&src, &SnapshotOptions::default()).await.reason(), Some(Reason::StoreError));
}

#[tokio::test]
async fn bad_keys_and_unwritable_targets_are_reasons_too() {
    let tmp = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(tmp.path().join("store")));
    let out = Cache::new(store.clone(), "../escape").restore(&tmp.path().join("d"), &quick()).await;
    assert_eq!(out.reason(), Some(Reason::Config));
    let src = tmp.path().join("src");
    sample_tree(&src);
    let cache = Cache::new(store, "site/cache");
    assert!(cache.snapshot(&src, &SnapshotOptions::default()).await.is_done());
    // The parent of the target is a file: nothing can be staged there.
    fs::write(tmp.path().join("file"), b"x").unwrap();
    let out = cache.restore(&tmp.path().join("file/deno-dir"), &quick()).await;
    assert_eq!(out.reason(), Some(Reason::IoError), "{:?}", out.result);
}

#[tokio::test]
async fn restore_swaps_atomically_and_cleans_old_trees_and_stale_staging() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, cache) = crate::support::stored_sample(tmp.path(), "site/cache").await;

    let parent = tmp.path().join("target");
    let dir = parent.join("deno-dir");
    fs::create_dir_all(dir.join("stale-package")).unwrap();
    fs::write(dir.join("stale-package/index.js"), b"old").unwrap();
    // Leftovers of a crashed run.
    fs::create_dir_all(parent.join(".deno-dir.sandcache-staging-999999-deadbeef/npm")).unwrap();
    fs::create_dir_all(parent.join(".deno-dir.sandcache-trash-999999-deadbeef")).unwrap();

    let out = cache.restore(&dir, &quick()).await;
    assert!(out.is_done(), "{:?}", out.result);
    // The restore replaces the dir whole: old content is gone from it.
    assert!(!dir.join("stale-package").exists());
    assert_same_tree(&src, &dir);
    settle();
    let mut names: Vec<String> =
        fs::read_dir(&parent).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    // A native restore keeps no index: the next snapshot rebuilds it from
    // the manifest. It keeps the manifest's pieces, for the next restore.
    assert_eq!(
        names,
        [".deno-dir.sandcache-pieces", ".deno-dir.sandcache-state.json", ".deno-dir.sandcache.lock", "deno-dir"]
    );
}

#[tokio::test]
async fn concurrent_restores_of_one_dir_take_turns() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, cache) = crate::support::stored_sample(tmp.path(), "site/cache").await;
    let dir = tmp.path().join("deno-dir");
    let opts = quick();
    let (a, b) = tokio::join!(cache.restore(&dir, &opts), cache.restore(&dir, &opts));
    assert!(a.is_done() && b.is_done(), "{:?} {:?}", a.result, b.result);
    assert_same_tree(&src, &dir);
}

/// The seed wrote `tar -czf - -C / deno-dir`; sandcache restores that.
#[tokio::test]
async fn restores_an_archive_written_by_the_seeds_tar() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("deno-dir");
    sample_tree(&src);
    let rel = src.strip_prefix("/").unwrap();
    let tgz = Command::new("tar").arg("-czf").arg("-").arg("-C").arg("/").arg(rel).output().unwrap();
    assert!(tgz.status.success());
    for store in stores("seed-interop", tmp.path()) {
        put(store.as_ref(), "site/cache.tgz", tgz.stdout.clone()).await;
        let cache = Cache::new(store.clone(), "site/cache.tgz");
        // Restored at the same absolute path, as the seed's runner would: move
        // the source away first.
        let moved = tmp.path().join("moved");
        fs::rename(&src, &moved).unwrap();
        let out = cache.restore(&src, &quick()).await;
        assert!(out.is_done(), "{:?}", out.result);
        assert_same_tree(&moved, &src);
        fs::remove_dir_all(&src).unwrap();
        fs::rename(&moved, &src).unwrap();
    }
    settle();
}

/// `--format tgz` is what a seed runner can read: `tar -xzf - -C /`.
#[tokio::test]
async fn a_tgz_snapshot_extracts_with_the_seeds_tar() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("deno-dir");
    sample_tree(&src);
    for store in stores("tgz-interop", tmp.path()) {
        let cache = Cache::new(store.clone(), "site/cache.tgz");
        let opts = SnapshotOptions { format: Format::Tgz, force: true, ..Default::default() };
        assert!(cache.snapshot(&src, &opts).await.is_done());
        let bytes = get(store.as_ref(), "site/cache.tgz").await;
        assert_eq!(&bytes[..2], &[0x1f, 0x8b], "gzip");
        let root = tempfile::tempdir().unwrap();
        let mut tar =
            Command::new("tar").arg("-xzf").arg("-").arg("-C").arg(root.path()).stdin(Stdio::piped()).spawn().unwrap();
        tar.stdin.take().unwrap().write_all(&bytes).unwrap();
        assert!(tar.wait().unwrap().success());
        assert_same_tree(&src, &root.path().join(src.strip_prefix("/").unwrap()));
    }
}

#[tokio::test]
async fn seed_envs_configure_the_cache() {
    let Some(spec) = sandcache_testkit::s3::spec("seed-envs") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("deno-dir");
    sample_tree(&src);
    // The test server's bucket has a per-test prefix; seed envs only name a
    // bucket, so write under a unique key instead.
    let key = format!("{}/cache.tgz", spec.prefix);
    let envs = [
        ("DECO_CACHE_S3_BUCKET", spec.bucket.as_str()),
        ("DECO_CACHE_S3_KEY", key.as_str()),
        ("DECO_CACHE_S3_ENDPOINT", spec.endpoint.as_deref().unwrap()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let cfg = sandcache_engine::CacheConfig::from_envs(&envs);
    let cache = Cache::open(&cfg, &StoreOptions::default());
    assert!(cache.snapshot(&src, &SnapshotOptions::default()).await.is_done());
    let dest = tmp.path().join("dest");
    let out = cache.restore(&dest, &quick()).await;
    assert!(out.is_done(), "{:?}", out.result);
    assert!(out.store.starts_with("s3://"));
    assert_same_tree(&src, &dest);
    settle();
}

/// Emptying a dir between two sites moves its tree aside at once, closed
/// to others (ours, 0700), and does not remove it then: the next restore
/// removes it after its swap (on ext4 a restore beside a mass delete is
/// several times slower), or `remove_leftovers` does, when idle.
#[tokio::test]
async fn a_cleared_tree_waits_closed_until_the_next_restore_or_idle() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let (dir, state) = (tmp.path().join("deno-dir"), tmp.path().join("state"));
    fs::create_dir_all(&state).unwrap();
    sample_tree(&dir);
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let leftovers = || -> Vec<std::path::PathBuf> {
        fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(".deno-dir.sandcache-trash-"))
            .collect()
    };
    sandcache_engine::clear_dir(&dir, Some(&state), Duration::from_secs(5)).await.unwrap();
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "emptied at once");
    let old = leftovers();
    assert_eq!(old.len(), 1, "{old:?}");
    let meta = fs::symlink_metadata(&old[0]).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o700, "closed to others");
    settle();
    assert!(old[0].exists(), "not removed yet");

    // The next restore removes it, after its swap.
    let (_src, cache) = crate::support::stored_sample(tmp.path(), "site/cache").await;
    let opts = RestoreOptions { state_dir: Some(state.clone()), ..quick() };
    assert!(cache.restore(&dir, &opts).await.is_done());
    settle();
    assert!(leftovers().is_empty(), "{:?}", leftovers());

    // Or, idle, remove_leftovers does.
    sandcache_engine::clear_dir(&dir, Some(&state), Duration::from_secs(5)).await.unwrap();
    assert_eq!(leftovers().len(), 1);
    let found = sandcache_engine::remove_leftovers(&dir, Some(&state), Duration::from_secs(5)).await.unwrap();
    assert_eq!(found, 1);
    settle();
    assert!(leftovers().is_empty());
}
