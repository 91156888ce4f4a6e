//! Restore: a generation from the store into the dir, swapped in whole.
//!
//! - `handle.rs`: the public calls, `Cache::restore` and
//!   `Cache::restore_handle` ([`RestoreHandle`]), and the outcome's log line.
//! - `chain.rs`: one restore. The dir resolved and locked; the key's
//!   generations, then each fallback's (`Source`, `Candidate`), tried in
//!   order until one is usable; the winner swapped in, its tail landed
//!   (hot-first), its state recorded (`after_swap`). `HotSignal` fires
//!   `hot-ready`.
//! - `native.rs`: a native generation (`NativeRestore`): its manifest or
//!   hot pieces read, `native::restore_into` a new staging dir, and after
//!   the swap `phase_two` (`native::restore_tail` into the live dir).
//! - `delta.rs`: a native generation restored in place (`restore_delta`),
//!   when the dir's state proves it holds another one, unchanged: only the
//!   units that differ written (whole, in staging) and put in place.
//! - `watched.rs`: an idle dir's delta check, made ahead of the restore
//!   that needs it and kept true by inotify watches (`watch_idle`).
//! - `archive.rs`: a single archive, streamed through the decoder into the
//!   extractor, into a new staging dir.
//!
//! Nothing here imports `snapshot`; `native/` imports nothing here.

mod archive;
mod chain;
mod delta;
mod handle;
mod native;
mod watched;

pub use handle::RestoreHandle;
pub use watched::idle_checked;
