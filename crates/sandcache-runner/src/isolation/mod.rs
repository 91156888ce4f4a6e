//! Keeping the worker (someone else's code) away from the runner: the uid it
//! runs as, a non-dumpable runner, who is on the other end of an admin
//! request, the secret files it must not read, and every process it leaves.
//!
//! See `docs/threat-model.md` for what each piece stops and what is left.
//!
//! - `user.rs`: [`WorkerUser`], who the worker runs as.
//! - `hardening.rs`: the runner's own process, non-dumpable and a child
//!   subreaper.
//! - `peer.rs`: who is on the other end of a connection ([`Peer`],
//!   `sock_diag`).
//! - `procs.rs`: the process table, as `/proc` shows it.
//! - `kill.rs`: every signal the runner sends and every child it reaps.
//! - `sweep.rs`: `sweep`, killing every process a worker left.
//! - `reaper.rs`: [`start_orphan_reaper`], and the children the runner
//!   waits for itself (`OwnChild`), which it leaves alone.
//! - `spawn.rs`: `spawn_own`, how those children start: marked, as the
//!   worker's uid (taken in the forked child), without a fork as the
//!   runner's own.
//! - `metadata.rs`: [`block_metadata`], the credential endpoints closed to
//!   the worker's uid.
//! - `report.rs`: `startup_report`, what the worker could still read or
//!   write.

mod hardening;
pub(crate) mod kill;
mod metadata;
pub(crate) mod peer;
mod procs;
mod reaper;
mod report;
mod spawn;
mod sweep;
mod user;

// What the binary uses (and the tests name); the rest is the runner's own.
pub use hardening::{become_subreaper, make_non_dumpable};
pub use metadata::{CREDENTIAL_ENDPOINTS_V4, CREDENTIAL_ENDPOINTS_V6, block_metadata};
pub use peer::Peer;
pub use reaper::start_orphan_reaper;
pub use user::{DEFAULT_WORKER_GID, DEFAULT_WORKER_UID, WorkerUser};

pub(crate) use peer::Attribution;
pub(crate) use reaper::OwnChild;
#[cfg(test)]
pub(crate) use reaper::reap_orphans;
pub(crate) use report::startup_report;
pub(crate) use spawn::spawn_own;
pub(crate) use sweep::{SweepScope, sweep};
