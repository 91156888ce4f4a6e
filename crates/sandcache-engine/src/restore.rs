//! Restore: object stream → decoder → safe extraction into staging → swap.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use sandcache_archive::ExtractOptions;
use sandcache_archive::pack::Manifest;
use sandcache_store::{Store, StoreError};
use std::time::UNIX_EPOCH;

use crate::bad::{self, Found, Known};
use crate::layout;
use crate::native;

use crate::background::{self, CancelOnDrop, remove_in_background};
use crate::bookkeeping::{Index, save_state, save_state_restored};
use crate::cache::Cache;
use crate::error::{Declined, Error, error_chain};
use crate::options::RestoreOptions;
use crate::outcome::{Done, Op, Outcome, Reason, Skip, mb};
use crate::pipe::{self, ChannelReader, Msg};
use crate::target::{Staging, Target};

impl Cache {
    /// Restores the cache into `dir`. Never fails: a miss or any failure is a
    /// skipped outcome, and `dir` keeps its previous content.
    pub async fn restore(&self, dir: &Path, opts: &RestoreOptions) -> Outcome {
        self.restore_signalling(dir, opts, &HotSignal::new(None)).await
    }

    /// A restore running in the background (on the current tokio runtime),
    /// with a handle that resolves twice: at `hot-ready`, when the hot set
    /// is in place and the dir is usable ([`RestoreHandle::hot_ready`]),
    /// and at completion ([`RestoreHandle::finish`]). Without
    /// [`RestoreOptions::hot_first`], or for a generation without a hot set,
    /// both come at the swap.
    pub fn restore_handle(&self, dir: &Path, opts: &RestoreOptions) -> RestoreHandle {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (cache, dir, opts) = (self.clone(), dir.to_owned(), opts.clone());
        let task = tokio::spawn(async move { cache.restore_signalling(&dir, &opts, &HotSignal::new(Some(tx))).await });
        RestoreHandle { hot: Some(rx), task }
    }

    async fn restore_signalling(&self, dir: &Path, opts: &RestoreOptions, hot: &HotSignal) -> Outcome {
        let from = std::sync::OnceLock::new();
        let mut outcome = self
            .bounded(Op::Restore, opts.timeout, |store, key, deadline| {
                restore(store, key, dir, opts, deadline, &from, hot)
            })
            .await;
        if outcome.is_done() {
            outcome.from_key = from.into_inner();
        }
        outcome.hot = hot.at().filter(|_| opts.hot_first);
        log(&outcome, &self.location());
        outcome
    }
}

/// A restore in the background: see [`Cache::restore_handle`]. Dropping
/// it cancels the restore, as dropping [`Cache::restore`]'s future does:
/// its writers stop, its staging or temporary files go, its lock is freed.
#[derive(Debug)]
pub struct RestoreHandle {
    hot: Option<tokio::sync::oneshot::Receiver<Duration>>,
    task: tokio::task::JoinHandle<Outcome>,
}

impl RestoreHandle {
    /// Waits for `hot-ready`: `Some(elapsed)` once the dir holds the hot set
    /// (the app may start), `None` when the restore ended without getting
    /// there (a miss or a failure: [`RestoreHandle::finish`] says which).
    /// Resolves once; later calls return `None` at once.
    pub async fn hot_ready(&mut self) -> Option<Duration> {
        self.hot.take()?.await.ok()
    }

    /// Waits for the whole restore. An outcome, never an error: a restore
    /// task that panicked is `internal`.
    pub async fn finish(mut self) -> Outcome {
        match (&mut self.task).await {
            Ok(o) => o,
            Err(e) => Outcome {
                op: Op::Restore,
                result: Err(Skip::joined("the restore task", e)),
                elapsed: Duration::ZERO,
                key: String::new(),
                store: String::new(),
                from_key: None,
                hot: None,
            },
        }
    }
}

impl Drop for RestoreHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Fires `hot-ready` once, and remembers when.
struct HotSignal {
    start: Instant,
    tx: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<Duration>>>,
    at: std::sync::OnceLock<Duration>,
}

impl HotSignal {
    fn new(tx: Option<tokio::sync::oneshot::Sender<Duration>>) -> HotSignal {
        HotSignal { start: Instant::now(), tx: std::sync::Mutex::new(tx), at: std::sync::OnceLock::new() }
    }

    fn ready(&self) {
        let at = *self.at.get_or_init(|| self.start.elapsed());
        if let Some(tx) = self.tx.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = tx.send(at);
        }
    }

    fn at(&self) -> Option<Duration> {
        self.at.get().copied()
    }
}

fn log(o: &Outcome, location: &str) {
    let ms = o.elapsed.as_millis() as u64;
    let (op, key, reason) = ("restore", o.key.as_str(), o.reason().map_or("done", |r| r.as_str()));
    let (hit, from_key) = (o.hit().unwrap_or("cold"), o.from_key.as_deref().unwrap_or(""));
    let hot_ms = o.hot.map(|d| d.as_millis() as u64);
    let hot = hot_ms.map_or(String::new(), |h| format!(", hot set in {h}ms"));
    let tier = match o.hit() {
        Some("fallback") => format!(" (fallback: {from_key})"),
        _ => String::new(),
    };
    match &o.result {
        Ok(d) => tracing::info!(
            target: "sandbox-cache",
            op, key, reason, ms, hot_ms, hit, from_key, files = d.files, bytes = d.bytes, transferred = d.transferred,
            "restored cache from {location}{tier} in {ms}ms ({} files, {} MB, {} MB transferred{hot})",
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
        Err(s) if o.hot.is_some() => tracing::warn!(
            target: "sandbox-cache",
            op, key, reason, ms, hot_ms,
            "restore incomplete ({}) after {ms}ms{hot}; files not restored are cold misses: {}",
            s.reason,
            s.detail
        ),
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
    shared: &Arc<dyn Store>,
    key: &str,
    dir: &Path,
    opts: &RestoreOptions,
    deadline: Instant,
    from: &std::sync::OnceLock<String>,
    hot: &HotSignal,
) -> Result<Done, Error> {
    let store = shared.as_ref();
    // The dir's own name is never followed (nor is it later: renames do not
    // follow their last component), so a dir swapped for a symlink is
    // replaced, never the place it points at.
    // Its parents are walked one by one, created where missing, and a
    // symlink among them the worker could have made is `unsafe`.
    let target = Target::resolve_for_restore(dir).map_err(Error::Target)?.with_state_dir(opts.state_dir.as_deref());
    if std::fs::symlink_metadata(&target.dir).is_ok_and(|m| m.file_type().is_symlink()) {
        let why = format!("{} is a symlink; a restore never follows one", target.dir.display());
        return Err(Error::Unsafe(why));
    }
    let _lock = target.lock(deadline).await.map_err(Error::lock)?;
    let leftovers = target.leftovers();
    // Pool objects found bad on the way are recorded (here, and as marks in
    // the store) before the next candidate is tried: the next snapshot and
    // gc act on them. What is known bad already is read once, by the first
    // hot-first candidate.
    let found = Arc::new(Found::default());
    let known = tokio::sync::OnceCell::new();
    let (store_label, bad_path) = (shared.to_string(), target.bad_path());
    let report = || bad::report(store, &bad_path, &store_label, &found);

    // The key itself, then each fallback: the first usable generation wins.
    // A missing, incomplete, corrupt or unsafe one falls through to the next
    // candidate, within the same deadline; local trouble (disk, deadline)
    // ends the restore.
    let mut sources = vec![Source::Key(key.to_owned())];
    sources.extend(opts.fallbacks.iter().filter_map(|f| Source::parse(f)));
    let mut last: Option<Error> = None;
    let (mut tried, mut seen) = (0, std::collections::HashSet::new());
    for source in &sources {
        // Past the cap, no more listings either: each costs a request.
        if tried >= MAX_CANDIDATES {
            break;
        }
        let candidates = match source.candidates(store).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(target: "sandbox-cache", "fallback {source}: {}; trying the next", error_chain(&e));
                last = Some(e);
                continue;
            }
        };
        if candidates.is_empty() && !matches!(source, Source::Key(k) if k == key) {
            tracing::debug!(target: "sandbox-cache", "fallback {source}: nothing stored");
        }
        for candidate in candidates.into_iter().take(PER_SOURCE) {
            // A prefix may list the key itself again: each generation once.
            if !seen.insert(candidate.generation().to_owned()) {
                continue;
            }
            // Each generation tried costs requests against one deadline.
            if tried >= MAX_CANDIDATES {
                break;
            }
            tried += 1;
            let result = match &candidate {
                Candidate::Native { key, manifest } => {
                    let job = NativeRestore { shared, key, target: &target, opts, found: &found };
                    restore_native(&job, manifest, &known).await
                }
                Candidate::Archive { key } => {
                    restore_archive(store, key, &target, opts).await.map(|(d, s)| (d, s, None, None))
                }
            };
            match result {
                Ok((done, staging, manifest, tail)) => {
                    // While a tail is pending, snapshots of the dir skip:
                    // the marker goes down before the swap makes it visible.
                    let marked = match &tail {
                        Some(_) => crate::bookkeeping::write_bookkeeping(&target.tail_path(), b"")
                            .map_err(Error::io("tail marker")),
                        None => Ok(()),
                    };
                    let old = marked.and_then(|()| target.swap_in(&staging).map_err(Error::io("swap into place")));
                    let old = old.inspect_err(|_| remove_in_background(vec![staging.path.clone()]))?;
                    hot.ready();
                    let source_key = candidate.key().to_owned();
                    let _ = from.set(source_key.clone());
                    let trash: Vec<PathBuf> = old.into_iter().chain(leftovers).collect();
                    let (Some(tail), Some((m, _))) = (tail, &manifest) else {
                        let _ = std::fs::remove_file(target.tail_path());
                        after_swap(&target, trash, store, &source_key, manifest);
                        return Ok(done);
                    };
                    let job = NativeRestore { shared, key: &source_key, target: &target, opts, found: &found };
                    let finished = phase_two(&job, m.clone(), tail, &staging).await;
                    return match finished {
                        Ok((more, whole)) => {
                            let _ = std::fs::remove_file(target.tail_path());
                            let manifest = manifest.map(|(_, generation)| (whole, generation));
                            after_swap(&target, trash, store, &source_key, manifest);
                            Ok(Done {
                                files: done.files + more.files,
                                bytes: done.bytes + more.bytes,
                                transferred: done.transferred + more.transferred,
                                ..done
                            })
                        }
                        Err(e) => {
                            // The hot set is in place and every file there is
                            // whole; what is missing is a cold miss. The
                            // marker stays: no snapshot stores this tree. A
                            // bad pool object found is recorded: the next
                            // restore of a generation naming it is one phase.
                            remove_in_background(trash);
                            report().await;
                            Err(e.context("the hot set is in place, but the rest did not land"))
                        }
                    };
                }
                Err(e) if falls_through(e.reason()) => {
                    report().await;
                    tracing::warn!(
                        target: "sandbox-cache",
                        "generation {} is unusable ({}: {}); trying the next candidate",
                        candidate.generation(), e.reason(), error_chain(&e)
                    );
                    last = Some(e);
                }
                Err(e) => {
                    report().await;
                    return Err(e);
                }
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        let also = if opts.fallbacks.is_empty() { String::new() } else { " nor under any fallback".to_owned() };
        Declined::NotFound(format!("no object at `{key}` nor any generation under `{key}.d/`{also}")).into()
    }))
}

/// Generations tried in one restore, over the whole chain, and per link.
const MAX_CANDIDATES: usize = 8;
const PER_SOURCE: usize = 3;

/// Reasons that say "this generation", not "this restore": the next
/// candidate may do. The deadline, local disk trouble, configuration and
/// bugs end the restore.
fn falls_through(reason: Reason) -> bool {
    matches!(reason, Reason::NotFound | Reason::Corrupt | Reason::Unsafe | Reason::TooLarge | Reason::StoreError)
}

/// One link of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Key(String),
    /// The newest generations of any key under it.
    Prefix(String),
}

impl Source {
    /// A fallback as the user wrote it; an invalid one is skipped (the CLI
    /// and the runner check them first and say so).
    fn parse(f: &str) -> Option<Source> {
        let f = f.trim();
        if let Err(why) = layout::validate_fallback(f) {
            tracing::warn!(target: "sandbox-cache", "{why}; ignored");
            return None;
        }
        Some(if f.ends_with('/') { Source::Prefix(f.to_owned()) } else { Source::Key(f.to_owned()) })
    }

    /// The generations to try, best first.
    async fn candidates(&self, store: &dyn Store) -> Result<Vec<Candidate>, Error> {
        match self {
            Source::Key(key) => {
                // The native layout and a single archive (the seed's
                // cache.tgz, a legacy tar.zst, or `--format tgz`) may both
                // exist: the newer first.
                let (listed, legacy) = tokio::join!(layout::list_manifests(store, key), store.head(key));
                let manifests = listed?;
                let legacy = legacy?;
                let mut out: Vec<(u64, Candidate)> = manifests
                    .into_iter()
                    .take(PER_SOURCE)
                    .map(|m| {
                        (layout::manifest_ms(&m.key).unwrap_or(0), Candidate::Native { key: key.clone(), manifest: m })
                    })
                    .collect();
                if let Some(l) = legacy {
                    out.push((unix_ms(l.last_modified), Candidate::Archive { key: key.clone() }));
                }
                out.sort_by_key(|c| std::cmp::Reverse(c.0));
                Ok(out.into_iter().map(|(_, c)| c).collect())
            }
            Source::Prefix(prefix) => {
                let listed = store.list(prefix).await?;
                let mut out: Vec<(u64, Candidate)> = Vec::new();
                for o in listed {
                    if let Some(key) = layout::generation_of(&o.key) {
                        let (ms, key) = (layout::manifest_ms(&o.key).unwrap_or(0), key.to_owned());
                        out.push((ms, Candidate::Native { key, manifest: o }));
                    } else if !o.key.contains(".d/")
                        && layout::pool_id_of(&o.key).is_none()
                        && layout::object_of_mark(&o.key).is_none()
                    {
                        out.push((unix_ms(o.last_modified), Candidate::Archive { key: o.key }));
                    }
                }
                out.sort_by_key(|c| std::cmp::Reverse(c.0));
                Ok(out.into_iter().map(|(_, c)| c).collect())
            }
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Key(k) | Source::Prefix(k) => f.write_str(k),
        }
    }
}

/// One generation to try.
#[derive(Debug, Clone)]
enum Candidate {
    Native { key: String, manifest: sandcache_store::ObjectInfo },
    Archive { key: String },
}

impl Candidate {
    fn key(&self) -> &str {
        match self {
            Candidate::Native { key, .. } | Candidate::Archive { key } => key,
        }
    }

    fn generation(&self) -> &str {
        match self {
            Candidate::Native { manifest, .. } => &manifest.key,
            Candidate::Archive { key } => key,
        }
    }
}

fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
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

/// One native generation's restore: the store, the key it is under, the
/// dir, the options, and the bad pool objects found on the way.
#[derive(Clone, Copy)]
struct NativeRestore<'a> {
    shared: &'a Arc<dyn Store>,
    key: &'a str,
    target: &'a Target,
    opts: &'a RestoreOptions,
    found: &'a Arc<Found>,
}

/// Phase two of a hot-first restore: the tail, into the live dir. Dropped
/// at the deadline, it cancels its writers, and its temporary files go.
async fn phase_two(
    job: &NativeRestore<'_>,
    m: Arc<Manifest>,
    tail: native::Tail,
    staging: &Staging,
) -> Result<(native::RestoreStats, Arc<Manifest>), Error> {
    let NativeRestore { shared, key, target, opts, found } = *job;
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
type Staged = (Done, Staging, Option<(Arc<Manifest>, String)>, Option<native::Tail>);

/// Restores one native generation into a new staging dir. Bad pool
/// objects found go into `found`. A hot-first restore first learns which
/// are known bad (`known`, read once per restore, beside the root): a
/// generation naming one is restored in one phase, so that a bad cold pack
/// makes it fall through before the swap, never leaves a partial tree.
async fn restore_native(
    job: &NativeRestore<'_>,
    info: &sandcache_store::ObjectInfo,
    known: &tokio::sync::OnceCell<Known>,
) -> Result<Staged, Error> {
    let NativeRestore { shared, target, opts, .. } = *job;
    let store = shared.as_ref();
    let started = Instant::now();
    // The root first; then its pieces, while the first packs download.
    let root = match opts.hot_first {
        true => {
            let (label, bad_path) = (shared.to_string(), target.bad_path());
            let load = || Known::load(store, &bad_path, &label);
            let (root, known) = tokio::join!(native::fetch_root(store, &info.key), known.get_or_init(load));
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
        false => native::fetch_root(store, &info.key).await?,
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
    let NativeRestore { shared, key, target, opts, found } = *job;
    let store = shared.as_ref();
    let prefetch = native::Prefetch::start(shared, key, &root, opts.hot_first);
    if let Some(p) = &opts.progress {
        let total: u64 = root.packs.iter().map(|p| p.size).sum();
        p.expected.store(total, Ordering::Relaxed);
    }
    // Hot-first, with hot pieces: those alone before the swap, the whole
    // manifest after it, for the tail.
    let hot = match opts.hot_first {
        true => native::usable_hot(store, &root, &opts.limits, &target.dir, &info.key, found).await,
        false => None,
    };
    let (m, pending, what) = match hot {
        Some(hot) => (hot, Some(native::PendingManifest { root, dir: target.dir.clone() }), "hot pieces of"),
        None => {
            let m = native::whole(store, root, found).await?;
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
    staging.0 = None;
    let done = Done { files: s.files, bytes: s.bytes, transferred: s.transferred, ..Done::default() };
    Ok((done, at, Some((m, info.key.clone())), tail))
}

/// A single archive, streamed: store → decoder → extractor, no temp file.
async fn restore_archive(
    store: &dyn Store,
    key: &str,
    target: &Target,
    opts: &RestoreOptions,
) -> Result<(Done, Staging), Error> {
    let object = store.get(key).await?;
    let progress = opts.progress.clone();
    if let Some(p) = &progress {
        p.expected.store(object.size, Ordering::Relaxed);
    }
    let staging = target.create_staging().map_err(Error::io("staging dir"))?;
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

    let transferred = downloaded?;
    let stats = extracted.map_err(|e| Error::joined("the extraction thread", e))??;
    drop_staging.0 = None;
    Ok((Done { files: stats.files, bytes: stats.bytes, transferred, ..Done::default() }, staging))
}

/// Record what was restored, so an unchanged dir is not uploaded again (and
/// a native snapshot rereads nothing), then remove the old tree and any
/// leftovers in the background.
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
    // Everything the restore wrote has a ctime up to this.
    let until_ns = std::time::SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128);
    // The previous index describes the tree that was just replaced.
    let _ = std::fs::remove_file(target.index_path());
    match &manifest {
        // A native generation's fingerprint comes from its manifest, not the
        // disk (the app may already be changing the tree, and nothing it
        // made may pass for restored), and so does its index, rebuilt by
        // the next snapshot from the manifest and this bound: nothing to
        // walk, nothing more to write than the state.
        Some((m, generation)) => {
            save_state_restored(&target, &store, &key, &Index::fingerprint_of(m), generation, Some(until_ns));
            remove_in_background(trash);
        }
        // A single archive's tree is walked once for its fingerprint, off
        // the critical path.
        None => background::background("after-restore", move || {
            match sandcache_archive::fingerprint(&target.dir, true, &Default::default()) {
                Ok(fp) => save_state(&target, &store, &key, &fp, &key),
                Err(e) => tracing::debug!("no fingerprint for {}: {e}", target.dir.display()),
            }
            remove_in_background(trash);
        }),
    }
}
