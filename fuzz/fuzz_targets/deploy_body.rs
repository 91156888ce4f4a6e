//! Fuzzes the `POST /sandbox/deploy` body parser,
//! `sandcache_runner::DeployRequest::parse`.
//!
//! Input: the body as is. Refusals are fine; a panic is a bug, and so is an
//! accepted request that breaks what the runner relies on (a site name safe
//! in paths, no option-like branch or repo, env names `execve` accepts).
//! `crates/sandcache-runner/tests/it/seeds.rs` replays the seeds.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sandcache_runner::DeployRequest;

fuzz_target!(|data: &[u8]| {
    let Ok(r) = DeployRequest::parse(data) else { return };
    assert!(!r.site.is_empty() && r.site.len() <= 128, "site length: {:?}", r.site);
    assert!(r.site != "." && r.site != "..", "site: {:?}", r.site);
    assert!(r.site.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)), "site: {:?}", r.site);
    assert!(r.branch.as_ref().is_none_or(|b| !b.is_empty() && !b.starts_with('-')), "branch: {:?}", r.branch);
    assert!(r.repo.as_ref().is_none_or(|b| !b.is_empty() && !b.starts_with('-')), "repo: {:?}", r.repo);
    assert!(r.envs.keys().all(|k| !k.is_empty() && !k.contains(['=', '\0'])), "envs: {:?}", r.envs);
    assert!(r.run_command.as_ref().is_none_or(|c| c.first().is_none_or(|a| !a.is_empty())), "{:?}", r.run_command);
});
