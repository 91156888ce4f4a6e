//! A native snapshot's build: the dir walked as a hostile tree, content
//! the base stores reused, the rest packed (hot and cold apart), and the
//! manifest.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use sandcache_archive::pack::{self, Entry, Frame, Kind, Manifest, PackBuilder, PackRef, Span};
use sandcache_archive::select::{Selection, Take};
use sandcache_archive::walk::{FileReader, Kind as WalkKind, Step, Tree};
use sandcache_archive::{Progress, SqliteOptions, WalkError, WalkOptions};

use crate::bookkeeping::{Index, IndexEntry, stamp};
use crate::error::Error;

/// Where content already stored lives: hash → (frame, offset) in `base`.
fn content_map(base: &Manifest) -> HashMap<&str, &Entry> {
    base.entries
        .iter()
        .filter(|e| e.kind == Kind::File && e.size > 0)
        .filter_map(|e| e.hash.as_deref().map(|h| (h, e)))
        .collect()
}

/// A pack this snapshot uploaded.
struct PackInfo {
    id: String,
    size: u64,
    frames: Vec<Frame>,
}

/// A frame of a large file packed in frames of its own (see
/// [`pack::CHUNK_RAW`]): one of the base's, referenced again, or one this
/// snapshot packs (its local number, tagged [`COLD`] when cold).
#[derive(Debug, Clone, Copy)]
enum FrameRef {
    Base(u32),
    New(u32),
}

/// The base's frames a snapshot references again one by one, for a Deno
/// cache changed in place: the frames its previous version (the base's
/// entry at the same path) holds that no other base entry holds, when the
/// new version has the same bytes (same raw length and BLAKE3). Only the
/// frames that changed are then packed and uploaded.
///
/// A frame so referenced is listed again in the manifest, in the run of
/// frames that file spans; a manifest never lists a frame twice, so the
/// original must then go unused: a base entry reused whole that spans a
/// frame referenced one by one is packed again instead, and the other way
/// round.
struct ChunkReuse<'b> {
    base: Option<&'b Manifest>,
    /// By base frame: how many base entries span it.
    holders: Vec<u32>,
    /// By base frame: spanned by an entry reused whole (`WHOLE`), or
    /// referenced one by one (`CHUNK`).
    taken: Vec<u8>,
    /// The base's files at the top, by path.
    top: HashMap<&'b str, &'b Entry>,
}

const WHOLE: u8 = 1;
const CHUNK: u8 = 2;

impl<'b> ChunkReuse<'b> {
    fn new(base: Option<&'b Manifest>) -> ChunkReuse<'b> {
        let frames = base.map_or(0, |b| b.frames.len());
        let mut r = ChunkReuse { base, holders: vec![0; frames], taken: vec![0; frames], top: HashMap::new() };
        for b in base.into_iter() {
            for e in b.entries.iter().filter(|e| e.kind == Kind::File && e.size > 0) {
                for f in b.span_frames(e).into_iter().flatten() {
                    r.holders[f] = r.holders[f].saturating_add(1);
                }
                if !e.path.contains('/') {
                    r.top.insert(e.path.as_str(), e);
                }
            }
        }
        r
    }

    /// Whether base entry `b` may be reused whole (none of its frames is
    /// referenced one by one): its frames are then taken.
    fn take_whole(&mut self, b: &Entry) -> bool {
        let Some(span) = self.base.and_then(|m| m.span_frames(b).ok()) else { return true };
        if span.clone().any(|f| self.taken[f] & CHUNK != 0) {
            return false;
        }
        for f in span {
            self.taken[f] |= WHOLE;
        }
        true
    }

    /// The frames of the base's version of `path` that may be referenced
    /// one by one: (BLAKE3, raw length) → frame.
    fn candidates(&self, path: &str) -> HashMap<(String, u64), u32> {
        let (Some(base), Some(e)) = (self.base, self.top.get(path)) else { return HashMap::new() };
        let Ok(span) = base.span_frames(e) else { return HashMap::new() };
        span.filter(|&f| self.holders[f] == 1)
            .map(|f| ((base.frames[f].hash.clone(), base.frames[f].rawlen), f as u32))
            .collect()
    }

    /// Takes frame `f` to reference one by one, unless it is taken.
    fn take_chunk(&mut self, f: u32) -> bool {
        let free = self.taken.get(f as usize) == Some(&0);
        if free {
            self.taken[f as usize] = CHUNK;
        }
        free
    }
}

pub(crate) struct SnapshotPlan {
    pub manifest: Manifest,
    pub index: Index,
    pub files: u64,
    pub bytes: u64,
    /// Whether the manifest's entries equal the base's: nothing to upload.
    pub unchanged: bool,
}

/// The BLAKE3 of a file read in 1 MiB pieces (its listed size, checking the
/// cancel flag at each), and its first 16 bytes.
fn hash_stream(f: &mut FileReader) -> Result<(String, Vec<u8>), WalkError> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut head = Vec::new();
    loop {
        let n = f.read_full(&mut buf)?;
        if n == 0 {
            break;
        }
        if head.is_empty() {
            head = buf[..n.min(16)].to_vec();
        }
        hasher.update(&buf[..n]);
    }
    Ok((hasher.finalize().to_hex().to_string(), head))
}

/// Walks `dir` (as a hostile tree: see [`sandcache_archive::walk`]), reuses
/// what `base` already stores, and hands each new pack to `upload` as soon
/// as it is full (bounded memory). Blocking. SQLite databases are left out,
/// except Deno's own caches at the top when `sqlite` is given: stored as
/// consistent copies (see [`sandcache_archive::sqlite`]), never indexed
/// (the copy is not the file on disk), and hot (read at every boot).
pub(crate) fn build(
    dir: &Path,
    base: Option<&Manifest>,
    index: &Index,
    walk: &WalkOptions,
    sqlite: Option<&SqliteOptions>,
    progress: Option<&Progress>,
    upload: &mut dyn FnMut(pack::BuiltPack) -> io::Result<()>,
) -> Result<SnapshotPlan, Error> {
    let tree = Tree::open(dir, walk)?.ok_or_else(|| WalkError::Io {
        path: dir.to_owned(),
        source: io::Error::new(io::ErrorKind::NotFound, "no such directory"),
    })?;
    let known = base.map(content_map).unwrap_or_default();
    let mut repack_budget = base.map_or(0, |b| b.entries.iter().map(|e| e.size).sum::<u64>() / 4);
    let mut entries: Vec<Entry> = Vec::new();
    let mut new_index = Index::default();
    // Hot content (read since restored or written) and cold content fill
    // packs of their own, hot first in the manifest: a two-phase restore
    // fetches the hot packs before the swap, and little cold content with
    // them.
    let tracks_reads = tree.tracks_reads();
    let mut builders = [PackBuilder::new(3), PackBuilder::new(3)];
    let mut built: Vec<pack::BuiltPack> = Vec::new();
    let mut new_packs: [Vec<PackInfo>; 2] = [Vec::new(), Vec::new()];
    // Content first seen in this snapshot: hash → (local frame, offset),
    // the frame tagged with COLD when the cold builder holds it.
    let mut fresh: HashMap<String, (u32, u64)> = HashMap::new();
    // Reused content: hash → base entry.
    let mut reused: Vec<(usize, Span)> = Vec::new();
    // Large files packed in frames of their own: each entry's run of
    // frames, numbered once the manifest is (see `ChunkReuse`).
    let mut reuse = ChunkReuse::new(base);
    let mut runs: Vec<(usize, Vec<FrameRef>)> = Vec::new();
    let (mut files, mut bytes) = (0u64, 0u64);
    // What a snapshot takes: the archive's one policy (databases and their
    // companions left out, Deno's caches as consistent copies).
    let mut select = Selection::new(sqlite.cloned(), walk.cancel.clone());
    tree.walk::<Error>(&mut |c| {
        if c.name().to_str().is_none() {
            tracing::warn!("leaving out a non-UTF-8 name: {}", c.path().display());
            return Ok(Step::SkipDir);
        }
        // Every component was checked on the way down.
        let child_rel = c.rel().to_str().expect("UTF-8 components").to_owned();
        let meta = c.meta();
        let (mode, mtime) = (meta.mode, meta.mtime);
        let copy = match select.classify(c)? {
            Take::Dir => {
                entries.push(Entry::dir(child_rel, mode, mtime));
                return Ok(Step::Continue);
            }
            Take::Symlink => {
                let target = c.read_link()?;
                if let Some(target) = target.to_str() {
                    entries.push(Entry::symlink(child_rel, target.to_owned(), mode, mtime));
                    files += 1;
                }
                return Ok(Step::Continue);
            }
            Take::LeaveOut => return Ok(if meta.kind == WalkKind::Dir { Step::SkipDir } else { Step::Continue }),
            Take::CacheCopy(copy) => Some(copy),
            Take::File => None,
        };
        let is_cache = copy.is_some();
        // The open file, when it was read for its hash: read again from it,
        // never reopened by name.
        let mut opened: Option<FileReader> = None;
        let (hash, content, size) = match (copy, index.lookup(&child_rel, meta)) {
            (None, Some(h)) => (h.to_owned(), None, meta.size),
            (copy, _) => {
                let mut f = match copy {
                    Some(f) => f,
                    None => match c.open()? {
                        Some(f) => f,
                        None => return Ok(Step::Continue),
                    },
                };
                let size = f.len();
                if size > pack::FRAME_RAW as u64 {
                    // A large file is hashed in frame-sized pieces and, if
                    // new, read again into the packs: never whole in memory.
                    let (hash, head) = hash_stream(&mut f)?;
                    if !is_cache && select.is_database(c, &head) {
                        return Ok(Step::Continue);
                    }
                    opened = Some(f);
                    (hash, None, size)
                } else {
                    let mut data = vec![0; size as usize];
                    f.read_full(&mut data)?;
                    if !is_cache && select.is_database(c, &data[..data.len().min(16)]) {
                        return Ok(Step::Continue);
                    }
                    (blake3::hash(&data).to_hex().to_string(), Some(data), size)
                }
            }
        };
        if !is_cache {
            let (s, m, ct, i) = stamp(meta);
            new_index.files.insert(
                child_rel.clone(),
                IndexEntry { size: s, mtime_ns: m, ctime_ns: ct, ino: i, hash: hash.clone(), upto: false },
            );
        }
        let mut e = Entry::file(child_rel, mode, mtime, size, hash.clone());
        e.hot = tracks_reads && (is_cache || meta.read_since_written());
        let which = usize::from(!e.hot);
        let (builder, new_packs) = (&mut builders[which], &mut new_packs[which]);
        let tag = if e.hot { 0 } else { COLD };
        if size > 0 {
            // Stored content is referenced where it is, except hot content
            // the base holds among cold: packed again, with the hot, so a
            // hot-first restore does not fetch a cold frame for it (once per
            // file that turned hot, up to a quarter of the base's bytes per
            // snapshot: a scan that read everything re-uploads little).
            let stored = known.get(hash.as_str()).filter(|b| b.size == size).filter(|b| {
                let repack = e.hot && !b.hot && repack_budget >= size;
                if repack {
                    repack_budget -= size;
                }
                !repack
            });
            let stored = stored.filter(|b| reuse.take_whole(b));
            if let Some(b) = stored {
                reused.push((entries.len(), Span { frame: b.frame.unwrap_or(0), offset: b.offset, size }));
            } else if let Some((f, o)) = fresh.get(&hash) {
                e.frame = Some(*f);
                e.offset = *o;
            } else {
                let mut ship = |built: &mut Vec<pack::BuiltPack>| {
                    for p in built.drain(..) {
                        new_packs.push(PackInfo {
                            id: p.id.clone(),
                            size: p.bytes.len() as u64,
                            frames: p.frames.clone(),
                        });
                        upload(p).map_err(Error::io("the upload stopped"))?;
                    }
                    Ok::<(), Error>(())
                };
                let changed = || WalkError::Changed {
                    path: c.path(),
                    why: "its content no longer matches the hash it was read with".into(),
                };
                // Deno's caches change in place, page by page: packed in
                // small frames at fixed offsets of the file, which the
                // next version shares but where it changed; the frames of
                // the base's version with the same bytes are referenced
                // again, not uploaded again.
                let chunked = is_cache && size > pack::CHUNK_RAW as u64;
                let held = if chunked { reuse.candidates(&e.path) } else { HashMap::new() };
                let mut run: Vec<FrameRef> = Vec::new();
                let mut add = |data: &[u8], built: &mut Vec<pack::BuiltPack>| {
                    if !chunked {
                        return builder.add(data, built);
                    }
                    for chunk in data.chunks(pack::CHUNK_RAW) {
                        // (Hashed only when the base has frames to offer.)
                        let base = (!held.is_empty())
                            .then(|| (blake3::hash(chunk).to_hex().to_string(), chunk.len() as u64))
                            .and_then(|key| held.get(&key).copied());
                        match base.filter(|&f| reuse.take_chunk(f)) {
                            Some(f) => run.push(FrameRef::Base(f)),
                            None => {
                                let (f, _) = builder.add_in_frames(chunk, pack::CHUNK_RAW, built);
                                run.push(FrameRef::New(f | tag));
                            }
                        }
                    }
                    (0, 0)
                };
                let (f, o) = match content {
                    Some(data) => add(&data, &mut built),
                    None => {
                        // Piece by piece, shipping full packs as they close;
                        // the bytes must still hash as indexed.
                        let mut file = match opened.take() {
                            Some(f) => f,
                            None => c.open()?.ok_or_else(changed)?,
                        };
                        file.rewind()?;
                        let mut hasher = blake3::Hasher::new();
                        let mut at = None;
                        let mut piece = vec![0u8; pack::FRAME_RAW];
                        loop {
                            let n = file.read_full(&mut piece)?;
                            if n == 0 {
                                break;
                            }
                            hasher.update(&piece[..n]);
                            let placed = add(&piece[..n], &mut built);
                            at.get_or_insert(placed);
                            ship(&mut built)?;
                        }
                        if hasher.finalize().to_hex().as_str() != hash {
                            return Err(changed().into());
                        }
                        at.ok_or_else(changed)?
                    }
                };
                if chunked {
                    // Numbered with the manifest; never shared with another
                    // file (its run is its own).
                    runs.push((entries.len(), run));
                } else {
                    let f = f | tag;
                    fresh.insert(hash, (f, o));
                    e.frame = Some(f);
                    e.offset = o;
                }
                ship(&mut built)?;
            }
        }
        entries.push(e);
        files += 1;
        bytes += size;
        if let Some(p) = progress {
            p.files.fetch_add(1, Ordering::Relaxed);
            p.bytes.fetch_add(size, Ordering::Relaxed);
        }
        Ok(Step::Continue)
    })?;
    for (builder, new_packs) in builders.into_iter().zip(new_packs.iter_mut()) {
        builder.finish(&mut built);
        for p in built.drain(..) {
            new_packs.push(PackInfo { id: p.id.clone(), size: p.bytes.len() as u64, frames: p.frames.clone() });
            upload(p).map_err(Error::io("the upload stopped"))?;
        }
    }

    // The manifest: the base's frames and packs, then the new ones; then
    // drop whatever no entry references.
    let (mut packs, mut frames) = match base {
        Some(b) => (b.packs.clone(), b.frames.clone()),
        None => (Vec::new(), Vec::new()),
    };
    let base_frames = frames.len() as u32;
    let hot_frames: u32 = new_packs[0].iter().map(|p| p.frames.len() as u32).sum();
    for p in new_packs.iter().flatten() {
        let pi = packs.len() as u32;
        packs.push(PackRef { id: p.id.clone(), size: p.size, hot: false });
        frames.extend(p.frames.iter().map(|f| Frame { pack: pi, ..f.clone() }));
    }
    let global = |f: u32| match f & COLD {
        0 => base_frames + f,
        _ => base_frames + hot_frames + (f & !COLD),
    };
    for e in entries.iter_mut() {
        if let Some(f) = e.frame.as_mut() {
            *f = global(*f);
        }
    }
    // Each run of frames listed again, in file order, after the others:
    // the frames it lists are its own (`ChunkReuse`), so `compact` drops
    // their first listing, unused.
    for (i, run) in runs {
        entries[i].frame = Some(frames.len() as u32);
        entries[i].offset = 0;
        for r in run {
            let f = match r {
                FrameRef::Base(f) => f,
                FrameRef::New(f) => global(f),
            };
            frames.push(frames[f as usize].clone());
        }
    }
    for (i, span) in reused {
        entries[i].frame = Some(span.frame);
        entries[i].offset = span.offset;
    }
    let created_ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let mut manifest = Manifest { packs, frames, entries, ..Manifest::empty(pack::VERSION, created_ms) };
    manifest.compact();
    let unchanged = new_packs.iter().all(Vec::is_empty) && base.is_some_and(|b| b.entries == manifest.entries);
    Ok(SnapshotPlan { manifest, index: new_index, files, bytes, unchanged })
}

/// Tags a frame of the cold builder until frames are numbered.
const COLD: u32 = 1 << 31;
