//! Delta restores: a dir that holds a generation this tool restored, and
//! has not changed since, gets another generation by writing only the units
//! that differ, in place; the result is the tree a full restore gives.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use sandcache_engine::{Cache, Format, Outcome, Reason, RestoreMode, RestoreOptions, SnapshotOptions};
use sandcache_store::{LocalStore, Store};
use sandcache_testkit::store::Wrapped;
use sandcache_testkit::tree::listing;

use crate::support::{quick, settle, snap};

const REG: &str = "npm/registry.npmjs.org";
const T0: u64 = 1_700_000_000;

/// A tree, by relative path: files and symlinks (directories follow).
type Tree = BTreeMap<String, Node>;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    File { body: String, mode: u32, mtime: u64 },
    Link(String),
}

/// Writes `tree` under `dir` (emptied first), every directory's mtime `T0`
/// and mode 0755, so that two trees differ only where their nodes do.
fn write(dir: &Path, tree: &Tree) {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).unwrap();
    for (rel, node) in tree {
        let p = dir.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        match node {
            Node::File { body, mode, mtime } => {
                fs::write(&p, body).unwrap();
                fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).unwrap();
                let t = SystemTime::UNIX_EPOCH + Duration::from_secs(*mtime);
                fs::File::open(&p).unwrap().set_times(fs::FileTimes::new().set_modified(t).set_accessed(t)).unwrap();
            }
            Node::Link(target) => {
                std::os::unix::fs::symlink(target, &p).unwrap();
                // Its own time too: else a tree written again across a
                // second's turn differs in its links.
                let t = rustix::fs::Timespec { tv_sec: T0 as i64, tv_nsec: 0 };
                let times = rustix::fs::Timestamps { last_access: t, last_modification: t };
                rustix::fs::utimensat(rustix::fs::CWD, &p, &times, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).unwrap();
            }
        }
    }
    set_dir_times(dir);
}

fn set_dir_times(dir: &Path) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            set_dir_times(&e.path());
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(T0);
            fs::File::open(e.path()).unwrap().set_times(fs::FileTimes::new().set_modified(t)).unwrap();
        }
    }
}

/// A package's files: each carries its name, version and `tag` (a rebuild
/// of the same version), so a reader can tell them apart.
fn package(tree: &mut Tree, name: &str, version: &str, tag: u32, files: usize, mode: u32) {
    for i in 0..files {
        let rel = if i % 3 == 2 { format!("lib/f{i}.js") } else { format!("f{i}.js") };
        let body = format!("{name}@{version}#{tag} {rel}\n");
        tree.insert(format!("{REG}/{name}/{version}/{rel}"), Node::File { body, mode, mtime: T0 });
    }
}

fn store_at(tmp: &Path) -> Arc<dyn Store> {
    Arc::new(LocalStore::new(tmp.join("store")))
}

async fn snapshot(cache: &Cache, src: &Path) {
    let out = cache.snapshot(src, &snap()).await;
    assert!(out.is_done() || out.reason() == Some(Reason::Unchanged), "{:?}", out.result);
}

async fn restore(cache: &Cache, dir: &Path) -> Outcome {
    let out = cache.restore(dir, &quick()).await;
    assert!(out.is_done(), "{:?}", out.result);
    out
}

fn mode_of(out: &Outcome) -> RestoreMode {
    out.result.as_ref().unwrap().mode
}

fn written(out: &Outcome) -> u64 {
    out.result.as_ref().unwrap().files_written
}

/// `dir`, after a delta, is the tree a full restore of the same generation
/// gives (into `fresh`).
async fn as_a_full_restore_gives(cache: &Cache, dir: &Path, fresh: &Path) {
    restore(cache, fresh).await;
    settle();
    assert_eq!(listing(dir), listing(fresh));
}

/// The generation the state beside `dir` names.
fn held_generation(dir: &Path) -> String {
    let state: serde_json::Value = serde_json::from_str(&fs::read_to_string(state_path(dir)).unwrap()).unwrap();
    state["generation"].as_str().unwrap().to_owned()
}

/// The state file a restore of `dir` writes beside it.
fn state_path(dir: &Path) -> PathBuf {
    dir.with_file_name(format!(".{}.sandcache-state.json", dir.file_name().unwrap().to_str().unwrap()))
}

fn sample() -> Tree {
    let mut t = Tree::new();
    package(&mut t, "a", "1.0.0", 0, 4, 0o644);
    package(&mut t, "@s/b", "2.0.0", 0, 3, 0o644);
    package(&mut t, "c", "1.0.0", 0, 5, 0o755);
    let file = |body: &str| Node::File { body: body.into(), mode: 0o644, mtime: T0 };
    t.insert(format!("{REG}/a/registry.json"), file("{\"a\":1}"));
    t.insert("remote/x.js".into(), file("export const x = 1;\n"));
    t.insert("remote/y.js".into(), file("export const y = 1;\n"));
    t.insert("remote/link".into(), Node::Link("x.js".into()));
    t
}

/// The sample stored and restored into `dir`: the test dir, the source,
/// the restored dir, a fresh dir for a full restore to compare with, and
/// the cache.
struct Restored {
    tmp: tempfile::TempDir,
    src: PathBuf,
    dir: PathBuf,
    fresh: PathBuf,
    cache: Cache,
}

async fn restored_sample() -> Restored {
    restored_sample_with(&quick()).await
}

/// [`restored_sample`], restored with `opts`.
async fn restored_sample_with(opts: &RestoreOptions) -> Restored {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dir, fresh) = (tmp.path().join("src"), tmp.path().join("d"), tmp.path().join("fresh"));
    write(&src, &sample());
    let cache = Cache::new(store_at(tmp.path()), "site/k");
    snapshot(&cache, &src).await;
    let out = cache.restore(&dir, opts).await;
    assert!(out.is_done(), "{:?}", out.result);
    Restored { tmp, src, dir, fresh, cache }
}

#[tokio::test]
async fn an_unchanged_generation_writes_nothing_and_json_says_delta() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dir) = (tmp.path().join("src"), tmp.path().join("d"));
    write(&src, &sample());
    let cache = Cache::new(store_at(tmp.path()), "site/k");
    snapshot(&cache, &src).await;
    let first = restore(&cache, &dir).await;
    let d = first.result.clone().unwrap();
    assert_eq!((d.mode, d.files_written, d.bytes_written), (RestoreMode::Full, d.files, d.bytes));
    let json = first.to_json();
    assert_eq!((json["mode"].as_str(), json["files_written"].as_u64()), (Some("full"), Some(d.files)), "{json}");

    let again = restore(&cache, &dir).await;
    let d2 = again.result.clone().unwrap();
    assert_eq!((d2.mode, d2.files_written, d2.bytes_written, d2.transferred), (RestoreMode::Delta, 0, 0, 0));
    assert_eq!((d2.files, d2.bytes), (d.files, d.bytes), "files and bytes: what the dir holds");
    let json = again.to_json();
    assert_eq!((json["mode"].as_str(), json["files_written"].as_u64()), (Some("delta"), Some(0)), "{json}");
    // The dir is as restored: a snapshot finds it unchanged (before
    // anything reads its files: reads make a new hot set).
    let snap_out = cache.snapshot(&dir, &snap()).await;
    assert_eq!(snap_out.reason(), Some(Reason::Unchanged), "{:?}", snap_out.result);
    settle();
    assert_eq!(listing(&dir), listing(&src));
}

#[tokio::test]
async fn a_file_touched_after_the_restore_is_written_again_never_trusted() {
    let Restored { tmp, src, dir, fresh, cache } = restored_sample().await;
    let same_times = |p: &Path| {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(T0);
        fs::File::open(p).unwrap().set_times(fs::FileTimes::new().set_modified(t).set_accessed(t)).unwrap();
    };
    // Content rewritten (same size, mtime put back).
    let x = dir.join("remote/x.js");
    fs::write(&x, "export const x = 2;\n").unwrap();
    same_times(&x);
    // Mode changed, and changed back.
    let y = dir.join("remote/y.js");
    fs::set_permissions(&y, fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(&y, fs::Permissions::from_mode(0o644)).unwrap();
    // Another file renamed into place in a package (same size and mtime).
    let f0 = dir.join(format!("{REG}/c/1.0.0/f0.js"));
    let other = tmp.path().join("other");
    fs::write(&other, fs::read_to_string(&f0).unwrap().replace("c@", "C@")).unwrap();
    fs::set_permissions(&other, fs::Permissions::from_mode(0o755)).unwrap();
    same_times(&other);
    fs::rename(&other, &f0).unwrap();
    // A file made in a package dir, and one outside any package.
    fs::write(dir.join(format!("{REG}/@s/b/2.0.0/extra.js")), "extra").unwrap();
    fs::write(dir.join("remote/extra.js"), "extra").unwrap();

    let out = restore(&cache, &dir).await;
    assert_eq!(mode_of(&out), RestoreMode::Delta);
    // x, y, and the packages c (5 files) and b (3 files); the extra outside
    // goes.
    assert_eq!(written(&out), 1 + 1 + 5 + 3, "{:?}", out.result);
    as_a_full_restore_gives(&cache, &dir, &fresh).await;
    assert_eq!(listing(&dir), listing(&src));
}

/// Deno's code cache is a database changed in place between generations:
/// a delta writes it from its copy on disk (the frames both versions hold
/// copied, the rest fetched), and the tree is a full restore's. A copy
/// touched since its restore (a byte of a page both versions share, its
/// mtime put back) is never trusted: the file is written from its frames.
#[tokio::test]
async fn a_cache_changed_in_place_is_written_from_its_copy_on_disk() {
    let rows = |db: &Path, from: i64, to: i64| {
        let c = rusqlite::Connection::open(db).unwrap();
        c.execute_batch("CREATE TABLE IF NOT EXISTS t (i INTEGER PRIMARY KEY, pad BLOB NOT NULL)").unwrap();
        for i in from..to {
            // Incompressible, so what is downloaded tells what was fetched.
            let mut pad = vec![0u8; 1024];
            blake3::Hasher::new().update(&i.to_le_bytes()).finalize_xof().fill(&mut pad);
            c.execute("INSERT OR REPLACE INTO t (i, pad) VALUES (?1, ?2)", rusqlite::params![i, pad]).unwrap();
        }
    };
    for touched in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dir, fresh) = (tmp.path().join("src"), tmp.path().join("d"), tmp.path().join("fresh"));
        write(&src, &sample());
        let db = src.join("v8_code_cache_v2");
        rows(&db, 0, 2500);
        let cache = Cache::new(store_at(tmp.path()), "site/k");
        snapshot(&cache, &src).await;
        restore(&cache, &dir).await;
        // Rows added, and one rewritten.
        rows(&db, 2500, 2600);
        rows(&db, 7, 8);
        // (Forced: a cache alone does not make the dir count as changed.)
        let out = cache.snapshot(&src, &SnapshotOptions { force: true, ..snap() }).await;
        assert!(out.is_done(), "{:?}", out.result);
        // Only the frames that changed went up: the rest are the first
        // generation's, referenced again.
        let size = fs::metadata(dir.join("v8_code_cache_v2")).unwrap().len();
        let added = out.result.as_ref().unwrap().pool_added;
        assert!(added < size / 4, "{added} bytes of packs added for a {size}-byte cache");
        if touched {
            let copy = dir.join("v8_code_cache_v2");
            let mut body = fs::read(&copy).unwrap();
            body[100] ^= 1;
            let mtime = fs::metadata(&copy).unwrap().modified().unwrap();
            fs::write(&copy, &body).unwrap();
            fs::File::open(&copy).unwrap().set_times(fs::FileTimes::new().set_modified(mtime)).unwrap();
        }
        let out = restore(&cache, &dir).await;
        assert_eq!(mode_of(&out), RestoreMode::Delta);
        assert_eq!(written(&out), 1, "the cache alone: {:?}", out.result);
        // What changed is downloaded; the rest is copied from the disk,
        // unless the copy was touched.
        let transferred = out.result.as_ref().unwrap().transferred;
        assert_eq!(transferred < size / 4, !touched, "{transferred} bytes downloaded for a {size}-byte cache");
        as_a_full_restore_gives(&cache, &dir, &fresh).await;
    }
}

/// The units the two manifests say differ are staged while the disk is
/// still being checked; a unit they share that was touched is found by the
/// check, and written too.
#[tokio::test]
async fn a_touched_file_is_written_beside_what_the_new_generation_changes() {
    let Restored { tmp: _tmp, src, dir, fresh, cache } = restored_sample().await;
    let mut next = sample();
    package(&mut next, "e", "3.0.0", 0, 4, 0o644);
    write(&src, &next);
    snapshot(&cache, &src).await;
    // Content rewritten, same size and mtime: only the ctime tells.
    let x = dir.join("remote/x.js");
    fs::write(&x, "export const x = 2;\n").unwrap();
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(T0);
    fs::File::open(&x).unwrap().set_times(fs::FileTimes::new().set_modified(t).set_accessed(t)).unwrap();

    let out = restore(&cache, &dir).await;
    assert_eq!(mode_of(&out), RestoreMode::Delta);
    // The new package (4 files) and x.
    assert_eq!(written(&out), 4 + 1, "{:?}", out.result);
    as_a_full_restore_gives(&cache, &dir, &fresh).await;
    assert_eq!(listing(&dir), listing(&src));
}

/// A hot-first restore records its bound after its second phase, while the
/// app already runs: what the app makes then has a ctime under the bound.
/// A new name still moves its directory's mtime, which is then listed.
#[tokio::test]
async fn a_package_the_app_made_before_the_bound_is_found_by_its_dirs_mtime() {
    let Restored { tmp: _tmp, dir, fresh, cache, .. } = restored_sample().await;
    // The app fetches a package, and writes a file at the top.
    let made = dir.join(format!("{REG}/zz/1.0.0"));
    fs::create_dir_all(&made).unwrap();
    fs::write(made.join("index.js"), "zz").unwrap();
    fs::write(dir.join("gen.txt"), "made").unwrap();
    // ... all before the bound.
    std::thread::sleep(Duration::from_millis(20));
    let state = fs::read_to_string(state_path(&dir)).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&state).unwrap();
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as i64;
    v["restored_until_ns"] = now.into();
    fs::write(state_path(&dir), v.to_string()).unwrap();
    std::thread::sleep(Duration::from_millis(20));

    let out = restore(&cache, &dir).await;
    assert_eq!((mode_of(&out), written(&out)), (RestoreMode::Delta, 0));
    as_a_full_restore_gives(&cache, &dir, &fresh).await;
}

/// Both sides of the property test: a universe of a few packages and
/// other paths, each present or not, in one of a few versions and forms.
fn tree_strategy() -> impl proptest::strategy::Strategy<Value = Tree> {
    use proptest::prelude::*;
    let pkg = proptest::option::of((0..2usize, 0..2u32, 2..5usize, prop::bool::ANY));
    let other = proptest::option::of((0..3u32, 0..2u32, prop::bool::ANY, prop::bool::ANY));
    (proptest::collection::vec(pkg, 4), proptest::collection::vec(other, 5)).prop_map(|(pkgs, others)| {
        let mut t = Tree::new();
        for (name, p) in ["a", "@s/b", "c", "d"].iter().zip(pkgs) {
            if let Some((version, tag, files, exec)) = p {
                let version = ["1.0.0", "1.1.0"][version];
                package(&mut t, name, version, tag, files, if exec { 0o755 } else { 0o644 });
            }
        }
        let paths = ["remote/x.js", "remote/sub/y.js", &format!("{REG}/a/registry.json"), "top.txt", "remote/z"];
        for (path, o) in paths.iter().zip(others) {
            let Some((form, tag, exec, later)) = o else { continue };
            let node = match form {
                // A symlink (a kind change where the other side has a file).
                2 => Node::Link(if tag == 0 { "x.js".into() } else { "../top.txt".into() }),
                _ => Node::File {
                    body: format!("{path} {form}{tag}\n"),
                    mode: if exec { 0o755 } else { 0o644 },
                    mtime: if later { T0 + 60 } else { T0 },
                },
            };
            t.insert((*path).to_owned(), node);
        }
        // A symlink at the top to `../top.txt` would point outside the dir.
        t.retain(|p, n| !(matches!(n, Node::Link(_)) && p == "top.txt"));
        // Never empty (an empty dir is never stored).
        t.insert("remote/always.js".into(), Node::File { body: "always\n".into(), mode: 0o644, mtime: T0 });
        t
    })
}

/// The units of `tree` (package dirs, other paths) and what each holds.
fn units(tree: &Tree) -> BTreeMap<String, Vec<(String, Node)>> {
    let mut out: BTreeMap<String, Vec<(String, Node)>> = BTreeMap::new();
    for (path, node) in tree {
        let comps: Vec<&str> = path.split('/').collect();
        let depth = if comps.get(2).is_some_and(|c| c.starts_with('@')) { 5 } else { 4 };
        let unit = match comps[0] == "npm" && comps.len() > depth {
            true => comps[..depth].join("/"),
            false => path.clone(),
        };
        out.entry(unit).or_default().push((path.clone(), node.clone()));
    }
    out
}

#[test]
fn a_delta_gives_the_tree_a_full_restore_gives_writing_what_differs() {
    use proptest::test_runner::{Config, TestRunner};
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut runner = TestRunner::new(Config { cases: 24, failure_persistence: None, ..Config::default() });
    let n = AtomicU64::new(0);
    let deltas = AtomicU64::new(0);
    runner
        .run(&(tree_strategy(), tree_strategy()), |(a, b)| {
            let i = n.fetch_add(1, Ordering::Relaxed);
            let tmp = tempfile::tempdir().unwrap();
            let (src_a, src_b) = (tmp.path().join("a"), tmp.path().join("b"));
            let (dir, fresh) = (tmp.path().join("d"), tmp.path().join("fresh"));
            write(&src_a, &a);
            write(&src_b, &b);
            rt.block_on(async {
                let cache = Cache::new(store_at(tmp.path()), format!("site/p{i}"));
                snapshot(&cache, &src_a).await;
                restore(&cache, &dir).await;
                snapshot(&cache, &src_b).await;
                let out = restore(&cache, &dir).await;
                restore(&cache, &fresh).await;
                settle();
                assert_eq!(listing(&dir), listing(&fresh), "a: {a:#?}\nb: {b:#?}");
                assert_eq!(listing(&fresh), listing(&src_b));
                let d = out.result.unwrap();
                let (ua, ub) = (units(&a), units(&b));
                let differs: u64 = ub.iter().filter(|(k, v)| ua.get(*k) != Some(v)).map(|(_, v)| v.len() as u64).sum();
                match d.mode {
                    RestoreMode::Delta => {
                        deltas.fetch_add(1, Ordering::Relaxed);
                        assert_eq!(d.files_written, differs, "a: {a:#?}\nb: {b:#?}");
                    }
                    RestoreMode::Full => {
                        assert_eq!(d.files_written, d.files);
                        assert_eq!(differs, d.files, "a full restore only when everything differs");
                    }
                }
            });
            Ok(())
        })
        .unwrap();
    assert!(deltas.load(Ordering::Relaxed) > 0, "some cases were deltas");
}

/// Package dirs under `dir`: `(name, version)` paths.
fn package_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(names) = fs::read_dir(dir.join(REG)) else { return out };
    for n in names.flatten() {
        let p = n.path();
        let versions = |p: &Path| fs::read_dir(p).map(|it| it.flatten().map(|e| e.path()).collect::<Vec<_>>());
        if n.file_name().to_string_lossy().starts_with('@') {
            for inner in fs::read_dir(&p).into_iter().flatten().flatten() {
                out.extend(versions(&inner.path()).unwrap_or_default().into_iter().filter(|v| v.is_dir()));
            }
        } else {
            out.extend(versions(&p).unwrap_or_default().into_iter().filter(|v| v.is_dir()));
        }
    }
    out
}

/// What one look at a package dir saw: `None` when it is whole (every
/// file of one name@version#tag, as many as that build has), else why not.
/// The dir is read through one fd; a dir moved away while it was read (its
/// files may be going) says nothing.
fn look(pkg: &Path, count: &dyn Fn(&str) -> usize) -> Option<String> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(pkg, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW, Mode::empty()).ok()?;
    let first = rustix::fs::fstat(&fd).ok()?;
    let mut bodies = Vec::new();
    let mut stack = vec![(Arc::new(fd), String::new())];
    while let Some((d, rel)) = stack.pop() {
        let mut listing = rustix::fs::Dir::read_from(&*d).ok()?;
        while let Some(Ok(e)) = listing.read() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == "." || name == ".." {
                continue;
            }
            let flags = OFlags::RDONLY | OFlags::NOFOLLOW;
            let Ok(f) = rustix::fs::openat(&*d, name.as_str(), flags, Mode::empty()) else { continue };
            if rustix::fs::fstat(&f).is_ok_and(|s| rustix::fs::FileType::from_raw_mode(s.st_mode).is_dir()) {
                stack.push((Arc::new(f), format!("{rel}{name}/")));
            } else {
                let mut body = String::new();
                let _ = std::io::Read::read_to_string(&mut fs::File::from(f), &mut body);
                bodies.push(body);
            }
        }
    }
    // Still the dir at that path: what was read was in place all along.
    let still_there = || fs::symlink_metadata(pkg).is_ok_and(|m| (m.dev(), m.ino()) == (first.st_dev, first.st_ino));
    let builds: std::collections::BTreeSet<String> =
        bodies.iter().map(|b| b.split(' ').next().unwrap_or_default().to_owned()).collect();
    let why = match builds.len() {
        1 if bodies.len() == count(builds.first().unwrap()) => return None,
        1 => format!("{}: {} files of {}", pkg.display(), bodies.len(), builds.first().unwrap()),
        _ => format!("{}: mixes {builds:?}", pkg.display()),
    };
    still_there().then_some(why)
}

#[tokio::test]
async fn a_reader_never_sees_a_partial_or_mixed_package_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let (src_a, src_b, dir) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("d"));
    let (mut a, mut b) = (Tree::new(), Tree::new());
    for i in 0..8 {
        let name = format!("p{i}");
        package(&mut a, &name, "1.0.0", 0, 30, 0o644);
        match i % 4 {
            0 => package(&mut b, &name, "1.0.0", 0, 30, 0o644), // kept
            1 => package(&mut b, &name, "1.0.0", 1, 30, 0o644), // rebuilt: exchanged
            2 => package(&mut b, &name, "2.0.0", 0, 30, 0o644), // bumped
            _ => {}                                             // removed
        }
    }
    package(&mut b, "new", "1.0.0", 0, 30, 0o644);
    write(&src_a, &a);
    write(&src_b, &b);
    let store = store_at(tmp.path());
    let (ka, kb) = (Cache::new(store.clone(), "site/a"), Cache::new(store.clone(), "site/b"));
    snapshot(&ka, &src_a).await;
    snapshot(&kb, &src_b).await;
    restore(&ka, &dir).await;

    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, dir) = (stop.clone(), dir.clone());
        std::thread::spawn(move || {
            let (mut looks, mut bad) = (0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                for pkg in package_dirs(&dir) {
                    looks += 1;
                    bad.extend(look(&pkg, &|_| 30));
                }
            }
            (looks, bad)
        })
    };
    // Back and forth: every kind of unit change, both ways, many times.
    for round in 0..6 {
        let (cache, want) = if round % 2 == 0 { (&kb, RestoreMode::Delta) } else { (&ka, RestoreMode::Delta) };
        let out = restore(cache, &dir).await;
        assert_eq!(mode_of(&out), want, "round {round}");
    }
    stop.store(true, Ordering::Relaxed);
    let (looks, bad) = reader.join().unwrap();
    assert!(looks > 0);
    assert!(
        bad.is_empty(),
        "{} of {looks} looks saw a package dir not whole: {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    settle();
    assert_eq!(listing(&dir), listing(&src_a), "back and forth, the last one A");
}

#[tokio::test]
async fn a_delta_cut_by_the_deadline_names_neither_generation_and_the_next_restore_is_full() {
    let tmp = tempfile::tempdir().unwrap();
    let (src_a, src_b, dir) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("d"));
    let mut b = sample();
    package(&mut b, "a", "1.0.0", 1, 4, 0o644);
    package(&mut b, "e", "3.0.0", 0, 4, 0o644);
    b.remove("remote/y.js");
    write(&src_a, &sample());
    write(&src_b, &b);
    let store = store_at(tmp.path());
    let cache = Cache::new(store.clone(), "site/k");
    snapshot(&cache, &src_a).await;
    restore(&cache, &dir).await;
    snapshot(&cache, &src_b).await;

    // Packs come slower than the deadline.
    let slow: Arc<dyn Store> = Arc::new(Wrapped::new(store.clone()).delay_packs(Duration::from_secs(5)));
    let opts = RestoreOptions { timeout: Duration::from_millis(1500), ..quick() };
    let out = Cache::new(slow, "site/k").restore(&dir, &opts).await;
    assert_eq!(out.reason(), Some(Reason::TimedOut), "{:?}", out.result);
    settle();
    // Every unit whole, and the state names neither generation.
    let state = fs::read_to_string(state_path(&dir)).unwrap_or_default();
    assert!(!state.contains("manifests/"), "{state}");
    for pkg in package_dirs(&dir) {
        assert_eq!(
            look(&pkg, &|b| if b.starts_with("c@") {
                5
            } else if b.starts_with("@s/b@") {
                3
            } else {
                4
            }),
            None
        );
    }
    // No snapshot stores it.
    let skipped = cache.snapshot(&dir, &snap()).await;
    assert_eq!(skipped.reason(), Some(Reason::Incomplete), "{:?}", skipped.result);

    let out = restore(&cache, &dir).await;
    assert_eq!(mode_of(&out), RestoreMode::Full);
    let unchanged = cache.snapshot(&dir, &snap()).await;
    assert_eq!(unchanged.reason(), Some(Reason::Unchanged), "{:?}", unchanged.result);
    settle();
    assert_eq!(listing(&dir), listing(&src_b));
}

#[tokio::test]
async fn without_a_state_to_trust_a_restore_is_full() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dir) = (tmp.path().join("src"), tmp.path().join("d"));
    write(&src, &sample());
    let store = store_at(tmp.path());
    let cache = Cache::new(store.clone(), "site/k");
    snapshot(&cache, &src).await;
    assert_eq!(mode_of(&restore(&cache, &dir).await), RestoreMode::Full);
    assert_eq!(mode_of(&restore(&cache, &dir).await), RestoreMode::Delta);

    // No state.
    fs::remove_file(state_path(&dir)).unwrap();
    assert_eq!(mode_of(&restore(&cache, &dir).await), RestoreMode::Full);

    // A state without the bound (a snapshot's, say).
    let state = fs::read_to_string(state_path(&dir)).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&state).unwrap();
    v.as_object_mut().unwrap().remove("restored_until_ns");
    fs::write(state_path(&dir), v.to_string()).unwrap();
    assert_eq!(mode_of(&restore(&cache, &dir).await), RestoreMode::Full);

    // Another store holding the same generation.
    let other_dir = tmp.path().join("other-store");
    copy_dir(&tmp.path().join("store"), &other_dir);
    let other = Cache::new(Arc::new(LocalStore::new(&other_dir)), "site/k");
    assert_eq!(mode_of(&restore(&other, &dir).await), RestoreMode::Full);
    assert_eq!(mode_of(&restore(&other, &dir).await), RestoreMode::Delta);

    // A single archive is always restored whole.
    let tgz = Cache::new(store.clone(), "site/tgz");
    let out = tgz.snapshot(&src, &SnapshotOptions { format: Format::Tgz, ..snap() }).await;
    assert!(out.is_done(), "{:?}", out.result);
    assert_eq!(mode_of(&restore(&tgz, &dir).await), RestoreMode::Full);
    assert_eq!(mode_of(&restore(&tgz, &dir).await), RestoreMode::Full);
    settle();
    assert_eq!(listing(&dir), listing(&src));
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A name that no manifest holds (not UTF-8) in a directory inside a
/// package, made after the restore: the package is written again, never
/// kept with it.
#[tokio::test]
async fn a_name_that_cannot_be_listed_in_a_package_makes_it_written_again() {
    use std::os::unix::ffi::OsStrExt;
    let Restored { tmp: _tmp, src, dir, fresh, cache } = restored_sample().await;
    let lib = dir.join(format!("{REG}/a/1.0.0/lib"));
    fs::write(lib.join(std::ffi::OsStr::from_bytes(b"bad-\xff.js")), "x").unwrap();
    // Its directory's mtime put back: only its ctime and its listing tell.
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(T0);
    fs::File::open(&lib).unwrap().set_times(fs::FileTimes::new().set_modified(t)).unwrap();

    let out = restore(&cache, &dir).await;
    assert_eq!((mode_of(&out), written(&out)), (RestoreMode::Delta, 4), "package a again: {:?}", out.result);
    as_a_full_restore_gives(&cache, &dir, &fresh).await;
    assert_eq!(listing(&dir), listing(&src));
}

/// A newer generation of the sample, stored: package `c` bumped to 1.0.1
/// (5 files).
async fn stored_with_c_bumped(cache: &Cache, src: &Path) {
    let mut next = sample();
    next.retain(|p, _| !p.starts_with(&format!("{REG}/c/")));
    package(&mut next, "c", "1.0.1", 0, 5, 0o755);
    write(src, &next);
    snapshot(cache, src).await;
}

/// The generation the dir holds is read from the root its restore kept
/// beside the pieces: a delta needs no request for it, and still works
/// when the store no longer has it.
#[tokio::test]
async fn the_held_generations_root_is_read_from_the_local_cache() {
    let Restored { tmp, src, dir, fresh, cache } = restored_sample().await;
    let held = held_generation(&dir);
    stored_with_c_bumped(&cache, &src).await;
    // The store loses the held generation's root.
    fs::remove_file(tmp.path().join("store").join(&held)).unwrap();

    let out = restore(&cache, &dir).await;
    assert_eq!((mode_of(&out), written(&out)), (RestoreMode::Delta, 5), "{:?}", out.result);
    as_a_full_restore_gives(&cache, &dir, &fresh).await;

    // A kept root that is not the generation's own (another's, planted)
    // is never trusted: its manifest's digest is not the state's, and the
    // restore is full.
    let pieces = dir.with_file_name(format!(".{}.sandcache-pieces", dir.file_name().unwrap().to_str().unwrap()));
    let now_held = held_generation(&dir);
    let name = |g: &str| format!("{}.tree", blake3::hash(format!("root of {g}").as_bytes()).to_hex());
    let (ours, other) = (pieces.join(name(&now_held)), pieces.join(name(&held)));
    assert!(ours.is_file() && other.is_file(), "both roots kept");
    fs::copy(&other, &ours).unwrap();
    fs::remove_file(tmp.path().join("store").join(&now_held)).unwrap();
    write(&src, &sample());
    snapshot(&cache, &src).await;
    let out = restore(&cache, &dir).await;
    assert_eq!(mode_of(&out), RestoreMode::Full, "{:?}", out.result);
    settle();
    assert_eq!(listing(&dir), listing(&src));
}

/// With `remember` (the runner's), the generation a restore wrote stays in
/// memory: the next delta of the dir in this process reads neither its
/// root nor its pieces. Trusted only through the state's digest: a state
/// recording another digest is not taken for it, and the restore is full.
#[tokio::test]
async fn a_remembered_generation_is_checked_without_reading_its_manifest() {
    let remember = RestoreOptions { remember: true, ..quick() };
    let Restored { tmp, src, dir, cache, .. } = restored_sample_with(&remember).await;
    let held = held_generation(&dir);
    stored_with_c_bumped(&cache, &src).await;
    // Its root can be read neither from the store nor locally.
    fs::remove_file(tmp.path().join("store").join(&held)).unwrap();
    let pieces = dir.with_file_name(".d.sandcache-pieces");
    let root = format!("{}.tree", blake3::hash(format!("root of {held}").as_bytes()).to_hex());
    fs::remove_file(pieces.join(root)).unwrap();

    let out = cache.restore(&dir, &remember).await;
    assert_eq!((mode_of(&out), written(&out)), (RestoreMode::Delta, 5), "{:?}", out.result);
    settle();
    assert_eq!(listing(&dir), listing(&src));

    // The state records another digest: neither the remembered manifest
    // nor any other copy is taken for what the dir holds.
    let path = state_path(&dir);
    let mut state: serde_json::Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    state["digest"] = serde_json::Value::String("0".repeat(64));
    fs::write(&path, state.to_string()).unwrap();
    write(&src, &sample());
    snapshot(&cache, &src).await;
    let out = cache.restore(&dir, &remember).await;
    assert_eq!(mode_of(&out), RestoreMode::Full, "{:?}", out.result);
    settle();
    assert_eq!(listing(&dir), listing(&src));
}

/// The dir named `dir`, once checked while idle (see `watch_idle`).
fn wait_idle_checked(dir: &Path) {
    let started = std::time::Instant::now();
    while !sandcache_engine::idle_checked(dir) {
        assert!(started.elapsed() < Duration::from_secs(20), "{} was not checked while idle", dir.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// With `watch_idle` (the runner's pre-warm), the dir is checked while idle
/// and watched: the next delta starts from that check and gives the tree
/// a full restore gives. A file touched after it voids it: the delta checks
/// for itself, and the file is written again.
#[tokio::test]
async fn a_dir_checked_while_idle_is_restored_from_that_check_until_touched() {
    let watched = RestoreOptions { remember: true, watch_idle: true, ..quick() };
    let Restored { tmp: _tmp, src, dir, fresh, cache } = restored_sample_with(&watched).await;
    wait_idle_checked(&dir);
    stored_with_c_bumped(&cache, &src).await;
    let out = cache.restore(&dir, &watched).await;
    assert_eq!((mode_of(&out), written(&out)), (RestoreMode::Delta, 5), "{:?}", out.result);

    // Checked again after that delta (before anything reads the dir: a
    // read voids it too); then a file rewritten, its size and times as
    // they were.
    wait_idle_checked(&dir);
    let x = dir.join("remote/x.js");
    fs::write(&x, "export const x = 2;\n").unwrap();
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(T0);
    fs::File::open(&x).unwrap().set_times(fs::FileTimes::new().set_modified(t).set_accessed(t)).unwrap();
    let out = cache.restore(&dir, &watched).await;
    assert_eq!((mode_of(&out), written(&out)), (RestoreMode::Delta, 1), "{:?}", out.result);
    settle();
    assert_eq!(listing(&dir), listing(&src));
    as_a_full_restore_gives(&cache, &dir, &fresh).await;
}
