//! Packs downloading whole while the manifest is read, and frames kept
//! from phase one for the tail.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use sandcache_archive::pack::{Frame, Manifest, PackRef};
use sandcache_store::{Store, StoreError};

use crate::layout::pack_key;

use super::plan::Slice;

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

/// A pack of `size` bytes (the root's word, within [`PREFETCH_BYTES`]),
/// downloaded whole: a large one in parallel ranges of [`SPLIT_AT`] or
/// more, at most [`SPLIT_STREAMS`] (a connection to S3 moves some 90 MB/s;
/// a delta's one new pack of a few MB is otherwise held to that), each
/// range streamed into its own part of one buffer. A pack that is not as
/// long as the root says is not prefetched: the restore's own requests
/// report it.
async fn get_split(store: &dyn Store, key: &str, size: u64) -> Result<Bytes, String> {
    let chain = |e: StoreError| crate::error::error_chain(&e);
    if size < 2 * SPLIT_AT {
        return get_all(store, key).await.map_err(chain);
    }
    let step = size.div_ceil(size.div_ceil(SPLIT_AT).min(SPLIT_STREAMS));
    let mut all = vec![0u8; size as usize];
    let parts = all.chunks_mut(step as usize).enumerate().map(|(i, part)| async move {
        let start = i as u64 * step;
        let mut obj = store.get_range(key, start..start + part.len() as u64).await.map_err(chain)?;
        let mut at = 0;
        while let Some(chunk) = obj.stream.next().await {
            let chunk = chunk.map_err(chain)?;
            let Some(to) = part.get_mut(at..at + chunk.len()) else {
                return Err(format!("`{key}`: a range longer than asked"));
            };
            to.copy_from_slice(&chunk);
            at += chunk.len();
        }
        match (obj.size, at) == (size, part.len()) {
            true => Ok(()),
            false => Err(format!("`{key}`: not the {size} bytes its root says")),
        }
    });
    futures::future::try_join_all(parts).await?;
    Ok(all.into())
}

/// A pack this large or more is prefetched in ranges (see [`get_split`]).
const SPLIT_AT: u64 = 1 << 20;

/// Most ranges one pack is prefetched in.
const SPLIT_STREAMS: u64 = 6;

/// Whole packs downloading while a root's pieces are fetched and the
/// manifest validated, so the piece round trip costs no wall time. Only a
/// root's first packs, up to [`PREFETCH_BYTES`]; the rest are fetched by
/// range as before. Dropped (a failed or finished restore), it stops them.
pub(crate) struct Prefetch {
    packs: HashMap<String, tokio::sync::watch::Receiver<Option<Result<Bytes, String>>>>,
    tasks: Vec<tokio::task::AbortHandle>,
    /// Bytes of the packs downloaded whole (counted once, however many
    /// times they are sliced).
    pub(super) downloaded: Arc<AtomicU64>,
    /// Frames phase one fetched by range that the tail needs too, kept
    /// (compressed) so the tail does not fetch them again.
    tail_frames: TailFrames,
}

/// Frames kept from phase one for the tail: which ones it wants (by frame
/// index), the ones kept so far, and the room left for more.
#[derive(Default)]
struct TailFrames {
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
        Prefetch {
            packs: HashMap::new(),
            tasks: Vec::new(),
            downloaded: Arc::default(),
            tail_frames: TailFrames::default(),
        }
    }

    /// Another handle on the same downloads, for a second reader of the
    /// packs: it does not stop them when dropped, keeps no frames, and
    /// counts into the same `downloaded`.
    pub(crate) fn view(&self) -> Prefetch {
        Prefetch {
            packs: self.packs.clone(),
            tasks: Vec::new(),
            downloaded: self.downloaded.clone(),
            tail_frames: TailFrames::default(),
        }
    }

    /// Starts downloading a root's first packs (only roots with pieces: a
    /// whole manifest arrives in one request anyway).
    /// `hot_first`: only the packs marked hot, when there are any (the rest
    /// would take the link from them).
    pub(crate) fn start(store: &Arc<dyn Store>, key: &str, root: &Manifest, hot_first: bool) -> Prefetch {
        let hot_only = hot_first && root.packs.iter().any(|p| p.hot);
        Prefetch::start_where(store, key, root, |p| p.hot || !hot_only)
    }

    /// Starts downloading the root's first packs that `wanted` says (only
    /// roots with pieces: a whole manifest arrives in one request anyway).
    pub(crate) fn start_where(
        store: &Arc<dyn Store>,
        key: &str,
        root: &Manifest,
        wanted: impl Fn(&PackRef) -> bool,
    ) -> Prefetch {
        let mut p = Prefetch::none();
        if root.pieces.is_empty() || tokio::runtime::Handle::try_current().is_err() {
            return p;
        }
        let mut total = 0;
        for pack in root.packs.iter().filter(|p| wanted(p)) {
            if total + pack.size > PREFETCH_BYTES {
                break;
            }
            total += pack.size;
            let pkey = pack_key(key, root, &pack.id);
            let (tx, rx) = tokio::sync::watch::channel(None);
            let (store, k, downloaded) = (store.clone(), pkey.clone(), p.downloaded.clone());
            let size = pack.size;
            let task = tokio::spawn(async move {
                let got = get_split(store.as_ref(), &k, size).await;
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

    /// From now on, keeps a copy of each frame with slices in `tail` that
    /// passes through [`fetch_run`] (up to [`KEEP_BYTES`]), for the tail.
    pub(super) fn keep_for(&mut self, tail: &[Vec<Slice>]) {
        self.keep_frames(tail.iter().map(|p| !p.is_empty()).collect());
    }

    /// Keeps the frames of `m` that hold bytes besides the `slices` written
    /// now: a hot piece's frames that also hold files of a tail not known
    /// yet (every byte of a frame belongs to some file).
    pub(super) fn keep_uncovered(&mut self, m: &Manifest, slices: &[Vec<Slice>]) {
        let covered = |f: usize| slices[f].iter().map(|p| p.len).sum::<u64>();
        self.keep_frames(
            (0..m.frames.len()).map(|f| !slices[f].is_empty() && covered(f) < m.frames[f].rawlen).collect(),
        );
    }

    fn keep_frames(&mut self, wanted: Vec<bool>) {
        self.tail_frames.wanted = wanted;
        self.tail_frames.room = AtomicU64::new(KEEP_BYTES);
    }

    /// The kept frames, numbered as `from` numbers them, renumbered as `to`
    /// does (the same pack and offset); those `to` lacks are dropped.
    pub(super) fn renumber_tail_frames(&mut self, from: &Manifest, to: &Manifest) {
        let at = |m: &Manifest, f: &Frame| (m.packs[f.pack as usize].id.clone(), f.offset);
        let index: HashMap<(String, u64), u32> =
            to.frames.iter().enumerate().map(|(i, f)| (at(to, f), i as u32)).collect();
        let kept = std::mem::take(self.tail_frames.frames.get_mut().unwrap_or_else(|p| p.into_inner()));
        let renumbered = kept
            .into_iter()
            .filter_map(|(f, b)| index.get(&at(from, from.frames.get(f as usize)?)).map(|&t| (t, b)))
            .collect();
        *self.tail_frames.frames.get_mut().unwrap_or_else(|p| p.into_inner()) = renumbered;
    }

    /// Keeps no more frames (the tail's own fetches are not for later).
    pub(super) fn stop_keeping(&mut self) {
        self.tail_frames.wanted.clear();
    }

    /// Which frames it keeps for the tail, by index.
    #[cfg(test)]
    pub(super) fn wanted(&self) -> &[bool] {
        &self.tail_frames.wanted
    }

    pub(super) fn wants(&self, frame: u32) -> bool {
        self.tail_frames.wanted.get(frame as usize).copied().unwrap_or(false)
    }

    /// Keeps a copy of a wanted frame's bytes, if there is room.
    pub(super) fn keep(&self, frame: u32, bytes: &[u8]) {
        let len = bytes.len() as u64;
        if !self.wants(frame)
            || self.tail_frames.room.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| r.checked_sub(len)).is_err()
        {
            return;
        }
        self.tail_frames.frames.lock().unwrap_or_else(|p| p.into_inner()).insert(frame, Bytes::copy_from_slice(bytes));
    }

    /// The kept frames among `frames`, taken out.
    pub(super) fn take_tail_frames(&self, frames: impl Iterator<Item = u32>) -> Vec<(u32, Bytes)> {
        let mut kept = self.tail_frames.frames.lock().unwrap_or_else(|p| p.into_inner());
        frames.filter_map(|f| kept.remove(&f).map(|b| (f, b))).collect()
    }

    /// A prefetched pack's bytes, once downloaded; `None` when it was not
    /// prefetched or its download failed (the caller then fetches it).
    pub(super) async fn take(&self, pkey: &str) -> Option<Bytes> {
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
