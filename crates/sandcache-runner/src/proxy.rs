//! Reverse proxy to the worker, bodies streamed both ways.

use axum::body::Body;
use axum::http::{HeaderName, Request, Response, StatusCode, Uri, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

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
    // And every header the Connection header names as hop-by-hop.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for h in named.iter().chain(&HOP_BY_HOP) {
        headers.remove(h);
    }
    headers.remove("keep-alive");
    headers.remove(header::TRANSFER_ENCODING);
}

/// Removes every `Authorization` value that carries the admin credential
/// (this runner's token, or any per-pod token); the site's own values pass
/// untouched, in order. Whatever its path, a request never reaches the
/// worker with the admin credential.
fn strip_admin_credential(headers: &mut axum::http::HeaderMap, auth: &crate::admin::AdminAuth) {
    let values: Vec<_> = headers.get_all(header::AUTHORIZATION).iter().cloned().collect();
    if !values.iter().any(|v| auth.is_credential(v)) {
        return;
    }
    headers.remove(header::AUTHORIZATION);
    for v in values.into_iter().filter(|v| !auth.is_credential(v)) {
        headers.append(header::AUTHORIZATION, v);
    }
}

/// Forwards `req` to the worker on `port`, over HTTP/1.1 whatever the
/// client spoke, with `X-Forwarded-For`, `-Proto` and `-Host`, and without
/// the admin credential. The worker
/// has `headers_timeout` to send its response headers (then 504); a body
/// that has started streams for as long as it lasts. A worker that refuses
/// the connection gets a 502. Both are JSON, and logged with the method,
/// the path and the cause.
pub async fn forward(
    client: &HttpClient,
    addr: std::net::SocketAddr,
    mut req: Request<Body>,
    headers_timeout: std::time::Duration,
    admin: &crate::admin::AdminAuth,
) -> (Response<Body>, bool) {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let path_and_query = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let port = addr.port();
    let uri: Uri = match format!("http://{addr}{path_and_query}").parse() {
        Ok(u) => u,
        Err(e) => return (crate::http::json_error(StatusCode::BAD_REQUEST, &format!("bad request URI: {e}")), false),
    };
    *req.uri_mut() = uri;
    *req.version_mut() = axum::http::Version::HTTP_11;
    // An upgrade (WebSocket): the two hop-by-hop headers that ask for it
    // go on, and the client's side of the connection is taken over once
    // the worker agrees.
    let upgrade = upgrade_protocol(req.headers());
    let client_side = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    strip_hop_by_hop(req.headers_mut());
    strip_admin_credential(req.headers_mut(), admin);
    if let Some(proto) = &upgrade {
        req.headers_mut().insert(header::CONNECTION, axum::http::HeaderValue::from_static("upgrade"));
        req.headers_mut().insert(header::UPGRADE, proto.clone());
    }
    forwarded_headers(&mut req);
    match tokio::time::timeout(headers_timeout, client.request(req)).await {
        Ok(Ok(mut resp)) if resp.status() == StatusCode::SWITCHING_PROTOCOLS && client_side.is_some() => {
            let worker_side = hyper::upgrade::on(&mut resp);
            let client_side = client_side.expect("checked");
            tokio::spawn(async move {
                match tokio::try_join!(client_side, worker_side) {
                    Ok((c, w)) => {
                        let (mut c, mut w) = (TokioIo::new(c), TokioIo::new(w));
                        let _ = tokio::io::copy_bidirectional(&mut c, &mut w).await;
                    }
                    Err(e) => tracing::warn!(target: "sandbox", %method, path, "upgrade to the worker failed: {e}"),
                }
            });
            let (parts, _) = resp.into_parts();
            (Response::from_parts(parts, Body::empty()), true)
        }
        Ok(Ok(resp)) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            (Response::from_parts(parts, Body::new(body)), true)
        }
        Ok(Err(e)) => {
            let cause = sandcache_engine::error_chain(&e);
            tracing::warn!(target: "sandbox", %method, path, port, "proxy to the worker failed: {cause}");
            (crate::http::json_error(StatusCode::BAD_GATEWAY, "the worker did not answer"), false)
        }
        Err(_) => {
            let secs = headers_timeout.as_secs_f32();
            tracing::warn!(target: "sandbox", %method, path, port, "the worker sent no response headers within {secs} s");
            (
                crate::http::json_error(
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!("the worker did not answer within {secs} s"),
                ),
                false,
            )
        }
    }
}

/// The protocol a request asks to upgrade to (`Connection: upgrade` and
/// `Upgrade: websocket`), if any.
fn upgrade_protocol(headers: &axum::http::HeaderMap) -> Option<axum::http::HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| headers.get(header::UPGRADE).cloned()).flatten()
}

/// `X-Forwarded-For` (appended to, with the client's address),
/// `X-Forwarded-Proto` and `X-Forwarded-Host`, as the worker's framework
/// expects behind a proxy.
fn forwarded_headers(req: &mut Request<Body>) {
    use axum::http::HeaderValue;
    let peer = match req.extensions().get::<axum::extract::ConnectInfo<crate::Peer>>() {
        Some(axum::extract::ConnectInfo(crate::Peer::Tcp { remote, .. })) => Some(remote.ip()),
        _ => None,
    };
    let host = req.headers().get(header::HOST).cloned();
    let headers = req.headers_mut();
    if let Some(ip) = peer {
        let value = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {ip}"),
            None => ip.to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert("x-forwarded-for", v);
        }
    }
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    if let Some(h) = host {
        if !headers.contains_key("x-forwarded-host") {
            headers.insert("x-forwarded-host", h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_admin_credential_is_removed() {
        let auth = crate::admin::AdminAuth { token: Some("fleet".into()), ..Default::default() };
        let mut h = axum::http::HeaderMap::new();
        for v in ["Basic c2l0ZTpwdw==", "Bearer fleet", "Bearer site", "sandcache-admin.v1.9.00"] {
            h.append(header::AUTHORIZATION, v.parse().unwrap());
        }
        strip_admin_credential(&mut h, &auth);
        let left: Vec<_> = h.get_all(header::AUTHORIZATION).iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(left, ["Basic c2l0ZTpwdw==", "Bearer site"]);
    }
}
