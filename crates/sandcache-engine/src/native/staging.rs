//! Phase one, or the only phase: a manifest restored into a private
//! staging dir (directories and empty files, content, then symlinks and
//! metadata), to be swapped in.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;
use sandcache_archive::ExtractError;
use sandcache_archive::pack::{Entry, Kind, Manifest};

use crate::error::Error;

use super::filesystem::{Umask, create, dir_mode, file_mode, io_err, set_meta};
use super::parts::PartHashes;
use super::plan::{Slice, slice_file};
use super::prefetch::Prefetch;
use super::restoring::{RestoreStats, Restoring};
use super::tail::{PendingManifest, Tail, split_hot};
use super::writers::{Sink, suspect_file, write_frames};

/// Restores manifest `m` into `staging`. Downloads, decompression and file
/// writes overlap: ranged GETs stream frames to a pool of writer threads.
///
/// With `hot_first`, and a manifest that records a hot set, only the hot
/// files are written now, with every directory and symlink; the rest is
/// returned as a [`Tail`] for [`restore_tail`] to write after the swap.
pub(crate) async fn restore_into(
    r: &Restoring<'_>,
    m: Arc<Manifest>,
    anchored: &crate::target::Staging,
    prefetch: Prefetch,
    pending: Option<PendingManifest>,
) -> Result<(RestoreStats, Option<Tail>), Error> {
    let (key, opts, found, cancel) = (r.key, r.opts, r.found, &r.cancel);
    let owner = opts.owner;
    // Every path below starts at the held-open staging dir; each blocking
    // task keeps a clone of it, so the fd outlives any writer.
    let staging = &anchored.io();
    // 1. Directories and empty files, before any content arrives. No symlink
    //    exists in staging until the very end, so paths cannot be redirected.
    // Files and directories are created with their final modes wherever
    // the umask keeps them (always under the CLI's zero umask; 0644 and
    // 0755 under the usual 022): no chmod per entry.
    let exact = Umask::current();
    let stage = StagingDir { io: staging.to_owned(), dir: anchored.fd(), exact, owner };
    let t0 = std::time::Instant::now();
    let (setup_m, setup_stage) = (m.clone(), stage.clone());
    let slices = tokio::task::spawn_blocking(move || setup(&setup_m, &setup_stage))
        .await
        .map_err(|e| Error::joined("the setup thread", e))??;
    let t_setup = t0.elapsed();
    // `m` is the hot pieces' manifest: all of it now, and a tail known once
    // the whole manifest is in (see `Tail::resolve`).
    let from_hot_pieces = pending.is_some();
    let (slices, tail) = match (pending, opts.hot_first) {
        (Some(p), _) => (
            slices,
            Some(Tail { slices: Vec::new(), entries: Vec::new(), prefetch: Prefetch::none(), pending: Some(p) }),
        ),
        (None, true) => split_hot(&m, slices),
        (None, false) => (slices, None),
    };
    let mut prefetch = prefetch;
    if let Some(t) = &tail {
        // A frame phase one fetches (or passes over in a coalesced range)
        // that the tail needs too is kept, not fetched again.
        if from_hot_pieces { prefetch.keep_uncovered(&m, &slices) } else { prefetch.keep_for(&t.slices) }
    }

    // 2. Content: every frame needed now, fetched and written.
    let parts = Arc::new(PartHashes::default());
    let sink = Sink::Staging { io: staging.to_owned(), dir: anchored.fd(), exact, parts: parts.clone() };
    let (files, bytes, transferred) = write_frames(r, &m, Arc::new(slices), sink, &prefetch).await?;
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Cancelled);
    }
    let t_content = t0.elapsed();
    // What was prefetched for the tail is not fetched again, and counts
    // once, when the whole restore is over.
    let transferred =
        if tail.is_none() { transferred + prefetch.downloaded.load(Ordering::Relaxed) } else { transferred };
    let tail = tail.map(|t| Tail { prefetch, ..t });

    // 3. Symlinks, then metadata of large files and directories.
    let deferred: HashSet<u32> = tail.as_ref().map(|t| t.entries.iter().copied().collect()).unwrap_or_default();
    let fin_m = m.clone();
    let (fin_key, fin_found) = (key.to_owned(), found.clone());
    let symlinks = tokio::task::spawn_blocking(move || {
        let suspect = |i: usize| suspect_file(&fin_found, &fin_key, &fin_m, i);
        finish(&fin_m, &stage, &deferred, &parts, &suspect)
    })
    .await
    .map_err(|e| Error::joined("the finish thread", e))??;
    tracing::debug!(
        target: "sandbox-cache",
        "staged in {} ms: setup {} ms, content {} ms ({files} files), links and metadata {} ms",
        t0.elapsed().as_millis(),
        t_setup.as_millis(),
        (t_content - t_setup).as_millis(),
        (t0.elapsed() - t_content).as_millis()
    );
    let stats = RestoreStats { files: files + symlinks + empty_files(&m), bytes, transferred };
    Ok((stats, tail))
}

fn empty_files(m: &Manifest) -> u64 {
    m.entries.iter().filter(|e| e.kind == Kind::File && e.size == 0).count() as u64
}

/// The staging dir as its blocking steps write it: every call relative to
/// the held-open `dir` (`io`, its path through that fd, names entries in
/// errors), modes set at creation where the umask keeps them (`exact`), and
/// what is made given to `owner`. Each step holds a clone, so the fd
/// outlives any writer.
#[derive(Clone)]
struct StagingDir {
    io: PathBuf,
    dir: Arc<OwnedFd>,
    exact: Umask,
    owner: Option<(u32, u32)>,
}

/// Creates every directory and empty file; returns each frame's slices.
fn setup(m: &Manifest, s: &StagingDir) -> Result<Vec<Vec<Slice>>, ExtractError> {
    let (staging, dir, exact, owner) = (s.io.as_path(), &*s.dir, s.exact, s.owner);
    let mut slices: Vec<Vec<Slice>> = vec![Vec::new(); m.frames.len()];
    let mut made: HashSet<&str> = HashSet::new();
    for (i, e) in m.entries.iter().enumerate() {
        let parent = match e.kind {
            Kind::Dir => Some(e.path.as_str()),
            _ => e.path.rsplit_once('/').map(|(p, _)| p),
        };
        if let Some(p) = parent {
            if made.insert(p) {
                // A listed directory gets its own mode at once when the umask
                // allows (always with owner rwx, so entries can go in);
                // implied parents 0755.
                let mode = match e.kind {
                    Kind::Dir if exact.keeps(dir_mode(e)) => dir_mode(e),
                    _ => 0o755,
                };
                // Relative to the held-open dir (see `create`). When that
                // fails (a parent not made yet, or made as an implied one),
                // by path, parents and all.
                if rustix::fs::mkdirat(dir, p, Mode::from_raw_mode(mode)).is_err() {
                    let path = staging.join(p);
                    fs::DirBuilder::new().recursive(true).mode(mode).create(&path).map_err(|err| io_err(&path, err))?;
                }
            }
        }
        if e.kind != Kind::File {
            continue;
        }
        if e.size == 0 {
            let path = staging.join(&e.path);
            create(dir, &e.path, true, file_mode(e, exact))
                .and_then(|f| set_meta(&f, e, owner, exact))
                .map_err(|err| io_err(&path, err))?;
            continue;
        }
        slice_file(m, i, e, &mut slices)?;
    }
    Ok(slices)
}

/// Symlinks last, then large files' metadata and each directory's, deepest
/// first. Returns the number of symlinks and large files.
fn finish(
    m: &Manifest,
    s: &StagingDir,
    deferred: &HashSet<u32>,
    parts: &PartHashes,
    suspect: &dyn Fn(usize),
) -> Result<u64, ExtractError> {
    let (staging, dir, exact, owner) = (s.io.as_path(), &*s.dir, s.exact, s.owner);
    let mut n = 0;
    for (i, e) in m.entries.iter().enumerate() {
        // The path only names the entry in an error (every call below is
        // relative to the held-open dir).
        let err = |err: io::Error| io_err(&staging.join(&e.path), err);
        match e.kind {
            Kind::Symlink => {
                rustix::fs::symlinkat(e.target.as_deref().unwrap_or_default(), dir, &e.path)
                    .map_err(|x| err(x.into()))?;
                if let Some((uid, gid)) = owner {
                    let (uid, gid) = (rustix::fs::Uid::from_raw(uid), rustix::fs::Gid::from_raw(gid));
                    rustix::fs::chownat(dir, &e.path, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(|x| err(x.into()))?;
                }
                // Its own mtime, as archived, so the restored tree's
                // fingerprint is known without reading it back.
                let t = rustix::fs::Timespec { tv_sec: e.mtime.max(0), tv_nsec: 0 };
                let times = rustix::fs::Timestamps { last_access: t, last_modification: t };
                rustix::fs::utimensat(dir, &e.path, &times, AtFlags::SYMLINK_NOFOLLOW).map_err(|x| err(x.into()))?;
                n += 1;
            }
            Kind::File
                if e.size > 0 && m.span_frames(e).is_ok_and(|s| s.len() > 1) && !deferred.contains(&(i as u32)) =>
            {
                let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let mut f =
                    fs::File::from(rustix::fs::openat(dir, &e.path, flags, Mode::empty()).map_err(|x| err(x.into()))?);
                if f.metadata().map_err(err)?.len() != e.size {
                    return Err(ExtractError::Corrupt {
                        detail: format!("{} is short after restore", e.path),
                        source: None,
                    });
                }
                // No frame hash was checked as the parts were written: this
                // ties the file to the manifest's hash for it (which the
                // index then records as the file's), by its parts' hashes
                // merged, or (parts not cut as the packer cuts them) by
                // reading the file back once.
                let hash = match parts.root(i as u32, e.size) {
                    Some(h) => h,
                    None => {
                        let mut hasher = blake3::Hasher::new();
                        let mut buf = vec![0u8; 1 << 20];
                        loop {
                            match read_full(&mut f, &mut buf).map_err(err)? {
                                0 => break,
                                n => hasher.update(&buf[..n]),
                            };
                        }
                        hasher.finalize()
                    }
                };
                if hash.to_hex().as_str() != e.hash.as_deref().unwrap_or_default() {
                    suspect(i);
                    return Err(ExtractError::Corrupt {
                        detail: format!("{} fails its BLAKE3 check", e.path),
                        source: None,
                    });
                }
                set_meta(&f, e, owner, exact).map_err(err)?;
                n += 1;
            }
            _ => {}
        }
    }
    let mut dirs: Vec<&Entry> = m.entries.iter().filter(|e| e.kind == Kind::Dir).collect();
    dirs.sort_by(|a, b| b.path.cmp(&a.path));
    if let Some((uid, gid)) = owner {
        // Every directory setup made: the listed ones and their parents
        // (the staging dir itself gets its owner last, below).
        let mut made: HashSet<&str> = dirs.iter().map(|e| e.path.as_str()).collect();
        for e in &m.entries {
            let mut p = e.path.as_str();
            while let Some((parent, _)) = p.rsplit_once('/') {
                made.insert(parent);
                p = parent;
            }
        }
        let (uid, gid) = (rustix::fs::Uid::from_raw(uid), rustix::fs::Gid::from_raw(gid));
        for rel in made {
            rustix::fs::chownat(dir, rel, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|err| io_err(&staging.join(rel), err.into()))?;
        }
    }
    // A directory the tail will land files in gets its mtime then (the
    // renames would move it again): not now, on the way to `hot-ready`.
    let tail_dirs: HashSet<&str> =
        deferred.iter().filter_map(|&i| m.entries.get(i as usize)?.path.rsplit_once('/').map(|(d, _)| d)).collect();
    for e in dirs {
        let err = |err: Errno| io_err(&staging.join(&e.path), err.into());
        if !exact.keeps(dir_mode(e)) {
            rustix::fs::chmodat(dir, &e.path, Mode::from_raw_mode(dir_mode(e)), AtFlags::empty()).map_err(err)?;
        }
        if tail_dirs.contains(e.path.as_str()) {
            continue;
        }
        // Relative to the held-open dir, never following: staging is
        // private, and nothing in it names a directory but a directory.
        let t = rustix::fs::Timespec { tv_sec: e.mtime.max(0), tv_nsec: 0 };
        let times = rustix::fs::Timestamps { last_access: t, last_modification: t };
        rustix::fs::utimensat(dir, &e.path, &times, AtFlags::SYMLINK_NOFOLLOW).map_err(err)?;
    }
    fs::set_permissions(staging, fs::Permissions::from_mode(0o755)).map_err(|err| io_err(staging, err))?;
    // The staging dir itself last: until now only we could enter it, so no
    // path above could have been redirected.
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(staging, Some(uid), Some(gid)).map_err(|err| io_err(staging, err))?;
    }
    Ok(n)
}

/// Reads until `buf` is full or the file ends.
fn read_full(f: &mut fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
