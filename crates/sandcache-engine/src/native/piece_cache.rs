//! Manifest pieces kept on local disk between restores, so a restore asks
//! the store only for the pieces it does not hold.
//!
//! Pieces are content-addressed (a piece's name is the BLAKE3 of its
//! bytes) and cut where paths say, so two generations of one key, or a
//! site and the base it was built on, share most of them. Every restore
//! keeps the pieces it read here; the next one, of a newer generation or
//! of a site after a pre-warmed base, reads those from disk.
//!
//! The dir is the runner's (beside the state, see
//! [`crate::target::Target::pieces_dir`]), but nothing read from it is
//! trusted: a piece is used only when it hashes to its name, as one from
//! the store must. A file that does not is ignored (the store's copy is
//! fetched), never reported as a bad pool object. Files are opened
//! relative to the held-open dir, never through a symlink, only regular
//! files of the expected length. At most [`MAX_BYTES`] are kept: the
//! least recently used go first.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timestamps};

/// What the cache keeps at most: about ten generations' manifests of a
/// 25k-entry DENO_DIR (45 pieces of ~50 KB each).
pub(crate) const MAX_BYTES: u64 = 32 << 20;

/// A dir of pieces, `<id>.tree`.
#[derive(Debug)]
pub(crate) struct PieceCache {
    dir: OwnedFd,
}

impl PieceCache {
    /// Opens (creating, 0700) the cache at `path`, and trims it to
    /// [`MAX_BYTES`]. `None` when it cannot be used (a symlink, not a dir,
    /// a read-only disk): restores then fetch every piece, as without one.
    pub(crate) fn open(path: &Path) -> Option<PieceCache> {
        match rustix::fs::mkdir(path, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => {
                tracing::debug!("no piece cache at {}: {e}", path.display());
                return None;
            }
        }
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let dir = rustix::fs::open(path, flags, Mode::empty())
            .inspect_err(|e| tracing::debug!("no piece cache at {}: {e}", path.display()))
            .ok()?;
        let cache = PieceCache { dir };
        cache.trim(MAX_BYTES);
        Some(cache)
    }

    /// The piece `id`, when held and of `size` bytes. The caller checks
    /// its hash before trusting it. A hit counts as a use (for the trim).
    pub(crate) fn get(&self, id: &str, size: u64) -> Option<Vec<u8>> {
        let name = file_name(id)?;
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.dir, &name, flags, Mode::empty()).ok()?;
        let st = rustix::fs::fstat(&fd).ok()?;
        if !FileType::from_raw_mode(st.st_mode).is_file() || st.st_size as u64 != size {
            return None;
        }
        let now = rustix::fs::Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_NOW };
        let _ = rustix::fs::futimens(&fd, &Timestamps { last_access: now, last_modification: now });
        let mut bytes = Vec::with_capacity(size as usize);
        File::from(fd).take(size).read_to_end(&mut bytes).ok()?;
        (bytes.len() as u64 == size).then_some(bytes)
    }

    /// Keeps a piece the store gave (its hash already checked): written
    /// under a temporary name, renamed into place. Best effort.
    pub(crate) fn put(&self, id: &str, bytes: &[u8]) {
        let Some(name) = file_name(id) else { return };
        let tmp = format!(".{name}.{:08x}", rand::random::<u32>());
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let written = rustix::fs::openat(&self.dir, &tmp, flags, Mode::from_raw_mode(0o600))
            .map_err(std::io::Error::from)
            .and_then(|fd| File::from(fd).write_all(bytes))
            .and_then(|()| rustix::fs::renameat(&self.dir, &tmp, &self.dir, &name).map_err(Into::into));
        if let Err(e) = written {
            tracing::debug!("could not keep piece {id}: {e}");
            let _ = rustix::fs::unlinkat(&self.dir, &tmp, AtFlags::empty());
        }
    }

    /// Removes the least recently used pieces (and anything else in the
    /// dir) until at most `max` bytes of pieces are left.
    fn trim(&self, max: u64) {
        let Ok(dup) = rustix::io::fcntl_dupfd_cloexec(&self.dir, 0) else { return };
        let Ok(mut listing) = rustix::fs::Dir::read_from(&dup) else { return };
        let mut pieces = Vec::new();
        let mut total = 0u64;
        while let Some(Ok(entry)) = listing.next() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "." || name == ".." {
                continue;
            }
            let st = rustix::fs::statat(&self.dir, &*name, AtFlags::SYMLINK_NOFOLLOW);
            match st {
                Ok(st) if FileType::from_raw_mode(st.st_mode).is_file() && name.ends_with(".tree") => {
                    total += st.st_size as u64;
                    pieces.push(((st.st_mtime, st.st_mtime_nsec), st.st_size as u64, name));
                }
                // Temporary files of a crashed run, or what does not belong.
                _ => {
                    let _ = rustix::fs::unlinkat(&self.dir, &*name, AtFlags::empty());
                }
            }
        }
        pieces.sort();
        for (_, size, name) in pieces {
            if total <= max {
                break;
            }
            if rustix::fs::unlinkat(&self.dir, &*name, AtFlags::empty()).is_ok() {
                total -= size;
            }
        }
    }
}

/// A piece's file name, for an id that is a BLAKE3 hex digest only.
fn file_name(id: &str) -> Option<String> {
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| format!("{id}.tree"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(bytes: &[u8]) -> String {
        blake3::hash(bytes).to_hex().to_string()
    }

    #[test]
    fn pieces_round_trip_and_the_oldest_go_first() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("pieces");
        let cache = PieceCache::open(&path).unwrap();
        let (a, b) = (vec![1u8; 1000], vec![2u8; 1000]);
        cache.put(&id(&a), &a);
        cache.put(&id(&b), &b);
        assert_eq!(cache.get(&id(&a), 1000).as_deref(), Some(&a[..]));
        // Another length than the root says, or a name that is no id: none.
        assert_eq!(cache.get(&id(&a), 999), None);
        assert_eq!(cache.get("../etc/passwd", 10), None);
        cache.put("not-an-id", b"x");
        // `a` was used last: trimming to one piece keeps it.
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(cache.get(&id(&a), 1000).is_some());
        cache.trim(1000);
        assert!(cache.get(&id(&a), 1000).is_some() && cache.get(&id(&b), 1000).is_none());
    }

    #[test]
    fn a_symlink_or_a_file_is_no_cache_and_nothing_is_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, tmp.path().join("link")).unwrap();
        assert!(PieceCache::open(&tmp.path().join("link")).is_none());
        std::fs::write(tmp.path().join("file"), b"").unwrap();
        assert!(PieceCache::open(&tmp.path().join("file")).is_none());
        // A planted symlink in the cache is not read through, and goes.
        let path = tmp.path().join("pieces");
        let cache = PieceCache::open(&path).unwrap();
        let a = vec![7u8; 10];
        std::fs::write(elsewhere.join("secret"), &a).unwrap();
        std::os::unix::fs::symlink(elsewhere.join("secret"), path.join(format!("{}.tree", id(&a)))).unwrap();
        assert_eq!(cache.get(&id(&a), 10), None);
        drop(cache);
        let _ = PieceCache::open(&path).unwrap();
        assert!(std::fs::symlink_metadata(path.join(format!("{}.tree", id(&a)))).is_err());
        assert!(elsewhere.join("secret").exists());
    }
}
