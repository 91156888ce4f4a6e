//! The native format: a generation restored from content-addressed packs
//! (into staging, or in two phases), and built from a walk of the dir.
//! Where its objects live: [`crate::layout`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};
use rustix::io::Errno;
use sandcache_archive::pack::{self, Entry, Frame, Kind, Manifest, PackBuilder, PackRef, PieceRef, Span};
use sandcache_archive::sqlite::{self, Copier, SQLITE_MAGIC};
use sandcache_archive::walk::{FileReader, Kind as WalkKind, Step, Tree};
use sandcache_archive::{ExtractError, Progress, SqliteOptions, WalkError, WalkOptions};
use sandcache_store::{Recycler, Store, StoreError};

use crate::bad::Found;
use crate::bookkeeping::{Index, IndexEntry, stamp};
use crate::error::{Declined, Error};
use crate::layout::{pack_key, piece_key};
use crate::options::RestoreOptions;

pub(crate) async fn get_all(store: &dyn Store, key: &str) -> Result<Bytes, StoreError> {
    let mut obj = store.get(key).await?;
    // Copied into one buffer as the chunks arrive, so the store can reuse
    // them (the size is a hint: a store's word, not trusted as a bound).
    let mut all = Vec::with_capacity(obj.size.min(PREFETCH_BYTES) as usize);
    while let Some(chunk) = obj.stream.next().await {
        all.extend_from_slice(&chunk?);
    }
    Ok(all.into())
}

/// A generation's manifest, whole: a root's pieces are fetched (16 at a
/// time), each checked against its hash, and joined in order. A piece
/// that is not what its name says goes into `found`.
pub(crate) async fn fetch_manifest(store: &dyn Store, key: &str, found: &Found) -> Result<Manifest, Error> {
    whole(store, fetch_root(store, key).await?, found).await
}

/// A stored manifest made whole: a root joined with its pieces.
pub(crate) async fn whole(store: &dyn Store, root: Manifest, found: &Found) -> Result<Manifest, Error> {
    if root.pieces.is_empty() { Ok(root) } else { assemble(store, root, found).await }
}

/// Whole packs downloading while a root's pieces are fetched and the
/// manifest validated, so the piece round trip costs no wall time. Only a
/// root's first packs, up to [`PREFETCH_BYTES`]; the rest are fetched by
/// range as before. Dropped (a failed or finished restore), it stops them.
pub(crate) struct Prefetch {
    packs: HashMap<String, tokio::sync::watch::Receiver<Option<Result<Bytes, String>>>>,
    tasks: Vec<tokio::task::AbortHandle>,
    /// Bytes of the packs downloaded whole (counted once, however many
    /// times they are sliced).
    downloaded: Arc<AtomicU64>,
    /// Frames phase one fetched by range that the tail needs too, kept
    /// (compressed) so the tail does not fetch them again.
    kept: Kept,
}

/// Frames kept from phase one for the tail: which ones it wants (by frame
/// index), the ones kept so far, and the room left for more.
#[derive(Default)]
struct Kept {
    wanted: Vec<bool>,
    frames: Mutex<HashMap<u32, Bytes>>,
    room: AtomicU64,
}

/// Most compressed bytes of frames kept from phase one for the tail (a
/// frame beyond it is fetched again, as before).
const KEEP_BYTES: u64 = 32 << 20;

/// Most bytes of packs held by a prefetch.
const PREFETCH_BYTES: u64 = 16 << 20;

impl Prefetch {
    pub(crate) fn none() -> Prefetch {
        Prefetch { packs: HashMap::new(), tasks: Vec::new(), downloaded: Arc::default(), kept: Kept::default() }
    }

    /// Starts downloading a root's first packs (only roots with pieces: a
    /// whole manifest arrives in one request anyway).
    /// `hot_first`: only the packs marked hot, when there are any (the rest
    /// would take the link from them).
    pub(crate) fn start(store: &Arc<dyn Store>, key: &str, root: &Manifest, hot_first: bool) -> Prefetch {
        let mut p = Prefetch::none();
        if root.pieces.is_empty() || tokio::runtime::Handle::try_current().is_err() {
            return p;
        }
        let hot_only = hot_first && root.packs.iter().any(|p| p.hot);
        let mut total = 0;
        for pack in root.packs.iter().filter(|p| p.hot || !hot_only) {
            if total + pack.size > PREFETCH_BYTES {
                break;
            }
            total += pack.size;
            let pkey = pack_key(key, root, &pack.id);
            let (tx, rx) = tokio::sync::watch::channel(None);
            let (store, k, downloaded) = (store.clone(), pkey.clone(), p.downloaded.clone());
            let task = tokio::spawn(async move {
                let got = get_all(store.as_ref(), &k).await.map_err(|e| crate::error::error_chain(&e));
                if let Ok(b) = &got {
                    downloaded.fetch_add(b.len() as u64, Ordering::Relaxed);
                }
                let _ = tx.send(Some(got));
            });
            p.tasks.push(task.abort_handle());
            p.packs.insert(pkey, rx);
        }
        p
    }

    /// From now on, keeps a copy of each frame with pieces in `tail` that
    /// passes through [`fetch_run`] (up to [`KEEP_BYTES`]), for the tail.
    fn keep_for(&mut self, tail: &[Vec<Piece>]) {
        self.keep_frames(tail.iter().map(|p| !p.is_empty()).collect());
    }

    /// Keeps the frames of `m` that hold bytes besides the `pieces` written
    /// now: a hot piece's frames that also hold files of a tail not known
    /// yet (every byte of a frame belongs to some file).
    fn keep_uncovered(&mut self, m: &Manifest, pieces: &[Vec<Piece>]) {
        let covered = |f: usize| pieces[f].iter().map(|p| p.len).sum::<u64>();
        self.keep_frames(
            (0..m.frames.len()).map(|f| !pieces[f].is_empty() && covered(f) < m.frames[f].rawlen).collect(),
        );
    }

    fn keep_frames(&mut self, wanted: Vec<bool>) {
        self.kept.wanted = wanted;
        self.kept.room = AtomicU64::new(KEEP_BYTES);
    }

    /// The kept frames, numbered as `from` numbers them, renumbered as `to`
    /// does (the same pack and offset); those `to` lacks are dropped.
    fn renumber_kept(&mut self, from: &Manifest, to: &Manifest) {
        let at = |m: &Manifest, f: &Frame| (m.packs[f.pack as usize].id.clone(), f.offset);
        let index: HashMap<(String, u64), u32> =
            to.frames.iter().enumerate().map(|(i, f)| (at(to, f), i as u32)).collect();
        let kept = std::mem::take(self.kept.frames.get_mut().unwrap_or_else(|p| p.into_inner()));
        let renumbered = kept
            .into_iter()
            .filter_map(|(f, b)| index.get(&at(from, from.frames.get(f as usize)?)).map(|&t| (t, b)))
            .collect();
        *self.kept.frames.get_mut().unwrap_or_else(|p| p.into_inner()) = renumbered;
    }

    /// Keeps no more frames (the tail's own fetches are not for later).
    fn stop_keeping(&mut self) {
        self.kept.wanted.clear();
    }

    fn wants(&self, frame: u32) -> bool {
        self.kept.wanted.get(frame as usize).copied().unwrap_or(false)
    }

    /// Keeps a copy of a wanted frame's bytes, if there is room.
    fn keep(&self, frame: u32, bytes: &[u8]) {
        let len = bytes.len() as u64;
        if !self.wants(frame)
            || self.kept.room.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| r.checked_sub(len)).is_err()
        {
            return;
        }
        self.kept.frames.lock().unwrap_or_else(|p| p.into_inner()).insert(frame, Bytes::copy_from_slice(bytes));
    }

    /// The kept frames among `frames`, taken out.
    fn take_kept(&self, frames: impl Iterator<Item = u32>) -> Vec<(u32, Bytes)> {
        let mut kept = self.kept.frames.lock().unwrap_or_else(|p| p.into_inner());
        frames.filter_map(|f| kept.remove(&f).map(|b| (f, b))).collect()
    }

    /// A prefetched pack's bytes, once downloaded; `None` when it was not
    /// prefetched or its download failed (the caller then fetches it).
    async fn take(&self, pkey: &str) -> Option<Bytes> {
        let mut rx = self.packs.get(pkey)?.clone();
        let got = rx.wait_for(Option::is_some).await.ok()?.clone()?;
        got.ok()
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A generation's manifest as stored: for a root, its pieces unread (what
/// gc needs: the union of packs, and the pieces' ids).
pub(crate) async fn fetch_root(store: &dyn Store, key: &str) -> Result<Manifest, Error> {
    let bytes = get_all(store, key).await?;
    Ok(Manifest::decode(&bytes)?)
}

// ---------------------------------------------------------------- pieces

/// A piece closes after an entry whose path hashes to a multiple of this
/// (so boundaries depend on paths only: inserting a package changes the
/// pieces around it, not every piece after it)...
const PIECE_CUT: u32 = 512;
/// ...once it holds this many entries, and in any case at this many.
const PIECE_MIN: usize = 64;
const PIECE_MAX: usize = 4096;
/// Pieces fetched at once: a DENO_DIR of 25k entries is about 45 pieces,
/// one round trip.
const PIECES_IN_FLIGHT: usize = 64;
/// Most pieces a root may name.
const MAX_PIECES: usize = 1 << 16;

fn corrupt(detail: String) -> Error {
    Error::Corrupt(detail)
}

/// Splits a whole manifest into content-addressed pieces (runs of entries,
/// cut where a path's hash says, each with the frames and packs it uses,
/// renumbered by first use) and a root naming them. Unchanged runs give
/// byte-identical pieces, so a generation uploads only the pieces that
/// changed. Returns the root and each piece's id and stored bytes.
pub(crate) fn split(m: &Manifest) -> (Manifest, Vec<(String, Vec<u8>)>) {
    let all: Vec<&Entry> = m.entries.iter().collect();
    let mut pieces = Vec::new();
    let mut refs = Vec::new();
    let mut add = |piece: Manifest| {
        let bytes = piece.encode();
        let id = blake3::hash(&bytes).to_hex().to_string();
        let r = PieceRef { id: id.clone(), size: bytes.len() as u64, entries: piece.entries.len() as u64 };
        pieces.push((id, bytes));
        r
    };
    for run in cut_runs(&all, PIECE_CUT, PIECE_MIN, PIECE_MAX) {
        refs.push(add(sub_manifest(m, all[run].iter().copied())));
    }
    // With a hot set, the part of the manifest a hot-first restore needs
    // before the swap, alone: it reads this instead of every piece first.
    // Cut the same way, so a new package changes the hot pieces around it
    // only (it adds directories). Only when that is at most half the
    // manifest: else it would upload most of it again for little gain
    // (phase one needs most of it).
    let now: Vec<&Entry> = m.entries.iter().filter(|e| !in_tail(e)).collect();
    let mut hot = Vec::new();
    if has_tail(m) && now.len() <= m.entries.len() / 2 {
        for run in cut_runs(&now, HOT_PIECE_CUT, HOT_PIECE_MIN, HOT_PIECE_MAX) {
            hot.push(add(sub_manifest(m, now[run].iter().copied())));
        }
    }
    let root = Manifest {
        version: pack::VERSION,
        created_ms: m.created_ms,
        packs: m.packs.clone(),
        frames: Vec::new(),
        entries: Vec::new(),
        pieces: refs,
        hot,
    };
    (root, pieces)
}

/// Hot pieces are cut larger than pieces: phase one waits for all of them
/// (the storefront's hot part is 3, where a cut at 512 made 7). An added
/// package still changes one or two of them, not the whole hot part (141
/// KB on the storefront as one piece).
const HOT_PIECE_CUT: u32 = 2048;
const HOT_PIECE_MIN: usize = 512;
const HOT_PIECE_MAX: usize = 16384;

/// Runs of `entries` for pieces: each closes after an entry whose path
/// hashes to a multiple of `cut_at` (once it holds `min` entries), or at
/// `max`.
fn cut_runs(entries: &[&Entry], cut_at: u32, min: usize, max: usize) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    for (i, e) in entries.iter().enumerate() {
        let len = i + 1 - start;
        let h = blake3::hash(e.path.as_bytes());
        let cut = u32::from_le_bytes(h.as_bytes()[..4].try_into().expect("4 bytes")) % cut_at == 0;
        if (cut && len >= min) || len >= max {
            runs.push(start..i + 1);
            start = i + 1;
        }
    }
    if start < entries.len() {
        runs.push(start..entries.len());
    }
    runs
}

/// Whether an entry waits for a hot-first restore's second phase: a file
/// with content that is not hot.
fn in_tail(e: &Entry) -> bool {
    e.kind == Kind::File && e.size > 0 && !e.hot
}

/// Whether a manifest has a hot set and files outside it: a hot-first
/// restore of it has two phases.
fn has_tail(m: &Manifest) -> bool {
    let content = |e: &&Entry| e.kind == Kind::File && e.size > 0;
    m.entries.iter().filter(content).any(|e| e.hot) && m.entries.iter().any(in_tail)
}

/// A whole manifest of some of `m`'s entries (in order), with the frames
/// and packs they use, renumbered by first use.
fn sub_manifest<'a>(m: &Manifest, entries: impl Iterator<Item = &'a Entry>) -> Manifest {
    let mut piece = Manifest {
        version: pack::VERSION,
        created_ms: 0,
        packs: Vec::new(),
        frames: Vec::new(),
        entries: Vec::new(),
        pieces: Vec::new(),
        hot: Vec::new(),
    };
    let (mut frame_map, mut pack_map) = (HashMap::new(), HashMap::new());
    for e in entries {
        let mut e = e.clone();
        if let Some(first) = e.frame {
            let span = m.span_frames(&e).unwrap_or(first as usize..first as usize + 1);
            for f in span {
                if frame_map.contains_key(&f) {
                    continue;
                }
                let frame = &m.frames[f];
                let pi = *pack_map.entry(frame.pack).or_insert_with(|| {
                    piece.packs.push(m.packs[frame.pack as usize].clone());
                    piece.packs.len() as u32 - 1
                });
                frame_map.insert(f, piece.frames.len() as u32);
                piece.frames.push(Frame { pack: pi, ..frame.clone() });
            }
            e.frame = Some(frame_map[&(first as usize)]);
        }
        piece.entries.push(e);
    }
    piece
}

/// Joins a root's pieces into one whole manifest (which the caller then
/// validates as any other): each piece must hash to its id and be whole
/// itself; frames and packs are renumbered into one list.
async fn assemble(store: &dyn Store, root: Manifest, found: &Found) -> Result<Manifest, Error> {
    if root.pieces.len() > MAX_PIECES {
        return Err(corrupt(format!("the manifest names {} pieces (at most {MAX_PIECES})", root.pieces.len())));
    }
    let max_entries = sandcache_archive::Limits::default().max_entries;
    let mut whole = Manifest {
        version: root.version,
        created_ms: root.created_ms,
        packs: Vec::new(),
        frames: Vec::new(),
        entries: Vec::new(),
        pieces: Vec::new(),
        hot: Vec::new(),
    };
    let mut pack_index: HashMap<String, u32> = HashMap::new();
    // A window of fetches in flight, answered in order; each piece is
    // checked and decoded on a blocking thread as it arrives, so the
    // decoding (most of a manifest's cost) runs on every core.
    let fetch = |p: &PieceRef| fetch_piece(store, p.clone(), found);
    let mut next = root.pieces.iter();
    let mut in_flight = futures::stream::FuturesOrdered::new();
    for p in next.by_ref().take(PIECES_IN_FLIGHT) {
        in_flight.push_back(fetch(p));
    }
    for p in &root.pieces {
        let piece = in_flight.next().await.expect("one fetch per piece")?;
        if let Some(n) = next.next() {
            in_flight.push_back(fetch(n));
        }
        if (whole.entries.len() + piece.entries.len()) as u64 > max_entries {
            return Err(Error::TooLarge(format!("the manifest holds over {max_entries} entries")));
        }
        let base = whole.frames.len() as u32;
        for f in &piece.frames {
            let pr =
                piece.packs.get(f.pack as usize).ok_or_else(|| corrupt(format!("piece {}: bad pack index", p.id)))?;
            let pi = *pack_index.entry(pr.id.clone()).or_insert_with(|| {
                whole.packs.push(pr.clone());
                whole.packs.len() as u32 - 1
            });
            whole.frames.push(Frame { pack: pi, ..f.clone() });
        }
        for mut e in piece.entries {
            if let Some(f) = e.frame.as_mut() {
                if *f as usize >= piece.frames.len() {
                    return Err(corrupt(format!("piece {}: bad frame index", p.id)));
                }
                *f += base;
            }
            whole.entries.push(e);
        }
    }
    // The same frame named by two pieces is two frames here: harmless (the
    // same bytes), but frames may not overlap, so merge exact duplicates.
    dedup_frames(&mut whole);
    tracing::debug!(target: "sandbox-cache", "{} pieces joined: {} entries", root.pieces.len(), whole.entries.len());
    Ok(whole)
}

/// One piece, checked against its hash and its root's word, decoded on a
/// blocking thread. A piece of another length than its root says, or that
/// does not hash to its name, is a bad pool object: noted in `found`.
async fn fetch_piece(store: &dyn Store, p: PieceRef, found: &Found) -> Result<Manifest, Error> {
    let (k, id, entries) = (piece_key(&p.id), p.id.clone(), p.entries);
    let bytes = get_all(store, &k).await.map_err(|e| match e {
        StoreError::NotFound { .. } => Declined::NotFound(format!("piece {id} is gone")).into(),
        e => Error::Store(e),
    })?;
    if bytes.len() as u64 != p.size {
        let why = format!("{} bytes where its root says {}", bytes.len(), p.size);
        found.add(&k, p.size, &why);
        return Err(corrupt(format!("piece {id} is {why}")));
    }
    // Err(Some(_)): the object is not what its name says; Err(None): it
    // is, but it is not a piece this root can use.
    let checked = tokio::task::spawn_blocking(move || {
        if blake3::hash(&bytes).to_hex().as_str() != id {
            return Err((corrupt(format!("piece {id} does not hash to its name")), true));
        }
        let piece = Manifest::decode(&bytes).map_err(|e| (Error::Extract(e), false))?;
        if !piece.pieces.is_empty() || !piece.hot.is_empty() || piece.entries.len() as u64 != entries {
            return Err((corrupt(format!("piece {id} is not what its root says")), false));
        }
        Ok(piece)
    })
    .await
    .map_err(|e| Error::joined("a manifest piece's decoder", e))?;
    checked.map_err(|(e, bad)| {
        if bad {
            found.add(&k, p.size, "does not hash to its name");
        }
        e
    })
}

/// A root's hot piece (see [`Manifest::hot`]) as a validated manifest of
/// its own generation; `None` when the root has none or it cannot be used
/// (gone, corrupt, unsafe: logged), and the whole manifest is read first.
pub(crate) async fn usable_hot(
    store: &dyn Store,
    root: &Manifest,
    limits: &sandcache_archive::Limits,
    dir: &Path,
    generation: &str,
    found: &Found,
) -> Option<Manifest> {
    if root.hot.is_empty() {
        return None;
    }
    // Joined as a root's pieces are.
    let pieces = Manifest {
        version: root.version,
        created_ms: root.created_ms,
        packs: Vec::new(),
        frames: Vec::new(),
        entries: Vec::new(),
        pieces: root.hot.clone(),
        hot: Vec::new(),
    };
    let checked = assemble(store, pieces, found).await.and_then(|hot| {
        hot.validate(limits, dir)?;
        Ok(hot)
    });
    checked
        .inspect_err(|e| {
            tracing::warn!(target: "sandbox-cache", "{generation}: its hot piece is unusable ({}); reading the whole manifest first", crate::error::error_chain(e))
        })
        .ok()
}

/// Merges frames that are the same frame (pack, offset and hash), which
/// pieces sharing a frame each carry.
fn dedup_frames(m: &mut Manifest) {
    let mut seen: HashMap<(u32, u64), u32> = HashMap::new();
    let mut map = Vec::with_capacity(m.frames.len());
    let mut frames = Vec::with_capacity(m.frames.len());
    for f in m.frames.drain(..) {
        let idx = *seen.entry((f.pack, f.offset)).or_insert_with(|| {
            frames.push(f.clone());
            frames.len() as u32 - 1
        });
        map.push(idx);
    }
    m.frames = frames;
    for e in &mut m.entries {
        if let Some(f) = e.frame.as_mut() {
            *f = map[*f as usize];
        }
    }
}

// ---------------------------------------------------------------- restore

/// Bytes of one frame's location and the pieces of files in it.
struct FrameJob {
    frame: u32,
    bytes: Bytes,
    /// Its share of the in-flight budget, returned once it is written.
    _budget: tokio::sync::OwnedSemaphorePermit,
}

/// Waits for room in the in-flight budget for `len` compressed bytes (in
/// KiB, at least one, at most the whole budget).
async fn room_for(budget: &Arc<tokio::sync::Semaphore>, len: u64) -> tokio::sync::OwnedSemaphorePermit {
    let kib = (len.div_ceil(1024) as u32).clamp(1, IN_FLIGHT_KIB);
    budget.clone().acquire_many_owned(kib).await.expect("the budget is never closed")
}

/// Where fetches hand frames to the writers: room in the in-flight budget,
/// then a place in the queue. Both waits end as soon as a writer has
/// failed: the writers have stopped taking frames, and the queue and the
/// budget it holds would never drain (the restore would sit until its
/// deadline instead of falling through to the next candidate).
#[derive(Clone)]
struct Feed {
    tx: tokio::sync::mpsc::Sender<FrameJob>,
    budget: Arc<tokio::sync::Semaphore>,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Feed {
    /// Waits for room for `len` compressed bytes; `None` once the writers
    /// stopped.
    async fn room(&mut self, len: u64) -> Option<tokio::sync::OwnedSemaphorePermit> {
        tokio::select! {
            permit = room_for(&self.budget, len) => Some(permit),
            () = stopped(&mut self.stop) => None,
        }
    }

    /// Queues a frame for the writers; `false` once they stopped.
    async fn send(&mut self, job: FrameJob) -> bool {
        tokio::select! {
            sent = self.tx.send(job) => sent.is_ok(),
            () = stopped(&mut self.stop) => false,
        }
    }
}

/// Resolves once a writer failed (never, if nobody can say so any more).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The nice value of a second phase's writer thread: the app's boot first,
/// the tail in the CPU time it leaves.
const TAIL_NICE: i32 = 19;

/// Compressed bytes downloaded and not yet written, over all fetches, in
/// KiB: with incompressible content and 8 fetches, this is what keeps a
/// restore's peak RSS within 128 MiB.
const IN_FLIGHT_KIB: u32 = 32 << 10;

/// A piece of a file inside a frame.
#[derive(Clone, Copy)]
struct Piece {
    entry: u32,
    /// Offset in the frame's raw content.
    at: u64,
    len: u64,
    /// Offset in the file (non-zero for the later parts of large files).
    file_offset: u64,
}

pub(crate) struct RestoreStats {
    pub files: u64,
    pub bytes: u64,
    pub transferred: u64,
}

/// Restores manifest `m` into `staging`. Downloads, decompression and file
/// writes overlap: ranged GETs stream frames to a pool of writer threads.
///
/// With `hot_first`, and a manifest that records a hot set, only the hot
/// files are written now, with every directory and symlink; the rest is
/// returned as a [`Tail`] for [`restore_tail`] to write after the swap.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn restore_into(
    store: &dyn Store,
    key: &str,
    m: Arc<Manifest>,
    anchored: &crate::target::Staging,
    cancel: Arc<AtomicBool>,
    opts: &RestoreOptions,
    prefetch: Prefetch,
    hot_piece: Option<HotPiece>,
    found: &Arc<Found>,
) -> Result<(RestoreStats, Option<Tail>), Error> {
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
    let t0 = std::time::Instant::now();
    let setup_m = m.clone();
    let (setup_staging, held) = (staging.to_owned(), anchored.clone());
    let pieces = tokio::task::spawn_blocking(move || setup(&setup_m, &setup_staging, &held.fd(), owner, exact))
        .await
        .map_err(|e| Error::joined("the setup thread", e))??;
    let t_setup = t0.elapsed();
    // `m` is a hot piece: all of it now, and a tail known once the whole
    // manifest is in (see `Tail::resolve`).
    let from_piece = hot_piece.is_some();
    let (pieces, tail) = match (hot_piece, opts.hot_first) {
        (Some(p), _) => (
            pieces,
            Some(Tail { pieces: Vec::new(), entries: Vec::new(), prefetch: Prefetch::none(), pending: Some(p) }),
        ),
        (None, true) => split_hot(&m, pieces),
        (None, false) => (pieces, None),
    };
    let mut prefetch = prefetch;
    if let Some(t) = &tail {
        // A frame phase one fetches (or passes over in a coalesced range)
        // that the tail needs too is kept, not fetched again.
        if from_piece { prefetch.keep_uncovered(&m, &pieces) } else { prefetch.keep_for(&t.pieces) }
    }

    // 2. Content: every frame needed now, fetched and written.
    let parts = Arc::new(PartHashes::default());
    let sink = Sink::Staging { io: staging.to_owned(), dir: anchored.fd(), exact, parts: parts.clone() };
    let (files, bytes, transferred) =
        write_frames(store, key, &m, Arc::new(pieces), sink, cancel.clone(), opts, &prefetch, found).await?;
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
    let (fin_m, fin_staging, held) = (m.clone(), staging.to_owned(), anchored.clone());
    let (fin_key, fin_found) = (key.to_owned(), found.clone());
    let symlinks = tokio::task::spawn_blocking(move || {
        let suspect = |i: usize| suspect_file(&fin_found, &fin_key, &fin_m, i);
        finish(&fin_m, &fin_staging, &held.fd(), owner, &deferred, exact, &parts, &suspect)
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

/// Where frames are written: a private staging dir (relative to its
/// held-open fd; `io` names it in errors), or the live dir of a restore's
/// second phase.
#[derive(Clone)]
enum Sink {
    Staging { io: std::path::PathBuf, dir: Arc<OwnedFd>, exact: Umask, parts: Arc<PartHashes> },
    Live(Arc<LiveDir>),
}

/// A large file's parts are hashed as they are written into staging, each
/// as a BLAKE3 subtree (a chaining value) of one frame's worth of the file:
/// the file's hash is then their merge, not a second read of the file.
/// (The tail reads back instead: its temporary files sit in the live dir.)
#[derive(Default)]
struct PartHashes(Mutex<HashMap<u32, Vec<Option<blake3::hazmat::ChainingValue>>>>);

/// The subtree size of a part: a frame (4 MiB, a power of two of BLAKE3's
/// 1 KiB chunks), as the packer cuts large files.
const PART: u64 = pack::FRAME_RAW as u64;

impl PartHashes {
    /// Records the chaining value of a part, when it is cut as the packer
    /// cuts them (at a multiple of [`PART`], whole but for the last);
    /// otherwise the file is read back as before.
    fn add(&self, entry: u32, size: u64, file_offset: u64, data: &[u8]) {
        let len = data.len() as u64;
        if file_offset % PART != 0 || !(len == PART || file_offset + len == size) || len == 0 || size <= PART {
            return;
        }
        use blake3::hazmat::HasherExt;
        let mut h = blake3::Hasher::new();
        h.set_input_offset(file_offset);
        h.update(data);
        let cv = h.finalize_non_root();
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let cvs = all.entry(entry).or_insert_with(|| vec![None; size.div_ceil(PART) as usize]);
        if let Some(slot) = cvs.get_mut((file_offset / PART) as usize) {
            *slot = Some(cv);
        }
    }

    /// The file's BLAKE3 from its parts, when every one was recorded.
    fn root(&self, entry: u32, size: u64) -> Option<blake3::Hash> {
        let cvs = self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&entry)?;
        let cvs: Vec<_> = cvs.into_iter().collect::<Option<_>>()?;
        if size <= PART || cvs.len() as u64 != size.div_ceil(PART) {
            return None;
        }
        Some(merge_root(&cvs, size))
    }
}

/// Merges the chaining values of consecutive [`PART`]-sized subtrees (the
/// last may be shorter) covering `len` bytes, as BLAKE3's tree does: the
/// left subtree is the largest power of two of chunks short of the whole.
fn merge_cvs(cvs: &[blake3::hazmat::ChainingValue], len: u64) -> blake3::hazmat::ChainingValue {
    use blake3::hazmat::{Mode, left_subtree_len, merge_subtrees_non_root};
    if cvs.len() == 1 {
        return cvs[0];
    }
    let left = left_subtree_len(len);
    let n = (left / PART) as usize;
    merge_subtrees_non_root(&merge_cvs(&cvs[..n], left), &merge_cvs(&cvs[n..], len - left), Mode::Hash)
}

fn merge_root(cvs: &[blake3::hazmat::ChainingValue], len: u64) -> blake3::Hash {
    use blake3::hazmat::{Mode, left_subtree_len, merge_subtrees_root};
    let left = left_subtree_len(len);
    let n = (left / PART) as usize;
    merge_subtrees_root(&merge_cvs(&cvs[..n], left), &merge_cvs(&cvs[n..], len - left), Mode::Hash)
}

/// The writer pool and the downloads feeding it: every frame with pieces
/// is fetched (coalesced per pack), decoded, verified and written.
/// Returns (files, bytes, transferred).
#[allow(clippy::too_many_arguments)]
async fn write_frames(
    store: &dyn Store,
    key: &str,
    m: &Arc<Manifest>,
    pieces: Arc<Vec<Vec<Piece>>>,
    sink: Sink,
    cancel: Arc<AtomicBool>,
    opts: &RestoreOptions,
    prefetch: &Prefetch,
    found: &Arc<Found>,
) -> Result<(u64, u64, u64), Error> {
    let (progress, concurrency, owner) = (opts.progress.clone(), opts.concurrency, opts.owner);
    // Frames kept from phase one need no fetch.
    let kept = prefetch.take_kept((0..pieces.len() as u32).filter(|f| !pieces[*f as usize].is_empty()));
    let have: HashSet<u32> = kept.iter().map(|(f, _)| *f).collect();
    // Which byte ranges to fetch: needed frames, coalesced per pack.
    let runs = plan_runs(m, &pieces, &have, |f| prefetch.wants(f));

    // Writer pool.
    // The tail lands while the app boots: two writers, each at a lowered
    // priority (below), so the boot comes first and the tail takes what CPU
    // it leaves. One writer was as good on tmpfs, but on a slow disk (a
    // rename per file) the tail then landed long after a one-phase restore
    // would have, and every request waited for it.
    let threads = match sink {
        Sink::Live(_) => 2,
        Sink::Staging { .. } => std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 4),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<FrameJob>(threads * 2);
    let rx = Arc::new(Mutex::new(rx));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let error: Arc<Mutex<Option<ExtractError>>> = Arc::new(Mutex::new(None));
    let files = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..threads {
        let (rx, m, pieces, error, cancel, files, bytes, progress, sink) = (
            rx.clone(),
            m.clone(),
            pieces.clone(),
            error.clone(),
            cancel.clone(),
            files.clone(),
            bytes.clone(),
            progress.clone(),
            sink.clone(),
        );
        let behind_the_app = matches!(sink, Sink::Live(_));
        let (found, key, stop_tx) = (found.clone(), key.to_owned(), stop_tx.clone());
        let work = move || {
            let mut decoder = pack::FrameDecoder::default();
            loop {
                let job = { rx.lock().unwrap_or_else(|p| p.into_inner()).blocking_recv() };
                let Some(job) = job else { return };
                if cancel.load(Ordering::Relaxed) {
                    return;
                }
                match write_frame(&m, &pieces, &sink, &job, owner, &mut decoder) {
                    Ok((f, b)) => {
                        files.fetch_add(f, Ordering::Relaxed);
                        bytes.fetch_add(b, Ordering::Relaxed);
                        if let Some(p) = &progress {
                            p.files.fetch_add(f, Ordering::Relaxed);
                            p.bytes.fetch_add(b, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        // Bytes that do not decode, or do not hash as the
                        // manifest says: the pack they came from is bad.
                        if matches!(e, ExtractError::Corrupt { .. }) {
                            suspect_frame(&found, &key, &m, job.frame, &e);
                        }
                        error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                        cancel.store(true, Ordering::Relaxed);
                        stop_tx.send_replace(true);
                        return;
                    }
                }
            }
        };
        workers.push(tokio::task::spawn_blocking(move || {
            if !behind_the_app {
                return work();
            }
            // A tail writer yields the CPU to the app booting beside it
            // (nice is per thread on Linux). A thread of its own, which the
            // lowered priority dies with: a pooled one would keep it, and
            // raising it back needs a privilege.
            std::thread::scope(|s| {
                s.spawn(|| {
                    let _ = rustix::process::setpriority_process(None, TAIL_NICE);
                    work()
                })
                .join()
            })
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        }));
    }

    // Downloads, concurrently, each feeding frames as they complete.
    let transferred = Arc::new(AtomicU64::new(0));
    let budget = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_KIB as usize));
    // Frames that arrive split across chunks are gathered into buffers
    // recycled as they are written (a frame in flight holds its own, so the
    // budget still bounds them; a few wait for reuse).
    let frame_bufs = Recycler::new(8);
    let feed_of = || Feed { tx: tx.clone(), budget: budget.clone(), stop: stop.clone() };
    let fetches = futures::stream::iter(runs.into_iter().map(|run| {
        let (feed, m, cancel, transferred, progress) =
            (feed_of(), m.clone(), cancel.clone(), transferred.clone(), progress.clone());
        let (pieces, frame_bufs) = (pieces.clone(), &frame_bufs);
        async move {
            fetch_run(store, key, &m, &pieces, run, feed, cancel, transferred, progress, frame_bufs, prefetch, found)
                .await
        }
    }))
    .buffer_unordered(concurrency.max(1))
    .try_collect::<Vec<()>>();
    let feed = {
        let mut feed = feed_of();
        async move {
            for (frame, bytes) in kept {
                let Some(permit) = feed.room(bytes.len() as u64).await else { return };
                if !feed.send(FrameJob { frame, bytes, _budget: permit }).await {
                    return;
                }
            }
        }
    };
    let (fetched, ()) = tokio::join!(fetches, feed);
    drop(tx);
    // A writer that panicked left its frame unwritten: the tree is
    // incomplete and must never be swapped in.
    let mut panicked = None;
    for w in workers {
        if let Err(e) = w.await {
            panicked.get_or_insert(e);
        }
    }
    if let Some(e) = panicked {
        return Err(Error::joined("a writer thread", e));
    }
    if let Some(e) = error.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e.into());
    }
    fetched?;
    Ok((files.load(Ordering::Relaxed), bytes.load(Ordering::Relaxed), transferred.load(Ordering::Relaxed)))
}

// ------------------------------------------------------------- two phases

/// What a two-phase restore writes after the swap: the files that are not
/// hot.
pub(crate) struct Tail {
    pieces: Vec<Vec<Piece>>,
    /// The deferred entries (files with content).
    entries: Vec<u32>,
    /// The packs downloading since the manifest was read, whole: the first
    /// ones may hold cold content too.
    prefetch: Prefetch,
    /// When phase one restored a hot piece: what the tail needs first.
    pending: Option<HotPiece>,
}

/// Phase one restored a generation's hot piece: the tail first reads the
/// whole manifest (its root's pieces), then knows its files. Read after the
/// swap, not beside phase one: phase one then has the machine to itself
/// (hot-ready came 30 ms sooner on the storefront), and the tail has slack
/// while the app boots.
pub(crate) struct HotPiece {
    pub(crate) root: Manifest,
    /// The target dir, which the whole manifest is validated against.
    pub(crate) dir: std::path::PathBuf,
}

impl Tail {
    /// The whole manifest and this tail in its terms, when phase one
    /// restored hot pieces (`m`): the files they left out. The hot part
    /// must be exactly the rest of it (the entries phase one wrote), else
    /// the generation is corrupt and the tail does not land.
    async fn resolve(
        mut self,
        store: &dyn Store,
        m: Arc<Manifest>,
        limits: &sandcache_archive::Limits,
        found: &Found,
    ) -> Result<(Arc<Manifest>, Tail), Error> {
        let Some(HotPiece { root, dir }) = self.pending.take() else { return Ok((m, self)) };
        let hot = m;
        let started = std::time::Instant::now();
        let whole = whole(store, root, found).await?;
        let limits = *limits;
        let whole = tokio::task::spawn_blocking(move || whole.validate(&limits, &dir).map(|()| whole))
            .await
            .map_err(|e| Error::joined("the manifest's validation", e))??;
        let same = |a: &Entry, b: &Entry| {
            (&a.path, a.kind, a.mode, a.mtime, a.size, &a.hash, &a.target, a.hot)
                == (&b.path, b.kind, b.mode, b.mtime, b.size, &b.hash, &b.target, b.hot)
        };
        let mut now = hot.entries.iter();
        let mut pieces: Vec<Vec<Piece>> = vec![Vec::new(); whole.frames.len()];
        let mut entries = Vec::new();
        for (i, e) in whole.entries.iter().enumerate() {
            if !in_tail(e) {
                if !now.next().is_some_and(|h| same(h, e)) {
                    return Err(corrupt(format!("the hot piece disagrees with the manifest at {}", e.path)));
                }
                continue;
            }
            file_pieces(&whole, i, e, &mut pieces)?;
            entries.push(i as u32);
        }
        if now.next().is_some() {
            return Err(corrupt("the hot piece holds entries the manifest lacks".into()));
        }
        self.prefetch.renumber_kept(&hot, &whole);
        tracing::debug!(
            target: "sandbox-cache",
            "the tail's manifest: {} entries, {} files for the tail, in {} ms",
            whole.entries.len(),
            entries.len(),
            started.elapsed().as_millis()
        );
        Ok((Arc::new(whole), Tail { pieces, entries, prefetch: self.prefetch, pending: None }))
    }
}

/// Splits a restore's pieces: the hot files now, every other file with
/// content later. Cold files that share a frame with hot ones wait too: the
/// tail decodes that frame once more for them (sliced from the prefetched
/// pack, or the copy phase one kept: never fetched twice), while writing
/// them now would hold up `hot-ready` by every such file. `None` when the
/// manifest has no hot set (everything is hot) or nothing is left for
/// later.
fn split_hot(m: &Manifest, pieces: Vec<Vec<Piece>>) -> (Vec<Vec<Piece>>, Option<Tail>) {
    if !has_tail(m) {
        return (pieces, None);
    }
    let mut deferred = vec![false; m.entries.len()];
    let (mut entries, mut bytes) = (Vec::new(), 0);
    for (i, e) in m.entries.iter().enumerate() {
        if in_tail(e) {
            deferred[i] = true;
            entries.push(i as u32);
            bytes += e.size;
        }
    }
    let hot = m.entries.iter().filter(|e| e.kind == Kind::File && e.size > 0 && e.hot).count();
    tracing::debug!(target: "sandbox-cache", "hot set: {hot} files; the tail {} ({bytes} bytes)", entries.len());
    let (mut now, mut later) = (Vec::with_capacity(pieces.len()), Vec::with_capacity(pieces.len()));
    for ps in pieces {
        let (l, n): (Vec<Piece>, Vec<Piece>) = ps.into_iter().partition(|p| deferred[p.entry as usize]);
        now.push(n);
        later.push(l);
    }
    (now, Some(Tail { pieces: later, entries, prefetch: Prefetch::none(), pending: None }))
}

/// The second phase: the tail's files, written into the live dir (which
/// the worker may already be using and changing). Each file appears whole
/// or not at all: written under a temporary name in its own directory, then
/// renamed into place, unless the worker made that path meanwhile (left
/// alone). A directory the worker removed or replaced loses its files: they
/// are a cold miss, fetched again by the app.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn restore_tail(
    store: &dyn Store,
    key: &str,
    m: Arc<Manifest>,
    tail: Tail,
    live: Arc<LiveDir>,
    cancel: Arc<AtomicBool>,
    opts: &RestoreOptions,
    found: &Arc<Found>,
) -> Result<(RestoreStats, Arc<Manifest>), Error> {
    let owner = opts.owner;
    if tail.pending.is_some() {
        live.expect(Expected::Unknown);
    }
    let (m, tail) = tail.resolve(store, m, &opts.limits, found).await?;
    live.expect(Expected::Files(m.clone(), tail.entries.clone()));
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Cancelled);
    }
    let pieces = Arc::new(tail.pieces);
    let sink = Sink::Live(live.clone());
    let mut prefetch = tail.prefetch;
    prefetch.stop_keeping();
    let (files, bytes, transferred) =
        write_frames(store, key, &m, pieces, sink, cancel.clone(), opts, &prefetch, found).await?;
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Cancelled);
    }
    let transferred = transferred + prefetch.downloaded.load(Ordering::Relaxed);
    let (entries, fin_live, fin_m) = (tail.entries, live.clone(), m.clone());
    let (fin_key, fin_found) = (key.to_owned(), found.clone());
    let large = tokio::task::spawn_blocking(move || {
        let suspect = |i: usize| suspect_file(&fin_found, &fin_key, &fin_m, i);
        finish_tail(&fin_m, &entries, &fin_live, owner, &suspect)
    })
    .await
    .map_err(|e| Error::joined("the tail's finish thread", e))??;
    live.complete.store(true, Ordering::SeqCst);
    Ok((RestoreStats { files: files + large, bytes, transferred }, m))
}

/// The live dir of a second phase, held open. Every directory is opened
/// relative to its parent's fd with `O_NOFOLLOW`: the worker may have
/// replaced any of them with a symlink, which is then never followed.
pub(crate) struct LiveDir {
    root: Arc<OwnedFd>,
    /// Opened directories by relative path; `None`: gone or not a directory.
    /// Bounded ([`LIVE_DIRS_OPEN`]): a DENO_DIR has thousands, and a pod's
    /// descriptor limit may be 1024.
    dirs: Mutex<HashMap<String, Option<Arc<OwnedFd>>>>,
    /// Directories files landed in, whose archived mtime goes back at the end.
    touched: Mutex<HashSet<String>>,
    /// Large files being written piece by piece, under temporary names.
    parts: Mutex<HashMap<u32, Option<Arc<Part>>>>,
    /// Paths the worker made meanwhile, left alone.
    pub(crate) kept: AtomicU64,
    /// Files whose directory the worker removed or replaced.
    pub(crate) missed: AtomicU64,
    /// Set when the phase ended (cancelled or failed): nothing more is made.
    closed: AtomicBool,
    umask: Umask,
    /// What the tail is to write, and the files that went into place (or
    /// whose path the worker took first).
    tail: Mutex<Expected>,
    landed: Mutex<HashSet<u32>>,
    /// Set when every file of the tail has been dealt with.
    complete: AtomicBool,
}

/// What a second phase is to write, as far as it is known.
#[derive(Default)]
enum Expected {
    /// Nothing yet: phase one wrote a whole manifest's hot files, and the
    /// tail's files are not listed yet.
    #[default]
    Nothing,
    /// Unknown: phase one wrote a hot piece, and the whole manifest, which
    /// lists the rest, has not come.
    Unknown,
    /// These entries of this manifest.
    Files(Arc<Manifest>, Vec<u32>),
}

struct Part {
    parent: Arc<OwnedFd>,
    tmp: String,
    file: fs::File,
}

/// Most directories a second phase holds open at once.
const LIVE_DIRS_OPEN: usize = 256;

const LIVE_DIR_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

impl LiveDir {
    pub(crate) fn new(root: Arc<OwnedFd>) -> LiveDir {
        LiveDir {
            root,
            dirs: Mutex::default(),
            touched: Mutex::default(),
            parts: Mutex::default(),
            kept: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            // A temporary file sits in a dir the worker may be using: it is
            // never writable by others before it is whole (and, when large,
            // read back), even under a zero umask; such a mode is set last.
            umask: Umask(Umask::current().0 | 0o022),
            tail: Mutex::default(),
            landed: Mutex::default(),
            complete: AtomicBool::new(false),
        }
    }

    fn dir(&self, rel: &str) -> io::Result<Option<Arc<OwnedFd>>> {
        if rel.is_empty() {
            return Ok(Some(self.root.clone()));
        }
        if let Some(d) = self.dirs.lock().unwrap_or_else(|p| p.into_inner()).get(rel) {
            return Ok(d.clone());
        }
        let (up, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let fd = match self.dir(up)? {
            None => None,
            Some(parent) => match rustix::fs::openat(&*parent, name, LIVE_DIR_FLAGS, Mode::empty()) {
                Ok(fd) => Some(Arc::new(fd)),
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => None,
                Err(e) => return Err(e.into()),
            },
        };
        let mut dirs = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
        if dirs.len() >= LIVE_DIRS_OPEN {
            // Reopened on demand (walk order keeps a directory's files
            // together, so this is rare).
            dirs.clear();
        }
        dirs.insert(rel.to_owned(), fd.clone());
        Ok(fd)
    }

    /// The directory a file lands in (`up`), opened, and remembered: its
    /// archived mtime goes back at the end.
    fn landing_dir(&self, up: &str) -> io::Result<Option<Arc<OwnedFd>>> {
        self.touched.lock().unwrap_or_else(|p| p.into_inner()).insert(up.to_owned());
        self.dir(up)
    }

    /// A new file under a fresh temporary name in `parent`, read-write,
    /// with the mode `e` will have when the umask keeps it (else private
    /// until [`set_meta`]).
    fn temp(&self, parent: &OwnedFd, entry: u32, e: &Entry) -> io::Result<(String, fs::File)> {
        let tmp = format!("{}{entry}-{:08x}", sandcache_archive::TAIL_PREFIX, rand::random::<u32>());
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(parent, tmp.as_str(), flags, Mode::from_raw_mode(file_mode(e, self.umask)))?;
        Ok((tmp, fs::File::from(fd)))
    }

    /// Renames `tmp` to `name` unless `name` exists: whatever the worker put
    /// there meanwhile stays. Returns whether the file went into place.
    fn publish(&self, parent: &OwnedFd, tmp: &str, name: &str, entry: u32) -> io::Result<bool> {
        let landed = || self.landed.lock().unwrap_or_else(|p| p.into_inner()).insert(entry);
        let moved = match rustix::fs::renameat_with(parent, tmp, parent, name, RenameFlags::NOREPLACE) {
            // No RENAME_NOREPLACE here: a hard link refuses an existing name too.
            Err(Errno::INVAL | Errno::NOSYS) => rustix::fs::linkat(parent, tmp, parent, name, AtFlags::empty())
                .and_then(|()| rustix::fs::unlinkat(parent, tmp, AtFlags::empty())),
            other => other,
        };
        match moved {
            Ok(()) => {
                landed();
                Ok(true)
            }
            Err(e) => {
                let _ = rustix::fs::unlinkat(parent, tmp, AtFlags::empty());
                match e {
                    Errno::EXIST => {
                        self.kept.fetch_add(1, Ordering::Relaxed);
                        landed();
                        Ok(false)
                    }
                    Errno::NOENT => {
                        self.missed.fetch_add(1, Ordering::Relaxed);
                        Ok(false)
                    }
                    e => Err(e.into()),
                }
            }
        }
    }

    /// Writes a whole file; `false` when it did not go into place.
    fn place(&self, e: &Entry, entry: u32, data: &[u8], owner: Option<(u32, u32)>) -> io::Result<bool> {
        if self.closed.load(Ordering::SeqCst) {
            return Ok(false);
        }
        let (up, name) = e.path.rsplit_once('/').unwrap_or(("", e.path.as_str()));
        let Some(parent) = self.landing_dir(up)? else {
            self.missed.fetch_add(1, Ordering::Relaxed);
            return Ok(false);
        };
        let (tmp, mut f) = self.temp(&parent, entry, e)?;
        if let Err(err) = io::Write::write_all(&mut f, data).and_then(|()| set_meta(&f, e, owner, self.umask)) {
            let _ = rustix::fs::unlinkat(&*parent, tmp.as_str(), AtFlags::empty());
            return Err(err);
        }
        drop(f);
        self.publish(&parent, &tmp, name, entry)
    }

    /// The temporary file a large file's pieces go to (`None`: its
    /// directory is gone).
    fn part(&self, entry: u32, e: &Entry) -> io::Result<Option<Arc<Part>>> {
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        if self.closed.load(Ordering::SeqCst) {
            return Ok(None);
        }
        if let Some(p) = parts.get(&entry) {
            return Ok(p.clone());
        }
        let up = e.path.rsplit_once('/').map_or("", |(up, _)| up);
        let part = match self.landing_dir(up)? {
            None => {
                self.missed.fetch_add(1, Ordering::Relaxed);
                None
            }
            Some(parent) => {
                let (tmp, file) = self.temp(&parent, entry, e)?;
                Some(Arc::new(Part { parent, tmp, file }))
            }
        };
        parts.insert(entry, part.clone());
        Ok(part)
    }

    fn take_part(&self, entry: u32) -> Option<Arc<Part>> {
        self.parts.lock().unwrap_or_else(|p| p.into_inner()).remove(&entry).flatten()
    }
}

impl LiveDir {
    /// Removes the temporary files of large files still being written: a
    /// second phase that failed or was cancelled leaves none, even while a
    /// writer thread (stopping at its next frame) still holds this.
    pub(crate) fn remove_parts(&self) {
        let mut guard = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        self.closed.store(true, Ordering::SeqCst);
        let parts = std::mem::take(&mut *guard);
        drop(guard);
        for p in parts.into_values().flatten() {
            let _ = rustix::fs::unlinkat(&*p.parent, p.tmp.as_str(), AtFlags::empty());
        }
    }
}

impl LiveDir {
    fn expect(&self, what: Expected) {
        *self.tail.lock().unwrap_or_else(|p| p.into_inner()) = what;
    }

    /// After a second phase that did not complete: moves every npm package
    /// dir that lacks some of its files out of the way, to a fresh `trash`
    /// path (beside the dir, where its restores keep their trash), and
    /// returns those paths for the caller to remove. Deno takes a package
    /// dir that exists for complete and would never fetch its missing
    /// files; a package dir that is gone is a cold miss it fetches again,
    /// whole. A file outside any package (`remote/`, a package's
    /// `registry.json`) is a cold miss by itself. When the tail's files
    /// never became known (the whole manifest did not come after a hot
    /// piece), no package dir can be trusted complete: `npm` goes whole. A
    /// writer still finishing a file as this runs can only make a package
    /// look less complete than it is: moved, and fetched again.
    pub(crate) fn unland_incomplete_packages(&self, trash: impl Fn() -> std::path::PathBuf) -> Vec<std::path::PathBuf> {
        self.closed.store(true, Ordering::SeqCst);
        if self.complete.load(Ordering::SeqCst) {
            return Vec::new();
        }
        let tail = std::mem::take(&mut *self.tail.lock().unwrap_or_else(|p| p.into_inner()));
        let landed = std::mem::take(&mut *self.landed.lock().unwrap_or_else(|p| p.into_inner()));
        let packages: std::collections::BTreeSet<&str> = match &tail {
            Expected::Nothing => return Vec::new(),
            Expected::Unknown => ["npm"].into(),
            Expected::Files(m, entries) => entries
                .iter()
                .filter(|i| !landed.contains(i))
                .filter_map(|&i| npm_package_dir(&m.entries[i as usize].path))
                .collect(),
        };
        let mut moved = Vec::new();
        for dir in packages {
            let (up, name) = dir.rsplit_once('/').unwrap_or(("", dir));
            let Ok(Some(parent)) = self.dir(up) else { continue };
            let to = trash();
            match rustix::fs::renameat_with(&*parent, name, rustix::fs::CWD, &to, RenameFlags::NOREPLACE) {
                Ok(()) => moved.push(to),
                Err(Errno::NOENT) => {}
                Err(e) => tracing::warn!(target: "sandbox-cache", "could not move the incomplete {dir} away: {e}"),
            }
        }
        moved
    }
}

/// The npm package dir a DENO_DIR path lies in, if any:
/// `npm/<registry>/<name>/<version>` (`<name>` may be `@scope/name`), for a
/// path inside it.
fn npm_package_dir(path: &str) -> Option<&str> {
    let comps: Vec<&str> = path.split('/').collect();
    if comps.first() != Some(&"npm") || comps.len() < 3 {
        return None;
    }
    let depth = if comps[2].starts_with('@') { 5 } else { 4 };
    if comps.len() <= depth {
        return None;
    }
    let len = comps[..depth].iter().map(|c| c.len() + 1).sum::<usize>() - 1;
    Some(&path[..len])
}

impl Drop for LiveDir {
    fn drop(&mut self) {
        self.remove_parts();
    }
}

/// The tail's large files: each read back against its hash, given its
/// metadata, and renamed into place. Returns how many went into place.
/// `suspect` is told of a file that fails its hash (its packs are bad).
fn finish_tail(
    m: &Manifest,
    entries: &[u32],
    live: &LiveDir,
    owner: Option<(u32, u32)>,
    suspect: &dyn Fn(usize),
) -> Result<u64, ExtractError> {
    let mut n = 0;
    for &i in entries {
        let e = &m.entries[i as usize];
        let Some(part) = live.take_part(i) else { continue };
        let name = e.path.rsplit_once('/').map_or(e.path.as_str(), |(_, n)| n);
        let path = Path::new(&e.path);
        let checked = (|| {
            let mut f = &part.file;
            io::Seek::rewind(&mut f)?;
            let mut hasher = blake3::Hasher::new();
            let copied = io::copy(&mut f, &mut hasher)?;
            Ok::<bool, io::Error>(
                copied == e.size && hasher.finalize().to_hex().as_str() == e.hash.as_deref().unwrap_or_default(),
            )
        })();
        let fail = |err| {
            let _ = rustix::fs::unlinkat(&*part.parent, part.tmp.as_str(), AtFlags::empty());
            err
        };
        match checked {
            Ok(true) => {}
            Ok(false) => {
                suspect(i as usize);
                return Err(fail(ExtractError::Corrupt {
                    detail: format!("{} fails its BLAKE3 check", e.path),
                    source: None,
                }));
            }
            Err(err) => return Err(fail(io_err(path, err))),
        }
        set_meta(&part.file, e, owner, live.umask).map_err(|err| fail(io_err(path, err)))?;
        if live.publish(&part.parent, &part.tmp, name, i).map_err(|err| io_err(path, err))? {
            n += 1;
        }
    }
    // The renames moved the mtimes of the directories they landed in: put
    // back the archived ones, as a one-phase restore leaves them.
    let touched = std::mem::take(&mut *live.touched.lock().unwrap_or_else(|p| p.into_inner()));
    for e in m.entries.iter().filter(|e| e.kind == Kind::Dir && touched.contains(&e.path)) {
        if let Ok(Some(fd)) = live.dir(&e.path) {
            let t = rustix::fs::Timespec { tv_sec: e.mtime.max(0), tv_nsec: 0 };
            let _ = rustix::fs::futimens(&*fd, &rustix::fs::Timestamps { last_access: t, last_modification: t });
        }
    }
    Ok(n)
}

fn empty_files(m: &Manifest) -> u64 {
    m.entries.iter().filter(|e| e.kind == Kind::File && e.size == 0).count() as u64
}

fn io_err(path: &Path, e: io::Error) -> ExtractError {
    ExtractError::Io { path: path.to_owned(), source: e }
}

/// Creates every directory and empty file; returns each frame's pieces.
fn setup(
    m: &Manifest,
    staging: &Path,
    dir: &OwnedFd,
    owner: Option<(u32, u32)>,
    exact: Umask,
) -> Result<Vec<Vec<Piece>>, ExtractError> {
    let mut pieces: Vec<Vec<Piece>> = vec![Vec::new(); m.frames.len()];
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
        file_pieces(m, i, e, &mut pieces)?;
    }
    Ok(pieces)
}

/// Adds the pieces of file `e` (entry `i` of `m`, with content) to the
/// frames that hold them.
fn file_pieces(m: &Manifest, i: usize, e: &Entry, pieces: &mut [Vec<Piece>]) -> Result<(), ExtractError> {
    let span = m.span_frames(e)?;
    let mut left = e.size;
    let mut file_offset = 0;
    for (k, fi) in span.enumerate() {
        let at = if k == 0 { e.offset } else { 0 };
        let len = left.min(m.frames[fi].rawlen - at);
        pieces[fi].push(Piece { entry: i as u32, at, len, file_offset });
        left -= len;
        file_offset += len;
    }
    Ok(())
}

/// A restored directory's mode: setuid, setgid and sticky dropped, owner
/// rwx always kept.
fn dir_mode(e: &Entry) -> u32 {
    (e.mode & 0o777) | 0o700
}

/// The mode to create a file with: its final one when the umask keeps it,
/// else private until [`set_meta`] sets it.
fn file_mode(e: &Entry, exact: Umask) -> u32 {
    if exact.keeps(e.mode & 0o777) { e.mode & 0o777 } else { 0o600 }
}

/// This process's umask, read once per restore: an entry whose mode has no
/// bit the umask clears is created with its final mode, and needs no chmod.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Umask(u32);

impl Umask {
    /// Read from `/proc/self/status` (the umask itself cannot be read
    /// without setting it, racing other threads); unknown, it keeps nothing,
    /// and every mode is set explicitly.
    pub(crate) fn current() -> Umask {
        let read = fs::read_to_string("/proc/self/status").ok().and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Umask:").and_then(|v| u32::from_str_radix(v.trim(), 8).ok()))
        });
        Umask(read.unwrap_or(0o777))
    }

    /// Whether a file or directory created with `mode` has exactly it.
    fn keeps(self, mode: u32) -> bool {
        mode & self.0 == 0
    }
}

fn create(dir: &OwnedFd, rel: &str, exclusive: bool, mode: u32) -> io::Result<fs::File> {
    // Relative to the held-open staging dir: through `/proc/self/fd/N`, each
    // open walked four more path components, two of them procfs lookups
    // (3% of a restore's CPU).
    let mut flags = OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if exclusive {
        flags |= OFlags::EXCL;
    }
    Ok(fs::File::from(rustix::fs::openat(dir, rel, flags, Mode::from_raw_mode(mode))?))
}

/// Mode (unless it was created with it: the umask kept it), times and, for
/// a runner's worker, the owner, all on the open fd. The owner first: chown
/// clears setuid bits.
fn set_meta(f: &fs::File, e: &Entry, owner: Option<(u32, u32)>, exact: Umask) -> io::Result<()> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(f, Some(uid), Some(gid))?;
    }
    if !exact.keeps(e.mode & 0o777) {
        f.set_permissions(fs::Permissions::from_mode(e.mode & 0o777))?;
    }
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(e.mtime.max(0) as u64);
    f.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
}

/// Needed frames grouped into byte ranges per pack: (pack, range, frames).
type Run = (u32, std::ops::Range<u64>, Vec<u32>);

/// The byte ranges to fetch for the frames with pieces, except those in
/// `have`. A frame `keep` wants that lies wholly inside a range is added to
/// its run: its bytes arrive anyway.
fn plan_runs(m: &Manifest, pieces: &[Vec<Piece>], have: &HashSet<u32>, keep: impl Fn(u32) -> bool) -> Vec<Run> {
    let mut by_pack: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (i, p) in pieces.iter().enumerate() {
        if !p.is_empty() && !have.contains(&(i as u32)) {
            by_pack.entry(m.frames[i].pack).or_default().push(i as u32);
        }
    }
    // Frames a small gap apart are fetched in one request.
    const GAP: u64 = 1 << 20;
    let mut runs = Vec::new();
    for (pack, mut frames) in by_pack {
        frames.sort_by_key(|f| m.frames[*f as usize].offset);
        let mut cur: Option<Run> = None;
        for f in frames {
            let fr = &m.frames[f as usize];
            let (start, end) = (fr.offset, fr.offset + fr.clen);
            match &mut cur {
                Some((_, r, fs)) if start >= r.end && start - r.end <= GAP => {
                    r.end = end;
                    fs.push(f);
                }
                _ => {
                    runs.extend(cur.take());
                    cur = Some((pack, start..end, vec![f]));
                }
            }
        }
        runs.extend(cur);
    }
    for f in (0..m.frames.len() as u32).filter(|f| pieces[*f as usize].is_empty() && keep(*f)) {
        let fr = &m.frames[f as usize];
        if let Some((_, _, frames)) =
            runs.iter_mut().find(|(p, r, _)| *p == fr.pack && r.start <= fr.offset && fr.offset + fr.clen <= r.end)
        {
            frames.push(f);
            frames.sort_by_key(|f| m.frames[*f as usize].offset);
        }
    }
    // Large runs first, so the longest download starts earliest.
    runs.sort_by_key(|(_, r, _)| std::cmp::Reverse(r.end - r.start));
    runs
}

#[allow(clippy::too_many_arguments)]
async fn fetch_run(
    store: &dyn Store,
    key: &str,
    m: &Manifest,
    pieces: &[Vec<Piece>],
    (pack, range, frames): Run,
    mut feed: Feed,
    cancel: Arc<AtomicBool>,
    transferred: Arc<AtomicU64>,
    progress: Option<Arc<Progress>>,
    frame_bufs: &Recycler,
    prefetch: &Prefetch,
    found: &Found,
) -> Result<(), Error> {
    let pack_ref = &m.packs[pack as usize];
    let pkey = pack_key(key, m, &pack_ref.id);
    // A prefetched pack is sliced, not fetched again; it is verified frame
    // by frame like any download.
    let (obj_size, mut stream, prefetched): (u64, sandcache_store::ByteStream, bool) = match prefetch.take(&pkey).await
    {
        Some(all) if all.len() as u64 >= range.end => {
            let part = all.slice(range.start as usize..range.end as usize);
            (all.len() as u64, Box::pin(futures::stream::once(async move { Ok(part) })), true)
        }
        _ => {
            let obj = store.get_range(&pkey, range.clone()).await?;
            (obj.size, obj.stream, false)
        }
    };
    // A pack of another length than its manifest says is not the pack it
    // names (a pack's length is part of what its name hashes).
    if obj_size != pack_ref.size {
        let than = if obj_size < pack_ref.size { "shorter" } else { "longer" };
        let why = format!("{obj_size} bytes, {than} than its manifest says ({})", pack_ref.size);
        found.add(&pkey, pack_ref.size, &why);
        return Err(Error::Corrupt(format!("`{pkey}` is {why}")));
    }
    // Each frame's bytes: a slice of the chunk that holds it whole (no
    // copy: a prefetched pack, or a large chunk), else gathered into a
    // recycled buffer.
    let mut chunk = Bytes::new();
    let mut pos = range.start; // store offset of chunk[0]
    for &frame in frames.iter() {
        if cancel.load(Ordering::Relaxed) {
            return Ok(());
        }
        let fr = &m.frames[frame as usize];
        // Wait for room before taking in this frame's bytes.
        let Some(permit) = feed.room(fr.clen).await else { return Ok(()) };
        let clen = fr.clen as usize;
        let mut gathered: Option<Vec<u8>> = None;
        let bytes = loop {
            if chunk.is_empty() {
                match stream.next().await {
                    Some(next) => {
                        chunk = next?;
                        if !prefetched {
                            // (A prefetched pack's bytes count once, as downloaded.)
                            transferred.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        }
                        if let Some(p) = &progress {
                            p.transferred.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        }
                        continue;
                    }
                    None => {
                        // The object ended cleanly before the frames the
                        // manifest places in it: the stored pack and its
                        // manifest disagree (a transfer cut short is an
                        // error of the stream instead).
                        return Err(Error::Corrupt(format!(
                            "`{pkey}` is {} bytes, shorter than its manifest says (frames up to byte {})",
                            obj_size, range.end
                        )));
                    }
                }
            }
            if pos < fr.offset {
                // Passed over: bytes between frames of a coalesced range.
                let skip = (fr.offset - pos).min(chunk.len() as u64);
                let _ = chunk.split_to(skip as usize);
                pos += skip;
                continue;
            }
            let out = match &mut gathered {
                None if chunk.len() >= clen => {
                    pos += fr.clen;
                    break chunk.split_to(clen);
                }
                None => gathered.insert(frame_bufs.take(clen)),
                Some(out) => out,
            };
            let n = (clen - out.len()).min(chunk.len());
            out.extend_from_slice(&chunk.split_to(n));
            pos += n as u64;
            if out.len() == clen {
                break frame_bufs.share(gathered.take().expect("gathered above"));
            }
        };
        if !prefetched {
            // (A prefetched pack's frames are sliced again by the tail.)
            prefetch.keep(frame, &bytes);
        }
        if pieces[frame as usize].is_empty() {
            // Only passed over on the way to another frame: kept (or not,
            // when there was no room) for the tail, not written.
            continue;
        }
        if !feed.send(FrameJob { frame, bytes, _budget: permit }).await {
            return Ok(());
        }
    }
    Ok(())
}

/// Decodes one frame and writes the pieces it holds, each whole file
/// checked against its hash.
fn write_frame(
    m: &Manifest,
    pieces: &[Vec<Piece>],
    sink: &Sink,
    job: &FrameJob,
    owner: Option<(u32, u32)>,
    decoder: &mut pack::FrameDecoder,
) -> Result<(u64, u64), ExtractError> {
    let frame: &Frame = &m.frames[job.frame as usize];
    // No frame hash: it would only go over bytes that are checked against
    // a hash of the manifest's before anyone can use them. A whole file is
    // checked below, as it is written; a large file in staging by its parts'
    // hashes merged (`finish`, before the swap), and in the tail by reading
    // it back before the rename. Until then it is in staging, or in the
    // live dir under a temporary name.
    let raw = decoder.decode_unhashed(&job.bytes, frame)?;
    let (mut files, mut bytes) = (0, 0);
    for p in &pieces[job.frame as usize] {
        let e = &m.entries[p.entry as usize];
        let data = &raw[p.at as usize..(p.at + p.len) as usize];
        let whole = p.len == e.size;
        if whole && blake3::hash(data).to_hex().as_str() != e.hash.as_deref().unwrap_or_default() {
            return Err(ExtractError::Corrupt { detail: format!("{} fails its BLAKE3 check", e.path), source: None });
        }
        let (staging, dir, exact, parts) = match sink {
            Sink::Staging { io, dir, exact, parts, .. } => (io, dir, *exact, parts),
            Sink::Live(live) => {
                let path = Path::new(&e.path);
                if whole {
                    files += u64::from(live.place(e, p.entry, data, owner).map_err(|err| io_err(path, err))?);
                } else if let Some(part) = live.part(p.entry, e).map_err(|err| io_err(path, err))? {
                    part.file.write_all_at(data, p.file_offset).map_err(|err| io_err(path, err))?;
                }
                bytes += p.len;
                continue;
            }
        };
        let err = |err| io_err(&staging.join(&e.path), err);
        if whole {
            // The whole file: its own hash was checked above.
            let mut f = create(dir, &e.path, true, file_mode(e, exact)).map_err(err)?;
            io::Write::write_all(&mut f, data).map_err(err)?;
            set_meta(&f, e, owner, exact).map_err(err)?;
            files += 1;
        } else {
            // A part of a large file: checked with the others in `finish`
            // (their hashes merged, against the file's), before the swap.
            let f = create(dir, &e.path, false, file_mode(e, exact)).map_err(err)?;
            f.write_all_at(data, p.file_offset).map_err(err)?;
            parts.add(p.entry, e.size, p.file_offset, data);
        }
        bytes += p.len;
    }
    Ok((files, bytes))
}

/// A frame that does not decode, or holds a file that fails its hash: the
/// pack it lies in is bad (noted in `found`, when it is a pool object).
fn suspect_frame(found: &Found, key: &str, m: &Manifest, frame: u32, e: &ExtractError) {
    if let Some(pack) = m.frames.get(frame as usize).and_then(|f| m.packs.get(f.pack as usize)) {
        let why = match e {
            ExtractError::Corrupt { detail, .. } => format!("frame at {}: {detail}", m.frames[frame as usize].offset),
            other => other.to_string(),
        };
        found.add(&pack_key(key, m, &pack.id), pack.size, why);
    }
}

/// A large file that fails its hash once all its parts are written: the
/// packs its frames lie in are suspect (one of them is bad).
fn suspect_file(found: &Found, key: &str, m: &Manifest, entry: usize) {
    let Some(e) = m.entries.get(entry) else { return };
    let Ok(span) = m.span_frames(e) else { return };
    let mut packs: Vec<u32> = span.filter_map(|f| m.frames.get(f).map(|f| f.pack)).collect();
    packs.dedup();
    for pack in packs.into_iter().filter_map(|p| m.packs.get(p as usize)) {
        found.add(&pack_key(key, m, &pack.id), pack.size, format!("{} fails its BLAKE3 check", e.path));
    }
}

/// Symlinks last, then large files' metadata and each directory's, deepest
/// first. Returns the number of symlinks and large files.
#[allow(clippy::too_many_arguments)]
fn finish(
    m: &Manifest,
    staging: &Path,
    dir: &OwnedFd,
    owner: Option<(u32, u32)>,
    deferred: &HashSet<u32>,
    exact: Umask,
    parts: &PartHashes,
    suspect: &dyn Fn(usize),
) -> Result<u64, ExtractError> {
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

// ---------------------------------------------------------------- snapshot

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

pub(crate) struct SnapshotPlan {
    pub manifest: Manifest,
    pub index: Index,
    pub files: u64,
    pub bytes: u64,
    /// Whether the manifest's entries equal the base's: nothing to upload.
    pub unchanged: bool,
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
    let (mut files, mut bytes) = (0u64, 0u64);
    // SQLite databases seen (relative paths), for their companions.
    let mut databases: Vec<String> = Vec::new();
    let mut caches = sqlite.cloned().map(|o| Copier::new(o, walk.cancel.clone()));
    tree.walk::<Error>(&mut |c| {
        if c.name().to_str().is_none() {
            tracing::warn!("leaving out a non-UTF-8 name: {}", c.path().display());
            return Ok(Step::SkipDir);
        }
        // Every component was checked on the way down.
        let child_rel = c.rel().to_str().expect("UTF-8 components").to_owned();
        let meta = c.meta();
        let (mode, mtime) = (meta.mode, meta.mtime);
        // Deno's own caches: a consistent copy, or nothing.
        let copy = if c.is_top() && sqlite::is_deno_cache_or_companion(c.name()) {
            let copy = match caches.as_mut() {
                Some(k) if sqlite::is_deno_cache(c.name()) => k.copy(c)?,
                _ => None,
            };
            match copy {
                Some(copy) => Some(copy),
                None => return Ok(if meta.kind == WalkKind::Dir { Step::SkipDir } else { Step::Continue }),
            }
        } else {
            None
        };
        let is_cache = copy.is_some();
        match meta.kind {
            _ if is_cache => {}
            WalkKind::Dir => {
                entries.push(Entry::dir(child_rel, mode, mtime));
                return Ok(Step::Continue);
            }
            WalkKind::Symlink => {
                let target = c.read_link()?;
                if let Some(target) = target.to_str() {
                    entries.push(Entry::symlink(child_rel, target.to_owned(), mode, mtime));
                    files += 1;
                }
                return Ok(Step::Continue);
            }
            WalkKind::File => {}
            other => {
                // Listed, never opened.
                tracing::debug!(path = %c.path().display(), "leaving out {}", other.describe());
                return Ok(Step::Continue);
            }
        }
        if sqlite::COMPANIONS
            .iter()
            .any(|s| child_rel.strip_suffix(s).is_some_and(|b| databases.iter().any(|q| q == b)))
        {
            return Ok(Step::Continue);
        }
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
                    if !is_cache && head.starts_with(SQLITE_MAGIC) {
                        databases.push(child_rel);
                        return Ok(Step::Continue);
                    }
                    opened = Some(f);
                    (hash, None, size)
                } else {
                    let mut data = vec![0; size as usize];
                    f.read_full(&mut data)?;
                    if !is_cache && data.len() >= 16 && &data[..16] == SQLITE_MAGIC {
                        databases.push(child_rel);
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
                let (f, o) = match content {
                    Some(data) => builder.add(&data, &mut built),
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
                            let placed = builder.add(&piece[..n], &mut built);
                            at.get_or_insert(placed);
                            ship(&mut built)?;
                        }
                        if hasher.finalize().to_hex().as_str() != hash {
                            return Err(changed().into());
                        }
                        at.ok_or_else(changed)?
                    }
                };
                let f = f | tag;
                fresh.insert(hash, (f, o));
                e.frame = Some(f);
                e.offset = o;
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
    for e in entries.iter_mut() {
        if let Some(f) = e.frame.as_mut() {
            *f = match *f & COLD {
                0 => base_frames + *f,
                _ => base_frames + hot_frames + (*f & !COLD),
            };
        }
    }
    for (i, span) in reused {
        entries[i].frame = Some(span.frame);
        entries[i].offset = span.offset;
    }
    let created_ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let mut manifest =
        Manifest { version: pack::VERSION, created_ms, packs, frames, entries, pieces: Vec::new(), hot: Vec::new() };
    compact(&mut manifest);
    let unchanged = new_packs.iter().all(Vec::is_empty) && base.is_some_and(|b| b.entries == manifest.entries);
    Ok(SnapshotPlan { manifest, index: new_index, files, bytes, unchanged })
}

/// Names a pack that went up salted (see [`pack::salt`]) by its salted id
/// and size: its frames lie [`pack::SALT_LEN`] bytes further in.
pub(crate) fn rename_salted_pack(m: &mut Manifest, id: &str, (to, size): &(String, u64)) {
    for (i, p) in m.packs.iter_mut().enumerate() {
        if p.id != id {
            continue;
        }
        (p.id, p.size) = (to.clone(), *size);
        for f in m.frames.iter_mut().filter(|f| f.pack as usize == i) {
            f.offset += pack::SALT_LEN;
        }
    }
}

/// Tags a frame of the cold builder until frames are numbered.
const COLD: u32 = 1 << 31;

/// Drops frames no entry uses and packs no frame uses, renumbering both.
/// Frames keep their order, so a large file's frames stay consecutive.
fn compact(m: &mut Manifest) {
    let mut used = vec![false; m.frames.len()];
    for e in &m.entries {
        if e.kind == Kind::File && e.size > 0 {
            if let Ok(span) = m.span_frames(e) {
                for i in span {
                    used[i] = true;
                }
            }
        }
    }
    let mut frame_map = vec![u32::MAX; m.frames.len()];
    let mut pack_map: HashMap<u32, u32> = HashMap::new();
    let mut packs = Vec::new();
    let mut frames = Vec::new();
    for (i, f) in m.frames.iter().enumerate() {
        if !used[i] {
            continue;
        }
        let pi = *pack_map.entry(f.pack).or_insert_with(|| {
            packs.push(m.packs[f.pack as usize].clone());
            packs.len() as u32 - 1
        });
        frame_map[i] = frames.len() as u32;
        frames.push(Frame { pack: pi, ..f.clone() });
    }
    for e in &mut m.entries {
        if let Some(f) = e.frame.as_mut() {
            *f = frame_map[*f as usize];
        }
    }
    // Packs holding hot content are marked, and listed first: a hot-first
    // restore prefetches them alone.
    for e in m.entries.iter().filter(|e| e.hot && e.kind == Kind::File && e.size > 0) {
        if let Some(f) = e.frame.and_then(|f| frames.get(f as usize)) {
            packs[f.pack as usize].hot = true;
        }
    }
    let mut order: Vec<usize> = (0..packs.len()).collect();
    order.sort_by_key(|&i| !packs[i].hot);
    let mut new_index = vec![0u32; packs.len()];
    for (new, &old) in order.iter().enumerate() {
        new_index[old] = new as u32;
    }
    for f in &mut frames {
        f.pack = new_index[f.pack as usize];
    }
    m.packs = order.into_iter().map(|i| packs[i].clone()).collect();
    m.frames = frames;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A large file's hash merged from its parts' chaining values, parts
    /// recorded in any order, is its BLAKE3; parts not cut as the packer
    /// cuts them give no hash (the file is read back instead).
    #[test]
    fn parts_hashes_merge_to_the_files_blake3() {
        let part = PART as usize;
        for size in [part + 1, 2 * part, 3 * part + 5, 5 * part, 8 * part + 1024, 9 * part - 1] {
            let data: Vec<u8> = (0..size as u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
            let parts = PartHashes::default();
            let offsets: Vec<usize> = (0..size).step_by(part).collect();
            for &at in offsets.iter().rev() {
                parts.add(7, size as u64, at as u64, &data[at..(at + part).min(size)]);
            }
            assert_eq!(parts.root(7, size as u64), Some(blake3::hash(&data)), "{size} bytes");
        }
        let size = 3 * part;
        let data = vec![1u8; size];
        let parts = PartHashes::default();
        parts.add(1, size as u64, 0, &data[..part]);
        parts.add(1, size as u64, part as u64, &data[part..2 * part]);
        assert_eq!(parts.root(1, size as u64), None, "a part missing");
        let parts = PartHashes::default();
        parts.add(2, size as u64, 0, &data[..part - 1024]);
        parts.add(2, size as u64, (part - 1024) as u64, &data[part - 1024..2 * part]);
        parts.add(2, size as u64, 2 * part as u64, &data[2 * part..]);
        assert_eq!(parts.root(2, size as u64), None, "parts cut elsewhere");
    }

    /// Hot pieces are cut as pieces are: a package added in the middle
    /// changes the hot pieces around it, not all of them.
    #[test]
    fn one_more_package_changes_few_hot_pieces() {
        let frame = Frame { pack: 0, offset: 0, clen: 1, rawlen: 1, hash: "0".repeat(64) };
        let manifest = |packages: &mut dyn Iterator<Item = u32>| {
            let mut entries = Vec::new();
            for p in packages {
                entries.push(Entry::dir(format!("npm/r/p{p:05}"), 0o755, 0));
                entries.push(Entry::dir(format!("npm/r/p{p:05}/1.0.0"), 0o755, 0));
                for f in 0..4 {
                    let path = format!("npm/r/p{p:05}/1.0.0/f{f}.js");
                    let hot = f == 0 && p % 2 == 0;
                    entries.push(Entry { frame: Some(0), hot, ..Entry::file(path, 0o644, 0, 1, "0".repeat(64)) });
                }
            }
            let packs = vec![PackRef { id: "a".repeat(64), size: 1, hot: true }];
            Manifest {
                version: pack::VERSION,
                created_ms: 0,
                packs,
                frames: vec![frame.clone()],
                entries,
                pieces: Vec::new(),
                hot: Vec::new(),
            }
        };
        let before = split(&manifest(&mut (0..4000).filter(|p| *p != 2000))).0;
        let after = split(&manifest(&mut (0..4000))).0;
        assert!(before.hot.len() >= 3, "{} hot pieces", before.hot.len());
        let new = after.hot.iter().filter(|p| !before.hot.contains(p)).count();
        assert!((1..=2).contains(&new), "{new} of {} hot pieces changed", after.hot.len());
    }

    #[test]
    fn npm_package_dirs_of_deno_dir_paths() {
        let reg = "npm/registry.npmjs.org";
        for (path, dir) in [
            (format!("{reg}/lodash/4.17.21/lodash.js"), Some(format!("{reg}/lodash/4.17.21"))),
            (format!("{reg}/lodash/4.17.21/fp/a.js"), Some(format!("{reg}/lodash/4.17.21"))),
            (format!("{reg}/@aws-sdk/client-s3/3.1.0/dist/i.js"), Some(format!("{reg}/@aws-sdk/client-s3/3.1.0"))),
            (format!("{reg}/lodash/registry.json"), None),
            (format!("{reg}/lodash/4.17.21"), None),
            (format!("{reg}/@aws-sdk/client-s3/3.1.0"), None),
            ("remote/https/deno.land/x".into(), None),
            ("npm".into(), None),
            ("npmx/a/b/c/d".into(), None),
        ] {
            assert_eq!(npm_package_dir(&path).map(str::to_owned), dir, "{path}");
        }
    }

    /// Phase one is the hot files only: a cold file whose content shares
    /// a frame with a hot one still waits for the tail (writing it first
    /// would hold up `hot-ready`), and so does one in a frame of its own.
    #[test]
    fn phase_one_is_the_hot_files_only_whatever_frame_they_share() {
        let file = |path: &str, frame: u32, offset: u64, hot: bool| Entry {
            frame: Some(frame),
            offset,
            hot,
            ..Entry::file(path.into(), 0o644, 0, 10, "0".repeat(64))
        };
        let frame = |pack: u32| Frame { pack, offset: 0, clen: 10, rawlen: 20, hash: "0".repeat(64) };
        let m = Manifest {
            version: pack::VERSION,
            created_ms: 0,
            packs: vec![
                PackRef { id: "a".repeat(64), size: 10, hot: true },
                PackRef { id: "b".repeat(64), size: 10, hot: false },
            ],
            frames: vec![frame(0), frame(1)],
            entries: vec![
                Entry::dir("npm".into(), 0o755, 0),
                file("npm/hot.js", 0, 0, true),
                file("npm/beside-hot.js", 0, 10, false),
                file("npm/cold.js", 1, 0, false),
            ],
            pieces: Vec::new(),
            hot: Vec::new(),
        };
        let piece = |entry: u32, at: u64| Piece { entry, at, len: 10, file_offset: 0 };
        let pieces = vec![vec![piece(1, 0), piece(2, 10)], vec![piece(3, 0)]];
        let (now, tail) = split_hot(&m, pieces);
        let tail = tail.expect("a tail");
        let entries = |ps: &[Vec<Piece>]| ps.iter().flatten().map(|p| p.entry).collect::<Vec<_>>();
        assert_eq!(entries(&now), vec![1]);
        assert_eq!(entries(&tail.pieces), vec![2, 3]);
        assert_eq!(tail.entries, vec![2, 3]);

        // No hot entry: no hot set, one phase.
        let mut cold = m.clone();
        cold.entries.iter_mut().for_each(|e| e.hot = false);
        let (now, tail) = split_hot(&cold, vec![vec![piece(1, 0), piece(2, 10)], vec![piece(3, 0)]]);
        assert!(tail.is_none());
        assert_eq!(entries(&now), vec![1, 2, 3]);

        // The root's hot piece: phase one's entries, with the one frame and
        // pack they use; none without a hot set, nor when it would hold
        // over half the entries.
        let (root, stored) = split(&m);
        let [hot_ref] = root.hot.as_slice() else { panic!("one hot piece: {:?}", root.hot) };
        let (_, bytes) = stored.iter().find(|(id, _)| *id == hot_ref.id).expect("stored with the pieces");
        let hot = Manifest::decode(bytes).unwrap();
        let paths: Vec<&str> = hot.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["npm", "npm/hot.js"]);
        assert_eq!((hot.frames.len(), hot.packs.len(), hot.entries[1].frame), (1, 1, Some(0)));
        let mut p = Prefetch::none();
        p.keep_uncovered(&hot, &[vec![piece(1, 0)]]);
        assert_eq!(p.kept.wanted, [true], "its frame holds a tail file too: kept for the tail");
        p.keep_uncovered(&hot, &[vec![Piece { len: 20, ..piece(1, 0) }]]);
        assert_eq!(p.kept.wanted, [false], "a frame phase one writes whole");
        assert!(split(&cold).0.hot.is_empty());
        let mut most = m.clone();
        most.entries[2].hot = true;
        assert!(split(&most).0.hot.is_empty(), "3 of 4 entries");
    }
}
