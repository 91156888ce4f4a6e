//! `sandcache serve`: the sandbox runner daemon.
//!
//! It starts with no site deployed. `POST /sandbox/deploy` assigns one: the
//! runner restores the site's cache (awaited, bounded), clones the repo,
//! restores the legacy build cache, starts the worker with a scrubbed
//! environment, and once the worker is ready and the cache dir has settled,
//! snapshots the cache in the background. Other requests are proxied to the
//! worker. The API is the seed's (`daemon/sandbox.ts`).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use sandcache_runner::{Runner, RunnerConfig};
//! let runner = Runner::new(RunnerConfig::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! sandcache_runner::serve(listener, runner, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```
//!
//! | file | holds |
//! |---|---|
//! | `server.rs` | the accept loops ([`serve`], [`serve_with`]): the site's, admin and metrics listeners |
//! | `http/` | each listener's routes, their handlers, the seed's error shape |
//! | `admin/` | which requests are the runner's, who may make them, the admin credential |
//! | `proxy.rs` | the reverse proxy to the worker, credentials stripped |
//! | `runner.rs` | [`Runner`] and its state: the phase, the deployment, the history, the pre-warm |
//! | `lifecycle.rs` | deploy (restore, clone, legacy cache, worker, snapshot) and undeploy |
//! | `snapshots.rs` | the deps-ready snapshot, one on request, the final one |
//! | `prewarm.rs` | the pool-wide base restored into DENO_DIR while idle, at low priority |
//! | `clone.rs`, `legacy.rs`, `workdirs.rs` | the site's code; the seed's legacy build cache; the dirs a deploy uses |
//! | `worker.rs` | the worker process: started, logged, watched, stopped |
//! | `isolation/` | the worker kept away from the runner: its uid, peer checks, sweeps, kills |
//! | `deploy.rs`, `config.rs` | the deploy body, validated; [`RunnerConfig`] |
//! | `status.rs`, `metrics.rs`, `error.rs` | [`Status`], the API's contract; Prometheus [`Metrics`]; [`DeployError`] |

pub mod admin;
mod clone;
mod config;
mod deploy;
mod error;
mod http;
pub mod isolation;
mod legacy;
mod lifecycle;
mod metrics;
mod prewarm;
mod proxy;
mod runner;
mod server;
mod snapshots;
mod status;
mod workdirs;
mod worker;

pub use admin::AdminAuth;
pub use clone::redact_url;
pub use config::RunnerConfig;
pub use deploy::{BadRequest, DeployRequest, site_from_repo};
pub use error::DeployError;
pub use http::{admin_app, app, metrics_app};
pub use isolation::Peer;
pub use legacy::{LegacyCache, vars as legacy_vars};
pub use metrics::Metrics;
pub use runner::PrewarmStatus;
pub use runner::{LastDeploy, Runner};
pub use server::{AdminListener, ExtraListeners, serve, serve_with};
pub use status::{CacheStatus, Status, Timings};
pub use worker::{SCRUBBED, WorkerState};
