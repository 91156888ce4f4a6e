//! Every environment variable the `sandcache` binary reads, in one place.
//!
//! Resolution order everywhere: command-line flag, then environment, then
//! default. The libraries read none of these; the AWS credential chain reads
//! the standard `AWS_*` variables itself (see `sandcache_store::S3Store`).

/// The directory to restore into and snapshot from (default `/deno-dir`).
pub const DENO_DIR: &str = "DENO_DIR";
/// The store: `s3://BUCKET[/PREFIX]`, `file://PATH`, a path, or `off`.
pub const SANDCACHE_STORE: &str = "SANDCACHE_STORE";
/// The restore deadline in seconds (default 30).
pub const SANDCACHE_TIMEOUT: &str = "SANDCACHE_TIMEOUT";
/// Log filter, in `tracing` env-filter syntax (default `info`).
pub const SANDCACHE_LOG: &str = "SANDCACHE_LOG";
/// Log format: `text` (default) or `json`.
pub const SANDCACHE_LOG_FORMAT: &str = "SANDCACHE_LOG_FORMAT";

/// Seed compatibility: a bucket enables an S3 store when no store is given.
pub const DECO_CACHE_S3_BUCKET: &str = "DECO_CACHE_S3_BUCKET";
/// Seed compatibility: the bucket's region (default us-west-2).
pub const DECO_CACHE_S3_REGION: &str = "DECO_CACHE_S3_REGION";
/// Seed compatibility: the cache key (`<site>/cache.tgz`).
pub const DECO_CACHE_S3_KEY: &str = "DECO_CACHE_S3_KEY";
/// A custom S3 endpoint, when `AWS_ENDPOINT_URL` is not set.
pub const DECO_CACHE_S3_ENDPOINT: &str = "DECO_CACHE_S3_ENDPOINT";

/// A custom S3 endpoint for S3-compatible servers (the AWS SDKs' variable).
pub const AWS_ENDPOINT_URL: &str = "AWS_ENDPOINT_URL";
/// The region when neither `--region` nor `DECO_CACHE_S3_REGION` is set.
pub const AWS_REGION: &str = "AWS_REGION";
pub const AWS_DEFAULT_REGION: &str = "AWS_DEFAULT_REGION";
