//! The native format: a generation restored from content-addressed packs
//! (into staging, in two phases, or as a delta in place), and built from a
//! walk of the dir. Where its objects live: [`crate::layout`].
//!
//! - `manifest.rs`, `pieces.rs`: a generation's manifest read (its root,
//!   pieces, hot pieces), and cut into pieces for a snapshot.
//! - `restoring.rs`: what a restore's steps share ([`Restoring`]).
//! - `staging.rs`: a manifest restored into staging ([`restore_into`]).
//! - `plan.rs`, `fetch.rs`, `prefetch.rs`, `writers.rs`, `parts.rs`: which
//!   frames to fetch, the ranged downloads, whole packs prefetched, the
//!   writer threads, large files' hashes from their parts.
//! - `tail.rs`, `live.rs`: a hot-first restore's second phase, into the
//!   live dir.
//! - `units.rs`: what a delta replaces whole (package dirs, other files).
//! - `delta.rs`: a delta's plan, from two manifests and a check of the disk.
//! - `inplace.rs`: a delta's plan carried out in the live dir.
//! - `filesystem.rs`: how an entry is made on disk; directory fds opened
//!   without following.
//! - `build.rs`: a snapshot's generation, built from a walk.

mod build;
mod delta;
mod fetch;
mod filesystem;
mod inplace;
mod live;
mod manifest;
mod parts;
mod pieces;
mod plan;
mod prefetch;
mod restoring;
mod staging;
mod tail;
mod units;
mod writers;

pub(crate) use build::build;
pub(crate) use delta::{Trust, plan};
pub(crate) use inplace::{InPlace, apply};
pub(crate) use live::LiveDir;
pub(crate) use manifest::{fetch_manifest, fetch_root, usable_hot, whole};
pub(crate) use pieces::split;
pub(crate) use prefetch::Prefetch;
pub(crate) use restoring::{RestoreStats, Restoring};
pub(crate) use staging::restore_into;
pub(crate) use tail::{PendingManifest, Tail, restore_tail};
pub(crate) use units::digest;
