//! Bounds on what an archive, a manifest or a walked tree may hold.

/// Bounds on what one archive may expand to. The defaults fit real caches
/// (a 200 MB DENO_DIR has about 20,000 files) with a wide margin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Total bytes of file content.
    pub max_bytes: u64,
    /// Entries of any kind.
    pub max_entries: u64,
    /// Bytes in one entry's path.
    pub max_path_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_bytes: 32 << 30, max_entries: 2_000_000, max_path_len: 4096 }
    }
}
