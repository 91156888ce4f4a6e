//! The manifest algebra: operations on [`Manifest`]s that read no store
//! and write no file. Written against `sandcache_archive::pack` alone, so
//! it can move next to `Manifest::validate` as it is.

use std::collections::HashMap;

use sandcache_archive::pack::{self, Entry, Frame, Kind, Manifest};

/// Whether an entry waits for a hot-first restore's second phase: a file
/// with content that is not hot.
pub(super) fn in_tail(e: &Entry) -> bool {
    e.kind == Kind::File && e.size > 0 && !e.hot
}

/// Whether a manifest has a hot set and files outside it: a hot-first
/// restore of it has two phases.
pub(super) fn has_tail(m: &Manifest) -> bool {
    let content = |e: &&Entry| e.kind == Kind::File && e.size > 0;
    m.entries.iter().filter(content).any(|e| e.hot) && m.entries.iter().any(in_tail)
}

/// A whole manifest of some of `m`'s entries (in order), with the frames
/// and packs they use, renumbered by first use.
pub(super) fn sub_manifest<'a>(m: &Manifest, entries: impl Iterator<Item = &'a Entry>) -> Manifest {
    let mut piece = Manifest {
        version: pack::VERSION,
        created_ms: 0,
        packs: Vec::new(),
        frames: Vec::new(),
        entries: Vec::new(),
        pieces: Vec::new(),
        hot: Vec::new(),
    };
    let (mut frame_map, mut pack_map) = (HashMap::new(), HashMap::new());
    for e in entries {
        let mut e = e.clone();
        if let Some(first) = e.frame {
            let span = m.span_frames(&e).unwrap_or(first as usize..first as usize + 1);
            for f in span {
                if frame_map.contains_key(&f) {
                    continue;
                }
                let frame = &m.frames[f];
                let pi = *pack_map.entry(frame.pack).or_insert_with(|| {
                    piece.packs.push(m.packs[frame.pack as usize].clone());
                    piece.packs.len() as u32 - 1
                });
                frame_map.insert(f, piece.frames.len() as u32);
                piece.frames.push(Frame { pack: pi, ..frame.clone() });
            }
            e.frame = Some(frame_map[&(first as usize)]);
        }
        piece.entries.push(e);
    }
    piece
}

/// Merges frames that are the same frame (pack, offset and hash), which
/// pieces sharing a frame each carry.
pub(super) fn dedup_frames(m: &mut Manifest) {
    let mut seen: HashMap<(u32, u64), u32> = HashMap::new();
    let mut map = Vec::with_capacity(m.frames.len());
    let mut frames = Vec::with_capacity(m.frames.len());
    for f in m.frames.drain(..) {
        let idx = *seen.entry((f.pack, f.offset)).or_insert_with(|| {
            frames.push(f.clone());
            frames.len() as u32 - 1
        });
        map.push(idx);
    }
    m.frames = frames;
    for e in &mut m.entries {
        if let Some(f) = e.frame.as_mut() {
            *f = map[*f as usize];
        }
    }
}

/// Names a pack that went up salted (see [`pack::salt`]) by its salted id
/// and size: its frames lie [`pack::SALT_LEN`] bytes further in.
pub(crate) fn rename_salted_pack(m: &mut Manifest, id: &str, (to, size): &(String, u64)) {
    for (i, p) in m.packs.iter_mut().enumerate() {
        if p.id != id {
            continue;
        }
        (p.id, p.size) = (to.clone(), *size);
        for f in m.frames.iter_mut().filter(|f| f.pack as usize == i) {
            f.offset += pack::SALT_LEN;
        }
    }
}

/// Drops frames no entry uses and packs no frame uses, renumbering both.
/// Frames keep their order, so a large file's frames stay consecutive.
pub(super) fn compact(m: &mut Manifest) {
    let mut used = vec![false; m.frames.len()];
    for e in &m.entries {
        if e.kind == Kind::File && e.size > 0 {
            if let Ok(span) = m.span_frames(e) {
                for i in span {
                    used[i] = true;
                }
            }
        }
    }
    let mut frame_map = vec![u32::MAX; m.frames.len()];
    let mut pack_map: HashMap<u32, u32> = HashMap::new();
    let mut packs = Vec::new();
    let mut frames = Vec::new();
    for (i, f) in m.frames.iter().enumerate() {
        if !used[i] {
            continue;
        }
        let pi = *pack_map.entry(f.pack).or_insert_with(|| {
            packs.push(m.packs[f.pack as usize].clone());
            packs.len() as u32 - 1
        });
        frame_map[i] = frames.len() as u32;
        frames.push(Frame { pack: pi, ..f.clone() });
    }
    for e in &mut m.entries {
        if let Some(f) = e.frame.as_mut() {
            *f = frame_map[*f as usize];
        }
    }
    // Packs holding hot content are marked, and listed first: a hot-first
    // restore prefetches them alone.
    for e in m.entries.iter().filter(|e| e.hot && e.kind == Kind::File && e.size > 0) {
        if let Some(f) = e.frame.and_then(|f| frames.get(f as usize)) {
            packs[f.pack as usize].hot = true;
        }
    }
    let mut order: Vec<usize> = (0..packs.len()).collect();
    order.sort_by_key(|&i| !packs[i].hot);
    let mut new_index = vec![0u32; packs.len()];
    for (new, &old) in order.iter().enumerate() {
        new_index[old] = new as u32;
    }
    for f in &mut frames {
        f.pack = new_index[f.pack as usize];
    }
    m.packs = order.into_iter().map(|i| packs[i].clone()).collect();
    m.frames = frames;
}
