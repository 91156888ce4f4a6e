//! A delta restore: the dir holds a native generation this tool restored,
//! and its state proves nothing in it changed since (the ctime bound the
//! snapshot index trusts, `State::restored_until_ns`); another native
//! generation is restored in place, writing only the units that differ
//! (see `native::delta` for the plan, `native::inplace` for the renames).
//!
//! 1. The old generation, from the moment the restore takes the lock
//!    ([`HeldCheck`], beside the reads that find what to restore): its
//!    manifest by the name the state gives (its root as its restore kept
//!    it, else the store's), taken only when its digest is the one the
//!    state recorded, then checked against the disk (`native::check`).
//!    Beside it, the new manifest as any restore reads it.
//! 2. The plan, from the two manifests and the check (`native::plan`),
//!    while the new manifest is validated (before anything is written).
//!    Where it would write as much as a full restore (files and bytes), the
//!    full one is done instead.
//! 3. The tail marker (`DELTA_MARKER`) goes down and the state and index
//!    go, durably, before anything is written: from here on, a delta that
//!    fails or runs out of time leaves the state naming neither
//!    generation, no snapshot stores the dir (`incomplete`), and the next
//!    restore is a full one.
//! 4. The units that differ are written whole into a private staging dir
//!    on the dir's filesystem, by the usual restore (`native::restore_into`:
//!    only their frames fetched, every file checked against its hash),
//!    then put in place, unit by unit (`native::apply`).
//! 5. The state names the new generation, bound by the delta's end (its
//!    digest and fingerprint made while the units were written); the
//!    marker goes. The index is not rebuilt (as after a full restore).
//!
//! One phase always: a hot-first restore's delta writes its few units
//! before `hot-ready`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use std::os::fd::OwnedFd;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use rustix::fs::{Mode, OFlags};
use sandcache_archive::pack::Manifest;
use sandcache_store::Store;

use crate::background::remove_in_background;
use crate::bad::Found;
use crate::bookkeeping::{
    DELTA_MARKER, Restored, ctime_now, ctime_passed, load_state, remove_durable, save_state_restored, write_durable,
};
use crate::error::Error;
use crate::native;
use crate::options::RestoreOptions;
use crate::outcome::{Done, RestoreMode, mb};
use crate::target::{DropStaging, Target};

use super::native::NativeRestore;

/// The generation a dir holds, as its state proves it.
struct Held {
    generation: String,
    until_ns: i128,
    digest: String,
}

/// The generation the dir holds, checked.
enum Checked {
    /// Its manifest, and what of it is on disk as restored.
    Intact(Arc<Manifest>, Arc<native::Intact>),
    /// Its manifest cannot be read.
    Unfetched(String),
    /// Its manifest is not the one the dir was restored from.
    NotHeld,
    /// The dir cannot be read well enough to tell.
    Unreadable,
}

type CheckResult = Arc<Result<Checked, Error>>;

/// What the dir's state proves it holds: a native generation of this
/// store, written by a restore (a ctime bound and the manifest's digest),
/// with no restore left unfinished (no tail marker). `None`: a full
/// restore.
fn held(target: &Target, store: &str) -> Option<Held> {
    if std::fs::symlink_metadata(target.tail_path()).is_ok() {
        return None;
    }
    let state = load_state(target)?;
    let generation = state.generation.filter(|g| crate::layout::generation_of(g).is_some())?;
    if state.store != store {
        return None;
    }
    Some(Held { generation, until_ns: state.restored_until_ns?, digest: state.digest? })
}

/// The generation the dir holds, fetched (its pieces from the local cache)
/// and checked against its recorded digest and against the disk in the
/// background, from the moment a restore takes the dir's lock: beside the
/// reads that find what to restore, not after them. Every delta candidate
/// of the restore awaits the same check. Dropped (the restore done, or
/// its deadline), the check stops.
pub(super) struct HeldCheck {
    held: Option<(Held, Arc<OwnedFd>)>,
    result: Option<Shared<BoxFuture<'static, CheckResult>>>,
    cancel: Arc<AtomicBool>,
    task: Option<tokio::task::AbortHandle>,
}

impl Drop for HeldCheck {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

impl HeldCheck {
    /// Starts the check when the dir's state names a native generation of
    /// `shared` (else there is nothing to check: any restore is full).
    pub(super) fn start(shared: &Arc<dyn Store>, target: &Target, opts: &RestoreOptions) -> HeldCheck {
        let cancel = Arc::new(AtomicBool::new(false));
        let none = || HeldCheck { held: None, result: None, cancel: Arc::new(AtomicBool::new(false)), task: None };
        let Some(held) = held(target, &shared.to_string()) else { return none() };
        // The live dir, held open, its name never followed.
        let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let Ok(live) = rustix::fs::open(&target.dir, dir_flags, Mode::empty()) else { return none() };
        let live = Arc::new(live);
        let (store, pieces_dir, fd, stop) = (shared.clone(), target.pieces_dir(), live.clone(), cancel.clone());
        let (generation, digest) = (held.generation.clone(), held.digest.clone());
        let trust = native::Trust { until_ns: held.until_ns, owner: opts.owner };
        let task = tokio::spawn(async move {
            // Its bad objects are not reported: it is only compared.
            let (cache, quiet) = (native::PieceCache::open(&pieces_dir), Found::default());
            let pieces = native::Pieces { store: store.as_ref(), found: &quiet, cache: cache.as_ref() };
            // Its root as the restore that wrote it kept it, else the
            // store's: trusted only through the digest, below.
            let old = async {
                let root = match cache.as_ref().and_then(|c| c.get_root(&generation)) {
                    Some(root) => root,
                    None => native::fetch_root(store.as_ref(), &generation).await?,
                };
                native::whole(&pieces, root).await
            };
            let started = Instant::now();
            let old = match old.await {
                Ok(old) => old,
                Err(e) => return Ok(Checked::Unfetched(crate::error::error_chain(&e))),
            };
            tokio::task::spawn_blocking(move || {
                if native::digest(&old) != digest {
                    return Ok(Checked::NotHeld);
                }
                let intact = native::check(&old, fd, trust, &stop)?;
                let ms = started.elapsed().as_millis();
                tracing::debug!(target: "sandbox-cache", "the dir's generation read and checked against the disk in {ms} ms");
                Ok(match intact {
                    Some(intact) => Checked::Intact(Arc::new(old), Arc::new(intact)),
                    None => Checked::Unreadable,
                })
            })
            .await
            .map_err(|e| Error::joined("the delta's check", e))?
        });
        let abort = task.abort_handle();
        let result = task.map(|r| Arc::new(r.unwrap_or_else(|e| Err(Error::joined("the delta's check", e)))));
        HeldCheck { held: Some((held, live)), result: Some(result.boxed().shared()), cancel, task: Some(abort) }
    }
}

/// A delta restore of generation `info` into the dir, when the dir's state
/// allows one and it writes less than a full restore. `Ok(None)`: restore
/// it in full. `Ok(Some(done))`: done and recorded. An error before the
/// marker (the new manifest unusable) leaves the dir and its state as they
/// were; one after it leaves every unit whole and the state naming no
/// generation.
pub(super) async fn restore_delta(
    job: &NativeRestore<'_>,
    info: &sandcache_store::ObjectInfo,
    root: Option<&Manifest>,
    check: &HeldCheck,
) -> Result<Option<Done>, Error> {
    let NativeRestore { shared, key, target, opts, found } = *job;
    let store = shared.as_ref();
    let (Some((held, live)), Some(checked)) = (&check.held, &check.result) else { return Ok(None) };
    let live = live.clone();
    let started = Instant::now();

    // 1. The new manifest (its root as a pointer gave it, pieces held
    // locally not fetched again); beside it, the check of the old one,
    // under way since the lock.
    // Restoring the generation the dir holds, they are one manifest.
    let same = held.generation == info.key;
    let cache = native::PieceCache::open(&target.pieces_dir());
    let pieces = native::Pieces { store, found, cache: cache.as_ref() };
    let new = async {
        if same {
            return Ok(match &*checked.clone().await {
                Ok(Checked::Intact(old, _)) => Some(old.clone()),
                // A full restore: below.
                _ => None,
            });
        }
        let root = match root {
            Some(root) => root.clone(),
            None => native::fetch_root(store, &info.key).await?,
        };
        if let Some(c) = &cache {
            c.put_root(&info.key, &root);
        }
        Ok::<_, Error>(Some(Arc::new(native::whole(&pieces, root).await?)))
    };
    let (new, checked) = tokio::join!(new, checked.clone());
    let new = new?;
    let checked = match &*checked {
        Ok(checked) => checked,
        Err(Error::Cancelled) => return Err(Error::Cancelled),
        Err(e) => {
            let why = crate::error::error_chain(e);
            tracing::info!(target: "sandbox-cache", "the delta's check failed ({why}): a full restore");
            return Ok(None);
        }
    };
    let (old, intact) = match checked {
        Checked::Intact(old, intact) => (old.clone(), intact.clone()),
        Checked::Unfetched(why) => {
            tracing::info!(target: "sandbox-cache", "the dir's generation {} cannot be read ({why}): a full restore", held.generation);
            return Ok(None);
        }
        Checked::NotHeld => {
            tracing::info!(
                target: "sandbox-cache",
                "{} is not the manifest the dir was restored from: a full restore", held.generation
            );
            return Ok(None);
        }
        Checked::Unreadable => {
            tracing::info!(target: "sandbox-cache", "{} cannot be read well enough for a delta: a full restore", target.dir.display());
            return Ok(None);
        }
    };
    let Some(new) = new else { return Ok(None) };
    let cancel = check.cancel.clone();

    // 2. The plan, from the two manifests and what the check found; beside
    // it, the new manifest validated (before anything is written).
    let (n, limits, dir) = (new.clone(), opts.limits, target.dir.clone());
    let validated = tokio::task::spawn_blocking(move || n.validate(&limits, &dir));
    let n = new.clone();
    let plan = tokio::task::spawn_blocking(move || native::plan(&old, &n, &intact));
    let (validated, plan) = tokio::join!(validated, plan);
    validated.map_err(|e| Error::joined("the manifest's validation", e))??;
    let plan = plan.map_err(|e| Error::joined("the delta's plan", e))?;
    tracing::debug!(
        target: "sandbox-cache",
        "delta {} → {}: {} units to write ({} files, {}), {} to move away, planned in {} ms",
        held.generation, info.key, plan.place.len(), plan.files_written, mb(plan.bytes_written),
        plan.remove.len(), started.elapsed().as_millis()
    );
    if !plan.worth_it() {
        tracing::info!(target: "sandbox-cache", "a delta would write everything: a full restore");
        return Ok(None);
    }

    // Of the generation the dir holds, the digest is the state's already.
    let (n, known) = (new.clone(), same.then(|| held.digest.clone()));
    let recorded = tokio::task::spawn_blocking(move || {
        (known.unwrap_or_else(|| native::digest(&n)), sandcache_archive::fingerprint::of_manifest(&n))
    });

    // 3. Neither generation, durably, before anything is written.
    write_durable(&target.tail_path(), DELTA_MARKER).map_err(Error::io("delta marker"))?;
    remove_durable(&[target.state_path(), target.index_path()]).map_err(Error::io("state"))?;

    // 4. The units that differ, whole, in staging; then in place.
    let mut sub = new.subset(plan.write.iter().map(|&i| &new.entries[i as usize]));
    sub.version = new.version;
    if let Some(p) = &opts.progress {
        p.expected.store(sub.packs.iter().map(|p| p.size).sum(), Ordering::Relaxed);
    }
    let staging = target.create_staging().map_err(Error::io("staging dir"))?;
    let mut dropped = DropStaging(Some(staging.clone()));
    let one_phase = RestoreOptions { hot_first: false, ..opts.clone() };
    let restoring = native::Restoring { store, key, opts: &one_phase, found, cancel: cancel.clone() };
    let (stats, _) = native::restore_into(&restoring, Arc::new(sub), &staging, native::Prefetch::none(), None).await?;
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Cancelled);
    }
    // From here the renaming thread owns staging and trash: it removes them
    // when it ends, even after this future is dropped at the deadline (it
    // stops at its next unit), never while it still takes units from them.
    dropped.0 = None;
    let trash = target.scratch("trash");
    let (n, owner, stop) = (new.clone(), opts.owner, cancel.clone());
    let applied = tokio::task::spawn_blocking(move || {
        let job = native::InPlace {
            plan: &plan,
            new: &n,
            live,
            staging: staging.fd(),
            trash: trash.clone(),
            owner,
            cancel: &stop,
        };
        let applied = native::apply(&job);
        remove_in_background(vec![staging.path.clone(), trash]);
        applied.map(|()| plan)
    })
    .await
    .map_err(|e| Error::joined("the delta's renames", e))?;
    let plan = applied?;
    if let Some(c) = &cache {
        c.keep();
    }
    // 5. The new generation, as a restore records it (its digest and
    // fingerprint made while the units were written); the bound recorded
    // at once, the restore returned once the coarse clock passed it.
    let until_ns = ctime_now();
    let (digest, fp) = recorded.await.map_err(|e| Error::joined("the delta's record", e))?;
    let source = shared.to_string();
    save_state_restored(target, &source, key, &fp, &info.key, Some(Restored { until_ns, digest }));
    let _ = std::fs::remove_file(target.tail_path());
    ctime_passed(until_ns).await;
    Ok(Some(Done {
        files: plan.files,
        bytes: plan.bytes,
        mode: RestoreMode::Delta,
        files_written: stats.files,
        bytes_written: stats.bytes,
        transferred: stats.transferred,
        ..Done::default()
    }))
}
