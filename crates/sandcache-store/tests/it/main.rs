//! The store crate's tests: one conformance suite on every backend and
//! wrapper, S3's failures, and store specs.

/// `sandcache_testkit::store::conformance` on the local directory, a real
/// S3-compatible server (Garage, from scripts/dev-s3.sh), that server
/// behind the fault proxy and the throttled link, and the wrapper store.
mod conformance;
/// A missing bucket and a stalled body: failures, never misses or hangs.
mod s3;
/// Store specs print as they parse.
mod spec;
