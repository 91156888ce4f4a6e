//! The archive crate's tests: round trips, interop with GNU tar, hostile
//! archives and manifests, the fuzz seeds, and the snapshot walker against
//! a tree that changes under it.

/// Hostile archives: rejected with a reason, or neutralised.
mod hostile;
/// Manifests and packs: round trip, and hostile manifests refused.
mod manifest;
/// Round trips, interop with GNU tar, fingerprints.
mod roundtrip;
/// The committed fuzz seeds, replayed.
mod seeds;
/// The snapshot walker against a tree that changes under it.
mod walk;
