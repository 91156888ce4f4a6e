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
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

pub use deploy::{BadRequest, DeployRequest, site_from_repo};
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

/// The daemon's routes, over a runner.
pub fn app(runner: Arc<Runner>) -> Router {
    let admin = Router::new()
        .route("/sandbox/status", get(status))
        .route("/sandbox/deploy", post(deploy).delete(undeploy))
        .route("/sandbox/cache/snapshot", post(snapshot))
        .route_layer(middleware::from_fn_with_state(runner.clone(), require_token));
    Router::new()
        .route("/_healthcheck", get(healthcheck))
        .route("/deco/_liveness", get(|| async { "OK" }))
        .route("/metrics", get(metrics))
        .merge(admin)
        .fallback(proxy)
        .with_state(runner)
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
    let addr = listener.local_addr()?;
    tracing::info!(target: "sandbox", "listening on http://{addr}");
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
    let app = app(runner.clone()).into_make_service_with_connect_info::<SocketAddr>();
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
    tracing::info!(target: "sandbox", "stopped");
    Ok(())
}

/// The admin API (`/sandbox/*`) is never the worker's: with a token, the
/// token is required; without one, a connection from the worker is refused
/// (its socket's owner, looked up in `/proc/net/tcp`).
async fn require_token(State(runner): State<Arc<Runner>>, headers: HeaderMap, req: Request, next: Next) -> Response {
    if let Some(token) = &runner.cfg.admin_token {
        let given =
            headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
            return json_error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        }
    } else if let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>().copied() {
        let r = runner.clone();
        let from_worker = tokio::task::spawn_blocking(move || r.is_worker_peer(peer)).await.unwrap_or(true);
        if from_worker {
            tracing::warn!(target: "sandbox", "refused {} {} from the worker ({peer})", req.method(), req.uri().path());
            return json_error(StatusCode::FORBIDDEN, "the admin API is not open to the worker");
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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

async fn proxy(State(runner): State<Arc<Runner>>, req: Request<Body>) -> Response {
    // `OPTIONS *` asks about the server, not a resource: the runner answers.
    if req.method() == axum::http::Method::OPTIONS && req.uri() == "*" {
        return (StatusCode::NO_CONTENT, [(header::ALLOW, "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")])
            .into_response();
    }
    match runner.worker_target().await {
        Ok((addr, deployment)) => {
            let started = std::time::Instant::now();
            let (resp, from_worker) = proxy::forward(&runner.client, addr, req, runner.cfg.proxy_timeout).await;
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
