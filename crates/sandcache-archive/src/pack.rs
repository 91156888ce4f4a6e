//! The native format: content-addressed packs of zstd frames, and a manifest.
//!
//! A pack is a concatenation of independent zstd frames; each frame holds up
//! to [`FRAME_RAW`] bytes of raw file content. Small files share frames, in
//! walk order; a larger file spans whole frames of its own. Packs are named
//! by the BLAKE3 of their bytes, so equal packs are one object.
//!
//! The manifest lists every entry (path, kind, mode, mtime, size, BLAKE3 of
//! the content, symlink target) and where its bytes sit: a frame and an
//! offset in that frame's raw content. Each frame carries its pack, offset,
//! compressed and raw lengths, and the BLAKE3 of its raw content, so every
//! byte restored is verified. [`Manifest::validate`] checks everything a
//! hostile manifest could get wrong before anything is written.
//!
//! `pack/algebra.rs` holds what renumbers frames and packs: a manifest's
//! subset, the join of its pieces ([`Joiner`]), frame dedup, compaction and
//! the renames of salted objects, all `impl Manifest`.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::error::ExtractError;
use crate::limits::Limits;
use crate::rules::{check_path, check_symlink_target, unsafe_entry};

mod algebra;

pub use algebra::{Joiner, in_tail};

/// Raw bytes per frame: the unit of download, decompression and verification.
pub const FRAME_RAW: usize = 4 << 20;
/// Raw bytes per frame of a file that changes in place (Deno's SQLite
/// caches, written page by page): each such frame holds a run of the file at
/// a fixed offset, so two versions of the file share most frames, and a
/// delta restore copies those from the old file instead of decoding them.
pub const CHUNK_RAW: usize = 256 << 10;
/// Compressed bytes after which a pack is closed.
pub(crate) const PACK_TARGET: usize = 8 << 20;
/// Room for a pack that closes past [`PACK_TARGET`] by up to one frame, so
/// its buffer never doubles (and RSS never counts twice a pack's size).
const PACK_CAPACITY: usize = PACK_TARGET + FRAME_RAW + (FRAME_RAW >> 6);
/// The largest manifest accepted, decompressed.
pub const MAX_MANIFEST: usize = 256 << 20;
/// The version new manifests are written with. 1: packs live under the
/// key (`K.d/packs/`); 2: packs live in the store's shared pool
/// (`pool/<2 hex>/<id>.pack`); 3: as 2, and the entries may live in
/// content-addressed pieces (`pool/<2 hex>/<id>.tree`) that the manifest, a
/// small root, lists. All are read.
pub const VERSION: u32 = 3;
/// The oldest version still read.
pub(crate) const OLDEST_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Dir,
    File,
    Symlink,
}

/// One entry of the tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative, `/`-separated, no `.`/`..`/empty components.
    pub path: String,
    pub kind: Kind,
    pub mode: u32,
    pub mtime: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// BLAKE3 of the content, hex (files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// First frame holding the content (files with content).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame: Option<u32>,
    /// Offset of the content in that frame's raw bytes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Read since it was restored or created, when the snapshot was taken
    /// (files only): a two-phase restore writes it before the swap. A
    /// manifest with no hot entry has no hot set: everything is hot.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hot: bool,
}

impl Entry {
    pub fn dir(path: String, mode: u32, mtime: i64) -> Entry {
        Entry {
            path,
            kind: Kind::Dir,
            mode,
            mtime,
            size: 0,
            hash: None,
            frame: None,
            offset: 0,
            target: None,
            hot: false,
        }
    }

    pub fn symlink(path: String, target: String, mode: u32, mtime: i64) -> Entry {
        Entry { target: Some(target), kind: Kind::Symlink, ..Entry::dir(path, mode, mtime) }
    }

    /// A file whose content is at `frame`/`offset` (set later for content
    /// that is not placed yet).
    pub fn file(path: String, mode: u32, mtime: i64, size: u64, hash: String) -> Entry {
        Entry { kind: Kind::File, size, hash: Some(hash), ..Entry::dir(path, mode, mtime) }
    }
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A frame: a zstd frame in a pack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    pub pack: u32,
    pub offset: u64,
    pub clen: u64,
    pub rawlen: u64,
    /// BLAKE3 of the raw content, hex.
    pub hash: String,
}

/// A pack object, by content hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackRef {
    pub id: String,
    pub size: u64,
    /// Holds content of a hot entry: fetched first (and prefetched alone)
    /// by a hot-first restore. Hot packs are listed first.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hot: bool,
}

/// A generation of the cache.
///
/// Either whole (its entries and frames inline), or a root: `pieces` names
/// the content-addressed pieces that hold the entries, in order, each
/// itself a whole `Manifest` of a run of entries with the frames and packs
/// they use; `packs` is then the union of the pieces' packs (what gc and
/// progress need without reading the pieces).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub created_ms: u64,
    pub packs: Vec<PackRef>,
    pub frames: Vec<Frame>,
    pub entries: Vec<Entry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pieces: Vec<PieceRef>,
    /// A root's hot pieces, when the generation has a hot set: every entry
    /// but the files that are not hot (so the hot files, every directory
    /// and symlink, the empty files), cut into pieces as `pieces` are. A
    /// hot-first restore reads them alone before the swap, and the whole
    /// manifest after it, for the tail. Readers that do not know them
    /// ignore them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hot: Vec<PieceRef>,
}

/// A piece of a manifest, by the BLAKE3 of its stored bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PieceRef {
    pub id: String,
    pub size: u64,
    /// Entries in the piece.
    pub entries: u64,
}

/// Where a file's bytes are: frames and the offset in the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub frame: u32,
    pub offset: u64,
    pub size: u64,
}

impl Manifest {
    /// Every piece a root names: its pieces, then its hot pieces (what gc
    /// keeps and a snapshot checks).
    pub fn piece_refs(&self) -> impl Iterator<Item = &PieceRef> {
        self.pieces.iter().chain(self.hot.iter())
    }

    /// Whether its packs live in the store's shared pool (version 2 on), or
    /// under its own key (version 1).
    pub fn pooled(&self) -> bool {
        self.version >= 2
    }

    /// zstd-compressed JSON, as stored.
    pub fn encode(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self).expect("a manifest always serialises");
        zstd::bulk::compress(&json, 3).expect("compressing into memory cannot fail")
    }

    /// Decodes stored bytes. Does not validate: call [`Manifest::validate`].
    pub fn decode(bytes: &[u8]) -> Result<Manifest, ExtractError> {
        let bad = |detail: String| ExtractError::Corrupt { detail, source: None };
        // Room for what the frame header says it holds (not trusted past a
        // generous ratio): no growing and copying as it decodes.
        let said = zstd::zstd_safe::get_frame_content_size(bytes).ok().flatten().unwrap_or(0);
        let room = said.min(MAX_MANIFEST as u64 + 1).min((bytes.len() as u64).saturating_mul(64));
        // The JSON goes into this thread's buffer, kept between calls (up to
        // a bound): a restore decodes ~45 pieces per manifest, and a fresh
        // buffer for each costs its pages, faulted in and given back.
        thread_local! {
            static JSON: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        const KEPT: usize = 4 << 20;
        JSON.with_borrow_mut(|json| {
            json.clear();
            json.reserve(room as usize);
            let decoded = (|| {
                let mut dec = zstd::stream::read::Decoder::new(bytes).map_err(|e| bad(format!("manifest: {e}")))?;
                std::io::Read::read_to_end(&mut std::io::Read::take(&mut dec, MAX_MANIFEST as u64 + 1), json)
                    .map_err(|e| bad(format!("manifest is not zstd: {e}")))?;
                if json.len() > MAX_MANIFEST {
                    return Err(bad(format!("manifest expands past {MAX_MANIFEST} bytes")));
                }
                serde_json::from_slice(json).map_err(|e| bad(format!("manifest is not valid: {e}")))
            })();
            if json.capacity() > KEPT {
                *json = Vec::new();
            }
            decoded
        })
    }

    /// Checks everything a hostile or broken manifest could get wrong:
    /// versions, index bounds, offsets past a frame or pack end, overlapping
    /// frames, unsafe paths and symlinks, duplicates, and the limits.
    /// `final_dir` is where the tree will live: absolute symlink targets must
    /// stay under it.
    pub fn validate(&self, limits: &Limits, final_dir: &std::path::Path) -> Result<(), ExtractError> {
        let prefix: Vec<Vec<u8>> = final_dir
            .components()
            .filter_map(|c| match c {
                std::path::Component::Normal(s) => Some(std::os::unix::ffi::OsStrExt::as_bytes(s).to_vec()),
                _ => None,
            })
            .collect();
        let corrupt = |detail: String| ExtractError::Corrupt { detail, source: None };
        if !(OLDEST_VERSION..=VERSION).contains(&self.version) {
            return Err(corrupt(format!(
                "manifest version {} is not one this sandcache reads ({OLDEST_VERSION} to {VERSION})",
                self.version
            )));
        }
        if self.entries.len() as u64 > limits.max_entries {
            return Err(ExtractError::Limit { what: "entry count", limit: limits.max_entries });
        }
        for p in &self.packs {
            if p.id.len() != 64 || !p.id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(corrupt(format!("pack id {:?} is not a BLAKE3 hex digest", p.id)));
            }
        }
        // Frames lie inside their pack and never overlap.
        let mut by_pack: HashMap<u32, Vec<(u64, u64)>> = HashMap::new();
        for (i, f) in self.frames.iter().enumerate() {
            let pack =
                self.packs.get(f.pack as usize).ok_or_else(|| corrupt(format!("frame {i} names pack {}", f.pack)))?;
            let end = f.offset.checked_add(f.clen).ok_or_else(|| corrupt(format!("frame {i} overflows")))?;
            if end > pack.size || f.clen == 0 {
                return Err(corrupt(format!(
                    "frame {i} ({}..{end}) falls outside pack {} of {} bytes",
                    f.offset, pack.id, pack.size
                )));
            }
            if f.rawlen > FRAME_RAW as u64 || f.hash.len() != 64 {
                return Err(corrupt(format!("frame {i} is malformed")));
            }
            by_pack.entry(f.pack).or_default().push((f.offset, end));
        }
        for ranges in by_pack.values_mut() {
            ranges.sort_unstable();
            if ranges.windows(2).any(|w| w[1].0 < w[0].1) {
                return Err(corrupt("frames overlap in a pack".into()));
            }
        }
        let mut total = 0u64;
        // Paths are hashed with foldhash, seeded per process (a manifest's
        // paths are a sandbox's names, but nobody sees this process's seed).
        let fast = foldhash::fast::RandomState::default;
        let mut seen: HashSet<&str, _> = HashSet::with_capacity_and_hasher(self.entries.len(), fast());
        let mut non_dirs: HashSet<&str, _> = HashSet::with_capacity_and_hasher(self.entries.len(), fast());
        let mut dirs: HashSet<&str, _> = HashSet::with_hasher(fast());
        for e in &self.entries {
            check_path(&e.path, limits)?;
            if !seen.insert(&e.path) {
                return Err(unsafe_entry(&e.path, "duplicate entry"));
            }
            match e.kind {
                Kind::Dir => {
                    dirs.insert(&e.path);
                }
                Kind::Symlink => {
                    let target =
                        e.target.as_deref().ok_or_else(|| unsafe_entry(&e.path, "symlink without a target"))?;
                    let comps: Vec<&[u8]> = e.path.split('/').map(str::as_bytes).collect();
                    check_symlink_target(&comps[..comps.len() - 1], target.as_bytes(), &prefix, &e.path)?;
                    non_dirs.insert(&e.path);
                }
                Kind::File => {
                    non_dirs.insert(&e.path);
                    total = total.saturating_add(e.size);
                    if total > limits.max_bytes {
                        return Err(ExtractError::Limit { what: "expanded size", limit: limits.max_bytes });
                    }
                    if e.hash.as_ref().is_none_or(|h| h.len() != 64) {
                        return Err(corrupt(format!("{} has no valid hash", e.path)));
                    }
                    if e.size > 0 {
                        self.span_frames(e)?;
                    }
                }
            }
        }
        // Nothing lives under a file or symlink: no write through a symlink.
        // Up to the first parent listed as a directory: its own parents are
        // checked as its entry is (each path is listed once).
        for e in &self.entries {
            let mut p = e.path.as_str();
            while let Some((parent, _)) = p.rsplit_once('/') {
                if non_dirs.contains(parent) {
                    return Err(unsafe_entry(&e.path, "path goes through a symlink or a non-directory"));
                }
                if dirs.contains(parent) {
                    break;
                }
                p = parent;
            }
        }
        Ok(())
    }

    /// The frames a file's content spans, checked against their bounds.
    pub fn span_frames(&self, e: &Entry) -> Result<std::ops::Range<usize>, ExtractError> {
        let corrupt = |detail: String| ExtractError::Corrupt { detail, source: None };
        let first = e.frame.ok_or_else(|| corrupt(format!("{} has content but no frame", e.path)))? as usize;
        let f = self.frames.get(first).ok_or_else(|| corrupt(format!("{} names frame {first}", e.path)))?;
        let end_in_first = e.offset.checked_add(e.size).ok_or_else(|| corrupt(format!("{} overflows", e.path)))?;
        if end_in_first <= f.rawlen {
            return Ok(first..first + 1);
        }
        if e.offset >= f.rawlen && e.offset > 0 {
            return Err(corrupt(format!(
                "{} starts at {}, past the end of frame {first} ({} bytes)",
                e.path, e.offset, f.rawlen
            )));
        }
        // A large file: starts at 0 of its first frame and fills whole frames.
        if e.offset != 0 {
            return Err(corrupt(format!("{} spans frames but does not start one", e.path)));
        }
        let mut left = e.size;
        let mut i = first;
        while left > 0 {
            let f = self.frames.get(i).ok_or_else(|| corrupt(format!("{} runs past the last frame", e.path)))?;
            if f.rawlen == 0 {
                return Err(corrupt(format!("{} spans an empty frame", e.path)));
            }
            left = left.saturating_sub(f.rawlen);
            i += 1;
        }
        Ok(first..i)
    }
}

/// Builds frames and packs from file contents, in order. Used by snapshot.
///
/// Frames are hashed and compressed on a thread of their own while the
/// caller reads and hashes the next files: on two cores, reading and
/// compressing overlap. At most two raw frames wait for it.
pub struct PackBuilder {
    raw: Vec<u8>,
    pack: Vec<u8>,
    /// Frames of the current pack (their `pack` is set by the caller).
    pack_frames: Vec<Frame>,
    /// Frames flushed so far, over all packs, for numbering.
    frames_before: u32,
    /// Frames sent to the compressor and not yet back.
    pending: u32,
    to_worker: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    from_worker: std::sync::mpsc::Receiver<Compressed>,
    worker: Option<std::thread::JoinHandle<()>>,
}

struct Compressed {
    bytes: Vec<u8>,
    rawlen: u64,
    hash: String,
}

/// A finished pack: its bytes, id, and frames (whose `pack` index is left
/// to the caller, who knows where the pack lands in its manifest).
pub struct BuiltPack {
    pub id: String,
    pub bytes: Vec<u8>,
    pub frames: Vec<Frame>,
}

impl PackBuilder {
    pub fn new(level: i32) -> Self {
        let (to_worker, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(1);
        let (tx, from_worker) = std::sync::mpsc::channel::<Compressed>();
        let worker = std::thread::Builder::new()
            .name("sandcache-compress".into())
            .spawn(move || {
                for raw in rx {
                    let hash = blake3::hash(&raw).to_hex().to_string();
                    let bytes = zstd::bulk::compress(&raw, level).expect("compressing into memory cannot fail");
                    if tx.send(Compressed { bytes, rawlen: raw.len() as u64, hash }).is_err() {
                        return;
                    }
                }
            })
            .expect("spawning the compressor thread");
        PackBuilder {
            raw: Vec::with_capacity(FRAME_RAW),
            pack: Vec::with_capacity(PACK_CAPACITY),
            pack_frames: Vec::new(),
            frames_before: 0,
            pending: 0,
            to_worker: Some(to_worker),
            from_worker,
            worker: Some(worker),
        }
    }

    /// Global index of the frame being filled.
    fn current_frame(&self) -> u32 {
        self.frames_before + self.pack_frames.len() as u32 + self.pending
    }

    /// Adds a file's content; returns (first frame, offset in it). A file
    /// larger than what is left of the frame starts a new one; one larger
    /// than a frame fills whole frames of its own. Full packs are returned.
    pub fn add(&mut self, mut data: &[u8], done: &mut Vec<BuiltPack>) -> (u32, u64) {
        if !self.raw.is_empty() && self.raw.len() + data.len() > FRAME_RAW {
            self.close_frame(done);
        }
        let at = (self.current_frame(), self.raw.len() as u64);
        loop {
            let room = FRAME_RAW - self.raw.len();
            let n = room.min(data.len());
            self.raw.extend_from_slice(&data[..n]);
            data = &data[n..];
            if data.is_empty() {
                break;
            }
            self.close_frame(done);
        }
        self.collect(false, done);
        at
    }

    /// Adds a run of a file's content in frames of its own, each of at most
    /// `frame_raw` bytes (a power of two up to [`FRAME_RAW`]); returns the
    /// first frame (at offset 0). The runs of one file, added in order in
    /// multiples of `frame_raw` but for the last, lie in consecutive frames
    /// cut at multiples of `frame_raw` of the file: two versions of a file
    /// changed in place then share every frame they hold the same.
    pub fn add_in_frames(&mut self, data: &[u8], frame_raw: usize, done: &mut Vec<BuiltPack>) -> (u32, u64) {
        let frame_raw = frame_raw.clamp(1, FRAME_RAW);
        self.close_frame(done);
        let at = (self.current_frame(), 0);
        for chunk in data.chunks(frame_raw) {
            self.raw.extend_from_slice(chunk);
            self.close_frame(done);
        }
        self.collect(false, done);
        at
    }

    fn close_frame(&mut self, done: &mut Vec<BuiltPack>) {
        if self.raw.is_empty() {
            return;
        }
        let raw = std::mem::replace(&mut self.raw, Vec::with_capacity(FRAME_RAW));
        self.pending += 1;
        self.to_worker.as_ref().expect("open until finish").send(raw).expect("the compressor thread runs until finish");
        self.collect(false, done);
    }

    /// Appends compressed frames, in order, as they come back.
    fn collect(&mut self, wait: bool, done: &mut Vec<BuiltPack>) {
        while self.pending > 0 {
            let c = if wait {
                self.from_worker.recv().expect("the compressor answers every frame")
            } else {
                match self.from_worker.try_recv() {
                    Ok(c) => c,
                    Err(_) => return,
                }
            };
            self.pending -= 1;
            self.pack_frames.push(Frame {
                pack: 0,
                offset: self.pack.len() as u64,
                clen: c.bytes.len() as u64,
                rawlen: c.rawlen,
                hash: c.hash,
            });
            self.pack.extend_from_slice(&c.bytes);
            if self.pack.len() >= PACK_TARGET {
                self.close_pack(done);
            }
        }
    }

    fn close_pack(&mut self, done: &mut Vec<BuiltPack>) {
        if self.pack_frames.is_empty() {
            return;
        }
        let bytes = std::mem::replace(&mut self.pack, Vec::with_capacity(PACK_CAPACITY));
        let frames = std::mem::take(&mut self.pack_frames);
        self.frames_before += frames.len() as u32;
        done.push(BuiltPack { id: blake3::hash(&bytes).to_hex().to_string(), bytes, frames });
    }

    /// Flushes the last frame and pack.
    pub fn finish(mut self, done: &mut Vec<BuiltPack>) {
        self.close_frame(done);
        self.to_worker = None;
        self.collect(true, done);
        self.close_pack(done);
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// Bytes a salted object starts with: a zstd skippable frame (4 bytes of
/// magic, 4 of length, then the nonce).
pub const SALT_LEN: u64 = 8 + SALT_NONCE as u64;
/// The nonce in a salted object's skippable frame.
const SALT_NONCE: usize = 16;
/// The skippable frame's magic (zstd reserves 0x184D2A50 to 0x184D2A5F for
/// frames every decoder skips).
const SKIPPABLE_MAGIC: u32 = 0x184D_2A5E;

/// A pool object (a pack, or a manifest piece) salted: the same bytes after
/// a zstd skippable frame holding `nonce`, so its BLAKE3, its name in the
/// pool, differs from the unsalted object's.
///
/// For when the canonical name is taken by a bad object that cannot be
/// overwritten (S3 refuses the overwrite under `If-None-Match`, and the
/// name would be the bad object's anyway). Every frame of a salted pack is
/// [`SALT_LEN`] bytes further in, so a manifest naming it shifts its frames'
/// offsets by that much; readers fetch frames by offset and never see the
/// skippable frame, and a zstd decoder reading the whole object (a piece's
/// [`Manifest::decode`]) skips it.
pub fn salt(bytes: &[u8], nonce: [u8; SALT_NONCE]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SALT_LEN as usize + bytes.len());
    out.extend_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
    out.extend_from_slice(&(SALT_NONCE as u32).to_le_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(bytes);
    out
}

/// Decompresses a frame and checks its length and hash.
pub fn decode_frame(compressed: &[u8], frame: &Frame) -> Result<Vec<u8>, ExtractError> {
    Ok(FrameDecoder::default().decode(compressed, frame)?.to_vec())
}

/// Decodes frames one after another into one buffer: a restore's writer
/// decodes many, and a fresh 4 MiB buffer for each costs a page fault and a
/// cleared page per 4 KiB.
#[derive(Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    dctx: Option<zstd::bulk::Decompressor<'static>>,
}

impl FrameDecoder {
    /// Decompresses a frame and checks its length and hash; the bytes stay
    /// valid until the next call.
    pub fn decode(&mut self, compressed: &[u8], frame: &Frame) -> Result<&[u8], ExtractError> {
        let raw = self.decode_unhashed(compressed, frame)?;
        if blake3::hash(raw).to_hex().as_str() != frame.hash {
            return Err(ExtractError::Corrupt {
                detail: format!("frame at {} of pack {} fails its BLAKE3 check", frame.offset, frame.pack),
                source: None,
            });
        }
        Ok(raw)
    }

    /// [`FrameDecoder::decode`] without the frame's hash: its length is
    /// still bounded and checked. Only for a caller that checks every byte
    /// it uses against a hash of its own before anyone can use it (a
    /// restore: each file against the manifest's hash for it): the frame's
    /// hash would go over the same bytes a second time.
    pub fn decode_unhashed(&mut self, compressed: &[u8], frame: &Frame) -> Result<&[u8], ExtractError> {
        let corrupt = |detail: String| ExtractError::Corrupt { detail, source: None };
        let rawlen = usize::try_from(frame.rawlen).unwrap_or(usize::MAX);
        if rawlen > FRAME_RAW {
            return Err(corrupt(format!("frame at {} claims {} bytes", frame.offset, frame.rawlen)));
        }
        if self.buf.len() < rawlen {
            self.buf.resize(rawlen, 0);
        }
        // The frame's raw length bounds the output: a frame that expands
        // past it fails here, having written no more than that.
        let out = &mut self.buf[..rawlen];
        let dctx = match &mut self.dctx {
            Some(d) => Ok(d),
            none => zstd::bulk::Decompressor::new().map(|d| none.insert(d)),
        };
        let n = dctx.and_then(|d| d.decompress_to_buffer(compressed, out)).map_err(|e| {
            corrupt(format!(
                "frame at {} of pack {} does not decode within its {} bytes: {e}",
                frame.offset, frame.pack, frame.rawlen
            ))
        })?;
        if n != rawlen {
            return Err(corrupt(format!("frame at {} decodes to {n} bytes, not {}", frame.offset, frame.rawlen)));
        }
        Ok(&self.buf[..rawlen])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built(files: &[&[u8]]) -> (BuiltPack, Vec<(u32, u64)>) {
        let mut done = Vec::new();
        let mut b = PackBuilder::new(3);
        let at: Vec<(u32, u64)> = files.iter().map(|f| b.add(f, &mut done)).collect();
        b.finish(&mut done);
        assert_eq!(done.len(), 1);
        (done.remove(0), at)
    }

    /// A file added in frames of its own is cut at fixed offsets, whatever
    /// came before it, and nothing after it shares its last frame: two
    /// versions that differ in one place share every other frame.
    #[test]
    fn a_file_added_in_frames_shares_its_unchanged_frames_with_another_version() {
        let v1: Vec<u8> = (0..3 * CHUNK_RAW as u32 + 100).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let mut v2 = v1.clone();
        v2[CHUNK_RAW + 7] ^= 1;
        let frames = |before: &[u8], file: &[u8]| {
            let mut done = Vec::new();
            let mut b = PackBuilder::new(3);
            b.add(before, &mut done);
            // In two runs, as a snapshot reads a large file.
            let at = b.add_in_frames(&file[..2 * CHUNK_RAW], CHUNK_RAW, &mut done);
            b.add_in_frames(&file[2 * CHUNK_RAW..], CHUNK_RAW, &mut done);
            let after = b.add(b"after", &mut done);
            b.finish(&mut done);
            let frames: Vec<Frame> = done.into_iter().flat_map(|p| p.frames).collect();
            assert_eq!((at.0, at.1, after.0, after.1), (1, 0, 5, 0), "its frames are its own");
            frames[1..5].iter().map(|f| (f.rawlen, f.hash.clone())).collect::<Vec<_>>()
        };
        let (a, b) = (frames(b"a small file", &v1), frames(b"another, longer small file", &v2));
        let lens: Vec<u64> = a.iter().map(|f| f.0).collect();
        assert_eq!(lens, [CHUNK_RAW as u64, CHUNK_RAW as u64, CHUNK_RAW as u64, 100]);
        let same: Vec<bool> = a.iter().zip(&b).map(|(x, y)| x == y).collect();
        assert_eq!(same, [true, false, true, true]);
    }

    /// A salted pack has another id, and every frame decodes at the
    /// manifest's offset moved by [`SALT_LEN`]; a decoder reading the whole
    /// object skips the salt.
    #[test]
    fn a_salted_pack_keeps_its_frames_under_another_id() {
        let big: Vec<u8> = (0..FRAME_RAW as u32 + 5000).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let files: [&[u8]; 3] = [b"first file", &big, b"third"];
        let (p, at) = built(&files);
        assert!(p.frames.len() >= 2, "{} frames", p.frames.len());
        let salted = salt(&p.bytes, [7; 16]);
        assert_eq!(salted.len() as u64, p.bytes.len() as u64 + SALT_LEN);
        let id = blake3::hash(&salted).to_hex().to_string();
        assert_ne!(id, p.id, "another name in the pool");
        assert_ne!(salt(&p.bytes, [8; 16]), salted, "the nonce makes the name");
        let mut raw = Vec::new();
        for f in &p.frames {
            let at = (f.offset + SALT_LEN) as usize;
            let bytes = &salted[at..at + f.clen as usize];
            raw.extend(decode_frame(bytes, f).unwrap());
        }
        let (first, off) = at[0];
        assert_eq!((first, off), (0, 0));
        assert_eq!(&raw[..files[0].len()], files[0]);
        assert_eq!(&raw[raw.len() - files[2].len()..], files[2]);
        // Read whole as a zstd stream, the salt is skipped and the frames
        // follow one another.
        let whole = zstd::stream::decode_all(&salted[..]).unwrap();
        assert_eq!(whole, raw);
    }

    /// A manifest piece salted still decodes, as any reader (this version
    /// or an older one) decodes a piece.
    #[test]
    fn a_salted_piece_decodes_as_the_piece() {
        let m = Manifest {
            version: VERSION,
            created_ms: 0,
            packs: Vec::new(),
            frames: Vec::new(),
            entries: vec![Entry::dir("npm".into(), 0o755, 1), Entry::file("a".into(), 0o644, 1, 0, "0".repeat(64))],
            pieces: Vec::new(),
            hot: Vec::new(),
        };
        let bytes = m.encode();
        let salted = salt(&bytes, rand_nonce());
        assert_ne!(blake3::hash(&salted), blake3::hash(&bytes));
        assert_eq!(Manifest::decode(&salted).unwrap(), m);
    }

    fn rand_nonce() -> [u8; 16] {
        *blake3::hash(b"a nonce for a test").as_bytes().first_chunk().unwrap()
    }
}
