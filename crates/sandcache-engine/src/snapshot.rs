//! Snapshot: the dir, once its dependencies are warm, uploaded as a new
//! generation when it changed.
//!
//! * Native (the default): `native::build` walks the dir (reusing the
//!   index's hashes and the base generation's content), hands each new
//!   pack to the pool as it fills (`put_pool`: skipped when the pool holds
//!   it, salted past a bad object), then uploads the manifest's pieces the
//!   pool lacks and the root last; a pack gone meanwhile withdraws it.
//! * tgz (`--format tgz`): walk → tar → gzip → one streamed multipart
//!   upload at the key itself (the seed's `cache.tgz`).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use sandcache_archive::pack::BuiltPack;
use sandcache_archive::{Encoding, Layout, Limits, SqliteOptions, WalkError, WalkOptions, WriteOptions};
use sandcache_store::{Store, StoreError};

use crate::background::{self, CancelOnDrop};
use crate::bad::{self, Bad, Found, Known};
use crate::bookkeeping::{DELTA_MARKER, Index, hex, load_state, read_bookkeeping, save_state};
use crate::cache::Cache;
use crate::error::{Declined, Error, error_chain};
use crate::layout;
use crate::native;
use crate::options::{Format, SnapshotOptions};
use crate::outcome::{Done, Op, Outcome, Reason, mb};
use crate::pipe::{self, ChannelWriter};
use crate::target::Target;

/// Whether the files read since `generation` was restored (access time
/// past mtime) differ from the hot set it was restored with. Deno's own
/// caches are left out (they are always hot). Any trouble reading either
/// side, or nothing read: no (the snapshot stays a cheap `unchanged`).
async fn hot_set_moved(store: &dyn Store, target: &Target, generation: &str, walk: &WalkOptions) -> bool {
    let Ok(m) = native::fetch_manifest(store, generation, &Found::default()).await else { return false };
    let recorded: std::collections::HashSet<String> = m
        .entries
        .into_iter()
        .filter(|e| e.hot && !sandcache_archive::sqlite::is_deno_cache(std::ffi::OsStr::new(&e.path)))
        .map(|e| e.path)
        .collect();
    let (dir, walk) = (target.dir.clone(), walk.clone());
    let read = tokio::task::spawn_blocking(move || {
        let tree = sandcache_archive::walk::Tree::open(&dir, &walk).ok()??;
        if !tree.tracks_reads() {
            return Some(std::collections::HashSet::new());
        }
        let mut read = std::collections::HashSet::new();
        let walked = tree.walk::<WalkError>(&mut |e| {
            let m = e.meta();
            if m.kind == sandcache_archive::walk::Kind::File
                && m.read_since_written()
                && !(e.is_top() && sandcache_archive::sqlite::is_deno_cache(e.name()))
            {
                if let Some(rel) = e.rel().to_str() {
                    read.insert(rel.to_owned());
                }
            }
            Ok(sandcache_archive::walk::Step::Continue)
        });
        walked.ok().map(|()| read)
    })
    .await
    .ok()
    .flatten();
    // Nothing read at all says nothing (a restore, then a snapshot with no
    // app run in between): the recorded hot set stays.
    read.is_some_and(|r| !r.is_empty() && r != recorded)
}

impl Cache {
    /// Uploads `dir` under the cache's key. Never fails: an empty or missing
    /// dir, an unchanged one, or any failure is a skipped outcome, and the
    /// stored cache stays as it was.
    pub async fn snapshot(&self, dir: &Path, opts: &SnapshotOptions) -> Outcome {
        let outcome = self
            .bounded(Op::Snapshot, opts.timeout, |store, key, deadline| snapshot(store, key, dir, opts, deadline))
            .await;
        let (location, ms) = (self.location(), outcome.elapsed.as_millis() as u64);
        let (op, key, reason) = ("snapshot", outcome.key.as_str(), outcome.reason().map_or("done", |r| r.as_str()));
        match &outcome.result {
            Ok(d) => tracing::info!(
                target: "sandbox-cache",
                op, key, reason, ms, files = d.files, bytes = d.bytes, transferred = d.transferred,
                "snapshotted {}MB → {location} in {ms}ms ({} files, {} MB before compression)",
                mb(d.transferred),
                d.files,
                mb(d.bytes)
            ),
            Err(s) if matches!(s.reason, Reason::Empty | Reason::Unchanged) => {
                tracing::info!(target: "sandbox-cache", op, key, reason, ms, "snapshot skipped ({}): {}", s.reason, s.detail)
            }
            Err(s) if s.reason == Reason::Disabled => {
                tracing::debug!(target: "sandbox-cache", "cache disabled")
            }
            Err(s) => {
                tracing::warn!(target: "sandbox-cache", op, key, reason, ms, "snapshot failed ({}) after {ms}ms: {}", s.reason, s.detail)
            }
        }
        outcome
    }
}

async fn snapshot(
    store: &Arc<dyn Store>,
    key: &str,
    dir: &Path,
    opts: &SnapshotOptions,
    deadline: Instant,
) -> Result<Done, Error> {
    // The dir's own name is never followed: a symlink there is `unsafe`.
    let target = match Target::resolve_nofollow(dir) {
        Ok(t) => t.with_state_dir(opts.state_dir.as_deref()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Declined::Empty(format!("{} does not exist", dir.display())).into());
        }
        Err(e) => return Err(Error::Target(e)),
    };
    let _lock = target.lock(deadline).await.map_err(Error::lock)?;
    background::remove_in_background(target.sqlite_leftovers());
    if std::fs::symlink_metadata(target.tail_path()).is_ok() {
        let what = match read_bookkeeping(&target.tail_path(), 64).is_ok_and(|m| m == DELTA_MARKER) {
            true => "was a delta that did not complete (every unit whole, of either generation)",
            false => "put its hot files in place but not the rest",
        };
        return Err(Declined::Incomplete(format!(
            "the last restore of {} {what}; the stored cache is kept until a restore completes",
            target.dir.display()
        ))
        .into());
    }

    // Every blocking step below checks this flag at each entry and read, so
    // a snapshot dropped at its deadline stops its thread.
    let cancel = Arc::new(AtomicBool::new(false));
    let _cancel_on_drop = CancelOnDrop(cancel.clone());
    let walk = WalkOptions { cancel: Some(cancel), limits: opts.limits, owner: opts.owner };
    let (scan_dir, scan_walk) = (target.dir.clone(), walk.clone());
    let (empty, fp) = tokio::task::spawn_blocking(move || {
        let empty = sandcache_archive::is_empty_tree(&scan_dir, &scan_walk)?;
        let fp = if empty { None } else { Some(sandcache_archive::fingerprint(&scan_dir, true, &scan_walk)?) };
        Ok::<_, WalkError>((empty, fp))
    })
    .await
    .map_err(|e| Error::joined("the scan thread", e))??;
    if empty {
        return Err(
            Declined::Empty(format!("{} holds no files; the stored cache is kept", target.dir.display())).into()
        );
    }
    let fp = fp.expect("set when not empty");
    let store_label = store.to_string();
    let same = load_state(&target).filter(|s| s.store == store_label && s.key == key && s.fingerprint == hex(&fp));
    // Unchanged means the store still holds what the dir matches: one HEAD
    // of that generation, never a listing. A store that lost it (wiped,
    // `delete`d) gets the dir again.
    let restored_until = same.as_ref().and_then(|s| s.restored_until_ns);
    if let (false, Some(generation)) = (opts.force, same.and_then(|s| s.generation)) {
        match store.head(&generation).await {
            // A tree as restored whose app read other files than the hot set
            // it was restored with: the generation is written again with
            // the new hot set (a manifest, no content). A cold start's hot
            // set is what the first boot read; this makes it what a warm
            // boot reads.
            Ok(Some(_))
                if restored_until.is_some()
                    && opts.format == Format::Native
                    && hot_set_moved(store.as_ref(), &target, &generation, &walk).await =>
            {
                tracing::info!(
                    target: "sandbox-cache",
                    "{} is as restored, but the app read other files than its hot set: recording the new one",
                    target.dir.display()
                );
            }
            Ok(Some(_)) => {
                return Err(Declined::Unchanged(format!(
                    "{} is as last restored or snapshotted ({generation})",
                    target.dir.display()
                ))
                .into());
            }
            Ok(None) => tracing::info!(
                target: "sandbox-cache",
                "{} is unchanged, but the store no longer holds {generation}: uploading it again",
                target.dir.display()
            ),
            Err(e) => tracing::debug!("could not check {generation}: {}; snapshotting", error_chain(&e)),
        }
    }

    // Deno's own caches are stored as consistent copies, made in a private
    // dir beside the state files (see sandcache_archive::sqlite).
    let sqlite = SqliteOptions::new(target.sqlite_scratch());
    let job = Snapshotting { store, key, target: &target, opts, walk: &walk, sqlite: &sqlite, fp: &fp, deadline };
    match opts.format {
        Format::Native => snapshot_native(&job).await,
        Format::Tgz => snapshot_archive(&job, Layout::Rooted, Encoding::Gzip).await,
    }
}

/// A snapshot that is to be written: the store and key, the dir, the
/// options, how its tree is read (`walk`, and `sqlite` for Deno's caches),
/// and its fingerprint, recorded once it is stored.
struct Snapshotting<'a> {
    store: &'a Arc<dyn Store>,
    key: &'a str,
    target: &'a Target,
    opts: &'a SnapshotOptions,
    walk: &'a WalkOptions,
    sqlite: &'a SqliteOptions,
    fp: &'a [u8; 32],
    /// When the snapshot's time is up.
    deadline: Instant,
}

/// What a snapshot keeps of its deadline for itself, past its pointer.
const POINTER_MARGIN: Duration = Duration::from_millis(250);

/// Native: only content the store lacks is packed and uploaded, packs first
/// (into the shared pool, skipping any it already holds) and the manifest
/// last, with at most two packs in memory. Pool objects found bad on the
/// way (another length than their content) are recorded, as a restore
/// records them (see `bad`).
async fn snapshot_native(job: &Snapshotting<'_>) -> Result<Done, Error> {
    let Snapshotting { store, target, .. } = *job;
    let found = Found::default();
    let done = build_and_upload(job, &found).await;
    bad::report(store.as_ref(), &target.bad_path(), &store.to_string(), &found).await;
    done
}

async fn build_and_upload(job: &Snapshotting<'_>, found: &Found) -> Result<Done, Error> {
    let Snapshotting { store, key, target, opts, walk, sqlite, fp, .. } = *job;
    let store_label = store.to_string();
    // The base to dedup against: the key's newest generation, whoever wrote
    // it; else the generation the dir was restored from (a fallback, such as
    // a base cache), whose content is in the same pool. Only pooled
    // generations can be referenced from a new one. Beside the listing, what
    // is known bad: this pod's record and the store's marks.
    let bad_path = target.bad_path();
    let (listed, known) =
        tokio::join!(layout::list_manifests(store.as_ref(), key), Known::load(store.as_ref(), &bad_path, &store_label));
    let listed = listed?;
    let mut known = known;
    // What the dir's state says it was restored from (read once).
    let state = load_state(target).filter(|s| s.store == store_label);
    let restored_from =
        state.as_ref().filter(|s| s.key != key).and_then(|s| s.generation.clone()).filter(|g| g.ends_with(".json.zst"));
    let mut base = None;
    let mut base_key = None;
    for generation in listed.first().map(|i| i.key.clone()).into_iter().chain(restored_from) {
        match native::fetch_manifest(store.as_ref(), &generation, found).await {
            Ok(m) if m.pooled() && m.validate(&Limits::default(), &target.dir).is_ok() => {
                // A base whose pack is gone (gc, a wiped pool, a withdraw
                // that was not allowed) would make every later generation
                // reference it too: build on it only when it is whole. A
                // pack of another length than the base says is bad: its
                // content is packed again, never referenced.
                match check_objects(store.as_ref(), &m).await {
                    Ok((None, wrong)) => {
                        for b in wrong {
                            known.insert(&b.object);
                            found.add(&b.object, b.size, b.why);
                        }
                        base = Some(without_bad(m, &known));
                        base_key = Some(generation);
                        break;
                    }
                    Ok((Some(id), _)) => tracing::warn!(
                        target: "sandbox-cache",
                        "not building on {generation}: its pack {id} is gone; its content is uploaded again"
                    ),
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(m) if !m.pooled() => {
                tracing::info!(target: "sandbox-cache", "{generation} predates the shared pool: its content is uploaded again, once");
            }
            Ok(_) | Err(_) => tracing::warn!(target: "sandbox-cache", "ignoring unreadable generation {generation}"),
        }
    }
    let mut index = Index::load(&target.index_path());
    // After a restore, the index is its manifest's (no walk, no file): the
    // base's, when the dir was restored from it, else fetched.
    let restored = state.as_ref().and_then(|s| Some((s.generation.clone()?, s.restored_until_ns?)));
    if let Some((generation, until)) = restored {
        let m = match (&base, &base_key) {
            (Some(b), Some(k)) if *k == generation => Some(b.clone()),
            _ => native::fetch_manifest(store.as_ref(), &generation, found).await.ok(),
        };
        if let Some(m) = m {
            index = Index::of_manifest_ns(&m, until);
        }
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<BuiltPack>(1);
    let (dir, progress, walk, sqlite) = (target.dir.clone(), opts.progress.clone(), walk.clone(), sqlite.clone());
    let builder = tokio::task::spawn_blocking(move || {
        let mut upload = |p: BuiltPack| {
            tx.blocking_send(p).map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the upload stopped"))
        };
        native::build(&dir, base.as_ref(), &index, &walk, Some(&sqlite), progress.as_deref(), &mut upload)
            .map(|plan| (plan, base))
    });
    // Each upload answers the bytes it added to the pool (0 for a pack the
    // pool already held), and the pack's salted name when it went up
    // salted (its canonical one being a bad object's).
    let known = &known;
    let uploads = async {
        let packs = futures::stream::poll_fn(|cx| rx.poll_recv(cx));
        let mut puts = std::pin::pin!(
            packs
                .map(|p: BuiltPack| async move {
                    let put = put_pool(store.as_ref(), &p.id, p.bytes.into(), layout::pool_key, known, found).await?;
                    Ok::<_, StoreError>((p.id, put))
                })
                .buffer_unordered(2)
        );
        let (mut total, mut salted) = (0u64, Vec::new());
        while let Some(r) = futures::StreamExt::next(&mut puts).await {
            let (id, (n, as_salted)) = r?;
            total += n;
            salted.extend(as_salted.map(|s| (id, s)));
            if let Some(p) = &opts.progress {
                p.transferred.fetch_add(n, Ordering::Relaxed);
            }
        }
        Ok::<_, StoreError>((total, salted))
    };
    let (uploaded, built) = tokio::join!(uploads, builder);
    let (mut plan, base) = match (uploaded.as_ref(), built) {
        (Err(_), _) => return Err(uploaded.unwrap_err().into()),
        (_, Err(e)) => return Err(Error::joined("the snapshot thread", e)),
        (_, Ok(Err(e))) => return Err(e),
        (Ok(_), Ok(Ok(p))) => p,
    };
    let (packs_added, salted) = uploaded.unwrap_or_default();
    // Packs that went up salted are named so, their frames further in.
    for (id, to) in &salted {
        plan.manifest.rename_salted_pack(id, to);
    }
    let mut transferred = packs_added;
    // Unchanged only against the key's own newest generation: a dir
    // restored from a fallback still needs a generation under its key.
    let base_is_own = !listed.is_empty();
    if plan.unchanged && base_is_own {
        plan.index.save(&target.index_path());
        if let Some(newest) = listed.first() {
            save_state(target, &store_label, key, fp, &newest.key);
        }
        return Err(Declined::Unchanged("every file is already in the newest generation".into()).into());
    }
    // Our own manifest must pass the checks every reader makes.
    plan.manifest
        .validate(&Limits::default(), &target.dir)
        .map_err(|e| Error::Corrupt(format!("refusing to upload an invalid manifest: {e}")))?;
    // The manifest as pieces and a small root: only pieces the pool lacks
    // (the runs of entries that changed) are uploaded; a piece whose name a
    // bad object holds goes up salted, and the root names that.
    let (mut root, pieces) = native::split(&plan.manifest);
    let (mut pieces_added, mut pieces_reused) = (0u64, 0u64);
    let mut new_pieces: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for chunk in pieces.chunks(8) {
        let puts = chunk.iter().map(|(id, bytes)| async move {
            let len = bytes.len() as u64;
            let (added, as_salted) =
                put_pool(store.as_ref(), id, bytes.clone().into(), layout::piece_key, known, found).await?;
            Ok::<_, StoreError>((id, len, added, as_salted))
        });
        for r in futures::future::join_all(puts).await {
            let (id, len, added, as_salted) = r?;
            match added {
                0 => pieces_reused += len,
                n => {
                    pieces_added += n;
                    new_pieces.insert(id);
                }
            }
            if let Some(salted) = &as_salted {
                root.rename_salted_piece(id, salted);
            }
        }
    }
    transferred += pieces_added;
    let bytes = root.encode();
    transferred += bytes.len() as u64;
    let mkey = layout::manifest_key(key, plan.manifest.created_ms);
    let pointer = layout::encode_pointer(&mkey, &bytes);
    // The pointer goes first, so that no reader is led to an older
    // generation once this one is stored, whatever happens to the new
    // pointer below: readers list until it is written. Failing that, the
    // snapshot fails before anything is stored (the pool's objects aside).
    store.delete(&layout::pointer_key(key)).await?;
    store.put(&mkey, one_chunk(bytes)).await?;
    // A gc that ran meanwhile may have removed a pack this generation reuses
    // (nothing it kept referenced it): withdraw the generation rather than
    // leave a manifest that points at nothing. One HEAD per pack.
    let gone = match check_objects(store.as_ref(), &root).await {
        Ok((gone, wrong)) => {
            let wrong_one = wrong.first().map(|b| b.object.clone());
            for b in wrong {
                found.add(&b.object, b.size, b.why);
            }
            gone.or(wrong_one)
        }
        // Unknown: keep the generation; a reader that finds a pack missing
        // falls back, the next snapshot does not build on it, and gc's own
        // check withdraws it.
        Err(e) => {
            tracing::warn!(target: "sandbox-cache", "could not check the packs of {mkey}: {}", error_chain(&e));
            None
        }
    };
    if let Some(gone) = gone {
        let withdrawn = store.delete(&mkey).await;
        return Err(Error::Raced(format!(
            "pool object {gone} of the new generation was removed or replaced while it was written (a concurrent gc?); generation {mkey} {}",
            if withdrawn.is_ok() { "withdrawn" } else { "could not be withdrawn" }
        )));
    }
    // The pointer goes last, once the generation is known whole: a restore
    // reads it instead of listing. Only a hint: a failure is logged, and it
    // may take what is left of the deadline but a margin, so a slow one
    // never turns a stored generation into a timed-out snapshot.
    let left = job.deadline.saturating_duration_since(Instant::now()).saturating_sub(POINTER_MARGIN);
    // Beside it, copies of the pieces a pod holding the generation this
    // dir was restored from lacks (its root as that restore kept it; else
    // the pieces this snapshot added to the pool), up to a bound: a
    // restore reads them beside the pointer, not after its root.
    let held: Option<std::collections::HashSet<String>> = state
        .and_then(|s| s.generation)
        .and_then(|g| native::PieceCache::open(&target.pieces_dir())?.get_root(&g))
        .map(|r| r.pieces.into_iter().chain(r.hot).map(|p| p.id).collect());
    let lacked = |id: &str| match &held {
        Some(held) => !held.contains(id),
        None => new_pieces.contains(id),
    };
    let mut room = layout::MAX_NEW_PIECES;
    let copies = pieces.iter().filter(|(id, _)| lacked(id)).filter(|(_, b)| {
        let fits = b.len() <= room;
        room -= if fits { b.len() } else { 0 };
        fits
    });
    let copies = layout::encode_new_pieces(copies.map(|(id, b)| (id.as_str(), b.as_slice())));
    transferred += copies.len() as u64;
    let copied = async {
        if let Err(e) = store.put(&layout::new_pieces_key(key), one_chunk(copies)).await {
            tracing::debug!(target: "sandbox-cache", "could not copy {key}'s new pieces ({e}); restores read them from the pool");
        }
    };
    let pointer_key = layout::pointer_key(key);
    let pointed = async {
        let (pointed, ()) = tokio::join!(store.put(&pointer_key, one_chunk(pointer)), copied);
        pointed
    };
    match tokio::time::timeout(left, pointed).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(target: "sandbox-cache", "could not point {key} at {mkey} ({e}); restores list instead")
        }
        Err(_) => tracing::warn!(target: "sandbox-cache", "pointing {key} at {mkey} timed out; restores list instead"),
    }
    // Every new pack is in the manifest (only unused frames of old packs are
    // dropped), so what was not added was reused.
    let referenced: u64 = plan.manifest.packs.iter().map(|p| p.size).sum();
    let (added, reused) = (packs_added + pieces_added, referenced.saturating_sub(packs_added) + pieces_reused);
    tracing::info!(
        target: "sandbox-cache",
        pool_added = added, pool_reused = reused,
        "generation {mkey}: {} packs and {} pieces, {} MB added to the pool, {} MB reused{}{}",
        plan.manifest.packs.len(),
        root.pieces.len(),
        mb(added),
        mb(reused),
        if base.is_some() { " (deduplicated against the base)" } else { "" },
        if salted.is_empty() { String::new() } else { format!("; {} packs salted past bad objects", salted.len()) }
    );
    plan.index.save(&target.index_path());
    save_state(target, &store_label, key, fp, &mkey);
    Ok(Done {
        files: plan.files,
        bytes: plan.bytes,
        transferred,
        pool_added: added,
        pool_reused: reused,
        ..Done::default()
    })
}

/// Puts a pool object (`name(id)`: a pack or a piece) unless the pool
/// holds it already, of the right length. Content whose canonical name a
/// bad object holds (known bad, or found so now: another length) goes up
/// salted ([`sandcache_archive::pack::salt`]), under the salted bytes' own
/// name, fresh and unpredictable. Returns the bytes added, and the salted
/// id and size when it was salted.
async fn put_pool(
    store: &dyn Store,
    id: &str,
    bytes: bytes::Bytes,
    name: fn(&str) -> String,
    known: &Known,
    found: &Found,
) -> Result<(u64, Option<(String, u64)>), StoreError> {
    let (key, len) = (name(id), bytes.len() as u64);
    let bad = known.contains(id) || {
        match store.head(&key).await? {
            Some(info) if info.size == len => return Ok((0, None)),
            Some(info) => {
                found.add(&key, len, format!("{} bytes, where its content is {len}", info.size));
                true
            }
            None => false,
        }
    };
    if !bad {
        // `If-None-Match` where the server enforces it: a writer that raced
        // us keeps its object.
        return Ok((if store.put_new(&key, bytes).await? { len } else { 0 }, None));
    }
    let salted = tokio::task::spawn_blocking(move || {
        let salted = sandcache_archive::pack::salt(&bytes, rand::random());
        (blake3::hash(&salted).to_hex().to_string(), bytes::Bytes::from(salted))
    })
    .await
    .map_err(|e| StoreError::Body { key: key.clone(), source: std::io::Error::other(e) })?;
    let (salted_id, salted) = salted;
    let size = salted.len() as u64;
    tracing::info!(target: "sandbox-cache", "{key} is bad: its content goes up salted, as {}", name(&salted_id));
    store.put_new(&name(&salted_id), salted).await?;
    Ok((size, Some((salted_id, size))))
}

/// The base without the content of its packs known bad: a snapshot never
/// references them, and packs that content again.
fn without_bad(mut m: sandcache_archive::pack::Manifest, known: &Known) -> sandcache_archive::pack::Manifest {
    let bad: Vec<bool> = m.packs.iter().map(|p| known.contains(&p.id)).collect();
    if !bad.contains(&true) {
        return m;
    }
    let keep: Vec<bool> = m
        .entries
        .iter()
        .map(|e| {
            let content = e.kind == sandcache_archive::pack::Kind::File && e.size > 0;
            let in_bad = |span: std::ops::Range<usize>| span.into_iter().any(|f| bad[m.frames[f].pack as usize]);
            !content || m.span_frames(e).is_ok_and(|span| !in_bad(span))
        })
        .collect();
    let dropped = keep.iter().filter(|k| !**k).count();
    tracing::info!(target: "sandbox-cache", "{dropped} files of the base lie in packs known bad: packed again");
    let mut keep = keep.into_iter();
    m.entries.retain(|_| keep.next().unwrap_or(true));
    m
}

/// The pool objects a generation names (packs, pieces, hot pieces), by
/// HEAD, 16 at a time: the first one missing, and those of another length
/// than the manifest says (bad).
async fn check_objects(
    store: &dyn Store,
    m: &sandcache_archive::pack::Manifest,
) -> Result<(Option<String>, Vec<Bad>), StoreError> {
    let objects: Vec<(String, u64)> = m
        .packs
        .iter()
        .map(|p| (layout::pool_key(&p.id), p.size))
        .chain(m.piece_refs().map(|p| (layout::piece_key(&p.id), p.size)))
        .collect();
    let mut wrong = Vec::new();
    for chunk in objects.chunks(16) {
        let heads = futures::future::join_all(chunk.iter().map(|(k, _)| store.head(k))).await;
        for ((k, size), head) in chunk.iter().zip(heads) {
            match head? {
                None => return Ok((Some(k.clone()), wrong)),
                Some(info) if info.size != *size => wrong.push(Bad {
                    object: k.clone(),
                    size: *size,
                    why: format!("{} bytes, where its generation says {size}", info.size),
                }),
                Some(_) => {}
            }
        }
    }
    Ok((None, wrong))
}

fn one_chunk(bytes: Vec<u8>) -> sandcache_store::BodyStream {
    Box::pin(futures::stream::once(async move { Ok(bytes::Bytes::from(bytes)) }))
}

/// A single archive streamed into one upload (the seed's tgz layout).
async fn snapshot_archive(job: &Snapshotting<'_>, layout: Layout, encoding: Encoding) -> Result<Done, Error> {
    let Snapshotting { store, key, target, opts, walk, sqlite, fp, .. } = *job;
    let store_label = store.to_string();
    let wopts = WriteOptions {
        layout,
        encoding,
        skip_sqlite: true,
        sqlite: Some(sqlite.clone()),
        cancel: walk.cancel.clone(),
        limits: walk.limits,
        progress: opts.progress.clone(),
        owner: walk.owner,
    };
    let (tx, rx) = pipe::channel();
    let src = target.dir.clone();
    let writer = tokio::task::spawn_blocking(move || {
        let mut sink = ChannelWriter::new(tx);
        match sandcache_archive::write_archive(&src, &mut sink, &wopts) {
            Ok(stats) => sink.finish().map(|()| stats).map_err(Error::io("finishing the stream")),
            Err(e) => {
                let e = Error::Write(e);
                sink.fail(error_chain(&e));
                Err(e)
            }
        }
    });
    let progress = opts.progress.clone();
    let body = pipe::body(rx);
    let body: sandcache_store::BodyStream = match progress {
        Some(p) => Box::pin(futures::StreamExt::inspect(body, move |c| {
            if let Ok(c) = c {
                p.transferred.fetch_add(c.len() as u64, Ordering::Relaxed);
            }
        })),
        None => body,
    };
    let (uploaded, written) = tokio::join!(store.put(key, body), writer);
    // A failed upload breaks the writer's pipe: the store's error is the cause.
    // A failed writer fails the body: the writer's error is the cause.
    let (transferred, stats) = match (uploaded, written) {
        (Err(e), _) if !matches!(e, StoreError::Body { .. }) => return Err(e.into()),
        (_, Err(e)) => {
            return Err(Error::joined("the archive thread", e));
        }
        (_, Ok(Err(e))) => return Err(e),
        (Err(e), Ok(Ok(_))) => return Err(e.into()),
        (Ok(n), Ok(Ok(stats))) => (n, stats),
    };
    save_state(target, &store_label, key, fp, key);
    Ok(Done { files: stats.files, bytes: stats.bytes, transferred, ..Done::default() })
}
