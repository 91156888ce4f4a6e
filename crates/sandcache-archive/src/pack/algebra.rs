//! The manifest algebra: operations on [`Manifest`]s that read no store
//! and write no file, beside [`Manifest::validate`], so that renumbering
//! frames and packs has one home: a subset, a join of pieces
//! ([`Joiner`]), frame dedup, compaction, salted renames.

use std::collections::HashMap;

use super::{Entry, Frame, Kind, Manifest};

impl Manifest {
    /// A manifest with no packs, frames, entries or pieces.
    pub fn empty(version: u32, created_ms: u64) -> Manifest {
        Manifest {
            version,
            created_ms,
            packs: Vec::new(),
            frames: Vec::new(),
            entries: Vec::new(),
            pieces: Vec::new(),
            hot: Vec::new(),
        }
    }

    /// A whole manifest of some of these entries (in order), with the
    /// frames and packs they use, renumbered by first use.
    pub fn subset<'a>(&self, entries: impl Iterator<Item = &'a Entry>) -> Manifest {
        let mut piece = Manifest::empty(super::VERSION, 0);
        let (mut frame_map, mut pack_map) = (HashMap::new(), HashMap::new());
        for e in entries {
            let mut e = e.clone();
            if let Some(first) = e.frame {
                let span = self.span_frames(&e).unwrap_or(first as usize..first as usize + 1);
                for f in span {
                    if frame_map.contains_key(&f) {
                        continue;
                    }
                    let frame = &self.frames[f];
                    let pi = *pack_map.entry(frame.pack).or_insert_with(|| {
                        piece.packs.push(self.packs[frame.pack as usize].clone());
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
    pub fn dedup_frames(&mut self) {
        let mut seen: HashMap<(u32, u64), u32> = HashMap::new();
        let mut map = Vec::with_capacity(self.frames.len());
        let mut frames = Vec::with_capacity(self.frames.len());
        for f in self.frames.drain(..) {
            let idx = *seen.entry((f.pack, f.offset)).or_insert_with(|| {
                frames.push(f.clone());
                frames.len() as u32 - 1
            });
            map.push(idx);
        }
        self.frames = frames;
        for e in &mut self.entries {
            if let Some(f) = e.frame.as_mut() {
                *f = map[*f as usize];
            }
        }
    }

    /// Drops frames no entry uses and packs no frame uses, renumbering both.
    /// Frames keep their order, so a large file's frames stay consecutive.
    /// Packs holding hot content are marked and listed first.
    pub fn compact(&mut self) {
        let mut used = vec![false; self.frames.len()];
        for e in &self.entries {
            if e.kind == Kind::File && e.size > 0 {
                if let Ok(span) = self.span_frames(e) {
                    for i in span {
                        used[i] = true;
                    }
                }
            }
        }
        let mut frame_map = vec![u32::MAX; self.frames.len()];
        let mut pack_map: HashMap<u32, u32> = HashMap::new();
        let mut packs = Vec::new();
        let mut frames = Vec::new();
        for (i, f) in self.frames.iter().enumerate() {
            if !used[i] {
                continue;
            }
            let pi = *pack_map.entry(f.pack).or_insert_with(|| {
                packs.push(self.packs[f.pack as usize].clone());
                packs.len() as u32 - 1
            });
            frame_map[i] = frames.len() as u32;
            frames.push(Frame { pack: pi, ..f.clone() });
        }
        for e in &mut self.entries {
            if let Some(f) = e.frame.as_mut() {
                *f = frame_map[*f as usize];
            }
        }
        self.frames = frames;
        // Packs holding hot content are marked, and listed first: a hot-first
        // restore prefetches them alone. Every pack a hot file spans (a
        // large one's frames may lie in several).
        for e in self.entries.iter().filter(|e| e.hot && e.kind == Kind::File && e.size > 0) {
            let Some(first) = e.frame else { continue };
            let span = self.span_frames(e).unwrap_or(first as usize..first as usize + 1);
            for f in span.filter_map(|f| self.frames.get(f)) {
                packs[f.pack as usize].hot = true;
            }
        }
        let mut order: Vec<usize> = (0..packs.len()).collect();
        order.sort_by_key(|&i| !packs[i].hot);
        let mut new_index = vec![0u32; packs.len()];
        for (new, &old) in order.iter().enumerate() {
            new_index[old] = new as u32;
        }
        for f in &mut self.frames {
            f.pack = new_index[f.pack as usize];
        }
        self.packs = order.into_iter().map(|i| packs[i].clone()).collect();
    }

    /// Names a pack that went up salted (see [`super::salt`]) by its salted
    /// id and size: its frames lie [`super::SALT_LEN`] bytes further in.
    pub fn rename_salted_pack(&mut self, id: &str, (to, size): &(String, u64)) {
        for (i, p) in self.packs.iter_mut().enumerate() {
            if p.id != id {
                continue;
            }
            (p.id, p.size) = (to.clone(), *size);
            for f in self.frames.iter_mut().filter(|f| f.pack as usize == i) {
                f.offset += super::SALT_LEN;
            }
        }
    }

    /// Names a piece (or hot piece) of a root that went up salted by its
    /// salted id and size.
    pub fn rename_salted_piece(&mut self, id: &str, (to, size): &(String, u64)) {
        for p in self.pieces.iter_mut().chain(self.hot.iter_mut()).filter(|p| p.id == id) {
            (p.id, p.size) = (to.clone(), *size);
        }
    }

    /// Whether the manifest has a hot set and files outside it: a hot-first
    /// restore of it has two phases.
    pub fn has_tail(&self) -> bool {
        let content = |e: &&Entry| e.kind == Kind::File && e.size > 0;
        self.entries.iter().filter(content).any(|e| e.hot) && self.entries.iter().any(in_tail)
    }
}

/// Whether an entry waits for a hot-first restore's second phase: a file
/// with content that is not hot.
pub fn in_tail(e: &Entry) -> bool {
    e.kind == Kind::File && e.size > 0 && !e.hot
}

/// A whole manifest joined from a root's pieces, appended one at a time and
/// in order: their frames and packs renumbered into one list.
pub struct Joiner {
    whole: Manifest,
    /// Each pack's index in `whole`, by id.
    pack_index: HashMap<String, u32>,
}

impl Joiner {
    /// An empty join, for the pieces of `root`.
    pub fn new(root: &Manifest) -> Joiner {
        let mut whole = Manifest::empty(root.version, root.created_ms);
        // Room for the entries the root says its pieces hold (not trusted
        // past a bound): the list is not grown and copied piece by piece.
        let said: u64 = root.pieces.iter().map(|p| p.entries).fold(0, u64::saturating_add);
        whole.entries.reserve(said.min(1 << 20) as usize);
        Joiner { whole, pack_index: HashMap::new() }
    }

    /// Entries joined so far.
    pub fn entries(&self) -> usize {
        self.whole.entries.len()
    }

    /// Appends the next piece; an error says why it cannot be joined (a
    /// frame naming a pack, or an entry naming a frame, it does not have).
    pub fn append(&mut self, piece: Manifest) -> Result<(), &'static str> {
        let base = self.frames_of(&piece)?;
        let frames = piece.frames.len();
        piece.entries.into_iter().try_for_each(|e| self.push(e, base, frames))
    }

    /// [`Joiner::append`] for a piece that is kept elsewhere: its entries
    /// copied (cheaper than decoding it again).
    pub fn append_shared(&mut self, piece: &Manifest) -> Result<(), &'static str> {
        let base = self.frames_of(piece)?;
        piece.entries.iter().try_for_each(|e| self.push(e.clone(), base, piece.frames.len()))
    }

    /// A piece's frames, renumbered after those joined so far (their packs
    /// by id); returns the first one's new index.
    fn frames_of(&mut self, piece: &Manifest) -> Result<u32, &'static str> {
        let whole = &mut self.whole;
        let base = whole.frames.len() as u32;
        for f in &piece.frames {
            let pr = piece.packs.get(f.pack as usize).ok_or("bad pack index")?;
            let pi = *self.pack_index.entry(pr.id.clone()).or_insert_with(|| {
                whole.packs.push(pr.clone());
                whole.packs.len() as u32 - 1
            });
            whole.frames.push(Frame { pack: pi, ..f.clone() });
        }
        Ok(base)
    }

    /// One of a piece's entries (of `frames` frames, the first renumbered
    /// to `base`).
    fn push(&mut self, mut e: Entry, base: u32, frames: usize) -> Result<(), &'static str> {
        if let Some(f) = e.frame.as_mut() {
            if *f as usize >= frames {
                return Err("bad frame index");
            }
            *f += base;
        }
        self.whole.entries.push(e);
        Ok(())
    }

    /// The whole manifest. The same frame named by two pieces is two frames
    /// until now: harmless (the same bytes), but frames may not overlap, so
    /// exact duplicates are merged.
    pub fn finish(mut self) -> Manifest {
        self.whole.dedup_frames();
        self.whole
    }
}
