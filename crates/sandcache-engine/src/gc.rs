//! Retention: keep the newest generations, delete what nothing needs.
//!
//! Two scopes. [`Cache::gc`] works on one key: it drops that key's old
//! generations (and version-1 packs under the key that nothing kept
//! needs). [`gc_store`] sweeps a whole store: the old generations of every
//! key, then every pool object no kept generation references.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::native;
use crate::{Cache, Inner, error_chain};

/// How much to keep.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Newest generations kept, whatever their age.
    pub keep: usize,
    /// Nothing younger than this is deleted: an in-flight snapshot's packs
    /// (uploaded before its manifest) and any generation written meanwhile
    /// survive.
    pub grace: Duration,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions { keep: 3, grace: Duration::from_secs(3600) }
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
}

impl GcReport {
    fn log(&self, location: &str) {
        tracing::info!(
            target: "sandbox-cache",
            "gc {location}: kept {} generations and {} packs, deleted {} generations and {} packs, freed {} MB",
            self.generations_kept,
            self.packs_kept,
            self.generations_deleted,
            self.packs_deleted,
            crate::mb(self.bytes_freed)
        );
    }
}

impl Cache {
    /// Deletes generations beyond the newest `keep` (and older than the
    /// grace period), then packs that no remaining generation references
    /// and that are older than the grace period. Manifests go first, so no
    /// remaining manifest ever points at a deleted pack. Unlike restore and
    /// snapshot this is an administrative command and reports failures.
    pub async fn gc(&self, opts: &GcOptions) -> Result<GcReport, String> {
        let (store, key) = match &self.inner {
            Inner::Enabled { store, key } => (store.as_ref(), key.as_str()),
            Inner::Disabled => return Err("no cache store configured".into()),
            Inner::Invalid(skip) => return Err(skip.detail.clone()),
        };
        let now = SystemTime::now();
        let young = |t: SystemTime| now.duration_since(t).unwrap_or_default() < opts.grace;
        let manifests = native::list_manifests(store, key).await.map_err(|e| error_chain(&e))?;
        let (keep, drop): (Vec<_>, Vec<_>) =
            manifests.into_iter().enumerate().partition(|(i, m)| *i < opts.keep || young(m.last_modified));
        let mut referenced = HashSet::new();
        let mut kept_keys = HashSet::new();
        for (_, m) in &keep {
            // A kept generation that cannot be read stops gc: its packs are
            // unknown, so none may be deleted.
            let manifest =
                native::fetch_root(store, &m.key).await.map_err(|s| format!("reading {}: {}", m.key, s.detail))?;
            referenced.extend(manifest.packs.iter().map(|p| p.id.clone()));
            kept_keys.insert(m.key.clone());
        }
        let mut report = GcReport { generations_kept: keep.len(), ..GcReport::default() };
        for (_, m) in &drop {
            store.delete(&m.key).await.map_err(|e| error_chain(&e))?;
            report.generations_deleted += 1;
            report.bytes_freed += m.size;
        }
        let packs = store.list(&format!("{key}.d/packs/")).await.map_err(|e| error_chain(&e))?;
        // Generations written while we worked protect their packs too.
        for m in native::list_manifests(store, key).await.map_err(|e| error_chain(&e))? {
            if !kept_keys.contains(&m.key) && !drop.iter().any(|(_, d)| d.key == m.key) {
                if let Ok(manifest) = native::fetch_root(store, &m.key).await {
                    referenced.extend(manifest.packs.iter().map(|p| p.id.clone()));
                } else {
                    return Err(format!("a new generation {} appeared and cannot be read; no pack deleted", m.key));
                }
            }
        }
        let mut deleted = HashSet::new();
        for p in packs {
            let Some(id) = native::pack_id_of(&p.key) else { continue };
            if referenced.contains(id) || young(p.last_modified) {
                report.packs_kept += 1;
                continue;
            }
            store.delete(&p.key).await.map_err(|e| error_chain(&e))?;
            deleted.insert(id.to_owned());
            report.packs_deleted += 1;
            report.bytes_freed += p.size;
        }
        // A generation written during the deletes may reuse a pack just
        // deleted (its writer checks too, and withdraws it): withdraw any
        // such generation, so no manifest is left pointing at nothing.
        if !deleted.is_empty() {
            for m in native::list_manifests(store, key).await.map_err(|e| error_chain(&e))? {
                if kept_keys.contains(&m.key) {
                    continue;
                }
                let Ok(manifest) = native::fetch_root(store, &m.key).await else { continue };
                if manifest.packs.iter().any(|p| deleted.contains(&p.id)) {
                    tracing::warn!(target: "sandbox-cache", "withdrawing {}: written during gc, it reuses a deleted pack", m.key);
                    store.delete(&m.key).await.map_err(|e| error_chain(&e))?;
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
/// Memory: one manifest at a time, plus the set of referenced pack ids (32
/// bytes each) and the listing.
pub async fn gc_store(store: &dyn sandcache_store::Store, opts: &GcOptions) -> Result<GcReport, String> {
    let now = SystemTime::now();
    let young = |t: SystemTime| now.duration_since(t).unwrap_or_default() < opts.grace;
    let listed = store.list("").await.map_err(|e| format!("listing {store}: {}", error_chain(&e)))?;
    // Generations by key, and the packs: in the pool, and under keys (v1).
    let mut generations: std::collections::BTreeMap<String, Vec<sandcache_store::ObjectInfo>> = Default::default();
    let mut pool = Vec::new();
    let mut keyed_packs = Vec::new();
    for o in listed {
        if let Some(id) = native::pool_id_of(&o.key) {
            pool.push((parse_id(id), o));
        } else if let Some(key) = native::generation_of(&o.key) {
            generations.entry(key.to_owned()).or_default().push(o);
        } else if o.key.contains(".d/packs/") && native::pack_id_of(&o.key).is_some() {
            keyed_packs.push(o);
        }
    }
    let mut report = GcReport::default();
    let mut referenced: HashSet<[u8; 32]> = HashSet::new();
    let mut referenced_keyed: HashSet<String> = HashSet::new();
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
    for chunk in keep.chunks(IN_FLIGHT) {
        let roots = futures::future::join_all(chunk.iter().map(|(_, m)| native::fetch_root(store, &m.key))).await;
        for ((key, m), root) in chunk.iter().zip(roots) {
            // A kept generation that cannot be read stops gc: its packs are
            // unknown, so none may be deleted.
            let root = root.map_err(|s| format!("reading {}: {}; no pack deleted", m.key, s.detail))?;
            note_refs(&root, key, &mut referenced, &mut referenced_keyed);
            report.generations_kept += 1;
        }
    }
    delete_all(store, drop.iter().map(|m| m.key.as_str())).await?;
    report.generations_deleted += drop.len();
    report.bytes_freed += drop.iter().map(|m| m.size).sum::<u64>();
    // Generations written while we worked protect their packs too.
    let appeared = new_generations(store, &seen).await?;
    for (key, m) in &appeared {
        let manifest = native::fetch_root(store, &m.key)
            .await
            .map_err(|s| format!("a new generation {} cannot be read ({}); no pack deleted", m.key, s.detail))?;
        note_refs(&manifest, key, &mut referenced, &mut referenced_keyed);
        seen.insert(m.key.clone());
    }
    let mut deleted: HashSet<[u8; 32]> = HashSet::new();
    let mut doomed = Vec::new();
    for (id, o) in pool {
        if id.is_some_and(|id| referenced.contains(&id)) || young(o.last_modified) {
            report.packs_kept += 1;
            continue;
        }
        deleted.extend(id);
        report.bytes_freed += o.size;
        doomed.push(o.key);
    }
    for o in keyed_packs {
        if referenced_keyed.contains(&o.key) || young(o.last_modified) {
            report.packs_kept += 1;
            continue;
        }
        report.bytes_freed += o.size;
        doomed.push(o.key);
    }
    delete_all(store, doomed.iter().map(String::as_str)).await?;
    report.packs_deleted += doomed.len();
    // Withdraw any generation written during the deletes that names a pack
    // just deleted (its writer checks too).
    if !deleted.is_empty() {
        for (_, m) in new_generations(store, &seen).await? {
            let Ok(manifest) = native::fetch_root(store, &m.key).await else { continue };
            let mut named = manifest.packs.iter().map(|p| &p.id).chain(manifest.piece_refs().map(|p| &p.id));
            if manifest.pooled() && named.any(|id| parse_id(id).is_some_and(|id| deleted.contains(&id))) {
                tracing::warn!(target: "sandbox-cache", "withdrawing {}: written during gc, it reuses a deleted pack", m.key);
                store.delete(&m.key).await.map_err(|e| error_chain(&e))?;
                report.generations_withdrawn += 1;
            }
        }
    }
    report.log(&store.to_string());
    Ok(report)
}

/// Requests in flight in a store-wide gc.
const IN_FLIGHT: usize = 32;

/// Deletes every key, [`IN_FLIGHT`] at a time; the first error stops it.
async fn delete_all<'a>(store: &dyn sandcache_store::Store, keys: impl Iterator<Item = &'a str>) -> Result<(), String> {
    let keys: Vec<&str> = keys.collect();
    for chunk in keys.chunks(IN_FLIGHT) {
        for r in futures::future::join_all(chunk.iter().map(|k| store.delete(k))).await {
            r.map_err(|e| error_chain(&e))?;
        }
    }
    Ok(())
}

/// Records the packs a kept generation needs.
fn note_refs(
    m: &sandcache_archive::pack::Manifest,
    key: &str,
    pool: &mut HashSet<[u8; 32]>,
    keyed: &mut HashSet<String>,
) {
    // A root names its pieces (its hot piece too) and the union of their packs.
    pool.extend(m.piece_refs().filter_map(|p| parse_id(&p.id)));
    for p in &m.packs {
        if m.pooled() {
            if let Some(id) = parse_id(&p.id) {
                pool.insert(id);
            }
        } else {
            keyed.insert(native::pack_key(key, m, &p.id));
        }
    }
}

/// Generations stored now that are not in `seen`, with their keys.
async fn new_generations(
    store: &dyn sandcache_store::Store,
    seen: &HashSet<String>,
) -> Result<Vec<(String, sandcache_store::ObjectInfo)>, String> {
    let listed = store.list("").await.map_err(|e| format!("listing {store}: {}", error_chain(&e)))?;
    Ok(listed
        .into_iter()
        .filter(|o| !seen.contains(&o.key))
        .filter_map(|o| Some((native::generation_of(&o.key)?.to_owned(), o)))
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
