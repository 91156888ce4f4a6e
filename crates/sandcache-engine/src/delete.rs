//! Removal of one key's cache, for when a site is deleted.

use std::time::Instant;

use serde::Serialize;

use crate::cache::Cache;
use crate::error::Error;
use crate::layout;
use crate::outcome::mb;

/// What a delete removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeleteReport {
    /// Native generations (manifests) removed.
    pub generations_deleted: usize,
    /// Packs removed from under the key (shared pool content, if any, is
    /// left to gc).
    pub packs_deleted: usize,
    /// Every object removed: generations, packs, the seed's single object
    /// and anything else under `K.d/`.
    pub objects_deleted: usize,
    pub bytes_freed: u64,
    /// The key held nothing: not an error.
    pub not_found: bool,
    pub ms: u64,
}

/// Rounds of list-then-delete: a snapshot still running for the key may add
/// objects while we delete; each round removes what the last one listed.
const ROUNDS: usize = 3;

impl Cache {
    /// Removes everything stored for this key: every native generation, the
    /// key's packs, the seed's object at the key itself, and anything else
    /// under `K.d/`. Manifests go first, so a restore running meanwhile sees
    /// a whole generation or none. The next restore of the key is
    /// `not_found`. A key that holds nothing is not an error. Like gc, this
    /// is an administrative command and reports failures.
    pub async fn delete(&self) -> Result<DeleteReport, Error> {
        let start = Instant::now();
        let (store, key) = self.enabled()?;
        let mut report = DeleteReport::default();
        let fail = |what: &str, e| Error::Store(e).context(format!("{what} under {store}/{key}"));
        for round in 0..ROUNDS {
            let manifests = layout::list_manifests(store, key).await.map_err(|e| fail("listing generations", e))?;
            let mut rest = store.list(&format!("{key}.d/")).await.map_err(|e| fail("listing objects", e))?;
            rest.retain(|o| !manifests.iter().any(|m| m.key == o.key));
            let seed = store.head(key).await.map_err(|e| fail("looking up the object", e))?;
            if manifests.is_empty() && rest.is_empty() && seed.is_none() {
                break;
            }
            if round + 1 == ROUNDS {
                return Err(Error::Raced(format!(
                    "objects keep appearing under {store}/{key} (a snapshot of this key is still running?); \
                     stop the site's sandbox and delete again"
                )));
            }
            // The pointer first: a restore meanwhile lists, and finds a whole
            // generation or none.
            if rest.iter().any(|o| o.key == layout::pointer_key(key)) {
                store.delete(&layout::pointer_key(key)).await.map_err(|e| fail("deleting the pointer", e))?;
            }
            for m in &manifests {
                store.delete(&m.key).await.map_err(|e| fail("deleting a generation", e))?;
                report.generations_deleted += 1;
                report.objects_deleted += 1;
                report.bytes_freed += m.size;
            }
            for o in seed.iter().chain(&rest) {
                store.delete(&o.key).await.map_err(|e| fail("deleting an object", e))?;
                report.packs_deleted += usize::from(layout::pack_id_of(&o.key).is_some());
                report.objects_deleted += 1;
                report.bytes_freed += o.size;
            }
        }
        report.not_found = report.objects_deleted == 0;
        report.ms = start.elapsed().as_millis() as u64;
        tracing::info!(
            target: "sandbox-cache",
            "delete {}: {} generations, {} packs, {} objects, {} MB freed",
            self.location(),
            report.generations_deleted,
            report.packs_deleted,
            report.objects_deleted,
            mb(report.bytes_freed)
        );
        Ok(report)
    }
}
