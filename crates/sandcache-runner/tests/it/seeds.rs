//! Replays the committed fuzz seeds (`fuzz/seeds/deploy_body`) through the
//! fuzz target's code path, without libFuzzer: no panic, an accepted body
//! keeps the runner's invariants, a seed named `ok-*` is accepted and one
//! named `bad-*` refused (seeds found by the fuzzer are only replayed).

use std::fs;
use std::path::Path;

/// The fuzz target's check, the very code the fuzzer runs.
mod deploy_body {
    include!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/checks/deploy_body.rs"));
}

#[test]
fn deploy_body_seeds_replay() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/deploy_body");
    let mut n = 0;
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let result = deploy_body::run(&fs::read(e.path()).unwrap());
        if name.starts_with("ok-") {
            assert!(result.is_ok(), "{name} must be accepted: {result:?}");
        } else if name.starts_with("bad-") {
            assert!(result.is_err(), "{name} must be refused: {result:?}");
        }
        n += 1;
    }
    assert!(n >= 10, "only {n} seeds");
}
