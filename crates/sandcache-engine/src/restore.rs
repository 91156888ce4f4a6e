//! Restore: object stream → decoder → safe extraction into staging → swap.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use sandcache_archive::pack::Manifest;
use sandcache_archive::{ExtractError, ExtractOptions, Limits, Progress};
use sandcache_store::{Store, StoreError};
use std::time::UNIX_EPOCH;

use crate::native;

use crate::outcome::{Done, Op, Outcome, Reason, Skip};
use crate::pipe::{self, ChannelReader, Msg};
use crate::snapshot::save_state;
use crate::target::{CancelOnDrop, Staging, Target, remove_in_background};
use crate::{Cache, error_chain, mb};

/// How to restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The hard total deadline: lock, request, download, extraction and swap.
    pub timeout: Duration,
    pub limits: Limits,
    /// Pack downloads in flight (native format).
    pub concurrency: usize,
    pub progress: Option<Arc<Progress>>,
    /// Who owns what the restore writes: `(uid, gid)`, or the restoring
    /// process. A root runner gives the tree to its worker's uid, which must
    /// be able to add modules to it.
    pub owner: Option<(u32, u32)>,
    /// Where the lock, state and index files live; by default beside the
    /// dir, as hidden siblings. A runner names a directory its worker cannot
    /// write.
    pub state_dir: Option<PathBuf>,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            timeout: Duration::from_secs(30),
            limits: Limits::default(),
            concurrency: 8,
            progress: None,
            owner: None,
            state_dir: None,
        }
    }
}

impl Cache {
    /// Restores the cache into `dir`. Never fails: a miss or any failure is a
    /// skipped outcome with its reason, and `dir` keeps its previous content.
    pub async fn restore(&self, dir: &Path, opts: &RestoreOptions) -> Outcome {
        let outcome = self
            .bounded(Op::Restore, opts.timeout, |store, key, deadline| {
                restore(store.as_ref(), key, dir, opts, deadline)
            })
            .await;
        log(&outcome, &self.location());
        outcome
    }
}

fn log(o: &Outcome, location: &str) {
    let ms = o.elapsed.as_millis() as u64;
    let (op, key, reason) = ("restore", o.key.as_str(), o.reason().map_or("done", |r| r.as_str()));
    match &o.result {
        Ok(d) => tracing::info!(
            target: "sandbox-cache",
            op, key, reason, ms, files = d.files, bytes = d.bytes, transferred = d.transferred,
            "restored cache from {location} in {ms}ms ({} files, {} MB, {} MB transferred)",
            d.files,
            mb(d.bytes),
            mb(d.transferred)
        ),
        Err(s) if s.reason == Reason::NotFound => {
            tracing::info!(target: "sandbox-cache", op, key, reason, ms, "no cache yet for {location} (cold start)")
        }
        Err(s) if s.reason == Reason::Disabled => {
            tracing::debug!(target: "sandbox-cache", "cache disabled")
        }
        Err(s) => tracing::warn!(
            target: "sandbox-cache",
            op, key, reason, ms,
            "restore failed ({}) after {ms}ms, continuing cold: {}",
            s.reason,
            s.detail
        ),
    }
}

async fn restore(
    store: &dyn Store,
    key: &str,
    dir: &Path,
    opts: &RestoreOptions,
    deadline: Instant,
) -> Result<Done, Skip> {
    // The dir's own name is never followed (nor is it later: renames do not
    // follow their last component), so a dir swapped for a symlink is
    // replaced, never the place it points at.
    let target = Target::resolve_for_restore(dir)
        .map_err(|e| Skip::new(Reason::IoError, format!("target dir: {e}")))?
        .with_state_dir(opts.state_dir.as_deref());
    if std::fs::symlink_metadata(&target.dir).is_ok_and(|m| m.file_type().is_symlink()) {
        let why = format!("{} is a symlink; a restore never follows one", target.dir.display());
        return Err(Skip::new(Reason::Unsafe, why));
    }
    let _lock = target.lock_or_skip(deadline).await?;
    let leftovers = target.leftovers();

    // The native layout and a single archive (the seed's cache.tgz, a legacy
    // tar.zst, or `--format tgz`) may both exist: the newer wins.
    let (listed, legacy) = tokio::join!(native::list_manifests(store, key), store.head(key));
    let manifests = listed.map_err(store_skip)?;
    let legacy = legacy.map_err(store_skip)?;
    let native_ms = manifests.first().and_then(|m| manifest_ms(&m.key));
    let legacy_ms =
        legacy.as_ref().map(|l| l.last_modified.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64));
    let use_native = match (native_ms, legacy_ms) {
        (Some(n), Some(l)) => n >= l,
        (Some(_), None) => true,
        (None, _) => false,
    };
    let (done, staging, manifest) = if use_native {
        restore_native(store, key, &target, opts, &manifests).await?
    } else if legacy.is_some() {
        let (done, staging) = restore_archive(store, key, &target, opts).await?;
        (done, staging, None)
    } else {
        return Err(Skip::new(Reason::NotFound, format!("no object at `{key}` nor any generation under `{key}.d/`")));
    };
    let old = target.swap_in(&staging).map_err(|e| {
        remove_in_background(vec![staging.path.clone()]);
        Skip::new(Reason::IoError, format!("swap into place: {e}"))
    })?;
    after_swap(&target, old.into_iter().chain(leftovers).collect(), store, key, manifest);
    Ok(done)
}

/// A staging dir nobody will swap in, removed (by name) when dropped.
struct DropStaging(Option<Staging>);

impl Drop for DropStaging {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            remove_in_background(vec![s.path]);
        }
    }
}

/// The creation time a manifest's name starts with.
fn manifest_ms(key: &str) -> Option<u64> {
    key.rsplit('/').next()?.split('-').next()?.parse().ok()
}

/// Restores the newest generation whose packs are all there: a manifest
/// whose pack is missing (removed by gc under a race) falls back to the next.
async fn restore_native(
    store: &dyn Store,
    key: &str,
    target: &Target,
    opts: &RestoreOptions,
    manifests: &[sandcache_store::ObjectInfo],
) -> Result<(Done, Staging, Option<(Arc<Manifest>, String)>), Skip> {
    let mut last = None;
    for info in manifests.iter().take(3) {
        let m = native::fetch_manifest(store, &info.key).await?;
        m.validate(&opts.limits, &target.dir).map_err(extract_skip)?;
        let m = Arc::new(m);
        if let Some(p) = &opts.progress {
            let total: u64 = m.packs.iter().map(|p| p.size).sum();
            p.expected.store(total, Ordering::Relaxed);
        }
        let staging = target.create_staging().map_err(|e| Skip::new(Reason::IoError, format!("staging dir: {e}")))?;
        // Dropped at the deadline, this future still removes its staging
        // dir, after the cancel below (declared later, dropped first) stops
        // its writers.
        let mut staging = DropStaging(Some(staging));
        let cancel = Arc::new(AtomicBool::new(false));
        let guard = CancelOnDrop(cancel.clone());
        let at = staging.0.clone().expect("set above");
        let result = native::restore_into(store, key, m.clone(), &at, cancel, opts).await;
        drop(guard);
        match result {
            Ok(s) => {
                staging.0 = None;
                let done = Done { files: s.files, bytes: s.bytes, transferred: s.transferred };
                return Ok((done, at, Some((m, info.key.clone()))));
            }
            Err(skip) => {
                drop(staging);
                if skip.reason != Reason::NotFound {
                    return Err(skip);
                }
                tracing::warn!(target: "sandbox-cache", "generation {} is incomplete ({}); trying an older one", info.key, skip.detail);
                last = Some(skip);
            }
        }
    }
    Err(last.unwrap_or_else(|| Skip::new(Reason::NotFound, "no complete generation")))
}

/// A single archive, streamed: store → decoder → extractor, no temp file.
async fn restore_archive(
    store: &dyn Store,
    key: &str,
    target: &Target,
    opts: &RestoreOptions,
) -> Result<(Done, Staging), Skip> {
    let object = store.get(key).await.map_err(store_skip)?;
    let progress = opts.progress.clone();
    if let Some(p) = &progress {
        p.expected.store(object.size, Ordering::Relaxed);
    }
    let staging = target.create_staging().map_err(|e| Skip::new(Reason::IoError, format!("staging dir: {e}")))?;
    // Removed unless swapped in: a download that fails or stalls after the
    // last tar entry leaves a complete extraction nobody will use.
    let mut drop_staging = DropStaging(Some(staging.clone()));

    let cancel = Arc::new(AtomicBool::new(false));
    let _cancel_on_drop = CancelOnDrop(cancel.clone());
    let (tx, rx) = pipe::channel();
    let xopts = ExtractOptions {
        final_dir: target.dir.clone(),
        limits: opts.limits,
        cancel: Some(cancel.clone()),
        progress: progress.clone(),
        owner: opts.owner,
    };
    // The clone keeps the staging dir open while the extractor runs, even
    // past a deadline that dropped this future.
    let extract_staging = staging.clone();
    let extraction = tokio::task::spawn_blocking(move || {
        sandcache_archive::extract(ChannelReader::new(rx), &extract_staging.io(), &xopts)
    });

    let download = async {
        let mut stream = object.stream;
        let mut transferred = 0u64;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => {
                    transferred += chunk.len() as u64;
                    if let Some(p) = &progress {
                        p.transferred.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    }
                    if tx.send(Msg::Data(chunk)).await.is_err() {
                        // The extractor stopped early; its error says why.
                        return Ok(transferred);
                    }
                }
                Err(e) => {
                    let _ = tx.send(Msg::Failed(e.to_string())).await;
                    return Err(e);
                }
            }
        }
        let _ = tx.send(Msg::End).await;
        Ok::<u64, StoreError>(transferred)
    };
    let (downloaded, extracted) = tokio::join!(download, extraction);

    let transferred = downloaded.map_err(store_skip)?;
    let stats = extracted.map_err(|e| Skip::joined("the extraction thread", e))?.map_err(extract_skip)?;
    drop_staging.0 = None;
    Ok((Done { files: stats.files, bytes: stats.bytes, transferred }, staging))
}

/// Off the critical path: record what was restored, so an unchanged dir is
/// not uploaded again (and a native snapshot rereads nothing), then remove
/// the old tree and any leftovers.
/// `manifest`: a native generation's, with its key; `None` for a single
/// archive (stored at `key` itself).
fn after_swap(
    target: &Target,
    trash: Vec<PathBuf>,
    store: &dyn Store,
    key: &str,
    manifest: Option<(Arc<Manifest>, String)>,
) {
    let target = target.clone();
    let (store, key) = (store.to_string(), key.to_owned());
    crate::target::background("after-restore", move || {
        // One walk gives the fingerprint and, for a native generation, the index.
        let walked = match &manifest {
            Some((m, _)) => native::Index::of_restored(&target.dir, m).map(|(fp, index)| (fp, Some(index))),
            None => sandcache_archive::fingerprint(&target.dir, true, &Default::default()).map(|fp| (fp, None)),
        };
        match walked {
            Ok((fp, index)) => {
                let generation = manifest.as_ref().map_or(key.as_str(), |(_, g)| g.as_str());
                save_state(&target, &store, &key, &fp, generation);
                if let Some(index) = index {
                    index.save(&target.index_path());
                }
            }
            Err(e) => tracing::debug!("no fingerprint for {}: {e}", target.dir.display()),
        }
        remove_in_background(trash);
    });
}

pub(crate) fn store_skip(e: StoreError) -> Skip {
    let reason = match &e {
        StoreError::NotFound { .. } => Reason::NotFound,
        StoreError::TimedOut { .. } => Reason::TimedOut,
        StoreError::InvalidKey { .. } | StoreError::InvalidSpec { .. } => Reason::Config,
        _ => Reason::StoreError,
    };
    Skip::new(reason, error_chain(&e))
}

pub(crate) fn extract_skip(e: ExtractError) -> Skip {
    let reason = match &e {
        ExtractError::Corrupt { .. } => Reason::Corrupt,
        ExtractError::Unsafe { .. } => Reason::Unsafe,
        ExtractError::Limit { .. } => Reason::TooLarge,
        ExtractError::Io { .. } => Reason::IoError,
        ExtractError::Cancelled => Reason::TimedOut,
    };
    Skip::new(reason, error_chain(&e))
}
