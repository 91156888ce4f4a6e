//! The directory being restored: its staging area, lock, state file and the
//! atomic swap that puts a restored tree in place.
//!
//! Everything sandcache keeps beside a directory `D` is a hidden sibling
//! named after it: `.D.sandcache.lock`, `.D.sandcache-state.json`,
//! `.D.sandcache-staging-*` and `.D.sandcache-trash-*`. When `D` is a mount
//! point (a volume), staging and trash live inside it instead, so the swap
//! stays on one filesystem.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{CWD, FlockOperation, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use crate::background::remove_in_background;
use crate::error::UntrustedSymlink;

/// Marker in the names of everything sandcache keeps inside a mounted dir;
/// snapshots leave such entries out.
use sandcache_archive::RESERVED_PREFIX as INSIDE_MARKER;

#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Absolute, with symlinks resolved.
    pub(crate) dir: PathBuf,
    parent: PathBuf,
    name: OsString,
    /// `dir` is a mount point: stage inside it.
    inside: bool,
    /// Where the lock, state and index live, when not beside `dir`.
    state_dir: Option<PathBuf>,
}

impl Target {
    /// Keeps the lock, state and index in `state_dir` (when given) instead
    /// of beside the dir, e.g. where a runner's worker cannot write them.
    pub(crate) fn with_state_dir(mut self, state_dir: Option<&Path>) -> Target {
        self.state_dir = state_dir.map(Path::to_owned);
        self
    }

    /// For reading the dir (a snapshot): its parents are walked one by one
    /// (see [`walk`]: a symlink among them is followed only when root or we
    /// own it and the dir it is in), the dir's own name never followed: if
    /// it is a symlink, `dir` stays the link's path, which the walker then
    /// refuses to open (`O_NOFOLLOW`), however often it is swapped.
    pub(crate) fn resolve_nofollow(dir: &Path) -> io::Result<Target> {
        let abs = absolute(dir)?;
        let (Some(parent), Some(name)) = (abs.parent(), abs.file_name()) else {
            // `/`, or a path ending in `..`: no name of its own to keep.
            let whole = walk(&abs, false)?;
            if whole.parent().is_none() {
                return Err(invalid("the target dir cannot be `/`"));
            }
            return Target::resolve_nofollow(&whole);
        };
        Target::at(walk(parent, false)?, name)
    }

    /// For writing the dir (a restore): its parents are walked as for
    /// [`Target::resolve_nofollow`], each missing one created (0755) right
    /// where the walk is, its own name never followed (the swap renames it,
    /// and renames do not follow their last component either).
    pub(crate) fn resolve_for_restore(dir: &Path) -> io::Result<Target> {
        let abs = absolute(dir)?;
        match (abs.parent(), abs.file_name()) {
            (Some(parent), Some(name)) => Target::at(walk(parent, true)?, name),
            (Some(parent), None) => {
                walk(parent, true)?;
                Target::resolve_nofollow(&abs)
            }
            (None, _) => Err(invalid("the target dir cannot be `/`")),
        }
    }

    /// `name` in `parent`, a dir already resolved.
    fn at(parent: PathBuf, name: &std::ffi::OsStr) -> io::Result<Target> {
        let dir = parent.join(name);
        let inside = match (fs::symlink_metadata(&dir), fs::metadata(&parent)) {
            (Ok(d), Ok(p)) if d.is_dir() => d.dev() != p.dev() || is_mount_root(&dir),
            (Ok(d), _) if !d.is_dir() && !d.is_symlink() => {
                return Err(invalid(&format!("`{}` exists and is not a directory", dir.display())));
            }
            _ => false,
        };
        Ok(Target { dir, parent, name: name.to_owned(), inside, state_dir: None })
    }

    fn sibling(&self, what: &str) -> PathBuf {
        let mut n = OsString::from(".");
        n.push(&self.name);
        n.push(".sandcache");
        n.push(what);
        self.parent.join(n)
    }

    /// A bookkeeping file: in the state dir if there is one, else beside.
    fn bookkeeping(&self, what: &str) -> PathBuf {
        match &self.state_dir {
            Some(d) => {
                let mut n = self.name.clone();
                n.push(".sandcache");
                n.push(what);
                d.join(n)
            }
            None => self.sibling(what),
        }
    }

    pub(crate) fn state_path(&self) -> PathBuf {
        self.bookkeeping("-state.json")
    }

    /// Present while a two-phase restore's second phase has not finished:
    /// snapshots of the dir skip as `incomplete`.
    pub(crate) fn tail_path(&self) -> PathBuf {
        self.bookkeeping("-tail")
    }

    /// Pool objects this process found bad (see `bad`): kept across sites,
    /// as they are the store's, not the dir's.
    pub(crate) fn bad_path(&self) -> PathBuf {
        self.bookkeeping("-bad.json")
    }

    /// Manifest pieces kept between restores (see `native::PieceCache`).
    pub(crate) fn pieces_dir(&self) -> PathBuf {
        self.bookkeeping("-pieces")
    }

    /// Per-file hashes of the last restore or snapshot (native format).
    pub(crate) fn index_path(&self) -> PathBuf {
        self.bookkeeping("-index.json")
    }

    /// A fresh name for the private dir a snapshot copies Deno's SQLite
    /// caches in: beside the state and index (in the state dir when there
    /// is one), never inside the dir, even a mount point.
    pub(crate) fn sqlite_scratch(&self) -> PathBuf {
        self.bookkeeping(&format!("-sqlite-{}-{:08x}", std::process::id(), rand::random::<u32>()))
    }

    /// SQLite scratch dirs left by snapshots that crashed. Call with the
    /// lock held: no live snapshot owns them then.
    pub(crate) fn sqlite_leftovers(&self) -> Vec<PathBuf> {
        let stem = self.bookkeeping("-sqlite-");
        let (Some(dir), Some(prefix)) = (stem.parent(), stem.file_name()) else {
            return Vec::new();
        };
        let Ok(entries) = fs::read_dir(dir) else {
            return Vec::new();
        };
        let prefix = prefix.as_encoded_bytes();
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().as_encoded_bytes().starts_with(prefix))
            .map(|e| e.path())
            .collect()
    }

    /// A fresh name for a staging or trash dir.
    pub(crate) fn scratch(&self, kind: &str) -> PathBuf {
        let tag = format!("-{kind}-{}-{:08x}", std::process::id(), rand::random::<u32>());
        if self.inside { self.dir.join(format!("{INSIDE_MARKER}{}", &tag[1..])) } else { self.sibling(&tag) }
    }

    /// Takes the directory's lock, polling until `deadline`. Restores and
    /// snapshots of one directory never overlap, across processes.
    pub(crate) async fn lock(&self, deadline: Instant) -> io::Result<Lock> {
        let path = self.bookkeeping(".lock");
        // Never through a symlink, never a FIFO or device someone planted.
        let fd = match rustix::fs::open(
            &path,
            OFlags::CREATE | OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => fd,
            // Nobody can change a dir on a read-only filesystem: a snapshot
            // of it needs no lock, and a restore fails at its staging dir.
            Err(Errno::ROFS) => return Ok(Lock { _fd: None }),
            Err(Errno::LOOP) => {
                return Err(with_path(io::Error::other("the lock file is a symlink; refusing to follow it"), &path));
            }
            Err(e) => return Err(with_path(e.into(), &path)),
        };
        if !rustix::fs::fstat(&fd).is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_file()) {
            return Err(with_path(io::Error::other("the lock file is not a regular file"), &path));
        }
        loop {
            match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(Lock { _fd: Some(fd) }),
                Err(Errno::WOULDBLOCK) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Err(Errno::WOULDBLOCK) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("`{}` is held by another sandcache", path.display()),
                    ));
                }
                Err(e) => return Err(with_path(e.into(), &path)),
            }
        }
    }

    /// Staging and trash dirs left by earlier runs that crashed or failed.
    /// Call with the lock held: no live restore owns them then.
    pub(crate) fn leftovers(&self) -> Vec<PathBuf> {
        let (dir, prefix) = if self.inside {
            (self.dir.clone(), INSIDE_MARKER.to_owned())
        } else {
            (self.parent.clone(), format!(".{}.sandcache-", self.name.to_string_lossy()))
        };
        let Ok(entries) = fs::read_dir(&dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.strip_prefix(&prefix).is_some_and(|rest| rest.starts_with("staging-") || rest.starts_with("trash-"))
            })
            .map(|e| e.path())
            .collect()
    }

    /// Creates an empty staging dir, private (0700, ours) until swapped in,
    /// and holds it open: see [`Staging`].
    pub(crate) fn create_staging(&self) -> io::Result<Staging> {
        if self.inside {
            // The mounted dir may be missing only if unmounted meanwhile.
            make_parents(&self.dir)?;
        }
        let path = self.scratch("staging");
        fs::DirBuilder::new().mode(0o700).create(&path).map_err(|e| with_path(e, &path))?;
        let fd = rustix::fs::open(&path, DIR_FLAGS, Mode::empty()).map_err(|e| with_path(e.into(), &path))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| with_path(e.into(), &path))?;
        if st.st_uid != rustix::process::geteuid().as_raw() {
            return Err(with_path(io::Error::other("the staging dir was replaced as it was made"), &path));
        }
        Ok(Staging { path, fd: std::sync::Arc::new(fd) })
    }

    /// Puts `staging` in place of the directory. Returns the old tree, now
    /// under a trash name, for removal off the critical path.
    pub(crate) fn swap_in(&self, staging: &Staging) -> io::Result<Option<PathBuf>> {
        if self.inside {
            return self.swap_children(staging).map(Some);
        }
        let old = self.swap_by_name(&staging.path)?;
        // Beside the dir the swap goes by name: whoever can write the parent
        // could have put something else under the staging dir's name. Then
        // what went into place is not ours, and the restore did not happen.
        let ours = rustix::fs::fstat(&*staging.fd).map_err(|e| with_path(e.into(), &staging.path))?;
        let now = rustix::fs::lstat(&self.dir).map_err(|e| with_path(e.into(), &self.dir))?;
        if (now.st_dev, now.st_ino) != (ours.st_dev, ours.st_ino) {
            return Err(with_path(
                io::Error::other("the staging dir was replaced before the swap (its parent is writable by others)"),
                &self.dir,
            ));
        }
        Ok(old)
    }

    fn swap_by_name(&self, staging: &Path) -> io::Result<Option<PathBuf>> {
        match rustix::fs::renameat_with(CWD, staging, CWD, &self.dir, RenameFlags::EXCHANGE) {
            Ok(()) => {
                let trash = self.scratch("trash");
                fs::rename(staging, &trash).map_err(|e| with_path(e, staging))?;
                Ok(Some(trash))
            }
            Err(Errno::NOENT) => {
                match rustix::fs::renameat_with(CWD, staging, CWD, &self.dir, RenameFlags::NOREPLACE) {
                    Ok(()) => Ok(None),
                    Err(Errno::EXIST) => {
                        match rustix::fs::renameat_with(CWD, staging, CWD, &self.dir, RenameFlags::EXCHANGE) {
                            Ok(()) => {
                                let trash = self.scratch("trash");
                                fs::rename(staging, &trash).map_err(|e| with_path(e, staging))?;
                                Ok(Some(trash))
                            }
                            Err(e) => Err(with_path(e.into(), &self.dir)),
                        }
                    }
                    Err(Errno::INVAL | Errno::NOSYS) => {
                        fs::rename(staging, &self.dir).map(|()| None).map_err(|e| with_path(e, &self.dir))
                    }
                    Err(e) => Err(with_path(e.into(), &self.dir)),
                }
            }
            // No RENAME_EXCHANGE on this filesystem: move the old tree aside
            // first. The dir is briefly absent, never half-written.
            Err(Errno::INVAL | Errno::NOSYS) => {
                let trash = self.scratch("trash");
                let old = match fs::rename(&self.dir, &trash) {
                    Ok(()) => Some(trash),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                    Err(e) => return Err(with_path(e, &self.dir)),
                };
                fs::rename(staging, &self.dir).map_err(|e| with_path(e, &self.dir))?;
                Ok(old)
            }
            Err(e) => Err(with_path(e.into(), &self.dir)),
        }
    }

    /// Moves the dir's whole content aside at once, under a trash name, and
    /// returns it for removal in the background; the dir is left empty
    /// (created if missing). A mount point's entries move one by one.
    pub(crate) fn clear(&self) -> io::Result<Option<PathBuf>> {
        if !self.inside {
            let trash = self.scratch("trash");
            let moved = match fs::rename(&self.dir, &trash) {
                Ok(()) => Some(trash),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(with_path(e, &self.dir)),
            };
            fs::DirBuilder::new().mode(0o755).create(&self.dir).map_err(|e| with_path(e, &self.dir))?;
            return Ok(moved);
        }
        let trash = self.scratch("trash");
        fs::DirBuilder::new().mode(0o700).create(&trash).map_err(|e| with_path(e, &trash))?;
        for name in read_names(&self.dir)? {
            if name.to_string_lossy().starts_with(INSIDE_MARKER) {
                continue;
            }
            fs::rename(self.dir.join(&name), trash.join(&name)).map_err(|e| with_path(e, &self.dir.join(&name)))?;
        }
        Ok(Some(trash))
    }

    /// The live dir after `staging` was swapped in, held open: the staging
    /// dir itself, or for a mount point (whose entries were moved out of
    /// staging) the mount point, opened without following its name.
    pub(crate) fn live_root(&self, staging: &Staging) -> io::Result<std::sync::Arc<OwnedFd>> {
        if !self.inside {
            return Ok(staging.fd());
        }
        let fd = rustix::fs::open(&self.dir, DIR_FLAGS, Mode::empty()).map_err(|e| with_path(e.into(), &self.dir))?;
        Ok(std::sync::Arc::new(fd))
    }

    /// Forgets what the last restore or snapshot recorded of the dir.
    pub(crate) fn forget(&self) {
        for p in [self.state_path(), self.index_path(), self.tail_path()] {
            if let Err(e) = fs::remove_file(&p) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::debug!("could not remove {}: {e}", p.display());
                }
            }
        }
    }

    /// The mount-point case: each top-level entry is exchanged on its own, so
    /// every package dir is either old and complete or new and complete.
    /// Old entries the new tree lacks move into the trash (the staging dir).
    ///
    /// Every rename is relative to open directory fds: the dir lives among
    /// the worker's files, which may rename or replace the staging dir's
    /// name at any moment; the fds still name the real directories.
    fn swap_children(&self, staging: &Staging) -> io::Result<PathBuf> {
        let dir_fd =
            rustix::fs::open(&self.dir, DIR_FLAGS, Mode::empty()).map_err(|e| with_path(e.into(), &self.dir))?;
        let from = &*staging.fd;
        let new: Vec<OsString> = read_names(&staging.io())?;
        for name in &new {
            let to = self.dir.join(name);
            match rustix::fs::renameat_with(from, name, &dir_fd, name, RenameFlags::EXCHANGE) {
                Ok(()) => {}
                Err(Errno::NOENT) => {
                    rustix::fs::renameat(from, name, &dir_fd, name).map_err(|e| with_path(e.into(), &to))?
                }
                Err(e) => return Err(with_path(e.into(), &to)),
            }
        }
        for name in read_names(&self.dir)? {
            if name.to_string_lossy().starts_with(INSIDE_MARKER) || new.contains(&name) {
                continue;
            }
            let mut aside = name.clone();
            aside.push(".old");
            rustix::fs::renameat(&dir_fd, &name, from, &aside)
                .map_err(|e| with_path(e.into(), &self.dir.join(&name)))?;
        }
        Ok(staging.path.clone())
    }
}

const DIR_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

/// A staging dir, held open. Writes go through [`Staging::io`]
/// (`/proc/self/fd/N`), which the kernel resolves to this very directory
/// however its name is renamed or replaced meanwhile; `path` is its name,
/// for the swap beside the dir and for removal (which never follows a
/// symlink). Clones share the fd: it stays open while any writer holds one.
#[derive(Debug, Clone)]
pub(crate) struct Staging {
    pub(crate) path: PathBuf,
    fd: std::sync::Arc<OwnedFd>,
}

impl Staging {
    /// The held-open directory: after the swap, the live dir itself.
    pub(crate) fn fd(&self) -> std::sync::Arc<OwnedFd> {
        self.fd.clone()
    }

    /// The path to write under. It ends in `/.`, so that `O_NOFOLLOW` and
    /// `lchown` on it apply to the directory, not to the magic link.
    pub(crate) fn io(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        let anchored = PathBuf::from(format!("/proc/self/fd/{}/.", self.fd.as_raw_fd()));
        // Without /proc, the name (private and ours, but renameable by
        // whoever can write its parent).
        if anchored.is_dir() { anchored } else { self.path.clone() }
    }
}

/// A staging dir nobody will swap in, removed (by name) when dropped.
pub(crate) struct DropStaging(pub(crate) Option<Staging>);

impl Drop for DropStaging {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            remove_in_background(vec![s.path]);
        }
    }
}

fn absolute(dir: &Path) -> io::Result<PathBuf> {
    Ok(if dir.is_absolute() { dir.to_owned() } else { std::env::current_dir()?.join(dir) })
}

/// Symlinks followed in one walk, as the kernel's own limit.
const MAX_LINKS: usize = 40;

/// O_PATH: passing through a dir needs only search permission, as a path
/// lookup does.
const WALK_FLAGS: OFlags = OFlags::PATH.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

/// Resolves the absolute `path` to the directory it names, the way the
/// kernel would, but one component at a time from `/`, each opened relative
/// to the last with `O_NOFOLLOW`. A component that is missing is created
/// there (0755, with `create`), never through a symlink. A symlink is
/// followed (its target walked the same way) only when its owner is root or
/// our own uid and so is the dir it is in: a link the worker made (a
/// committed `.cache -> /etc` in the repo it cloned, or a root-owned link
/// it hard-linked into its own dir) is refused, [`UntrustedSymlink`]. The
/// result has no symlink in it.
///
/// A path whose dirs the worker owns is sound only while no worker process
/// runs: the result is used by name afterwards. The runner restores into
/// such a dir (DENO_DIR_RUN in the clone) before the worker starts.
fn walk(path: &Path, create: bool) -> io::Result<PathBuf> {
    use rustix::fs::{AtFlags, FileType};
    use std::collections::VecDeque;
    use std::os::unix::ffi::OsStringExt;

    fn push_front(pending: &mut VecDeque<OsString>, path: &Path) {
        for c in path.components().rev() {
            match c {
                std::path::Component::Normal(n) => pending.push_front(n.to_owned()),
                std::path::Component::ParentDir => pending.push_front("..".into()),
                _ => {}
            }
        }
    }
    let root = || rustix::fs::open("/", WALK_FLAGS, Mode::empty()).map_err(|e| with_path(e.into(), Path::new("/")));
    let euid = rustix::process::geteuid().as_raw();
    let trusted = |uid: u32| uid == 0 || uid == euid;
    let mut fd = root()?;
    let mut at = PathBuf::from("/");
    let mut pending = VecDeque::new();
    push_front(&mut pending, path);
    let mut links = 0;
    // The component just created: missing again, someone removes it.
    let mut made: Option<PathBuf> = None;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            // `at` has no symlink in it: its parent by name is its real one.
            if at.pop() {
                fd = rustix::fs::openat(&fd, "..", WALK_FLAGS, Mode::empty()).map_err(|e| with_path(e.into(), &at))?;
            }
            continue;
        }
        let here = at.join(&name);
        match rustix::fs::openat(&fd, &name, WALK_FLAGS, Mode::empty()) {
            Ok(next) => {
                fd = next;
                at = here;
            }
            Err(Errno::NOENT) if create && made.as_ref() != Some(&here) => {
                match rustix::fs::mkdirat(&fd, &name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(with_path(e.into(), &here)),
                }
                made = Some(here);
                pending.push_front(name);
            }
            Err(Errno::NOTDIR | Errno::LOOP) => {
                let st = rustix::fs::statat(&fd, &name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| with_path(e.into(), &here))?;
                if FileType::from_raw_mode(st.st_mode) != FileType::Symlink {
                    return Err(with_path(Errno::NOTDIR.into(), &here));
                }
                let target = rustix::fs::readlinkat(&fd, &name, Vec::new()).map_err(|e| with_path(e.into(), &here))?;
                let target = PathBuf::from(OsString::from_vec(target.into_bytes()));
                let holder = rustix::fs::fstat(&fd).map_err(|e| with_path(e.into(), &at))?;
                if !trusted(st.st_uid) || !trusted(holder.st_uid) {
                    let owner = if trusted(st.st_uid) { holder.st_uid } else { st.st_uid };
                    return Err(io::Error::other(UntrustedSymlink(format!(
                        "`{}` is a symlink (to `{}`) that uid {owner} could have made: a symlink among the \
                         dir's parents is followed only when root or uid {euid} owns it and the dir it is in",
                        here.display(),
                        target.display()
                    ))));
                }
                links += 1;
                if links > MAX_LINKS {
                    return Err(with_path(Errno::LOOP.into(), &here));
                }
                if target.is_absolute() {
                    fd = root()?;
                    at = PathBuf::from("/");
                }
                push_front(&mut pending, &target);
            }
            Err(e) => return Err(with_path(e.into(), &here)),
        }
    }
    Ok(at)
}

/// Missing parents of a target, 0755 whatever the umask (the CLI restores
/// under a zero one).
fn make_parents(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o755).create(dir).map_err(|e| with_path(e, dir))
}

fn read_names(dir: &Path) -> io::Result<Vec<OsString>> {
    fs::read_dir(dir).and_then(|it| it.map(|e| e.map(|e| e.file_name())).collect()).map_err(|e| with_path(e, dir))
}

/// An exclusive lock on a directory, released on drop.
#[derive(Debug)]
pub(crate) struct Lock {
    _fd: Option<OwnedFd>,
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.to_owned())
}

/// Adds the path to an IO error's message.
pub(crate) fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Whether `dir` is the root of a mount, even one of the file system that
/// holds its parent (a bind mount, which has the same device number):
/// `statx`'s `STATX_ATTR_MOUNT_ROOT` (Linux 5.8). Without it, only a
/// different device says so.
fn is_mount_root(dir: &Path) -> bool {
    use rustix::fs::{AtFlags, CWD, StatxAttributes, StatxFlags, statx};
    match statx(CWD, dir, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::BASIC_STATS) {
        Ok(st) => {
            st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT)
                && st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT)
        }
        Err(_) => false,
    }
}

/// Empties `dir` between two sites, so nothing of one reaches the next: its
/// content is moved aside at once (renamed, or entry by entry when `dir` is
/// a mount point), and the state and index recorded for it are dropped.
/// Afterwards `dir` exists and is empty. Takes the dir's lock, waiting up
/// to `timeout`.
///
/// The old tree is not removed now: on ext4, a restore that creates
/// thousands of files while as many are being deleted is several times
/// slower. It is closed to everyone but this process's user at once (its
/// top dir ours and 0700: the next site's worker cannot enter it), and
/// left for the next restore of `dir` to remove after its swap, or for
/// [`remove_leftovers`]. Where it cannot be closed, it is removed in the
/// background at once, as before.
pub async fn clear_dir(dir: &Path, state_dir: Option<&Path>, timeout: Duration) -> io::Result<()> {
    let target = Target::resolve_for_restore(dir)?.with_state_dir(state_dir);
    if fs::symlink_metadata(&target.dir).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(io::Error::other(format!("{} is a symlink; it is never followed", target.dir.display())));
    }
    let _lock = target.lock(Instant::now() + timeout).await?;
    let moved = target.clear()?;
    target.forget();
    if let Some(trash) = moved {
        if let Err(e) = close_to_others(&trash) {
            tracing::debug!("could not close {} to others ({e}): removing it now", trash.display());
            remove_in_background(vec![trash]);
        }
    }
    Ok(())
}

/// Makes `dir` (not what is under it) ours and 0700: owner first, so that
/// nobody else can change its mode back meanwhile.
fn close_to_others(dir: &Path) -> io::Result<()> {
    let fd = rustix::fs::open(dir, DIR_FLAGS, Mode::empty())?;
    rustix::fs::fchown(&fd, Some(rustix::process::geteuid()), Some(rustix::process::getegid()))?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700))?;
    Ok(())
}

/// Removes, in the background, what earlier runs left beside `dir`: old
/// trees a [`clear_dir`] moved aside, stagings of restores that crashed.
/// For an idle runner whose dir no restore follows soon. Takes the dir's
/// lock, waiting up to `timeout`; returns how many it found.
pub async fn remove_leftovers(dir: &Path, state_dir: Option<&Path>, timeout: Duration) -> io::Result<usize> {
    let target = Target::resolve_for_restore(dir)?.with_state_dir(state_dir);
    let _lock = target.lock(Instant::now() + timeout).await?;
    let leftovers = target.leftovers();
    let found = leftovers.len();
    remove_in_background(leftovers);
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::target_reason;

    #[test]
    fn swap_replaces_an_existing_dir_and_returns_the_old_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("deno-dir");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("old"), b"old").unwrap();
        let t = Target::resolve_for_restore(&dir).unwrap();
        let staging = t.create_staging().unwrap();
        fs::write(staging.io().join("new"), b"new").unwrap();
        let old = t.swap_in(&staging).unwrap().unwrap();
        assert!(dir.join("new").exists() && !dir.join("old").exists());
        assert!(old.join("old").exists());
        assert!(t.leftovers().contains(&old), "the old tree is trash until removed");
    }

    #[test]
    fn swap_into_a_missing_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/deno-dir");
        let t = Target::resolve_for_restore(&dir).unwrap();
        let staging = t.create_staging().unwrap();
        fs::write(staging.io().join("f"), b"x").unwrap();
        assert_eq!(t.swap_in(&staging).unwrap(), None);
        assert!(dir.join("f").exists());
        assert!(t.leftovers().is_empty());
    }

    #[test]
    fn a_file_in_place_of_the_dir_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("f");
        fs::write(&dir, b"x").unwrap();
        let err = Target::resolve_nofollow(&dir).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
    }

    #[test]
    fn swap_children_keeps_every_entry_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vol");
        fs::create_dir_all(dir.join("npm/pkg")).unwrap();
        fs::write(dir.join("npm/pkg/old.js"), b"old").unwrap();
        fs::write(dir.join("gone"), b"gone").unwrap();
        let mut t = Target::resolve_for_restore(&dir).unwrap();
        t.inside = true;
        let staging = t.create_staging().unwrap();
        assert!(staging.path.starts_with(&dir));
        fs::create_dir_all(staging.io().join("npm/pkg")).unwrap();
        fs::write(staging.io().join("npm/pkg/new.js"), b"new").unwrap();
        let trash = t.swap_in(&staging).unwrap().unwrap();
        assert!(dir.join("npm/pkg/new.js").exists());
        assert!(!dir.join("npm/pkg/old.js").exists() && !dir.join("gone").exists());
        assert!(trash.join("npm/pkg/old.js").exists() && trash.join("gone.old").exists());
        assert_eq!(t.leftovers(), vec![trash]);
    }

    #[test]
    fn parents_are_created_and_our_own_symlinks_among_them_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let base = fs::canonicalize(tmp.path()).unwrap();
        fs::create_dir(base.join("real")).unwrap();
        std::os::unix::fs::symlink(base.join("real"), base.join("abs")).unwrap();
        fs::create_dir(base.join("x")).unwrap();
        std::os::unix::fs::symlink("../real", base.join("x/rel")).unwrap();
        for (dir, want) in [
            ("abs/a/b/deno", "real/a/b/deno"),
            ("x/rel/c/deno", "real/c/deno"),
            ("real/a/../d/./deno", "real/d/deno"),
            ("x/rel/../real/e/deno", "real/e/deno"),
        ] {
            let t = Target::resolve_for_restore(&base.join(dir)).unwrap();
            assert_eq!(t.dir, base.join(want), "{dir}");
            assert!(t.parent.is_dir() && !t.dir.exists(), "{dir}: the parents are made, not the dir");
            assert_eq!(Target::resolve_nofollow(&base.join(dir)).unwrap().dir, base.join(want));
        }
        // A snapshot creates nothing.
        let e = Target::resolve_nofollow(&base.join("real/none/deno")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        assert!(e.to_string().contains("real/none"), "{e}");
        assert!(!base.join("real/none").exists());
    }

    #[test]
    fn a_file_or_a_symlink_loop_among_the_parents_is_an_error_not_a_hang() {
        let tmp = tempfile::tempdir().unwrap();
        let base = fs::canonicalize(tmp.path()).unwrap();
        fs::write(base.join("file"), b"x").unwrap();
        let e = Target::resolve_for_restore(&base.join("file/deno")).unwrap_err();
        assert!(e.to_string().contains("file"), "{e}");
        std::os::unix::fs::symlink("l2", base.join("l1")).unwrap();
        std::os::unix::fs::symlink("l1", base.join("l2")).unwrap();
        let e = Target::resolve_for_restore(&base.join("l1/deno")).unwrap_err();
        assert!(e.to_string().contains("symbolic links") && e.to_string().contains("/l"), "{e}");
        assert_eq!(target_reason(&e), crate::outcome::Reason::IoError);
    }

    /// As root: a symlink among the parents that another uid owns, or that
    /// sits in a dir another uid owns, is refused (`unsafe`), and nothing is
    /// created where it points; so is a root-owned link to a path through
    /// one.
    #[test]
    fn a_symlink_among_the_parents_another_uid_could_have_made_is_refused() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipping: needs root to own files as another uid");
            return;
        }
        const OTHER: u32 = 23457;
        let tmp = tempfile::tempdir().unwrap();
        let base = fs::canonicalize(tmp.path()).unwrap();
        let (work, outside) = (base.join("work"), base.join("outside"));
        fs::create_dir(&work).unwrap();
        fs::create_dir(&outside).unwrap();
        std::os::unix::fs::chown(&work, Some(OTHER), Some(OTHER)).unwrap();
        // The worker's own link, and a root-owned one in the worker's dir.
        std::os::unix::fs::symlink(&outside, work.join(".cache")).unwrap();
        std::os::unix::fs::lchown(work.join(".cache"), Some(OTHER), Some(OTHER)).unwrap();
        std::os::unix::fs::symlink(&outside, work.join("rootlink")).unwrap();
        // Root's link in root's dir, to a path through the worker's link.
        std::os::unix::fs::symlink(work.join(".cache"), base.join("ops")).unwrap();
        for dir in [".cache/deno", ".cache/a/deno", "rootlink/deno"]
            .map(|d| work.join(d))
            .into_iter()
            .chain([base.join("ops/deno")])
        {
            for e in [Target::resolve_for_restore(&dir).unwrap_err(), Target::resolve_nofollow(&dir).unwrap_err()] {
                assert_eq!(target_reason(&e), crate::outcome::Reason::Unsafe, "{}: {e}", dir.display());
                assert!(
                    e.to_string().contains("symlink") && e.to_string().contains(&work.display().to_string()),
                    "{e}"
                );
            }
        }
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "nothing was made outside");
    }
}
