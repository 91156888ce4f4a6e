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
//! 2. As soon as both manifests are in, the large files at the top whose
//!    content changed (Deno's caches) start to be written into a private
//!    staging dir on the dir's filesystem, the frames the old and new
//!    versions share copied from the old file (`native::patch`: only if its
//!    fd is as restored), beside all that follows until the plan is made;
//!    and what the manifests say differs is found
//!    (`native::diff`). Where that alone writes as much as a full restore
//!    (files and bytes), the full one is done instead. The new manifest is
//!    validated whole beside what follows, and before the marker; what is
//!    staged is validated on its own before it is written.
//! 3. The tail marker (`DELTA_MARKER`) goes down and the state and index
//!    go, durably, beside the staging below and before the live dir is
//!    touched (a blocking task holding the dir's lock, so that a restore
//!    cut meanwhile leaves the dir to no other until it ends): from here
//!    on, a delta that fails or runs out of time leaves the state naming
//!    neither generation, no snapshot stores the dir (`incomplete`), and
//!    the next restore is a full one.
//! 4. The other units that differ are written whole into the staging dir,
//!    by the usual restore (`native::restore_into`:
//!    only their frames fetched, every file checked against its hash),
//!    while the disk check ends. The check's findings complete the plan
//!    (`Diff::plan`): a unit both manifests share that was touched on disk
//!    is written too (all units are then staged again), and where the plan
//!    writes as much as a full restore, the full one is done.
//! 5. The staged units are put in place, unit by unit (`native::apply`).
//! 6. The state names the new generation, bound by the delta's end (its
//!    digest and fingerprint made once the dir is usable); the
//!    marker goes. The index is not rebuilt (as after a full restore).
//!
//! One phase always: a hot-first restore's delta writes its few units
//! before `hot-ready`.

use std::collections::HashSet;
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
    DELTA_MARKER, Restored, ctime_now, load_state, remove_durable, save_state_restored, wait_ctime_passed,
    write_durable,
};
use crate::error::Error;
use crate::native;
use crate::options::RestoreOptions;
use crate::outcome::{Done, RestoreMode, mb};
use crate::target::{DropStaging, Lock, Target};

use super::native::NativeRestore;
use super::watched;

/// The generation a dir holds, as its state proves it.
struct Held {
    generation: String,
    until_ns: i128,
    digest: String,
}

/// The generation the dir holds, read.
enum Old {
    /// Its manifest: the one the dir was restored from.
    Held(Arc<Manifest>),
    /// Its manifest cannot be read.
    Unfetched(String),
    /// Its manifest is not the one the dir was restored from.
    NotHeld,
}

/// What the disk check found of it.
enum Checked {
    /// What of it is on disk as restored.
    Intact(Arc<native::Intact>),
    /// The dir cannot be read well enough to tell.
    Unreadable,
}

type Awaited<T> = Shared<BoxFuture<'static, Arc<Result<T, Error>>>>;

/// The manifest this process restored last (with `RestoreOptions::remember`),
/// whole, with its store, name and digest: a runner's deploy then checks
/// the generation its pre-warm wrote without reading and hashing that
/// manifest again. Trusted as the
/// local root is, only through the digest the dir's state records. One
/// only (a DENO_DIR's manifest is some MB in memory).
struct Remembered {
    store: String,
    generation: String,
    digest: String,
    manifest: Arc<Manifest>,
}

static REMEMBERED: std::sync::Mutex<Option<Remembered>> = std::sync::Mutex::new(None);

/// Records the native generation a restore just wrote into the dir
/// (`generation` of `store`, stored under `key`): its state, with its
/// fingerprint `fp` and `restored`, and as `opts` say, its manifest kept
/// in memory (`remember`) and then the dir checked and watched while idle
/// (`watch_idle`, see `watched`).
#[allow(clippy::too_many_arguments)]
pub(super) fn record(
    target: &Target,
    opts: &RestoreOptions,
    store: &str,
    key: &str,
    fp: &[u8; 32],
    generation: &str,
    restored: Restored,
    manifest: &Arc<Manifest>,
) {
    if opts.remember {
        remember(store, generation, &restored.digest, manifest);
    }
    let watch = (opts.remember && opts.watch_idle).then(|| restored.clone());
    save_state_restored(target, store, key, fp, generation, Some(restored));
    if let Some(restored) = watch {
        watched::arm(target, opts.owner, store, generation, &restored, manifest);
    }
}

/// Remembers the manifest a restore just wrote (see [`Remembered`]).
fn remember(store: &str, generation: &str, digest: &str, manifest: &Arc<Manifest>) {
    let r = Remembered {
        store: store.to_owned(),
        generation: generation.to_owned(),
        digest: digest.to_owned(),
        manifest: manifest.clone(),
    };
    *REMEMBERED.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
}

/// The remembered manifest, when it is the one `held` names.
fn recall(store: &str, held: &Held) -> Option<Arc<Manifest>> {
    let remembered = REMEMBERED.lock().unwrap_or_else(|p| p.into_inner());
    let r = remembered.as_ref()?;
    (r.store == store && r.generation == held.generation && r.digest == held.digest).then(|| r.manifest.clone())
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

/// What an idle dir's check must have been made for to stand for this
/// restore's (see `watched`).
#[allow(clippy::unnecessary_cast)] // the field types differ between targets
fn armed(live: &OwnedFd, store: &str, held: &Held, owner: Option<(u32, u32)>) -> watched::Armed {
    let (dev, ino) = rustix::fs::fstat(live).map_or((0, 0), |st| (st.st_dev as u64, st.st_ino as u64));
    watched::Armed {
        dev,
        ino,
        store: store.to_owned(),
        generation: held.generation.clone(),
        until_ns: held.until_ns,
        digest: held.digest.clone(),
        owner,
    }
}

/// The generation the dir holds, fetched (its pieces from the local cache)
/// and checked against its recorded digest and against the disk in the
/// background, from the moment a restore takes the dir's lock: beside the
/// reads that find what to restore, not after them. Every delta candidate
/// of the restore awaits the same check. Dropped (the restore done, or
/// its deadline), the check stops.
pub(super) struct HeldCheck {
    /// The dir's lock, shared with what must end before it is released.
    lock: Arc<Lock>,
    held: Option<(Held, Arc<OwnedFd>)>,
    /// The packs of the generation the dir holds, by id, when its root or
    /// manifest is at hand (locally kept, or remembered): what a delta
    /// need not download.
    held_packs: Option<HashSet<String>>,
    /// Its manifest, read first.
    old: Option<Awaited<Old>>,
    /// Then the disk checked against it.
    result: Option<Awaited<Checked>>,
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
    pub(super) fn start(shared: &Arc<dyn Store>, target: &Target, opts: &RestoreOptions, lock: Arc<Lock>) -> HeldCheck {
        let cancel = Arc::new(AtomicBool::new(false));
        let none = || HeldCheck {
            lock: lock.clone(),
            held: None,
            held_packs: None,
            old: None,
            result: None,
            cancel: cancel.clone(),
            task: None,
        };
        let store_label = shared.to_string();
        let Some(held) = held(target, &store_label) else { return none() };
        // The live dir, held open, its name never followed.
        let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let Ok(live) = rustix::fs::open(&target.dir, dir_flags, Mode::empty()) else { return none() };
        let live = Arc::new(live);
        // Its manifest as this process remembers it, else its root as the
        // restore that wrote it kept it (else, in the task, the store's):
        // trusted only through the digest, below.
        let recalled = recall(&store_label, &held);
        let cache = native::PieceCache::open(&target.pieces_dir());
        let kept_root = match recalled {
            Some(_) => None,
            None => cache.as_ref().and_then(|c| c.get_root(&held.generation)),
        };
        let packs = recalled.as_ref().map(|m| &m.packs).or(kept_root.as_ref().map(|r| &r.packs));
        let held_packs = packs.map(|p| p.iter().map(|p| p.id.clone()).collect());
        let (store, fd, stop) = (shared.clone(), live.clone(), cancel.clone());
        let (generation, digest) = (held.generation.clone(), held.digest.clone());
        let trust = native::Trust { until_ns: held.until_ns, owner: opts.owner };
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<Old, Error>>();
        // The disk checked against the manifest, on a blocking thread.
        let check_disk = move |old: Arc<Manifest>, started: Instant| {
            let intact = native::check(&old, fd, trust, &stop)?;
            let ms = started.elapsed().as_millis();
            tracing::debug!(target: "sandbox-cache", "the dir's generation read and checked against the disk in {ms} ms");
            Ok(intact.map_or(Checked::Unreadable, |intact| Checked::Intact(Arc::new(intact))))
        };
        // A remembered manifest (hashed when it was remembered) is checked
        // on the blocking pool from here: the check is a pre-warmed
        // deploy's longest step, and a task, then a blocking thread, started
        // it 6-10 ms later, behind the clone's start on a busy pod.
        // Checked while the dir was idle, and nothing happened in it since
        // (see `watched`): its findings, at once. (Taken whatever comes:
        // the watches are let go.)
        let idle = recalled.as_ref().and_then(|_| watched::take(&armed(&live, &store_label, &held, opts.owner)));
        let task = match (recalled, idle) {
            (Some(old), Some(intact)) => {
                let _ = tx.send(Ok(Old::Held(old)));
                tracing::debug!(target: "sandbox-cache", "the dir's generation was checked while idle, and has not changed since");
                tokio::spawn(async move { Ok(Checked::Intact(intact)) })
            }
            (Some(old), None) => {
                let _ = tx.send(Ok(Old::Held(old.clone())));
                let started = Instant::now();
                tokio::task::spawn_blocking(move || check_disk(old, started))
            }
            (None, _) => tokio::spawn(async move {
                // Its bad objects are not reported: it is only compared.
                let quiet = Found::default();
                let pieces = native::Pieces {
                    store: store.as_ref(),
                    found: &quiet,
                    cache: cache.as_ref(),
                    given: None,
                    keep: false,
                };
                let started = Instant::now();
                let old = async {
                    let root = match kept_root {
                        Some(root) => root,
                        None => native::fetch_root(store.as_ref(), &generation).await?,
                    };
                    native::whole(&pieces, root).await
                };
                let old = match old.await {
                    Ok(old) => Arc::new(old),
                    Err(e) => {
                        let _ = tx.send(Ok(Old::Unfetched(crate::error::error_chain(&e))));
                        return Ok(Checked::Unreadable);
                    }
                };
                tokio::task::spawn_blocking(move || {
                    if native::digest(&old) != digest {
                        let _ = tx.send(Ok(Old::NotHeld));
                        return Ok(Checked::Unreadable);
                    }
                    // Read: a delta can compare it with the new one meanwhile.
                    let _ = tx.send(Ok(Old::Held(old.clone())));
                    check_disk(old, started)
                })
                .await
                .map_err(|e| Error::joined("the delta's check", e))?
            }),
        };
        let abort = task.abort_handle();
        let result = task.map(|r| Arc::new(r.unwrap_or_else(|e| Err(Error::joined("the delta's check", e)))));
        // Ended before it said (it failed to run, or was stopped): as if
        // unreadable.
        let old = rx.map(|r| Arc::new(r.unwrap_or_else(|_| Ok(Old::Unfetched("the check ended early".into())))));
        HeldCheck {
            lock,
            held: Some((held, live)),
            held_packs,
            old: Some(old.boxed().shared()),
            result: Some(result.boxed().shared()),
            cancel,
            task: Some(abort),
        }
    }
}

/// A delta restore of generation `info` into the dir, when the dir's state
/// allows one and it writes less than a full restore. `Ok(None)`: restore
/// it in full. `Ok(Some(done))`: done and recorded. An error before the
/// marker (the new manifest unusable) leaves the dir and its state as they
/// were; one after it leaves every unit whole and the state naming no
/// generation. `hot_ready` is called once the units are in place and the
/// bound is past, before the state is recorded: nothing fails after it.
pub(super) async fn restore_delta(
    job: &NativeRestore<'_>,
    info: &sandcache_store::ObjectInfo,
    root: Option<&Manifest>,
    check: &HeldCheck,
    hot_ready: &(dyn Fn() + Sync),
) -> Result<Option<Done>, Error> {
    let NativeRestore { shared, key, target, opts, found, given } = *job;
    let store = shared.as_ref();
    let (Some((held, live)), Some(old), Some(checked)) = (&check.held, &check.old, &check.result) else {
        return Ok(None);
    };
    let live = live.clone();
    let started = Instant::now();

    // 1. The new manifest (its root as a pointer gave it, pieces held
    // locally not fetched again); beside it, the old one, read since the
    // lock (and the disk check under way after it).
    // Restoring the generation the dir holds, they are one manifest.
    let same = held.generation == info.key;
    let cache = native::PieceCache::open(&target.pieces_dir());
    let pieces = native::Pieces { store, found, cache: cache.as_ref(), given, keep: opts.remember };
    let new = async {
        if same {
            return Ok((None, native::Prefetch::none()));
        }
        let root = match root {
            Some(root) => root.clone(),
            None => native::fetch_root(store, &info.key).await?,
        };
        if let Some(c) = &cache {
            c.put_root(&info.key, &root);
        }
        let prefetch = prefetch_new_packs(shared, key, &root, check.held_packs.as_ref());
        Ok::<_, Error>((Some(Arc::new(native::whole(&pieces, root).await?)), prefetch))
    };
    let (new, old) = tokio::join!(new, old.clone());
    let (new, prefetch) = new?;
    let read_ms = started.elapsed().as_millis();
    let old = match &*old {
        Ok(Old::Held(old)) => old.clone(),
        Ok(Old::Unfetched(why)) => {
            tracing::info!(target: "sandbox-cache", "the dir's generation {} cannot be read ({why}): a full restore", held.generation);
            return Ok(None);
        }
        Ok(Old::NotHeld) => {
            tracing::info!(
                target: "sandbox-cache",
                "{} is not the manifest the dir was restored from: a full restore", held.generation
            );
            return Ok(None);
        }
        Err(e) => return check_failed(e),
    };
    let new = new.unwrap_or_else(|| old.clone());

    // 2. Large files the old generation holds most of (Deno's caches at the
    // top) are written at once into a private staging dir, their shared
    // frames copied from the old files (see `native::patch`), beside all
    // that follows until the plan is made: of a pre-warmed deploy's
    // delta, they are the longest step.
    let cancel = check.cancel.clone();
    let one_phase = RestoreOptions { hot_first: false, ..opts.clone() };
    let restoring = native::Restoring { store, key, opts: &one_phase, found, cancel: cancel.clone() };
    let patches = native::patches(&old, &new);
    let patched: HashSet<u32> = patches.iter().map(|p| p.entry).collect();
    let trust = native::Trust { until_ns: held.until_ns, owner: opts.owner };
    let limits = opts.limits;
    // Writes `patches` into `staging` (what is written validated first, on
    // its own).
    let patch_into = |staging: &crate::target::Staging, patches: Vec<native::Patch>, prefetch: native::Prefetch| {
        let job = native::PatchJob { old: &old, new: &new, live: live.clone(), staging: staging.fd(), trust };
        let (restoring, dir) = (&restoring, target.dir.clone());
        let sub = new.subset(patches.iter().map(|p| &new.entries[p.entry as usize]));
        async move {
            if patches.is_empty() {
                return Ok((native::RestoreStats { files: 0, bytes: 0, transferred: 0 }, 0));
            }
            sub.validate(&limits, &dir)?;
            native::write_patches(restoring, &job, &patches, &prefetch).await
        }
    };
    let first = target.create_staging().map_err(Error::io("staging dir"))?;
    let first_dropped = DropStaging(Some(first.clone()));
    let patching = patch_into(&first, patches.clone(), prefetch.view());

    // 3. What the two manifests say differs. Where that alone writes as
    // much as a full restore (files and bytes), the full one is done. Else
    // the new manifest is validated whole beside the staging below (before
    // the marker, and so before the live dir is touched; what is staged is
    // validated on its own before it is written).
    let rest = async {
        let (o, n) = (old.clone(), new.clone());
        let diff = tokio::task::spawn_blocking(move || native::diff(&o, &n));
        let diff = diff.await.map_err(|e| Error::joined("the delta's plan", e))?;
        let diff_ms = started.elapsed().as_millis();
        if !diff.worth_it() {
            tracing::info!(target: "sandbox-cache", "a delta would write everything: a full restore");
            return Ok(None);
        }
        let (dir, n) = (target.dir.clone(), new.clone());
        let validated = tokio::task::spawn_blocking(move || n.validate(&limits, &dir));

        // 4. Neither generation, durably, before anything is written: on a
        // blocking thread beside the staging (its fsyncs cost a disk as
        // much as the rest of the way to the renames), awaited before the
        // live dir is touched and before any return. It holds the dir's
        // lock: cut at the deadline meanwhile, it ends before another
        // restore of the dir starts. Only once the new manifest is valid:
        // one that is not leaves the state as it was.
        let (tail, state, index, lock) =
            (target.tail_path(), target.state_path(), target.index_path(), check.lock.clone());
        let marked = tokio::spawn(async move {
            validated.await.map_err(|e| Error::joined("the manifest's validation", e))??;
            tokio::task::spawn_blocking(move || {
                let _lock = lock;
                write_durable(&tail, DELTA_MARKER).map_err(Error::io("delta marker"))?;
                remove_durable(&[state, index]).map_err(Error::io("state"))
            })
            .await
            .map_err(|e| Error::joined("the delta marker", e))?
        });

        // (Awaited whatever comes of what follows, before any return.)
        let staged = async {
            // 5. The other units that differ, whole, into the staging dir,
            // while the disk check ends: only their frames fetched, every file
            // checked against its hash. `None`: a full restore after all.
            // (The patched files are validated and written by `patch_into`.)
            let stage = |entries: &[u32], prefetch: native::Prefetch, staging: &crate::target::Staging| {
                let mut sub =
                    new.subset(entries.iter().filter(|i| !patched.contains(i)).map(|&i| &new.entries[i as usize]));
                sub.version = new.version;
                if let Some(p) = &opts.progress {
                    p.expected.store(sub.packs.iter().map(|p| p.size).sum(), Ordering::Relaxed);
                }
                let (restoring, dir, staging) = (&restoring, target.dir.clone(), staging.clone());
                async move {
                    let sub = tokio::task::spawn_blocking(move || sub.validate(&limits, &dir).map(|()| sub))
                        .await
                        .map_err(|e| Error::joined("the manifest's validation", e))??;
                    let (stats, _) = native::restore_into(restoring, Arc::new(sub), &staging, prefetch, None).await?;
                    Ok::<_, Error>(stats)
                }
            };
            let early = diff.written().len();
            let (staged, checked) = tokio::join!(stage(diff.written(), prefetch, &first), checked.clone());
            let intact = match &*checked {
                Ok(Checked::Intact(intact)) => intact.clone(),
                Ok(Checked::Unreadable) => {
                    tracing::info!(target: "sandbox-cache", "{} cannot be read well enough for a delta: a full restore", target.dir.display());
                    return Ok(None);
                }
                Err(e) => return check_failed(e),
            };
            let plan = diff.plan(&new, &intact);
            if !plan.worth_it() {
                tracing::info!(target: "sandbox-cache", "a delta would write everything: a full restore");
                return Ok(None);
            }
            // Units the manifests share that the check found touched are
            // written too: staged again, all of them, into another staging dir
            // (rare: something changed the dir), its patches with them.
            if plan.write.len() == early {
                return Ok::<_, Error>(Some((staged?, None, plan)));
            }
            drop(staged);
            let staging = target.create_staging().map_err(Error::io("staging dir"))?;
            let dropped = DropStaging(Some(staging.clone()));
            let patches: Vec<native::Patch> =
                patches.iter().filter(|p| plan.write.contains(&p.entry)).cloned().collect();
            let (stats, patched) = tokio::join!(
                stage(&plan.write, native::Prefetch::none(), &staging),
                patch_into(&staging, patches, native::Prefetch::none()),
            );
            Ok::<_, Error>(Some((add(stats?, patched?.0), Some((staging, dropped)), plan)))
        };
        let staged = staged.await;
        let marked = marked.await.map_err(|e| Error::joined("the delta marker", e));
        Ok::<_, Error>(Some((staged, marked, diff_ms)))
    };
    // Both at once; the patches are dropped (stopped) when the rest ends
    // without a plan to carry out.
    tokio::pin!(patching, rest);
    let mut patched = None;
    let rest = loop {
        tokio::select! {
            p = &mut patching, if patched.is_none() => patched = Some(p),
            r = &mut rest => break r,
        }
    };
    let staged_ms = started.elapsed().as_millis();
    let Some((staged, marked, diff_ms)) = rest? else { return Ok(None) };
    let Some((stats, again, plan)) = staged? else { return Ok(None) };
    marked??;
    tracing::debug!(
        target: "sandbox-cache",
        "delta {} → {}: {} units to write ({} files, {}), {} to move away; manifests in {read_ms} ms, \
         compared by {diff_ms} ms, planned by {} ms",
        held.generation, info.key, plan.place.len(), plan.files_written, mb(plan.bytes_written),
        plan.remove.len(), started.elapsed().as_millis()
    );
    // Staged again (its own patches with it), or in the first staging dir
    // beside the patches started at once.
    let (stats, staging, mut dropped) = match again {
        Some((staging, dropped)) => (stats, staging, dropped),
        None => {
            let (patched, copied) = match patched {
                Some(p) => p,
                None => patching.await,
            }?;
            if copied > 0 {
                tracing::debug!(target: "sandbox-cache", "delta: {} copied from the files it replaces", mb(copied));
            }
            (add(stats, patched), first.clone(), first_dropped)
        }
    };
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Cancelled);
    }

    // 6. The staged units in place. From here the renaming thread owns
    // staging and trash: it removes them when it ends, even after this
    // future is dropped at the deadline (it stops at its next unit), never
    // while it still takes units from them.
    dropped.0 = None;
    let trash = target.scratch("trash");
    let (n, owner, stop, live) = (new.clone(), opts.owner, cancel.clone(), live.clone());
    // 7. Then, on the same thread (a hand-off less on a busy pod), the
    // bound taken at once, and once the coarse clock has passed it (a
    // later write cannot get a ctime under it), the dir is usable: a
    // runner starts its worker now, beside the bookkeeping. Nothing after
    // this fails the restore: a record that cannot be made leaves the
    // marker, and the next restore is full.
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
        let placed_ms = started.elapsed().as_millis();
        let until_ns = ctime_now();
        if applied.is_ok() {
            wait_ctime_passed(until_ns);
        }
        remove_in_background(vec![staging.path.clone(), trash]);
        applied.map(|()| (plan, placed_ms, until_ns))
    })
    .await
    .map_err(|e| Error::joined("the delta's renames", e))?;
    let (plan, placed_ms, until_ns) = applied?;
    hot_ready();
    if let Some(c) = &cache {
        c.keep();
    }
    // The new generation, as a restore records it: its digest and
    // fingerprint made now, beside the worker's boot (some 10 ms of a core
    // that the plan and the staging need more; of the generation the dir
    // holds, the digest is the state's already).
    let (n, known) = (new.clone(), same.then(|| held.digest.clone()));
    // Behind the app's boot: a pre-warmed deploy's Deno booted 15-20 ms
    // slower (medians) beside it at normal priority.
    let recorded = tokio::task::spawn_blocking(move || {
        crate::background::behind_the_app(|| {
            (known.unwrap_or_else(|| native::digest(&n)), sandcache_archive::fingerprint::of_manifest(&n))
        })
    });
    match recorded.await {
        Ok((digest, fp)) => {
            let source = shared.to_string();
            record(target, opts, &source, key, &fp, &info.key, Restored { until_ns, digest }, &new);
            let _ = std::fs::remove_file(target.tail_path());
        }
        Err(e) => {
            tracing::warn!(target: "sandbox-cache", "the delta's record could not be made ({e}): the next restore is full")
        }
    }
    tracing::debug!(
        target: "sandbox-cache",
        "delta written: staged and marked by {staged_ms} ms, placed by {placed_ms} ms, recorded by {} ms",
        started.elapsed().as_millis()
    );
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

/// The packs of `root` that the generation the dir holds lacks (`held`:
/// its packs, when known), downloading whole (a large one in parallel
/// ranges) from the moment the root is in: they hold what the new
/// generation adds (a snapshot puts new content in new packs), so the
/// delta's staging finds them there instead of asking after the diff. At
/// most the prefetch's bound (16 MiB): a generation that adds more is
/// fetched by range as the staging needs it.
fn prefetch_new_packs(
    shared: &Arc<dyn Store>,
    key: &str,
    root: &Manifest,
    held: Option<&HashSet<String>>,
) -> native::Prefetch {
    let Some(had) = held else { return native::Prefetch::none() };
    native::Prefetch::start_where(shared, key, root, |p| !had.contains(&p.id))
}

/// What two parts of a staging wrote, together.
fn add(a: native::RestoreStats, b: native::RestoreStats) -> native::RestoreStats {
    native::RestoreStats {
        files: a.files + b.files,
        bytes: a.bytes + b.bytes,
        transferred: a.transferred + b.transferred,
    }
}

/// The check failed: cancelled (the restore's deadline), or a full restore.
fn check_failed<T>(e: &Error) -> Result<Option<T>, Error> {
    if let Error::Cancelled = e {
        return Err(Error::Cancelled);
    }
    let why = crate::error::error_chain(e);
    tracing::info!(target: "sandbox-cache", "the delta's check failed ({why}): a full restore");
    Ok(None)
}
