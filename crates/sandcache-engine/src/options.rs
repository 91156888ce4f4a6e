//! How to restore and how to snapshot: the options of the public calls.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sandcache_archive::{Limits, Progress};

/// How to restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The hard total deadline: lock, request, download, extraction and swap.
    pub timeout: Duration,
    pub limits: Limits,
    /// Pack downloads in flight (native format).
    pub concurrency: usize,
    pub progress: Option<Arc<Progress>>,
    /// Who owns what the restore writes: `(uid, gid)`, or the restoring
    /// process. A root runner gives the tree to its worker's uid, which must
    /// be able to add modules to it.
    pub owner: Option<(u32, u32)>,
    /// Where the lock, state and index files live; by default beside the
    /// dir, as hidden siblings. A runner names a directory its worker cannot
    /// write.
    pub state_dir: Option<PathBuf>,
    /// Where to look when the cache's own key has no usable generation, in
    /// order: a key, or a prefix ending in `/` meaning the newest
    /// generations of any key under it (actions/cache's restore-keys). The
    /// first usable generation wins; the outcome's `from_key` says which.
    /// Fallbacks are only read: snapshots write the cache's own key.
    pub fallbacks: Vec<String>,
    /// Two phases (native generations with a recorded hot set): the hot
    /// files, every directory and every symlink go in first, swapped in at
    /// once (`hot-ready`); the rest is then written into the live dir, each
    /// file whole or not at all, leaving alone any path the app made
    /// meanwhile. One deadline and one lock cover both phases. See
    /// [`crate::Cache::restore_handle`] to act at `hot-ready`.
    pub hot_first: bool,
    /// Keep the manifest of the native generation restored in memory (one
    /// per process, the last): the next restore of the same dir in this
    /// process then checks that generation for a delta without reading and
    /// hashing its manifest again. For a long-running process (the runner,
    /// whose deploy follows its pre-warm); it costs the manifest's memory
    /// (some MB for a DENO_DIR).
    pub remember: bool,
    /// With `remember`: once the native generation is restored, check the
    /// dir against it in the background (nice 19) and keep inotify watches
    /// on its directories, so that the next restore of the dir, when
    /// nothing happened in it meanwhile, starts its delta from that check
    /// instead of making it on its critical path. For a dir left idle
    /// until that restore (a runner's pre-warm); one inotify instance and a
    /// watch per directory, held until then. See `docs/decisions.md`.
    pub watch_idle: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            timeout: Duration::from_secs(30),
            limits: Limits::default(),
            concurrency: 8,
            progress: None,
            owner: None,
            state_dir: None,
            fallbacks: Vec::new(),
            hot_first: false,
            remember: false,
            watch_idle: false,
        }
    }
}

/// The format a snapshot is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// sandcache's own: content-addressed packs of zstd frames and a
    /// manifest; incremental, verified, restored in parallel.
    #[default]
    Native,
    /// The seed's layout and encoding: gzip tar rooted at `/`, which
    /// `tar -xzf - -C /` (a runner still on the seed) restores.
    Tgz,
}

/// How to snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotOptions {
    pub format: Format,
    /// The total deadline; a snapshot past it is abandoned and the stored
    /// cache stays as it was.
    pub timeout: Duration,
    /// Upload even when nothing changed since the last restore or snapshot.
    pub force: bool,
    /// Bounds on the tree read: bytes of regular files and entries as they
    /// are listed, and path length. Past one the snapshot skips as
    /// `too_large` before reading that content. The defaults are restore's:
    /// a larger cache could not be restored anyway.
    pub limits: Limits,
    pub progress: Option<Arc<Progress>>,
    /// Where the lock, state and index files live (see
    /// [`RestoreOptions::state_dir`]).
    pub state_dir: Option<PathBuf>,
    /// The uid that owns the tree (a runner's worker): a file with several
    /// links that another uid owns is refused as `unsafe`.
    pub owner: Option<u32>,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        SnapshotOptions {
            format: Format::Native,
            timeout: Duration::from_secs(600),
            force: false,
            limits: Limits::default(),
            progress: None,
            state_dir: None,
            owner: None,
        }
    }
}
