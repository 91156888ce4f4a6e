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

pub mod admin;
mod deploy;
pub mod isolation;
mod legacy;
mod metrics;
mod proxy;
mod runner;
mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

pub use admin::AdminAuth;
pub use deploy::{BadRequest, DeployRequest, site_from_repo};
pub use isolation::Peer;
pub use legacy::{LegacyCache, vars as legacy_vars};
pub use metrics::Metrics;
pub use runner::{DeployError, Runner, RunnerConfig, redact_url};
pub use worker::{SCRUBBED, WorkerState};

/// The seed's error shape: `{"error": "..."}`.
pub(crate) fn json_error(status: StatusCode, msg: &str) -> Response {
    (status, axum::Json(json!({ "error": msg }))).into_response()
}

/// An error with the seed's message and, for operators, what happened.
fn json_error_detail(status: StatusCode, msg: &str, detail: &str) -> Response {
    (status, axum::Json(json!({ "error": msg, "detail": detail }))).into_response()
}

/// The admin routes, each behind [`admin::guard`].
fn admin_routes(runner: &Arc<Runner>) -> Router<Arc<Runner>> {
    Router::new()
        .route("/sandbox/status", get(status))
        .route("/sandbox/deploy", post(deploy).delete(undeploy))
        .route("/sandbox/cache/snapshot", post(snapshot))
        .route_layer(middleware::from_fn_with_state(runner.clone(), require_admin))
}

fn probes() -> Router<Arc<Runner>> {
    Router::new().route("/_healthcheck", get(healthcheck)).route("/deco/_liveness", get(|| async { "OK" }))
}

/// The main port's routes: the probes, the admin routes and `/metrics`
/// (unless moved to listeners of their own), and the site. Every path under
/// `/sandbox`, however written, is the runner's: an unknown one is the
/// runner's 404, never the worker's.
pub fn app(runner: Arc<Runner>) -> Router {
    let mut router = probes();
    if runner.cfg.admin_on_main {
        router = router.merge(admin_routes(&runner));
    }
    if runner.cfg.metrics_on_main {
        router = router
            .route("/metrics", get(metrics).route_layer(middleware::from_fn_with_state(runner.clone(), require_admin)));
    }
    router.fallback(site_or_admin).with_state(runner)
}

/// A separate admin listener's routes (a port or a unix socket the proxy
/// never shares): the probes, the admin routes and `/metrics`, all but the
/// probes behind the admin check; nothing is proxied.
pub fn admin_app(runner: Arc<Runner>) -> Router {
    probes()
        .merge(admin_routes(&runner))
        .route("/metrics", get(metrics).route_layer(middleware::from_fn_with_state(runner.clone(), require_admin)))
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "no such route on the admin listener") })
        .with_state(runner)
}

/// A metrics listener's one route, `/metrics`, open to scrapers on other
/// hosts and to local peers, not to the worker.
pub fn metrics_app(runner: Arc<Runner>) -> Router {
    Router::new()
        .route("/metrics", get(metrics).route_layer(middleware::from_fn_with_state(runner.clone(), not_the_worker)))
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "only /metrics is served here") })
        .with_state(runner)
}

/// Listeners besides the main port, each serving its own routes.
#[derive(Debug, Default)]
pub struct ExtraListeners {
    /// [`admin_app`], on a TCP port or a unix socket.
    pub admin: Option<AdminListener>,
    /// [`metrics_app`].
    pub metrics: Option<tokio::net::TcpListener>,
}

#[derive(Debug)]
pub enum AdminListener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Peer {
        let remote = *stream.remote_addr();
        // An accepted socket has a local address; if the kernel will not
        // say it, no client socket can match it and the peer is refused.
        let local = stream.io().local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        Peer::Tcp { local, remote }
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::UnixListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::UnixListener>) -> Peer {
        let cred = stream.io().peer_cred().ok();
        Peer::Unix { uid: cred.map(|c| c.uid()), pid: cred.and_then(|c| c.pid()) }
    }
}

/// Serves until `shutdown` resolves, then stops accepting, undeploys
/// (stopping the worker, which ends its open streams, and taking the final
/// snapshot) and returns within `stop_grace + final_snapshot_timeout`,
/// whatever clients still hold open.
pub async fn serve(
    listener: tokio::net::TcpListener,
    runner: Arc<Runner>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, ExtraListeners::default(), runner, shutdown).await
}

/// [`serve`], with an admin listener and a metrics listener beside the
/// main port; they stop when it does.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    extra: ExtraListeners,
    runner: Arc<Runner>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(target: "sandbox", "listening on http://{addr}");
    let mut side = tokio::task::JoinSet::new();
    match extra.admin {
        Some(AdminListener::Tcp(l)) => {
            tracing::info!(target: "sandbox", "admin API on http://{}", l.local_addr()?);
            let app = admin_app(runner.clone()).into_make_service_with_connect_info::<Peer>();
            side.spawn(async move { axum::serve(l, app).await });
        }
        Some(AdminListener::Unix(l)) => {
            let path = l.local_addr()?.as_pathname().map(|p| p.display().to_string()).unwrap_or_default();
            tracing::info!(target: "sandbox", "admin API on unix socket {path}");
            let app = admin_app(runner.clone()).into_make_service_with_connect_info::<Peer>();
            side.spawn(async move { axum::serve(l, app).await });
        }
        None => {}
    }
    if let Some(l) = extra.metrics {
        tracing::info!(target: "sandbox", "metrics on http://{}/metrics", l.local_addr()?);
        let app = metrics_app(runner.clone()).into_make_service_with_connect_info::<Peer>();
        side.spawn(async move { axum::serve(l, app).await });
    }
    for (warn, line) in runner.startup_report() {
        if warn {
            tracing::warn!(target: "sandbox", "{line}");
        } else {
            tracing::info!(target: "sandbox", "{line}");
        }
    }
    if runner.cfg.sweep_descendants {
        // A subreaper (or PID 1) adopts every orphan below it: collect the
        // exited ones, so none stays a zombie.
        tokio::spawn(async {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                let n = tokio::task::spawn_blocking(isolation::reap_orphans).await.unwrap_or(0);
                if n > 0 {
                    tracing::debug!(target: "sandbox", "reaped {n} orphaned processes");
                }
            }
        });
    }
    let app = app(runner.clone()).into_make_service_with_connect_info::<Peer>();
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stopping_tx.send(());
    });
    let mut server = std::pin::pin!(server.into_future());
    // The server ends on its own only after the shutdown began (with no
    // connection open, at once) or on an error; either way, undeploy.
    let mut drained = false;
    tokio::select! {
        biased;
        _ = stopping_rx => {}
        r = &mut server => {
            drained = true;
            r?;
        }
    }
    tracing::info!(target: "sandbox", "shutting down: no new connections; stopping the worker, then the final snapshot");
    // Undeploy while the server drains: stopping the worker ends the
    // streams it serves. The undeploy has its own bounds (grace, final
    // snapshot); connections still open after it are dropped.
    let mut undeploy = std::pin::pin!(runner.shutdown());
    loop {
        tokio::select! {
            _ = &mut undeploy => break,
            r = &mut server, if !drained => {
                drained = true;
                r?;
            }
        }
    }
    if !drained {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), &mut server).await;
    }
    side.abort_all();
    tracing::info!(target: "sandbox", "stopped");
    Ok(())
}

/// The admin check ([`admin::guard`]) before an admin route.
async fn require_admin(State(runner): State<Arc<Runner>>, req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<ConnectInfo<Peer>>().map(|c| c.0);
    let what = format!("{} {}", req.method(), req.uri().path());
    match admin::guard(&runner, peer, req.headers(), &what).await {
        Ok(()) => next.run(req).await,
        Err(refused) => refused,
    }
}

/// A metrics listener's check: anyone but the worker.
async fn not_the_worker(State(runner): State<Arc<Runner>>, req: Request, next: Next) -> Response {
    if let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<Peer>>().copied() {
        let attribution = tokio::task::spawn_blocking(move || isolation::peer::attribute(&peer)).await;
        if let Ok(isolation::Attribution::Local { uid, inode }) = attribution {
            if isolation::peer::is_worker_peer(runner.worker_user(), &peer, uid, inode) {
                tracing::warn!(target: "sandbox", "refused /metrics to the worker ({peer})");
                return json_error(StatusCode::FORBIDDEN, "not open to the worker");
            }
        }
    }
    next.run(req).await
}

/// The version, as text (the seed's `denoJSON.version`).
async fn healthcheck() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")],
        env!("CARGO_PKG_VERSION"),
    )
        .into_response()
}

async fn metrics(State(runner): State<Arc<Runner>>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], runner.metrics().encode())
        .into_response()
}

async fn status(State(runner): State<Arc<Runner>>) -> Response {
    axum::Json(runner.status()).into_response()
}

async fn deploy(
    State(runner): State<Arc<Runner>>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    // Too large for the server's own limit, or for ours: the JSON shape
    // either way, with 413.
    let too_large = || format!("body too large (over {} bytes)", deploy::MAX_BODY);
    let body = match body {
        Ok(b) if b.len() > deploy::MAX_BODY => return json_error(StatusCode::PAYLOAD_TOO_LARGE, &too_large()),
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return json_error(StatusCode::PAYLOAD_TOO_LARGE, &too_large());
        }
        Err(e) => return json_error(e.status(), &e.body_text()),
    };
    let req = match DeployRequest::parse(&body) {
        Ok(r) => r,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &e.0),
    };
    match runner.deploy(req).await {
        Ok(site) => axum::Json(json!({ "ok": true, "site": site })).into_response(),
        Err(e) => deploy_error(e, "Deploy failed"),
    }
}

fn deploy_error(e: DeployError, failed: &str) -> Response {
    match e {
        DeployError::Conflict(msg) => json_error(StatusCode::CONFLICT, &msg),
        DeployError::Cancelled => json_error(StatusCode::CONFLICT, "Deploy cancelled"),
        DeployError::BadInput(msg) => json_error(StatusCode::BAD_REQUEST, &msg),
        DeployError::Failed(detail) => json_error_detail(StatusCode::INTERNAL_SERVER_ERROR, failed, &detail),
    }
}

async fn undeploy(State(runner): State<Arc<Runner>>) -> Response {
    match runner.undeploy().await {
        Ok(_) => axum::Json(json!({ "ok": true })).into_response(),
        Err(e) => deploy_error(e, "Undeploy failed"),
    }
}

async fn snapshot(State(runner): State<Arc<Runner>>) -> Response {
    match runner.request_snapshot() {
        Ok(true) => (StatusCode::ACCEPTED, axum::Json(json!({ "ok": true, "started": true }))).into_response(),
        Ok(false) => {
            (StatusCode::ACCEPTED, axum::Json(json!({ "ok": true, "started": false, "running": true }))).into_response()
        }
        Err(e) => deploy_error(e, "Snapshot failed"),
    }
}

/// Everything no route took: a path under `/sandbox` is the runner's own
/// 404 (after the admin check, so it reveals nothing); anything else goes
/// to the worker, without the admin credential.
async fn site_or_admin(State(runner): State<Arc<Runner>>, req: Request<Body>) -> Response {
    if !admin::namespace::is_admin(req.uri().path()) {
        return proxy(runner, req).await;
    }
    if runner.cfg.admin_on_main {
        let peer = req.extensions().get::<ConnectInfo<Peer>>().map(|c| c.0);
        let what = format!("{} {}", req.method(), req.uri().path());
        if let Err(refused) = admin::guard(&runner, peer, req.headers(), &what).await {
            return refused;
        }
    }
    json_error(StatusCode::NOT_FOUND, "no such admin route (the /sandbox paths are the runner's, never the site's)")
}

async fn proxy(runner: Arc<Runner>, req: Request<Body>) -> Response {
    // `OPTIONS *` asks about the server, not a resource: the runner answers.
    if req.method() == axum::http::Method::OPTIONS && req.uri() == "*" {
        return (StatusCode::NO_CONTENT, [(header::ALLOW, "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")])
            .into_response();
    }
    match runner.worker_target().await {
        Ok((addr, deployment)) => {
            let started = std::time::Instant::now();
            let (resp, from_worker) =
                proxy::forward(&runner.client, addr, req, runner.cfg.proxy_timeout, &runner.cfg.admin).await;
            runner.metrics.proxied(resp.status().as_u16(), from_worker.then(|| started.elapsed()));
            if from_worker {
                runner.first_response(&deployment, resp.status().as_u16());
            }
            resp
        }
        Err((status, msg)) if status == StatusCode::SERVICE_UNAVAILABLE && msg == "worker starting" => {
            let mut resp = json_error(status, msg);
            resp.headers_mut().insert(header::RETRY_AFTER, axum::http::HeaderValue::from_static("5"));
            resp
        }
        Err((status, msg)) => json_error(status, msg),
    }
}
