use std::io;
use std::path::PathBuf;

/// Why an extraction stopped. Nothing outside the staging directory was
/// touched in any case; the caller removes the staging directory.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// The stream is not a readable archive: bad magic, a decoder or tar
    /// framing error, or a read error from the source.
    #[error("corrupt archive: {detail}")]
    Corrupt {
        detail: String,
        #[source]
        source: Option<io::Error>,
    },
    /// An entry would escape the target or is of a kind we never create.
    #[error("unsafe entry `{path}`: {why}")]
    Unsafe { path: String, why: String },
    /// A configured limit (size, entry count, path length) was exceeded.
    #[error("archive exceeds the {what} limit of {limit}")]
    Limit { what: &'static str, limit: u64 },
    /// Writing into the staging directory failed (disk full, read-only...).
    #[error("failed to write `{}`", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The caller cancelled (deadline reached).
    #[error("extraction cancelled")]
    Cancelled,
}
