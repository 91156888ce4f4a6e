//! Manifest pieces kept on local disk between restores, so a restore asks
//! the store only for the pieces it does not hold.
//!
//! Pieces are content-addressed (a piece's name is the BLAKE3 of its
//! bytes) and cut where paths say, so two generations of one key, or a
//! site and the base it was built on, share most of them. A restore that
//! completes keeps the pieces it read here ([`PieceCache::keep`], on a
//! background thread, which also trims the cache: those of
//! a manifest that was refused are never kept, and a restore that fails
//! leaves nothing); the next one, of a newer generation or of a site after
//! a pre-warmed base, reads those from disk.
//!
//! The dir is the runner's (beside the state, see
//! [`crate::target::Target::pieces_dir`]), but nothing read from it is
//! trusted: a piece is used only when it hashes to its name, as one from
//! the store must. A file that does not is ignored (the store's copy is
//! fetched), never reported as a bad pool object. Files are opened
//! relative to the held-open dir, never through a symlink, only regular
//! files of the expected length. At most [`MAX_BYTES`] are kept: the
//! least recently used go first.
//!
//! Beside the pieces, the root of each generation a restore completed
//! ([`PieceCache::put_root`]): the next delta from that generation reads
//! its whole manifest from here, with no request, and trusts it only
//! through the digest its state recorded.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timestamps};
use sandcache_archive::pack::Manifest;

/// What the cache keeps at most: about ten generations' manifests of a
/// 25k-entry DENO_DIR (45 pieces of ~50 KB each).
pub(crate) const MAX_BYTES: u64 = 32 << 20;

/// A dir of pieces, `<id>.tree`, made when a restore first keeps some.
#[derive(Debug)]
pub(crate) struct PieceCache {
    path: PathBuf,
    dir: OnceLock<OwnedFd>,
    /// Pieces read from the store, kept once the restore completes.
    pending: Mutex<Vec<(String, Vec<u8>)>>,
}

const DIR_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

impl PieceCache {
    /// The cache at `path`; nothing is made yet, nothing is trimmed (that
    /// is [`PieceCache::keep`]'s, off the restore's path). `None` when it
    /// cannot be used (a symlink, not a dir): restores then fetch every
    /// piece, as without one.
    pub(crate) fn open(path: &Path) -> Option<PieceCache> {
        let cache = PieceCache { path: path.to_owned(), dir: OnceLock::new(), pending: Mutex::new(Vec::new()) };
        match rustix::fs::open(path, DIR_FLAGS, Mode::empty()) {
            Ok(dir) => {
                let _ = cache.dir.set(dir);
            }
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => {
                tracing::debug!("no piece cache at {}: {e}", path.display());
                return None;
            }
        }
        Some(cache)
    }

    /// The piece `id`, when held and of `size` bytes. The caller checks
    /// its hash before trusting it. A hit counts as a use (for the trim).
    pub(crate) fn get(&self, id: &str, size: u64) -> Option<Vec<u8>> {
        self.read(&file_name(id)?, |len| len == size)
    }

    /// The root of `generation` as a restore of it kept it (see
    /// [`PieceCache::put_root`]). Not checked against anything: the caller
    /// trusts only the manifest it joins to, by its recorded digest.
    pub(crate) fn get_root(&self, generation: &str) -> Option<Manifest> {
        let bytes = self.read(&root_name(generation), |len| len <= MAX_ROOT)?;
        Manifest::decode(&bytes).ok()
    }

    /// Keeps the root of `generation` with the pieces, if the restore
    /// completes and it is small (a root naming pieces, ~10 KB): the next
    /// delta from that generation then reads its manifest without a
    /// request. Trimmed as pieces are.
    pub(crate) fn put_root(&self, generation: &str, root: &Manifest) {
        if root.pieces.is_empty() {
            return;
        }
        let bytes = root.encode();
        if bytes.len() as u64 <= MAX_ROOT {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.push((root_name(generation), bytes));
        }
    }

    /// A file of the cache, by name, whose length `fits`; read as a use.
    fn read(&self, name: &str, fits: impl Fn(u64) -> bool) -> Option<Vec<u8>> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(self.dir.get()?, name, flags, Mode::empty()).ok()?;
        let st = rustix::fs::fstat(&fd).ok()?;
        let size = st.st_size as u64;
        if !FileType::from_raw_mode(st.st_mode).is_file() || !fits(size) {
            return None;
        }
        let now = rustix::fs::Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_NOW };
        let _ = rustix::fs::futimens(&fd, &Timestamps { last_access: now, last_modification: now });
        let mut bytes = Vec::with_capacity(size as usize);
        File::from(fd).take(size).read_to_end(&mut bytes).ok()?;
        (bytes.len() as u64 == size).then_some(bytes)
    }

    /// A piece the store gave (its hash already checked), to keep if the
    /// restore completes.
    pub(crate) fn put(&self, id: &str, bytes: &[u8]) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let held: usize = pending.iter().map(|(_, b)| b.len()).sum();
        if let Some(name) = file_name(id)
            && held + bytes.len() <= MAX_BYTES as usize
        {
            pending.push((name, bytes.to_vec()));
        }
    }

    /// The restore completed: the pieces it read from the store are kept
    /// (the dir made, 0700, if missing), each written under a temporary
    /// name and renamed into place, then the cache trimmed to
    /// [`MAX_BYTES`]. On a background thread: none of it delays the swap.
    /// Best effort.
    pub(crate) fn keep(&self) {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if pending.is_empty() {
            return;
        }
        let dir = self.dir.get().and_then(|d| rustix::io::fcntl_dupfd_cloexec(d, 0).ok());
        let path = self.path.clone();
        crate::background::background("pieces", move || {
            let dir = match dir {
                Some(d) => d,
                None => match rustix::fs::mkdir(&path, Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => match rustix::fs::open(&path, DIR_FLAGS, Mode::empty()) {
                        Ok(fd) => fd,
                        Err(e) => return tracing::debug!("no piece cache at {}: {e}", path.display()),
                    },
                    Err(e) => return tracing::debug!("no piece cache at {}: {e}", path.display()),
                },
            };
            for (name, bytes) in pending {
                write_piece(&dir, &name, &bytes);
            }
            trim(&dir, MAX_BYTES);
        });
    }
}

/// One piece (or root) into the cache, by file name: a temporary name,
/// then renamed over its own.
fn write_piece(dir: &OwnedFd, name: &str, bytes: &[u8]) {
    let tmp = format!(".{name}.{:08x}", rand::random::<u32>());
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let written = rustix::fs::openat(dir, &tmp, flags, Mode::from_raw_mode(0o600))
        .map_err(std::io::Error::from)
        .and_then(|fd| File::from(fd).write_all(bytes))
        .and_then(|()| rustix::fs::renameat(dir, &tmp, dir, name).map_err(Into::into));
    if let Err(e) = written {
        tracing::debug!("could not keep piece {name}: {e}");
        let _ = rustix::fs::unlinkat(dir, &tmp, AtFlags::empty());
    }
}

/// Removes the least recently used pieces (and anything else in the dir)
/// until at most `max` bytes of pieces are left.
fn trim(dir: &OwnedFd, max: u64) {
    let Ok(dup) = rustix::io::fcntl_dupfd_cloexec(dir, 0) else { return };
    let Ok(mut listing) = rustix::fs::Dir::read_from(&dup) else { return };
    let mut pieces = Vec::new();
    let mut total = 0u64;
    while let Some(Ok(entry)) = listing.next() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "." || name == ".." {
            continue;
        }
        let st = rustix::fs::statat(dir, &*name, AtFlags::SYMLINK_NOFOLLOW);
        match st {
            Ok(st) if FileType::from_raw_mode(st.st_mode).is_file() && name.ends_with(".tree") => {
                total += st.st_size as u64;
                pieces.push(((st.st_mtime, st.st_mtime_nsec), st.st_size as u64, name));
            }
            // Temporary files of a crashed run, or what does not belong.
            _ => {
                let _ = rustix::fs::unlinkat(dir, &*name, AtFlags::empty());
            }
        }
    }
    pieces.sort();
    for (_, size, name) in pieces {
        if total <= max {
            break;
        }
        if rustix::fs::unlinkat(dir, &*name, AtFlags::empty()).is_ok() {
            total -= size;
        }
    }
}

/// The most bytes a kept root may have.
const MAX_ROOT: u64 = 1 << 20;

/// The file name of a generation's root: named by the BLAKE3 of the
/// generation's name, a digest as a piece's is (so trimmed as pieces are),
/// never a piece's own (that is the digest of its bytes).
fn root_name(generation: &str) -> String {
    format!("{}.tree", blake3::hash(format!("root of {generation}").as_bytes()).to_hex())
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
        assert!(!path.exists(), "nothing is made until the restore completes");
        cache.keep();
        assert!(crate::background::wait_for_background(std::time::Duration::from_secs(10)));
        // Kept for the next restore, which opens the cache again.
        let cache = PieceCache::open(&path).unwrap();
        assert_eq!(cache.get(&id(&a), 1000).as_deref(), Some(&a[..]));
        // Another length than the root says, or a name that is no id: none.
        assert_eq!(cache.get(&id(&a), 999), None);
        assert_eq!(cache.get("../etc/passwd", 10), None);
        cache.put("not-an-id", b"x");
        cache.keep();
        assert!(crate::background::wait_for_background(std::time::Duration::from_secs(10)));
        // `a` was used last: trimming to one piece keeps it.
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(cache.get(&id(&a), 1000).is_some());
        trim(cache.dir.get().unwrap(), 1000);
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
        std::fs::create_dir(&path).unwrap();
        let cache = PieceCache::open(&path).unwrap();
        let a = vec![7u8; 10];
        std::fs::write(elsewhere.join("secret"), &a).unwrap();
        std::os::unix::fs::symlink(elsewhere.join("secret"), path.join(format!("{}.tree", id(&a)))).unwrap();
        assert_eq!(cache.get(&id(&a), 10), None);
        drop(cache);
        trim(&rustix::fs::open(&path, DIR_FLAGS, Mode::empty()).unwrap(), MAX_BYTES);
        assert!(std::fs::symlink_metadata(path.join(format!("{}.tree", id(&a)))).is_err());
        assert!(elsewhere.join("secret").exists());
    }
}
