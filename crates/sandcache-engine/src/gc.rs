//! Retention: keep the newest generations, delete what nothing needs.

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
                native::fetch_manifest(store, &m.key).await.map_err(|s| format!("reading {}: {}", m.key, s.detail))?;
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
                if let Ok(manifest) = native::fetch_manifest(store, &m.key).await {
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
                let Ok(manifest) = native::fetch_manifest(store, &m.key).await else { continue };
                if manifest.packs.iter().any(|p| deleted.contains(&p.id)) {
                    tracing::warn!(target: "sandbox-cache", "withdrawing {}: written during gc, it reuses a deleted pack", m.key);
                    store.delete(&m.key).await.map_err(|e| error_chain(&e))?;
                    report.generations_withdrawn += 1;
                }
            }
        }
        tracing::info!(
            target: "sandbox-cache",
            "gc {}: kept {} generations and {} packs, deleted {} generations and {} packs, freed {} MB",
            self.location(),
            report.generations_kept,
            report.packs_kept,
            report.generations_deleted,
            report.packs_deleted,
            crate::mb(report.bytes_freed)
        );
        Ok(report)
    }
}
