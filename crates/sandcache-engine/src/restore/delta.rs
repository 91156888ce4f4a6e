//! A delta restore: the dir holds a native generation this tool restored,
//! and its state proves nothing in it changed since (the ctime bound the
//! snapshot index trusts, `State::restored_until_ns`); another native
//! generation is restored in place, writing only the units that differ
//! (see `native::delta` for the plan, `native::inplace` for the renames).
//!
//! 1. Both manifests, at once: the new one as any restore reads it
//!    (validated before anything is written), the old one by the name the
//!    state gives, and taken only when its digest is the one the state
//!    recorded.
//! 2. The plan, from the manifests and a check of the disk. Where it would
//!    write as much as a full restore (files and bytes), the full one is
//!    done instead.
//! 3. The tail marker (`DELTA_MARKER`) goes down and the state and index
//!    go, durably, before anything is written: from here on, a delta that
//!    fails or runs out of time leaves the state naming neither
//!    generation, no snapshot stores the dir (`incomplete`), and the next
//!    restore is a full one.
//! 4. The units that differ are written whole into a private staging dir
//!    on the dir's filesystem, by the usual restore (`native::restore_into`:
//!    only their frames fetched, every file checked against its hash),
//!    then put in place, unit by unit (`native::apply`).
//! 5. The state names the new generation, bound by the delta's end; the
//!    marker goes. The index is not rebuilt (as after a full restore).
//!
//! One phase always: a hot-first restore's delta writes its few units
//! before `hot-ready`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rustix::fs::{Mode, OFlags};

use crate::background::{CancelOnDrop, remove_in_background};
use crate::bad::Found;
use crate::bookkeeping::{
    DELTA_MARKER, Restored, ctime_bound, load_state, remove_durable, save_state_restored, write_durable,
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

/// A delta restore of generation `info` into the dir, when the dir's state
/// allows one and it writes less than a full restore. `Ok(None)`: restore
/// it in full. `Ok(Some(done))`: done and recorded. An error before the
/// marker (the new manifest unusable) leaves the dir and its state as they
/// were; one after it leaves every unit whole and the state naming no
/// generation.
pub(super) async fn restore_delta(
    job: &NativeRestore<'_>,
    info: &sandcache_store::ObjectInfo,
    root: Option<&sandcache_archive::pack::Manifest>,
) -> Result<Option<Done>, Error> {
    let NativeRestore { shared, key, target, opts, found } = *job;
    let store = shared.as_ref();
    let Some(held) = held(target, &shared.to_string()) else { return Ok(None) };
    // The live dir, held open, its name never followed.
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let Ok(live) = rustix::fs::open(&target.dir, dir_flags, Mode::empty()) else { return Ok(None) };
    let live = Arc::new(live);
    let started = Instant::now();

    // 1. Both manifests at once (the new root as a pointer gave it, pieces
    // held locally not fetched again); the old one only as the state knows
    // it, its bad objects not reported (it is only compared).
    let same = held.generation == info.key;
    let cache = native::PieceCache::open(&target.pieces_dir());
    let quiet = Found::default();
    let (pieces, old_pieces) = (
        native::Pieces { store, found, cache: cache.as_ref() },
        native::Pieces { store, found: &quiet, cache: cache.as_ref() },
    );
    let new = async {
        let root = match root {
            Some(root) => root.clone(),
            None => native::fetch_root(store, &info.key).await?,
        };
        native::whole(&pieces, root).await
    };
    let old = async {
        match same {
            true => None,
            false => Some(
                async { native::whole(&old_pieces, native::fetch_root(store, &held.generation).await?).await }.await,
            ),
        }
    };
    let (new, old) = tokio::join!(new, old);
    let (limits, dir) = (opts.limits, target.dir.clone());
    let new = tokio::task::spawn_blocking(move || {
        let new = new?;
        new.validate(&limits, &dir)?;
        Ok::<_, Error>(new)
    })
    .await
    .map_err(|e| Error::joined("the manifest's validation", e))??;
    let old = match old {
        None => None,
        Some(Ok(m)) => Some(m),
        Some(Err(e)) => {
            let why = crate::error::error_chain(&e);
            tracing::info!(target: "sandbox-cache", "the dir's generation {} cannot be read ({why}): a full restore", held.generation);
            return Ok(None);
        }
    };
    let (new, old) = (Arc::new(new), old.map(Arc::new));
    let old = old.unwrap_or_else(|| new.clone());
    if native::digest(&old) != held.digest {
        tracing::info!(
            target: "sandbox-cache",
            "{} is not the manifest the dir was restored from: a full restore", held.generation
        );
        return Ok(None);
    }

    // 2. The plan: the disk checked against the old generation.
    let cancel = Arc::new(AtomicBool::new(false));
    let _cancel_on_drop = CancelOnDrop(cancel.clone());
    let trust = native::Trust { until_ns: held.until_ns, owner: opts.owner };
    let (o, n, fd, stop) = (old.clone(), new.clone(), live.clone(), cancel.clone());
    let plan = tokio::task::spawn_blocking(move || native::plan(&o, &n, fd, trust, &stop))
        .await
        .map_err(|e| Error::joined("the delta's check", e))??;
    let Some(plan) = plan else {
        tracing::info!(target: "sandbox-cache", "{} cannot be read well enough for a delta: a full restore", target.dir.display());
        return Ok(None);
    };
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
    let until_ns = ctime_bound().await;

    // 5. The new generation, as a restore records it.
    let source = shared.to_string();
    let restored = Restored { until_ns, digest: native::digest(&new) };
    let fp = sandcache_archive::fingerprint::of_manifest(&new);
    save_state_restored(target, &source, key, &fp, &info.key, Some(restored));
    let _ = std::fs::remove_file(target.tail_path());
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
