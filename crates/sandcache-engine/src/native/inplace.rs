//! A delta's [`Plan`] carried out in the live dir, once its units are
//! written whole in a private staging dir on the same filesystem. Every
//! step is relative to directory fds opened without following
//! ([`DirFds`]), and each one leaves every unit whole, old or new:
//!
//! 1. what the new generation lacks (and extras) is moved away, whole,
//!    into a trash dir removed in the background;
//! 2. directories outside packages are made where missing;
//! 3. each unit goes into place: a package dir exchanged with the old one
//!    (`renameat2(RENAME_EXCHANGE)`, the old one left in staging) or
//!    renamed in (`RENAME_NOREPLACE`) where there is none; a file or
//!    symlink renamed over the old one. Nobody sees a partial package dir:
//!    it was complete in staging before it got its name;
//! 4. kept files the app read get their access time back (= mtime);
//! 5. directories outside packages get their archived modes and times.
//!
//! The cancel flag is checked before each step: a delta stopped at its
//! deadline stops between two renames.

use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, Timespec, Timestamps};
use rustix::io::Errno;
use sandcache_archive::ExtractError;
use sandcache_archive::pack::Manifest;

use super::delta::Plan;
use super::filesystem::{DirFds, dir_mode, io_err, split};

/// One delta, to carry out.
pub(crate) struct InPlace<'a> {
    pub(crate) plan: &'a Plan,
    pub(crate) new: &'a Manifest,
    /// The live dir, held open.
    pub(crate) live: Arc<OwnedFd>,
    /// The staging dir holding every unit to put in place, at its path.
    pub(crate) staging: Arc<OwnedFd>,
    /// A fresh name beside the live dir (on its filesystem) for what is
    /// moved away: made when first needed.
    pub(crate) trash: PathBuf,
    pub(crate) owner: Option<(u32, u32)>,
    pub(crate) cancel: &'a AtomicBool,
}

/// Carries out the plan. On an error (or cancelled) it stops where it is:
/// every unit whole, some old, some new.
pub(crate) fn apply(job: &InPlace) -> Result<(), ExtractError> {
    let InPlace { plan, new, owner, cancel, .. } = *job;
    let mut live = DirFds::new(job.live.clone());
    let mut staged = DirFds::new(job.staging.clone());
    let mut trash = Trash { path: &job.trash, fd: None, next: 0 };
    let stop = || match cancel.load(Ordering::Relaxed) {
        true => Err(ExtractError::Cancelled),
        false => Ok(()),
    };
    let parent_of = |dirs: &mut DirFds, path: &str| -> Result<Arc<OwnedFd>, ExtractError> {
        let up = split(path).0;
        dirs.get(up)
            .map_err(err(path))?
            .ok_or_else(|| err(path)(io::Error::other(format!("`{up}` is not a directory"))))
    };

    // 1. Away: what the new generation lacks, topmost.
    for path in &plan.remove {
        stop()?;
        if let Some(parent) = live.get(split(path).0).map_err(err(path))? {
            trash.take(&parent, split(path).1).map_err(err(path))?;
        }
        live.forget(path);
    }

    // 2. Directories outside packages, parents first, made where missing
    //    (whatever else has the name goes).
    for (path, entry) in &plan.dirs {
        stop()?;
        let parent = parent_of(&mut live, path)?;
        let name = split(path).1;
        match rustix::fs::statat(&*parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => continue,
            Ok(_) => trash.take(&parent, name).map_err(err(path))?,
            Err(Errno::NOENT) => {}
            Err(e) => return Err(err(path)(e.into())),
        }
        let mode = entry.map_or(0o755, |i| dir_mode(&new.entries[i as usize]));
        rustix::fs::mkdirat(&*parent, name, Mode::from_raw_mode(mode)).map_err(|e| err(path)(e.into()))?;
        live.forget(path);
        if let Some((uid, gid)) = owner {
            let (uid, gid) = (rustix::fs::Uid::from_raw(uid), rustix::fs::Gid::from_raw(gid));
            rustix::fs::chownat(&*parent, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| err(path)(e.into()))?;
        }
    }

    // 3. Units, whole.
    for (path, package) in &plan.place {
        stop()?;
        let (from, to) = (parent_of(&mut staged, path)?, parent_of(&mut live, path)?);
        let name = split(path).1;
        let placed = match package {
            true => exchange(&from, &to, name, &mut trash),
            false => rename_over(&from, &to, name, &mut trash),
        };
        placed.map_err(err(path))?;
        live.forget(path);
    }

    // 4. Kept files read since their restore: unread again, as restored
    //    (their ctime moves, before the delta's bound).
    for &i in &plan.reset_atime {
        stop()?;
        let e = &new.entries[i as usize];
        if let Ok(Some(parent)) = live.get(split(&e.path).0) {
            let t = Timespec { tv_sec: e.mtime.max(0), tv_nsec: 0 };
            let times = Timestamps { last_access: t, last_modification: t };
            let _ = rustix::fs::utimensat(&*parent, split(&e.path).1, &times, AtFlags::SYMLINK_NOFOLLOW);
        }
    }

    // 5. Directories' owners, modes and times, deepest first, on their
    //    own fds: as a full restore leaves them (renames moved the times).
    for (path, entry) in plan.dirs.iter().rev() {
        stop()?;
        let Some(i) = entry else { continue };
        let e = &new.entries[*i as usize];
        let fd = live.get(path).map_err(err(path))?.ok_or_else(|| err(path)(io::Error::other("not a directory")))?;
        let st = rustix::fs::fstat(&*fd).map_err(|e| err(path)(e.into()))?;
        if let Some((uid, gid)) = owner.filter(|(uid, gid)| (st.st_uid, st.st_gid) != (*uid, *gid)) {
            let (uid, gid) = (rustix::fs::Uid::from_raw(uid), rustix::fs::Gid::from_raw(gid));
            rustix::fs::fchown(&*fd, Some(uid), Some(gid)).map_err(|e| err(path)(e.into()))?;
        }
        if st.st_mode & 0o7777 != dir_mode(e) {
            rustix::fs::fchmod(&*fd, Mode::from_raw_mode(dir_mode(e))).map_err(|e| err(path)(e.into()))?;
        }
        // Most are as restored already (no unit placed or moved away in
        // them, not listed since): a write less each, of an inode a disk
        // filesystem would journal.
        #[allow(clippy::unnecessary_cast)] // the field types differ between targets
        let as_set = |sec: i64, nsec: i64| (sec as i64, nsec as i64) == (e.mtime.max(0), 0);
        if as_set(st.st_mtime as i64, st.st_mtime_nsec as i64) && as_set(st.st_atime as i64, st.st_atime_nsec as i64) {
            continue;
        }
        let t = Timespec { tv_sec: e.mtime.max(0), tv_nsec: 0 };
        rustix::fs::futimens(&*fd, &Timestamps { last_access: t, last_modification: t })
            .map_err(|e| err(path)(e.into()))?;
    }
    Ok(())
}

/// An I/O error of `path`, for `map_err`.
fn err(path: &str) -> impl FnOnce(io::Error) -> ExtractError + '_ {
    move |e| io_err(Path::new(path), e)
}

/// Puts package dir `name` of `from` (staging) in place in `to`: exchanged
/// with the old one, which stays behind in staging, or renamed in where
/// there is none. Without `RENAME_EXCHANGE` (some filesystems), the old
/// one goes first: the place is briefly empty, never partial.
fn exchange(from: &OwnedFd, to: &OwnedFd, name: &str, trash: &mut Trash) -> io::Result<()> {
    match rustix::fs::renameat_with(from, name, to, name, RenameFlags::EXCHANGE) {
        Ok(()) => Ok(()),
        Err(Errno::NOENT) => match rustix::fs::renameat_with(from, name, to, name, RenameFlags::NOREPLACE) {
            Ok(()) => Ok(()),
            // Made meanwhile: exchanged after all.
            Err(Errno::EXIST) => Ok(rustix::fs::renameat_with(from, name, to, name, RenameFlags::EXCHANGE)?),
            Err(Errno::INVAL | Errno::NOSYS) => Ok(rustix::fs::renameat(from, name, to, name)?),
            Err(e) => Err(e.into()),
        },
        Err(Errno::INVAL | Errno::NOSYS) => {
            trash.take(to, name)?;
            Ok(rustix::fs::renameat(from, name, to, name)?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Renames file or symlink `name` of `from` (staging) over the one in `to`;
/// a directory in its place (not the old generation's: an extra made
/// since) is moved away first.
fn rename_over(from: &OwnedFd, to: &OwnedFd, name: &str, trash: &mut Trash) -> io::Result<()> {
    match rustix::fs::renameat(from, name, to, name) {
        Ok(()) => Ok(()),
        Err(Errno::ISDIR | Errno::NOTEMPTY | Errno::EXIST) => {
            trash.take(to, name)?;
            Ok(rustix::fs::renameat(from, name, to, name)?)
        }
        Err(e) => Err(e.into()),
    }
}

/// A private dir for what a delta moves away, made on first use, on the
/// live dir's filesystem; removed in the background afterwards.
struct Trash<'a> {
    path: &'a Path,
    fd: Option<OwnedFd>,
    next: u64,
}

impl Trash<'_> {
    /// Moves `name` of `parent` into the trash; gone already is fine.
    fn take(&mut self, parent: &OwnedFd, name: &str) -> io::Result<()> {
        if self.fd.is_none() {
            std::fs::DirBuilder::new().mode(0o700).create(self.path)?;
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let fd = rustix::fs::open(self.path, flags, Mode::empty())?;
            if rustix::fs::fstat(&fd)?.st_uid != rustix::process::geteuid().as_raw() {
                return Err(io::Error::other("the trash dir was replaced as it was made"));
            }
            self.fd = Some(fd);
        }
        let fd = self.fd.as_ref().expect("made above");
        self.next += 1;
        match rustix::fs::renameat(parent, name, fd, OsString::from(self.next.to_string()).as_os_str()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
