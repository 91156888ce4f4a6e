//! Checks what a store holds for a key, independently of the engine.

use std::path::Path;

use sandcache_archive::Limits;
use sandcache_archive::pack::{self, Manifest};
use sandcache_store::Store;

/// Every stored generation of `key` is whole: each manifest decodes and
/// validates, each pack it names exists with its size and id, and every
/// frame decodes to its hash. Returns how many generations there are.
pub async fn check(store: &dyn Store, key: &str) -> Result<usize, String> {
    let manifests = store.list(&format!("{key}.d/manifests/")).await.map_err(|e| e.to_string())?;
    for info in &manifests {
        let bytes = get(store, &info.key).await?;
        let m = Manifest::decode(&bytes).map_err(|e| format!("{}: {e}", info.key))?;
        // A root's pieces (its hot piece too): each stored, hashing to its
        // name, and whole.
        for p in m.piece_refs() {
            let piece_key = format!("pool/{}/{}.tree", &p.id[..2], p.id);
            let bytes = get(store, &piece_key).await.map_err(|e| format!("{} names {piece_key}: {e}", info.key))?;
            if blake3::hash(&bytes).to_hex().as_str() != p.id {
                return Err(format!("{} names {piece_key}, which is not what it says", info.key));
            }
            Manifest::decode(&bytes).map_err(|e| format!("{piece_key}: {e}"))?;
        }
        if m.pieces.is_empty() {
            m.validate(&Limits::default(), Path::new("/deno-dir")).map_err(|e| format!("{}: {e}", info.key))?;
        }
        for (i, p) in m.packs.iter().enumerate() {
            let pack_key = pack_location(key, &m, &p.id);
            let bytes = get(store, &pack_key).await.map_err(|e| format!("{} names {pack_key}: {e}", info.key))?;
            if bytes.len() as u64 != p.size || blake3::hash(&bytes).to_hex().as_str() != p.id {
                return Err(format!("{} names {pack_key}, which is not what it says", info.key));
            }
            for f in m.frames.iter().filter(|f| f.pack as usize == i) {
                pack::decode_frame(&bytes[f.offset as usize..(f.offset + f.clen) as usize], f)
                    .map_err(|e| format!("{}: {e}", info.key))?;
            }
        }
    }
    Ok(manifests.len())
}

/// Where a generation's pack lives: the shared pool (version 2 on), or
/// under its key (version 1). Written out here, not taken from the engine,
/// so the tests check the layout the docs describe.
pub fn pack_location(key: &str, m: &Manifest, id: &str) -> String {
    if m.version >= 2 { format!("pool/{}/{id}.pack", &id[..2]) } else { format!("{key}.d/packs/{id}.pack") }
}

/// The manifests of `key`'s generations, newest first.
pub async fn manifests(store: &dyn Store, key: &str) -> Result<Vec<(String, Manifest)>, String> {
    let mut listed = store.list(&format!("{key}.d/manifests/")).await.map_err(|e| e.to_string())?;
    listed.sort_by(|a, b| b.key.cmp(&a.key));
    let mut out = Vec::new();
    for info in listed {
        let bytes = get(store, &info.key).await?;
        out.push((info.key.clone(), Manifest::decode(&bytes).map_err(|e| format!("{}: {e}", info.key))?));
    }
    Ok(out)
}

async fn get(store: &dyn Store, key: &str) -> Result<Vec<u8>, String> {
    let obj = store.get(key).await.map_err(|e| e.to_string())?;
    obj.bytes().await.map_err(|e| e.to_string())
}

/// The entries of a generation, its pieces joined in order (a version-3
/// root names pieces; older manifests hold their entries themselves).
/// Frame numbers stay as each piece has them: for looking at paths, kinds
/// and flags, not for locating content.
pub async fn entries(store: &dyn Store, m: &Manifest) -> Result<Vec<pack::Entry>, String> {
    if m.pieces.is_empty() {
        return Ok(m.entries.clone());
    }
    let mut out = Vec::new();
    for p in &m.pieces {
        let bytes = get(store, &format!("pool/{}/{}.tree", &p.id[..2], p.id)).await?;
        out.extend(Manifest::decode(&bytes).map_err(|e| format!("{}: {e}", p.id))?.entries);
    }
    Ok(out)
}

/// The newest generation of `key`, with its pieces joined back into one
/// manifest: entries in order, frames numbered by first use across pieces
/// (identified by pack and offset), packs as the root lists them.
pub async fn newest_whole(store: &dyn Store, key: &str) -> Result<Manifest, String> {
    let (name, root) = manifests(store, key).await?.into_iter().next().ok_or(format!("no generation of {key}"))?;
    if root.pieces.is_empty() {
        return Ok(root);
    }
    let mut whole = Manifest { entries: Vec::new(), frames: Vec::new(), pieces: Vec::new(), ..root.clone() };
    let mut frame_at: std::collections::HashMap<(String, u64), u32> = std::collections::HashMap::new();
    for p in &root.pieces {
        let bytes = get(store, &format!("pool/{}/{}.tree", &p.id[..2], p.id)).await?;
        let piece = Manifest::decode(&bytes).map_err(|e| format!("{name}: {}: {e}", p.id))?;
        for mut e in piece.entries {
            if let Some(f) = e.frame {
                let pf = &piece.frames[f as usize];
                let pack_id = piece.packs[pf.pack as usize].id.clone();
                let pack = root
                    .packs
                    .iter()
                    .position(|r| r.id == pack_id)
                    .ok_or(format!("{name}: piece {} names a pack the root lacks", p.id))?;
                let next = whole.frames.len() as u32;
                let at = *frame_at.entry((pack_id, pf.offset)).or_insert_with(|| {
                    whole.frames.push(pack::Frame { pack: pack as u32, ..pf.clone() });
                    next
                });
                e.frame = Some(at);
            }
            whole.entries.push(e);
        }
    }
    Ok(whole)
}
