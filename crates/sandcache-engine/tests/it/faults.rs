//! The fault matrix: every fault of the proxy in front of Garage, for
//! restore and snapshot, in each format, at the start, middle and end of the
//! transfer, once (a blip) and sticky (a server that stays broken).
//!
//! Every cell checks the four promises:
//! * the operation ends within its deadline plus 1 s;
//! * a skipped outcome names its reason and says why;
//! * the dir holds its previous complete content or the new complete
//!   content, never a mix, and no staging is left beside it;
//! * the store never holds a manifest that refers to missing or corrupt
//!   content, and a clean restore afterwards gives a complete generation.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sandcache_archive::{Encoding, Layout, WriteOptions};
use sandcache_engine::{Cache, Format, Reason, RestoreOptions, SnapshotOptions, wait_for_background};
use sandcache_store::{S3Store, Store, StoreOptions};
use sandcache_testkit::faults::{At, Direction, Fault, FaultProxy, Plan};
use sandcache_testkit::tree::{listing, noise, sample_tree, settle_times};

/// Each operation's deadline in the matrix.
const DEADLINE: Duration = Duration::from_secs(3);
const KEY: &str = "site/cache";

struct Rig {
    proxy: FaultProxy,
    /// Straight to Garage: to seed and to check.
    direct: Arc<dyn Store>,
    /// Through the proxy.
    faulty: Arc<dyn Store>,
    tmp: tempfile::TempDir,
    old: PathBuf,
    new: PathBuf,
}

async fn rig(test: &str) -> Option<Rig> {
    let spec = sandcache_testkit::s3::spec(test)?;
    let upstream = spec.endpoint.clone().expect("the test server has an endpoint");
    let proxy = FaultProxy::start(&upstream).await;
    let direct: Arc<dyn Store> = Arc::new(S3Store::new(&spec, &StoreOptions::default()).unwrap());
    let mut via = spec.clone();
    via.endpoint = Some(proxy.url());
    let faulty: Arc<dyn Store> = Arc::new(S3Store::new(&via, &StoreOptions::default()).unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let (old, new) = (tmp.path().join("old/deno-dir"), tmp.path().join("new/deno-dir"));
    // Two generations that share files and differ in others, with enough
    // data for several frames, a multipart upload and a few range GETs.
    for (dir, tag) in [(&old, "old"), (&new, "new")] {
        sample_tree(dir);
        std::fs::create_dir_all(dir.join("npm/big")).unwrap();
        std::fs::write(dir.join("npm/big/shared.bin"), noise(3 << 20, "shared")).unwrap();
        std::fs::write(dir.join(format!("npm/big/{tag}.bin")), noise(5 << 20, tag)).unwrap();
        for i in 0..100 {
            std::fs::write(dir.join(format!("remote/{tag}-{i}.js")), format!("export const v = '{tag}{i}';\n"))
                .unwrap();
        }
        // One mtime for every file: the files both trees share are the
        // same to a delta (whole seconds), however long writing them took.
        // (The trees written across a second's turn once made the delta
        // dry pass write everything, so a full restore.)
        settle_times(dir);
    }
    Some(Rig { proxy, direct, faulty, tmp, old, new })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Native,
    /// Native, with a hot set, restored hot-first: faults hit the second
    /// phase too.
    NativeHotFirst,
    /// Native, restored as a delta over the old generation, which a
    /// restore put in the dir (its state proves it).
    NativeDelta,
    Tgz,
    TarZst,
}

/// Stores `dir` under `key` in `form`, straight to the server.
async fn seed(store: &Arc<dyn Store>, key: &str, dir: &Path, form: Form) {
    let cache = Cache::new(store.clone(), key);
    let format = match form {
        Form::Native | Form::NativeDelta => Format::Native,
        Form::NativeHotFirst => {
            // As a restore leaves them (access time = mtime), then a boot
            // that reads a few files: the hot set.
            settle_times(dir);
            for hot in ["npm/big/shared.bin", "remote/new-1.js", "remote/new-50.js"] {
                std::fs::read(dir.join(hot)).unwrap();
            }
            Format::Native
        }
        Form::Tgz => Format::Tgz,
        Form::TarZst => {
            let mut bytes = Vec::new();
            sandcache_archive::write_archive(
                dir,
                &mut bytes,
                &WriteOptions::new(Layout::Relative, Encoding::Zstd { level: 3 }),
            )
            .unwrap();
            let body = Box::pin(futures::stream::once(async move { Ok(bytes::Bytes::from(bytes)) }));
            store.put(key, body).await.unwrap();
            return;
        }
    };
    let out = cache.snapshot(dir, &SnapshotOptions { format, force: true, ..Default::default() }).await;
    assert!(out.is_done(), "seeding {key}: {:?}", out.result);
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    let ok = Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap().success();
    assert!(ok, "cp -a {} {}", from.display(), to.display());
}

/// What a failure may be called: never "disabled", "config", "empty" or
/// "unchanged", which would hide a fault behind a non-event.
fn named(out: &sandcache_engine::Outcome) -> Result<(), String> {
    match &out.result {
        Ok(_) => Ok(()),
        Err(s) if s.detail.trim().is_empty() => Err(format!("{} with no detail", s.reason)),
        Err(s)
            if matches!(
                s.reason,
                Reason::TimedOut | Reason::StoreError | Reason::Corrupt | Reason::NotFound | Reason::IoError
            ) =>
        {
            Ok(())
        }
        Err(s) => Err(format!("unexpected reason {}: {}", s.reason, s.detail)),
    }
}

/// Ends a cell's fault and makes the checks every cell shares: the
/// deadline, that the fault was injected, and a named reason.
fn first_checks(proxy: &FaultProxy, name: &str, out: &sandcache_engine::Outcome, start: Instant) -> Vec<String> {
    let took = start.elapsed();
    let injected = proxy.injected();
    proxy.set(None);
    eprintln!("{name}: {} in {} ms ({injected} injected)", result_text(out), took.as_millis());
    let mut problems = Vec::new();
    if took > DEADLINE + Duration::from_secs(1) {
        problems.push(format!("took {took:?}, past the {DEADLINE:?} deadline + 1 s"));
    }
    if injected == 0 {
        problems.push("the fault was never injected".into());
    }
    if let Err(e) = named(out) {
        problems.push(e);
    }
    problems
}

/// No staging or trash is left beside `dir` once background work ends.
fn no_leftovers(dir: &Path) -> Result<(), String> {
    assert!(wait_for_background(Duration::from_secs(20)), "background cleanup did not finish");
    let parent = dir.parent().unwrap();
    let left: Vec<String> = std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("staging") || n.contains("trash"))
        .collect();
    if left.is_empty() { Ok(()) } else { Err(format!("left beside {}: {left:?}", dir.display())) }
}

/// A clean restore, straight from the server, into a fresh dir: its tree.
async fn clean_restore(store: &Arc<dyn Store>, key: &str, at: &Path) -> Result<Vec<String>, String> {
    let out = Cache::new(store.clone(), key).restore(at, &RestoreOptions::default()).await;
    match out.result {
        Ok(_) => Ok(listing(at)),
        Err(s) => Err(format!("clean restore: {}: {}", s.reason, s.detail)),
    }
}

struct Cell {
    fault: Fault,
    at: At,
    sticky: bool,
}

fn cells() -> Vec<Cell> {
    let mut v = Vec::new();
    for fault in Fault::ALL {
        for at in At::ALL {
            for sticky in [false, true] {
                v.push(Cell { fault, at, sticky });
            }
        }
    }
    v
}

fn label(form: Form, op: &str, c: &Cell) -> String {
    format!("{form:?} {op} {} at {:?} {}", c.fault.name(), c.at, if c.sticky { "sticky" } else { "once" })
}

fn result_text(out: &sandcache_engine::Outcome) -> String {
    match &out.result {
        Ok(_) => "done".into(),
        Err(s) => format!("{}: {}", s.reason, s.detail.chars().take(140).collect::<String>()),
    }
}

async fn restore_matrix(form: Form) {
    let Some(rig) = rig(&format!("faults-restore-{form:?}").to_lowercase()).await else { return };
    seed(&rig.direct, KEY, &rig.new, form).await;
    if form == Form::NativeDelta {
        seed(&rig.direct, "old/cache", &rig.old, form).await;
    }
    // The dir a cell starts from: a copy of the old tree, or for a delta,
    // the old generation restored (so its state allows one).
    let (direct, old_tree) = (rig.direct.clone(), rig.old.clone());
    let start_from = |dir: PathBuf| {
        let (direct, old_tree) = (direct.clone(), old_tree.clone());
        async move {
            match form {
                Form::NativeDelta => {
                    let out = Cache::new(direct, "old/cache").restore(&dir, &RestoreOptions::default()).await;
                    assert!(out.is_done(), "restoring the old generation: {:?}", out.result);
                    // Its pieces are kept locally on a thread of their own:
                    // until they are, a delta reads them through the proxy,
                    // and the dry pass and a cell would count different
                    // transfers (seen under the full suite's load).
                    wait_for_background(Duration::from_secs(20));
                }
                _ => copy_tree(&old_tree, &dir),
            }
        }
    };
    let (old, new) = (listing(&rig.old), listing(&rig.new));
    let opts = RestoreOptions { timeout: DEADLINE, hot_first: form == Form::NativeHotFirst, ..Default::default() };
    let cache = Cache::new(rig.faulty.clone(), KEY);

    // A clean pass through the proxy counts the transfers.
    rig.proxy.set(None);
    let dry = rig.tmp.path().join("dry/deno-dir");
    start_from(dry.clone()).await;
    let logs = Logs::capture();
    let out = cache.restore(&dry, &opts).await;
    assert!(out.is_done(), "through the proxy, no fault: {:?}", out.result);
    assert_eq!(listing(&dry), new);
    if form == Form::NativeDelta {
        // Why not, should it not be: the engine's log says (with other
        // tests' lines mixed in).
        assert_eq!(out.to_json()["mode"], "delta", "{}\nthe engine's log meanwhile:\n{}", out.to_json(), logs.take());
    }
    let n = rig.proxy.transfers(Direction::Download);
    assert!(n >= 1);

    let mut failures = Vec::new();
    let mut done = 0;
    for (i, c) in cells().iter().enumerate() {
        // A sticky fault that corrupts every transfer looks, to a restore,
        // like a bad pool object, which it marks (`pool/bad/`); a mark
        // makes later hot-first restores one phase. Each cell starts
        // without: the same transfers as the dry run.
        for o in rig.direct.list("pool/bad/").await.unwrap() {
            rig.direct.delete(&o.key).await.unwrap();
        }
        let dir = rig.tmp.path().join(format!("cell-{i}/deno-dir"));
        start_from(dir.clone()).await;
        let plan =
            Plan { fault: c.fault, at: c.at, direction: Direction::Download, index: c.at.index(n), sticky: c.sticky };
        rig.proxy.set(Some(plan));
        let start = Instant::now();
        let out = cache.restore(&dir, &opts).await;
        let name = label(form, "restore", c);
        let mut problems = first_checks(&rig.proxy, &name, &out, start);
        let now = listing(&dir);
        match (&out.result, now == old, now == new) {
            (Ok(_), _, true) => done += 1,
            (Ok(_), _, false) => problems.push("done, but the dir is not the stored tree".into()),
            (Err(_), true, _) => {}
            (Err(_), false, _) if out.hot.is_some() => {
                // The second phase failed: the hot set is in place, and
                // every file there is whole and as stored (no temporary
                // name either); the next restore completes the tree.
                let stored: std::collections::HashSet<&String> = new.iter().collect();
                if let Some(odd) = now.iter().find(|l| !stored.contains(l)) {
                    problems.push(format!("after hot-ready, `{odd}` is not as stored"));
                }
                let again = Cache::new(rig.direct.clone(), KEY).restore(&dir, &RestoreOptions::default()).await;
                if !again.is_done() || listing(&dir) != new {
                    problems.push(format!("the next restore did not complete the tree: {}", result_text(&again)));
                }
            }
            (Err(_), false, _) => problems.push("skipped, but the dir is not its previous content".into()),
        }
        if let Err(e) = no_leftovers(&dir) {
            problems.push(e);
        }
        if !problems.is_empty() {
            failures.push(format!("{name}: {}", problems.join("; ")));
        }
        let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    }
    // The store was only read (but for marks): it is whole, and restores
    // cleanly.
    sandcache_testkit::generations::check(rig.direct.as_ref(), KEY).await.unwrap();
    let clean = clean_restore(&rig.direct, KEY, &rig.tmp.path().join("clean/deno-dir")).await.unwrap();
    assert_eq!(clean, new);
    eprintln!("{form:?} restore: {} cells, {done} restored, {} skipped", cells().len(), cells().len() - done);
    assert!(failures.is_empty(), "{} cells broke a promise:\n{}", failures.len(), failures.join("\n"));
}

async fn snapshot_matrix(form: Form) {
    let Some(rig) = rig(&format!("faults-snapshot-{form:?}").to_lowercase()).await else { return };
    let (old, new) = (listing(&rig.old), listing(&rig.new));
    let format = if form == Form::Native { Format::Native } else { Format::Tgz };
    let opts = SnapshotOptions { format, timeout: DEADLINE, force: true, ..Default::default() };

    // A clean pass through the proxy counts the uploads of a snapshot over
    // an older generation.
    seed(&rig.direct, "dry/cache", &rig.old, form).await;
    rig.proxy.set(None);
    let out = Cache::new(rig.faulty.clone(), "dry/cache").snapshot(&rig.new, &opts).await;
    assert!(out.is_done(), "through the proxy, no fault: {:?}", out.result);
    let n = rig.proxy.transfers(Direction::Upload);
    assert!(n >= 1);

    let mut failures = Vec::new();
    let mut done = 0;
    for (i, c) in cells().iter().enumerate() {
        let key = format!("cell-{i}/cache");
        // The shared pool would already hold the new content (from the dry
        // run and the cells before): empty it, so each cell uploads the
        // same packs the dry run counted.
        for o in rig.direct.list("pool/").await.unwrap() {
            rig.direct.delete(&o.key).await.unwrap();
        }
        seed(&rig.direct, &key, &rig.old, form).await;
        let dir = rig.tmp.path().join(format!("cell-{i}/deno-dir"));
        copy_tree(&rig.new, &dir);
        let plan =
            Plan { fault: c.fault, at: c.at, direction: Direction::Upload, index: c.at.index(n), sticky: c.sticky };
        rig.proxy.set(Some(plan));
        let start = Instant::now();
        let out = Cache::new(rig.faulty.clone(), key.as_str()).snapshot(&dir, &opts).await;
        let name = label(form, "snapshot", c);
        let mut problems = first_checks(&rig.proxy, &name, &out, start);
        if listing(&dir) != new {
            problems.push("the snapshot changed its dir".into());
        }
        if let Err(e) = sandcache_testkit::generations::check(rig.direct.as_ref(), &key).await {
            problems.push(format!("store: {e}"));
        }
        match clean_restore(&rig.direct, &key, &rig.tmp.path().join(format!("cell-{i}/check/deno-dir"))).await {
            Ok(t) if t == new && out.is_done() => done += 1,
            Ok(t) if t == old && !out.is_done() => {}
            Ok(t) if t == new => problems.push("skipped, yet the new generation was stored".into()),
            Ok(_) => problems.push("the stored cache is neither the old nor the new tree".into()),
            Err(e) => problems.push(e),
        }
        if !problems.is_empty() {
            failures.push(format!("{name}: {}", problems.join("; ")));
        }
        let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    }
    eprintln!("{form:?} snapshot: {} cells, {done} stored, {} skipped", cells().len(), cells().len() - done);
    assert!(failures.is_empty(), "{} cells broke a promise:\n{}", failures.len(), failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_matrix_restore_native() {
    restore_matrix(Form::Native).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_matrix_restore_native_hot_first() {
    restore_matrix(Form::NativeHotFirst).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_matrix_restore_native_delta() {
    restore_matrix(Form::NativeDelta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_matrix_restore_tgz() {
    restore_matrix(Form::Tgz).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_matrix_restore_tar_zst() {
    restore_matrix(Form::TarZst).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_matrix_snapshot_native() {
    snapshot_matrix(Form::Native).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_matrix_snapshot_tgz() {
    snapshot_matrix(Form::Tgz).await;
}

/// The engine's log lines (target `sandbox-cache`, debug and up) from now
/// on, for a failure message. One subscriber serves the whole test binary,
/// so other tests' lines are mixed in.
struct Logs;

static LOG: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

impl Logs {
    fn capture() -> Logs {
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            let _ = tracing_subscriber::fmt()
                .with_env_filter("sandbox-cache=debug,sandcache_engine=debug")
                .with_writer(|| Logs)
                .with_ansi(false)
                .try_init();
        });
        Logs::buffer().clear();
        Logs
    }

    fn buffer() -> std::sync::MutexGuard<'static, Vec<u8>> {
        LOG.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut *Logs::buffer())).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        Logs::buffer().extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
