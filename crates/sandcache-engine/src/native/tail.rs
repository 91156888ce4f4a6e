//! Phase two of a hot-first restore: the tail (the files that are not
//! hot), learned from the whole manifest when phase one read hot pieces
//! only, and written into the live dir.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use sandcache_archive::pack::{Entry, Kind, Manifest};
use sandcache_store::Store;

use crate::bad::Found;
use crate::error::Error;

use super::live::{Expected, LiveDir, finish_tail};
use super::manifest::{corrupt, whole};
use super::plan::{Slice, slice_file};
use super::prefetch::Prefetch;
use super::restoring::{RestoreStats, Restoring};
use super::writers::{Sink, suspect_file, write_frames};
use sandcache_archive::pack::in_tail;

/// What a two-phase restore writes after the swap: the files that are not
/// hot.
pub(crate) struct Tail {
    pub(super) slices: Vec<Vec<Slice>>,
    /// The deferred entries (files with content).
    pub(super) entries: Vec<u32>,
    /// The packs downloading since the manifest was read, whole: the first
    /// ones may hold cold content too.
    pub(super) prefetch: Prefetch,
    /// When phase one restored hot pieces: the whole manifest, which the
    /// tail reads first.
    pub(super) pending: Option<PendingManifest>,
}

/// The whole manifest, not read yet: phase one restored a generation's hot
/// pieces, and the tail first reads the rest (its root's pieces), then
/// knows its files. Read after the
/// swap, not beside phase one: phase one then has the machine to itself
/// (hot-ready came 30 ms sooner on the storefront), and the tail has slack
/// while the app boots.
pub(crate) struct PendingManifest {
    pub(crate) root: Manifest,
    /// The target dir, which the whole manifest is validated against.
    pub(crate) dir: std::path::PathBuf,
    /// Pieces held locally (see [`super::piece_cache`]).
    pub(crate) cache: Option<Arc<super::piece_cache::PieceCache>>,
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
        let Some(PendingManifest { root, dir, cache }) = self.pending.take() else { return Ok((m, self)) };
        let hot = m;
        let started = std::time::Instant::now();
        let whole =
            whole(&super::manifest::Pieces { store, found, cache: cache.as_deref(), given: None, keep: false }, root)
                .await?;
        let limits = *limits;
        let whole = tokio::task::spawn_blocking(move || whole.validate(&limits, &dir).map(|()| whole))
            .await
            .map_err(|e| Error::joined("the manifest's validation", e))??;
        let same = |a: &Entry, b: &Entry| {
            (&a.path, a.kind, a.mode, a.mtime, a.size, &a.hash, &a.target, a.hot)
                == (&b.path, b.kind, b.mode, b.mtime, b.size, &b.hash, &b.target, b.hot)
        };
        let mut now = hot.entries.iter();
        let mut slices: Vec<Vec<Slice>> = vec![Vec::new(); whole.frames.len()];
        let mut entries = Vec::new();
        for (i, e) in whole.entries.iter().enumerate() {
            if !in_tail(e) {
                if !now.next().is_some_and(|h| same(h, e)) {
                    return Err(corrupt(format!("the hot piece disagrees with the manifest at {}", e.path)));
                }
                continue;
            }
            slice_file(&whole, i, e, &mut slices)?;
            entries.push(i as u32);
        }
        if now.next().is_some() {
            return Err(corrupt("the hot piece holds entries the manifest lacks".into()));
        }
        if let Some(c) = &cache {
            c.keep();
        }
        self.prefetch.renumber_tail_frames(&hot, &whole);
        tracing::debug!(
            target: "sandbox-cache",
            "the tail's manifest: {} entries, {} files for the tail, in {} ms",
            whole.entries.len(),
            entries.len(),
            started.elapsed().as_millis()
        );
        Ok((Arc::new(whole), Tail { slices, entries, prefetch: self.prefetch, pending: None }))
    }
}

/// Splits a restore's slices: the hot files now, every other file with
/// content later. Cold files that share a frame with hot ones wait too: the
/// tail decodes that frame once more for them (sliced from the prefetched
/// pack, or the copy phase one kept: never fetched twice), while writing
/// them now would hold up `hot-ready` by every such file. `None` when the
/// manifest has no hot set (everything is hot) or nothing is left for
/// later.
pub(super) fn split_hot(m: &Manifest, slices: Vec<Vec<Slice>>) -> (Vec<Vec<Slice>>, Option<Tail>) {
    if !m.has_tail() {
        return (slices, None);
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
    let (mut now, mut later) = (Vec::with_capacity(slices.len()), Vec::with_capacity(slices.len()));
    for frame in slices {
        let (l, n): (Vec<Slice>, Vec<Slice>) = frame.into_iter().partition(|p| deferred[p.entry as usize]);
        now.push(n);
        later.push(l);
    }
    (now, Some(Tail { slices: later, entries, prefetch: Prefetch::none(), pending: None }))
}

/// The second phase: the tail's files, written into the live dir (which
/// the worker may already be using and changing). Each file appears whole
/// or not at all: written under a temporary name in its own directory, then
/// renamed into place, unless the worker made that path meanwhile (left
/// alone). A directory the worker removed or replaced loses its files: they
/// are a cold miss, fetched again by the app.
pub(crate) async fn restore_tail(
    r: &Restoring<'_>,
    m: Arc<Manifest>,
    tail: Tail,
    live: Arc<LiveDir>,
) -> Result<(RestoreStats, Arc<Manifest>), Error> {
    let (store, key, opts, found, cancel) = (r.store, r.key, r.opts, r.found, &r.cancel);
    let owner = opts.owner;
    if tail.pending.is_some() {
        live.expect(Expected::Unknown);
    }
    let (m, tail) = tail.resolve(store, m, &opts.limits, found).await?;
    live.expect(Expected::Files(m.clone(), tail.entries.clone()));
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Cancelled);
    }
    let slices = Arc::new(tail.slices);
    let sink = Sink::Live(live.clone());
    let mut prefetch = tail.prefetch;
    prefetch.stop_keeping();
    let (files, bytes, transferred) = write_frames(r, &m, slices, sink, &prefetch).await?;
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

#[cfg(test)]
mod tests {
    use sandcache_archive::pack::{self, Frame, PackRef};

    use super::*;
    use crate::native::pieces::split;

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
        let slice = |entry: u32, at: u64| Slice { entry, at, len: 10, file_offset: 0 };
        let slices = vec![vec![slice(1, 0), slice(2, 10)], vec![slice(3, 0)]];
        let (now, tail) = split_hot(&m, slices);
        let tail = tail.expect("a tail");
        let entries = |slices: &[Vec<Slice>]| slices.iter().flatten().map(|p| p.entry).collect::<Vec<_>>();
        assert_eq!(entries(&now), vec![1]);
        assert_eq!(entries(&tail.slices), vec![2, 3]);
        assert_eq!(tail.entries, vec![2, 3]);

        // No hot entry: no hot set, one phase.
        let mut cold = m.clone();
        cold.entries.iter_mut().for_each(|e| e.hot = false);
        let (now, tail) = split_hot(&cold, vec![vec![slice(1, 0), slice(2, 10)], vec![slice(3, 0)]]);
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
        p.keep_uncovered(&hot, &[vec![slice(1, 0)]]);
        assert_eq!(p.wanted(), [true], "its frame holds a tail file too: kept for the tail");
        p.keep_uncovered(&hot, &[vec![Slice { len: 20, ..slice(1, 0) }]]);
        assert_eq!(p.wanted(), [false], "a frame phase one writes whole");
        assert!(split(&cold).0.hot.is_empty());
        let mut most = m.clone();
        most.entries[2].hot = true;
        assert!(split(&most).0.hot.is_empty(), "3 of 4 entries");
    }
}
