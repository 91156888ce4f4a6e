//! Pool objects found bad: recorded where the next snapshot and gc see them.
//!
//! A restore that finds a pool object wrong (a pack or piece of the wrong
//! length, a piece that does not hash to its name, a frame that does not
//! decode or a file that fails its hash) cannot fix the object: the pool
//! is write-once, and the sandbox role may not delete. It reads the object
//! once more, whole, and when it is indeed not what its name says (another
//! length, or bytes that do not hash to its id: not a transfer that went
//! wrong, nor a manifest that lies about a file) says so, twice:
//!
//! - in this process's bookkeeping ([`Target::bad_path`], beside the state
//!   file: the runner's state dir), so the same pod's next snapshot knows
//!   even when the store refused the mark;
//! - in the store, as a **mark** `pool/bad/<id>.pack` (or `.tree`), written
//!   with `put_new` (the pool's only kind of write), holding which object,
//!   what was wrong and when.
//!
//! A snapshot never builds on, nor HEAD-skips, an object known bad: it
//! uploads that content again, salted ([`sandcache_archive::pack::salt`])
//! when the canonical name is the bad object's. A hot-first restore of a
//! generation naming a known-bad object restores it in one phase, so a bad
//! cold pack costs a fallback, never a partial tree. gc verifies each
//! marked object itself before acting on the mark: anyone with pool write
//! can plant a false mark, which only costs a re-upload (and a one-phase
//! restore) until gc's next run clears it.
//!
//! [`Target::bad_path`]: crate::target::Target::bad_path

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sandcache_store::{Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::layout;

/// Most marks a restore or snapshot reads (one page of an S3 listing): a
/// prefix anyone with pool write can fill must not cost more. gc reads
/// them all, and deletes the false ones.
pub(crate) const MAX_MARKS: usize = 1000;

/// How long listing the marks may hold a restore or snapshot up: past it,
/// the local record (and, in a snapshot, each object's length) is all it
/// goes by.
const MARKS_LIST_WITHIN: Duration = Duration::from_secs(2);

/// How long confirming the objects found and writing their marks may take:
/// they are advisory.
const MARKS_WRITE_WITHIN: Duration = Duration::from_secs(5);

/// Objects one operation confirms and marks at most (a generation with
/// every pack overwritten needs one to be found out; the rest follow).
const MARKS_PER_OP: usize = 8;

/// Entries the local record keeps (the newest), and for how long.
const LOCAL_MAX: usize = 256;
const LOCAL_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// A pool object found bad, and what was wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Bad {
    /// Its key in the store: `pool/<2 hex>/<id>.pack` or `.tree`.
    pub object: String,
    /// Its length, as the manifest that names it says.
    pub size: u64,
    pub why: String,
}

/// What a mark holds: for people reading the store, never trusted by gc.
#[derive(Serialize)]
struct Mark<'a> {
    object: &'a str,
    why: &'a str,
    at_ms: u64,
}

/// Bad objects found during one operation (any thread may add).
#[derive(Debug, Default)]
pub(crate) struct Found(Mutex<Vec<Bad>>);

impl Found {
    /// Notes a pool object found bad; anything else (a version-1 pack under
    /// its key) is not the pool's and is left out.
    /// `size`: its length as the manifest naming it says.
    pub(crate) fn add(&self, object: &str, size: u64, why: impl Into<String>) {
        if layout::pool_id_of(object).is_none() {
            return;
        }
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !all.iter().any(|b| b.object == object) {
            all.push(Bad { object: object.to_owned(), size, why: why.into() });
        }
    }

    /// What was found, taken out.
    pub(crate) fn take(&self) -> Vec<Bad> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The ids of pool objects known bad.
#[derive(Debug, Clone, Default)]
pub(crate) struct Known(HashSet<String>);

impl Known {
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.0.contains(id)
    }

    pub(crate) fn insert(&mut self, object: &str) {
        if let Some(id) = layout::pool_id_of(object) {
            self.0.insert(id.to_owned());
        }
    }

    /// The first pool object `m` names (a pack, a piece or a hot piece)
    /// that is known bad.
    pub(crate) fn named_by(&self, m: &sandcache_archive::pack::Manifest) -> Option<String> {
        if !m.pooled() {
            return None;
        }
        let packs = m.packs.iter().map(|p| layout::pool_key(&p.id));
        let pieces = m.piece_refs().map(|p| layout::piece_key(&p.id));
        packs.chain(pieces).find(|k| layout::pool_id_of(k).is_some_and(|id| self.contains(id)))
    }

    /// What this pod recorded for `store`, and the store's marks (a
    /// bounded listing; a failure or a slow store leaves them out).
    pub(crate) async fn load(store: &dyn Store, local: &Path, store_label: &str) -> Known {
        let mut known = Known::default();
        for b in read_local(local).into_iter().filter(|b| b.store == store_label) {
            known.insert(&b.object);
        }
        match tokio::time::timeout(MARKS_LIST_WITHIN, store.list_first(layout::MARKS, MAX_MARKS)).await {
            Ok(Ok(marks)) => {
                for m in marks {
                    if let Some(object) = layout::object_of_mark(&m.key) {
                        known.insert(&object);
                    }
                }
            }
            Ok(Err(e)) => tracing::debug!("could not list the pool's marks: {}", crate::error::error_chain(&e)),
            Err(_) => tracing::debug!("listing the pool's marks took over {MARKS_LIST_WITHIN:?}; going without"),
        }
        known
    }
}

/// One entry of the local record.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Local {
    store: String,
    object: String,
    why: String,
    at_ms: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct LocalRecord {
    objects: Vec<Local>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The local record, its expired entries left out; empty when there is
/// none or it cannot be read.
fn read_local(path: &Path) -> Vec<Local> {
    let Ok(bytes) = crate::bookkeeping::read_bookkeeping(path, 1 << 20) else { return Vec::new() };
    let record: LocalRecord = serde_json::from_slice(&bytes).unwrap_or_default();
    let oldest = now_ms().saturating_sub(LOCAL_TTL.as_millis() as u64);
    record.objects.into_iter().filter(|b| b.at_ms >= oldest).collect()
}

/// Adds `found` to the local record (the newest [`LOCAL_MAX`] are kept).
fn record_local(path: &Path, store_label: &str, found: &[Bad]) {
    let mut objects = read_local(path);
    let at_ms = now_ms();
    for b in found {
        objects.retain(|o| !(o.store == store_label && o.object == b.object));
        objects.push(Local { store: store_label.to_owned(), object: b.object.clone(), why: b.why.clone(), at_ms });
    }
    let excess = objects.len().saturating_sub(LOCAL_MAX);
    objects.drain(..excess);
    let written = serde_json::to_vec(&LocalRecord { objects })
        .map_err(std::io::Error::other)
        .and_then(|json| crate::bookkeeping::write_bookkeeping(path, &json));
    if let Err(e) = written {
        tracing::debug!("could not record the bad pool objects in {}: {e}", path.display());
    }
}

/// What a whole read of a pool object shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Its bytes hash to its id (and it has the length asked for).
    Good,
    /// It is not what its name says: why.
    Bad(String),
    /// Not there.
    Gone,
}

/// Reads a pool object whole (streamed, never held) and checks it against
/// its name: its BLAKE3 must be its id and, when given, its length `size`.
/// Returns the verdict and the bytes read.
pub(crate) async fn verify(store: &dyn Store, object: &str, size: Option<u64>) -> Result<(Verdict, u64), StoreError> {
    use futures::StreamExt;
    let Some(id) = layout::pool_id_of(object) else {
        return Ok((Verdict::Bad(format!("{object} is not a pool object's name")), 0));
    };
    let mut got = match store.get(object).await {
        Ok(g) => g,
        Err(StoreError::NotFound { .. }) => return Ok((Verdict::Gone, 0)),
        Err(e) => return Err(e),
    };
    let mut hasher = blake3::Hasher::new();
    let mut len = 0u64;
    while let Some(chunk) = got.stream.next().await {
        let chunk = chunk?;
        len += chunk.len() as u64;
        hasher.update(&chunk);
    }
    let verdict = match (size, hasher.finalize().to_hex()) {
        (Some(want), _) if want != len => Verdict::Bad(format!("{len} bytes, where its manifest says {want}")),
        (_, hash) if hash.as_str() != id => Verdict::Bad(format!("its {len} bytes do not hash to its name")),
        _ => Verdict::Good,
    };
    Ok((verdict, len))
}

/// Says what `found` holds, once each object is confirmed bad by a whole
/// read ([`verify`]): a warning, the local record, and a mark in the store
/// for each (all within a few seconds: they are advisory). What reads as
/// good was a transfer that went wrong, or a manifest that lies about a
/// file, and is only logged.
pub(crate) async fn report(store: &dyn Store, local: &Path, store_label: &str, found: &Found) {
    let found = found.take();
    if found.is_empty() {
        return;
    }
    let confirm = found.into_iter().take(MARKS_PER_OP).map(|b| async move {
        match verify(store, &b.object, Some(b.size)).await {
            Ok((Verdict::Bad(why), _)) => Some(Bad { why: format!("{why} ({})", b.why), ..b }),
            Ok((Verdict::Good, _)) => {
                tracing::info!(
                    target: "sandbox-cache",
                    "pool object {} reads whole as its name says (found: {}): not marked",
                    b.object,
                    b.why
                );
                None
            }
            Ok((Verdict::Gone, _)) => None,
            Err(e) => {
                tracing::warn!(target: "sandbox-cache", "could not check pool object {}: {}", b.object, crate::error::error_chain(&e));
                None
            }
        }
    });
    let marked = async {
        let bad: Vec<Bad> = futures::future::join_all(confirm).await.into_iter().flatten().collect();
        if bad.is_empty() {
            return;
        }
        for b in &bad {
            tracing::warn!(
                target: "sandbox-cache",
                object = b.object.as_str(),
                "pool object {} is bad: {}; marked, so no snapshot builds on it and gc checks it",
                b.object,
                b.why
            );
        }
        record_local(local, store_label, &bad);
        let marks = bad.iter().filter_map(|b| {
            let key = layout::mark_key(&b.object)?;
            let body = serde_json::to_vec(&Mark { object: &b.object, why: &b.why, at_ms: now_ms() }).ok()?;
            Some(async move {
                // `put_new`: a mark already there (another pod's) is kept.
                if let Err(e) = store.put_new(&key, body.into()).await {
                    tracing::warn!(target: "sandbox-cache", "could not mark {} bad in the store: {}", b.object, crate::error::error_chain(&e));
                }
            })
        });
        futures::future::join_all(marks).await;
    };
    if tokio::time::timeout(MARKS_WRITE_WITHIN, marked).await.is_err() {
        tracing::warn!(target: "sandbox-cache", "checking and marking bad pool objects took over {MARKS_WRITE_WITHIN:?}; left for the next one to find");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_record_is_bounded_and_per_store() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("bad.json");
        let bad = |i: usize| {
            let id = format!("{i:064x}");
            Bad { object: format!("pool/{}/{id}.pack", &id[..2]), size: 1, why: "test".into() }
        };
        let found: Vec<Bad> = (0..LOCAL_MAX + 10).map(bad).collect();
        record_local(&path, "file:///a", &found);
        record_local(&path, "file:///b", &[bad(1)]);
        let all = read_local(&path);
        assert_eq!(all.len(), LOCAL_MAX);
        assert!(all.iter().any(|b| b.store == "file:///b"), "the newest stays");
        assert!(read_local(&tmp.path().join("none.json")).is_empty());
        std::fs::write(&path, b"{ not json").unwrap();
        assert!(read_local(&path).is_empty(), "a broken record is no record");
    }
}
