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
/// Restore and snapshot: most bytes of file content, plain or with K/M/G/T
/// (default 32G).
pub const SANDCACHE_MAX_BYTES: &str = "SANDCACHE_MAX_BYTES";
/// Restore and snapshot: most entries (files, dirs, links) (default 2000000).
pub const SANDCACHE_MAX_FILES: &str = "SANDCACHE_MAX_FILES";
/// Restore and snapshot: most bytes in one entry's path (default 4096).
pub const SANDCACHE_MAX_PATH_LEN: &str = "SANDCACHE_MAX_PATH_LEN";
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
/// `restore`: comma-separated fallbacks (keys, or prefixes ending in `/`),
/// tried in order when the key has nothing usable (`--fallback`).
pub const DECO_CACHE_S3_FALLBACK_KEYS: &str = sandcache_engine::seed_env::FALLBACK_KEYS;
/// A custom S3 endpoint, when `AWS_ENDPOINT_URL` is not set.
pub const DECO_CACHE_S3_ENDPOINT: &str = "DECO_CACHE_S3_ENDPOINT";

/// A custom S3 endpoint for S3-compatible servers (the AWS SDKs' variable).
pub const AWS_ENDPOINT_URL: &str = "AWS_ENDPOINT_URL";
/// The region when neither `--region` nor `DECO_CACHE_S3_REGION` is set.
pub const AWS_REGION: &str = "AWS_REGION";
pub const AWS_DEFAULT_REGION: &str = "AWS_DEFAULT_REGION";

/// `serve`: what to pre-warm DENO_DIR with while no site is deployed
/// (`--prewarm`): a key, or a `prefix/`, in the runner-wide store.
pub const SANDCACHE_PREWARM: &str = "SANDCACHE_PREWARM";
/// `serve`: how often an idle runner looks for a newer generation of the
/// pre-warmed base, in seconds (`--prewarm-refresh-secs`, default 300).
pub const SANDCACHE_PREWARM_REFRESH_SECS: &str = "SANDCACHE_PREWARM_REFRESH_SECS";
/// `serve`: `0` turns off starting the worker at `hot-ready` (the hot set
/// in place, the rest still landing); on by default.
pub const SANDCACHE_HOT_FIRST: &str = "SANDCACHE_HOT_FIRST";
/// `serve`: `true` lets proxied requests through while the cache's tail
/// lands (`--serve-during-tail`).
pub const SANDCACHE_SERVE_DURING_TAIL: &str = "SANDCACHE_SERVE_DURING_TAIL";

/// `serve`: the port to listen on (all interfaces), default 8000.
pub const APP_PORT: &str = "APP_PORT";
/// `serve`: the worker must listen on its `PORT` within this many seconds (60).
pub const PORT_TIMEOUT: &str = "PORT_TIMEOUT";
/// `serve`: where the site is cloned and the worker runs.
pub const SANDCACHE_WORK_DIR: &str = "SANDCACHE_WORK_DIR";
/// `serve`: seconds the cache dir must stay unchanged after the worker is
/// ready before the deps-ready snapshot (10).
pub const SANDCACHE_SETTLE_SECS: &str = "SANDCACHE_SETTLE_SECS";
/// `serve`: a default run command (whitespace-separated), used when a deploy
/// gives none and the repo has `SANDCACHE_RUN_ENTRY`.
pub const SANDCACHE_RUN_COMMAND: &str = "SANDCACHE_RUN_COMMAND";
/// `serve`: the entry file the default run command needs (`main.ts`).
pub const SANDCACHE_RUN_ENTRY: &str = "SANDCACHE_RUN_ENTRY";
/// `serve`: seconds a proxied request waits for the worker's response
/// headers before a 504 (60).
pub const SANDCACHE_PROXY_TIMEOUT: &str = "SANDCACHE_PROXY_TIMEOUT";
/// `serve`: seconds the final snapshot may take, a running one included (60).
pub const SANDCACHE_FINAL_SNAPSHOT_SECS: &str = "SANDCACHE_FINAL_SNAPSHOT_SECS";
/// `serve`: seconds `git clone` may take (120).
pub const SANDCACHE_CLONE_TIMEOUT: &str = "SANDCACHE_CLONE_TIMEOUT";
/// `serve`: a bearer token required on `/sandbox/*` (env only, never a flag,
/// so it does not show in `ps`).
pub const SANDCACHE_ADMIN_TOKEN: &str = "SANDCACHE_ADMIN_TOKEN";
/// `serve`: a file holding the admin token, read once at startup, when
/// `SANDCACHE_ADMIN_TOKEN` is not set. Mount it 0400, owned by the runner.
pub const SANDCACHE_ADMIN_TOKEN_FILE: &str = "SANDCACHE_ADMIN_TOKEN_FILE";
/// `serve`: a file holding this pod's admin key (64 hex digits, from
/// `sandcache admin-token --pod-key`): short-lived tokens made with it open
/// the admin API. Mount it 0400, owned by the runner.
pub const SANDCACHE_ADMIN_KEY_FILE: &str = "SANDCACHE_ADMIN_KEY_FILE";
/// `serve`: a separate admin listener, `HOST:PORT` or `unix:PATH`
/// (`--admin-listen`).
pub const SANDCACHE_ADMIN_LISTEN: &str = "SANDCACHE_ADMIN_LISTEN";
/// `serve`: `false` serves the admin routes only on the admin listener
/// (`--admin-on-main`; default true).
pub const SANDCACHE_ADMIN_ON_MAIN: &str = "SANDCACHE_ADMIN_ON_MAIN";
/// `serve`: a listener of its own for `/metrics` (`--metrics-listen`).
pub const SANDCACHE_METRICS_LISTEN: &str = "SANDCACHE_METRICS_LISTEN";
/// `serve`: `true` starts with no admin token although the admin API
/// listens beyond loopback (`--admin-without-token`).
pub const SANDCACHE_ADMIN_WITHOUT_TOKEN: &str = "SANDCACHE_ADMIN_WITHOUT_TOKEN";
/// `serve`: who the worker runs as (`USER`, `UID` or `UID:GID`); as root the
/// default is `10001:10001`, and `root` must be given explicitly.
pub const SANDCACHE_WORKER_USER: &str = "SANDCACHE_WORKER_USER";
/// `serve`: the runner's own directory (cache lock, state, index; the
/// worker's HOME and TMPDIR). Default `/var/lib/sandcache` as root.
pub const SANDCACHE_STATE_DIR: &str = "SANDCACHE_STATE_DIR";
/// `serve`: the legacy build cache (seed `daemon/cache.ts`), read from the
/// runner's env or a deploy's envs; the step is skipped unless the two keys
/// and `DENO_DIR_RUN` are set. Never passed to the worker.
pub use sandcache_runner::legacy_vars::ALL as LEGACY_CACHE_VARS;
