//! Restoring a native generation: its manifest (or hot pieces) read,
//! the generation written into a new staging dir, and after the swap, for
//! a hot-first restore, its tail written into the live dir.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use sandcache_archive::pack::Manifest;
use sandcache_store::Store;

use crate::background::{CancelOnDrop, remove_in_background};
use crate::bad::{Found, Known};
use crate::error::Error;
use crate::native;
use crate::options::RestoreOptions;
use crate::outcome::{Done, mb};
use crate::target::{DropStaging, Staging, Target};

/// One native generation's restore: the store, the key it is under, the
/// dir, the options, and the bad pool objects found on the way.
#[derive(Clone, Copy)]
pub(super) struct NativeRestore<'a> {
    pub(super) shared: &'a Arc<dyn Store>,
    pub(super) key: &'a str,
    pub(super) target: &'a Target,
    pub(super) opts: &'a RestoreOptions,
    pub(super) found: &'a Arc<Found>,
    /// Pieces given beside the key's pointer, when it was read.
    pub(super) given: Option<&'a crate::layout::GivenPieces>,
}

/// Phase two of a hot-first restore: the tail, into the live dir. Dropped
/// at the deadline, it cancels its writers, and its temporary files go.
pub(super) async fn phase_two(
    job: &NativeRestore<'_>,
    m: Arc<Manifest>,
    tail: native::Tail,
    staging: &Staging,
) -> Result<(native::RestoreStats, Arc<Manifest>), Error> {
    let NativeRestore { shared, key, target, opts, found, .. } = *job;
    let started = Instant::now();
    let root = target.live_root(staging).map_err(Error::io("live dir"))?;
    let live = Arc::new(native::LiveDir::new(root));
    // Dropped in reverse: the writers are told to stop, then the temporary
    // files of unfinished large files go, at once (the deadline, an error).
    // A tail that does not complete also moves away each npm package dir
    // it left without some of its files (Deno would take it for complete),
    // to be removed like any trash.
    struct RemoveParts(Arc<native::LiveDir>, Target);
    impl Drop for RemoveParts {
        fn drop(&mut self) {
            self.0.remove_parts();
            let moved = self.0.unland_incomplete_packages(|| self.1.scratch("trash"));
            if !moved.is_empty() {
                tracing::warn!(
                    target: "sandbox-cache",
                    "the tail did not land: {} npm package dirs missing files moved away, for the app to fetch again",
                    moved.len()
                );
                remove_in_background(moved);
            }
        }
    }
    let _parts = RemoveParts(live.clone(), target.clone());
    let cancel = Arc::new(AtomicBool::new(false));
    let _guard = CancelOnDrop(cancel.clone());
    let restoring = native::Restoring { store: shared.as_ref(), key, opts, found, cancel };
    let (stats, m) = native::restore_tail(&restoring, m, tail, live.clone()).await?;
    let (left_alone, missed) = (live.left_alone.load(Ordering::Relaxed), live.missed.load(Ordering::Relaxed));
    tracing::debug!(
        target: "sandbox-cache",
        "tail: {} files ({}) in {} ms ({} fetched by both phases); {left_alone} left to what the app made meanwhile, {missed} under dirs it removed",
        stats.files,
        mb(stats.bytes),
        started.elapsed().as_millis(),
        mb(stats.transferred)
    );
    Ok((stats, m))
}

/// What one candidate's restore into staging gives: its outcome, the
/// staging dir, a native generation's manifest and key, and the tail of a
/// hot-first restore.
pub(super) type Staged = (Done, Staging, Option<(Arc<Manifest>, String)>, Option<native::Tail>);

/// Restores one native generation into a new staging dir. Bad pool
/// objects found go into `found`. A hot-first restore first learns which
/// are known bad (`known`, read once per restore, beside the root): a
/// generation naming one is restored in one phase, so that a bad cold pack
/// makes it fall through before the swap, never leaves a partial tree.
pub(super) async fn restore_native(
    job: &NativeRestore<'_>,
    info: &sandcache_store::ObjectInfo,
    root: Option<&Manifest>,
    known: &tokio::sync::OnceCell<Known>,
) -> Result<Staged, Error> {
    let NativeRestore { shared, target, opts, .. } = *job;
    let store = shared.as_ref();
    let started = Instant::now();
    // The root first (unless a pointer gave it); then its pieces, while the
    // first packs download.
    let fetch_root = async {
        match root {
            Some(root) => Ok(root.clone()),
            None => native::fetch_root(store, &info.key).await,
        }
    };
    let root = match opts.hot_first {
        true => {
            let (label, bad_path) = (shared.to_string(), target.bad_path());
            let load = || Known::load(store, &bad_path, &label);
            let (root, known) = tokio::join!(fetch_root, known.get_or_init(load));
            let root = root?;
            if let Some(object) = known.named_by(&root) {
                tracing::info!(
                    target: "sandbox-cache",
                    "{} names {object}, reported bad: restoring it in one phase", info.key
                );
                let opts = RestoreOptions { hot_first: false, ..opts.clone() };
                return restore_native_root(&NativeRestore { opts: &opts, ..*job }, info, root, started).await;
            }
            root
        }
        false => fetch_root.await?,
    };
    restore_native_root(job, info, root, started).await
}

/// [`restore_native`] once the root is in.
async fn restore_native_root(
    job: &NativeRestore<'_>,
    info: &sandcache_store::ObjectInfo,
    root: Manifest,
    started: Instant,
) -> Result<Staged, Error> {
    let NativeRestore { shared, key, target, opts, found, given } = *job;
    let store = shared.as_ref();
    let prefetch = native::Prefetch::start(shared, key, &root, opts.hot_first);
    if let Some(p) = &opts.progress {
        let total: u64 = root.packs.iter().map(|p| p.size).sum();
        p.expected.store(total, Ordering::Relaxed);
    }
    // Hot-first, with hot pieces: those alone before the swap, the whole
    // manifest after it, for the tail.
    let cache = native::PieceCache::open(&target.pieces_dir()).map(Arc::new);
    if let Some(c) = &cache {
        c.put_root(&info.key, &root);
    }
    let pieces = native::Pieces { store, found, cache: cache.as_deref(), given, keep: opts.remember };
    let hot = match opts.hot_first {
        true => native::usable_hot(&pieces, &root, &opts.limits, &target.dir, &info.key).await,
        false => None,
    };
    let (m, pending, what) = match hot {
        Some(hot) => {
            let pending = native::PendingManifest { root, dir: target.dir.clone(), cache: cache.clone() };
            (hot, Some(pending), "hot pieces of")
        }
        None => {
            let m = native::whole(&pieces, root).await?;
            m.validate(&opts.limits, &target.dir)?;
            (m, None, "manifest")
        }
    };
    tracing::debug!(
        target: "sandbox-cache",
        "{what} {}: {} entries, {} packs, fetched and validated in {} ms",
        info.key,
        m.entries.len(),
        m.packs.len(),
        started.elapsed().as_millis()
    );
    let m = Arc::new(m);
    let staging = target.create_staging().map_err(Error::io("staging dir"))?;
    // Dropped at the deadline, this future still removes its staging dir,
    // after the cancel below (declared later, dropped first) stops its
    // writers.
    let mut staging = DropStaging(Some(staging));
    let cancel = Arc::new(AtomicBool::new(false));
    let guard = CancelOnDrop(cancel.clone());
    let at = staging.0.clone().expect("set above");
    let restoring = native::Restoring { store, key, opts, found, cancel };
    let result = native::restore_into(&restoring, m.clone(), &at, prefetch, pending).await;
    drop(guard);
    let (s, tail) = result?;
    if let Some(c) = &cache {
        c.keep();
    }
    staging.0 = None;
    let done = Done { files: s.files, bytes: s.bytes, transferred: s.transferred, ..Done::default() };
    Ok((done, at, Some((m, info.key.clone())), tail))
}
