//! How a restored entry is made on disk: its mode under the umask, files
//! created relative to a held-open dir, metadata set on the open fd.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use sandcache_archive::ExtractError;
use sandcache_archive::pack::Entry;

pub(super) fn io_err(path: &Path, e: io::Error) -> ExtractError {
    ExtractError::Io { path: path.to_owned(), source: e }
}

/// A restored directory's mode: setuid, setgid and sticky dropped, owner
/// rwx always kept.
pub(super) fn dir_mode(e: &Entry) -> u32 {
    (e.mode & 0o777) | 0o700
}

/// The mode to create a file with: its final one when the umask keeps it,
/// else private until [`set_meta`] sets it.
pub(super) fn file_mode(e: &Entry, exact: Umask) -> u32 {
    if exact.keeps(e.mode & 0o777) { e.mode & 0o777 } else { 0o600 }
}

/// This process's umask, read once per restore: an entry whose mode has no
/// bit the umask clears is created with its final mode, and needs no chmod.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Umask(pub(super) u32);

impl Umask {
    /// Read from `/proc/self/status` (the umask itself cannot be read
    /// without setting it, racing other threads); unknown, it keeps nothing,
    /// and every mode is set explicitly.
    pub(crate) fn current() -> Umask {
        let read = fs::read_to_string("/proc/self/status").ok().and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Umask:").and_then(|v| u32::from_str_radix(v.trim(), 8).ok()))
        });
        Umask(read.unwrap_or(0o777))
    }

    /// Whether a file or directory created with `mode` has exactly it.
    pub(super) fn keeps(self, mode: u32) -> bool {
        mode & self.0 == 0
    }
}

pub(super) fn create(dir: &OwnedFd, rel: &str, exclusive: bool, mode: u32) -> io::Result<fs::File> {
    // Relative to the held-open staging dir: through `/proc/self/fd/N`, each
    // open walked four more path components, two of them procfs lookups
    // (3% of a restore's CPU).
    let mut flags = OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if exclusive {
        flags |= OFlags::EXCL;
    }
    Ok(fs::File::from(rustix::fs::openat(dir, rel, flags, Mode::from_raw_mode(mode))?))
}

/// Mode (unless it was created with it: the umask kept it), times and, for
/// a runner's worker, the owner, all on the open fd. The owner first: chown
/// clears setuid bits.
pub(super) fn set_meta(f: &fs::File, e: &Entry, owner: Option<(u32, u32)>, exact: Umask) -> io::Result<()> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(f, Some(uid), Some(gid))?;
    }
    if !exact.keeps(e.mode & 0o777) {
        f.set_permissions(fs::Permissions::from_mode(e.mode & 0o777))?;
    }
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(e.mtime.max(0) as u64);
    f.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
}

/// A path's directory and name (`""` for the top).
pub(crate) fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

const DIR_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

/// Most directories a [`DirFds`] holds open at once (a pod's descriptor
/// limit may be 1024).
const DIRS_OPEN: usize = 256;

/// The directories of a tree someone else may change, each opened
/// relative to its parent's fd with `O_NOFOLLOW`: a symlink put in a
/// directory's place is never followed. Kept open while used.
pub(crate) struct DirFds {
    root: Arc<OwnedFd>,
    /// By relative path; `None`: missing, or not a directory.
    open: HashMap<String, Option<Arc<OwnedFd>>, super::units::Fast>,
    /// The one asked for last: walk order asks for one directory many
    /// times in a row.
    last: Option<(String, Option<Arc<OwnedFd>>)>,
}

impl DirFds {
    pub(crate) fn new(root: Arc<OwnedFd>) -> DirFds {
        DirFds { root, open: HashMap::default(), last: None }
    }

    /// The directory at `rel` (`""`: the top); `None` when it is missing
    /// or is not a directory (a symlink included).
    pub(crate) fn get(&mut self, rel: &str) -> io::Result<Option<Arc<OwnedFd>>> {
        if rel.is_empty() {
            return Ok(Some(self.root.clone()));
        }
        if let Some((path, d)) = &self.last
            && path == rel
        {
            return Ok(d.clone());
        }
        let d = self.lookup(rel)?;
        self.last = Some((rel.to_owned(), d.clone()));
        Ok(d)
    }

    fn lookup(&mut self, rel: &str) -> io::Result<Option<Arc<OwnedFd>>> {
        if let Some(d) = self.open.get(rel) {
            return Ok(d.clone());
        }
        let (up, name) = split(rel);
        let fd = match self.get(up)? {
            None => None,
            Some(parent) => match rustix::fs::openat(&*parent, name, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => Some(Arc::new(fd)),
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => None,
                Err(e) => return Err(e.into()),
            },
        };
        if self.open.len() >= DIRS_OPEN {
            // Opened again when needed: walk order keeps a directory's
            // entries together.
            self.open.clear();
        }
        self.open.insert(rel.to_owned(), fd.clone());
        Ok(fd)
    }

    /// Forgets `rel` and everything under it: moved, removed or made.
    pub(crate) fn forget(&mut self, rel: &str) {
        self.last = None;
        self.open.retain(|k, _| !(k == rel || (k.starts_with(rel) && k.as_bytes().get(rel.len()) == Some(&b'/'))));
    }
}
