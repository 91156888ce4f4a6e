//! Fuzz target `manifest_parser`: the check is in `fuzz/checks/manifest_parser.rs` (what the
//! input means and what counts as a bug), shared with the seed replay test.

#![no_main]

mod check {
    include!("../checks/manifest_parser.rs");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = check::run(data);
});
