//! What a snapshot takes from a tree: the one policy, for the tar writer,
//! the fingerprint and the native build.
//!
//! * Directories (walked into) and symlinks are taken.
//! * Regular files are taken, except SQLite databases, told by their first
//!   16 bytes ([`SQLITE_MAGIC`]), and the `-wal`, `-shm` and `-journal`
//!   companions ([`COMPANIONS`]) of one seen before them: a copy of a
//!   database taken while it is written is corrupt, and such caches
//!   regenerate.
//! * Deno's own caches at the top ([`sqlite::is_deno_cache`], by name,
//!   whatever they are, and their companions) are never read as they are:
//!   each is taken as a consistent copy (see [`crate::sqlite`]) when there
//!   is a scratch dir to make it in, and left out otherwise.
//! * FIFOs, sockets and devices are left out, never opened.
//!
//! The walker itself never lists sandcache's own names
//! ([`crate::RESERVED_PREFIX`], [`crate::TAIL_PREFIX`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::sqlite::{self, COMPANIONS, Copier, SQLITE_MAGIC, SqliteOptions};
use crate::walk::{Entry, FileReader, Kind, WalkError};

/// What a snapshot does with an entry of the walk.
#[derive(Debug)]
pub enum Take {
    /// A directory: taken, and walked into.
    Dir,
    /// A symlink: taken, with the target [`Entry::read_link`] reads.
    Symlink,
    /// A regular file: taken, through [`Entry::open`], unless its first
    /// bytes make it a database (see [`Selection::is_database`]).
    File,
    /// One of Deno's caches: taken as this consistent copy, stored at the
    /// entry's path with the entry's mode and times.
    CacheCopy(FileReader),
    /// Left out, and not walked into (`Step::SkipDir`).
    LeaveOut,
}

/// The policy over one walk: it remembers the databases seen, whose
/// companions come after them in the walk's name order, and copies Deno's
/// caches (the scratch dir for copies is removed when it is dropped).
#[derive(Debug)]
pub struct Selection {
    /// Leave databases out, and take Deno's caches only as copies.
    skip_sqlite: bool,
    copier: Option<Copier>,
    /// Log each special file left out (a snapshot does, a fingerprint not).
    log: bool,
    /// SQLite databases seen (relative paths), for their companions.
    databases: Vec<PathBuf>,
}

impl Selection {
    /// What a snapshot takes. Deno's caches are copied in `sqlite`'s
    /// scratch dir, or left out without one; `cancel` stops a copy.
    pub fn new(sqlite: Option<SqliteOptions>, cancel: Option<Arc<AtomicBool>>) -> Selection {
        let copier = sqlite.map(|o| Copier::new(o, cancel));
        Selection { skip_sqlite: true, copier, log: true, databases: Vec::new() }
    }

    /// Everything but special files: databases and Deno's caches as they
    /// are (a tar writer's `skip_sqlite: false`).
    pub(crate) fn everything() -> Selection {
        Selection { skip_sqlite: false, copier: None, log: true, databases: Vec::new() }
    }

    /// For the fingerprint, which copies nothing and logs nothing: Deno's
    /// caches are left out when `skip_sqlite`, everything but special files
    /// is taken otherwise.
    pub(crate) fn fingerprint(skip_sqlite: bool) -> Selection {
        Selection { skip_sqlite, copier: None, log: false, databases: Vec::new() }
    }

    /// What to do with `e`. For one of Deno's caches, makes the copy (see
    /// [`crate::sqlite`]: it may wait for the database to be left alone);
    /// fails only when cancelled.
    pub fn classify(&mut self, e: &Entry<'_>) -> Result<Take, WalkError> {
        if self.skip_sqlite && e.is_top() && sqlite::is_deno_cache_or_companion(e.name()) {
            // Deno's own caches: a consistent copy, or nothing.
            let copy = match self.copier.as_mut() {
                Some(c) if sqlite::is_deno_cache(e.name()) => c.copy(e)?,
                _ => None,
            };
            return Ok(copy.map_or(Take::LeaveOut, Take::CacheCopy));
        }
        let kind = e.meta().kind;
        Ok(match kind {
            Kind::Dir => Take::Dir,
            Kind::Symlink => Take::Symlink,
            Kind::File if self.skip_sqlite && is_companion(e.rel(), &self.databases) => Take::LeaveOut,
            Kind::File => Take::File,
            Kind::Fifo | Kind::Socket | Kind::CharDevice | Kind::BlockDevice | Kind::Unknown => {
                // Listed, never opened.
                if self.log {
                    tracing::debug!(path = %e.path().display(), "leaving out {}", kind.describe());
                }
                Take::LeaveOut
            }
        })
    }

    /// Whether a [`Take::File`] must be told from a database by its first
    /// 16 bytes, given to [`Selection::is_database`] before it is taken.
    pub(crate) fn sniffs(&self, e: &Entry<'_>) -> bool {
        self.skip_sqlite && e.meta().size >= SQLITE_MAGIC.len() as u64
    }

    /// Whether the [`Take::File`] `e`, whose content starts with `head`, is
    /// a SQLite database: then it is left out, and so are its companions
    /// after it.
    pub fn is_database(&mut self, e: &Entry<'_>, head: &[u8]) -> bool {
        let database = self.skip_sqlite && head.starts_with(SQLITE_MAGIC);
        if database {
            self.databases.push(e.rel().to_owned());
        }
        database
    }
}

/// Whether `rel` is the `-wal`, `-shm` or `-journal` of a database seen.
fn is_companion(rel: &Path, sqlite: &[PathBuf]) -> bool {
    let Some(name) = rel.to_str() else {
        return false;
    };
    COMPANIONS
        .iter()
        .any(|suffix| name.strip_suffix(suffix).is_some_and(|base| sqlite.iter().any(|s| s.to_str() == Some(base))))
}
