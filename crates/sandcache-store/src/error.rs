use std::path::PathBuf;

/// A store operation that failed.
///
/// `NotFound` is kept apart from the failures: a first wake-up has no cache
/// yet, which is normal, while an outage is not.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("no object at `{key}`")]
    NotFound { key: String },
    #[error("invalid key `{key}`: keys are relative `/`-separated names without `.` or `..`")]
    InvalidKey { key: String },
    #[error("invalid store `{spec}`: {why}")]
    InvalidSpec { spec: String, why: String },
    /// A connect, read-idle or request timeout, after the retries: the
    /// server is there but stalled, which is not the same as an outage.
    #[error("request for `{key}` timed out")]
    TimedOut {
        key: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("request for `{key}` failed")]
    Request {
        key: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("local store IO on `{}` failed", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the upload body for `{key}` failed")]
    Body {
        key: String,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }
}
