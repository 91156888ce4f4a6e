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
// staging directory (the sandbox, with bait files, is listed before and
// after by `sandcache_testkit::tree::sandbox_state`).

use std::fs;
use std::io::Write;

use sandcache_archive::{ExtractError, ExtractOptions, ExtractStats, Limits, extract};
use sandcache_testkit::tree::sandbox_state;

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
    let before = sandbox_state(sandbox.path(), &["t/staging"], &[]);
    let mut opts = ExtractOptions::new("/deno-dir");
    // Small limits keep each run fast; the logic is the same at any size.
    opts.limits = Limits { max_bytes: 8 << 20, max_entries: 10_000, max_path_len: 4096 };
    let result = extract(std::io::Cursor::new(stream), &staging, &opts);
    let after = sandbox_state(sandbox.path(), &["t/staging"], &[]);
    assert_eq!(before, after, "something outside the staging dir changed");
    result
}
