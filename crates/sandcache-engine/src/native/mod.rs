//! The native format: a generation restored from content-addressed packs
//! (into staging, or in two phases), and built from a walk of the dir.
//! Where its objects live: [`crate::layout`].

mod build;
mod fetch;
mod filesystem;
mod live;
mod manifest;
mod parts;
mod piece_cache;
mod pieces;
mod plan;
mod prefetch;
mod restoring;
mod staging;
mod tail;
mod writers;

pub(crate) use build::build;
pub(crate) use live::LiveDir;
pub(crate) use manifest::{Pieces, fetch_manifest, fetch_root, usable_hot, whole};
pub(crate) use piece_cache::PieceCache;
pub(crate) use pieces::split;
pub(crate) use prefetch::Prefetch;
pub(crate) use restoring::{RestoreStats, Restoring};
pub(crate) use staging::restore_into;
pub(crate) use tail::{PendingManifest, Tail, restore_tail};
