//! The writer threads: each frame decoded, and the slices of files it
//! holds written, into staging or into the live dir.

use std::collections::HashSet;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use sandcache_archive::ExtractError;
use sandcache_archive::pack::{self, Frame, Manifest};
use sandcache_store::Recycler;

use crate::bad::Found;
use crate::error::Error;
use crate::layout::pack_key;

use super::fetch::{Feed, Fetches, FrameJob, IN_FLIGHT_KIB, fetch_run};
use super::filesystem::{Umask, create, file_mode, io_err, set_meta};
use super::live::LiveDir;
use super::parts::PartHashes;
use super::plan::{Slice, plan_runs};
use super::prefetch::Prefetch;
use super::restoring::Restoring;

/// Where frames are written: a private staging dir (relative to its
/// held-open fd; `io` names it in errors), or the live dir of a restore's
/// second phase.
#[derive(Clone)]
pub(super) enum Sink {
    Staging { io: std::path::PathBuf, dir: Arc<OwnedFd>, exact: Umask, parts: Arc<PartHashes> },
    Live(Arc<LiveDir>),
}

/// The writer pool and the downloads feeding it: every frame with slices
/// is fetched (coalesced per pack), decoded, verified and written.
/// Returns (files, bytes, transferred).
pub(super) async fn write_frames(
    r: &Restoring<'_>,
    m: &Arc<Manifest>,
    slices: Arc<Vec<Vec<Slice>>>,
    sink: Sink,
    prefetch: &Prefetch,
) -> Result<(u64, u64, u64), Error> {
    let (key, opts, found, cancel) = (r.key, r.opts, r.found, &r.cancel);
    let (progress, concurrency, owner) = (opts.progress.clone(), opts.concurrency, opts.owner);
    // Frames kept from phase one need no fetch.
    let kept_frames = prefetch.take_tail_frames((0..slices.len() as u32).filter(|f| !slices[*f as usize].is_empty()));
    let have: HashSet<u32> = kept_frames.iter().map(|(f, _)| *f).collect();
    // Which byte ranges to fetch: needed frames, coalesced per pack.
    let runs = plan_runs(m, &slices, &have, |f| prefetch.wants(f), concurrency);

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
        let (rx, m, slices, error, cancel, files, bytes, progress, sink) = (
            rx.clone(),
            m.clone(),
            slices.clone(),
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
                match write_frame(&m, &slices, &sink, &job, owner, &mut decoder) {
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
            // A tail writer yields the CPU to the app booting beside it.
            crate::background::behind_the_app(work)
        }));
    }

    // Downloads, concurrently, each feeding frames as they complete.
    let transferred = AtomicU64::new(0);
    let budget = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_KIB as usize));
    // Frames that arrive split across chunks are gathered into buffers
    // recycled as they are written (a frame in flight holds its own, so the
    // budget still bounds them; a few wait for reuse).
    let frame_bufs = Recycler::new(8);
    let feed_of = || Feed { tx: tx.clone(), budget: budget.clone(), stop: stop.clone() };
    let shared = Fetches { r, m, slices: &slices, transferred: &transferred, frame_bufs: &frame_bufs, prefetch };
    let fetches = futures::stream::iter(runs.into_iter().map(|run| {
        let (feed, shared) = (feed_of(), &shared);
        async move { fetch_run(shared, run, feed).await }
    }))
    .buffer_unordered(concurrency.max(1))
    .try_collect::<Vec<()>>();
    let feed = {
        let mut feed = feed_of();
        async move {
            for (frame, bytes) in kept_frames {
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

/// Decodes one frame and writes the slices it holds, each whole file
/// checked against its hash.
fn write_frame(
    m: &Manifest,
    slices: &[Vec<Slice>],
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
    for p in &slices[job.frame as usize] {
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
            let part = e.frame.and_then(|f| m.frames.get(f as usize)).map_or(0, |f| f.rawlen);
            parts.add(p.entry, e.size, part, p.file_offset, data);
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
pub(super) fn suspect_file(found: &Found, key: &str, m: &Manifest, entry: usize) {
    let Some(e) = m.entries.get(entry) else { return };
    let Ok(span) = m.span_frames(e) else { return };
    let mut packs: Vec<u32> = span.filter_map(|f| m.frames.get(f).map(|f| f.pack)).collect();
    packs.dedup();
    for pack in packs.into_iter().filter_map(|p| m.packs.get(p as usize)) {
        found.add(&pack_key(key, m, &pack.id), pack.size, format!("{} fails its BLAKE3 check", e.path));
    }
}
