//! Deno's own SQLite caches (issue 14, part 5): stored as consistent
//! copies, in both formats, even while a writer holds them open in WAL
//! mode; a torn or garbage one, a symlink named like one, and every other
//! database are left out; the copy is made outside DIR, which is never
//! written; and the caches do not make a dir count as changed.
//!
//! With `SANDCACHE_DENO` (and `SANDCACHE_DENO_OLD`, another version) set,
//! real Deno writes the caches, holds them open while they are
//! snapshotted, and reads them back after a restore, across versions too.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use sandcache_engine::{Cache, Format, Reason, SnapshotOptions};
use sandcache_store::{LocalStore, Store};
use sandcache_testkit::tree::sandbox_state;

use crate::support::quick;

const FORMATS: [(Format, &str); 2] = [(Format::Native, "site/sqlite"), (Format::Tgz, "site/sqlite.tgz")];

fn snap(format: Format) -> SnapshotOptions {
    SnapshotOptions { format, force: true, timeout: Duration::from_secs(60), ..Default::default() }
}

/// Row `i`'s payload: 1 KiB that says which row it is.
fn pad(i: i64) -> Vec<u8> {
    i.to_le_bytes().repeat(128)
}

/// A database in WAL mode with `synchronous=NORMAL`, as Deno opens its
/// caches, and a checkpoint every 64 pages (so the main file is written
/// often too).
fn wal_db(path: &Path) -> Connection {
    let c = Connection::open(path).unwrap();
    let mode: String = c.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    c.pragma_update(None, "synchronous", "NORMAL").unwrap();
    c.pragma_update(None, "wal_autocheckpoint", 64).unwrap();
    c.execute_batch("CREATE TABLE IF NOT EXISTS t (i INTEGER PRIMARY KEY, pad BLOB NOT NULL)").unwrap();
    c
}

fn insert(c: &Connection, i: i64) {
    c.execute("INSERT INTO t (i, pad) VALUES (?1, ?2)", rusqlite::params![i, pad(i)]).unwrap();
}

/// A restored copy: no companions beside it, it passes `integrity_check`,
/// and it holds rows 0..n with their payloads, exactly (a prefix of the
/// writes). Returns n.
fn check_prefix(db: &Path) -> i64 {
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut companion = db.as_os_str().to_owned();
        companion.push(suffix);
        assert!(!Path::new(&companion).exists(), "{companion:?} was restored");
    }
    // Read a private copy: opening the restored file would make a -shm.
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("db");
    fs::copy(db, &copy).unwrap();
    let c = Connection::open_with_flags(&copy, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok", "{}", db.display());
    let mut stmt = c.prepare("SELECT i, pad FROM t ORDER BY i").unwrap();
    let rows: Vec<(i64, Vec<u8>)> =
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().collect::<Result<_, _>>().unwrap();
    for (n, (i, p)) in rows.iter().enumerate() {
        assert_eq!(*i, n as i64, "row {n} of {}: not a prefix", db.display());
        assert_eq!(*p, pad(*i), "row {i} of {}", db.display());
    }
    rows.len() as i64
}

fn restore_to(dir: &Path) -> PathBuf {
    dir.join("deno-dir")
}

/// Every file under `dir`, read whole.
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                out.extend(fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// No scratch dir stays behind, beside DIR or in the state dir.
fn no_scratch_left(dirs: &[&Path]) {
    super::settle();
    for d in dirs {
        let left: Vec<_> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("sqlite"))
            .collect();
        assert!(left.is_empty(), "left in {}: {left:?}", d.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_written_while_snapshotted_restores_whole_in_both_formats() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("src/deno-dir");
    fs::create_dir_all(dir.join("npm/registry.npmjs.org/ms/2.1.3")).unwrap();
    fs::write(dir.join("npm/registry.npmjs.org/ms/2.1.3/index.js"), b"module.exports = 1;\n").unwrap();
    let db = dir.join("v8_code_cache_v2");
    let writer = wal_db(&db);
    // The writer keeps one connection open and inserts rows 0, 1, 2... one
    // transaction each, in bursts with pauses, until told to stop.
    let (stop, written) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicI64::new(0)));
    let thread = {
        let (stop, written) = (stop.clone(), written.clone());
        std::thread::spawn(move || {
            let mut i = 0i64;
            let mut seed = 0x2545_f491u32;
            while !stop.load(Ordering::Relaxed) {
                let burst = Instant::now();
                while burst.elapsed() < Duration::from_millis(40) {
                    insert(&writer, i);
                    i += 1;
                    written.store(i, Ordering::Relaxed);
                }
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                std::thread::sleep(Duration::from_millis(40 + u64::from(seed % 160)));
            }
            i
        })
    };
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(tmp.path().join("store")));
    let (mut kept, mut seen) = (0, Vec::new());
    for round in 0..6 {
        for (format, key) in FORMATS {
            let cache = Cache::new(store.clone(), key);
            let before = written.load(Ordering::Relaxed);
            let out = cache.snapshot(&dir, &snap(format)).await;
            let after = written.load(Ordering::Relaxed);
            if out.reason() == Some(Reason::Unchanged) {
                continue;
            }
            assert!(out.is_done(), "{format:?}: {:?}", out.result);
            let dest = restore_to(&tmp.path().join(format!("dest-{round}-{format:?}")));
            let got = cache.restore(&dest, &quick()).await;
            assert!(got.is_done(), "{format:?}: {:?}", got.result);
            assert_eq!(
                fs::read(dest.join("npm/registry.npmjs.org/ms/2.1.3/index.js")).unwrap(),
                b"module.exports = 1;\n"
            );
            if dest.join("v8_code_cache_v2").exists() {
                let n = check_prefix(&dest.join("v8_code_cache_v2"));
                // What was committed before the snapshot started, at least.
                assert!(n >= before && n <= after, "{format:?}: {n} rows, {before}..{after} written");
                kept += 1;
                seen.push(n);
            }
        }
        tokio::time::sleep(Duration::from_millis(37)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let total = thread.join().unwrap();
    assert!(total > 100, "the writer wrote {total} rows");
    assert!(kept >= 4, "most snapshots keep the cache: {kept} of 12 ({seen:?})");
    no_scratch_left(&[dir.parent().unwrap()]);
}

/// A cache written without a pause is never copied while it changes: it is
/// left out once the busy timeout passes, and the rest is written.
#[test]
fn a_cache_never_left_alone_is_left_out_not_copied_torn() {
    use sandcache_archive::{Encoding, Layout, SqliteOptions, WriteOptions, write_archive};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("deno-dir");
    fs::create_dir_all(dir.join("remote")).unwrap();
    fs::write(dir.join("remote/mod.js"), b"export {};\n").unwrap();
    let db = wal_db(&dir.join("v8_code_cache_v2"));
    insert(&db, 0);
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 1;
            while !stop.load(Ordering::Relaxed) {
                insert(&db, i);
                i += 1;
            }
            i
        })
    };
    let scratch = tmp.path().join("scratch");
    let sqlite = SqliteOptions { busy_timeout: Duration::from_millis(300), ..SqliteOptions::new(&scratch) };
    let opts = WriteOptions { sqlite: Some(sqlite), ..WriteOptions::new(Layout::Relative, Encoding::None) };
    let mut tar = Vec::new();
    let started = Instant::now();
    let stats = write_archive(&dir, &mut tar, &opts).unwrap();
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    assert!(thread.join().unwrap() > 10);
    let names: Vec<String> = tar::Archive::new(&tar[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(names.iter().any(|n| n == "remote/mod.js"), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("v8_code_cache")), "{names:?}");
    assert!(stats.skipped >= 1);
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(5), "{took:?}");
    assert!(!scratch.exists(), "the scratch dir is removed");
}

#[tokio::test]
async fn torn_garbage_and_empty_caches_are_left_out_and_good_ones_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("deno-dir");
    fs::create_dir_all(dir.join("remote")).unwrap();
    fs::write(dir.join("remote/mod.js"), b"export {};\n").unwrap();
    // Good: a WAL database, its rows still in the -wal (as Deno leaves them).
    let good = wal_db(&dir.join("node_analysis_cache_v2"));
    for i in 0..50 {
        insert(&good, i);
    }
    // Torn: a real database with pages overwritten mid-file, as a copy
    // taken across a checkpoint could be. Its header is intact.
    {
        let c = Connection::open(dir.join("dep_analysis_cache_v2")).unwrap();
        c.execute_batch("CREATE TABLE t (i INTEGER PRIMARY KEY, pad BLOB NOT NULL)").unwrap();
        for i in 0..200 {
            insert(&c, i);
        }
    }
    let mut torn = fs::read(dir.join("dep_analysis_cache_v2")).unwrap();
    for page in (4096..torn.len()).step_by(3 * 4096) {
        torn[page..page + 100].fill(0xa5);
    }
    fs::write(dir.join("dep_analysis_cache_v2"), &torn).unwrap();
    // Garbage under a cache's name, and an empty one.
    fs::write(dir.join("v8_code_cache_v2"), vec![7u8; 10_000]).unwrap();
    fs::write(dir.join("check_cache_v2"), b"").unwrap();
    for (format, key) in FORMATS {
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(tmp.path().join(format!("store-{format:?}"))));
        let cache = Cache::new(store, key);
        let out = cache.snapshot(&dir, &snap(format)).await;
        assert!(out.is_done(), "{format:?}: {:?}", out.result);
        let dest = restore_to(&tmp.path().join(format!("dest-{format:?}")));
        assert!(cache.restore(&dest, &quick()).await.is_done());
        assert_eq!(check_prefix(&dest.join("node_analysis_cache_v2")), 50, "{format:?}");
        for gone in ["dep_analysis_cache_v2", "v8_code_cache_v2", "check_cache_v2"] {
            assert!(!dest.join(gone).exists(), "{format:?}: {gone} was stored");
        }
        assert!(dest.join("remote/mod.js").is_file());
    }
    drop(good);
}

#[tokio::test]
async fn a_symlink_named_like_a_cache_or_its_wal_is_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("deno-dir");
    fs::create_dir_all(dir.join("remote")).unwrap();
    fs::write(dir.join("remote/mod.js"), b"export {};\n").unwrap();
    // Outside DIR: a database holding a secret, and another's WAL.
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let secret = b"TOP-SECRET-ROW-0123456789";
    {
        let c = Connection::open(outside.join("secret.db")).unwrap();
        c.execute_batch("CREATE TABLE t (i INTEGER PRIMARY KEY, pad BLOB NOT NULL)").unwrap();
        c.execute("INSERT INTO t VALUES (0, ?1)", [&secret[..]]).unwrap();
    }
    symlink(outside.join("secret.db"), dir.join("v8_code_cache_v2")).unwrap();
    // A real cache whose -wal is a symlink to a WAL outside (holding the
    // secret): the database is left out rather than read with it.
    let w = wal_db(&outside.join("other.db"));
    w.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    w.execute("INSERT INTO t VALUES (0, ?1)", [&secret[..]]).unwrap();
    fs::copy(outside.join("other.db"), dir.join("dep_analysis_cache_v2")).unwrap();
    symlink(outside.join("other.db-wal"), dir.join("dep_analysis_cache_v2-wal")).unwrap();
    // Below the top level, a cache's name means nothing: a symlink is
    // stored as a link, like any other.
    fs::create_dir(dir.join("sub")).unwrap();
    symlink("../remote/mod.js", dir.join("sub/v8_code_cache_v2")).unwrap();
    for (format, key) in FORMATS {
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(tmp.path().join(format!("store-{format:?}"))));
        let cache = Cache::new(store, key);
        let out = cache.snapshot(&dir, &snap(format)).await;
        assert!(out.is_done(), "{format:?}: {:?}", out.result);
        let dest = restore_to(&tmp.path().join(format!("dest-{format:?}")));
        assert!(cache.restore(&dest, &quick()).await.is_done());
        for gone in ["v8_code_cache_v2", "dep_analysis_cache_v2", "dep_analysis_cache_v2-wal"] {
            assert!(fs::symlink_metadata(dest.join(gone)).is_err(), "{format:?}: {gone} was stored");
        }
        assert!(fs::symlink_metadata(dest.join("sub/v8_code_cache_v2")).unwrap().is_symlink());
        assert!(!contains(&all_bytes(&dest), secret), "{format:?}: the secret was stored");
        if format == Format::Tgz {
            let raw = fs::read(tmp.path().join(format!("store-{format:?}")).join(key)).unwrap();
            let mut tar = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&raw[..]), &mut tar).unwrap();
            assert!(!contains(&tar, secret));
        }
    }
    drop(w);
}

#[tokio::test]
async fn other_databases_and_deeper_caches_are_still_left_out() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("deno-dir");
    fs::create_dir_all(dir.join("location_data/abc")).unwrap();
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("sub/keep.txt"), b"kept").unwrap();
    let mut dbs = Vec::new();
    // A database Deno has but a boot does not read, one of an app's, a
    // cache's name below the top, and the real cache.
    for rel in ["fmt_incremental_cache_v2", "kv.sqlite3", "location_data/abc/local_storage", "sub/v8_code_cache_v2"] {
        let c = wal_db(&dir.join(rel));
        insert(&c, 0);
        dbs.push(c);
    }
    let real = wal_db(&dir.join("v8_code_cache_v2"));
    insert(&real, 0);
    for (format, key) in FORMATS {
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(tmp.path().join(format!("store-{format:?}"))));
        let cache = Cache::new(store, key);
        assert!(cache.snapshot(&dir, &snap(format)).await.is_done());
        let dest = restore_to(&tmp.path().join(format!("dest-{format:?}")));
        assert!(cache.restore(&dest, &quick()).await.is_done());
        for rel in ["fmt_incremental_cache_v2", "kv.sqlite3", "location_data/abc/local_storage", "sub/v8_code_cache_v2"]
        {
            for suffix in ["", "-wal", "-shm"] {
                let p = dest.join(format!("{rel}{suffix}"));
                assert!(!p.exists(), "{format:?}: {} was stored", p.display());
            }
        }
        assert_eq!(fs::read(dest.join("sub/keep.txt")).unwrap(), b"kept");
        assert_eq!(check_prefix(&dest.join("v8_code_cache_v2")), 1);
    }
}

/// Deno writes its caches on every run: that alone is no reason to upload
/// a generation. When something else changed, the snapshot takes them as
/// they are then. The copy is made outside DIR (in the state dir), and
/// DIR is not written at all.
#[tokio::test]
async fn the_caches_do_not_count_as_a_change_and_dir_is_never_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("deno-dir");
    let state = tmp.path().join("state");
    fs::create_dir_all(dir.join("remote")).unwrap();
    fs::create_dir(&state).unwrap();
    fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(dir.join("remote/mod.js"), b"export {};\n").unwrap();
    let db = wal_db(&dir.join("v8_code_cache_v2"));
    for i in 0..10 {
        insert(&db, i);
    }
    // As Deno leaves it: data in the -wal; and no -shm, so that a reader
    // opening the file in place would have to make one.
    drop(db);
    let db = wal_db(&dir.join("v8_code_cache_v2"));
    db.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    for i in 10..20 {
        insert(&db, i);
    }
    let _ = fs::remove_file(dir.join("v8_code_cache_v2-shm"));
    std::thread::sleep(Duration::from_millis(100));
    let mut rows = 20;
    for (format, key) in FORMATS {
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(tmp.path().join(format!("store-{format:?}"))));
        let cache = Cache::new(store, key);
        let opts = SnapshotOptions { force: false, state_dir: Some(state.clone()), ..snap(format) };
        let before = sandbox_state(&dir, &[], &[]);
        let first = cache.snapshot(&dir, &opts).await;
        assert!(first.is_done(), "{format:?}: {:?}", first.result);
        assert_eq!(sandbox_state(&dir, &[], &[]), before, "{format:?}: DIR was written");
        no_scratch_left(&[&state, tmp.path()]);

        insert(&db, rows);
        rows += 1;
        std::thread::sleep(Duration::from_millis(100));
        let again = cache.snapshot(&dir, &opts).await;
        assert_eq!(again.reason(), Some(Reason::Unchanged), "{format:?}: {:?}", again.result);
        let dest = restore_to(&tmp.path().join(format!("dest-{format:?}-1")));
        assert!(cache.restore(&dest, &quick()).await.is_done());
        assert_eq!(check_prefix(&dest.join("v8_code_cache_v2")), rows - 1, "{format:?}");
        // A restored dir whose cache Deno then wrote is unchanged too (for
        // native, against the fingerprint the restore took from its
        // manifest).
        super::settle();
        insert(&Connection::open(dest.join("v8_code_cache_v2")).unwrap(), 1000);
        std::thread::sleep(Duration::from_millis(100));
        let restored = cache.snapshot(&dest, &SnapshotOptions { force: false, ..snap(format) }).await;
        assert_eq!(restored.reason(), Some(Reason::Unchanged), "{format:?}: {:?}", restored.result);

        fs::write(dir.join("remote/new.js"), b"export const x = 1;\n").unwrap();
        let changed = cache.snapshot(&dir, &opts).await;
        assert!(changed.is_done(), "{format:?}: {:?}", changed.result);
        let dest = restore_to(&tmp.path().join(format!("dest-{format:?}-2")));
        assert!(cache.restore(&dest, &quick()).await.is_done());
        assert_eq!(check_prefix(&dest.join("v8_code_cache_v2")), rows, "{format:?}");
        no_scratch_left(&[&state, tmp.path()]);
        fs::remove_file(dir.join("remote/new.js")).unwrap();
    }
}

/// Copies are made only where no other uid can reach them: a state dir
/// others may write leaves the caches out (and the rest is stored).
#[tokio::test]
async fn a_scratch_dir_others_could_change_leaves_the_caches_out() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("deno-dir");
    let state = tmp.path().join("state");
    fs::create_dir_all(dir.join("remote")).unwrap();
    fs::create_dir(&state).unwrap();
    fs::set_permissions(&state, fs::Permissions::from_mode(0o777)).unwrap();
    fs::write(dir.join("remote/mod.js"), b"export {};\n").unwrap();
    let db = wal_db(&dir.join("v8_code_cache_v2"));
    insert(&db, 0);
    std::thread::sleep(Duration::from_millis(100));
    for (format, key) in FORMATS {
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(tmp.path().join(format!("store-{format:?}"))));
        let cache = Cache::new(store, key);
        let opts = SnapshotOptions { state_dir: Some(state.clone()), ..snap(format) };
        assert!(cache.snapshot(&dir, &opts).await.is_done());
        let dest = restore_to(&tmp.path().join(format!("dest-{format:?}")));
        assert!(cache.restore(&dest, &quick()).await.is_done());
        assert!(dest.join("remote/mod.js").is_file());
        assert!(!dest.join("v8_code_cache_v2").exists(), "{format:?}");
    }
}

/// Set in the child of the test below: the dir holding its DENO_DIR.
const CLAIM_ENV: &str = "SANDCACHE_TEST_WAL_CLAIM";

/// `max_bytes` there, and the most any file of the child may grow to.
const SMALL: u64 = 1 << 20;

/// Not a test on its own: the snapshot of
/// [`a_wal_claiming_4_gib_is_left_out_without_writing_past_max_bytes`], in
/// a child process where no file may grow past [`SMALL`] bytes
/// (`RLIMIT_FSIZE`: the kernel kills it with `SIGXFSZ` at the first write
/// past that). Without its variable it does nothing.
#[test]
fn wal_claim_child() {
    use rustix::process::{Resource, Rlimit, setrlimit};
    use sandcache_archive::{Encoding, Layout, SqliteOptions, WriteOptions, write_archive};
    let Some(tmp) = std::env::var_os(CLAIM_ENV) else { return };
    let tmp = PathBuf::from(tmp);
    setrlimit(Resource::Core, Rlimit { current: Some(0), maximum: Some(0) }).unwrap();
    setrlimit(Resource::Fsize, Rlimit { current: Some(SMALL), maximum: Some(SMALL) }).unwrap();
    let scratch = tmp.join("scratch");
    let sqlite = SqliteOptions { max_bytes: SMALL, ..SqliteOptions::new(&scratch) };
    let opts = WriteOptions { sqlite: Some(sqlite), ..WriteOptions::new(Layout::Relative, Encoding::None) };
    let mut tar = Vec::new();
    let stats = write_archive(&tmp.join("deno-dir"), &mut tar, &opts).unwrap();
    let names: Vec<String> = tar::Archive::new(&tar[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(names.iter().any(|n| n == "remote/mod.js"), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("v8_code_cache")), "{names:?}");
    assert!(stats.skipped >= 1);
    assert!(!scratch.exists(), "the scratch dir is removed");
}

/// The review's case: a cache of a few KiB whose `-wal` commit frame claims
/// 1M pages (4 GiB). The snapshot leaves it out and stores the rest, and no
/// file it writes (the backup's copy in the scratch dir above all) ever
/// grows past `max_bytes`: the child would be killed at the first byte past.
#[test]
fn a_wal_claiming_4_gib_is_left_out_without_writing_past_max_bytes() {
    use std::os::unix::process::ExitStatusExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("deno-dir");
    fs::create_dir_all(dir.join("remote")).unwrap();
    fs::write(dir.join("remote/mod.js"), b"export {};\n").unwrap();
    let (db, wal) = sandcache_testkit::sqlite::wal_claiming(1 << 20);
    assert!(db.len() + wal.len() <= 32 << 10, "{} + {} bytes", db.len(), wal.len());
    fs::write(dir.join("v8_code_cache_v2"), &db).unwrap();
    fs::write(dir.join("v8_code_cache_v2-wal"), &wal).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["sqlite::wal_claim_child", "--exact", "--nocapture", "--test-threads", "1"])
        .env(CLAIM_ENV, tmp.path())
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the child {} (SIGXFSZ: a file grew past {SMALL} bytes):\n{stdout}\n{stderr}",
        match out.status.signal() {
            Some(s) => format!("was killed by signal {s}"),
            None => format!("failed ({})", out.status),
        }
    );
    assert!(stdout.contains("1 passed"), "the child ran no test:\n{stdout}");
}

#[test]
fn cache_names_are_exact_and_top_level_only_in_meaning() {
    use sandcache_archive::sqlite::{is_deno_cache, is_deno_cache_or_companion};
    use std::ffi::OsStr;
    for yes in ["v8_code_cache_v2", "dep_analysis_cache_v2", "node_analysis_cache_v2", "check_cache_v2"] {
        assert!(is_deno_cache(OsStr::new(yes)) && is_deno_cache_or_companion(OsStr::new(yes)));
        for s in ["-wal", "-shm", "-journal"] {
            let c = format!("{yes}{s}");
            assert!(!is_deno_cache(OsStr::new(&c)) && is_deno_cache_or_companion(OsStr::new(&c)));
        }
    }
    for no in ["v8_code_cache_v1", "v8_code_cache_v2x", "v8_code_cache_v2-walx", "fmt_incremental_cache_v2", ""] {
        assert!(!is_deno_cache_or_companion(OsStr::new(no)), "{no}");
    }
}

// ------------------------------------------------------------- real Deno

/// A local app (no network): Deno compiles and analyses it, so its caches
/// fill. It serves until killed when given a port.
const APP: &str = r#"import { greet } from "./lib.ts";
const port = Number(Deno.args[0] ?? "0");
const text: string = greet("sqlite");
if (port) {
  Deno.serve({ port, hostname: "127.0.0.1", onListen() { console.log("listening"); } }, () => new Response(text));
} else {
  console.log(text);
}
"#;

fn write_app(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("main.ts"), APP).unwrap();
    fs::write(dir.join("lib.ts"), "export function greet(who: string): string {\n  return `hello ${who}`;\n}\n")
        .unwrap();
}

fn deno_run(deno: &str, deno_dir: &Path, app: &Path) -> String {
    let out = Command::new(deno)
        .args(["run", "--allow-net", "main.ts"])
        .current_dir(app)
        .env("DENO_DIR", deno_dir)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{deno}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `(CLI_VERSION, code cache rows)` of a restored `v8_code_cache_v2`.
fn code_cache(db: &Path) -> (String, i64) {
    let tmp = tempfile::tempdir().unwrap();
    fs::copy(db, tmp.path().join("db")).unwrap();
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    if Path::new(&wal).exists() {
        fs::copy(&wal, tmp.path().join("db-wal")).unwrap();
    }
    let c = Connection::open(tmp.path().join("db")).unwrap();
    let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok");
    let version = c.query_row("SELECT value FROM info WHERE key = 'CLI_VERSION'", [], |r| r.get(0)).unwrap();
    let rows = c.query_row("SELECT count(*) FROM codecache", [], |r| r.get(0)).unwrap();
    (version, rows)
}

fn deno_version(deno: &str) -> String {
    let out = Command::new(deno).arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace().nth(1).unwrap_or_default().to_owned()
}

/// Real Deno holds its caches open (a server) while both formats snapshot
/// them; the restored caches pass `integrity_check`, hold compiled code,
/// and a Deno run over the restored dir works and keeps them.
#[tokio::test]
async fn real_deno_caches_snapshotted_while_open_restore_and_are_reused() {
    let Some(deno) = sandcache_testkit::deno::binary("real_deno_caches_snapshotted_while_open_restore_and_are_reused")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (app, dir) = (tmp.path().join("app"), tmp.path().join("deno-dir"));
    write_app(&app);
    assert_eq!(deno_run(&deno, &dir, &app).trim(), "hello sqlite");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = Command::new(&deno)
        .args(["run", "--allow-net", "main.ts", &port.to_string()])
        .current_dir(&app)
        .env("DENO_DIR", &dir)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(server.stdout.as_mut().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "listening");
    std::thread::sleep(Duration::from_millis(200));
    let version = deno_version(&deno);
    for (format, key) in FORMATS {
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(tmp.path().join(format!("store-{format:?}"))));
        let cache = Cache::new(store, key);
        let out = cache.snapshot(&dir, &snap(format)).await;
        assert!(out.is_done(), "{format:?}: {:?}", out.result);
        let dest = restore_to(&tmp.path().join(format!("dest-{format:?}")));
        assert!(cache.restore(&dest, &quick()).await.is_done());
        for s in ["-wal", "-shm"] {
            assert!(!dest.join(format!("v8_code_cache_v2{s}")).exists());
        }
        let (v, rows) = code_cache(&dest.join("v8_code_cache_v2"));
        assert_eq!(v, version);
        assert!(rows > 0, "{format:?}: the code cache is empty");
        for name in ["dep_analysis_cache_v2", "node_analysis_cache_v2"] {
            assert!(dest.join(name).is_file(), "{format:?}: {name} missing");
        }
        assert_eq!(deno_run(&deno, &dest, &app).trim(), "hello sqlite");
        let (v, after) = code_cache(&dest.join("v8_code_cache_v2"));
        assert_eq!(v, version);
        assert!(after >= rows, "{format:?}: the restored cache was reset ({rows} → {after})");
    }
    let _ = server.kill();
    let _ = server.wait();
}

/// A cache written by another Deno version (`SANDCACHE_DENO_OLD`) is
/// harmless: the app runs, and Deno starts the cache afresh under its own
/// version (a marker row planted in the old cache is gone).
#[tokio::test]
async fn a_cache_from_another_deno_version_is_reset_harmlessly() {
    let (Ok(deno), Ok(old)) = (std::env::var("SANDCACHE_DENO"), std::env::var("SANDCACHE_DENO_OLD")) else {
        eprintln!("skipping: SANDCACHE_DENO and SANDCACHE_DENO_OLD are not both set");
        return;
    };
    let (new_version, old_version) = (deno_version(&deno), deno_version(&old));
    assert_ne!(new_version, old_version, "SANDCACHE_DENO_OLD must be another version");
    let tmp = tempfile::tempdir().unwrap();
    let (app, dir) = (tmp.path().join("app"), tmp.path().join("deno-dir"));
    write_app(&app);
    // Each version's caches, restored under the other.
    for (writer, reader) in [(&old, &deno), (&deno, &old)] {
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(deno_run(writer, &dir, &app).trim(), "hello sqlite");
        std::thread::sleep(Duration::from_millis(100));
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(tmp.path().join("store")));
        let key = format!("site/{}", deno_version(writer));
        let cache = Cache::new(store, &key);
        assert!(cache.snapshot(&dir, &snap(Format::Native)).await.is_done());
        let dest = restore_to(&tmp.path().join(format!("dest-{}", deno_version(writer))));
        assert!(cache.restore(&dest, &quick()).await.is_done());
        let (v, _) = code_cache(&dest.join("v8_code_cache_v2"));
        assert_eq!(v, deno_version(writer));
        {
            let c = Connection::open(dest.join("v8_code_cache_v2")).unwrap();
            c.execute("INSERT INTO codecache VALUES ('file:///MARKER', 0, 1, x'00')", []).unwrap();
        }
        assert_eq!(deno_run(reader, &dest, &app).trim(), "hello sqlite");
        let (v, _) = code_cache(&dest.join("v8_code_cache_v2"));
        assert_eq!(v, deno_version(reader), "the cache was not taken over by {reader}");
        let c = Connection::open(dest.join("v8_code_cache_v2")).unwrap();
        let marker: i64 =
            c.query_row("SELECT count(*) FROM codecache WHERE specifier = 'file:///MARKER'", [], |r| r.get(0)).unwrap();
        assert_eq!(marker, 0, "{reader} kept a row of {writer}'s cache");
    }
}
