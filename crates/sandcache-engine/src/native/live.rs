//! The live dir of phase two: each file placed whole (a temporary name,
//! then a rename that never replaces), directories opened without
//! following, and what a tail that did not land leaves.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};
use rustix::io::Errno;
use sandcache_archive::ExtractError;
use sandcache_archive::pack::{Entry, Kind, Manifest};

use super::filesystem::{Umask, file_mode, io_err, set_meta};
use super::units::npm_package_dir;

/// The live dir of a second phase, held open. Every directory is opened
/// relative to its parent's fd with `O_NOFOLLOW`: the worker may have
/// replaced any of them with a symlink, which is then never followed.
pub(crate) struct LiveDir {
    root: Arc<OwnedFd>,
    /// Opened directories by relative path; `None`: gone or not a directory.
    /// Bounded ([`LIVE_DIRS_OPEN`]): a DENO_DIR has thousands, and a pod's
    /// descriptor limit may be 1024.
    dirs: Mutex<HashMap<String, Option<Arc<OwnedFd>>>>,
    /// Directories files landed in, whose archived mtime goes back at the end.
    touched: Mutex<HashSet<String>>,
    /// Large files being written slice by slice, under temporary names.
    parts: Mutex<HashMap<u32, Option<Arc<Part>>>>,
    /// Paths the worker made meanwhile, left alone.
    pub(crate) left_alone: AtomicU64,
    /// Files whose directory the worker removed or replaced.
    pub(crate) missed: AtomicU64,
    /// Set when the phase ended (cancelled or failed): nothing more is made.
    closed: AtomicBool,
    /// Held (shared) by each whole file being placed, from its temporary
    /// name to its rename: [`LiveDir::close`] waits for them, so a phase
    /// that ended leaves no temporary name behind when it returns.
    placing: std::sync::RwLock<()>,
    umask: Umask,
    /// What the tail is to write, and the files that went into place (or
    /// whose path the worker took first).
    tail: Mutex<Expected>,
    landed: Mutex<HashSet<u32>>,
    /// Set when every file of the tail has been dealt with.
    pub(super) complete: AtomicBool,
}

/// What a second phase is to write, as far as it is known.
#[derive(Default)]
pub(super) enum Expected {
    /// Nothing yet: phase one wrote a whole manifest's hot files, and the
    /// tail's files are not listed yet.
    #[default]
    Nothing,
    /// Unknown: phase one wrote a hot piece, and the whole manifest, which
    /// lists the rest, has not come.
    Unknown,
    /// These entries of this manifest.
    Files(Arc<Manifest>, Vec<u32>),
}

pub(super) struct Part {
    parent: Arc<OwnedFd>,
    tmp: String,
    pub(super) file: fs::File,
}

/// Most directories a second phase holds open at once.
const LIVE_DIRS_OPEN: usize = 256;

const LIVE_DIR_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

impl LiveDir {
    pub(crate) fn new(root: Arc<OwnedFd>) -> LiveDir {
        LiveDir {
            root,
            dirs: Mutex::default(),
            touched: Mutex::default(),
            parts: Mutex::default(),
            left_alone: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            placing: std::sync::RwLock::new(()),
            // A temporary file sits in a dir the worker may be using: it is
            // never writable by others before it is whole (and, when large,
            // read back), even under a zero umask; such a mode is set last.
            umask: Umask(Umask::current().0 | 0o022),
            tail: Mutex::default(),
            landed: Mutex::default(),
            complete: AtomicBool::new(false),
        }
    }

    fn dir(&self, rel: &str) -> io::Result<Option<Arc<OwnedFd>>> {
        if rel.is_empty() {
            return Ok(Some(self.root.clone()));
        }
        if let Some(d) = self.dirs.lock().unwrap_or_else(|p| p.into_inner()).get(rel) {
            return Ok(d.clone());
        }
        let (up, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let fd = match self.dir(up)? {
            None => None,
            Some(parent) => match rustix::fs::openat(&*parent, name, LIVE_DIR_FLAGS, Mode::empty()) {
                Ok(fd) => Some(Arc::new(fd)),
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => None,
                Err(e) => return Err(e.into()),
            },
        };
        let mut dirs = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
        if dirs.len() >= LIVE_DIRS_OPEN {
            // Reopened on demand (walk order keeps a directory's files
            // together, so this is rare).
            dirs.clear();
        }
        dirs.insert(rel.to_owned(), fd.clone());
        Ok(fd)
    }

    /// The directory a file lands in (`up`), opened, and remembered: its
    /// archived mtime goes back at the end.
    fn landing_dir(&self, up: &str) -> io::Result<Option<Arc<OwnedFd>>> {
        self.touched.lock().unwrap_or_else(|p| p.into_inner()).insert(up.to_owned());
        self.dir(up)
    }

    /// A new file under a fresh temporary name in `parent`, read-write,
    /// with the mode `e` will have when the umask keeps it (else private
    /// until [`set_meta`]).
    fn temp(&self, parent: &OwnedFd, entry: u32, e: &Entry) -> io::Result<(String, fs::File)> {
        let tmp = format!("{}{entry}-{:08x}", sandcache_archive::TAIL_PREFIX, rand::random::<u32>());
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(parent, tmp.as_str(), flags, Mode::from_raw_mode(file_mode(e, self.umask)))?;
        Ok((tmp, fs::File::from(fd)))
    }

    /// Renames `tmp` to `name` unless `name` exists: whatever the worker put
    /// there meanwhile stays. Returns whether the file went into place.
    fn publish(&self, parent: &OwnedFd, tmp: &str, name: &str, entry: u32) -> io::Result<bool> {
        let landed = || self.landed.lock().unwrap_or_else(|p| p.into_inner()).insert(entry);
        let moved = match rustix::fs::renameat_with(parent, tmp, parent, name, RenameFlags::NOREPLACE) {
            // No RENAME_NOREPLACE here: a hard link refuses an existing name too.
            Err(Errno::INVAL | Errno::NOSYS) => rustix::fs::linkat(parent, tmp, parent, name, AtFlags::empty())
                .and_then(|()| rustix::fs::unlinkat(parent, tmp, AtFlags::empty())),
            other => other,
        };
        match moved {
            Ok(()) => {
                landed();
                Ok(true)
            }
            Err(e) => {
                let _ = rustix::fs::unlinkat(parent, tmp, AtFlags::empty());
                match e {
                    Errno::EXIST => {
                        self.left_alone.fetch_add(1, Ordering::Relaxed);
                        landed();
                        Ok(false)
                    }
                    Errno::NOENT => {
                        self.missed.fetch_add(1, Ordering::Relaxed);
                        Ok(false)
                    }
                    e => Err(e.into()),
                }
            }
        }
    }

    /// Writes a whole file; `false` when it did not go into place.
    pub(super) fn place(&self, e: &Entry, entry: u32, data: &[u8], owner: Option<(u32, u32)>) -> io::Result<bool> {
        let _placing = self.placing.read().unwrap_or_else(|p| p.into_inner());
        if self.closed.load(Ordering::SeqCst) {
            return Ok(false);
        }
        let (up, name) = e.path.rsplit_once('/').unwrap_or(("", e.path.as_str()));
        let Some(parent) = self.landing_dir(up)? else {
            self.missed.fetch_add(1, Ordering::Relaxed);
            return Ok(false);
        };
        let (tmp, mut f) = self.temp(&parent, entry, e)?;
        if let Err(err) = io::Write::write_all(&mut f, data).and_then(|()| set_meta(&f, e, owner, self.umask)) {
            let _ = rustix::fs::unlinkat(&*parent, tmp.as_str(), AtFlags::empty());
            return Err(err);
        }
        drop(f);
        self.publish(&parent, &tmp, name, entry)
    }

    /// The temporary file a large file's slices go to (`None`: its
    /// directory is gone).
    pub(super) fn part(&self, entry: u32, e: &Entry) -> io::Result<Option<Arc<Part>>> {
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        if self.closed.load(Ordering::SeqCst) {
            return Ok(None);
        }
        if let Some(p) = parts.get(&entry) {
            return Ok(p.clone());
        }
        let up = e.path.rsplit_once('/').map_or("", |(up, _)| up);
        let part = match self.landing_dir(up)? {
            None => {
                self.missed.fetch_add(1, Ordering::Relaxed);
                None
            }
            Some(parent) => {
                let (tmp, file) = self.temp(&parent, entry, e)?;
                Some(Arc::new(Part { parent, tmp, file }))
            }
        };
        parts.insert(entry, part.clone());
        Ok(part)
    }

    fn take_part(&self, entry: u32) -> Option<Arc<Part>> {
        self.parts.lock().unwrap_or_else(|p| p.into_inner()).remove(&entry).flatten()
    }
}

impl LiveDir {
    /// Nothing more is made: once the files being placed now are in place
    /// (or their temporary names gone), each a write of one whole file.
    fn close(&self) {
        let _placing = self.placing.write().unwrap_or_else(|p| p.into_inner());
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Removes the temporary files of large files still being written: a
    /// second phase that failed or was cancelled leaves none, even while a
    /// writer thread (stopping at its next frame) still holds this.
    pub(crate) fn remove_parts(&self) {
        self.close();
        let mut guard = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        let parts = std::mem::take(&mut *guard);
        drop(guard);
        for p in parts.into_values().flatten() {
            let _ = rustix::fs::unlinkat(&*p.parent, p.tmp.as_str(), AtFlags::empty());
        }
    }
}

impl LiveDir {
    pub(super) fn expect(&self, what: Expected) {
        *self.tail.lock().unwrap_or_else(|p| p.into_inner()) = what;
    }

    /// After a second phase that did not complete: moves every npm package
    /// dir that lacks some of its files out of the way, to a fresh `trash`
    /// path (beside the dir, where its restores keep their trash), and
    /// returns those paths for the caller to remove. Deno takes a package
    /// dir that exists for complete and would never fetch its missing
    /// files; a package dir that is gone is a cold miss it fetches again,
    /// whole. A file outside any package (`remote/`, a package's
    /// `registry.json`) is a cold miss by itself. When the tail's files
    /// never became known (the whole manifest did not come after a hot
    /// piece), no package dir can be trusted complete: `npm` goes whole. A
    /// writer still finishing a file as this runs can only make a package
    /// look less complete than it is: moved, and fetched again.
    pub(crate) fn unland_incomplete_packages(&self, trash: impl Fn() -> std::path::PathBuf) -> Vec<std::path::PathBuf> {
        self.close();
        if self.complete.load(Ordering::SeqCst) {
            return Vec::new();
        }
        let tail = std::mem::take(&mut *self.tail.lock().unwrap_or_else(|p| p.into_inner()));
        let landed = std::mem::take(&mut *self.landed.lock().unwrap_or_else(|p| p.into_inner()));
        let packages: std::collections::BTreeSet<&str> = match &tail {
            Expected::Nothing => return Vec::new(),
            Expected::Unknown => ["npm"].into(),
            Expected::Files(m, entries) => entries
                .iter()
                .filter(|i| !landed.contains(i))
                .filter_map(|&i| npm_package_dir(&m.entries[i as usize].path))
                .collect(),
        };
        let mut moved = Vec::new();
        for dir in packages {
            let (up, name) = dir.rsplit_once('/').unwrap_or(("", dir));
            let Ok(Some(parent)) = self.dir(up) else { continue };
            let to = trash();
            match rustix::fs::renameat_with(&*parent, name, rustix::fs::CWD, &to, RenameFlags::NOREPLACE) {
                Ok(()) => moved.push(to),
                Err(Errno::NOENT) => {}
                Err(e) => tracing::warn!(target: "sandbox-cache", "could not move the incomplete {dir} away: {e}"),
            }
        }
        moved
    }
}

impl Drop for LiveDir {
    fn drop(&mut self) {
        self.remove_parts();
    }
}

/// The tail's large files: each read back against its hash, given its
/// metadata, and renamed into place. Returns how many went into place.
/// `suspect` is told of a file that fails its hash (its packs are bad).
pub(super) fn finish_tail(
    m: &Manifest,
    entries: &[u32],
    live: &LiveDir,
    owner: Option<(u32, u32)>,
    suspect: &dyn Fn(usize),
) -> Result<u64, ExtractError> {
    let mut n = 0;
    for &i in entries {
        let e = &m.entries[i as usize];
        let Some(part) = live.take_part(i) else { continue };
        let name = e.path.rsplit_once('/').map_or(e.path.as_str(), |(_, n)| n);
        let path = Path::new(&e.path);
        let checked = (|| {
            let mut f = &part.file;
            io::Seek::rewind(&mut f)?;
            let mut hasher = blake3::Hasher::new();
            let copied = io::copy(&mut f, &mut hasher)?;
            Ok::<bool, io::Error>(
                copied == e.size && hasher.finalize().to_hex().as_str() == e.hash.as_deref().unwrap_or_default(),
            )
        })();
        let fail = |err| {
            let _ = rustix::fs::unlinkat(&*part.parent, part.tmp.as_str(), AtFlags::empty());
            err
        };
        match checked {
            Ok(true) => {}
            Ok(false) => {
                suspect(i as usize);
                return Err(fail(ExtractError::Corrupt {
                    detail: format!("{} fails its BLAKE3 check", e.path),
                    source: None,
                }));
            }
            Err(err) => return Err(fail(io_err(path, err))),
        }
        set_meta(&part.file, e, owner, live.umask).map_err(|err| fail(io_err(path, err)))?;
        if live.publish(&part.parent, &part.tmp, name, i).map_err(|err| io_err(path, err))? {
            n += 1;
        }
    }
    // The renames moved the mtimes of the directories they landed in: put
    // back the archived ones, as a one-phase restore leaves them.
    let touched = std::mem::take(&mut *live.touched.lock().unwrap_or_else(|p| p.into_inner()));
    for e in m.entries.iter().filter(|e| e.kind == Kind::Dir && touched.contains(&e.path)) {
        if let Ok(Some(fd)) = live.dir(&e.path) {
            let t = rustix::fs::Timespec { tv_sec: e.mtime.max(0), tv_nsec: 0 };
            let _ = rustix::fs::futimens(&*fd, &rustix::fs::Timestamps { last_access: t, last_modification: t });
        }
    }
    Ok(n)
}
