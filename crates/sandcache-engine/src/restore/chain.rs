//! One restore: the dir resolved and locked, then the key's generations
//! and each fallback's, tried in order until one is usable; the winner
//! restored in place when the dir holds another native generation and
//! that writes less (`delta.rs`), else swapped in (and, hot-first, its
//! tail landed), and recorded.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use sandcache_archive::pack::Manifest;
use sandcache_store::Store;

use crate::background::{self, remove_in_background};
use crate::bad::{self, Found};
use crate::bookkeeping::{Restored, ctime_bound, save_state};
use crate::error::{Declined, Error, error_chain};
use crate::layout;
use crate::native;
use crate::options::RestoreOptions;
use crate::outcome::{Done, Reason, RestoreMode};
use crate::target::Target;

use super::archive::restore_archive;
use super::delta::{HeldCheck, restore_delta};
use super::native::{NativeRestore, phase_two, restore_native};

/// Fires `hot-ready` once, and remembers when.
pub(super) struct HotSignal {
    start: Instant,
    tx: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<Duration>>>,
    at: std::sync::OnceLock<Duration>,
}

impl HotSignal {
    pub(super) fn new(tx: Option<tokio::sync::oneshot::Sender<Duration>>) -> HotSignal {
        HotSignal { start: Instant::now(), tx: std::sync::Mutex::new(tx), at: std::sync::OnceLock::new() }
    }

    fn ready(&self) {
        let at = *self.at.get_or_init(|| self.start.elapsed());
        if let Some(tx) = self.tx.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = tx.send(at);
        }
    }

    pub(super) fn at(&self) -> Option<Duration> {
        self.at.get().copied()
    }
}

pub(super) async fn restore(
    shared: &Arc<dyn Store>,
    key: &str,
    dir: &Path,
    opts: &RestoreOptions,
    deadline: Instant,
    from: &std::sync::OnceLock<(String, String)>,
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
    // Held until the restore ends, and until work it leaves running (a
    // delta's marker) ends.
    let lock = Arc::new(target.lock(deadline).await.map_err(Error::lock)?);
    // What the dir holds is checked from now on, beside the reads below.
    let held = HeldCheck::start(shared, &target, opts, lock);
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
    // A key's pointer first (its newest root in one request), then its
    // listing, reached only when the pointer's generation did not do.
    let mut sources = vec![Source::Latest(key.to_owned()), Source::Key(key.to_owned())];
    for f in opts.fallbacks.iter().filter_map(|f| Source::parse(f)) {
        if let Source::Key(k) = &f {
            sources.push(Source::Latest(k.clone()));
        }
        sources.push(f);
    }
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
        if candidates.is_empty()
            && !matches!(source, Source::Latest(_))
            && !matches!(source, Source::Key(k) if k == key)
        {
            tracing::debug!(target: "sandbox-cache", "fallback {source}: nothing stored");
        }
        for candidate in candidates.into_iter().take(PER_SOURCE) {
            // A prefix may list the key itself again, and a key's listing
            // its pointer's generation: each generation once.
            if !seen.insert(candidate.generation().to_owned()) {
                continue;
            }
            // Each generation tried costs requests against one deadline.
            if tried >= MAX_CANDIDATES {
                break;
            }
            tried += 1;
            let result = match &candidate {
                Candidate::Native { key, manifest, root, given } => {
                    let given = given.as_deref();
                    let job = NativeRestore { shared, key, target: &target, opts, found: &found, given };
                    // In place, when the dir's state proves it holds another
                    // native generation; else (or when in place would write
                    // everything) whole.
                    match restore_delta(&job, manifest, root.as_deref(), &held, &|| hot.ready()).await {
                        Ok(Some(done)) => {
                            let _ = from.set((key.clone(), manifest.key.clone()));
                            remove_in_background(leftovers);
                            return Ok(done);
                        }
                        Ok(None) => restore_native(&job, manifest, root.as_deref(), &known).await,
                        Err(e) => Err(e),
                    }
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
                    let _ = from.set((source_key.clone(), candidate.generation().to_owned()));
                    let trash: Vec<PathBuf> = old.into_iter().chain(leftovers).collect();
                    let (Some(tail), Some((m, _))) = (tail, &manifest) else {
                        let _ = std::fs::remove_file(target.tail_path());
                        after_swap(&target, trash, store, &source_key, manifest, opts).await;
                        return Ok(written_whole(done));
                    };
                    let job =
                        NativeRestore { shared, key: &source_key, target: &target, opts, found: &found, given: None };
                    let finished = phase_two(&job, m.clone(), tail, &staging).await;
                    return match finished {
                        Ok((more, whole)) => {
                            let _ = std::fs::remove_file(target.tail_path());
                            let manifest = manifest.map(|(_, generation)| (whole, generation));
                            after_swap(&target, trash, store, &source_key, manifest, opts).await;
                            Ok(written_whole(Done {
                                files: done.files + more.files,
                                bytes: done.bytes + more.bytes,
                                transferred: done.transferred + more.transferred,
                                ..done
                            }))
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

/// A full restore's outcome: it wrote every file it restored.
fn written_whole(done: Done) -> Done {
    Done { mode: RestoreMode::Full, files_written: done.files, bytes_written: done.bytes, ..done }
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
    /// A key's pointer: its newest generation, root included, without a
    /// listing (see [`layout::read_pointer`]); nothing when there is none.
    Latest(String),
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
            Source::Latest(key) => {
                // Beside it, the pieces its snapshot added: a delta then
                // needs no request for them after the root.
                let (pointer, legacy, given) = tokio::join!(
                    layout::read_pointer(store, key),
                    store.head(key),
                    layout::read_new_pieces(store, key)
                );
                // A root that does not decode is as good as no pointer: the
                // listing then finds the stored manifest.
                let decoded = pointer.and_then(|(info, root)| Some((info, Manifest::decode(&root).ok()?)));
                let Some((manifest, root)) = decoded else { return Ok(Vec::new()) };
                let ms = layout::manifest_ms(&manifest.key).unwrap_or(0);
                let given = (!given.is_empty()).then(|| Arc::new(given));
                let native = Candidate::Native { key: key.clone(), manifest, root: Some(Arc::new(root)), given };
                let mut out = vec![(ms, native)];
                if let Some(l) = legacy? {
                    out.push((unix_ms(l.last_modified), Candidate::Archive { key: key.clone() }));
                }
                out.sort_by_key(|c| std::cmp::Reverse(c.0));
                Ok(out.into_iter().map(|(_, c)| c).collect())
            }
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
                        let ms = layout::manifest_ms(&m.key).unwrap_or(0);
                        (ms, Candidate::Native { key: key.clone(), manifest: m, root: None, given: None })
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
                        out.push((ms, Candidate::Native { key, manifest: o, root: None, given: None }));
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
            Source::Latest(k) | Source::Key(k) | Source::Prefix(k) => f.write_str(k),
        }
    }
}

/// One generation to try.
#[derive(Debug, Clone)]
enum Candidate {
    /// `root`: its root, decoded, when a pointer gave it.
    Native {
        key: String,
        manifest: sandcache_store::ObjectInfo,
        root: Option<Arc<Manifest>>,
        /// The pieces its snapshot added, when a pointer gave them.
        given: Option<Arc<layout::GivenPieces>>,
    },
    Archive {
        key: String,
    },
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

/// Record what was restored, so an unchanged dir is not uploaded again (and
/// a native snapshot rereads nothing), then remove the old tree and any
/// leftovers in the background.
/// `manifest`: a native generation's, with its key; `None` for a single
/// archive (stored at `key` itself); kept in memory too, and watched, as
/// `opts` say (`RestoreOptions::remember`, `watch_idle`).
async fn after_swap(
    target: &Target,
    trash: Vec<PathBuf>,
    store: &dyn Store,
    key: &str,
    manifest: Option<(Arc<Manifest>, String)>,
    opts: &RestoreOptions,
) {
    let target = target.clone();
    let (store, key) = (store.to_string(), key.to_owned());
    // Everything the restore wrote has a ctime up to this, and anything
    // written from now on a later one.
    let until_ns = match manifest {
        Some(_) => ctime_bound().await,
        None => 0,
    };
    // The previous index describes the tree that was just replaced.
    let _ = std::fs::remove_file(target.index_path());
    match &manifest {
        // A native generation's fingerprint comes from its manifest, not the
        // disk (the app may already be changing the tree, and nothing it
        // made may pass for restored), and so does its index, rebuilt by
        // the next snapshot from the manifest and this bound: nothing to
        // walk, nothing more to write than the state.
        Some((m, generation)) => {
            // With the manifest's digest: what a later delta trusts the
            // dir to hold.
            let restored = Restored { until_ns, digest: native::digest(m) };
            let fp = sandcache_archive::fingerprint::of_manifest(m);
            super::delta::record(&target, opts, &store, &key, &fp, generation, restored, m);
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
