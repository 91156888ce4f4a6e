//! The committed fuzz seeds (`fuzz/seeds/<target>/`), replayed by the normal
//! tests through the fuzz targets' own checks (`fuzz/checks/<target>.rs`).

use std::fmt::Debug;
use std::fs;
use std::path::{Path, PathBuf};

/// `fuzz/seeds/<target>`.
pub fn dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds").join(target)
}

/// Runs `check` on every seed of `target`, in name order: a seed named
/// `ok-*` must be accepted and one named `bad-*` refused; seeds the fuzzer
/// found keep their hash names and only have to pass `check`'s own asserts.
/// Returns how many seeds ran.
pub fn replay<T: Debug, E: Debug>(target: &str, check: impl Fn(&[u8]) -> Result<T, E>) -> usize {
    let mut seeds: Vec<PathBuf> = fs::read_dir(dir(target)).unwrap().map(|e| e.unwrap().path()).collect();
    seeds.sort();
    assert!(seeds.len() >= 10, "{target}: only {} seeds", seeds.len());
    for path in &seeds {
        let name = path.file_name().unwrap().to_string_lossy();
        let result = check(&fs::read(path).unwrap());
        if name.starts_with("ok-") {
            assert!(result.is_ok(), "{target}/{name} must be accepted: {result:?}");
        } else if name.starts_with("bad-") {
            assert!(result.is_err(), "{target}/{name} must be refused: {result:?}");
        }
    }
    seeds.len()
}
