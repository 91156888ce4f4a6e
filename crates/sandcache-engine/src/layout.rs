//! Where everything lives in a store, and which keys are valid: the one
//! reading and writing of object names.
//!
//! The native layout:
//!
//! ```text
//! pool/<2 hex>/<blake3>.pack              immutable, content-addressed, shared by every key
//! pool/<2 hex>/<blake3>.tree              a manifest piece (or a root's hot piece), likewise
//! K.d/manifests/<ms>-<random>.json.zst    one per generation of key K, written last
//! K.d/latest                              a pointer: K's newest generation's name and root
//! K.d/latest-pieces                       copies of the pieces K's newest generation added
//! K.d/packs/<blake3>.pack                 version-1 generations only (still read)
//! pool/bad/<blake3>.pack (or .tree)       a mark: that pool object was found bad (see `bad`)
//! K                                       a single archive (the seed's cache.tgz, `--format tgz`)
//! ```
//!
//! Pool objects are spread over 256 prefixes by the first byte of their
//! hash, so a fleet restoring one base at once is not held to one S3
//! prefix's request rate. A writer never overwrites one: it skips a pack the
//! pool already holds. Readers verify every frame against the manifest they
//! chose to trust, so a wrong pool object is `corrupt`, never a wrong file.
//!
//! A snapshot uploads its new packs first and its manifest last; a reader
//! takes the newest manifest whose packs are all there. Nothing is ever
//! overwritten, so two writers at once can only each add a generation: no
//! manifest can point at a pack that is not already stored, and no complete
//! generation is lost. This needs no conditional writes.
//!
//! The pointer (`K.d/latest`) is the one object that is overwritten: a
//! snapshot deletes it before writing its manifest, and after the manifest
//! writes the generation's name and a copy of its root (with its BLAKE3)
//! there, so a restore finds the newest root in one GET instead of a LIST
//! and a GET. A snapshot that is done never leaves it naming an older
//! generation. It is only a hint: missing, unreadable, or naming a
//! generation that cannot be restored, the restore lists the manifests as
//! before. Two snapshots racing (or an older binary, which writes none) may
//! leave it naming an older complete generation: that one is restored,
//! still whole, and the next snapshot points at its own.
//!
//! Beside the pointer, `K.d/latest-pieces` holds copies of the pieces a pod
//! holding the generation the snapshot's dir was restored from (an older
//! generation, or the base) lacks of the new manifest (up to
//! [`MAX_NEW_PIECES`] bytes). A
//! restore reads it beside the pointer, so a delta needs no round trip for
//! pieces. Only a hint too: each piece is checked against its name, and
//! used only where the root names it; missing, stale or damaged, the
//! pieces come from the pool.

use sandcache_archive::pack::Manifest;
use sandcache_store::{Store, StoreError};

/// Checks a cache key: a relative `/`-separated name with no empty, `.` or
/// `..` segments. The error is a sentence for the user.
pub fn validate_key(key: &str) -> Result<(), String> {
    sandcache_store::check_key(key).map_err(|_| {
        format!("invalid cache key `{key}`: use a relative `/`-separated name such as `site/cache.tgz`")
    })?;
    if pool_id_of(key).is_some() || object_of_mark(key).is_some() {
        return Err(format!("invalid cache key `{key}`: it names an object of the shared pool"));
    }
    Ok(())
}

/// Checks a fallback: a key, or a prefix of keys ending in `/`.
pub fn validate_fallback(f: &str) -> Result<(), String> {
    match f.strip_suffix('/') {
        Some(prefix) => sandcache_store::check_key(prefix).map_err(|_| {
            format!("invalid fallback prefix `{f}`: use a relative `/`-separated name ending in `/`, such as `base/`")
        }),
        None => validate_key(f).map_err(|_| {
            format!("invalid fallback `{f}`: use a key such as `base/cache.tgz`, or a prefix ending in `/`")
        }),
    }
}

pub(crate) fn manifests_prefix(key: &str) -> String {
    format!("{key}.d/manifests/")
}

/// The cache key a stored object is a generation of, when it is one:
/// `K.d/manifests/<name>.json.zst`, with K a valid key. The one reading of
/// generation names, for listings under a key, under a prefix, and of a
/// whole store.
pub(crate) fn generation_of(object: &str) -> Option<&str> {
    let (key, name) = object.rsplit_once(".d/manifests/")?;
    (name.ends_with(".json.zst") && !name.contains('/') && validate_key(key).is_ok()).then_some(key)
}

/// Where a generation's pack lives: in the pool (version 2 on), or under
/// its key (version 1).
pub(crate) fn pack_key(key: &str, m: &Manifest, id: &str) -> String {
    if m.pooled() { pool_key(id) } else { format!("{key}.d/packs/{id}.pack") }
}

/// The shared pool's name for a pack.
pub(crate) fn pool_key(id: &str) -> String {
    format!("{POOL}{}/{id}.pack", id.get(..2).unwrap_or("00"))
}

/// The shared pool's name for a manifest piece.
pub(crate) fn piece_key(id: &str) -> String {
    format!("{POOL}{}/{id}.tree", id.get(..2).unwrap_or("00"))
}

/// The pool's prefix in a store.
pub(crate) const POOL: &str = "pool/";

/// The id a pool object name carries, if it is one: a pack
/// (`pool/<2 hex>/<64 hex>.pack`) or a manifest piece (`.tree`), with
/// matching first two digits.
pub(crate) fn pool_id_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(POOL)?;
    let (fan, file) = rest.split_once('/')?;
    let id = file.strip_suffix(".pack").or_else(|| file.strip_suffix(".tree"))?;
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (fan.len() == 2 && id.len() == 64 && hex(id) && id.starts_with(fan)).then_some(id)
}

/// The stored manifests of a key, newest first.
pub(crate) async fn list_manifests(
    store: &dyn Store,
    key: &str,
) -> Result<Vec<sandcache_store::ObjectInfo>, StoreError> {
    let mut all = store.list(&manifests_prefix(key)).await?;
    all.retain(|o| generation_of(&o.key) == Some(key));
    all.sort_by(|a, b| b.key.cmp(&a.key));
    Ok(all)
}

/// Where a key's pointer lives (see the module doc).
pub(crate) fn pointer_key(key: &str) -> String {
    format!("{key}.d/latest")
}

/// The first line of a pointer.
const POINTER_MAGIC: &str = "sandcache-latest 1";

/// The largest pointer read: a root names its pieces and packs, about 150
/// bytes each, a few KB for a DENO_DIR.
const MAX_POINTER: u64 = 4 << 20;

/// A pointer's bytes: the magic line, the generation's name, the BLAKE3 of
/// its root, then the root exactly as stored. A pointer whose root does not
/// hash as it says (damaged on its way) is no pointer.
pub(crate) fn encode_pointer(generation: &str, root: &[u8]) -> Vec<u8> {
    let mut out = format!("{POINTER_MAGIC}\n{generation}\n{}\n", blake3::hash(root).to_hex()).into_bytes();
    out.extend_from_slice(root);
    out
}

/// A key's newest generation as its pointer says: its name and its root's
/// stored bytes. `None` when there is no pointer, or it is not one naming
/// a generation of `key` (a hint, never an error: the caller lists).
pub(crate) async fn read_pointer(store: &dyn Store, key: &str) -> Option<(sandcache_store::ObjectInfo, Vec<u8>)> {
    let object = match store.get(&pointer_key(key)).await {
        Ok(o) if o.size <= MAX_POINTER => o,
        Ok(o) => {
            tracing::debug!(target: "sandbox-cache", "{key}: its pointer is {} bytes; listing instead", o.size);
            return None;
        }
        Err(StoreError::NotFound { .. }) => return None,
        Err(e) => {
            tracing::debug!(target: "sandbox-cache", "{key}: its pointer cannot be read ({e}); listing instead");
            return None;
        }
    };
    let bytes = match object.bytes().await {
        Ok(b) if b.len() as u64 <= MAX_POINTER => b,
        _ => return None,
    };
    let parsed = decode_pointer(key, &bytes);
    if parsed.is_none() {
        tracing::debug!(target: "sandbox-cache", "{key}: its pointer is not one; listing instead");
    }
    parsed
}

fn decode_pointer(key: &str, bytes: &[u8]) -> Option<(sandcache_store::ObjectInfo, Vec<u8>)> {
    let line = |rest: &[u8]| -> Option<(String, usize)> {
        let end = rest.iter().position(|&b| b == b'\n')?;
        Some((std::str::from_utf8(&rest[..end]).ok()?.to_owned(), end + 1))
    };
    let rest = bytes.strip_prefix(POINTER_MAGIC.as_bytes())?.strip_prefix(b"\n")?;
    let (generation, n) = line(rest)?;
    let (hash, m) = line(&rest[n..])?;
    let root = rest[n + m..].to_vec();
    if generation_of(&generation) != Some(key) || blake3::hash(&root).to_hex().as_str() != hash {
        return None;
    }
    let generation = generation.as_str();
    let ms = manifest_ms(generation)?;
    let info = sandcache_store::ObjectInfo {
        key: generation.to_owned(),
        size: root.len() as u64,
        last_modified: std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
    };
    Some((info, root))
}

/// Where the pieces a key's newest snapshot added are copied (see the
/// module doc).
pub(crate) fn new_pieces_key(key: &str) -> String {
    format!("{key}.d/latest-pieces")
}

/// The first line of a copy of new pieces.
const NEW_PIECES_MAGIC: &str = "sandcache-pieces 1";

/// The most bytes of pieces copied beside the pointer (and read): a new
/// package changes a piece or two of about 25 KB; a whole DENO_DIR's
/// manifest (25k entries) is about 1.2 MB of pieces.
pub(crate) const MAX_NEW_PIECES: usize = 2 << 20;

/// The largest copy read: the pieces and a header line for each.
const MAX_NEW_PIECES_OBJECT: usize = MAX_NEW_PIECES + (64 << 10);

/// Copies of pieces, by id: the magic line, a line per piece (`<id>
/// <length>`), an empty line, then their bytes in that order.
pub(crate) fn encode_new_pieces<'a>(pieces: impl Iterator<Item = (&'a str, &'a [u8])>) -> Vec<u8> {
    let pieces: Vec<(&str, &[u8])> = pieces.collect();
    let mut out = format!("{NEW_PIECES_MAGIC}\n").into_bytes();
    for (id, bytes) in &pieces {
        out.extend_from_slice(format!("{id} {}\n", bytes.len()).as_bytes());
    }
    out.push(b'\n');
    for (_, bytes) in pieces {
        out.extend_from_slice(bytes);
    }
    out
}

/// Pieces given beside a pointer, by id, each hashing to its id.
pub(crate) type GivenPieces = std::collections::HashMap<String, bytes::Bytes>;

/// The pieces a key's newest snapshot copied beside its pointer: those
/// that hash to their ids (the rest dropped). Empty when there is no copy,
/// or it is not one (a hint, never an error).
pub(crate) async fn read_new_pieces(store: &dyn Store, key: &str) -> GivenPieces {
    let object = match store.get(&new_pieces_key(key)).await {
        Ok(o) if o.size <= MAX_NEW_PIECES_OBJECT as u64 => o,
        _ => return GivenPieces::new(),
    };
    match object.bytes().await {
        Ok(b) if b.len() <= MAX_NEW_PIECES_OBJECT => decode_new_pieces(&b.into()),
        _ => GivenPieces::new(),
    }
}

fn decode_new_pieces(bytes: &bytes::Bytes) -> GivenPieces {
    let mut out = GivenPieces::new();
    let Some(rest) = bytes.strip_prefix(NEW_PIECES_MAGIC.as_bytes()).and_then(|r| r.strip_prefix(b"\n")) else {
        return out;
    };
    let Some(end) = rest.windows(2).position(|w| w == b"\n\n") else { return out };
    let Ok(head) = std::str::from_utf8(&rest[..end]) else { return out };
    let mut at = bytes.len() - rest.len() + end + 2;
    for line in head.split('\n').filter(|l| !l.is_empty()) {
        let Some((id, len)) = line.split_once(' ') else { return out };
        let Ok(len) = len.parse::<usize>() else { return out };
        let Some(piece) = at.checked_add(len).filter(|&e| e <= bytes.len()).map(|e| bytes.slice(at..e)) else {
            return out;
        };
        at += len;
        if blake3::hash(&piece).to_hex().as_str() == id {
            out.insert(id.to_owned(), piece);
        }
    }
    out
}

pub(crate) fn manifest_key(key: &str, created_ms: u64) -> String {
    format!("{}{created_ms:013}-{:08x}.json.zst", manifests_prefix(key), rand::random::<u32>())
}

pub(crate) fn pack_id_of(key_in_store: &str) -> Option<&str> {
    key_in_store.rsplit('/').next()?.strip_suffix(".pack")
}

/// The creation time a manifest's name starts with.
pub(crate) fn manifest_ms(key: &str) -> Option<u64> {
    key.rsplit('/').next()?.split('-').next()?.parse().ok()
}

/// Where marks live in a store.
pub(crate) const MARKS: &str = "pool/bad/";

/// The mark of a pool object: `pool/bad/<id>.pack` (or `.tree`). `None`
/// for a key that is not a pool object's.
pub(crate) fn mark_key(object: &str) -> Option<String> {
    pool_id_of(object)?;
    let file = object.rsplit_once('/')?.1;
    Some(format!("{MARKS}{file}"))
}

/// The pool object a mark names, when `key` is a mark.
pub(crate) fn object_of_mark(key: &str) -> Option<String> {
    let file = key.strip_prefix(MARKS)?;
    let object = format!("{POOL}{}/{file}", file.get(..2)?);
    pool_id_of(&object).is_some().then_some(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copied_pieces_are_taken_only_when_they_hash_to_their_ids() {
        let (a, b) = (b"piece a".as_slice(), b"piece b, longer".as_slice());
        let id = |p: &[u8]| blake3::hash(p).to_hex().to_string();
        let (ia, ib) = (id(a), id(b));
        let bytes = encode_new_pieces([(ia.as_str(), a), (ib.as_str(), b)].into_iter());
        let got = decode_new_pieces(&bytes.clone().into());
        assert_eq!(got.len(), 2);
        assert_eq!(&got[&ia][..], a);
        assert_eq!(&got[&ib][..], b);
        // A damaged piece is dropped, the others kept.
        let mut damaged = bytes.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        let got = decode_new_pieces(&damaged.into());
        assert_eq!(got.keys().collect::<Vec<_>>(), [&ia]);
        // Cut short, lengths past the end, garbage: what is whole, or none.
        let got = decode_new_pieces(&bytes[..bytes.len() - 3].to_vec().into());
        assert_eq!(got.keys().collect::<Vec<_>>(), [&ia]);
        for junk in [&b""[..], b"sandcache-pieces 1\n", b"sandcache-pieces 1\nx 99999999999\n\n", b"\xff\xfe"] {
            assert!(decode_new_pieces(&junk.to_vec().into()).is_empty());
        }
        assert!(decode_new_pieces(&encode_new_pieces(std::iter::empty()).into()).is_empty());
    }

    #[test]
    fn marks_name_their_object_and_nothing_else() {
        let id = "ab".repeat(32);
        for ext in ["pack", "tree"] {
            let object = format!("pool/ab/{id}.{ext}");
            let mark = mark_key(&object).unwrap();
            assert_eq!(mark, format!("pool/bad/{id}.{ext}"));
            assert_eq!(object_of_mark(&mark).as_deref(), Some(object.as_str()));
            // A mark is not a pool object, nor a generation.
            assert!(pool_id_of(&mark).is_none(), "{mark}");
            assert!(generation_of(&mark).is_none(), "{mark}");
        }
        for not in ["pool/bad/", "pool/bad/x", "pool/bad/ab.pack", &format!("pool/bad/{id}.zip"), "site/cache"] {
            assert!(object_of_mark(not).is_none(), "{not}");
        }
        assert!(mark_key("site/cache.d/packs/x.pack").is_none());
    }

    #[test]
    fn a_pointer_names_a_generation_of_its_own_key_only() {
        let generation = manifest_key("site/a", 1_700_000_000_000);
        let bytes = encode_pointer(&generation, b"root bytes\n\x00");
        let (info, root) = decode_pointer("site/a", &bytes).unwrap();
        assert_eq!((info.key.as_str(), root.as_slice()), (generation.as_str(), &b"root bytes\n\x00"[..]));
        assert_eq!(manifest_ms(&info.key), Some(1_700_000_000_000));
        // Another key's generation, or not a generation at all: no pointer.
        assert!(decode_pointer("site/b", &bytes).is_none());
        assert!(decode_pointer("site/a", &encode_pointer("pool/ab/x.tree", b"")).is_none());
        assert!(decode_pointer("site/a", b"sandcache-latest 2\nx\n").is_none());
        // A root damaged on its way: no pointer.
        let mut damaged = bytes.clone();
        *damaged.last_mut().unwrap() ^= 1;
        assert!(decode_pointer("site/a", &damaged).is_none());
        assert!(decode_pointer("site/a", b"").is_none());
        // A pointer is not a generation, a pool object or a mark.
        let p = pointer_key("site/a");
        assert!(generation_of(&p).is_none() && pool_id_of(&p).is_none() && object_of_mark(&p).is_none());
    }
}
