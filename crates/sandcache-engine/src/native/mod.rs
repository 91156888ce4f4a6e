//! The native format: a generation restored from content-addressed packs
//! (into staging, in two phases, or as a delta in place), and built from a
//! walk of the dir.
//! Where its objects live: [`crate::layout`]; the manifest itself and its
//! algebra: `sandcache_archive::pack`.
//!
//! Restoring, in the order a restore uses them:
//!
//! | file | holds | key types |
//! |---|---|---|
//! | `manifest.rs` | a generation's root, pieces and hot pieces, fetched, checked and joined | `fetch_root`, `whole`, `usable_hot` |
//! | `prefetch.rs` | packs downloading whole while the manifest is read; frames kept for the tail | `Prefetch` |
//! | `restoring.rs` | what one generation's restore steps share, and what it reports | `Restoring`, `RestoreStats` |
//! | `plan.rs` | each file's slices per frame, frames coalesced into ranges per pack | `Slice`, `Run` |
//! | `fetch.rs` | ranged downloads feeding frames to the writers, within the in-flight budget | `FrameJob`, `Fetches` |
//! | `writers.rs` | the writer threads: frames decoded, slices written | `Sink`, `write_frames` |
//! | `filesystem.rs` | how an entry is made on disk: modes under the umask, metadata on the fd; directory fds opened without following | `Umask`, `DirFds` |
//! | `parts.rs` | a large file's hash from its parts, merged as they are written | `PartHashes` |
//! | `staging.rs` | phase one (or the only phase): a manifest into a private staging dir | `restore_into` |
//! | `tail.rs` | phase two: the files that are not hot, into the live dir | `Tail`, `PendingManifest`, `restore_tail` |
//! | `live.rs` | the live dir of phase two: files placed whole, what a tail that did not land leaves | `LiveDir` |
//! | `units.rs` | what a delta replaces whole: npm package dirs, other files | `Unit`, `Units`, `Shape` |
//! | `delta.rs` | a delta's plan: the two manifests compared, then the disk checked against the generation it holds | `diff`, `Diff`, `check`, `Intact`, `Plan`, `Trust` |
//! | `patch.rs` | a large file a delta writes, its unchanged frames copied from the old file | `patches`, `write_patches` |
//! | `inplace.rs` | a delta's plan carried out in the live dir | `InPlace`, `apply` |
//!
//! Snapshotting:
//!
//! | file | holds | key types |
//! |---|---|---|
//! | `build.rs` | the walk (through the archive's `Selection`), content reused from the base, new packs hot and cold apart, the manifest | `build`, `SnapshotPlan` |
//! | `pieces.rs` | a manifest cut into content-addressed pieces and a root, and the hot pieces | `split` |

mod build;
mod delta;
mod fetch;
mod filesystem;
mod inplace;
mod live;
mod manifest;
mod parts;
mod patch;
mod piece_cache;
mod pieces;
mod plan;
mod prefetch;
mod restoring;
mod staging;
mod tail;
mod units;
mod writers;

pub(crate) use build::build;
pub(crate) use delta::{Intact, Trust, check, diff};
pub(crate) use filesystem::DirFds;
pub(crate) use inplace::{InPlace, apply};
pub(crate) use live::LiveDir;
pub(crate) use manifest::{Pieces, fetch_manifest, fetch_root, usable_hot, whole};
pub(crate) use patch::{Patch, PatchJob, patches, write_patches};
pub(crate) use piece_cache::PieceCache;
pub(crate) use pieces::split;
pub(crate) use prefetch::Prefetch;
pub(crate) use restoring::{RestoreStats, Restoring};
pub(crate) use staging::restore_into;
pub(crate) use tail::{PendingManifest, Tail, restore_tail};
pub(crate) use units::digest;
