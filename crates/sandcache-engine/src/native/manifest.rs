//! Reading a generation's manifest: its root, its pieces (fetched, checked
//! against their hashes, joined in order) and its hot pieces.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use sandcache_archive::pack::{Manifest, PieceRef};
use sandcache_store::{Store, StoreError};

use crate::bad::Found;
use crate::error::{Declined, Error};
use crate::layout::piece_key;

use super::piece_cache::PieceCache;

use super::prefetch::get_all;
use sandcache_archive::pack::Joiner;

/// A generation's manifest, whole: a root's pieces are fetched (64 at a
/// time), each checked against its hash, and joined in order. A piece
/// that is not what its name says goes into `found`.
pub(crate) async fn fetch_manifest(store: &dyn Store, key: &str, found: &Found) -> Result<Manifest, Error> {
    let pieces = Pieces { store, found, cache: None, given: None, keep: false };
    whole(&pieces, fetch_root(store, key).await?).await
}

/// Where a manifest's pieces come from: the local cache when it holds
/// them, else the store; and where bad ones are noted.
#[derive(Clone, Copy)]
pub(crate) struct Pieces<'a> {
    pub(crate) store: &'a dyn Store,
    pub(crate) found: &'a Found,
    pub(crate) cache: Option<&'a PieceCache>,
    /// Pieces given beside the key's pointer (each hashing to its id):
    /// read there first, and kept in `cache` as if fetched.
    pub(crate) given: Option<&'a crate::layout::GivenPieces>,
    /// Keep the pieces decoded in this process ([`DECODED`]): a restore
    /// whose manifest is remembered for a later delta.
    pub(crate) keep: bool,
}

/// Pieces this process decoded for restores that remember their manifest
/// (a runner's pre-warm and deploys), by id. A piece's id is the BLAKE3 of
/// its bytes, so it decodes the same wherever it is named: a later delta
/// joins the pieces its new root shares with the generation the dir holds
/// from here, copied (a few ms for a DENO_DIR) instead of decoded again
/// (some 20 ms of a core, on the deploy's critical path). Checked against
/// the root's word as any piece is. Bounded: past [`DECODED_ENTRIES`],
/// only the pieces of the manifest joined last are kept (the next delta
/// starts from it).
static DECODED: Mutex<Decoded> = Mutex::new(Decoded { pieces: None, entries: 0 });

struct Decoded {
    pieces: Option<HashMap<String, Arc<Manifest>>>,
    entries: usize,
}

/// Most entries [`DECODED`] holds (a few manifests of a DENO_DIR's size).
const DECODED_ENTRIES: usize = 200_000;

fn decoded(id: &str) -> Option<Arc<Manifest>> {
    DECODED.lock().unwrap_or_else(|p| p.into_inner()).pieces.as_ref()?.get(id).cloned()
}

fn keep_decoded(id: &str, piece: &Arc<Manifest>) {
    let mut guard = DECODED.lock().unwrap_or_else(|p| p.into_inner());
    let d = &mut *guard;
    let pieces = d.pieces.get_or_insert_with(HashMap::new);
    if pieces.insert(id.to_owned(), piece.clone()).is_none() {
        d.entries += piece.entries.len();
    }
}

/// Past the bound, keeps only the pieces `root` names (a manifest a
/// remembering restore just joined).
fn trim_decoded(root: &Manifest) {
    let mut guard = DECODED.lock().unwrap_or_else(|p| p.into_inner());
    let d = &mut *guard;
    if d.entries <= DECODED_ENTRIES {
        return;
    }
    let named: std::collections::HashSet<&str> = root.pieces.iter().map(|p| p.id.as_str()).collect();
    if let Some(pieces) = d.pieces.as_mut() {
        pieces.retain(|id, _| named.contains(id.as_str()));
        d.entries = pieces.values().map(|p| p.entries.len()).sum();
    }
}

/// A piece as joined: decoded for this join, or shared with [`DECODED`].
enum Piece {
    Decoded(Manifest),
    Shared(Arc<Manifest>),
}

impl Piece {
    fn entries(&self) -> usize {
        match self {
            Piece::Decoded(m) => m.entries.len(),
            Piece::Shared(m) => m.entries.len(),
        }
    }
}

/// A stored manifest made whole: a root joined with its pieces.
pub(crate) async fn whole(pieces: &Pieces<'_>, root: Manifest) -> Result<Manifest, Error> {
    if root.pieces.is_empty() { Ok(root) } else { assemble(pieces, root).await }
}

/// A generation's manifest as stored: for a root, its pieces unread (what
/// gc needs: the union of packs, and the pieces' ids).
pub(crate) async fn fetch_root(store: &dyn Store, key: &str) -> Result<Manifest, Error> {
    let bytes = get_all(store, key).await?;
    Ok(Manifest::decode(&bytes)?)
}

/// Pieces fetched at once: a DENO_DIR of 25k entries is about 45 pieces,
/// one round trip.
const PIECES_IN_FLIGHT: usize = 64;

/// Most pieces a root may name.
const MAX_PIECES: usize = 1 << 16;

pub(super) fn corrupt(detail: String) -> Error {
    Error::Corrupt(detail)
}

/// Joins a root's pieces into one whole manifest (which the caller then
/// validates as any other): each piece must hash to its id and be whole
/// itself; frames and packs are renumbered into one list.
async fn assemble(pieces: &Pieces<'_>, root: Manifest) -> Result<Manifest, Error> {
    if root.pieces.len() > MAX_PIECES {
        return Err(corrupt(format!("the manifest names {} pieces (at most {MAX_PIECES})", root.pieces.len())));
    }
    let max_entries = sandcache_archive::Limits::default().max_entries;
    let mut whole = Joiner::new(&root);
    // A window of fetches in flight, answered in order; each piece is
    // checked and decoded on a blocking thread as it arrives, so the
    // decoding (most of a manifest's cost) runs on every core.
    let fetch = |p: &PieceRef| fetch_piece(pieces, p.clone());
    let mut next = root.pieces.iter();
    let mut in_flight = futures::stream::FuturesOrdered::new();
    for p in next.by_ref().take(PIECES_IN_FLIGHT) {
        in_flight.push_back(fetch(p));
    }
    for p in &root.pieces {
        let piece = in_flight.next().await.expect("one fetch per piece")?;
        if let Some(n) = next.next() {
            in_flight.push_back(fetch(n));
        }
        if (whole.entries() + piece.entries()) as u64 > max_entries {
            return Err(Error::TooLarge(format!("the manifest holds over {max_entries} entries")));
        }
        let joined = match piece {
            Piece::Decoded(piece) => whole.append(piece),
            Piece::Shared(piece) => whole.append_shared(&piece),
        };
        joined.map_err(|why| corrupt(format!("piece {}: {why}", p.id)))?;
    }
    let whole = whole.finish();
    if pieces.keep {
        trim_decoded(&root);
    }
    tracing::debug!(target: "sandbox-cache", "{} pieces joined: {} entries", root.pieces.len(), whole.entries.len());
    Ok(whole)
}

/// One piece, checked against its hash and its root's word, decoded on a
/// blocking thread. A piece of another length than its root says, or that
/// does not hash to its name, is a bad pool object: noted in `found`.
async fn fetch_piece(pieces: &Pieces<'_>, p: PieceRef) -> Result<Piece, Error> {
    let keep = pieces.keep;
    if let Some(piece) = decoded(&p.id).filter(|m| m.entries.len() as u64 == p.entries) {
        return Ok(Piece::Shared(piece));
    }
    let piece = fetch_and_decode(pieces, &p).await?;
    Ok(match keep {
        true => {
            let piece = Arc::new(piece);
            keep_decoded(&p.id, &piece);
            Piece::Shared(piece)
        }
        false => Piece::Decoded(piece),
    })
}

/// One piece, from where `pieces` says, checked and decoded (see
/// [`fetch_piece`]).
async fn fetch_and_decode(pieces: &Pieces<'_>, p: &PieceRef) -> Result<Manifest, Error> {
    let Pieces { store, found, cache, given, .. } = *pieces;
    let (k, id, entries) = (piece_key(&p.id), p.id.clone(), p.entries);
    // Given beside the pointer (its hash checked as it was read: kept as
    // if fetched), or held locally and whole (checked here, as the store's
    // copy is below): no request. A copy that does not hash to its name is
    // only ignored, never reported as a bad pool object.
    let given = given.and_then(|g| g.get(&id)).filter(|b| b.len() as u64 == p.size);
    let local = match given {
        Some(bytes) => Some((bytes.clone(), true)),
        None => cache.and_then(|c| c.get(&id, p.size)).map(|b| (bytes::Bytes::from(b), false)),
    };
    if let Some((bytes, copied)) = local {
        let want = id.clone();
        let local = tokio::task::spawn_blocking(move || {
            let ok = copied || blake3::hash(&bytes).to_hex().as_str() == want;
            let piece = ok.then(|| Manifest::decode(&bytes).ok()).flatten();
            let piece = piece.filter(|m| m.pieces.is_empty() && m.hot.is_empty() && m.entries.len() as u64 == entries);
            piece.map(|piece| (piece, bytes))
        })
        .await
        .map_err(|e| Error::joined("a manifest piece's decoder", e))?;
        if let Some((piece, bytes)) = local {
            if let (true, Some(c)) = (copied, cache) {
                c.put(&id, &bytes);
            }
            return Ok(piece);
        }
    }
    let id = p.id.clone();
    let bytes = get_all(store, &k).await.map_err(|e| match e {
        StoreError::NotFound { .. } => Declined::NotFound(format!("piece {id} is gone")).into(),
        e => Error::Store(e),
    })?;
    if bytes.len() as u64 != p.size {
        let why = format!("{} bytes where its root says {}", bytes.len(), p.size);
        found.add(&k, p.size, &why);
        return Err(corrupt(format!("piece {id} is {why}")));
    }
    // Err(Some(_)): the object is not what its name says; Err(None): it
    // is, but it is not a piece this root can use.
    let checked = tokio::task::spawn_blocking(move || {
        if blake3::hash(&bytes).to_hex().as_str() != id {
            return Err((corrupt(format!("piece {id} does not hash to its name")), true));
        }
        let piece = Manifest::decode(&bytes).map_err(|e| (Error::Extract(e), false))?;
        if !piece.pieces.is_empty() || !piece.hot.is_empty() || piece.entries.len() as u64 != entries {
            return Err((corrupt(format!("piece {id} is not what its root says")), false));
        }
        Ok((piece, bytes))
    })
    .await
    .map_err(|e| Error::joined("a manifest piece's decoder", e))?;
    let (piece, bytes) = checked.map_err(|(e, bad)| {
        if bad {
            found.add(&k, p.size, "does not hash to its name");
        }
        e
    })?;
    if let Some(c) = cache {
        c.put(&p.id, &bytes);
    }
    Ok(piece)
}

/// A root's hot piece (see [`Manifest::hot`]) as a validated manifest of
/// its own generation; `None` when the root has none or it cannot be used
/// (gone, corrupt, unsafe: logged), and the whole manifest is read first.
pub(crate) async fn usable_hot(
    pieces: &Pieces<'_>,
    root: &Manifest,
    limits: &sandcache_archive::Limits,
    dir: &Path,
    generation: &str,
) -> Option<Manifest> {
    if root.hot.is_empty() {
        return None;
    }
    // Joined as a root's pieces are.
    let hot = Manifest { pieces: root.hot.clone(), ..Manifest::empty(root.version, root.created_ms) };
    let checked = assemble(pieces, hot).await.and_then(|hot| {
        hot.validate(limits, dir)?;
        Ok(hot)
    });
    checked
        .inspect_err(|e| {
            tracing::warn!(target: "sandbox-cache", "{generation}: its hot piece is unusable ({}); reading the whole manifest first", crate::error::error_chain(e))
        })
        .ok()
}

#[cfg(test)]
mod tests {
    use sandcache_archive::pack::Entry;
    use sandcache_store::LocalStore;

    use super::*;

    #[tokio::test]
    async fn pieces_kept_decoded_are_joined_again_without_a_request() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LocalStore::new(tmp.path().join("store"));
        // Names no other test uses: the kept pieces are the process's.
        let entries = (0..2000).map(|i| Entry::symlink(format!("kept-{i:05}"), format!("t{i}"), 0o777, 1)).collect();
        let m = Manifest { entries, ..Manifest::empty(sandcache_archive::pack::VERSION, 0) };
        let (root, pieces) = super::super::split(&m);
        assert!(root.pieces.len() > 1);
        for (id, bytes) in pieces {
            store.put_new(&piece_key(&id), bytes.into()).await.unwrap();
        }
        let found = Found::default();
        let pieces = |keep| Pieces { store: &store, found: &found, cache: None, given: None, keep };
        assert_eq!(whole(&pieces(true), root.clone()).await.unwrap().entries, m.entries);
        // The store's pieces gone: joined from what this process kept.
        std::fs::remove_dir_all(tmp.path().join("store")).unwrap();
        assert_eq!(whole(&pieces(false), root.clone()).await.unwrap().entries, m.entries);
        // A root that says a piece holds other entries than the kept one
        // does not take it: it asks the store, which has none.
        let mut other = root.clone();
        other.pieces[0].entries += 1;
        assert!(whole(&pieces(false), other).await.is_err());
        // Past the bound, only the pieces of the manifest joined last stay.
        let big = (0..=DECODED_ENTRIES).map(|i| Entry::dir(format!("d{i}"), 0o755, 1)).collect();
        keep_decoded("big", &Arc::new(Manifest { entries: big, ..Manifest::empty(3, 0) }));
        trim_decoded(&root);
        assert!(decoded("big").is_none());
        assert!(root.pieces.iter().all(|p| decoded(&p.id).is_some()));
    }
}
