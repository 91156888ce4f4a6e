//! Fuzz target `deploy_body`: the check is in `fuzz/checks/deploy_body.rs` (what the
//! input means and what counts as a bug), shared with the seed replay test.

#![no_main]

mod check {
    include!("../checks/deploy_body.rs");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = check::run(data);
});
