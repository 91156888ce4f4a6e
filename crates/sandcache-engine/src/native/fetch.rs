//! Ranged downloads feeding frames to the writers, within the in-flight
//! budget.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::StreamExt;
use sandcache_archive::pack::Manifest;
use sandcache_store::Recycler;

use crate::error::Error;
use crate::layout::pack_key;

use super::plan::{Run, Slice};
use super::prefetch::Prefetch;
use super::restoring::Restoring;

/// Bytes of one frame's location and the slices of files in it.
pub(super) struct FrameJob {
    pub(super) frame: u32,
    pub(super) bytes: Bytes,
    /// Its share of the in-flight budget, returned once it is written.
    pub(super) _budget: tokio::sync::OwnedSemaphorePermit,
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
pub(super) struct Feed {
    pub(super) tx: tokio::sync::mpsc::Sender<FrameJob>,
    pub(super) budget: Arc<tokio::sync::Semaphore>,
    pub(super) stop: tokio::sync::watch::Receiver<bool>,
}

impl Feed {
    /// Waits for room for `len` compressed bytes; `None` once the writers
    /// stopped.
    pub(super) async fn room(&mut self, len: u64) -> Option<tokio::sync::OwnedSemaphorePermit> {
        tokio::select! {
            permit = room_for(&self.budget, len) => Some(permit),
            () = stopped(&mut self.stop) => None,
        }
    }

    /// Queues a frame for the writers; `false` once they stopped.
    pub(super) async fn send(&mut self, job: FrameJob) -> bool {
        tokio::select! {
            sent = self.tx.send(job) => sent.is_ok(),
            () = stopped(&mut self.stop) => false,
        }
    }
}

/// Resolves once a writer failed (never, if nobody can say so any more).
pub(super) async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Compressed bytes downloaded and not yet written, over all fetches, in
/// KiB: with incompressible content and 8 fetches, this is what keeps a
/// restore's peak RSS within 128 MiB.
pub(super) const IN_FLIGHT_KIB: u32 = 32 << 10;

/// What every ranged fetch of one [`write_frames`] call shares.
///
/// [`write_frames`]: super::writers::write_frames
#[derive(Clone, Copy)]
pub(super) struct Fetches<'a> {
    pub(super) r: &'a Restoring<'a>,
    pub(super) m: &'a Manifest,
    pub(super) slices: &'a [Vec<Slice>],
    /// Bytes downloaded by range (a prefetched pack's count once, apart).
    pub(super) transferred: &'a AtomicU64,
    /// Buffers for frames split across chunks.
    pub(super) frame_bufs: &'a Recycler,
    pub(super) prefetch: &'a Prefetch,
}

/// Fetches one run (a byte range of one pack, or a prefetched pack's
/// slice of it) and feeds its frames to the writers.
pub(super) async fn fetch_run(f: &Fetches<'_>, (pack, range, frames): Run, mut feed: Feed) -> Result<(), Error> {
    let Fetches { r, m, slices, transferred, frame_bufs, prefetch } = *f;
    let (store, key, found, cancel, progress) = (r.store, r.key, r.found, &r.cancel, &r.opts.progress);
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
        if slices[frame as usize].is_empty() {
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
