//! Stores for tests: the conformance suite every [`Store`] must pass, and
//! a wrapper store with hooks (lost objects, slow ranged reads, panics,
//! counts).
//!
//! [`Store`]: sandcache_store::Store

pub mod conformance;
mod wrapped;

pub use wrapped::{Method, Wrapped};
