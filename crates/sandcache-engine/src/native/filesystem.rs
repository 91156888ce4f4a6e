//! How a restored entry is made on disk: its mode under the umask, files
//! created relative to a held-open dir, metadata set on the open fd.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rustix::fs::{Mode, OFlags};
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
