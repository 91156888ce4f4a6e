//! A whole manifest cut into content-addressed pieces and a root naming
//! them (what a snapshot uploads), and the root's hot pieces.

use sandcache_archive::pack::{self, Entry, Manifest, PieceRef};

use sandcache_archive::pack::in_tail;

/// A piece closes after an entry whose path hashes to a multiple of this
/// (so boundaries depend on paths only: inserting a package changes the
/// pieces around it, not every piece after it)...
const PIECE_CUT: u32 = 512;

/// ...once it holds this many entries, and in any case at this many.
const PIECE_MIN: usize = 64;

const PIECE_MAX: usize = 4096;

/// Splits a whole manifest into content-addressed pieces (runs of entries,
/// cut where a path's hash says, each with the frames and packs it uses,
/// renumbered by first use) and a root naming them. Unchanged runs give
/// byte-identical pieces, so a generation uploads only the pieces that
/// changed. Returns the root and each piece's id and stored bytes.
pub(crate) fn split(m: &Manifest) -> (Manifest, Vec<(String, Vec<u8>)>) {
    let all: Vec<&Entry> = m.entries.iter().collect();
    let mut pieces = Vec::new();
    let mut refs = Vec::new();
    let mut add = |piece: Manifest| {
        let bytes = piece.encode();
        let id = blake3::hash(&bytes).to_hex().to_string();
        let r = PieceRef { id: id.clone(), size: bytes.len() as u64, entries: piece.entries.len() as u64 };
        pieces.push((id, bytes));
        r
    };
    for run in cut_runs(&all, PIECE_CUT, PIECE_MIN, PIECE_MAX) {
        refs.push(add(m.subset(all[run].iter().copied())));
    }
    // With a hot set, the part of the manifest a hot-first restore needs
    // before the swap, alone: it reads this instead of every piece first.
    // Cut the same way, so a new package changes the hot pieces around it
    // only (it adds directories). Only when that is at most half the
    // manifest: else it would upload most of it again for little gain
    // (phase one needs most of it).
    let now: Vec<&Entry> = m.entries.iter().filter(|e| !in_tail(e)).collect();
    let mut hot = Vec::new();
    if m.has_tail() && now.len() <= m.entries.len() / 2 {
        for run in cut_runs(&now, HOT_PIECE_CUT, HOT_PIECE_MIN, HOT_PIECE_MAX) {
            hot.push(add(m.subset(now[run].iter().copied())));
        }
    }
    let root = Manifest { packs: m.packs.clone(), pieces: refs, hot, ..Manifest::empty(pack::VERSION, m.created_ms) };
    (root, pieces)
}

/// Hot pieces are cut larger than pieces: phase one waits for all of them
/// (the storefront's hot part is 3, where a cut at 512 made 7). An added
/// package still changes one or two of them, not the whole hot part (141
/// KB on the storefront as one piece).
const HOT_PIECE_CUT: u32 = 2048;

const HOT_PIECE_MIN: usize = 512;

const HOT_PIECE_MAX: usize = 16384;

/// Runs of `entries` for pieces: each closes after an entry whose path
/// hashes to a multiple of `cut_at` (once it holds `min` entries), or at
/// `max`.
fn cut_runs(entries: &[&Entry], cut_at: u32, min: usize, max: usize) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    for (i, e) in entries.iter().enumerate() {
        let len = i + 1 - start;
        let h = blake3::hash(e.path.as_bytes());
        let cut = u32::from_le_bytes(h.as_bytes()[..4].try_into().expect("4 bytes")) % cut_at == 0;
        if (cut && len >= min) || len >= max {
            runs.push(start..i + 1);
            start = i + 1;
        }
    }
    if start < entries.len() {
        runs.push(start..entries.len());
    }
    runs
}

#[cfg(test)]
mod tests {
    use sandcache_archive::pack::{Frame, PackRef};

    use super::*;

    #[test]
    fn one_more_package_changes_few_hot_pieces() {
        let frame = Frame { pack: 0, offset: 0, clen: 1, rawlen: 1, hash: "0".repeat(64) };
        let manifest = |packages: &mut dyn Iterator<Item = u32>| {
            let mut entries = Vec::new();
            for p in packages {
                entries.push(Entry::dir(format!("npm/r/p{p:05}"), 0o755, 0));
                entries.push(Entry::dir(format!("npm/r/p{p:05}/1.0.0"), 0o755, 0));
                for f in 0..4 {
                    let path = format!("npm/r/p{p:05}/1.0.0/f{f}.js");
                    let hot = f == 0 && p % 2 == 0;
                    entries.push(Entry { frame: Some(0), hot, ..Entry::file(path, 0o644, 0, 1, "0".repeat(64)) });
                }
            }
            let packs = vec![PackRef { id: "a".repeat(64), size: 1, hot: true }];
            Manifest {
                version: pack::VERSION,
                created_ms: 0,
                packs,
                frames: vec![frame.clone()],
                entries,
                pieces: Vec::new(),
                hot: Vec::new(),
            }
        };
        let before = split(&manifest(&mut (0..4000).filter(|p| *p != 2000))).0;
        let after = split(&manifest(&mut (0..4000))).0;
        assert!(before.hot.len() >= 3, "{} hot pieces", before.hot.len());
        let new = after.hot.iter().filter(|p| !before.hot.contains(p)).count();
        assert!((1..=2).contains(&new), "{new} of {} hot pieces changed", after.hot.len());
    }
}
