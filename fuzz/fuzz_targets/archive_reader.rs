//! Fuzz target `archive_reader`: the check is in `fuzz/checks/archive_reader.rs` (what the
//! input means and what counts as a bug), shared with the seed replay test.

#![no_main]

mod check {
    include!("../checks/archive_reader.rs");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = check::run(data);
});
