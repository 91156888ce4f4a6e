//! Waiting for something a test cannot be told about.

use std::time::{Duration, Instant};

/// Polls `ok` every 50 ms until it holds; fails the test, naming `what`,
/// if it does not within `secs` seconds.
pub fn wait_for(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < Duration::from_secs(secs), "{what} did not happen within {secs} s");
        std::thread::sleep(Duration::from_millis(50));
    }
}
