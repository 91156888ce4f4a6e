//! Replays the committed fuzz seeds (`fuzz/seeds/deploy_body`) through the
//! fuzz target's code path, without libFuzzer: no panic, an accepted body
//! keeps the runner's invariants, a seed named `ok-*` is accepted and one
//! named `bad-*` refused (seeds found by the fuzzer are only replayed).

use std::fs;
use std::path::Path;

use sandcache_runner::{BadRequest, DeployRequest};

/// As `fuzz/fuzz_targets/deploy_body.rs`.
fn deploy_body(data: &[u8]) -> Result<DeployRequest, BadRequest> {
    let r = DeployRequest::parse(data)?;
    assert!(!r.site.is_empty() && r.site.len() <= 128, "site length: {:?}", r.site);
    assert!(r.site != "." && r.site != "..", "site: {:?}", r.site);
    assert!(r.site.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)), "site: {:?}", r.site);
    assert!(r.branch.as_ref().is_none_or(|b| !b.is_empty() && !b.starts_with('-')), "branch: {:?}", r.branch);
    assert!(r.repo.as_ref().is_none_or(|b| !b.is_empty() && !b.starts_with('-')), "repo: {:?}", r.repo);
    assert!(r.envs.keys().all(|k| !k.is_empty() && !k.contains(['=', '\0'])), "envs: {:?}", r.envs);
    assert!(r.run_command.as_ref().is_none_or(|c| c.first().is_none_or(|a| !a.is_empty())), "{:?}", r.run_command);
    Ok(r)
}

#[test]
fn deploy_body_seeds_replay() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/deploy_body");
    let mut n = 0;
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let result = deploy_body(&fs::read(e.path()).unwrap());
        if name.starts_with("ok-") {
            assert!(result.is_ok(), "{name} must be accepted: {result:?}");
        } else if name.starts_with("bad-") {
            assert!(result.is_err(), "{name} must be refused: {result:?}");
        }
        n += 1;
    }
    assert!(n >= 10, "only {n} seeds");
}
