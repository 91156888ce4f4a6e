//! The hot set (files read since they were restored or written, from
//! access times) and the two-phase restore built on it: hot files first,
//! swapped in at `hot-ready`, the rest landing whole in the live dir.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sandcache_engine::{Cache, Reason, RestoreOptions, SnapshotOptions};
use sandcache_store::{LocalStore, Store};
use sandcache_testkit::generations;
use sandcache_testkit::store::Wrapped;
use sandcache_testkit::tree::{contents, settle_times};

use crate::support::snap;

fn hot_first() -> RestoreOptions {
    RestoreOptions { hot_first: true, timeout: Duration::from_secs(30), ..Default::default() }
}

/// Content that does not compress, so frames and packs fill as sized.
fn noise(seed: u32, len: usize) -> Vec<u8> {
    (0..len.div_ceil(4) as u32)
        .flat_map(|i| {
            (i ^ seed.wrapping_mul(0x9e37_79b9)).wrapping_mul(2654435761).rotate_left(seed % 31).to_le_bytes()
        })
        .take(len)
        .collect()
}

/// 150 files of 64 KiB in 6 packages, a 12 MiB file (three frames), an
/// empty file and a symlink: about 22 MiB, so several frames and packs, and
/// more than a restore prefetches whole (16 MiB): the rest is read by range. Returns
/// each file's expected content by relative path.
fn write_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut want = BTreeMap::new();
    for i in 0..150u32 {
        let rel = format!("npm/pkg{}/file{i:03}.js", i % 6);
        want.insert(rel, noise(i, 64 << 10));
    }
    want.insert("bin/big".into(), noise(999, 12 << 20));
    want.insert("npm/empty".into(), Vec::new());
    for (rel, data) in &want {
        let p = dir.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
        settle_times(&p);
    }
    std::os::unix::fs::symlink("pkg0/file000.js", dir.join("npm/link.js")).unwrap();
    want
}

/// What a Deno boot does to its DENO_DIR: reads some files.
const HOT: [&str; 5] =
    ["npm/pkg0/file000.js", "npm/pkg1/file007.js", "npm/pkg2/file050.js", "npm/pkg3/file099.js", "npm/pkg5/file149.js"];

fn read_hot(dir: &Path) {
    for rel in HOT {
        fs::read(dir.join(rel)).unwrap();
    }
}

/// Whether reads move access times where `dir` lives (not `noatime`).
fn tracks_reads(dir: &Path) -> bool {
    rustix::fs::statvfs(dir).is_ok_and(|v| !v.f_flag.contains(rustix::fs::StatVfsMountFlags::NOATIME))
}

/// A temporary dir where reads move access times; `None` (the test skips,
/// and says so) where it is mounted `noatime`.
fn tmp_tracking_reads() -> Option<tempfile::TempDir> {
    let tmp = tempfile::tempdir().unwrap();
    if !tracks_reads(tmp.path()) {
        eprintln!("skipping: {} is mounted noatime", tmp.path().display());
        return None;
    }
    Some(tmp)
}

fn expected(want: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, Vec<u8>> {
    let mut all = want.clone();
    all.insert("npm/link.js".into(), b"-> pkg0/file000.js".to_vec());
    all
}

fn tail_temps(dir: &Path) -> Vec<String> {
    contents(dir)
        .into_keys()
        .filter(|k| k.rsplit('/').next().unwrap().starts_with(sandcache_archive::TAIL_PREFIX))
        .collect()
}

/// A source tree written, then partly read: its snapshot records exactly
/// what was read as hot, and packs hot content apart from cold.
async fn stored_with_hot_set(store: &Arc<dyn Store>, key: &str, src: &Path) -> BTreeMap<String, Vec<u8>> {
    let want = write_tree(src);
    read_hot(src);
    let out = Cache::new(store.clone(), key).snapshot(src, &snap()).await;
    assert!(out.is_done(), "{:?}", out.result);
    want
}

#[tokio::test]
async fn reads_since_written_are_the_hot_set_and_hot_content_packs_apart() {
    let Some(tmp) = tmp_tracking_reads() else { return };
    for store in super::stores("hot-set", tmp.path()) {
        let src = tmp.path().join(format!("src-{}", store.to_string().len()));
        stored_with_hot_set(&store, "site/hot", &src).await;
        let m = generations::newest_whole(store.as_ref(), "site/hot").await.unwrap();
        let hot: Vec<&str> = m.entries.iter().filter(|e| e.hot).map(|e| e.path.as_str()).collect();
        assert_eq!(hot, HOT.to_vec(), "exactly the files read are hot");

        // Hot content fills packs of its own, listed first: a hot-first
        // restore fetches no cold byte with it.
        let packs_of = |hot: bool| -> std::collections::BTreeSet<u32> {
            m.entries
                .iter()
                .filter(|e| e.hot == hot && e.size > 0)
                .map(|e| m.frames[e.frame.unwrap() as usize].pack)
                .collect()
        };
        let (hot_packs, cold_packs) = (packs_of(true), packs_of(false));
        assert!(hot_packs.is_disjoint(&cold_packs), "{hot_packs:?} {cold_packs:?}");
        assert!(hot_packs.last() < cold_packs.first(), "hot packs come first: {hot_packs:?} {cold_packs:?}");

        // The snapshot read every file, and moved no access time: taken
        // again (without the fingerprint shortcut), the hot set is the same.
        let again =
            Cache::new(store.clone(), "site/hot").snapshot(&src, &SnapshotOptions { force: true, ..snap() }).await;
        assert_eq!(again.reason(), Some(Reason::Unchanged), "{:?}", again.result);

        // A restore leaves access time = mtime: nothing is hot until read.
        let dest = tmp.path().join(format!("dest-{}", store.to_string().len()));
        let out = Cache::new(store.clone(), "site/hot").restore(&dest, &RestoreOptions::default()).await;
        assert!(out.is_done(), "{:?}", out.result);
        super::settle();
        // Its fingerprint came from the manifest, and matches the disk.
        let unchanged = Cache::new(store.clone(), "site/hot").snapshot(&dest, &snap()).await;
        assert_eq!(unchanged.reason(), Some(Reason::Unchanged), "{:?}", unchanged.result);
        fs::read(dest.join("npm/pkg4/file010.js")).unwrap();
        // What the app read since the restore differs from the hot set it
        // was restored with: recorded again, though the tree is as restored
        // (no --force: the fingerprint alone would say unchanged).
        let moved = Cache::new(store.clone(), "site/hot").snapshot(&dest, &snap()).await;
        assert!(moved.is_done(), "a new hot set is a new generation: {:?}", moved.result);
        // Its content moves to a hot pack (it sat among cold content);
        // nothing else is uploaded.
        let moved = moved.result.unwrap();
        assert!(moved.pool_added < (64 << 10) + (16 << 10), "the file, and the manifest: {moved:?}");
        let m = generations::newest_whole(store.as_ref(), "site/hot").await.unwrap();
        let hot: Vec<&str> = m.entries.iter().filter(|e| e.hot).map(|e| e.path.as_str()).collect();
        assert_eq!(hot, vec!["npm/pkg4/file010.js"]);
    }
    super::settle();
}

#[tokio::test]
async fn hot_first_swaps_the_hot_set_in_then_lands_the_rest_whole() {
    let Some(tmp) = tmp_tracking_reads() else { return };
    for inner in super::stores("hot-first", tmp.path()) {
        let tag = inner.to_string().len();
        let want = stored_with_hot_set(&inner, "site/two", &tmp.path().join(format!("src-{tag}"))).await;
        let gate = Arc::new(Wrapped::new(inner.clone()).delay_ranged(Duration::from_millis(300)));
        let store: Arc<dyn Store> = gate.clone();
        let dest = tmp.path().join(format!("dest-{tag}"));
        let mut handle = Cache::new(store.clone(), "site/two").restore_handle(&dest, &hot_first());
        let hot = handle.hot_ready().await.expect("hot-ready");

        // At hot-ready: every hot file whole, every directory and symlink.
        for rel in HOT {
            assert_eq!(fs::read(dest.join(rel)).unwrap(), want[rel], "{rel}");
        }
        for d in ["npm/pkg0", "npm/pkg5", "bin"] {
            assert!(dest.join(d).is_dir(), "{d}");
        }
        assert_eq!(fs::read_link(dest.join("npm/link.js")).unwrap(), Path::new("pkg0/file000.js"));

        // The app makes a path the tail would write: it is left alone.
        let claimed = "npm/pkg4/file004.js";
        let mine = fs::OpenOptions::new().write(true).create_new(true).open(dest.join(claimed)).map(|mut f| {
            std::io::Write::write_all(&mut f, b"the app's own").unwrap();
        });

        // Meanwhile a reader goes over every file in a loop: any file it
        // finds is whole.
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let (dest, want, done) = (dest.clone(), want.clone(), done.clone());
            std::thread::spawn(move || {
                let mut seen_missing = 0u64;
                while !done.load(Ordering::SeqCst) {
                    for (rel, data) in &want {
                        match fs::read(dest.join(rel)) {
                            Ok(got) if rel == claimed => assert!(got == *data || got == b"the app's own"),
                            Ok(got) => {
                                assert!(got == *data, "{rel} seen partial: {} of {} bytes", got.len(), data.len())
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => seen_missing += 1,
                            Err(e) => panic!("{rel}: {e}"),
                        }
                    }
                }
                seen_missing
            })
        };
        let out = handle.finish().await;
        done.store(true, Ordering::SeqCst);
        let missing_seen = reader.join().unwrap();
        assert!(out.is_done(), "{:?}", out.result);
        assert_eq!(out.hot, Some(hot));
        assert!(hot < out.elapsed, "hot-ready {hot:?} before completion {:?}", out.elapsed);
        assert!(gate.delayed() > 0, "the tail came after hot-ready");
        assert!(missing_seen > 0, "the reader saw the tail land");
        let json = out.to_json();
        assert!(json["hot_ms"].as_u64().unwrap() <= json["ms"].as_u64().unwrap());

        let mut all = expected(&want);
        if mine.is_ok() {
            all.insert(claimed.into(), b"the app's own".to_vec());
        }
        assert_eq!(contents(&dest), all);
        assert!(tail_temps(&dest).is_empty());
        super::settle();
        // Complete: snapshots are allowed again, and see what the app made.
        // (The check above read every file: a new hot set, so a new
        // generation either way.)
        let after = Cache::new(inner.clone(), "site/two").snapshot(&dest, &snap()).await;
        assert!(after.is_done(), "{:?}", after.result);
    }
    super::settle();
}

#[tokio::test]
async fn a_tail_cut_by_the_deadline_leaves_a_usable_tree_that_no_snapshot_stores() {
    let Some(tmp) = tmp_tracking_reads() else { return };
    let inner: Arc<dyn Store> = Arc::new(LocalStore::new(tmp.path().join("store")));
    let want = stored_with_hot_set(&inner, "site/cut", &tmp.path().join("src")).await;
    let gate = Arc::new(Wrapped::new(inner.clone()).delay_ranged(Duration::from_secs(60)));
    let store: Arc<dyn Store> = gate.clone();
    let dest = tmp.path().join("dest");
    let opts = RestoreOptions { timeout: Duration::from_secs(3), ..hot_first() };
    let mut handle = Cache::new(store, "site/cut").restore_handle(&dest, &opts);
    handle.hot_ready().await.expect("hot-ready");
    let out = handle.finish().await;
    assert_eq!(out.reason(), Some(Reason::TimedOut), "{:?}", out.result);
    assert!(out.hot.is_some());
    super::settle();

    // Usable: the hot set and the files that shared its frames are whole;
    // nothing is partial, no temporary file is left.
    let now = contents(&dest);
    for rel in HOT {
        assert_eq!(now[rel], want[rel]);
    }
    for (rel, data) in &now {
        if let Some(w) = expected(&want).get(rel) {
            assert_eq!(data, w, "{rel}");
        }
    }
    assert!(now.len() < expected(&want).len(), "the tail was cut");
    assert!(tail_temps(&dest).is_empty());

    // A snapshot would store a partial cache: it skips, and says why.
    let snap_out = Cache::new(inner.clone(), "site/cut").snapshot(&dest, &snap()).await;
    assert_eq!(snap_out.reason(), Some(Reason::Incomplete), "{:?}", snap_out.result);
    assert_eq!(generations::manifests(inner.as_ref(), "site/cut").await.unwrap().len(), 1);

    // The next restore completes it.
    let again = Cache::new(inner.clone(), "site/cut").restore(&dest, &RestoreOptions::default()).await;
    assert!(again.is_done(), "{:?}", again.result);
    assert_eq!(contents(&dest), expected(&want));
    // Complete: stored again (the check above read every file, a new hot
    // set), with no content to upload.
    let after = Cache::new(inner.clone(), "site/cut").snapshot(&dest, &snap()).await;
    assert!(after.is_done(), "{:?}", after.result);
    let after = after.result.unwrap();
    assert!(after.pool_added < after.bytes / 2, "no more than what turned hot: {after:?}");
    super::settle();
}

#[tokio::test]
async fn the_tail_fetches_no_frame_phase_one_fetched() {
    let Some(tmp) = tmp_tracking_reads() else { return };
    let inner: Arc<dyn Store> = Arc::new(LocalStore::new(tmp.path().join("store")));
    let want = stored_with_hot_set(&inner, "site/once", &tmp.path().join("src")).await;
    // The app now reads two of the five hot files: the other three went
    // cold but stay in the hot pack's frame, beside the two.
    let first = tmp.path().join("first");
    let out = Cache::new(inner.clone(), "site/once").restore(&first, &RestoreOptions::default()).await;
    assert!(out.is_done(), "{:?}", out.result);
    super::settle();
    for rel in &HOT[..2] {
        fs::read(first.join(rel)).unwrap();
    }
    let moved = Cache::new(inner.clone(), "site/once").snapshot(&first, &snap()).await;
    assert!(moved.is_done(), "{:?}", moved.result);
    let m = generations::newest_whole(inner.as_ref(), "site/once").await.unwrap();
    let frame_of = |rel: &str| m.entries.iter().find(|e| e.path == rel).unwrap().frame.unwrap();
    assert!(m.entries.iter().find(|e| e.path == HOT[0]).unwrap().hot);
    assert!(!m.entries.iter().find(|e| e.path == HOT[4]).unwrap().hot);
    assert_eq!(frame_of(HOT[0]), frame_of(HOT[4]), "a frame with hot and cold files");

    // The same generation, whole and hot-first: the same bytes fetched.
    let mut fetched = Vec::new();
    for (name, opts) in [("whole", RestoreOptions::default()), ("hot-first", hot_first())] {
        let store = Arc::new(Wrapped::new(inner.clone()).gone_if(|key| key.ends_with(".pack")));
        let dest = tmp.path().join(name);
        let out = Cache::new(store.clone(), "site/once").restore(&dest, &opts).await;
        assert!(out.is_done(), "{name}: {:?}", out.result);
        assert_eq!(out.hot.is_some(), name == "hot-first");
        assert_eq!(contents(&dest), expected(&want), "{name}");
        let bytes = store.ranged_bytes();
        assert_eq!(out.result.as_ref().unwrap().transferred, bytes, "{name}: the outcome says what was fetched");
        fetched.push(bytes);
        super::settle();
    }
    assert_eq!(fetched[0], fetched[1], "whole, then hot-first");

    // With packs prefetched whole (and sliced by both phases), each counts
    // once: both modes say they moved the same bytes.
    let mut moved = Vec::new();
    for (name, opts) in [("whole-2", RestoreOptions::default()), ("hot-first-2", hot_first())] {
        let out = Cache::new(inner.clone(), "site/once").restore(&tmp.path().join(name), &opts).await;
        assert!(out.is_done(), "{name}: {:?}", out.result);
        moved.push(out.result.unwrap().transferred);
        super::settle();
    }
    assert_eq!(moved[0], moved[1], "whole, then hot-first, prefetching");
}

/// Mounts a tmpfs with `opts` at `at`; false where mounting is not allowed.
fn mount_tmpfs(at: &Path, opts: &str) -> bool {
    fs::create_dir_all(at).unwrap();
    std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
        .arg(at)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn umount(at: &Path) {
    let _ = std::process::Command::new("umount").arg("-l").arg(at).status();
}

/// Whether a read of a file whose atime = mtime shows, through the walker.
fn read_shows(dir: &Path) -> bool {
    let p = dir.join("probe");
    fs::write(&p, b"probe").unwrap();
    settle_times(&p);
    fs::read(&p).unwrap();
    let tree = sandcache_archive::walk::Tree::open(dir, &Default::default()).unwrap().unwrap();
    let mut read = None;
    tree.walk::<sandcache_archive::WalkError>(&mut |e| {
        if e.rel() == Path::new("probe") {
            read = Some(tree.tracks_reads() && e.meta().read_since_written());
        }
        Ok(sandcache_archive::walk::Step::Continue)
    })
    .unwrap();
    read.unwrap()
}

/// How access times behave on the filesystems a DENO_DIR lives on: tmpfs
/// (relatime, strictatime, noatime), overlayfs (a container's root) and
/// the test dir's own (ext4 here). Needs root to mount; skipped otherwise.
#[test]
fn access_times_per_mount() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(read_shows(tmp.path()), "{} (relatime by default)", tmp.path().display());
    let base = tmp.path().join("mnt");
    if !mount_tmpfs(&base, "size=64m") {
        eprintln!("skipping the mounts: not allowed to mount here");
        return;
    }
    let cases = [("relatime", true), ("strictatime", true), ("noatime", false)];
    for (opt, shows) in cases {
        let at = base.join(opt);
        assert!(mount_tmpfs(&at, &format!("size=8m,{opt}")));
        assert_eq!(read_shows(&at), shows, "tmpfs {opt}");
        umount(&at);
    }
    // overlayfs: reads of a lower file, and of a file copied up.
    for d in ["lower", "upper", "work", "merged"] {
        fs::create_dir_all(base.join(d)).unwrap();
    }
    let lower = base.join("lower/old");
    fs::write(&lower, b"from the image").unwrap();
    settle_times(&lower);
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        base.join("lower").display(),
        base.join("upper").display(),
        base.join("work").display()
    );
    let merged = base.join("merged");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&merged)
        .status()
        .is_ok_and(|s| s.success());
    if mounted {
        assert!(read_shows(&merged), "overlayfs upper");
        umount(&merged);
    } else {
        eprintln!("overlayfs not available here");
    }
    umount(&base);
}

#[tokio::test]
async fn on_noatime_everything_is_hot_and_the_restore_has_one_phase() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    if !mount_tmpfs(&mnt, "size=64m,noatime") {
        eprintln!("skipping: not allowed to mount here");
        return;
    }
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(tmp.path().join("store")));
    let want = stored_with_hot_set(&store, "site/noatime", &mnt.join("src")).await;
    let m = generations::newest_whole(store.as_ref(), "site/noatime").await.unwrap();
    assert!(m.entries.iter().all(|e| !e.hot), "no hot set can be known on noatime");
    let dest = tmp.path().join("dest");
    let mut handle = Cache::new(store, "site/noatime").restore_handle(&dest, &hot_first());
    handle.hot_ready().await.expect("hot-ready");
    // One phase: at hot-ready, everything is there.
    assert_eq!(contents(&dest), expected(&want));
    let out = handle.finish().await;
    assert!(out.is_done(), "{:?}", out.result);
    super::settle();
    umount(&mnt);
}

fn piece_key(id: &str) -> String {
    format!("pool/{}/{id}.tree", &id[..2])
}

/// Every file under `dest` is whole (as `want` has it), and no tail
/// temporary is left.
fn all_whole(dest: &Path, want: &BTreeMap<String, Vec<u8>>) {
    let all = expected(want);
    for (rel, got) in contents(dest) {
        assert_eq!(Some(&got), all.get(&rel), "{rel}");
    }
    assert!(tail_temps(dest).is_empty());
}

#[tokio::test]
async fn phase_one_reads_the_hot_piece_alone_and_the_tail_checks_it_against_the_whole() {
    let Some(tmp) = tmp_tracking_reads() else { return };
    let inner: Arc<dyn Store> = Arc::new(LocalStore::new(tmp.path().join("store")));
    let want = stored_with_hot_set(&inner, "site/piece", &tmp.path().join("src")).await;
    let (root_key, root) = generations::manifests(inner.as_ref(), "site/piece").await.unwrap().pop().unwrap();
    // A few dozen entries: one hot piece (a piece holds at least 64).
    let [hot_ref] = root.hot.clone().try_into().expect("a generation with a hot set has a hot piece");
    let whole = generations::newest_whole(inner.as_ref(), "site/piece").await.unwrap();
    let hot =
        sandcache_archive::pack::Manifest::decode(&super::get(inner.as_ref(), &piece_key(&hot_ref.id)).await).unwrap();
    // The hot piece: every entry but the files that are not hot, in order.
    let outside = |e: &&sandcache_archive::pack::Entry| e.size == 0 || e.hot;
    let paths =
        |es: &mut dyn Iterator<Item = &sandcache_archive::pack::Entry>| es.map(|e| e.path.clone()).collect::<Vec<_>>();
    assert_eq!(paths(&mut hot.entries.iter()), paths(&mut whole.entries.iter().filter(outside)));
    assert!(HOT.iter().all(|h| hot.entries.iter().any(|e| e.path == *h)));
    assert!(hot.entries.len() < whole.entries.len() / 2, "{} of {}", hot.entries.len(), whole.entries.len());
    // gc keeps it with its root.
    let keep = sandcache_engine::GcOptions { keep: 1, grace: Duration::ZERO, ..Default::default() };
    sandcache_engine::gc_store(inner.as_ref(), &keep).await.unwrap();
    assert!(inner.head(&piece_key(&hot_ref.id)).await.unwrap().is_some(), "gc kept the hot piece");

    // Every other piece lost: hot-ready comes from the hot piece alone;
    // then the tail cannot know its files, and the hot set stays usable.
    let gone: Vec<String> = root.pieces.iter().map(|p| piece_key(&p.id)).collect();
    let store: Arc<dyn Store> = Arc::new(Wrapped::new(inner.clone()).gone(gone));
    let dest = tmp.path().join("no-pieces");
    let mut handle = Cache::new(store, "site/piece").restore_handle(&dest, &hot_first());
    assert!(handle.hot_ready().await.is_some(), "hot-ready from the hot piece alone");
    let out = handle.finish().await;
    assert_eq!(out.reason(), Some(Reason::NotFound), "{:?}", out.result);
    assert!(out.to_json()["detail"].as_str().unwrap().contains("the hot set is in place"), "{}", out.to_json());
    // The tail never learned its files: `npm` went whole (see
    // `a_tail_that_does_not_land_leaves_no_incomplete_npm_package`).
    super::settle();
    assert!(!dest.join("npm").exists());
    all_whole(&dest, &want);

    // The hot piece lost: the restore reads the whole manifest first and
    // is complete as ever.
    let gone = vec![piece_key(&hot_ref.id)];
    let store: Arc<dyn Store> = Arc::new(Wrapped::new(inner.clone()).gone(gone));
    let dest = tmp.path().join("no-hot-piece");
    let out = Cache::new(store, "site/piece").restore(&dest, &hot_first()).await;
    assert!(out.is_done(), "{:?}", out.result);
    assert_eq!(contents(&dest), expected(&want));
    super::settle();

    // A newer root whose hot piece disagrees with its manifest (a hot
    // file's mtime changed): the hot set lands, the tail is refused as
    // corrupt, no file is partial, and no npm package dir is kept.
    let mut forged = hot.clone();
    forged.entries.iter_mut().find(|e| e.path == HOT[0]).unwrap().mtime += 1;
    let bytes = forged.encode();
    let id = blake3::hash(&bytes).to_hex().to_string();
    super::put(inner.as_ref(), &piece_key(&id), bytes.clone()).await;
    let mut new_root = root.clone();
    new_root.hot = vec![sandcache_archive::pack::PieceRef { id, size: bytes.len() as u64, entries: hot_ref.entries }];
    let ms: u64 = root_key.rsplit('/').next().unwrap().split('-').next().unwrap().parse().unwrap();
    super::put(inner.as_ref(), &format!("site/piece.d/manifests/{}-forged.json.zst", ms + 1), new_root.encode()).await;
    // Written as a writer without a pointer would (an older binary): the
    // restore lists, and finds the forged generation newest.
    inner.delete("site/piece.d/latest").await.unwrap();
    let dest = tmp.path().join("disagrees");
    let out = Cache::new(inner.clone(), "site/piece").restore(&dest, &hot_first()).await;
    assert_eq!(out.reason(), Some(Reason::Corrupt), "{:?}", out.result);
    assert!(out.to_json()["detail"].as_str().unwrap().contains("disagrees"), "{}", out.to_json());
    super::settle();
    assert!(!dest.join("npm").exists(), "no package list to trust: npm goes whole");
    all_whole(&dest, &want);
    // Restored all at once, the same generation is whole: the hot piece
    // is read only hot-first.
    let dest = tmp.path().join("all-first");
    let out = Cache::new(inner.clone(), "site/piece").restore(&dest, &RestoreOptions::default()).await;
    assert!(out.is_done(), "{:?}", out.result);
    assert_eq!(contents(&dest), expected(&want));
    super::settle();
}

/// A DENO_DIR's npm layout: package `a` with a hot and a cold file, `@s/b`
/// all cold, `c` all hot, a package's `registry.json` and a remote module,
/// both cold.
fn write_npm_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let reg = "npm/registry.npmjs.org";
    let mut want = BTreeMap::new();
    want.insert(format!("{reg}/a/1.0.0/index.js"), noise(1, 64 << 10));
    want.insert(format!("{reg}/a/1.0.0/lib/cold.js"), noise(2, 64 << 10));
    want.insert(format!("{reg}/a/registry.json"), noise(3, 4 << 10));
    for i in 0..30 {
        want.insert(format!("{reg}/@s/b/2.0.0/dist/f{i:02}.js"), noise(10 + i, 64 << 10));
    }
    want.insert(format!("{reg}/c/3.0.0/index.js"), noise(4, 64 << 10));
    want.insert("remote/https/x.test/mod.ts".into(), noise(5, 4 << 10));
    for (rel, data) in &want {
        let p = dir.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
        settle_times(&p);
    }
    for rel in [format!("{reg}/a/1.0.0/index.js"), format!("{reg}/c/3.0.0/index.js")] {
        fs::read(dir.join(rel)).unwrap();
    }
    want
}

/// Deno takes an npm package dir that exists for complete and never fetches
/// its missing files. A tail that does not land moves away every package
/// dir it left incomplete (a cold miss Deno fetches again, whole) and keeps
/// the complete ones; with the tail's own list unknown (the whole manifest
/// never came after a hot piece), `npm` goes whole.
#[tokio::test]
async fn a_tail_that_does_not_land_leaves_no_incomplete_npm_package() {
    let Some(tmp) = tmp_tracking_reads() else { return };
    let inner: Arc<dyn Store> = Arc::new(LocalStore::new(tmp.path().join("store")));
    let want = write_npm_tree(&tmp.path().join("src"));
    let out = Cache::new(inner.clone(), "site/npm").snapshot(&tmp.path().join("src"), &snap()).await;
    assert!(out.is_done(), "{:?}", out.result);
    let (_, root) = generations::manifests(inner.as_ref(), "site/npm").await.unwrap().pop().unwrap();
    assert!(!root.hot.is_empty(), "a hot piece");
    let reg = "npm/registry.npmjs.org";

    // The tail cut by the deadline while it fetches by range.
    let store: Arc<dyn Store> = Arc::new(Wrapped::new(inner.clone()).delay_ranged(Duration::from_secs(60)));
    let dest = tmp.path().join("cut");
    let opts = RestoreOptions { timeout: Duration::from_secs(2), ..hot_first() };
    let out = Cache::new(store, "site/npm").restore(&dest, &opts).await;
    assert_eq!(out.reason(), Some(Reason::TimedOut), "{:?}", out.result);
    super::settle();
    let now = contents(&dest);
    assert!(!dest.join(format!("{reg}/a/1.0.0")).exists(), "a lacks lib/cold.js: {:?}", now.keys());
    assert!(!dest.join(format!("{reg}/@s/b/2.0.0")).exists(), "b lacks every file");
    let c = format!("{reg}/c/3.0.0/index.js");
    assert_eq!(now.get(&c), Some(&want[&c]), "c is complete: it stays");
    assert!(dest.join(format!("{reg}/a")).is_dir() && dest.join("remote/https/x.test").is_dir());
    for (rel, data) in &now {
        assert_eq!(Some(data), want.get(rel), "{rel}: whole, or not there");
    }
    assert!(tail_temps(&dest).is_empty(), "no trash left: {:?}", tail_temps(&dest));

    // Every piece but the hot one lost: the tail never learns its files,
    // and no package dir can be trusted.
    let gone: Vec<String> = root.pieces.iter().map(|p| piece_key(&p.id)).collect();
    let store: Arc<dyn Store> = Arc::new(Wrapped::new(inner.clone()).gone(gone));
    let dest = tmp.path().join("unknown");
    let out = Cache::new(store, "site/npm").restore(&dest, &hot_first()).await;
    assert_eq!(out.reason(), Some(Reason::NotFound), "{:?}", out.result);
    super::settle();
    assert!(!dest.join("npm").exists(), "{:?}", contents(&dest).keys());
    assert!(dest.join("remote/https/x.test").is_dir());
    assert!(tail_temps(&dest).is_empty());

    // A tail that lands keeps everything.
    let dest = tmp.path().join("whole");
    let out = Cache::new(inner.clone(), "site/npm").restore(&dest, &hot_first()).await;
    assert!(out.is_done(), "{:?}", out.result);
    assert_eq!(contents(&dest), want);
    super::settle();
}

/// A cold pack overwritten (same length): the first hot-first restore puts
/// the hot set in place and its tail fails, once, and marks the pack. The
/// next hot-first restore of that generation, knowing the pack bad, runs in
/// one phase: it falls through before any swap (no partial tree, no
/// `incomplete` marker keeping the site from ever snapshotting again), and
/// the site starts cold.
#[tokio::test]
async fn a_known_bad_cold_pack_makes_the_next_hot_first_restore_one_phase() {
    let Some(tmp) = tmp_tracking_reads() else { return };
    for store in super::stores("hot-bad-cold", tmp.path()) {
        let src = tmp.path().join(format!("src-{}", store.to_string().len()));
        stored_with_hot_set(&store, "site/hot", &src).await;
        let (_, root) = generations::manifests(store.as_ref(), "site/hot").await.unwrap().remove(0);
        let cold = root.packs.iter().find(|p| !p.hot).expect("a cold pack");
        let victim = format!("pool/{}/{}.pack", &cold.id[..2], cold.id);
        super::put(store.as_ref(), &victim, vec![0x5a; cold.size as usize]).await;

        let first = tmp.path().join(format!("first-{}", store.to_string().len()));
        let out = Cache::new(store.clone(), "site/hot").restore(&first, &hot_first()).await;
        assert_eq!(out.reason(), Some(Reason::Corrupt), "{}", out.to_json());
        assert!(out.hot.is_some(), "the tail failed after hot-ready: {}", out.to_json());
        super::settle();
        let marks: Vec<String> = store.list("pool/bad/").await.unwrap().into_iter().map(|o| o.key).collect();
        assert_eq!(marks, [format!("pool/bad/{}.pack", cold.id)]);

        let next = tmp.path().join(format!("next-{}", store.to_string().len()));
        let out = Cache::new(store.clone(), "site/hot").restore(&next, &hot_first()).await;
        assert_eq!(out.reason(), Some(Reason::Corrupt), "{}", out.to_json());
        assert!(out.hot.is_none(), "one phase, nothing swapped in: {}", out.to_json());
        assert!(!next.exists() || fs::read_dir(&next).unwrap().count() == 0, "no partial tree");
        super::settle();
    }
}
