//! A large file's hash from its parts' BLAKE3 subtrees, merged as they
//! are written, instead of reading the file back.

use std::collections::HashMap;
use std::sync::Mutex;

use sandcache_archive::pack;

/// A large file's parts are hashed as they are written into staging, each
/// as a BLAKE3 subtree (a chaining value) of one frame's worth of the file:
/// the file's hash is then their merge, not a second read of the file.
/// (The tail reads back instead: its temporary files sit in the live dir.)
/// By entry: the part size, and each part's chaining value.
#[derive(Default)]
pub(super) struct PartHashes(Mutex<HashMap<u32, Parts>>);

/// A file's part size, and the chaining value of each part recorded.
type Parts = (u64, Vec<Option<blake3::hazmat::ChainingValue>>);

impl PartHashes {
    /// Records the chaining value of a part, when the file is cut in parts
    /// of `part` bytes (its first frame's raw length, a power of two of
    /// BLAKE3's 1 KiB chunks) and this one is cut so (at a multiple of it,
    /// whole but for the last); otherwise the file is read back as before.
    pub(super) fn add(&self, entry: u32, size: u64, part: u64, file_offset: u64, data: &[u8]) {
        let len = data.len() as u64;
        let usable = part.is_power_of_two() && part >= 1024 && part <= pack::FRAME_RAW as u64;
        if !usable || file_offset % part != 0 || !(len == part || file_offset + len == size) || len == 0 || size <= part
        {
            return;
        }
        use blake3::hazmat::HasherExt;
        let mut h = blake3::Hasher::new();
        h.set_input_offset(file_offset);
        h.update(data);
        let cv = h.finalize_non_root();
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (at, cvs) = all.entry(entry).or_insert_with(|| (part, vec![None; size.div_ceil(part) as usize]));
        if *at != part {
            return;
        }
        if let Some(slot) = cvs.get_mut((file_offset / part) as usize) {
            *slot = Some(cv);
        }
    }

    /// The file's BLAKE3 from its parts, when every one was recorded.
    pub(super) fn root(&self, entry: u32, size: u64) -> Option<blake3::Hash> {
        let (part, cvs) = self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&entry)?;
        let cvs: Vec<_> = cvs.into_iter().collect::<Option<_>>()?;
        if size <= part || cvs.len() as u64 != size.div_ceil(part) {
            return None;
        }
        Some(merge_root(&cvs, size, part))
    }
}

/// Merges the chaining values of consecutive `part`-sized subtrees (the
/// last may be shorter) covering `len` bytes, as BLAKE3's tree does: the
/// left subtree is the largest power of two of chunks short of the whole.
fn merge_cvs(cvs: &[blake3::hazmat::ChainingValue], len: u64, part: u64) -> blake3::hazmat::ChainingValue {
    use blake3::hazmat::{Mode, left_subtree_len, merge_subtrees_non_root};
    if cvs.len() == 1 {
        return cvs[0];
    }
    let left = left_subtree_len(len);
    let n = (left / part) as usize;
    merge_subtrees_non_root(&merge_cvs(&cvs[..n], left, part), &merge_cvs(&cvs[n..], len - left, part), Mode::Hash)
}

fn merge_root(cvs: &[blake3::hazmat::ChainingValue], len: u64, part: u64) -> blake3::Hash {
    use blake3::hazmat::{Mode, left_subtree_len, merge_subtrees_root};
    let left = left_subtree_len(len);
    let n = (left / part) as usize;
    merge_subtrees_root(&merge_cvs(&cvs[..n], left, part), &merge_cvs(&cvs[n..], len - left, part), Mode::Hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The usual part: a frame (4 MiB), as the packer cuts large files.
    const PART: u64 = pack::FRAME_RAW as u64;

    #[test]
    fn parts_hashes_merge_to_the_files_blake3() {
        let part = PART as usize;
        for size in [part + 1, 2 * part, 3 * part + 5, 5 * part, 8 * part + 1024, 9 * part - 1] {
            let data: Vec<u8> = (0..size as u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
            let parts = PartHashes::default();
            let offsets: Vec<usize> = (0..size).step_by(part).collect();
            for &at in offsets.iter().rev() {
                parts.add(7, size as u64, PART, at as u64, &data[at..(at + part).min(size)]);
            }
            assert_eq!(parts.root(7, size as u64), Some(blake3::hash(&data)), "{size} bytes");
        }
        let size = 3 * part;
        let data = vec![1u8; size];
        let parts = PartHashes::default();
        parts.add(1, size as u64, PART, 0, &data[..part]);
        parts.add(1, size as u64, PART, part as u64, &data[part..2 * part]);
        assert_eq!(parts.root(1, size as u64), None, "a part missing");
        let parts = PartHashes::default();
        parts.add(2, size as u64, PART, 0, &data[..part - 1024]);
        parts.add(2, size as u64, PART, (part - 1024) as u64, &data[part - 1024..2 * part]);
        parts.add(2, size as u64, PART, 2 * part as u64, &data[2 * part..]);
        assert_eq!(parts.root(2, size as u64), None, "parts cut elsewhere");
        // A Deno cache's parts: frames of 256 KiB.
        let small = pack::CHUNK_RAW;
        for size in [small + 1, 3 * small, 9 * small + 77] {
            let data: Vec<u8> = (0..size as u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
            let parts = PartHashes::default();
            for at in (0..size).step_by(small) {
                parts.add(3, size as u64, small as u64, at as u64, &data[at..(at + small).min(size)]);
            }
            assert_eq!(parts.root(3, size as u64), Some(blake3::hash(&data)), "{size} bytes in small parts");
        }
    }
}
