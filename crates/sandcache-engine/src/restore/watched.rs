//! An idle dir's delta check, made ahead of the restore that needs it and
//! kept true by inotify (`RestoreOptions::watch_idle`: a runner's
//! pre-warm).
//!
//! A delta trusts the generation a dir holds only once the disk is checked
//! against it (`native::check`: a `statx` of every entry, some 60 ms of CPU
//! for a DENO_DIR's 26k entries). Of a pre-warmed deploy, that check was
//! the longest step, on a pod whose two cores the clone and the staging
//! need at the same moment. So after a pre-warm, while the pod waits for a
//! claim, the same check is made once, at nice 19, after an inotify watch
//! is put on every directory of the generation (the top included). The
//! next restore of the dir takes its findings at once when no event came
//! since: nothing under those directories was written, truncated, changed
//! in its mode, owner, times or links, read, made, removed or renamed (a
//! directory listed aside). Any other event, a full queue, or a dir,
//! state, store or owner other than the ones watched: the check is made
//! at the restore, as without watches.
//!
//! What the watches do not see and the bound does: a write through a
//! shared mapping whose file is still open for writing (its close would
//! be seen), and one through a hard link made from elsewhere. Only root
//! can do either while no worker runs (every process of the worker's uid
//! is killed at each undeploy, and `fs.protected_hardlinks` refuses the
//! link to others), and root could set the clock back under the bound
//! too.
//!
//! Cost: one inotify instance and one watch per directory (2.7k for the
//! corpus), held only while the dir is idle, charged to the runner's uid.
//! A limit reached (`fs.inotify.max_user_watches`, `max_user_instances`)
//! costs only the speed-up.

use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use sandcache_archive::pack::{Kind, Manifest};
use sandcache_archive::{RESERVED_PREFIX, TAIL_PREFIX};

use crate::bookkeeping::Restored;
use crate::native;
use crate::target::Target;

/// What a check was made for: the dir (by its inode), the generation its
/// state names and the bound and digest it trusts, and the owner a restore
/// gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Armed {
    pub(super) dev: u64,
    pub(super) ino: u64,
    pub(super) store: String,
    pub(super) generation: String,
    pub(super) until_ns: i128,
    pub(super) digest: String,
    pub(super) owner: Option<(u32, u32)>,
}

/// A check made, and the watches that keep it true.
struct Watched {
    armed: Armed,
    inotify: OwnedFd,
    /// The top's watch: sandcache's own names there are not the tree's.
    top: i32,
    intact: Arc<native::Intact>,
}

static WATCHED: Mutex<Option<Watched>> = Mutex::new(None);
/// A dir, by device and inode.
type DirId = (u64, u64);
/// The arming under way: its dir and cancel flag.
static ARMING: Mutex<Option<(DirId, Arc<AtomicBool>)>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What every directory's watch reports, of itself and of what is in it:
/// any write, truncation, attribute change (mode, owner, times, links),
/// read, name made, removed or renamed, and a writable file closed. Not an
/// `open` or a read-only `close`, which change nothing: each check makes
/// two of each per directory (thousands), and a full queue voids it all.
const WATCH: WatchFlags = WatchFlags::ACCESS
    .union(WatchFlags::MODIFY)
    .union(WatchFlags::ATTRIB)
    .union(WatchFlags::CLOSE_WRITE)
    .union(WatchFlags::MOVED_FROM)
    .union(WatchFlags::MOVED_TO)
    .union(WatchFlags::CREATE)
    .union(WatchFlags::DELETE)
    .union(WatchFlags::DELETE_SELF)
    .union(WatchFlags::MOVE_SELF)
    .union(WatchFlags::ONLYDIR);

/// Watches `target`'s dir and checks it against `old`, the generation of
/// `store` just restored into it (`restored`: its state's bound and
/// digest; `owner`: the restore's), in the background at nice 19, for the
/// next restore of the dir ([`take`]). Called by a restore with
/// `RestoreOptions::watch_idle` once its state is recorded, still under
/// the dir's lock: a later restore's [`take`] stops it.
pub(super) fn arm(
    target: &Target,
    owner: Option<(u32, u32)>,
    store: &str,
    generation: &str,
    restored: &Restored,
    old: &Arc<Manifest>,
) {
    let Ok(st) = std::fs::symlink_metadata(&target.dir) else { return };
    let armed = Armed {
        dev: st.dev(),
        ino: st.ino(),
        store: store.to_owned(),
        generation: generation.to_owned(),
        until_ns: restored.until_ns,
        digest: restored.digest.clone(),
        owner,
    };
    let old = old.clone();
    // One dir watched per process: a runner has one DENO_DIR.
    let cancel = Arc::new(AtomicBool::new(false));
    if let Some((_, before)) = lock(&ARMING).replace(((armed.dev, armed.ino), cancel.clone())) {
        before.store(true, Ordering::Relaxed);
    }
    drop_in_background(lock(&WATCHED).take());
    let dir = target.dir.clone();
    crate::background::background("watch", move || {
        crate::background::lowest_priority();
        let started = Instant::now();
        match watch_and_check(dir, &armed, &old, &cancel) {
            Ok(Some((inotify, top, intact))) => {
                let mut watched = lock(&WATCHED);
                // Stopped meanwhile: a restore has the dir.
                if !cancel.load(Ordering::Relaxed) {
                    *watched = Some(Watched { armed, inotify, top, intact: Arc::new(intact) });
                    tracing::debug!(target: "sandbox-cache", "idle dir checked and watched in {} ms", started.elapsed().as_millis());
                }
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(target: "sandbox-cache", "the idle dir is not watched: {e}"),
        }
    });
}

/// The watches, then the check: every directory of `old` is watched
/// before the check reads it. `Ok(None)`: stopped, or the dir cannot be
/// read well enough (the restore will say).
#[allow(clippy::unnecessary_cast)] // the field types differ between targets
fn watch_and_check(
    dir: PathBuf,
    armed: &Armed,
    old: &Manifest,
    cancel: &AtomicBool,
) -> std::io::Result<Option<(OwnedFd, i32, native::Intact)>> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let live = Arc::new(rustix::fs::open(&dir, flags, Mode::empty())?);
    let st = rustix::fs::fstat(&*live)?;
    if (st.st_dev as u64, st.st_ino as u64) != (armed.dev, armed.ino) {
        return Ok(None);
    }
    let inotify = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
    // Every directory the generation has (listed or implied), parents
    // first, each opened without following and watched through its fd.
    let mut dirs = BTreeSet::new();
    for e in &old.entries {
        let mut p = e.path.as_str();
        if e.kind == Kind::Dir {
            dirs.insert(p);
        }
        while let Some((up, _)) = p.rsplit_once('/') {
            if !dirs.insert(up) {
                break;
            }
            p = up;
        }
    }
    let mut fds = native::DirFds::new(live.clone());
    let top = inotify::add_watch(&inotify, format!("/proc/self/fd/{}", live.as_raw_fd()), WATCH)?;
    for d in dirs {
        if cancel.load(Ordering::Relaxed) {
            return Ok(None);
        }
        // Missing: its parent's watch sees it made.
        if let Some(fd) = fds.get(d)? {
            inotify::add_watch(&inotify, format!("/proc/self/fd/{}", fd.as_raw_fd()), WATCH)?;
        }
    }
    drop(fds);
    let trust = native::Trust { until_ns: armed.until_ns, owner: armed.owner };
    let Ok(Some(intact)) = native::check(old, live, trust, cancel) else { return Ok(None) };
    // What the check itself did (its directories listed), read: from here
    // on, any event is news.
    Ok(quiet(&inotify, top).then_some((inotify, top, intact)))
}

/// The findings of the idle dir's check, when they are still true: made
/// for this dir, store, generation, bound and owner (`armed`), and no
/// event since. Stops an arming of the dir under way; whatever was
/// watched of it is let go (another dir's is left alone).
pub(super) fn take(armed: &Armed) -> Option<Arc<native::Intact>> {
    let dir = (armed.dev, armed.ino);
    {
        let mut arming = lock(&ARMING);
        if let Some((_, cancel)) = arming.take_if(|(d, _)| *d == dir) {
            cancel.store(true, Ordering::Relaxed);
        }
    }
    let watched = lock(&WATCHED).take_if(|w| (w.armed.dev, w.armed.ino) == dir)?;
    let quiet = watched.armed == *armed && quiet(&watched.inotify, watched.top);
    let intact = watched.intact.clone();
    drop_in_background(Some(watched));
    quiet.then_some(intact)
}

/// Whether `dir` holds a generation checked while idle, unchanged since:
/// the next restore's delta needs no check of its own (a runner's status).
pub fn idle_checked(dir: &std::path::Path) -> bool {
    let Ok(st) = std::fs::symlink_metadata(dir) else { return false };
    let mut watched = lock(&WATCHED);
    let Some(w) = watched.as_ref() else { return false };
    if (w.armed.dev, w.armed.ino) != (st.dev(), st.ino()) {
        return false;
    }
    if quiet(&w.inotify, w.top) {
        return true;
    }
    drop_in_background(watched.take());
    false
}

/// Whether no event came that could change what the check found (`top`:
/// the top's watch). Reads what came.
fn quiet(inotify: &OwnedFd, top: i32) -> bool {
    let mut buf = [std::mem::MaybeUninit::uninit(); 8192];
    let mut events = inotify::Reader::new(inotify, &mut buf);
    loop {
        let event = match events.next() {
            Err(Errno::AGAIN) => return true,
            Err(_) => return false,
            Ok(event) => event,
        };
        let kind = event.events();
        // A directory listed (the checks list some).
        if kind == ReadFlags::ISDIR | ReadFlags::ACCESS {
            continue;
        }
        // sandcache's own names at the top (its state, when kept there).
        let ours = event
            .file_name()
            .map(|n| n.to_bytes())
            .is_some_and(|n| n.starts_with(RESERVED_PREFIX.as_bytes()) && !n.starts_with(TAIL_PREFIX.as_bytes()));
        if event.wd() == top && ours {
            continue;
        }
        tracing::debug!(target: "sandbox-cache", "the idle dir changed ({kind:?}): checked at the restore");
        return false;
    }
}

/// Closing an inotify instance removes its watches, some ms for
/// thousands: not on a restore's way, and behind whatever runs.
fn drop_in_background(w: Option<Watched>) {
    if let Some(w) = w {
        crate::background::background("unwatch", move || {
            crate::background::lowest_priority();
            drop(w)
        });
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use sandcache_archive::pack::Entry;

    use super::*;

    const MTIME: i64 = 1_600_000_000;

    /// A tree as a restore writes it (every file's content its name), and
    /// the ctime bound after it.
    fn restored(dir: &std::path::Path) -> (Arc<Manifest>, i128) {
        let file = |p: &str| {
            Entry::file(p.into(), 0o644, MTIME, p.len() as u64, blake3::hash(p.as_bytes()).to_hex().to_string())
        };
        let entries = vec![
            Entry::dir("npm".into(), 0o755, MTIME),
            Entry::dir("npm/r/a/1.0.0".into(), 0o755, MTIME),
            file("npm/r/a/1.0.0/index.js"),
            Entry::dir("npm/r/a/1.0.0/lib".into(), 0o755, MTIME),
            file("npm/r/a/1.0.0/lib/x.js"),
            Entry::dir("remote".into(), 0o755, MTIME),
            file("remote/a.js"),
            file("dep_cache"),
        ];
        let m = Manifest { entries, ..Manifest::empty(3, 0) };
        for e in &m.entries {
            let p = dir.join(&e.path);
            match e.kind {
                Kind::Dir => fs::create_dir_all(&p).unwrap(),
                _ => {
                    fs::create_dir_all(p.parent().unwrap()).unwrap();
                    fs::write(&p, &e.path).unwrap();
                    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
                }
            }
        }
        let t = rustix::fs::Timespec { tv_sec: MTIME, tv_nsec: 0 };
        let times = rustix::fs::Timestamps { last_access: t, last_modification: t };
        let mut all: Vec<String> =
            m.entries.iter().map(|e| e.path.clone()).chain(["npm/r".into(), "npm/r/a".into()]).collect();
        all.sort_by(|a, b| b.cmp(a));
        for p in all {
            rustix::fs::utimensat(rustix::fs::CWD, dir.join(p), &times, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
        let bound = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i128;
        std::thread::sleep(Duration::from_millis(20));
        (Arc::new(m), bound)
    }

    /// Watches `dir` as a pre-warm's restore does, and waits until its
    /// idle check stands.
    fn armed(dir: &std::path::Path, m: &Arc<Manifest>, until_ns: i128) -> Armed {
        let target = Target::resolve_for_restore(dir).unwrap();
        let restored = Restored { until_ns, digest: "d".into() };
        arm(&target, None, "store", "g1", &restored, m);
        let started = Instant::now();
        while !idle_checked(dir) {
            assert!(started.elapsed() < Duration::from_secs(20), "no idle check");
            std::thread::sleep(Duration::from_millis(5));
        }
        let st = fs::symlink_metadata(dir).unwrap();
        Armed {
            dev: st.dev(),
            ino: st.ino(),
            store: "store".into(),
            generation: "g1".into(),
            until_ns,
            digest: "d".into(),
            owner: None,
        }
    }

    /// One process-wide slot: these tests take turns.
    static SERIAL: Mutex<()> = Mutex::new(());

    #[test]
    fn an_idle_dir_checked_and_untouched_is_taken_as_checked_once() {
        let _serial = lock(&SERIAL);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        let (m, bound) = restored(&dir);
        let key = armed(&dir, &m, bound);
        // Reading directories changes nothing, nor do sandcache's own
        // names at the top; a stat opens nothing.
        for d in ["", "npm", "npm/r/a/1.0.0/lib"] {
            assert!(fs::read_dir(dir.join(d)).unwrap().count() > 0);
        }
        fs::write(dir.join(format!("{RESERVED_PREFIX}state")), "x").unwrap();
        fs::symlink_metadata(dir.join("remote/a.js")).unwrap();
        // Made for another generation, owner or bound: not this one's.
        let other = Armed { generation: "g2".into(), ..key.clone() };
        assert!(take(&other).is_none());
        let key = armed(&dir, &m, bound);
        assert!(take(&Armed { owner: Some((1, 1)), ..key.clone() }).is_none());
        let key = armed(&dir, &m, bound);
        let intact = take(&key).expect("checked while idle");
        let fresh = native::check(
            &m,
            Arc::new(rustix::fs::open(&dir, OFlags::DIRECTORY, Mode::empty()).unwrap()),
            native::Trust { until_ns: bound, owner: None },
            &AtomicBool::new(false),
        )
        .unwrap()
        .unwrap();
        assert_eq!(intact.sorted(), fresh.sorted());
        // Taken: the next restore checks for itself.
        assert!(take(&key).is_none());
    }

    #[test]
    fn anything_done_in_the_idle_dir_after_its_check_voids_it() {
        let _serial = lock(&SERIAL);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        let (m, bound) = restored(&dir);
        type Change = fn(&std::path::Path);
        let changes: [(&str, Change); 9] = [
            ("a write", |d| fs::write(d.join("npm/r/a/1.0.0/lib/x.js"), "npm/r/a/1.0.0/lib/x.js").unwrap()),
            ("a chmod", |d| fs::set_permissions(d.join("remote/a.js"), fs::Permissions::from_mode(0o666)).unwrap()),
            ("a file read", |d| drop(fs::read(d.join("dep_cache")).unwrap())),
            ("a name made", |d| fs::write(d.join("npm/r/a/1.0.0/extra.js"), "x").unwrap()),
            ("a rename into place", |d| {
                fs::write(d.join("remote/new"), "remote/a.js").unwrap();
                fs::rename(d.join("remote/new"), d.join("remote/a.js")).unwrap();
            }),
            ("a removal", |d| fs::remove_file(d.join("remote/a.js")).unwrap()),
            ("a directory's times", |d| {
                let f = fs::File::open(d.join("npm/r")).unwrap();
                f.set_modified(std::time::SystemTime::now()).unwrap();
            }),
            ("a directory moved", |d| fs::rename(d.join("npm/r/a/1.0.0/lib"), d.join("npm/r/a/lib")).unwrap()),
            ("the dir itself moved", |d| fs::rename(d, d.with_extension("moved")).unwrap()),
        ];
        for (what, change) in changes {
            let _ = fs::remove_dir_all(&dir);
            let (m2, bound2) = restored(&dir);
            assert_eq!(m2.entries.len(), m.entries.len());
            let _ = bound;
            let key = armed(&dir, &m2, bound2);
            change(&dir);
            assert!(take(&key).is_none(), "{what}: still taken as checked");
            let _ = fs::remove_dir_all(dir.with_extension("moved"));
        }
    }
}
