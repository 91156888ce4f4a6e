// The `POST /sandbox/deploy` body parser's fuzz check,
// `sandcache_runner::DeployRequest::parse`. Included (`include!`) by
// `fuzz/fuzz_targets/deploy_body.rs` and by the seed replay in
// `crates/sandcache-runner/tests/it/seeds.rs`, so both run the same code.
//
// Input: the body as is. Refusals are fine; a panic is a bug, and so is an
// accepted request that breaks what the runner relies on (a site name safe
// in paths, no option-like branch or repo, env names `execve` accepts).

use sandcache_runner::{BadRequest, DeployRequest};

pub fn run(data: &[u8]) -> Result<DeployRequest, BadRequest> {
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
