//! Which routes each listener serves, and the checks in front of them.

use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};

use super::error::json_error;
use super::handlers::{deploy, healthcheck, metrics, site_or_admin, snapshot, status, undeploy};
use crate::admin;
use crate::isolation::{self, Peer};
use crate::runner::Runner;

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
