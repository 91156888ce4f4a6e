// The archive reader's fuzz check, `sandcache_archive::extract`. Included
// (`include!`) by `fuzz/fuzz_targets/archive_reader.rs` and by the seed
// replay in `crates/sandcache-archive/tests/it/seeds.rs`, so both run the
// same code.
//
// Input: one selector byte, then the stream. Selector `% 3`: 0 hands the
// bytes over as they are (plain tar, or a gzip/zstd stream of the fuzzer's
// making), 1 gzip-compresses them first, 2 zstd-compresses them first, so
// the tar parser is reached through each decoder.
//
// Errors are fine; a panic is a bug, and so is any change outside the
// staging directory (checked by walking the sandbox before and after).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sandcache_archive::{ExtractError, ExtractOptions, ExtractStats, Limits, extract};

/// Extracts `data` into `<sandbox>/t/staging`; panics if anything else in
/// the sandbox changed.
pub fn run(data: &[u8]) -> Result<ExtractStats, ExtractError> {
    let Some((&selector, body)) = data.split_first() else {
        return Err(ExtractError::Cancelled);
    };
    let stream = match selector % 3 {
        0 => body.to_vec(),
        1 => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(body).unwrap();
            gz.finish().unwrap()
        }
        _ => zstd::bulk::compress(body, 1).unwrap(),
    };
    let sandbox = tempfile::tempdir().unwrap();
    let t = sandbox.path().join("t");
    let staging = t.join("staging");
    fs::create_dir_all(&staging).unwrap();
    fs::write(sandbox.path().join("bait"), b"bait").unwrap();
    fs::write(t.join("bait"), b"bait").unwrap();
    let before = state(sandbox.path(), &staging);
    let mut opts = ExtractOptions::new("/deno-dir");
    // Small limits keep each run fast; the logic is the same at any size.
    opts.limits = Limits { max_bytes: 8 << 20, max_entries: 10_000, max_path_len: 4096 };
    let result = extract(std::io::Cursor::new(stream), &staging, &opts);
    assert_eq!(before, state(sandbox.path(), &staging), "something outside the staging dir changed");
    result
}

/// Every path under `root` with its inode, type, mode, links, size, times,
/// link target and content; `skip` (the staging dir) only by inode and type.
fn state(root: &Path, skip: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        if p == skip {
            out.insert(p, format!("{} dir={}", m.ino(), m.is_dir()));
            continue;
        }
        let link = fs::read_link(&p).map(|t| t.display().to_string()).unwrap_or_default();
        let content = if m.is_file() { fs::read(&p).unwrap() } else { Vec::new() };
        out.insert(
            p.clone(),
            format!(
                "{} {:o} {} {} {}.{} {}.{} {link:?} {content:?}",
                m.ino(),
                m.mode(),
                m.nlink(),
                m.len(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec()
            ),
        );
        if m.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out
}
