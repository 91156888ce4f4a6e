use std::sync::atomic::{AtomicU64, Ordering};

/// Counters an operation bumps as it goes, for a progress bar or metrics.
///
/// Shared through an `Arc`; readers poll it. All counts are monotonic.
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes of file content written (extract) or read (write).
    pub bytes: AtomicU64,
    /// Files, symlinks and hardlinks created or archived.
    pub files: AtomicU64,
    /// Bytes moved over the wire to or from the store (set by the engine).
    pub transferred: AtomicU64,
    /// Expected wire bytes when known (`Content-Length`), else 0.
    pub expected: AtomicU64,
}

impl Progress {
    pub(crate) fn add(&self, bytes: u64, files: u64) {
        if bytes > 0 {
            self.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        if files > 0 {
            self.files.fetch_add(files, Ordering::Relaxed);
        }
    }
}
