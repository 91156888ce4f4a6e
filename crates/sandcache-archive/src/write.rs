//! Writing a directory as a tar stream.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::limits::Limits;
use crate::progress::Progress;
use crate::select::{Selection, Take};
use crate::sqlite::SqliteOptions;
use crate::walk::{Meta, Step, Tree, WalkError, WalkOptions};

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
    /// files; a copy taken mid-write is corrupt, and they regenerate. Deno's
    /// own caches at the top ([`crate::sqlite::is_deno_cache`], by name, whatever
    /// they hold) are left out too, unless [`WriteOptions::sqlite`] is set.
    /// The policy is [`crate::select`]'s, as for every snapshot.
    pub skip_sqlite: bool,
    /// With `skip_sqlite`: store consistent copies of Deno's own caches at
    /// their paths (see [`crate::sqlite`]), made in this private scratch
    /// dir. One that cannot be copied consistently is left out.
    pub sqlite: Option<SqliteOptions>,
    /// Set to stop at the next entry or read.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Bounds on the tree read: entries, listed bytes, path length. Past
    /// one, the write fails before reading the entry's content.
    pub limits: Limits,
    pub progress: Option<Arc<Progress>>,
    /// See [`WalkOptions::owner`].
    pub owner: Option<u32>,
}

impl WriteOptions {
    pub fn new(layout: Layout, encoding: Encoding) -> Self {
        WriteOptions {
            layout,
            encoding,
            skip_sqlite: true,
            sqlite: None,
            cancel: None,
            limits: Limits::default(),
            progress: None,
            owner: None,
        }
    }
}

/// Why writing an archive stopped.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Reading the source tree failed, found something unsafe, a limit was
    /// exceeded, or the caller cancelled.
    #[error(transparent)]
    Walk(#[from] WalkError),
    /// The output sink refused bytes (upload failed or was cancelled).
    #[error("failed to write the archive stream")]
    Sink(#[source] io::Error),
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

/// Writes `dir` as a tar stream into `out`, walking it in name order so equal
/// trees give equal archives. Returns once the stream is complete and
/// flushed. The tree is read as hostile (see [`crate::walk`]): `dir` and
/// every entry are opened without following symlinks, and an entry that
/// changes kind or inode while it is read fails the write. A file that
/// shrinks while it is read fails it too; one that grows is cut at its
/// listed size.
pub fn write_archive<W: Write>(dir: &Path, out: W, opts: &WriteOptions) -> Result<WriteStats, WriteError> {
    let walk_opts = WalkOptions { cancel: opts.cancel.clone(), limits: opts.limits, owner: opts.owner };
    let tree = Tree::open(dir, &walk_opts)?.ok_or_else(|| WalkError::Io {
        path: dir.to_owned(),
        source: io::Error::new(io::ErrorKind::NotFound, "no such directory"),
    })?;
    let prefix = match opts.layout {
        Layout::Relative => PathBuf::new(),
        Layout::Rooted => dir.strip_prefix("/").unwrap_or(dir).to_owned(),
    };
    let mut stats = WriteStats::default();
    match opts.encoding {
        Encoding::Gzip => {
            let enc = flate2::write::GzEncoder::new(out, flate2::Compression::new(6));
            let enc = walk_into(&tree, &prefix, enc, opts, &mut stats)?;
            enc.finish().map_err(WriteError::Sink)?;
        }
        Encoding::Zstd { level } => {
            let mut enc = zstd::stream::write::Encoder::new(out, level).map_err(WriteError::Sink)?;
            // Without the frame checksum a flipped byte in stored content
            // decodes silently; gzip always carries its CRC.
            enc.include_checksum(true).map_err(WriteError::Sink)?;
            let enc = walk_into(&tree, &prefix, enc, opts, &mut stats)?;
            enc.finish().map_err(WriteError::Sink)?;
        }
        Encoding::None => {
            let mut w = walk_into(&tree, &prefix, out, opts, &mut stats)?;
            w.flush().map_err(WriteError::Sink)?;
        }
    }
    Ok(stats)
}

fn walk_into<W: Write>(
    tree: &Tree,
    prefix: &Path,
    out: W,
    opts: &WriteOptions,
    stats: &mut WriteStats,
) -> Result<W, WriteError> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    // The dir itself comes first (`./` or `deno-dir/`), so its mode and
    // mtime survive a round trip.
    let root = if prefix.as_os_str().is_empty() { Path::new(".") } else { prefix };
    append_dir(&mut builder, root, tree.meta(), stats)?;
    let mut head = [0u8; 16];
    let mut select = match opts.skip_sqlite {
        true => Selection::new(opts.sqlite.clone(), opts.cancel.clone()),
        false => Selection::everything(),
    };
    tree.walk::<WriteError>(&mut |e| {
        let rel = prefix.join(e.rel());
        let meta = e.meta();
        match select.classify(e)? {
            Take::LeaveOut => {
                stats.skipped += 1;
                return Ok(Step::SkipDir);
            }
            Take::CacheCopy(mut file) => {
                let size = file.len();
                let mut header = header_for(meta, tar::EntryType::Regular, size);
                builder.append_data(&mut header, &rel, &mut file).map_err(|err| sink_or_walk(err, file.path()))?;
                stats.files += 1;
                stats.bytes += size;
                progress(opts, size);
            }
            Take::Dir => append_dir(&mut builder, &rel, meta, stats)?,
            Take::Symlink => {
                let target = e.read_link()?;
                let mut header = header_for(meta, tar::EntryType::Symlink, 0);
                builder.append_link(&mut header, &rel, Path::new(&target)).map_err(WriteError::Sink)?;
                stats.files += 1;
                progress(opts, 0);
            }
            Take::File => {
                let Some(mut file) = e.open()? else {
                    return Ok(Step::Continue);
                };
                let size = file.len();
                let sniffed = select.sniffs(e);
                if sniffed {
                    file.read_full(&mut head)?;
                    if select.is_database(e, &head) {
                        stats.skipped += 1;
                        return Ok(Step::Continue);
                    }
                }
                let mut header = header_for(meta, tar::EntryType::Regular, size);
                let head: &[u8] = if sniffed { &head } else { &[] };
                builder
                    .append_data(&mut header, &rel, head.chain(&mut file))
                    .map_err(|err| sink_or_walk(err, file.path()))?;
                stats.files += 1;
                stats.bytes += size;
                progress(opts, size);
            }
        }
        Ok(Step::Continue)
    })?;
    builder.into_inner().map_err(WriteError::Sink)
}

/// The reader's errors carry a walk error; the rest are the sink's.
fn sink_or_walk(err: io::Error, path: &Path) -> WriteError {
    if err.get_ref().is_some_and(|inner| inner.is::<WalkError>()) {
        WriteError::Walk(WalkError::from_io(err, path))
    } else {
        WriteError::Sink(err)
    }
}

fn append_dir<W: Write>(
    builder: &mut tar::Builder<W>,
    rel: &Path,
    meta: &Meta,
    stats: &mut WriteStats,
) -> Result<(), WriteError> {
    let mut header = header_for(meta, tar::EntryType::Directory, 0);
    builder.append_data(&mut header, rel, io::empty()).map_err(WriteError::Sink)?;
    stats.dirs += 1;
    Ok(())
}

fn progress(opts: &WriteOptions, bytes: u64) {
    if let Some(p) = &opts.progress {
        p.add(bytes, 1);
    }
}

fn header_for(meta: &Meta, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(meta.mode);
    h.set_mtime(meta.mtime.max(0) as u64);
    h.set_uid(meta.uid as u64);
    h.set_gid(meta.gid as u64);
    h.set_size(size);
    h
}
