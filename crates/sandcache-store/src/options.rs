//! Timeouts, retries and upload sizes for network stores.

use std::time::Duration;

/// Timeouts and retries for network stores. They nest inside the engine's
/// total deadline, which always wins.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Establishing a connection.
    pub connect_timeout: Duration,
    /// A response body that sends nothing for this long has stalled.
    pub idle_timeout: Duration,
    /// One whole request, body included (object_store's default is 30 s,
    /// too short for large objects on slow links).
    pub request_timeout: Duration,
    /// Retries of a failed request (with backoff), within `retry_timeout`.
    pub max_retries: usize,
    pub retry_timeout: Duration,
    /// Bytes per multipart part on upload.
    pub part_size: usize,
    /// Parts uploaded at once.
    pub upload_concurrency: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(600),
            max_retries: 3,
            retry_timeout: Duration::from_secs(20),
            part_size: 8 << 20,
            upload_concurrency: 4,
        }
    }
}
