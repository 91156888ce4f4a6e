//! The Deno binary the tests run (`SANDCACHE_DENO`, which
//! `scripts/test.sh` sets from `scripts/install-deno.sh`).
//!
//! Without it, tests that need Deno skip with a message, except on CI (`CI`
//! set), where a missing Deno is a failure ([`crate::ci::var_or_skip`]).

use std::path::Path;

/// The Deno binary, or `None` (skip) outside CI.
pub fn binary(test: &str) -> Option<String> {
    crate::ci::var_or_skip("SANDCACHE_DENO", test, "scripts/install-deno.sh prints it")
}

/// `deno` put in `dir` (a hard link, else a copy), where a worker's uid can
/// run it when it cannot reach the original.
pub fn linked_into(deno: &str, dir: &Path) -> String {
    let copy = dir.join("deno");
    if std::fs::hard_link(deno, &copy).is_err() {
        std::fs::copy(deno, &copy).unwrap();
    }
    copy.display().to_string()
}
