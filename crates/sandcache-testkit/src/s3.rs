//! The S3-compatible test server (Garage, started by `scripts/dev-s3.sh`).
//!
//! `scripts/test.sh` exports `SANDCACHE_TEST_S3=s3://sandcache` plus the
//! `AWS_*` variables. Without them, S3 tests skip with a message, except on
//! CI (`CI` set), where a missing server is a failure.

use sandcache_store::{S3Spec, StoreSpec};

/// The test bucket with a fresh prefix, or `None` (skip) outside CI.
pub fn spec(test: &str) -> Option<S3Spec> {
    let url = crate::ci::var_or_skip("SANDCACHE_TEST_S3", test, "run scripts/test.sh for S3 tests")?;
    let StoreSpec::S3(mut spec) = url.parse::<StoreSpec>().expect("SANDCACHE_TEST_S3 is an s3:// URL") else {
        panic!("SANDCACHE_TEST_S3 must be an s3:// URL");
    };
    let run = format!("t-{}-{:08x}", test, rand::random::<u32>());
    spec.prefix = if spec.prefix.is_empty() { run } else { format!("{}/{run}", spec.prefix) };
    spec.endpoint = std::env::var("AWS_ENDPOINT_URL").ok();
    spec.region = std::env::var("AWS_REGION").unwrap_or_else(|_| S3Spec::DEFAULT_REGION.into());
    Some(spec)
}

/// Environment for a child process that talks to the test server with the
/// given credentials variables and nothing else from the AWS chain.
pub fn endpoint() -> Option<String> {
    std::env::var("AWS_ENDPOINT_URL").ok()
}
