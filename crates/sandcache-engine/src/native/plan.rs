//! What a restore fetches: each file's slices per frame, and the frames
//! coalesced into byte ranges per pack.

use std::collections::{BTreeMap, HashSet};

use sandcache_archive::ExtractError;
use sandcache_archive::pack::{Entry, Manifest};

/// A slice of a file: its bytes inside one frame (not a manifest's piece).
#[derive(Clone, Copy)]
pub(super) struct Slice {
    pub(super) entry: u32,
    /// Offset in the frame's raw content.
    pub(super) at: u64,
    pub(super) len: u64,
    /// Offset in the file (non-zero for the later parts of large files).
    pub(super) file_offset: u64,
}

/// Adds the slices of file `e` (entry `i` of `m`, with content) to the
/// frames that hold them.
pub(super) fn slice_file(m: &Manifest, i: usize, e: &Entry, slices: &mut [Vec<Slice>]) -> Result<(), ExtractError> {
    let span = m.span_frames(e)?;
    let mut left = e.size;
    let mut file_offset = 0;
    for (k, fi) in span.enumerate() {
        let at = if k == 0 { e.offset } else { 0 };
        let len = left.min(m.frames[fi].rawlen - at);
        slices[fi].push(Slice { entry: i as u32, at, len, file_offset });
        left -= len;
        file_offset += len;
    }
    Ok(())
}

/// The smallest run split off for parallel requests: below it, a
/// request's own latency costs more than its transfer.
const MIN_RUN: u64 = 1 << 20;

/// Needed frames grouped into byte ranges per pack: (pack, range, frames).
pub(super) type Run = (u32, std::ops::Range<u64>, Vec<u32>);

/// The byte ranges to fetch for the frames with slices, except those in
/// `have`. A frame `keep` wants that lies wholly inside a range is added to
/// its run: its bytes arrive anyway. `streams`: the requests that may be
/// in flight at once; the bytes are spread over at least that many runs
/// (of 1 MiB at least), so a restore that needs a few MB of one pack (a
/// delta) is not held to one connection's speed.
pub(super) fn plan_runs(
    m: &Manifest,
    slices: &[Vec<Slice>],
    have: &HashSet<u32>,
    keep: impl Fn(u32) -> bool,
    streams: usize,
) -> Vec<Run> {
    let mut by_pack: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    let mut total = 0;
    for (i, p) in slices.iter().enumerate() {
        if !p.is_empty() && !have.contains(&(i as u32)) {
            by_pack.entry(m.frames[i].pack).or_default().push(i as u32);
            total += m.frames[i].clen;
        }
    }
    let max_run = total.div_ceil(streams.max(1) as u64).max(MIN_RUN);
    // Frames a small gap apart are fetched in one request, up to `max_run`.
    const GAP: u64 = 1 << 20;
    let mut runs = Vec::new();
    for (pack, mut frames) in by_pack {
        frames.sort_by_key(|f| m.frames[*f as usize].offset);
        let mut cur: Option<Run> = None;
        for f in frames {
            let fr = &m.frames[f as usize];
            let (start, end) = (fr.offset, fr.offset + fr.clen);
            match &mut cur {
                Some((_, r, fs)) if start >= r.end && start - r.end <= GAP && r.end - r.start < max_run => {
                    r.end = end;
                    fs.push(f);
                }
                _ => {
                    runs.extend(cur.take());
                    cur = Some((pack, start..end, vec![f]));
                }
            }
        }
        runs.extend(cur);
    }
    for f in (0..m.frames.len() as u32).filter(|f| slices[*f as usize].is_empty() && keep(*f)) {
        let fr = &m.frames[f as usize];
        if let Some((_, _, frames)) =
            runs.iter_mut().find(|(p, r, _)| *p == fr.pack && r.start <= fr.offset && fr.offset + fr.clen <= r.end)
        {
            frames.push(f);
            frames.sort_by_key(|f| m.frames[*f as usize].offset);
        }
    }
    // Large runs first, so the longest download starts earliest.
    runs.sort_by_key(|(_, r, _)| std::cmp::Reverse(r.end - r.start));
    runs
}

#[cfg(test)]
mod tests {
    use sandcache_archive::pack::{Frame, PackRef};

    use super::*;

    /// One pack of six contiguous frames of 1 MiB each, every frame needed.
    fn six_frames() -> (Manifest, Vec<Vec<Slice>>) {
        let mut m = Manifest::empty(3, 0);
        m.packs.push(PackRef { id: "p".into(), size: 6 << 20, hot: false });
        let mib = 1u64 << 20;
        m.frames =
            (0..6).map(|i| Frame { pack: 0, offset: i * mib, clen: mib, rawlen: mib, hash: String::new() }).collect();
        let slices = (0..6).map(|_| vec![Slice { entry: 0, at: 0, len: 1, file_offset: 0 }]).collect();
        (m, slices)
    }

    #[test]
    fn a_few_needed_megabytes_are_spread_over_the_streams() {
        let (m, slices) = six_frames();
        let lens = |streams| {
            let runs = plan_runs(&m, &slices, &HashSet::new(), |_| false, streams);
            let mut lens: Vec<u64> = runs.iter().map(|(_, r, _)| (r.end - r.start) >> 20).collect();
            lens.sort_unstable();
            lens
        };
        // Eight streams: a run per frame (none under 1 MiB).
        assert_eq!(lens(8), [1, 1, 1, 1, 1, 1]);
        // Two: two runs of three frames.
        assert_eq!(lens(2), [3, 3]);
        assert_eq!(lens(1), [6]);
    }
}
