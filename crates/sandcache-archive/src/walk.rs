//! Reading a directory that someone else may change at any moment.
//!
//! A snapshot runs as the runner (often root) over a directory the worker
//! (another uid, running anyone's code) can change while it is read: swap a
//! file for a symlink to a root-only file, a directory for a symlink to a
//! root-only directory, a file for a FIFO, or make a file 15 TiB long. This
//! walker is the only way sandcache reads such a tree:
//!
//! * the dir is opened with `O_DIRECTORY|O_NOFOLLOW`: a dir that is a
//!   symlink is refused, never followed;
//! * every subdirectory is opened relative to its parent's fd with
//!   `O_DIRECTORY|O_NOFOLLOW`, and must be the inode that was listed;
//! * entries are listed from the directory fd and `lstat`ed relative to it;
//!   symlink targets come from `readlinkat`;
//! * files are opened relative to their parent's fd with
//!   `O_NOFOLLOW|O_NONBLOCK|O_NOCTTY` (a FIFO never blocks the open), then
//!   `fstat`ed: a different inode, or anything but a regular file, fails the
//!   walk without a byte read from it;
//! * at most the listed size is read from a file, and the cancel flag is
//!   checked at every read and every entry;
//! * entries, listed bytes and path lengths are bounded by [`Limits`],
//!   checked as entries are listed, before any content is read.
//!
//! A FIFO, socket or device found while listing is handed to the visitor
//! (which leaves it out); it is never opened.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::limits::Limits;
use crate::names::{RESERVED_PREFIX, TAIL_PREFIX};

/// Why a walk stopped.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    /// The filesystem refused a read (permissions, I/O error, too many open
    /// files...).
    #[error("failed to read `{}`", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The dir is a symlink, or an entry turned into something that must not
    /// be read (a symlink, FIFO, socket or device) between being listed and
    /// being opened. Nothing was followed or read.
    #[error("`{}` {why}", path.display())]
    Unsafe { path: PathBuf, why: String },
    /// An entry was replaced by another of the same kind, or a file shrank,
    /// while the tree was read.
    #[error("`{}` changed while being read: {why}", path.display())]
    Changed { path: PathBuf, why: String },
    /// The tree is over a configured limit (bytes, entries, path length).
    #[error("the tree exceeds the {what} limit of {limit} at `{}`", path.display())]
    Limit { what: &'static str, limit: u64, path: PathBuf },
    /// The caller set the cancel flag (deadline reached).
    #[error("reading the tree was cancelled")]
    Cancelled,
}

impl WalkError {
    /// The walk error an [`io::Error`] from a [`FileReader`] carries, or
    /// the error as a read error of `path`.
    pub fn from_io(e: io::Error, path: &Path) -> WalkError {
        if e.get_ref().is_some_and(|inner| inner.is::<WalkError>()) {
            return *e.into_inner().expect("checked").downcast::<WalkError>().expect("checked");
        }
        WalkError::Io { path: path.to_owned(), source: e }
    }

    fn io(path: &Path, e: impl Into<io::Error>) -> WalkError {
        WalkError::Io { path: path.to_owned(), source: e.into() }
    }
}

impl From<WalkError> for io::Error {
    fn from(e: WalkError) -> io::Error {
        let kind = match &e {
            WalkError::Io { source, .. } => source.kind(),
            WalkError::Cancelled => io::ErrorKind::Interrupted,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

/// How to walk.
#[derive(Debug, Clone, Default)]
pub struct WalkOptions {
    /// Set to stop the walk at the next entry or read.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Bounds on entries, listed bytes of regular files, and path length.
    pub limits: Limits,
    /// The uid that owns the tree (a runner's worker). A regular file with
    /// more than one link that another uid owns is refused before a byte of
    /// it is read: a hardlink to someone else's file (a root-only secret)
    /// is only otherwise stopped by the kernel's `protected_hardlinks`.
    pub owner: Option<u32>,
}

impl WalkOptions {
    fn cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed))
    }
}

/// What an entry is, from `lstat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
    Unknown,
}

impl Kind {
    fn of(mode: u32) -> Kind {
        match FileType::from_raw_mode(mode) {
            FileType::Directory => Kind::Dir,
            FileType::RegularFile => Kind::File,
            FileType::Symlink => Kind::Symlink,
            FileType::Fifo => Kind::Fifo,
            FileType::Socket => Kind::Socket,
            FileType::CharacterDevice => Kind::CharDevice,
            FileType::BlockDevice => Kind::BlockDevice,
            _ => Kind::Unknown,
        }
    }

    /// For messages: "a regular file", "a symlink"...
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Dir => "a directory",
            Kind::File => "a regular file",
            Kind::Symlink => "a symlink",
            Kind::Fifo => "a FIFO",
            Kind::Socket => "a socket",
            Kind::CharDevice => "a character device",
            Kind::BlockDevice => "a block device",
            Kind::Unknown => "of an unknown kind",
        }
    }
}

/// An entry's `lstat` (or, once opened, `fstat`), as the walk saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    /// Permission bits, with setuid, setgid and sticky (`& 0o7777`).
    pub mode: u32,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: i64,
    /// Access time: a restore sets it to the mtime, so a later read (which
    /// moves it past the mtime on `relatime` and `strictatime` mounts) marks
    /// the file hot. The walker's own reads never move it (`O_NOATIME`).
    pub atime: i64,
    pub atime_nsec: i64,
    pub ctime: i64,
    pub ctime_nsec: i64,
    pub ino: u64,
    pub dev: u64,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
}

impl Meta {
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    fn of(st: &rustix::fs::Stat) -> Meta {
        Meta {
            kind: Kind::of(st.st_mode as u32),
            mode: st.st_mode as u32 & 0o7777,
            size: st.st_size.max(0) as u64,
            mtime: st.st_mtime as i64,
            mtime_nsec: st.st_mtime_nsec as i64,
            atime: st.st_atime as i64,
            atime_nsec: st.st_atime_nsec as i64,
            ctime: st.st_ctime as i64,
            ctime_nsec: st.st_ctime_nsec as i64,
            ino: st.st_ino as u64,
            dev: st.st_dev as u64,
            uid: st.st_uid as u32,
            gid: st.st_gid as u32,
            nlink: st.st_nlink as u64,
        }
    }

    /// Read since it was restored or written: its access time is past its
    /// modification time. Meaningless on a `noatime` mount (see
    /// [`Tree::tracks_reads`]).
    pub fn read_since_written(&self) -> bool {
        (self.atime, self.atime_nsec) > (self.mtime, self.mtime_nsec)
    }

    fn same_object(&self, other: &Meta) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }
}

/// What the visitor wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Go on; for a directory, walk into it.
    Continue,
    /// Go on, but do not walk into this directory.
    SkipDir,
    /// End the walk here, successfully.
    Stop,
}

/// An open directory to walk: the dir given, never through a symlink.
#[derive(Debug)]
pub struct Tree {
    root: OwnedFd,
    path: PathBuf,
    meta: Meta,
    opts: WalkOptions,
}

const DIR_FLAGS: OFlags =
    OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC).union(OFlags::NOCTTY);
const FILE_FLAGS: OFlags =
    OFlags::RDONLY.union(OFlags::NOFOLLOW).union(OFlags::NONBLOCK).union(OFlags::NOCTTY).union(OFlags::CLOEXEC);

impl Tree {
    /// Opens `dir` with `O_DIRECTORY|O_NOFOLLOW`. `None` when it is missing
    /// or not a directory (nothing to read); [`WalkError::Unsafe`] when it
    /// is a symlink, whatever it points at.
    pub fn open(dir: &Path, opts: &WalkOptions) -> Result<Option<Tree>, WalkError> {
        let fd = match rustix::fs::open(dir, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            // O_DIRECTORY|O_NOFOLLOW on a symlink is ENOTDIR (ELOOP on some
            // kernels): tell a symlink from a plain file. A directory now
            // was a symlink a moment ago (swapped back meanwhile).
            Err(Errno::NOTDIR | Errno::LOOP) => {
                return match rustix::fs::lstat(dir).map(|st| Meta::of(&st).kind) {
                    Ok(Kind::Symlink | Kind::Dir) => Err(WalkError::Unsafe {
                        path: dir.to_owned(),
                        why: "is a symlink; the directory is read only through its own path, never followed".into(),
                    }),
                    Ok(_) | Err(Errno::NOENT) => Ok(None),
                    Err(e) => Err(WalkError::io(dir, e)),
                };
            }
            Err(e) => return Err(WalkError::io(dir, e)),
        };
        let meta = Meta::of(&rustix::fs::fstat(&fd).map_err(|e| WalkError::io(dir, e))?);
        Ok(Some(Tree { root: fd, path: dir.to_owned(), meta, opts: opts.clone() }))
    }

    /// Whether reads move access times here, so that a file's
    /// [`Meta::read_since_written`] means something: false on a `noatime`
    /// mount (and where the mount flags cannot be read). `relatime` (the
    /// default) and `strictatime` both move an access time that is not past
    /// the modification time on the first read.
    pub fn tracks_reads(&self) -> bool {
        rustix::fs::fstatvfs(&self.root).is_ok_and(|v| !v.f_flag.contains(rustix::fs::StatVfsMountFlags::NOATIME))
    }

    /// The dir's own `fstat`.
    pub(crate) fn meta(&self) -> &Meta {
        &self.meta
    }

    /// Visits every entry below the dir, depth first, in name order (bytes),
    /// each directory before its content. Top-level entries named with
    /// [`RESERVED_PREFIX`] (sandcache's own) are left out. An entry deleted
    /// between being listed and being reached is left out too.
    pub fn walk<E: From<WalkError>>(&self, visit: &mut dyn FnMut(&Entry<'_>) -> Result<Step, E>) -> Result<(), E> {
        let limits = &self.opts.limits;
        let mut count = Count::default();
        let root = rustix::io::dup(&self.root).map_err(|e| WalkError::io(&self.path, e))?;
        let names = self.list(&root, &self.path, true, &mut count)?;
        let mut stack = vec![Level { fd: root, names: names.into_iter(), rel: PathBuf::new() }];
        loop {
            let top = stack.len() == 1;
            let Some(level) = stack.last_mut() else { break };
            let Some(name) = level.names.next() else {
                stack.pop();
                continue;
            };
            if self.opts.cancelled() {
                return Err(WalkError::Cancelled.into());
            }
            let rel = level.rel.join(OsStr::from_bytes(name.to_bytes()));
            let meta = match rustix::fs::statat(&level.fd, &name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => Meta::of(&st),
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(WalkError::io(&self.path.join(&rel), e).into()),
            };
            if rel.as_os_str().len() > limits.max_path_len {
                return Err(WalkError::Limit {
                    what: "path length",
                    limit: limits.max_path_len as u64,
                    path: self.path.join(&rel),
                }
                .into());
            }
            if meta.kind == Kind::File {
                count.bytes = count.bytes.saturating_add(meta.size);
                if count.bytes > limits.max_bytes {
                    let path = self.path.join(&rel);
                    return Err(WalkError::Limit { what: "size", limit: limits.max_bytes, path }.into());
                }
            }
            let entry = Entry {
                parent: &level.fd,
                name: &name,
                rel: &rel,
                meta,
                top,
                root: &self.path,
                cancel: self.opts.cancel.as_ref(),
                owner: self.opts.owner,
            };
            let step = visit(&entry)?;
            match step {
                Step::Stop => return Ok(()),
                Step::SkipDir => continue,
                Step::Continue if meta.kind != Kind::Dir => continue,
                Step::Continue => {}
            }
            let path = self.path.join(&rel);
            let fd = match rustix::fs::openat(&level.fd, &name, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => fd,
                // Removed meanwhile: it is simply not there any more.
                Err(Errno::NOENT) => continue,
                Err(Errno::NOTDIR | Errno::LOOP) => {
                    let now = match rustix::fs::statat(&level.fd, &name, AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(st) => Meta::of(&st).kind,
                        Err(_) => Kind::Unknown,
                    };
                    return Err(swapped(path, Kind::Dir, now).into());
                }
                Err(e) => return Err(WalkError::io(&path, e).into()),
            };
            let now = Meta::of(&rustix::fs::fstat(&fd).map_err(|e| WalkError::io(&path, e))?);
            if !now.same_object(&meta) {
                return Err(replaced(path).into());
            }
            let names = self.list(&fd, &path, false, &mut count)?;
            stack.push(Level { fd, names: names.into_iter(), rel });
        }
        Ok(())
    }

    /// A directory's entry names, sorted, counted against the entry limit
    /// as they are read (a huge directory cannot fill memory).
    fn list(&self, fd: &OwnedFd, path: &Path, top: bool, count: &mut Count) -> Result<Vec<CString>, WalkError> {
        let limits = &self.opts.limits;
        let mut dir = rustix::fs::Dir::read_from(fd).map_err(|e| WalkError::io(path, e))?;
        let mut names = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(|e| WalkError::io(path, e))?;
            let name = entry.file_name();
            if name == c"."
                || name == c".."
                || (top && name.to_bytes().starts_with(RESERVED_PREFIX.as_bytes()))
                || name.to_bytes().starts_with(TAIL_PREFIX.as_bytes())
            {
                continue;
            }
            count.entries += 1;
            if count.entries > limits.max_entries {
                return Err(WalkError::Limit { what: "entry count", limit: limits.max_entries, path: path.to_owned() });
            }
            if count.entries % 1024 == 0 && self.opts.cancelled() {
                return Err(WalkError::Cancelled);
            }
            names.push(name.to_owned());
        }
        names.sort();
        Ok(names)
    }
}

#[derive(Default)]
struct Count {
    entries: u64,
    bytes: u64,
}

struct Level {
    fd: OwnedFd,
    names: std::vec::IntoIter<CString>,
    rel: PathBuf,
}

fn swapped(path: PathBuf, was: Kind, now: Kind) -> WalkError {
    WalkError::Unsafe {
        path,
        why: format!(
            "changed while being read: it was {} when listed and is now {}; not followed, nothing read from it",
            was.describe(),
            now.describe()
        ),
    }
}

/// A file to read that is something else: swapped since it was listed, or
/// (not listed) found so.
fn not_a_file(path: PathBuf, was: Kind, now: Kind) -> WalkError {
    match was {
        Kind::Unknown => WalkError::Unsafe {
            path,
            why: format!("is {}, not a regular file; not followed, nothing read from it", now.describe()),
        },
        was => swapped(path, was, now),
    }
}

fn replaced(path: PathBuf) -> WalkError {
    WalkError::Changed { path, why: "replaced by another object after it was listed; nothing read from it".into() }
}

/// An entry of the walk, with its parent directory open.
#[derive(Debug)]
pub struct Entry<'w> {
    parent: &'w OwnedFd,
    name: &'w CStr,
    rel: &'w Path,
    meta: Meta,
    top: bool,
    root: &'w Path,
    cancel: Option<&'w Arc<AtomicBool>>,
    owner: Option<u32>,
}

impl Entry<'_> {
    pub fn name(&self) -> &OsStr {
        OsStr::from_bytes(self.name.to_bytes())
    }

    /// The path relative to the walked dir (`npm/pkg/index.js`).
    pub fn rel(&self) -> &Path {
        self.rel
    }

    /// The full path, for messages only: nothing is ever opened by it.
    pub fn path(&self) -> PathBuf {
        self.root.join(self.rel)
    }

    /// Its `lstat` when listed.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// Directly in the walked dir.
    pub fn is_top(&self) -> bool {
        self.top
    }

    /// A symlink's target, read relative to the parent's fd.
    pub fn read_link(&self) -> Result<OsString, WalkError> {
        match rustix::fs::readlinkat(self.parent, self.name, Vec::new()) {
            Ok(target) => Ok(OsString::from_vec(target.into_bytes())),
            Err(Errno::INVAL) => Err(swapped(self.path(), Kind::Symlink, self.kind_now())),
            Err(e) => Err(WalkError::io(&self.path(), e)),
        }
    }

    fn kind_now(&self) -> Kind {
        rustix::fs::statat(self.parent, self.name, AtFlags::SYMLINK_NOFOLLOW)
            .map_or(Kind::Unknown, |st| Meta::of(&st).kind)
    }

    /// Opens a regular file for reading, relative to its parent's fd, with
    /// `O_NOFOLLOW|O_NONBLOCK|O_NOCTTY`. It must still be the inode that
    /// was listed and a regular file: anything else is an error, and not a
    /// byte of it is read. `None` when it was removed meanwhile.
    ///
    /// The reader yields exactly [`FileReader::len`] bytes: the listed size,
    /// or less if the file was already shorter when opened. A file that grew
    /// is cut at that size; one that shrinks while being read is an error.
    pub fn open(&self) -> Result<Option<FileReader>, WalkError> {
        let path = self.path();
        if self.meta.kind != Kind::File {
            return Err(WalkError::io(&path, io::Error::other("not a regular file")));
        }
        let Some((fd, now)) = self.open_at(self.name, &path, Kind::File)? else {
            return Ok(None);
        };
        if !now.same_object(&self.meta) {
            return Err(replaced(path));
        }
        if now.size < self.meta.size {
            return Err(WalkError::Changed {
                path,
                why: format!("it shrank from {} to {} bytes", self.meta.size, now.size),
            });
        }
        Ok(Some(FileReader { file: File::from(fd), len: self.meta.size, pos: 0, path, cancel: self.cancel.cloned() }))
    }

    /// Opens the regular file named `name` in this entry's directory (this
    /// entry itself when `name` is its own name), as it is now: with the
    /// checks of [`Entry::open`] (never through a symlink, never a FIFO,
    /// socket or device, never another uid's hardlink), but no listing to
    /// match. The reader yields its size at the open. `None` when there is
    /// no such entry. For a file and its companions that must be read
    /// together (a database and its write-ahead log).
    pub(crate) fn open_sibling(&self, name: &OsStr) -> Result<Option<FileReader>, WalkError> {
        let path = self.path().with_file_name(name);
        let cname = CString::new(name.as_bytes())
            .map_err(|_| WalkError::io(&path, io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the name")))?;
        let Some((fd, now)) = self.open_at(&cname, &path, Kind::Unknown)? else {
            return Ok(None);
        };
        Ok(Some(FileReader { file: File::from(fd), len: now.size, pos: 0, path, cancel: self.cancel.cloned() }))
    }

    /// The `lstat` of `name` in this entry's directory, as it is now;
    /// `None` when there is no such entry.
    pub(crate) fn stat_sibling(&self, name: &OsStr) -> Result<Option<Meta>, WalkError> {
        match rustix::fs::statat(self.parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(Meta::of(&st))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(WalkError::io(&self.path().with_file_name(name), e)),
        }
    }

    /// Opens `name` relative to the parent's fd (`O_NOFOLLOW|O_NONBLOCK|
    /// O_NOCTTY`) and `fstat`s it: a regular file, not another uid's
    /// hardlink. `was` is what the listing said it was ([`Kind::Unknown`]:
    /// not listed), for messages.
    fn open_at(&self, name: &CStr, path: &Path, was: Kind) -> Result<Option<(OwnedFd, Meta)>, WalkError> {
        let path = path.to_owned();
        // O_NOATIME keeps the hot set (files read since restored) what the
        // app read, not what a snapshot read; it needs the file's owner or
        // CAP_FOWNER, so without either the open goes on without it.
        let opened = match rustix::fs::openat(self.parent, name, FILE_FLAGS | OFlags::NOATIME, Mode::empty()) {
            Err(Errno::PERM) => rustix::fs::openat(self.parent, name, FILE_FLAGS, Mode::empty()),
            other => other,
        };
        let fd = match opened {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            // O_NOFOLLOW on a symlink; ENXIO: a socket.
            Err(Errno::LOOP | Errno::NXIO) => {
                let now = rustix::fs::statat(self.parent, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_or(Kind::Unknown, |st| Meta::of(&st).kind);
                return Err(not_a_file(path, was, now));
            }
            Err(e) => return Err(WalkError::io(&path, e)),
        };
        let now = Meta::of(&rustix::fs::fstat(&fd).map_err(|e| WalkError::io(&path, e))?);
        if now.kind != Kind::File {
            return Err(not_a_file(path, was, now.kind));
        }
        if now.nlink > 1 && self.owner.is_some_and(|o| o != now.uid) {
            return Err(WalkError::Unsafe {
                path,
                why: format!("a hardlink ({} links) to a file of uid {}, not the tree's owner", now.nlink, now.uid),
            });
        }
        Ok(Some((fd, now)))
    }
}

/// A regular file opened by [`Entry::open`]: reads at most its listed size,
/// and checks the cancel flag at every read. Errors carry a [`WalkError`]
/// (see [`WalkError::from_io`]).
#[derive(Debug)]
pub struct FileReader {
    file: File,
    len: u64,
    pos: u64,
    path: PathBuf,
    cancel: Option<Arc<AtomicBool>>,
}

impl FileReader {
    /// The bytes this reader yields in all.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Its `fstat` now (the open file, whatever its name became).
    pub(crate) fn stat(&self) -> Result<Meta, WalkError> {
        Ok(Meta::of(&rustix::fs::fstat(&self.file).map_err(|e| WalkError::io(&self.path, e))?))
    }

    /// A reader of a file sandcache made itself (not from a walked tree),
    /// yielding its first `len` bytes, for code that takes walked files.
    pub(crate) fn private(file: File, len: u64, path: PathBuf, cancel: Option<Arc<AtomicBool>>) -> FileReader {
        FileReader { file, len, pos: 0, path, cancel }
    }

    /// Back to the first byte, to read the same file again.
    pub fn rewind(&mut self) -> Result<(), WalkError> {
        self.file.rewind().map_err(|e| WalkError::io(&self.path, e))?;
        self.pos = 0;
        Ok(())
    }

    /// Fills `buf` as far as the file's remaining length allows; returns the
    /// bytes read (less than `buf.len()` only at the end).
    pub fn read_full(&mut self, buf: &mut [u8]) -> Result<usize, WalkError> {
        let mut n = 0;
        while n < buf.len() {
            match self.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) => return Err(WalkError::from_io(e, &self.path)),
            }
        }
        Ok(n)
    }
}

impl Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(io::Error::other(WalkError::Cancelled));
        }
        let left = self.len - self.pos;
        if left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(left.min(usize::MAX as u64) as usize);
        loop {
            match self.file.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(io::Error::other(WalkError::Changed {
                        path: self.path.clone(),
                        why: format!("it shrank to {} of its {} bytes while being read", self.pos, self.len),
                    }));
                }
                Ok(n) => {
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io::Error::other(WalkError::io(&self.path, e))),
            }
        }
    }
}

impl AsFd for FileReader {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}
