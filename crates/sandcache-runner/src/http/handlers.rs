//! The handlers: the probes, `/metrics`, the admin routes, and everything
//! else, which is the site's (proxied to the worker) unless it is under
//! `/sandbox`.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::{json_error, json_error_detail};
use crate::admin;
use crate::deploy::{self, DeployRequest};
use crate::error::DeployError;
use crate::isolation::Peer;
use crate::proxy;
use crate::runner::Runner;

/// The version, as text (the seed's `denoJSON.version`).
pub(super) async fn healthcheck() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")],
        env!("CARGO_PKG_VERSION"),
    )
        .into_response()
}

pub(super) async fn metrics(State(runner): State<Arc<Runner>>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], runner.metrics().encode())
        .into_response()
}

pub(super) async fn status(State(runner): State<Arc<Runner>>) -> Response {
    axum::Json(runner.status()).into_response()
}

pub(super) async fn deploy(
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

pub(super) async fn undeploy(State(runner): State<Arc<Runner>>) -> Response {
    match runner.undeploy().await {
        Ok(_) => axum::Json(json!({ "ok": true })).into_response(),
        Err(e) => deploy_error(e, "Undeploy failed"),
    }
}

pub(super) async fn snapshot(State(runner): State<Arc<Runner>>) -> Response {
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
pub(super) async fn site_or_admin(State(runner): State<Arc<Runner>>, req: Request<Body>) -> Response {
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
