//! Retention: keep the newest generations, delete what nothing needs.
//!
//! Two scopes. [`Cache::gc`] works on one key: it drops that key's old
//! generations (and version-1 packs under the key that nothing kept
//! needs). [`gc_store`] sweeps a whole store: the old generations of every
//! key, then every pool object no kept generation references. It also
//! checks the pool objects it keeps (see [`gc_store`]): a bad one is
//! deleted, with every generation that names it.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::bad::{self, Verdict};
use crate::cache::Cache;
use crate::error::Error;
use crate::layout;
use crate::native;
use crate::outcome::mb;

/// How much to keep.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Newest generations kept, whatever their age.
    pub keep: usize,
    /// Nothing younger than this is deleted: an in-flight snapshot's packs
    /// (uploaded before its manifest) and any generation written meanwhile
    /// survive.
    pub grace: Duration,
    /// Store-wide only: the fraction of kept pool objects (not marked, of
    /// the right length) read whole and checked against their names in
    /// one run, picked at random. See [`DEFAULT_VERIFY_RATE`].
    pub verify_rate: f64,
    /// Store-wide only: most bytes read to verify pool objects in one run
    /// (marked objects first, then those of the wrong length, then the
    /// sample); what is left waits for the next run.
    pub verify_bytes: u64,
}

/// The default sample: each kept pool object has one chance in ten of
/// being read whole in a run. At a daily run that is 10 days expected
/// before a bad object nobody has reported (no restore read it since it
/// went bad) is found, and 9 in 10 found within 22 days; on a store whose
/// kept pool is more than ten times [`DEFAULT_VERIFY_BYTES`] (40 GiB), the
/// budget binds first and the rate is the budget over the pool. Marked
/// objects and objects of the wrong length are always checked.
pub const DEFAULT_VERIFY_RATE: f64 = 0.1;

/// The default verification budget per run: 4 GiB (about half a minute at
/// in-region S3 speeds).
pub const DEFAULT_VERIFY_BYTES: u64 = 4 << 30;

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            keep: 3,
            grace: Duration::from_secs(3600),
            verify_rate: DEFAULT_VERIFY_RATE,
            verify_bytes: DEFAULT_VERIFY_BYTES,
        }
    }
}

/// What a gc run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    pub generations_kept: usize,
    pub generations_deleted: usize,
    pub packs_kept: usize,
    pub packs_deleted: usize,
    /// Generations written during this gc that reused a pack it deleted.
    pub generations_withdrawn: usize,
    pub bytes_freed: u64,
    /// Pool objects read whole and checked against their names (marked,
    /// of the wrong length, or sampled), and their bytes.
    pub objects_verified: usize,
    pub bytes_verified: u64,
    /// Pool objects found bad (not what their names say), deleted.
    pub bad_objects: usize,
    /// Generations withdrawn (deleted) because they name a bad object.
    pub generations_withdrawn_bad: usize,
    /// Marks whose object turned out good (or gone): deleted, nothing else.
    pub false_marks: usize,
}

impl GcReport {
    fn log(&self, location: &str) {
        tracing::info!(
            target: "sandbox-cache",
            "gc {location}: kept {} generations and {} packs, deleted {} generations and {} packs, freed {} MB; \
             verified {} pool objects ({} MB): {} bad (deleted, {} generations naming them withdrawn), {} false marks",
            self.generations_kept,
            self.packs_kept,
            self.generations_deleted,
            self.packs_deleted,
            mb(self.bytes_freed),
            self.objects_verified,
            mb(self.bytes_verified),
            self.bad_objects,
            self.generations_withdrawn_bad,
            self.false_marks,
        );
    }
}

impl Cache {
    /// Deletes generations beyond the newest `keep` (and older than the
    /// grace period), then packs that no remaining generation references
    /// and that are older than the grace period. Manifests go first, so no
    /// remaining manifest ever points at a deleted pack. Unlike restore and
    /// snapshot this is an administrative command and reports failures.
    pub async fn gc(&self, opts: &GcOptions) -> Result<GcReport, Error> {
        let (store, key) = self.enabled()?;
        let now = SystemTime::now();
        let young = |t: SystemTime| now.duration_since(t).unwrap_or_default() < opts.grace;
        let manifests = layout::list_manifests(store, key).await?;
        let (keep, drop): (Vec<_>, Vec<_>) =
            manifests.into_iter().enumerate().partition(|(i, m)| *i < opts.keep || young(m.last_modified));
        let mut referenced = HashSet::new();
        let mut kept_keys = HashSet::new();
        for (_, m) in &keep {
            // A kept generation that cannot be read stops gc: its packs are
            // unknown, so none may be deleted.
            let manifest =
                native::fetch_root(store, &m.key).await.map_err(|e| e.context(format!("reading {}", m.key)))?;
            referenced.extend(manifest.packs.iter().map(|p| p.id.clone()));
            kept_keys.insert(m.key.clone());
        }
        let mut report = GcReport { generations_kept: keep.len(), ..GcReport::default() };
        forget_pointers(store, drop.iter().map(|(_, m)| m.key.as_str())).await?;
        for (_, m) in &drop {
            store.delete(&m.key).await?;
            report.generations_deleted += 1;
            report.bytes_freed += m.size;
        }
        let packs = store.list(&format!("{key}.d/packs/")).await?;
        // Generations written while we worked protect their packs too.
        for m in layout::list_manifests(store, key).await? {
            if !kept_keys.contains(&m.key) && !drop.iter().any(|(_, d)| d.key == m.key) {
                if let Ok(manifest) = native::fetch_root(store, &m.key).await {
                    referenced.extend(manifest.packs.iter().map(|p| p.id.clone()));
                } else {
                    return Err(Error::Raced(format!(
                        "a new generation {} appeared and cannot be read; no pack deleted",
                        m.key
                    )));
                }
            }
        }
        let mut deleted = HashSet::new();
        for p in packs {
            let Some(id) = layout::pack_id_of(&p.key) else { continue };
            if referenced.contains(id) || young(p.last_modified) {
                report.packs_kept += 1;
                continue;
            }
            store.delete(&p.key).await?;
            deleted.insert(id.to_owned());
            report.packs_deleted += 1;
            report.bytes_freed += p.size;
        }
        // A generation written during the deletes may reuse a pack just
        // deleted (its writer checks too, and withdraws it): withdraw any
        // such generation, so no manifest is left pointing at nothing.
        if !deleted.is_empty() {
            for m in layout::list_manifests(store, key).await? {
                if kept_keys.contains(&m.key) {
                    continue;
                }
                let Ok(manifest) = native::fetch_root(store, &m.key).await else { continue };
                if manifest.packs.iter().any(|p| deleted.contains(&p.id)) {
                    tracing::warn!(target: "sandbox-cache", "withdrawing {}: written during gc, it reuses a deleted pack", m.key);
                    forget_pointers(store, std::iter::once(m.key.as_str())).await?;
                    store.delete(&m.key).await?;
                    report.generations_withdrawn += 1;
                }
            }
        }
        report.log(&self.location());
        Ok(report)
    }
}

/// The store-wide sweep: for every key, keeps the newest `keep` generations
/// (and any younger than the grace period) and deletes the rest; then
/// deletes every pool pack that no remaining generation references and that
/// is older than the grace period; then version-1 packs under each key
/// likewise.
///
/// The race it closes: a snapshot may reuse a pool pack (found by HEAD, or
/// through its base) that this sweep is about to delete. Packs younger
/// than the grace period are never deleted, which covers packs uploaded by
/// a snapshot still running; for an old pack being reused, both sides
/// check after the fact: the snapshot HEADs every pack after writing its
/// manifest and withdraws the manifest if one is gone, and this sweep,
/// after deleting, re-reads every generation that appeared since it listed
/// and withdraws any that names a deleted pack. Whichever comes second
/// sees the other's work, so no manifest is left naming a missing pack.
///
/// Bad pool objects (see `bad`): each marked object (`pool/bad/…`) is
/// read whole and checked against its name (BLAKE3 = id); a kept object
/// whose listed size differs from what a kept generation says is read
/// whole too; and a random sample of the other kept objects
/// ([`GcOptions::verify_rate`]), all within [`GcOptions::verify_bytes`]. A
/// bad one is deleted, with every generation that names it (its sites
/// restore from the next candidate, or start cold, and their next
/// snapshot uploads that content again), then its mark. A good one's mark
/// is deleted: a false alarm, logged. A mark never makes gc act without
/// this check, so a planted one costs nothing more.
///
/// Memory: one manifest at a time, plus the set of referenced pack ids (32
/// bytes each) and their sizes, and the listing.
pub async fn gc_store(store: &dyn sandcache_store::Store, opts: &GcOptions) -> Result<GcReport, Error> {
    if !(0.0..=1.0).contains(&opts.verify_rate) {
        return Err(Error::Config(format!("the verify rate must be a fraction from 0 to 1, not {}", opts.verify_rate)));
    }
    let now = SystemTime::now();
    let young = |t: SystemTime| now.duration_since(t).unwrap_or_default() < opts.grace;
    let listed = store.list("").await.map_err(|e| Error::Store(e).context(format!("listing {store}")))?;
    // Generations by key, and the packs: in the pool, and under keys (v1);
    // and the marks of pool objects reported bad.
    let mut generations: std::collections::BTreeMap<String, Vec<sandcache_store::ObjectInfo>> = Default::default();
    let mut pool = Vec::new();
    let mut keyed_packs = Vec::new();
    let mut marks = Vec::new();
    for o in listed {
        if let Some(id) = layout::pool_id_of(&o.key) {
            pool.push((parse_id(id), o));
        } else if o.key.starts_with(layout::MARKS) {
            marks.push(o);
        } else if let Some(key) = layout::generation_of(&o.key) {
            generations.entry(key.to_owned()).or_default().push(o);
        } else if o.key.contains(".d/packs/") && layout::pack_id_of(&o.key).is_some() {
            keyed_packs.push(o);
        }
    }
    let mut report = GcReport::default();
    let mut budget = opts.verify_bytes;
    // Marked objects first: read whole, checked against their names.
    let (bad, bad_marks) = check_marks(store, &pool, marks, &young, &mut budget, &mut report).await?;
    let mut bad = bad;
    let mut referenced = Referenced::default();
    let mut seen: HashSet<String> = HashSet::new();
    let (mut keep, mut drop) = (Vec::new(), Vec::new());
    for (key, mut gens) in generations {
        gens.sort_by(|a, b| b.key.cmp(&a.key));
        for (i, m) in gens.into_iter().enumerate() {
            seen.insert(m.key.clone());
            if i < opts.keep || young(m.last_modified) { keep.push((key.clone(), m)) } else { drop.push(m) }
        }
    }
    // Requests go IN_FLIGHT at a time: a store of 10,000 keys is tens of
    // thousands of them.
    let mut withdraw = Vec::new();
    for chunk in keep.chunks(IN_FLIGHT) {
        let roots = futures::future::join_all(chunk.iter().map(|(_, m)| native::fetch_root(store, &m.key))).await;
        for ((key, m), root) in chunk.iter().zip(roots) {
            // A kept generation that cannot be read stops gc: its packs are
            // unknown, so none may be deleted.
            let root = root.map_err(|e| e.context(format!("reading {}; no pack deleted", m.key)))?;
            if names_any(&root, &bad) {
                withdraw.push(m.clone());
                continue;
            }
            referenced.note(&root, key);
            report.generations_kept += 1;
        }
    }
    forget_pointers(store, drop.iter().map(|m| m.key.as_str())).await?;
    delete_all(store, drop.iter().map(|m| m.key.as_str())).await?;
    report.generations_deleted += drop.len();
    report.bytes_freed += drop.iter().map(|m| m.size).sum::<u64>();
    // Generations written while we worked protect their packs too.
    let appeared = new_generations(store, &seen).await?;
    for (key, m) in &appeared {
        let manifest = native::fetch_root(store, &m.key)
            .await
            .map_err(|e| e.context(format!("a new generation {} cannot be read; no pack deleted", m.key)))?;
        seen.insert(m.key.clone());
        if names_any(&manifest, &bad) {
            withdraw.push(m.clone());
            continue;
        }
        referenced.note(&manifest, key);
    }
    // The kept pool objects: each of the length its generations say (the
    // listing's sizes, free), and a sample read whole.
    let found = check_kept(store, &pool, &referenced, &bad, opts, &mut budget, &mut report).await?;
    if !found.is_empty() {
        // Generations naming an object just found bad go too (what only
        // they referenced stays until the next run: it is counted as kept).
        let kept = keep.iter().map(|(_, m)| (m, true)).chain(appeared.iter().map(|(_, m)| (m, false)));
        for (m, counted) in kept.collect::<Vec<_>>() {
            if withdraw.iter().any(|w| w.key == m.key) {
                continue;
            }
            if let Ok(root) = native::fetch_root(store, &m.key).await {
                if names_any(&root, &found) {
                    withdraw.push(m.clone());
                    report.generations_kept -= usize::from(counted);
                }
            }
        }
        bad.extend(found);
    }
    for m in &withdraw {
        tracing::warn!(target: "sandbox-cache", "withdrawing {}: it names a bad pool object", m.key);
    }
    forget_pointers(store, withdraw.iter().map(|m| m.key.as_str())).await?;
    delete_all(store, withdraw.iter().map(|m| m.key.as_str())).await?;
    report.generations_withdrawn_bad += withdraw.len();
    // Bad objects go, whatever their age or references; then their marks.
    let mut deleted: HashSet<[u8; 32]> = HashSet::new();
    let doomed_bad: Vec<&str> = bad.values().map(String::as_str).collect();
    delete_all(store, doomed_bad.iter().copied()).await?;
    for (id, o) in &pool {
        if id.is_some_and(|id| bad.contains_key(&id)) {
            report.bad_objects += 1;
            report.bytes_freed += o.size;
        }
    }
    deleted.extend(bad.keys().copied());
    delete_all(store, bad_marks.iter().map(String::as_str)).await?;
    let mut doomed = Vec::new();
    for (id, o) in pool {
        if id.is_some_and(|id| bad.contains_key(&id)) {
            continue;
        }
        if id.is_some_and(|id| referenced.pool.contains(&id)) || young(o.last_modified) {
            report.packs_kept += 1;
            continue;
        }
        deleted.extend(id);
        report.bytes_freed += o.size;
        doomed.push(o.key);
    }
    for o in keyed_packs {
        if referenced.keyed.contains(&o.key) || young(o.last_modified) {
            report.packs_kept += 1;
            continue;
        }
        report.bytes_freed += o.size;
        doomed.push(o.key);
    }
    delete_all(store, doomed.iter().map(String::as_str)).await?;
    report.packs_deleted += doomed.len();
    // Withdraw any generation written during the deletes that names a pack
    // just deleted, or a bad object (its writer checks too).
    if !deleted.is_empty() {
        for (_, m) in new_generations(store, &seen).await? {
            let Ok(manifest) = native::fetch_root(store, &m.key).await else { continue };
            let mut named = manifest.packs.iter().map(|p| &p.id).chain(manifest.piece_refs().map(|p| &p.id));
            if manifest.pooled() && named.any(|id| parse_id(id).is_some_and(|id| deleted.contains(&id))) {
                tracing::warn!(target: "sandbox-cache", "withdrawing {}: written during gc, it reuses a deleted pack", m.key);
                store.delete(&m.key).await?;
                report.generations_withdrawn += 1;
            }
        }
    }
    report.log(&store.to_string());
    Ok(report)
}

/// Pool objects found bad, by id, with their keys in the store.
type BadObjects = HashMap<[u8; 32], String>;

/// Pool objects read whole at once while verifying.
const VERIFY_IN_FLIGHT: usize = 4;

/// Checks every marked object within the budget (the rest wait for the
/// next run, their marks kept): the bad ones, and the marks to delete once
/// they are gone. Marks of objects that are good or gone are deleted now
/// (false alarms), and so is anything under `pool/bad/` that is not a
/// mark, once older than the grace period.
async fn check_marks(
    store: &dyn sandcache_store::Store,
    pool: &[(Option<[u8; 32]>, sandcache_store::ObjectInfo)],
    marks: Vec<sandcache_store::ObjectInfo>,
    young: &impl Fn(SystemTime) -> bool,
    budget: &mut u64,
    report: &mut GcReport,
) -> Result<(BadObjects, Vec<String>), Error> {
    let (mut bad, mut bad_marks, mut cleared) = (BadObjects::new(), Vec::new(), Vec::new());
    let mut todo = Vec::new();
    for m in marks {
        let Some(object) = layout::object_of_mark(&m.key) else {
            if !young(m.last_modified) {
                cleared.push(m.key);
            }
            continue;
        };
        match pool.binary_search_by(|(_, o)| o.key.as_str().cmp(&object)) {
            Ok(i) if pool[i].0.is_some() => todo.push((m.key, object, pool[i].1.size)),
            // Its object is gone (an earlier run deleted it): nothing to check.
            _ => cleared.push(m.key),
        }
    }
    let mut todo = todo.into_iter().peekable();
    while todo.peek().is_some() {
        let mut chunk = Vec::new();
        while let Some((_, _, size)) = todo.peek() {
            if chunk.len() == VERIFY_IN_FLIGHT || *size > *budget {
                break;
            }
            *budget -= *size;
            chunk.extend(todo.next());
        }
        if chunk.is_empty() {
            tracing::info!(target: "sandbox-cache", "verification budget spent: {} marked objects wait for the next run", todo.count());
            break;
        }
        let verdicts = futures::future::join_all(chunk.iter().map(|(_, o, _)| bad::verify(store, o, None))).await;
        for ((mark, object, _), verdict) in chunk.into_iter().zip(verdicts) {
            let (verdict, read) = verdict.map_err(|e| Error::Store(e).context(format!("verifying {object}")))?;
            report.objects_verified += usize::from(read > 0);
            report.bytes_verified += read;
            match verdict {
                Verdict::Bad(why) => {
                    tracing::warn!(target: "sandbox-cache", "{object}, marked bad, is: {why}");
                    let id = layout::pool_id_of(&object).and_then(parse_id).expect("a listed pool object");
                    bad.insert(id, object);
                    bad_marks.push(mark);
                }
                Verdict::Good | Verdict::Gone => {
                    tracing::info!(target: "sandbox-cache", "{object} was marked bad, but is what its name says: a false alarm, cleared");
                    report.false_marks += 1;
                    cleared.push(mark);
                }
            }
        }
    }
    delete_all(store, cleared.iter().map(String::as_str)).await?;
    Ok((bad, bad_marks))
}

/// Checks the kept pool objects: each whose listed size differs from what
/// its generations say, then a random sample at `opts.verify_rate`, read
/// whole within the budget. Returns those found bad.
async fn check_kept(
    store: &dyn sandcache_store::Store,
    pool: &[(Option<[u8; 32]>, sandcache_store::ObjectInfo)],
    referenced: &Referenced,
    bad: &BadObjects,
    opts: &GcOptions,
    budget: &mut u64,
    report: &mut GcReport,
) -> Result<BadObjects, Error> {
    use rand::seq::SliceRandom;
    let (mut wrong, mut sample) = (Vec::new(), Vec::new());
    for (id, o) in pool {
        let Some(id) = id.filter(|id| referenced.pool.contains(id) && !bad.contains_key(id)) else { continue };
        match referenced.sizes.get(&id) {
            Some(&said) if said != o.size => wrong.push((id, o, Some(said))),
            _ if opts.verify_rate > 0.0 && rand::random::<f64>() < opts.verify_rate => sample.push((id, o, None)),
            _ => {}
        }
    }
    sample.shuffle(&mut rand::rng());
    let mut found = BadObjects::new();
    for (what, list) in [("of the wrong length", wrong), ("sampled", sample)] {
        let mut todo = list.into_iter().peekable();
        while todo.peek().is_some() {
            let mut chunk = Vec::new();
            while let Some((_, o, _)) = todo.peek() {
                if chunk.len() == VERIFY_IN_FLIGHT || o.size > *budget {
                    break;
                }
                *budget -= o.size;
                chunk.extend(todo.next());
            }
            if chunk.is_empty() {
                tracing::info!(target: "sandbox-cache", "verification budget spent: {} objects {what} wait for the next run", todo.count());
                break;
            }
            let verdicts =
                futures::future::join_all(chunk.iter().map(|(_, o, said)| bad::verify(store, &o.key, *said))).await;
            for ((id, o, said), verdict) in chunk.into_iter().zip(verdicts) {
                let (verdict, read) = verdict.map_err(|e| Error::Store(e).context(format!("verifying {}", o.key)))?;
                report.objects_verified += usize::from(read > 0);
                report.bytes_verified += read;
                match verdict {
                    Verdict::Bad(why) => {
                        tracing::warn!(target: "sandbox-cache", "{} ({what}) is bad: {why}", o.key);
                        found.insert(id, o.key.clone());
                    }
                    // Listed at another size than a generation says, yet it
                    // hashes to its name: that generation is wrong, not the
                    // object (its restores fall through); left alone.
                    Verdict::Good if said.is_some() => tracing::warn!(
                        target: "sandbox-cache",
                        "{} is what its name says, but a kept generation gives it {} bytes, not {}",
                        o.key,
                        said.unwrap_or_default(),
                        o.size
                    ),
                    Verdict::Good | Verdict::Gone => {}
                }
            }
        }
    }
    Ok(found)
}

/// Whether a pooled generation names (as a pack, piece or hot piece) any
/// of `objects`.
fn names_any(m: &sandcache_archive::pack::Manifest, objects: &BadObjects) -> bool {
    if objects.is_empty() || !m.pooled() {
        return false;
    }
    let mut named = m.packs.iter().map(|p| &p.id).chain(m.piece_refs().map(|p| &p.id));
    named.any(|id| parse_id(id).is_some_and(|id| objects.contains_key(&id)))
}

/// Requests in flight in a store-wide gc.
const IN_FLIGHT: usize = 32;

/// Deletes every key, [`IN_FLIGHT`] at a time; the first error stops it.
/// Deletes the pointer (see [`layout::read_pointer`]) of each key that
/// names one of `generations`, and the pieces copied beside it, before
/// they go: a restore then lists the
/// key's generations instead of trying one that is being deleted.
async fn forget_pointers<'a>(
    store: &dyn sandcache_store::Store,
    generations: impl Iterator<Item = &'a str>,
) -> Result<(), Error> {
    use std::collections::BTreeSet;
    let doomed: HashSet<&str> = generations.collect();
    let keys: Vec<&str> =
        doomed.iter().filter_map(|g| layout::generation_of(g)).collect::<BTreeSet<_>>().into_iter().collect();
    for chunk in keys.chunks(IN_FLIGHT) {
        let pointers = futures::future::join_all(chunk.iter().map(|k| layout::read_pointer(store, k))).await;
        let stale = chunk
            .iter()
            .zip(pointers)
            .filter(|(_, p)| p.as_ref().is_some_and(|(g, _)| doomed.contains(g.key.as_str())));
        // With the pieces copied beside it, which belong to its generation.
        let stale: Vec<String> = stale.flat_map(|(k, _)| [layout::pointer_key(k), layout::new_pieces_key(k)]).collect();
        delete_all(store, stale.iter().map(String::as_str)).await?;
    }
    Ok(())
}

async fn delete_all<'a>(store: &dyn sandcache_store::Store, keys: impl Iterator<Item = &'a str>) -> Result<(), Error> {
    let keys: Vec<&str> = keys.collect();
    for chunk in keys.chunks(IN_FLIGHT) {
        for r in futures::future::join_all(chunk.iter().map(|k| store.delete(k))).await {
            r?;
        }
    }
    Ok(())
}

/// What the kept generations reference: pool objects by id, with the
/// length the first generation to name one gives it, and version-1 packs
/// by key.
#[derive(Default)]
struct Referenced {
    pool: HashSet<[u8; 32]>,
    sizes: HashMap<[u8; 32], u64>,
    keyed: HashSet<String>,
}

impl Referenced {
    /// Records the packs a kept generation needs, and the sizes it gives
    /// its pool objects (the first generation to name one says).
    fn note(&mut self, m: &sandcache_archive::pack::Manifest, key: &str) {
        // A root names its pieces (its hot piece too) and the union of their packs.
        for p in m.piece_refs() {
            if let Some(id) = parse_id(&p.id) {
                self.pool.insert(id);
                self.sizes.entry(id).or_insert(p.size);
            }
        }
        for p in &m.packs {
            if m.pooled() {
                if let Some(id) = parse_id(&p.id) {
                    self.pool.insert(id);
                    self.sizes.entry(id).or_insert(p.size);
                }
            } else {
                self.keyed.insert(layout::pack_key(key, m, &p.id));
            }
        }
    }
}

/// Generations stored now that are not in `seen`, with their keys.
async fn new_generations(
    store: &dyn sandcache_store::Store,
    seen: &HashSet<String>,
) -> Result<Vec<(String, sandcache_store::ObjectInfo)>, Error> {
    let listed = store.list("").await.map_err(|e| Error::Store(e).context(format!("listing {store}")))?;
    Ok(listed
        .into_iter()
        .filter(|o| !seen.contains(&o.key))
        .filter_map(|o| Some((layout::generation_of(&o.key)?.to_owned(), o)))
        .collect())
}

/// A pack id (64 hex digits) as 32 bytes, so a store's worth of ids stays
/// small in memory.
fn parse_id(id: &str) -> Option<[u8; 32]> {
    let bytes = id.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}
