//! Writing a directory as a tar stream.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::WriteError;
use crate::progress::Progress;

/// Where the archive's entries are rooted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Entries are relative to the directory (`npm/...`).
    Relative,
    /// Entries carry the directory's absolute path without the leading `/`
    /// (`deno-dir/npm/...`), as `tar -czf - -C / deno-dir` writes them. This is
    /// the seed's layout: `tar -xzf - -C /` puts it back in place.
    Rooted,
}

/// How the tar stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// gzip at level 6, what `tar -czf` writes.
    Gzip,
    Zstd {
        level: i32,
    },
    None,
}

/// How to write.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    pub layout: Layout,
    pub encoding: Encoding,
    /// Leave out SQLite databases (by their header) and their `-wal`, `-shm`
    /// and `-journal` companions. Deno keeps its analysis caches open as SQLite
    /// files; a copy taken mid-write is corrupt, and they regenerate.
    pub skip_sqlite: bool,
    pub cancel: Option<Arc<AtomicBool>>,
    pub progress: Option<Arc<Progress>>,
}

impl WriteOptions {
    pub fn new(layout: Layout, encoding: Encoding) -> Self {
        WriteOptions { layout, encoding, skip_sqlite: true, cancel: None, progress: None }
    }
}

/// What an archive holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Regular files and symlinks.
    pub files: u64,
    pub dirs: u64,
    /// Bytes of file content (before compression).
    pub bytes: u64,
    /// Files left out (SQLite, sockets, fifos, devices).
    pub skipped: u64,
}

const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Top-level entries with this prefix are sandcache's own (staging and trash
/// inside a mounted target dir); they are never archived or fingerprinted.
pub const RESERVED_PREFIX: &str = ".sandcache-";
const SQLITE_COMPANIONS: [&str; 3] = ["-wal", "-shm", "-journal"];

/// True when `dir` is missing or holds no regular file (directories alone,
/// however many, make an empty cache).
pub fn is_empty_tree(dir: &Path) -> io::Result<bool> {
    fn any_file(dir: &Path, top: bool) -> io::Result<bool> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if top && entry.file_name().to_string_lossy().starts_with(RESERVED_PREFIX) {
                continue;
            }
            let ty = entry.file_type()?;
            if ty.is_file() || ty.is_symlink() {
                return Ok(true);
            }
            if ty.is_dir() && any_file(&entry.path(), false)? {
                return Ok(true);
            }
        }
        Ok(false)
    }
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
        Ok(m) if !m.is_dir() => Ok(true),
        Ok(_) => any_file(dir, true).map(|found| !found),
    }
}

/// Writes `dir` as a tar stream into `out`, walking it in name order so equal
/// trees give equal archives. Returns once the stream is complete and
/// flushed. A file that shrinks while it is read fails the write.
pub fn write_archive<W: Write>(dir: &Path, out: W, opts: &WriteOptions) -> Result<WriteStats, WriteError> {
    let prefix = match opts.layout {
        Layout::Relative => PathBuf::new(),
        Layout::Rooted => dir.strip_prefix("/").unwrap_or(dir).to_owned(),
    };
    let mut stats = WriteStats::default();
    match opts.encoding {
        Encoding::Gzip => {
            let enc = flate2::write::GzEncoder::new(out, flate2::Compression::new(6));
            let enc = walk_into(dir, &prefix, enc, opts, &mut stats)?;
            enc.finish().map_err(WriteError::Sink)?;
        }
        Encoding::Zstd { level } => {
            let mut enc = zstd::stream::write::Encoder::new(out, level).map_err(WriteError::Sink)?;
            // Without the frame checksum a flipped byte in stored content
            // decodes silently; gzip always carries its CRC.
            enc.include_checksum(true).map_err(WriteError::Sink)?;
            let enc = walk_into(dir, &prefix, enc, opts, &mut stats)?;
            enc.finish().map_err(WriteError::Sink)?;
        }
        Encoding::None => {
            let mut w = walk_into(dir, &prefix, out, opts, &mut stats)?;
            w.flush().map_err(WriteError::Sink)?;
        }
    }
    Ok(stats)
}

fn walk_into<W: Write>(
    dir: &Path,
    prefix: &Path,
    out: W,
    opts: &WriteOptions,
    stats: &mut WriteStats,
) -> Result<W, WriteError> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let mut w = Walker { builder, opts, stats, buf_head: [0; 16] };
    // The dir itself comes first (`./` or `deno-dir/`), so its mode and
    // mtime survive a round trip.
    let meta = fs::metadata(dir).map_err(|e| read_err(dir, e))?;
    let root = if prefix.as_os_str().is_empty() { Path::new(".") } else { prefix };
    w.append_dir(root, &meta)?;
    w.walk(dir, prefix, true)?;
    w.builder.into_inner().map_err(WriteError::Sink)
}

struct Walker<'a, W: Write> {
    builder: tar::Builder<W>,
    opts: &'a WriteOptions,
    stats: &'a mut WriteStats,
    buf_head: [u8; 16],
}

impl<W: Write> Walker<'_, W> {
    fn walk(&mut self, dir: &Path, name: &Path, top: bool) -> Result<(), WriteError> {
        let entries = sorted_entries(dir, top).map_err(|e| read_err(dir, e))?;
        let mut sqlite: Vec<std::ffi::OsString> = Vec::new();
        for entry in entries {
            if self.opts.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Err(WriteError::Cancelled);
            }
            let path = entry.path();
            let file_name = entry.file_name();
            let rel = name.join(&file_name);
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                // Deleted between listing and stat: it is simply not there.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(read_err(&path, e)),
            };
            let ty = meta.file_type();
            if ty.is_dir() {
                self.append_dir(&rel, &meta)?;
                self.walk(&path, &rel, false)?;
            } else if ty.is_symlink() {
                let target = fs::read_link(&path).map_err(|e| read_err(&path, e))?;
                let mut header = header_for(&meta, tar::EntryType::Symlink);
                self.builder.append_link(&mut header, &rel, &target).map_err(WriteError::Sink)?;
                self.stats.files += 1;
                self.progress(0);
            } else if ty.is_file() {
                if self.opts.skip_sqlite && is_companion(&file_name, &sqlite) {
                    self.stats.skipped += 1;
                    continue;
                }
                let mut file = match File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(read_err(&path, e)),
                };
                let meta = file.metadata().map_err(|e| read_err(&path, e))?;
                if self.opts.skip_sqlite && meta.len() >= 16 {
                    file.read_exact(&mut self.buf_head).map_err(|e| read_err(&path, e))?;
                    if &self.buf_head == SQLITE_MAGIC {
                        sqlite.push(file_name);
                        self.stats.skipped += 1;
                        continue;
                    }
                }
                let mut header = header_for(&meta, tar::EntryType::Regular);
                let head: &[u8] = if self.opts.skip_sqlite && meta.len() >= 16 { &self.buf_head } else { &[] };
                let body = Exact { inner: io::Cursor::new(head.to_vec()).chain(file), left: meta.len(), path: &path };
                self.builder.append_data(&mut header, &rel, body).map_err(|e| unwrap_read(e, &path))?;
                self.stats.files += 1;
                self.stats.bytes += meta.len();
                self.progress(meta.len());
            } else {
                tracing::debug!(path = %path.display(), "leaving out a socket, fifo or device node");
                self.stats.skipped += 1;
            }
        }
        Ok(())
    }

    fn append_dir(&mut self, rel: &Path, meta: &fs::Metadata) -> Result<(), WriteError> {
        let mut header = header_for(meta, tar::EntryType::Directory);
        self.builder.append_data(&mut header, rel, io::empty()).map_err(WriteError::Sink)?;
        self.stats.dirs += 1;
        Ok(())
    }

    fn progress(&self, bytes: u64) {
        if let Some(p) = &self.opts.progress {
            p.add(bytes, 1);
        }
    }
}

/// A directory's entries in name order, without sandcache's own at the top.
fn sorted_entries(dir: &Path, top: bool) -> io::Result<Vec<fs::DirEntry>> {
    let mut entries: Vec<fs::DirEntry> = fs::read_dir(dir)?
        .filter(|e| !(top && e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().starts_with(RESERVED_PREFIX))))
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    Ok(entries)
}

/// A hash of what an archive of `dir` would hold: every path, kind, size,
/// mtime, mode and symlink target, leaving out SQLite databases at the top
/// of `dir` (and their journals) as [`write_archive`] does. Two equal
/// fingerprints mean an archive would not change. It costs one `lstat` per
/// entry. A missing dir has the fingerprint of an empty one.
pub fn fingerprint(dir: &Path, skip_sqlite: bool) -> io::Result<[u8; 32]> {
    fingerprint_visit(dir, skip_sqlite, &mut |_, _| {})
}

/// [`fingerprint`], also showing each regular file it counts (relative path
/// and metadata) to `visit`, so a caller needing per-file stats walks once.
pub fn fingerprint_visit(dir: &Path, skip_sqlite: bool, visit: &mut FileVisitor<'_>) -> io::Result<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    if fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
        fingerprint_dir(dir, Path::new(""), skip_sqlite, true, &mut h, visit)?;
    }
    Ok(*h.finalize().as_bytes())
}

/// Called with each regular file's relative path and metadata.
pub type FileVisitor<'a> = dyn FnMut(&Path, &fs::Metadata) + 'a;

fn fingerprint_dir(
    dir: &Path,
    rel: &Path,
    skip_sqlite: bool,
    top: bool,
    h: &mut blake3::Hasher,
    visit: &mut FileVisitor<'_>,
) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let mut sqlite: Vec<std::ffi::OsString> = Vec::new();
    for entry in sorted_entries(dir, top)? {
        let name = entry.file_name();
        let path = entry.path();
        // Relative to the open directory (fstatat), never following a link.
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let ty = meta.file_type();
        // SQLite databases are looked for at the top only, where Deno keeps
        // its caches: opening every file would double the cost of a walk. A
        // deeper database only makes a change look possible; the snapshot
        // itself still leaves it out.
        if ty.is_file() && skip_sqlite && top {
            if is_companion(&name, &sqlite) {
                continue;
            }
            if meta.len() >= 16 {
                let mut head = [0u8; 16];
                let is_db =
                    File::open(&path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && &head == SQLITE_MAGIC;
                if is_db {
                    sqlite.push(name);
                    continue;
                }
            }
        }
        let child = rel.join(&name);
        let kind = if ty.is_dir() {
            b'd'
        } else if ty.is_symlink() {
            b'l'
        } else if ty.is_file() {
            b'f'
        } else {
            continue;
        };
        h.update(child.as_os_str().as_bytes());
        h.update(&[0, kind]);
        if kind == b'd' {
            h.update(&(meta.permissions().mode() & 0o7777).to_le_bytes());
            fingerprint_dir(&path, &child, skip_sqlite, false, h, visit)?;
            continue;
        }
        if kind == b'f' {
            visit(&child, &meta);
        }
        h.update(&meta.len().to_le_bytes());
        h.update(&meta.mtime().to_le_bytes());
        h.update(&meta.mtime_nsec().to_le_bytes());
        h.update(&(meta.permissions().mode() & 0o7777).to_le_bytes());
        if kind == b'l' {
            h.update(fs::read_link(&path)?.as_os_str().as_bytes());
        }
    }
    Ok(())
}

fn is_companion(name: &std::ffi::OsStr, sqlite: &[std::ffi::OsString]) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    SQLITE_COMPANIONS
        .iter()
        .any(|suffix| name.strip_suffix(suffix).is_some_and(|base| sqlite.iter().any(|s| s.to_str() == Some(base))))
}

fn header_for(meta: &fs::Metadata, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(meta.permissions().mode() & 0o7777);
    h.set_mtime(meta.mtime().max(0) as u64);
    h.set_uid(meta.uid() as u64);
    h.set_gid(meta.gid() as u64);
    h.set_size(if kind == tar::EntryType::Regular { meta.len() } else { 0 });
    h
}

fn read_err(path: &Path, source: io::Error) -> WriteError {
    WriteError::Read { path: path.to_owned(), source }
}

/// Marks errors raised while reading a source file so they are reported as
/// read errors, not sink errors, after passing through the tar builder.
#[derive(Debug)]
struct SourceRead(io::Error);

impl std::fmt::Display for SourceRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SourceRead {}

fn unwrap_read(e: io::Error, path: &Path) -> WriteError {
    if e.get_ref().is_some_and(|inner| inner.is::<SourceRead>()) {
        let inner = e.into_inner().expect("checked").downcast::<SourceRead>().expect("checked");
        return read_err(path, inner.0);
    }
    WriteError::Sink(e)
}

/// Yields exactly `left` bytes: a file that grew is cut at the size in its
/// header, one that shrank is an error (the archive would be misframed).
struct Exact<'p, R> {
    inner: R,
    left: u64,
    path: &'p Path,
}

impl<R: Read> Read for Exact<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want]).map_err(|e| io::Error::other(SourceRead(e)))?;
        if n == 0 {
            let msg = format!("`{}` shrank while it was being archived", self.path.display());
            return Err(io::Error::other(SourceRead(io::Error::new(io::ErrorKind::UnexpectedEof, msg))));
        }
        self.left -= n as u64;
        Ok(n)
    }
}
