//! Whether a tree changed, or holds anything, without reading its files:
//! one `lstat` per entry.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::select::{Selection, Take};
use crate::walk::{Entry, Kind, Step, Tree, WalkError, WalkOptions};

/// True when `dir` is missing, not a directory, or holds no regular file
/// or symlink (directories alone, however many, make an empty cache). A
/// `dir` that is a symlink is an error ([`WalkError::Unsafe`]).
pub fn is_empty_tree(dir: &Path, opts: &WalkOptions) -> Result<bool, WalkError> {
    let Some(tree) = Tree::open(dir, opts)? else {
        return Ok(true);
    };
    let mut found = false;
    tree.walk::<WalkError>(&mut |e| {
        Ok(match e.meta().kind {
            Kind::File | Kind::Symlink => {
                found = true;
                Step::Stop
            }
            _ => Step::Continue,
        })
    })?;
    Ok(!found)
}

/// A hash of what an archive of `dir` would hold: every path, kind, size,
/// mtime, mode and symlink target, leaving out SQLite databases at the top
/// of `dir` (and their journals) as [`crate::write_archive`] does. Two equal
/// fingerprints mean an archive would not change. It costs one `lstat` per
/// entry. A missing dir has the fingerprint of an empty one; a dir that is
/// a symlink is an error.
///
/// Deno's own caches ([`crate::sqlite::DENO_CACHES`] and their companions, by
/// name) never count, even though a snapshot stores them: Deno writes them
/// on every run, so counting them would upload a new generation for every
/// boot. A snapshot that happens anyway (anything else changed) takes them
/// as they are then.
pub fn fingerprint(dir: &Path, skip_sqlite: bool, opts: &WalkOptions) -> Result<[u8; 32], WalkError> {
    let mut fp = Fingerprinter::new();
    let Some(tree) = Tree::open(dir, opts)? else {
        return Ok(fp.finish());
    };
    let mut select = Selection::fingerprint(skip_sqlite);
    tree.walk::<WalkError>(&mut |e| {
        let rel = e.rel().as_os_str().as_bytes();
        let meta = e.meta();
        let stamp = Stamp { size: meta.size, mtime: meta.mtime, mtime_nsec: meta.mtime_nsec, mode: meta.mode };
        match select.classify(e)? {
            Take::Dir => fp.add_dir(rel, meta.mode),
            Take::Symlink => fp.add_symlink(rel, &stamp, e.read_link()?.as_bytes()),
            Take::File => {
                // SQLite databases are looked for at the top only, where Deno
                // keeps its caches: opening every file would double the cost
                // of a walk. A deeper database only makes a change look
                // possible; the snapshot itself still leaves it out.
                if e.is_top() && select.sniffs(e) && is_database(&mut select, e)? {
                    return Ok(Step::Continue);
                }
                fp.add_file(rel, &stamp);
            }
            // This selection makes no copies: Deno's caches never count.
            Take::CacheCopy(_) | Take::LeaveOut => return Ok(Step::SkipDir),
        }
        Ok(Step::Continue)
    })?;
    Ok(fp.finish())
}

/// Whether a listed regular file is a database, by its first bytes (see
/// [`Selection::is_database`]). A file that cannot be opened as the one
/// listed counts as not a database (the fingerprint is only a change
/// detector); cancellation still stops.
fn is_database(select: &mut Selection, e: &Entry<'_>) -> Result<bool, WalkError> {
    let mut head = [0u8; 16];
    let read = e.open().and_then(|f| match f {
        Some(mut f) => f.read_full(&mut head),
        None => Ok(0),
    });
    match read {
        Ok(n) => Ok(select.is_database(e, &head[..n])),
        Err(WalkError::Cancelled) => Err(WalkError::Cancelled),
        Err(_) => Ok(false),
    }
}

/// The fingerprint's encoding, fed in walk order the entries a snapshot
/// takes (by [`fingerprint`], from the disk). Each entry is its path, a
/// NUL, its kind, then its stamp (a directory's: its mode alone) and a
/// symlink's target.
pub(crate) struct Fingerprinter(blake3::Hasher);

/// What the fingerprint counts of a file or a symlink, beside its path.
pub(crate) struct Stamp {
    pub(crate) size: u64,
    pub(crate) mtime: i64,
    pub(crate) mtime_nsec: i64,
    /// Permission bits, with setuid, setgid and sticky.
    pub(crate) mode: u32,
}

impl Fingerprinter {
    pub(crate) fn new() -> Fingerprinter {
        Fingerprinter(blake3::Hasher::new())
    }

    pub(crate) fn add_dir(&mut self, rel: &[u8], mode: u32) {
        self.0.update(rel);
        self.0.update(&[0, b'd']);
        self.0.update(&mode.to_le_bytes());
    }

    pub(crate) fn add_file(&mut self, rel: &[u8], stamp: &Stamp) {
        self.add(rel, b'f', stamp);
    }

    pub(crate) fn add_symlink(&mut self, rel: &[u8], stamp: &Stamp, target: &[u8]) {
        self.add(rel, b'l', stamp);
        self.0.update(target);
    }

    fn add(&mut self, rel: &[u8], kind: u8, stamp: &Stamp) {
        self.0.update(rel);
        self.0.update(&[0, kind]);
        self.0.update(&stamp.size.to_le_bytes());
        self.0.update(&stamp.mtime.to_le_bytes());
        self.0.update(&stamp.mtime_nsec.to_le_bytes());
        self.0.update(&stamp.mode.to_le_bytes());
    }

    pub(crate) fn finish(&self) -> [u8; 32] {
        *self.0.finalize().as_bytes()
    }
}
