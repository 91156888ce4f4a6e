//! The engine's tests: restore and snapshot end to end, on the local store
//! and on a real S3-compatible server (Garage).

/// `delete`, a panicking store client, and hostile configuration values.
mod admin;
/// Delta restores: only what differs written, in place, unit by unit.
mod delta;
/// Fallback keys: the exact key first, then prefixes, in order.
mod fallback;
/// Every fault of the fault proxy, in every form, restore and snapshot.
mod faults;
/// A hostile corpus of archives and manifests, rejected or neutralised.
mod hostile;
/// A hostile worker racing the engine on the file system.
mod hostile_fs;
/// The hot set and the two-phase (hot-first) restore.
mod hot;
/// The native format: packs, frames, gc, modes.
mod native;
/// Every outcome reason, the deadline with a stalled server, staging and
/// swap, and interop with the seed's tar.
mod outcomes;
/// Fewer requests before the first byte: the key's pointer, and pieces held locally.
mod pointer;
/// The content pool shared by keys, its marks and gc.
mod pool;
/// A full disk, a read-only target, a target written by another process.
mod resources;
/// Deno's SQLite caches, copied consistently.
mod sqlite;

/// The stores tests run on, whole-object reads and writes, option presets.
mod support;

// The helpers the modules name from here (`crate::x`, `super::x`).
use support::{get, put, settle, stores};
