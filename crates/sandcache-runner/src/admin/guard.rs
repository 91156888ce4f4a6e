//! The check every admin request passes: the credential, then the peer.

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::auth::Presented;
use crate::isolation::peer::is_worker_peer;
use crate::isolation::{Attribution, Peer};
use crate::runner::Runner;

/// The check every admin request passes, `what` naming it for the log:
/// the credential when one is configured (401), then the peer (403): never
/// the worker, never a local peer whose socket cannot be named exactly,
/// and a peer on another host only with a credential or
/// `remote_without_token`. `peer` is `None` only for a request handed to
/// the router in process (no socket at all).
pub(crate) async fn guard(
    runner: &Arc<Runner>,
    peer: Option<Peer>,
    headers: &HeaderMap,
    what: &str,
) -> Result<(), Response> {
    let auth = &runner.cfg.admin;
    let credential = match auth.presented(headers) {
        Presented::Valid => true,
        Presented::Missing if !auth.requires_credential() => false,
        Presented::Missing => return Err(refuse(StatusCode::UNAUTHORIZED, "missing bearer token", what, peer, "")),
        Presented::Wrong(why) => return Err(refuse(StatusCode::UNAUTHORIZED, why, what, peer, "")),
    };
    let Some(peer) = peer else { return Ok(()) };
    let attribution = tokio::task::spawn_blocking(move || crate::isolation::peer::attribute(&peer))
        .await
        .unwrap_or_else(|e| Attribution::Unattributable(format!("the lookup failed: {e}")));
    match attribution {
        Attribution::Local { uid, inode } if is_worker_peer(runner.worker_user(), &peer, uid, inode) => {
            Err(refuse(StatusCode::FORBIDDEN, "the admin API is not open to the worker", what, Some(peer), ""))
        }
        Attribution::Local { .. } => Ok(()),
        Attribution::Remote if credential || auth.remote_without_token => Ok(()),
        Attribution::Remote => {
            Err(refuse(StatusCode::FORBIDDEN, "the admin API needs a token from another host", what, Some(peer), ""))
        }
        Attribution::Unattributable(why) => {
            Err(refuse(StatusCode::FORBIDDEN, "the admin API cannot tell who is calling", what, Some(peer), &why))
        }
    }
}

fn refuse(status: StatusCode, msg: &str, what: &str, peer: Option<Peer>, why: &str) -> Response {
    let from = peer.map_or_else(|| "in process".to_owned(), |p| p.to_string());
    let why = if why.is_empty() { String::new() } else { format!(" ({why})") };
    tracing::warn!(target: "sandbox", "refused {what} from {from}: {msg}{why}");
    crate::http::json_error(status, msg)
}
