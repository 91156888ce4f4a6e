//! One generation's native restore: what its steps share, and what it
//! reports.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use sandcache_store::Store;

use crate::bad::Found;
use crate::options::RestoreOptions;

/// What every step of one generation's restore takes, in either phase.
pub(crate) struct Restoring<'a> {
    pub(crate) store: &'a dyn Store,
    /// The key the generation is under (a version-1 generation keeps its
    /// packs there).
    pub(crate) key: &'a str,
    pub(crate) opts: &'a RestoreOptions,
    /// Pool objects found bad on the way.
    pub(crate) found: &'a Arc<Found>,
    /// Set when the restore is dropped (its deadline) or a writer fails:
    /// fetches and writers stop at their next frame.
    pub(crate) cancel: Arc<AtomicBool>,
}

pub(crate) struct RestoreStats {
    pub files: u64,
    pub bytes: u64,
    pub transferred: u64,
}
