//! A delta restore's plan, in two steps that run side by side: the two
//! manifests compared as soon as both are in ([`diff`]: what is written
//! whatever the disk holds), and the disk checked against the generation
//! the dir holds (`old`, as restored, unchanged up to a ctime bound,
//! [`check`]), which completes the plan ([`Diff::plan`]). The check only
//! reads: `lstat`s relative to directory fds opened without following
//! ([`DirFds`]), listings of directories past the bound, `readlinkat`.
//!
//! - [`check`]: a unit (see [`super::units`]) of `old` is intact when
//!   every entry of it is on disk as the restore left it: the same kind,
//!   mode, mtime, size (and symlink target) and owner, and a ctime not past
//!   the bound (any later write, chmod, chown, utime, link or rename into
//!   place moves it; no process can set one). A directory past the bound,
//!   or whose mtime is not the archived one, is listed (the top always): a
//!   name the old generation lacks is an extra, and a package holding one
//!   is changed. Any doubt (a missing or unlisted directory, a type or
//!   reading error) is a change.
//! - [`diff`], [`Diff::plan`]: a unit of `new` is kept when `old` has the
//!   same unit, entry for entry ([`Shape`]), and the check found it
//!   intact. Every other unit of `new` is written (into staging) and put
//!   in place.
//! - Units of `old` that `new` lacks, directories it lacks, and extras in
//!   directories outside packages are moved away (the topmost path: a
//!   directory takes what it holds), because the result must equal a full
//!   restore of `new`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, FileType, Stat};
use sandcache_archive::ExtractError;
use sandcache_archive::pack::{Kind, Manifest};
use sandcache_archive::{RESERVED_PREFIX, TAIL_PREFIX};

use super::filesystem::{DirFds, split};
use super::units::{Fast, Shape, Unit, Units, count};

/// What a delta does, in the order it does it.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Entries of `new` to write into staging, in its order: every entry
    /// of each unit that is new or changed.
    pub(crate) write: Vec<u32>,
    /// Those units, by root path, to put in place once written: `true`
    /// for a package dir (exchanged whole), `false` for a file or symlink
    /// (renamed over).
    pub(crate) place: Vec<(String, bool)>,
    /// Paths moved away first, topmost only.
    pub(crate) remove: Vec<String>,
    /// Directories of `new` outside packages (and their entry, when
    /// listed), parents first: made where missing, modes and times set.
    pub(crate) dirs: Vec<(String, Option<u32>)>,
    /// Kept files read since they were restored: their access time goes
    /// back to their mtime, as a restore leaves it (the hot set is what is
    /// read after a restore).
    pub(crate) reset_atime: Vec<u32>,
    /// What `new` holds (files and symlinks, and bytes), and what the
    /// delta writes of it.
    pub(crate) files: u64,
    pub(crate) bytes: u64,
    pub(crate) files_written: u64,
    pub(crate) bytes_written: u64,
}

impl Plan {
    /// Whether the delta writes less than a full restore would (files and
    /// bytes counted together). Writing everything, it does not: a full
    /// restore swaps the whole tree in at once, with no unit-by-unit
    /// renames.
    pub(crate) fn worth_it(&self) -> bool {
        let written = self.files_written + self.bytes_written;
        written == 0 || written < self.files + self.bytes
    }
}

/// Units a check thread takes at a time: a run of neighbours, whose
/// directories it holds open already.
const RUN: usize = 32;

/// What the disk check trusts: entries with a ctime up to `until_ns`, as
/// the restore that wrote them left them, owned as a restore leaves them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Trust {
    pub(crate) until_ns: i128,
    /// The owner a restore gives what it makes (`RestoreOptions::owner`);
    /// without one, ours.
    pub(crate) owner: Option<(u32, u32)>,
}

/// What the disk check found of the generation a dir holds: the units on
/// disk as its restore left them, untouched since, and the names in its
/// directories that it did not put there.
#[derive(Debug, Default)]
pub(crate) struct Intact {
    /// Units found as restored, by root path: for each, the files in it
    /// read since (their paths).
    units: HashMap<String, Vec<String>, Fast>,
    /// Names in directories outside packages (and the top) that the
    /// generation lacks: extras, moved away.
    extras: Vec<String>,
}

impl Intact {
    /// What it found, in order: to compare two checks.
    #[cfg(test)]
    pub(crate) fn sorted(&self) -> (std::collections::BTreeMap<&String, &Vec<String>>, &[String]) {
        (self.units.iter().collect(), &self.extras)
    }
}

/// Checks the disk (the dir, open as `root`) against `old`, the generation
/// it held when restored. Only reads: it runs while the new generation's
/// manifest is still on its way. `None`: the dir cannot be told apart from
/// the old generation well enough (a directory that cannot be listed): a
/// full restore. Fails only when cancelled.
pub(crate) fn check(
    old: &Manifest,
    root: Arc<OwnedFd>,
    trust: Trust,
    cancel: &AtomicBool,
) -> Result<Option<Intact>, ExtractError> {
    let o = Units::of(old);
    let cancelled = || cancel.load(Ordering::Relaxed);
    let second_root = root.clone();
    let mut disk = Disk { dirs: DirFds::new(root), trust, euid: rustix::process::geteuid().as_raw() };
    let mut intact = Intact::default();
    // Every directory outside packages, and the top: what the generation
    // lacks there is an extra (one the new generation lacks goes whole,
    // its extras with it). One that cannot be listed: a full restore.
    for (dir, entry) in std::iter::once(("", None)).chain(o.dirs.iter().map(|(d, e)| (*d, *e))) {
        if cancelled() {
            return Err(ExtractError::Cancelled);
        }
        let mtime = entry.map(|i| old.entries[i as usize].mtime.max(0));
        let Ok(extras) = disk.extras(dir, &o, mtime) else { return Ok(None) };
        intact.extras.extend(extras.into_iter().map(|name| join(dir, &name)));
    }
    // Two threads taking runs of units as they go, each with directory fds
    // of its own: the check is a delta's longest step, and what runs
    // beside it (the new manifest, the diff, the staging, the clone) ends
    // halfway and left a core idle for the rest (a pre-warmed deploy's
    // hot-ready came at 61 ms with one thread, 56 with two, medians of 7).
    let units: Vec<Unit> = o.units.keys().copied().collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = |disk: &mut Disk| -> Result<Vec<(String, Vec<String>)>, ExtractError> {
        let mut out = Vec::new();
        loop {
            let at = next.fetch_add(RUN, Ordering::Relaxed);
            let Some(run) = units.get(at..(at + RUN).min(units.len())) else { return Ok(out) };
            for &unit in run {
                if cancelled() {
                    return Err(ExtractError::Cancelled);
                }
                if let Some(read) = disk.kept(unit, &o) {
                    let read = read.into_iter().map(|i| old.entries[i as usize].path.clone()).collect();
                    out.push((unit.path().to_owned(), read));
                }
            }
        }
    };
    let mut other = Disk { dirs: DirFds::new(second_root), trust, euid: disk.euid };
    let (a, b) = std::thread::scope(|s| {
        let b = std::thread::Builder::new().name("sandcache-check".into()).spawn_scoped(s, || work(&mut other));
        let a = work(&mut disk);
        match b {
            Ok(b) => (a, b.join().unwrap_or_else(|p| std::panic::resume_unwind(p))),
            // No second thread: this one took every run.
            Err(_) => (a, Ok(Vec::new())),
        }
    });
    intact.units.extend(a?.into_iter().chain(b?));
    Ok(Some(intact))
}

/// The part of a delta's plan the two manifests decide alone: what it
/// writes whatever the disk check finds (the units of `new` that `old`
/// lacks or has otherwise), and what it moves away. Made while the check
/// is still running, so those units can be written into staging beside it.
#[derive(Debug, Default)]
pub(crate) struct Diff {
    /// The plan so far: the units that differ to write and place, the
    /// units and directories `new` lacks to remove (not yet topmost only),
    /// `new`'s directories, and its counts.
    plan: Plan,
    remove: BTreeSet<String>,
    /// Units of `new` that `old` has the same, by root path (and whether a
    /// package), with their entries: kept if the check finds them intact.
    same: Vec<(String, bool, Vec<u32>)>,
}

impl Diff {
    /// Entries of `new` written whatever the check finds, in its order.
    pub(crate) fn written(&self) -> &[u32] {
        &self.plan.write
    }

    /// Whether writing only what differs already writes no less than a
    /// full restore (a plan only adds to it).
    pub(crate) fn worth_it(&self) -> bool {
        self.plan.worth_it()
    }

    /// The whole plan, with what the check found on disk: a same unit not
    /// intact is written too, extras go. Pure.
    pub(crate) fn plan(self, new: &Manifest, intact: &Intact) -> Plan {
        let Diff { mut plan, mut remove, same } = self;
        let before = plan.write.len();
        for (path, package, entries) in same {
            match intact.units.get(&path) {
                Some(read) if read.is_empty() => {}
                Some(read) => {
                    let read: HashSet<&str> = read.iter().map(String::as_str).collect();
                    let paths = entries.iter().filter(|&&i| read.contains(new.entries[i as usize].path.as_str()));
                    plan.reset_atime.extend(paths);
                }
                None => {
                    plan.write.extend(entries);
                    plan.place.push((path, package));
                }
            }
        }
        if plan.write.len() != before {
            plan.write.sort_unstable();
            // Packages first, each kind by path: as the units are ordered.
            plan.place.sort_unstable_by(|a, b| (!a.1, &a.0).cmp(&(!b.1, &b.0)));
            (plan.files_written, plan.bytes_written) = count(new, plan.write.iter().copied());
        }
        remove.extend(intact.extras.iter().cloned());
        // Topmost only: moving a directory away takes what it holds.
        let under_another = |p: &str| {
            let mut p = p;
            while let Some((up, _)) = p.rsplit_once('/') {
                if remove.contains(up) {
                    return true;
                }
                p = up;
            }
            false
        };
        plan.remove = remove.iter().filter(|p| !under_another(p)).cloned().collect();
        plan
    }
}

/// What differs from `old` (what the dir held when restored) to `new`, the
/// two manifests compared. Pure. The same manifest on both sides (the
/// generation the dir holds, again) is seen as units once.
pub(crate) fn diff(old: &Manifest, new: &Manifest) -> Diff {
    let o = Units::of(old);
    let other;
    let n = match std::ptr::eq(old, new) {
        true => &o,
        false => {
            other = Units::of(new);
            &other
        }
    };
    let mut d = Diff::default();
    for (&unit, entries) in &n.units {
        let package = matches!(unit, Unit::Package(_));
        if n.same(&o, unit) {
            d.same.push((unit.path().to_owned(), package, entries.clone()));
        } else {
            d.plan.write.extend(entries);
            d.plan.place.push((unit.path().to_owned(), package));
        }
    }
    d.plan.write.sort_unstable();
    // What `new` lacks goes: units, and directories outside packages.
    for unit in o.units.keys().filter(|u| !n.units.contains_key(u)) {
        d.remove.insert(unit.path().to_owned());
    }
    for dir in o.dirs.keys().filter(|d| !n.dirs.contains_key(*d)) {
        d.remove.insert((*dir).to_owned());
    }
    d.plan.dirs = n.dirs.iter().map(|(d, e)| ((*d).to_owned(), *e)).collect();
    (d.plan.files, d.plan.bytes) = count(new, 0..new.entries.len() as u32);
    (d.plan.files_written, d.plan.bytes_written) = count(new, d.plan.write.iter().copied());
    d
}

/// Plans the delta from `old` (what the dir held when restored, as
/// [`check`] found it on disk) to `new`: [`diff`], then [`Diff::plan`].
#[cfg(test)]
pub(crate) fn plan(old: &Manifest, new: &Manifest, intact: &Intact) -> Plan {
    diff(old, new).plan(new, intact)
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() { name.to_owned() } else { format!("{dir}/{name}") }
}

/// The disk, read as the check reads it.
struct Disk {
    dirs: DirFds,
    trust: Trust,
    euid: u32,
}

impl Disk {
    /// The `lstat` of `path`, relative to its directory's fd; `None` when
    /// it, or a directory on the way, is missing or not a directory.
    fn stat(&mut self, path: &str) -> Option<Stat> {
        let (up, name) = split(path);
        let parent = self.dirs.get(up).ok()??;
        rustix::fs::statat(&*parent, name, AtFlags::SYMLINK_NOFOLLOW).ok()
    }

    fn as_restored(&self, st: &Stat, s: &Shape) -> Option<Seen> {
        as_restored(st, s, &self.trust, self.euid)
    }

    /// The names in directory `dir` that `old` did not put there
    /// (sandcache's own at the top left out). It is listed when its ctime
    /// is past the bound, or its mtime is not the one the restore gave it
    /// (`mtime`; `None`: unknown, an implied directory or the top, always
    /// listed): a name made or removed in it moves both, and an app running
    /// before the bound (a hot-first restore's second phase) moves the
    /// mtime. Else it holds exactly the names it was restored with. No
    /// names when it is not a directory (whatever it is goes); `Err` when
    /// it cannot be listed faithfully (a name that is not UTF-8, which no
    /// manifest holds, could not be moved away by name).
    fn extras(&mut self, dir: &str, old: &Units, mtime: Option<i64>) -> Result<Vec<String>, Doubt> {
        let st = match dir {
            "" => self.dirs.get("").ok().flatten().and_then(|fd| rustix::fs::fstat(&*fd).ok()),
            _ => self.stat(dir),
        };
        let Some(st) = st.filter(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory) else {
            return Ok(Vec::new());
        };
        let ctime = st.st_ctime as i128 * 1_000_000_000 + st.st_ctime_nsec as i128;
        #[allow(clippy::unnecessary_cast)] // the field types differ between targets
        let as_set = mtime.is_some_and(|m| (st.st_mtime as i64, st.st_mtime_nsec as i64) == (m, 0));
        if ctime <= self.trust.until_ns && as_set {
            return Ok(Vec::new());
        }
        let known = old.children(dir);
        let names = self.names(dir).ok_or(Doubt)?;
        let ours = |n: &[u8]| {
            dir.is_empty() && n.starts_with(RESERVED_PREFIX.as_bytes()) && !n.starts_with(TAIL_PREFIX.as_bytes())
        };
        Ok(names
            .into_iter()
            .filter(|n| !ours(n.as_bytes()) && !known.is_some_and(|k| k.contains(n.as_str())))
            .collect())
    }

    /// The names in directory `dir`, listed from its fd; `None` when it
    /// cannot be read, or holds a name that is not UTF-8.
    fn names(&mut self, dir: &str) -> Option<Vec<String>> {
        let fd = self.dirs.get(dir).ok()??;
        let mut listing = rustix::fs::Dir::read_from(&*fd).ok()?;
        let mut out = Vec::new();
        while let Some(entry) = listing.read() {
            let entry = entry.ok()?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            out.push(std::str::from_utf8(name).ok()?.to_owned());
        }
        Some(out)
    }

    /// Whether `unit` of `old` is on disk as restored and untouched since:
    /// `Some(files read since)` to keep it, `None` when it is to be
    /// written again (should the new generation hold it too).
    fn kept(&mut self, unit: Unit, old: &Units) -> Option<Vec<u32>> {
        let entries = &old.units[&unit];
        if let Unit::Package(root) = unit {
            // Every directory in a package is listed (its own too): one
            // that is only implied has no names the check could trust.
            let listed: HashSet<&str, Fast> = entries
                .iter()
                .map(|&i| &old.m.entries[i as usize])
                .filter(|e| e.kind == Kind::Dir)
                .map(|e| e.path.as_str())
                .collect();
            let implied = |i: &u32| {
                let path = old.m.entries[*i as usize].path.as_str();
                path != root && !listed.contains(split(path).0)
            };
            if !listed.contains(root) || entries.iter().any(implied) {
                return None;
            }
        }
        let mut read = Vec::new();
        for &i in entries {
            let e = &old.m.entries[i as usize];
            let shape = Shape::of(e);
            let st = self.stat(&e.path)?;
            let seen = self.as_restored(&st, &shape)?;
            if e.kind == Kind::Symlink {
                let (up, name) = split(&e.path);
                let parent = self.dirs.get(up).ok()??;
                let target = rustix::fs::readlinkat(&*parent, name, Vec::new()).ok()?;
                if Some(target.to_bytes()) != shape.target.map(str::as_bytes) {
                    return None;
                }
            }
            // A directory past the bound holds no name it was not restored
            // with, and can be listed faithfully.
            if e.kind == Kind::Dir
                && seen.past
                && !self.extras(&e.path, old, Some(shape.mtime)).is_ok_and(|x| x.is_empty())
            {
                return None;
            }
            if seen.read {
                read.push(i);
            }
        }
        Some(read)
    }
}

/// Whether `st` is what a restore makes of `s`, and untouched since
/// (a directory may be past the bound: its names are then listed), owned
/// as `trust` says (else by `euid`). `Some(seen)`: as restored.
#[allow(clippy::unnecessary_cast)] // the field types differ between targets
pub(super) fn as_restored(st: &Stat, s: &Shape, trust: &Trust, euid: u32) -> Option<Seen> {
    let kind = match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => Kind::Dir,
        FileType::RegularFile => Kind::File,
        FileType::Symlink => Kind::Symlink,
        _ => return None,
    };
    let owned = match trust.owner {
        Some((uid, gid)) => st.st_uid == uid && st.st_gid == gid,
        None => st.st_uid == euid,
    };
    let mode_ok = kind == Kind::Symlink || (st.st_mode as u32 & 0o7777) == s.mode;
    let size = match kind {
        Kind::File => s.size,
        Kind::Symlink => s.target.map_or(0, |t| t.len() as u64),
        Kind::Dir => st.st_size as u64,
    };
    let ctime = st.st_ctime as i128 * 1_000_000_000 + st.st_ctime_nsec as i128;
    let past = ctime > trust.until_ns;
    let ok = kind == s.kind
        && owned
        && mode_ok
        && (st.st_mtime as i64, st.st_mtime_nsec as i64) == (s.mtime, 0)
        && st.st_size as u64 == size
        && (!past || kind == Kind::Dir);
    ok.then(|| Seen { past, read: kind == Kind::File && (st.st_atime as i64, st.st_atime_nsec as i64) != (s.mtime, 0) })
}

/// A directory that cannot be listed faithfully.
struct Doubt;

/// An entry found as restored.
pub(super) struct Seen {
    /// A directory whose ctime is past the bound: listed.
    pub(super) past: bool,
    /// A file read since.
    pub(super) read: bool,
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use sandcache_archive::pack::Entry;

    use super::*;

    fn file(path: &str, body: &str) -> Entry {
        Entry::file(path.into(), 0o644, MTIME, body.len() as u64, blake3::hash(body.as_bytes()).to_hex().to_string())
    }

    /// A file's content in these tests: its name without `.js`.
    fn body(path: &str) -> &'static str {
        let name = path.rsplit('/').next().unwrap().trim_end_matches(".js");
        Box::leak(name.to_owned().into_boxed_str())
    }

    fn manifest(entries: Vec<Entry>) -> Manifest {
        Manifest { entries, ..Manifest::empty(3, 0) }
    }

    const MTIME: i64 = 1_600_000_000;

    /// Writes `m` as a restore would (each file's content: `body` of its
    /// path), and returns the ctime bound after it.
    fn restore(dir: &std::path::Path, m: &Manifest, body: &dyn Fn(&str) -> &'static str) -> i128 {
        for e in &m.entries {
            let p = dir.join(&e.path);
            match e.kind {
                Kind::Dir => fs::create_dir_all(&p).unwrap(),
                Kind::File => {
                    fs::create_dir_all(p.parent().unwrap()).unwrap();
                    fs::write(&p, body(&e.path)).unwrap();
                    fs::set_permissions(&p, fs::Permissions::from_mode(e.mode)).unwrap();
                }
                Kind::Symlink => std::os::unix::fs::symlink(e.target.as_deref().unwrap(), &p).unwrap(),
            }
        }
        let mut all: Vec<&Entry> = m.entries.iter().collect();
        all.sort_by(|a, b| b.path.cmp(&a.path));
        let t = rustix::fs::Timespec { tv_sec: MTIME, tv_nsec: 0 };
        let times = rustix::fs::Timestamps { last_access: t, last_modification: t };
        for e in all {
            rustix::fs::utimensat(rustix::fs::CWD, dir.join(&e.path), &times, AtFlags::SYMLINK_NOFOLLOW).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        let bound = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i128;
        std::thread::sleep(std::time::Duration::from_millis(20));
        bound
    }

    #[test]
    fn the_plan_keeps_untouched_units_and_rewrites_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        let pkg = "npm/r/a/1.0.0";
        let old = manifest(vec![
            Entry::dir("npm".into(), 0o755, MTIME),
            Entry::dir(pkg.into(), 0o755, MTIME),
            file(&format!("{pkg}/index.js"), "index"),
            Entry::dir("npm/r/b/1.0.0".into(), 0o755, MTIME),
            file("npm/r/b/1.0.0/index.js", "index"),
            Entry::dir("remote".into(), 0o755, MTIME),
            file("remote/kept.js", "kept"),
            file("remote/touched.js", "touched"),
            file("remote/gone.js", "gone"),
        ]);
        let bound = restore(&dir, &old, &body);
        // After the bound: one file rewritten as it was, one extra beside.
        fs::write(dir.join("remote/touched.js"), "touched").unwrap();
        let t = fs::File::open(dir.join("remote/touched.js")).unwrap();
        t.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(MTIME as u64)).unwrap();
        fs::write(dir.join("remote/extra.js"), "x").unwrap();
        let mut new = old.clone();
        new.entries.retain(|e| e.path != "remote/gone.js" && !e.path.starts_with("npm/r/b"));
        new.entries.push(Entry::dir("npm/r/c/1.0.0".into(), 0o755, 1_600_000_000));
        new.entries.push(file("npm/r/c/1.0.0/index.js", "index"));
        let root = Arc::new(rustix::fs::open(&dir, rustix::fs::OFlags::DIRECTORY, rustix::fs::Mode::empty()).unwrap());
        let intact =
            check(&old, root, Trust { until_ns: bound, owner: None }, &AtomicBool::new(false)).unwrap().unwrap();
        // What the manifests alone say is written: the new package, not
        // the file touched on disk (the check adds it).
        let d = diff(&old, &new);
        let early: Vec<&str> = d.written().iter().map(|&i| new.entries[i as usize].path.as_str()).collect();
        assert_eq!(early, ["npm/r/c/1.0.0", "npm/r/c/1.0.0/index.js"]);
        let p = plan(&old, &new, &intact);
        assert_eq!(p.place, [("npm/r/c/1.0.0".to_owned(), true), ("remote/touched.js".to_owned(), false)]);
        assert_eq!(p.remove, ["npm/r/b", "remote/extra.js", "remote/gone.js"].map(str::to_owned));
        assert_eq!((p.files, p.files_written, p.bytes_written), (4, 2, 5 + 7));
        assert!(p.worth_it());
        let dirs: Vec<&str> = p.dirs.iter().map(|d| d.0.as_str()).collect();
        assert_eq!(dirs, ["npm", "npm/r", "npm/r/a", "npm/r/c", "remote"]);
    }
}
