//! Reverse proxy to the worker, bodies streamed both ways.

use axum::body::Body;
use axum::http::{HeaderName, Request, Response, StatusCode, Uri, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub type HttpClient = Client<HttpConnector, Body>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

fn strip_hop_by_hop(headers: &mut axum::http::HeaderMap) {
    for h in &HOP_BY_HOP {
        headers.remove(h);
    }
    headers.remove("keep-alive");
    headers.remove(header::TRANSFER_ENCODING);
}

/// Forwards `req` to the worker on `port`. A worker that refuses the
/// connection gets a 502 with a JSON reason.
pub async fn forward(client: &HttpClient, port: u16, mut req: Request<Body>) -> Response<Body> {
    let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let uri: Uri = match format!("http://127.0.0.1:{port}{path}").parse() {
        Ok(u) => u,
        Err(e) => return crate::json_error(StatusCode::BAD_REQUEST, &format!("bad request URI: {e}")),
    };
    *req.uri_mut() = uri;
    strip_hop_by_hop(req.headers_mut());
    match client.request(req).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, Body::new(body))
        }
        Err(e) => {
            tracing::warn!(target: "sandbox", "proxy to worker failed: {e}");
            crate::json_error(StatusCode::BAD_GATEWAY, "the worker did not answer")
        }
    }
}
