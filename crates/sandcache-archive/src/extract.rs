//! Safe streaming extraction.
//!
//! Every file is created relative to an open directory handle with
//! `O_CREAT | O_EXCL | O_NOFOLLOW`, and every directory on the way is opened
//! with `O_DIRECTORY | O_NOFOLLOW`, so the kernel itself refuses to follow a
//! symlink planted by an earlier entry. Paths are checked lexically first so
//! that a hostile archive gets a clear reason instead of an errno.

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;
use tar::EntryType;

use crate::error::ExtractError;
use crate::format::{Compression, sniff};
use crate::limits::Limits;
use crate::progress::Progress;
use crate::rules::{check_symlink_target, unsafe_entry};

/// How to extract.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// The absolute path the restored tree will live at once swapped into
    /// place. Entries rooted at it (`deno-dir/...` for `/deno-dir`, the seed's
    /// layout) are re-rooted; absolute symlink targets must stay under it.
    pub final_dir: PathBuf,
    pub limits: Limits,
    /// Set to stop the extraction at the next entry or buffer.
    pub cancel: Option<Arc<AtomicBool>>,
    pub progress: Option<Arc<Progress>>,
    /// `(uid, gid)` to own everything created, the staging dir included;
    /// `None` leaves the extracting process as owner.
    pub owner: Option<(u32, u32)>,
}

impl ExtractOptions {
    pub fn new(final_dir: impl Into<PathBuf>) -> Self {
        ExtractOptions {
            final_dir: final_dir.into(),
            limits: Limits::default(),
            cancel: None,
            progress: None,
            owner: None,
        }
    }
}

/// What an extraction created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtractStats {
    /// Regular files, symlinks and hardlinks.
    pub files: u64,
    pub dirs: u64,
    /// Bytes of file content.
    pub bytes: u64,
    pub compression: Option<Compression>,
}

/// Extracts the archive read from `input` into `staging`, an existing empty
/// directory. On error, `staging` may hold part of the tree; the caller
/// removes it. Nothing outside `staging` is created or changed.
pub fn extract<R: Read + 'static>(
    input: R,
    staging: &Path,
    opts: &ExtractOptions,
) -> Result<ExtractStats, ExtractError> {
    let (head, input) = sniff(input, Compression::SNIFF_LEN).map_err(|e| corrupt("failed to read the stream", e))?;
    let compression = match Compression::detect(&head) {
        Some(c) => c,
        None if head.is_empty() => {
            return Err(ExtractError::Corrupt { detail: "empty stream".into(), source: None });
        }
        None => {
            return Err(ExtractError::Corrupt {
                detail: "not a gzip, zstd or tar stream (unrecognised magic bytes)".into(),
                source: None,
            });
        }
    };
    let decoded: Box<dyn Read> = match compression {
        Compression::Gzip => {
            Box::new(flate2::read::MultiGzDecoder::new(io::BufReader::with_capacity(256 << 10, input)))
        }
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::new(input).map_err(|e| corrupt("failed to start the zstd decoder", e))?,
        ),
        Compression::None => Box::new(input),
    };
    let header_budget = Rc::new(Cell::new(None));
    let guarded = Guard {
        inner: decoded,
        cancel: opts.cancel.clone(),
        read: 0,
        max: opts.limits.max_bytes.saturating_mul(2).saturating_add(1 << 30),
        header_budget: header_budget.clone(),
    };
    let mut x = Extractor::new(staging, opts)?;
    x.stats.compression = Some(compression);
    x.run(guarded, &header_budget)?;
    Ok(x.stats)
}

fn corrupt(what: &str, e: io::Error) -> ExtractError {
    ExtractError::Corrupt { detail: format!("{what}: {e}"), source: Some(e) }
}

/// Bounds the decoded stream (a decompression bomb made of tar padding or
/// metadata never reaches the per-file limits) and carries cancellation into
/// long reads.
struct Guard {
    inner: Box<dyn Read>,
    cancel: Option<Arc<AtomicBool>>,
    read: u64,
    max: u64,
    /// While the tar reader looks for the next entry: the bytes it may still
    /// read. See [`header_cap`].
    header_budget: Rc<Cell<Option<u64>>>,
}

const CANCELLED_MSG: &str = "sandcache: extraction cancelled";
const BOMB_MSG: &str = "sandcache: decoded stream exceeds the size limit";
const HEADER_MSG: &str = "sandcache: a tar header exceeds its size limit";
const HEADER_WHAT: &str = "tar header (long name or pax records) size";

/// What the tar reader may read between one entry's data and the next
/// entry's: headers, padding, and the payloads of GNU long-name (`L`),
/// long-link (`K`) and pax (`x`) headers, which the `tar` crate reads whole
/// into memory, as large as their size field claims, before handing out the
/// entry. A 1 GiB long name would otherwise be allocated (and a 1 GiB pax
/// header parsed) before any path check runs. A legitimate entry needs at
/// most a long name, a long link and a pax path and linkpath, each within
/// the path limit, plus a few blocks and small pax records.
fn header_cap(limits: &Limits) -> u64 {
    (limits.max_path_len as u64).saturating_mul(4).saturating_add(64 << 10)
}

impl Read for Guard {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(io::Error::other(CANCELLED_MSG));
        }
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.max {
            return Err(io::Error::other(BOMB_MSG));
        }
        if let Some(left) = self.header_budget.get() {
            let left = left.checked_sub(n as u64).ok_or_else(|| io::Error::other(HEADER_MSG))?;
            self.header_budget.set(Some(left));
        }
        Ok(n)
    }
}

/// Where an archive's entries are rooted, decided by its first named entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rooting {
    Undecided,
    /// Entries are relative to the target.
    Relative,
    /// Entries carry an absolute path without its leading `/` (the target's,
    /// or the one the archive was written from): strip that many components.
    Rooted(usize),
}

struct Extractor<'a> {
    opts: &'a ExtractOptions,
    staging: PathBuf,
    root: OwnedFd,
    /// Components of `final_dir`, to strip from rooted and absolute entries.
    prefix: Vec<Vec<u8>>,
    rooting: Rooting,
    /// The root of an archive rooted elsewhere than the target.
    root_prefix: Vec<Vec<u8>>,
    /// Open handles of recently used parent directories, by relative path.
    dirs: HashMap<Vec<u8>, OwnedFd>,
    /// Directory modes and mtimes, applied once their contents are written.
    dir_meta: Vec<(Vec<u8>, u32, u64)>,
    stats: ExtractStats,
    entries: u64,
    buf: Vec<u8>,
}

const DIR_CACHE: usize = 128;

impl<'a> Extractor<'a> {
    fn new(staging: &Path, opts: &'a ExtractOptions) -> Result<Self, ExtractError> {
        let root = rustix::fs::open(
            staging,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| ExtractError::Io { path: staging.to_owned(), source: e.into() })?;
        let prefix = opts
            .final_dir
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => Some(s.as_bytes().to_vec()),
                _ => None,
            })
            .collect();
        Ok(Extractor {
            opts,
            staging: staging.to_owned(),
            root,
            prefix,
            rooting: Rooting::Undecided,
            root_prefix: Vec::new(),
            dirs: HashMap::new(),
            dir_meta: Vec::new(),
            stats: ExtractStats::default(),
            entries: 0,
            buf: vec![0; 256 << 10],
        })
    }

    fn cancelled(&self) -> bool {
        self.opts.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed))
    }

    fn run(&mut self, input: Guard, header_budget: &Cell<Option<u64>>) -> Result<(), ExtractError> {
        let mut archive = tar::Archive::new(input);
        let mut entries = archive.entries().map_err(|e| self.read_error(e))?;
        loop {
            if self.cancelled() {
                return Err(ExtractError::Cancelled);
            }
            // Only headers are read in here, within their budget (see
            // `header_cap`): each entry's data was drained below.
            header_budget.set(Some(header_cap(&self.opts.limits)));
            let next = entries.next();
            header_budget.set(None);
            let Some(entry) = next else { break };
            let mut entry = entry.map_err(|e| self.read_error(e))?;
            self.entries += 1;
            if self.entries > self.opts.limits.max_entries {
                return Err(ExtractError::Limit { what: "entry count", limit: self.opts.limits.max_entries });
            }
            self.entry(&mut entry)?;
            // Data nobody read (a directory's, a global pax header's) is
            // skipped here, outside the header budget, never held.
            io::copy(&mut entry, &mut io::sink()).map_err(|e| self.read_error(e))?;
        }
        // Read past the end-of-archive blocks to the end of the stream: only
        // there does the decoder check the gzip CRC or zstd checksum, and a
        // byte flipped in file content is caught nowhere else.
        let mut rest = archive.into_inner();
        io::copy(&mut rest, &mut io::sink()).map_err(|e| match self.read_error(e) {
            ExtractError::Corrupt { detail, source } => {
                ExtractError::Corrupt { detail: format!("the stream does not end cleanly ({detail})"), source }
            }
            other => other,
        })?;
        self.finish_dirs()
    }

    fn read_error(&self, e: io::Error) -> ExtractError {
        let msg = e.to_string();
        if msg.contains(CANCELLED_MSG) || self.cancelled() {
            ExtractError::Cancelled
        } else if msg.contains(BOMB_MSG) {
            ExtractError::Limit { what: "expanded size", limit: self.opts.limits.max_bytes }
        } else if msg.contains(HEADER_MSG) {
            ExtractError::Limit { what: HEADER_WHAT, limit: header_cap(&self.opts.limits) }
        } else {
            corrupt("failed to read an entry", e)
        }
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ExtractError> {
        let kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let comps = self.normalize(&raw, &shown, kind == EntryType::Directory)?;
        let mode = entry.header().mode().map_err(|e| corrupt("bad mode field", e))?;
        let mtime = entry.header().mtime().unwrap_or(0);
        let Some((name, parents)) = comps.split_last() else {
            // The target directory itself (`./` or `deno-dir/`).
            if kind == EntryType::Directory {
                self.dir_meta.push((Vec::new(), mode, mtime));
                return Ok(());
            }
            return Err(unsafe_entry(&shown, "names the target directory itself but is not a directory"));
        };
        match kind {
            EntryType::Regular | EntryType::Continuous => {
                let parent = self.parent(parents, &shown)?;
                // Write errors name where the file goes, not the archive's
                // (possibly rooted elsewhere) name for it.
                let dest = String::from_utf8_lossy(&comps.join(&b'/')).into_owned();
                self.file(entry, parent, name, mode, mtime, &dest)
            }
            EntryType::Directory => {
                let parent = self.parent(parents, &shown)?;
                match rustix::fs::mkdirat(&parent, os(name), Mode::from_raw_mode(0o700)) {
                    Ok(()) => self.own_at(&parent, name).map_err(|e| self.io(&comps, e))?,
                    Err(Errno::EXIST) if self.is_dir(&parent, name) => {}
                    Err(Errno::EXIST) => {
                        return Err(unsafe_entry(&shown, "a directory replaces an earlier non-directory entry"));
                    }
                    Err(e) => return Err(self.io(&comps, e)),
                }
                self.stats.dirs += 1;
                self.dir_meta.push((comps.join(&b'/'), mode, mtime));
                Ok(())
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| unsafe_entry(&shown, "symlink without a target"))?
                    .into_owned();
                check_symlink_target(parents, &target, &self.prefix, &shown)?;
                let parent = self.parent(parents, &shown)?;
                match rustix::fs::symlinkat(os(&target), &parent, os(name)) {
                    Ok(()) => self.own_at(&parent, name).map_err(|e| self.io(&comps, e))?,
                    Err(Errno::EXIST) => return Err(unsafe_entry(&shown, "duplicate entry")),
                    Err(e) => return Err(self.io(&comps, e)),
                }
                let ts = timestamps(mtime);
                // Best effort: some filesystems refuse symlink timestamps.
                let _ = rustix::fs::utimensat(&parent, os(name), &ts, AtFlags::SYMLINK_NOFOLLOW);
                self.count(0, 1);
                Ok(())
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| unsafe_entry(&shown, "hardlink without a target"))?
                    .into_owned();
                self.hardlink(&comps, &target, &shown)
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                Err(unsafe_entry(&shown, "device and fifo nodes are never created"))
            }
            other => {
                let b = other.as_byte();
                Err(unsafe_entry(&shown, &format!("unsupported entry type {:?} ({b:#04x})", b as char)))
            }
        }
    }

    /// Checks a path lexically and returns its components relative to the
    /// target. An empty result names the target itself.
    fn normalize<'p>(&mut self, raw: &'p [u8], shown: &str, first_is_dir: bool) -> Result<Vec<&'p [u8]>, ExtractError> {
        if raw.len() > self.opts.limits.max_path_len {
            return Err(unsafe_entry(
                &shown.chars().take(80).collect::<String>(),
                &format!("path is {} bytes, over the limit of {}", raw.len(), self.opts.limits.max_path_len),
            ));
        }
        let absolute = raw.first() == Some(&b'/');
        let mut comps = Vec::new();
        for c in raw.split(|b| *b == b'/') {
            match c {
                b"" | b"." => {}
                b".." => return Err(unsafe_entry(shown, "path contains `..`")),
                c if c.len() > 255 => {
                    return Err(unsafe_entry(shown, "a path component is longer than 255 bytes"));
                }
                // A GNU long name or pax path may hold one; the kernel would
                // refuse it with a bare EINVAL, read as a disk error.
                c if c.contains(&0) => return Err(unsafe_entry(shown, "NUL in a path")),
                c => comps.push(c),
            }
        }
        let under_prefix =
            comps.len() >= self.prefix.len() && comps.iter().zip(&self.prefix).all(|(a, b)| *a == b.as_slice());
        if absolute {
            if !under_prefix {
                return Err(unsafe_entry(shown, "absolute path outside the target directory"));
            }
            return Ok(comps.split_off(self.prefix.len()));
        }
        if self.rooting == Rooting::Undecided && !comps.is_empty() {
            self.rooting = if under_prefix && !self.prefix.is_empty() {
                Rooting::Rooted(self.prefix.len())
            } else if first_is_dir && self.names_a_root(&comps) {
                // Rooted at another path, as `tar -C / other/deno-dir` writes:
                // re-root it here. (Stripping a prefix never leaves the target.)
                self.root_prefix = comps.iter().map(|c| c.to_vec()).collect();
                Rooting::Rooted(comps.len())
            } else {
                Rooting::Relative
            };
        }
        if let Rooting::Rooted(n) = self.rooting {
            let root = if self.root_prefix.is_empty() { &self.prefix } else { &self.root_prefix };
            let under = comps.len() >= n && comps.iter().zip(root).all(|(a, b)| *a == b.as_slice());
            if !under {
                return Err(unsafe_entry(shown, "entry outside the directory the archive is rooted at"));
            }
            return Ok(comps.split_off(n));
        }
        Ok(comps)
    }

    /// Whether a first directory entry names an archive root rather than a
    /// subdirectory: an absolute-looking path (`tmp/x/deno-dir`) or the
    /// target's own name (`deno-dir` restored into `/home/u/deno-dir`).
    fn names_a_root(&self, comps: &[&[u8]]) -> bool {
        comps.len() >= 2 || self.prefix.last().is_some_and(|name| comps[0] == name.as_slice())
    }

    /// Opens (creating as needed) the directory holding an entry, never
    /// following a symlink on the way.
    fn parent(&mut self, parents: &[&[u8]], shown: &str) -> Result<OwnedFd, ExtractError> {
        if parents.is_empty() {
            return self.root.try_clone().map_err(|e| ExtractError::Io { path: self.staging.clone(), source: e });
        }
        let key = parents.join(&b'/');
        if let Some(fd) = self.dirs.get(&key) {
            return fd.try_clone().map_err(|e| ExtractError::Io { path: self.staging.clone(), source: e });
        }
        let fd = self.walk(parents, true, shown)?;
        if self.dirs.len() >= DIR_CACHE {
            self.dirs.clear();
        }
        let copy = fd.try_clone().map_err(|e| ExtractError::Io { path: self.staging.clone(), source: e })?;
        self.dirs.insert(key, copy);
        Ok(fd)
    }

    fn walk(&self, parents: &[&[u8]], create: bool, shown: &str) -> Result<OwnedFd, ExtractError> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut fd = self.root.try_clone().map_err(|e| ExtractError::Io { path: self.staging.clone(), source: e })?;
        for (i, c) in parents.iter().enumerate() {
            let next = match rustix::fs::openat(&fd, os(c), flags, Mode::empty()) {
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&fd, os(c), Mode::from_raw_mode(0o755)) {
                        Ok(()) => self.own_at(&fd, c).map_err(|e| self.io(&parents[..=i], e))?,
                        Err(Errno::EXIST) => {}
                        Err(e) => return Err(self.io(&parents[..=i], e)),
                    }
                    rustix::fs::openat(&fd, os(c), flags, Mode::empty())
                }
                other => other,
            };
            fd = match next {
                Ok(next) => next,
                Err(Errno::LOOP | Errno::NOTDIR) => {
                    return Err(unsafe_entry(shown, "path goes through a symlink or a non-directory"));
                }
                Err(Errno::NOENT) => {
                    return Err(unsafe_entry(shown, "link target does not exist in the archive"));
                }
                Err(e) => return Err(self.io(&parents[..=i], e)),
            };
        }
        Ok(fd)
    }

    fn is_dir(&self, parent: &OwnedFd, name: &[u8]) -> bool {
        rustix::fs::statat(parent, os(name), AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory)
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        parent: OwnedFd,
        name: &[u8],
        mode: u32,
        mtime: u64,
        shown: &str,
    ) -> Result<(), ExtractError> {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&parent, os(name), flags, Mode::from_raw_mode(0o600)) {
            Ok(fd) => fd,
            Err(Errno::EXIST) => return Err(unsafe_entry(shown, "duplicate entry")),
            Err(e) => return Err(self.io_shown(shown, e)),
        };
        let mut file = std::fs::File::from(fd);
        let mut written = 0u64;
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.read_error(e)),
            };
            if self.stats.bytes + written + n as u64 > self.opts.limits.max_bytes {
                return Err(ExtractError::Limit { what: "expanded size", limit: self.opts.limits.max_bytes });
            }
            file.write_all(&self.buf[..n])
                .map_err(|e| ExtractError::Io { path: self.staging.join(shown), source: e })?;
            written += n as u64;
            if let Some(p) = &self.opts.progress {
                p.add(n as u64, 0);
            }
        }
        // Modes keep their permission bits only: setuid, setgid and sticky go.
        if let Some((uid, gid)) = self.opts.owner {
            // Before the mode: chown clears setuid bits, and sets none.
            rustix::fs::fchown(&file, Some(rustix::fs::Uid::from_raw(uid)), Some(rustix::fs::Gid::from_raw(gid)))
                .map_err(|e| self.io_shown(shown, e))?;
        }
        rustix::fs::fchmod(&file, Mode::from_raw_mode(mode & 0o777)).map_err(|e| self.io_shown(shown, e))?;
        rustix::fs::futimens(&file, &timestamps(mtime)).map_err(|e| self.io_shown(shown, e))?;
        self.stats.bytes += written;
        self.count(0, 1);
        Ok(())
    }

    fn hardlink(&mut self, comps: &[&[u8]], target: &[u8], shown: &str) -> Result<(), ExtractError> {
        // Errors about the target name both ends: `h -> /etc/passwd`.
        let shown = &format!("{shown} -> {}", String::from_utf8_lossy(target));
        let tcomps = self.normalize(target, shown, false)?;
        let Some((tname, tparents)) = tcomps.split_last() else {
            return Err(unsafe_entry(shown, "hardlink to the target directory"));
        };
        let (name, parents) = comps.split_last().expect("caller checked");
        let tparent = self.walk(tparents, false, shown)?;
        match rustix::fs::statat(&tparent, os(tname), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {}
            Ok(_) => {
                return Err(unsafe_entry(shown, "hardlink to something other than a regular file"));
            }
            Err(_) => {
                return Err(unsafe_entry(shown, "hardlink target does not exist in the archive"));
            }
        }
        let parent = self.parent(parents, shown)?;
        match rustix::fs::linkat(&tparent, os(tname), &parent, os(name), AtFlags::empty()) {
            Ok(()) => {}
            Err(Errno::EXIST) => return Err(unsafe_entry(shown, "duplicate entry")),
            Err(e) => return Err(self.io(comps, e)),
        }
        self.count(0, 1);
        Ok(())
    }

    /// Applies directory modes and mtimes, deepest first, once nothing more
    /// will be written into them.
    fn finish_dirs(&mut self) -> Result<(), ExtractError> {
        self.dirs.clear();
        let mut metas = std::mem::take(&mut self.dir_meta);
        // The staging dir was created private; without a root entry in the
        // archive, the restored dir gets the usual 0755.
        if !metas.iter().any(|(rel, _, _)| rel.is_empty()) {
            rustix::fs::fchmod(&self.root, Mode::from_raw_mode(0o755)).map_err(|e| self.io(&[], e))?;
        }
        metas.sort_by(|a, b| b.0.cmp(&a.0));
        for (rel, mode, mtime) in metas {
            let fd = if rel.is_empty() {
                self.root.try_clone().map_err(|e| ExtractError::Io { path: self.staging.clone(), source: e })?
            } else {
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                rustix::fs::openat(&self.root, os(&rel), flags, Mode::empty()).map_err(|e| self.io(&[&rel], e))?
            };
            // Owners keep rwx on directories so the tree can always be removed.
            rustix::fs::fchmod(&fd, Mode::from_raw_mode((mode & 0o777) | 0o700)).map_err(|e| self.io(&[&rel], e))?;
            rustix::fs::futimens(&fd, &timestamps(mtime)).map_err(|e| self.io(&[&rel], e))?;
        }
        // The staging dir itself last: until now only we could enter it, so
        // no multi-component path above could have been redirected.
        if let Some((uid, gid)) = self.opts.owner {
            let (uid, gid) = (rustix::fs::Uid::from_raw(uid), rustix::fs::Gid::from_raw(gid));
            rustix::fs::fchown(&self.root, Some(uid), Some(gid)).map_err(|e| self.io(&[], e))?;
        }
        Ok(())
    }

    /// Gives a just-created entry (never followed, if a symlink) to the
    /// configured owner.
    fn own_at(&self, parent: &OwnedFd, name: &[u8]) -> Result<(), Errno> {
        match self.opts.owner {
            Some((uid, gid)) => rustix::fs::chownat(
                parent,
                os(name),
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            ),
            None => Ok(()),
        }
    }

    fn count(&mut self, bytes: u64, files: u64) {
        self.stats.files += files;
        if let Some(p) = &self.opts.progress {
            p.add(bytes, files);
        }
    }

    fn io(&self, comps: &[&[u8]], e: Errno) -> ExtractError {
        let rel = comps.join(&b'/');
        ExtractError::Io { path: self.staging.join(os(&rel)), source: e.into() }
    }

    fn io_shown(&self, shown: &str, e: Errno) -> ExtractError {
        ExtractError::Io { path: self.staging.join(shown.trim_start_matches('/')), source: e.into() }
    }
}

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

fn timestamps(mtime: u64) -> Timestamps {
    let t = Timespec { tv_sec: mtime.min(i64::MAX as u64) as i64, tv_nsec: 0 };
    Timestamps { last_access: t, last_modification: t }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> ExtractOptions {
        ExtractOptions::new("/deno-dir")
    }

    fn norm(raw: &str) -> Result<Vec<String>, String> {
        let o = opts();
        let staging = tempfile::tempdir().unwrap();
        let mut x = Extractor::new(staging.path(), &o).unwrap();
        x.normalize(raw.as_bytes(), raw, false)
            .map(|v| v.iter().map(|c| String::from_utf8_lossy(c).into_owned()).collect())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn normalizes_relative_rooted_and_absolute_paths() {
        assert_eq!(norm("./npm/a.js").unwrap(), ["npm", "a.js"]);
        assert_eq!(norm("deno-dir/npm/a.js").unwrap(), ["npm", "a.js"]);
        assert_eq!(norm("/deno-dir/npm").unwrap(), ["npm"]);
        assert!(norm("/etc/passwd").unwrap_err().contains("absolute path outside"));
        assert!(norm("a/../../x").unwrap_err().contains("`..`"));
    }

    #[test]
    fn symlink_targets_stay_inside() {
        let o = opts();
        let staging = tempfile::tempdir().unwrap();
        let x = Extractor::new(staging.path(), &o).unwrap();
        let ok = |parents: &[&[u8]], t: &str| check_symlink_target(parents, t.as_bytes(), &x.prefix, "l").is_ok();
        assert!(ok(&[b"a", b"b"], "../../x"));
        assert!(ok(&[b"a"], "sibling/file"));
        assert!(ok(&[], "/deno-dir/npm/x"));
        assert!(!ok(&[b"a"], "../../x"));
        assert!(!ok(&[], "/etc/shadow"));
        assert!(!ok(&[], "/deno-dir/../etc"));
        assert!(!ok(&[b"a"], "l1/../x"), "`..` after a name may follow another symlink");
        assert!(!ok(&[], ""));
    }
}
