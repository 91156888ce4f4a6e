//! Replays the committed fuzz seeds (`fuzz/seeds/deploy_body`) through the
//! fuzz target's code path, without libFuzzer: no panic, an accepted body
//! keeps the runner's invariants, a seed named `ok-*` is accepted and one
//! named `bad-*` refused (seeds found by the fuzzer are only replayed).

/// The fuzz target's check, the very code the fuzzer runs.
mod deploy_body {
    include!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/checks/deploy_body.rs"));
}

#[test]
fn deploy_body_seeds_replay() {
    sandcache_testkit::seeds::replay("deploy_body", deploy_body::run);
}
