//! A fault-injecting HTTP/1.1 proxy between sandcache and a real S3 server.
//!
//! The proxy reads each request, forwards it to the server (Garage in the
//! tests) and writes the answer back, byte for byte. A [`Plan`] turns one
//! transfer, or every transfer from one on, into a failure: a stall with the
//! connection held open, a reset (RST), a short body, a flipped byte, an
//! error status (500, 503 SlowDown, 403), added latency, or a Content-Length
//! that lies. Transfers are the requests that carry the data: object `GET`s
//! (not listings) for downloads, `PUT`s for uploads, counted from 0 in the
//! order they arrive; body faults hit the start, the middle or the end of
//! that transfer's bytes.
//!
//! The responses are written by hand on purpose: a well-behaved HTTP library
//! refuses to send a wrong Content-Length or to stop half-way, and those are
//! exactly the faults to inject.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The bytes up to the point are sent (or read), then nothing, with the
    /// connection held open.
    Stall,
    /// The connection is reset (RST) at the point.
    Reset,
    /// The body ends at the point. A download's Content-Length agrees with
    /// the short body; an upload reaches the server cut short.
    Truncate,
    /// The byte at the point is flipped.
    Flip,
    /// The server's answer is replaced by this status and an S3 error body:
    /// 500 InternalError, 503 SlowDown, 403 AccessDenied.
    Status(u16),
    /// The transfer pauses this long at the point.
    Latency(Duration),
    /// The response's Content-Length claims more than is sent; the connection
    /// closes after the body.
    WrongLength,
}

impl Fault {
    /// Every fault, for a matrix.
    pub const ALL: [Fault; 9] = [
        Fault::Stall,
        Fault::Reset,
        Fault::Truncate,
        Fault::Flip,
        Fault::Status(500),
        Fault::Status(503),
        Fault::Status(403),
        Fault::Latency(Duration::from_millis(300)),
        Fault::WrongLength,
    ];

    pub fn name(&self) -> String {
        match self {
            Fault::Stall => "stall".into(),
            Fault::Reset => "reset".into(),
            Fault::Truncate => "truncate".into(),
            Fault::Flip => "flip".into(),
            Fault::Status(503) => "503-slowdown".into(),
            Fault::Status(code) => code.to_string(),
            Fault::Latency(d) => format!("latency-{}ms", d.as_millis()),
            Fault::WrongLength => "wrong-length".into(),
        }
    }
}

/// Where in the transfer: its first byte, its middle, or its last byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    Start,
    Middle,
    End,
}

impl At {
    pub const ALL: [At; 3] = [At::Start, At::Middle, At::End];

    /// The byte offset in a body of `len` bytes.
    fn offset(self, len: usize) -> usize {
        match self {
            At::Start => 0,
            At::Middle => len / 2,
            At::End => len.saturating_sub(1),
        }
    }

    /// Which of `n` transfers.
    pub fn index(self, n: usize) -> usize {
        match self {
            At::Start => 0,
            At::Middle => n / 2,
            At::End => n.saturating_sub(1),
        }
    }
}

/// Which requests are transfers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Object `GET`s: faults hit the response body.
    Download,
    /// `PUT`s (whole objects and multipart parts): faults hit the request
    /// body on its way to the server.
    Upload,
    /// Object `GET`s with a `Range` header only (a native restore reads
    /// packs it did not prefetch whole by range), counted on their own:
    /// faults hit the response body.
    RangedDownload,
}

/// A fault to inject.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub fault: Fault,
    pub at: At,
    pub direction: Direction,
    /// The transfer (counted from 0) that fails.
    pub index: usize,
    /// Every later transfer fails too (a server that stays broken), not just
    /// that one (a blip that a retry gets past).
    pub sticky: bool,
}

struct Shared {
    upstream: String,
    plan: Mutex<Option<Plan>>,
    downloads: AtomicUsize,
    ranged: AtomicUsize,
    uploads: AtomicUsize,
    injected: AtomicUsize,
    /// Every write request seen: method, path, and its `If-None-Match`.
    writes: Mutex<Vec<Write>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// A write request the proxy saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// `PUT` or `POST` (multipart creation and completion).
    pub method: String,
    /// The request target, query included (`/bucket/key?uploads`).
    pub path: String,
    pub if_none_match: Option<String>,
}

/// The proxy. Dropping it leaves the listener running until the runtime
/// ends, as the test servers in [`crate::net`] do.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (`http://host:port`), passing everything
    /// through until a plan is set.
    pub async fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_owned(),
            plan: Mutex::new(None),
            downloads: AtomicUsize::new(0),
            ranged: AtomicUsize::new(0),
            uploads: AtomicUsize::new(0),
            injected: AtomicUsize::new(0),
            writes: Mutex::new(Vec::new()),
            client: Client::builder(TokioExecutor::new()).build_http(),
        });
        let s = shared.clone();
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else { return };
                let _ = sock.set_nodelay(true);
                tokio::spawn(serve(sock, s.clone()));
            }
        });
        FaultProxy { addr, shared }
    }

    /// The endpoint to give the client: `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets (or clears) the plan and restarts the transfer counts.
    pub fn set(&self, plan: Option<Plan>) {
        *self.shared.plan.lock().unwrap() = plan;
        self.shared.downloads.store(0, Ordering::SeqCst);
        self.shared.ranged.store(0, Ordering::SeqCst);
        self.shared.uploads.store(0, Ordering::SeqCst);
        self.shared.injected.store(0, Ordering::SeqCst);
    }

    /// Transfers seen since the last [`FaultProxy::set`].
    pub fn transfers(&self, direction: Direction) -> usize {
        match direction {
            Direction::Download => self.shared.downloads.load(Ordering::SeqCst),
            Direction::RangedDownload => self.shared.ranged.load(Ordering::SeqCst),
            Direction::Upload => self.shared.uploads.load(Ordering::SeqCst),
        }
    }

    /// The write requests seen since the proxy started, taken out.
    pub fn take_writes(&self) -> Vec<Write> {
        std::mem::take(&mut *self.shared.writes.lock().unwrap())
    }

    /// Faults injected since the last [`FaultProxy::set`].
    pub fn injected(&self) -> usize {
        self.shared.injected.load(Ordering::SeqCst)
    }
}

/// One parsed request.
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }
}

async fn serve(mut sock: TcpStream, shared: Arc<Shared>) {
    let mut buf = BytesMut::with_capacity(64 << 10);
    loop {
        // The request head.
        let (method, path, headers, head_len) = loop {
            let mut parsed = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut parsed);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let headers = req.headers.iter().map(|h| (h.name.to_owned(), h.value.to_vec())).collect::<Vec<_>>();
                    break (req.method.unwrap_or("").to_owned(), req.path.unwrap_or("/").to_owned(), headers, n);
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return,
            }
            match sock.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let _ = buf.split_to(head_len);
        let mut req = Request { method, path, headers, body: Vec::new() };
        if matches!(req.method.as_str(), "PUT" | "POST") {
            let if_none_match = req.header("if-none-match").map(|v| String::from_utf8_lossy(v).into_owned());
            shared.writes.lock().unwrap().push(Write {
                method: req.method.clone(),
                path: req.path.clone(),
                if_none_match,
            });
        }
        if req.header("transfer-encoding").is_some() {
            let _ = sock.write_all(&response(501, &[], b"chunked uploads are not supported by the fault proxy")).await;
            return;
        }
        let len: usize =
            req.header("content-length").and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok()).unwrap_or(0);

        // Is it a transfer, and does the plan hit it?
        let direction = match req.method.as_str() {
            "GET" if !req.path.contains("list-type=") => Some(Direction::Download),
            "PUT" => Some(Direction::Upload),
            _ => None,
        };
        let plan = *shared.plan.lock().unwrap();
        let ranged = direction == Some(Direction::Download) && req.header("range").is_some();
        let fault = direction.and_then(|d| {
            let counter = match d {
                Direction::Download | Direction::RangedDownload => &shared.downloads,
                Direction::Upload => &shared.uploads,
            };
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let r = if ranged { Some(shared.ranged.fetch_add(1, Ordering::SeqCst)) } else { None };
            plan.filter(|p| match (p.direction, r) {
                (Direction::RangedDownload, Some(r)) => r == p.index || (p.sticky && r > p.index),
                (Direction::RangedDownload, None) => false,
                (pd, _) => pd == d && (n == p.index || (p.sticky && n > p.index)),
            })
        });
        if fault.is_some() {
            shared.injected.fetch_add(1, Ordering::SeqCst);
        }
        let upload_fault = fault.filter(|p| p.direction == Direction::Upload);
        let download_fault = fault.filter(|p| p.direction != Direction::Upload);

        // The request body, with upload faults on the way in.
        let cut = upload_fault.map(|p| p.at.offset(len));
        while req.body.len() < len {
            if let (Some(p), Some(at)) = (upload_fault, cut) {
                if req.body.len() + buf.len() >= at {
                    match p.fault {
                        Fault::Stall => return hold(sock).await,
                        Fault::Reset => return reset(sock),
                        _ => {}
                    }
                }
            }
            if buf.is_empty() {
                match sock.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
            let take = buf.len().min(len - req.body.len());
            req.body.extend_from_slice(&buf.split_to(take));
        }
        if let (Some(p), Some(at)) = (upload_fault, cut) {
            match p.fault {
                Fault::Stall => return hold(sock).await,
                Fault::Reset => return reset(sock),
                Fault::Truncate => req.body.truncate(at),
                Fault::Flip if !req.body.is_empty() => req.body[at] ^= 0x20,
                Fault::Latency(d) => tokio::time::sleep(d).await,
                _ => {}
            }
        }
        if let Some(Fault::Status(code)) = fault.map(|p| p.fault) {
            if sock.write_all(&s3_error(code)).await.is_err() {
                return;
            }
            continue;
        }
        if let Some(Plan { fault: Fault::Latency(d), at: At::Start, .. }) = download_fault {
            tokio::time::sleep(d).await;
        }

        // Forward.
        let (status, headers, body) = match forward(&shared, &req).await {
            Ok(r) => r,
            Err(why) => {
                let _ = sock.write_all(&response(502, &[], why.as_bytes())).await;
                return;
            }
        };
        let head_only = req.method == "HEAD" || status == 204 || status == 304;
        let mut body = body.to_vec();
        let mut claimed = body.len();
        let mut close_after = false;
        let mut stop: Option<(usize, Fault)> = None;
        if let Some(p) = download_fault.filter(|_| !head_only) {
            let at = p.at.offset(body.len());
            match p.fault {
                Fault::Stall | Fault::Reset => stop = Some((at, p.fault)),
                Fault::Latency(d) if p.at != At::Start => stop = Some((at, Fault::Latency(d))),
                Fault::Truncate => {
                    body.truncate(at);
                    claimed = at;
                }
                Fault::Flip if !body.is_empty() => body[at] ^= 0x20,
                Fault::WrongLength => {
                    claimed = body.len() + 4096;
                    close_after = true;
                }
                _ => {}
            }
        }
        if let Some(Plan { fault: Fault::WrongLength, .. }) = upload_fault {
            claimed = body.len() + 4096;
            close_after = true;
        }
        let mut out = head(status, &headers, if head_only { None } else { Some(claimed) });
        if head_only {
            if sock.write_all(&out).await.is_err() {
                return;
            }
            continue;
        }
        match stop {
            Some((at, fault)) => {
                out.extend_from_slice(&body[..at]);
                if sock.write_all(&out).await.is_err() {
                    return;
                }
                match fault {
                    Fault::Stall => return hold(sock).await,
                    Fault::Reset => return reset(sock),
                    Fault::Latency(d) => {
                        tokio::time::sleep(d).await;
                        if sock.write_all(&body[at..]).await.is_err() {
                            return;
                        }
                    }
                    _ => unreachable!("only stall, reset and latency stop a body"),
                }
            }
            None => {
                out.extend_from_slice(&body);
                if sock.write_all(&out).await.is_err() {
                    return;
                }
            }
        }
        if close_after {
            let _ = sock.shutdown().await;
            return;
        }
    }
}

/// Holds a connection open and silent, reading nothing more, so that an
/// upload's sender blocks once the buffers fill. The client gives up first.
async fn hold(sock: TcpStream) {
    tokio::time::sleep(Duration::from_secs(600)).await;
    drop(sock);
}

/// Drops a connection with a RST rather than a FIN.
fn reset(sock: TcpStream) {
    let _ = sock.set_zero_linger();
    drop(sock);
}

async fn forward(shared: &Shared, req: &Request) -> Result<(u16, Vec<(String, Vec<u8>)>, Bytes), String> {
    let uri = format!("{}{}", shared.upstream, req.path);
    let mut builder = hyper::Request::builder().method(req.method.as_str()).uri(uri);
    for (name, value) in &req.headers {
        // The body may have been cut: hyper sets the length of what is sent.
        if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("connection") {
            continue;
        }
        builder = builder.header(name.as_str(), value.as_slice());
    }
    let request = builder.body(Full::new(Bytes::from(req.body.clone()))).map_err(|e| e.to_string())?;
    let resp = shared.client.request(request).await.map_err(|e| format!("upstream: {e}"))?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .filter(|(n, _)| !matches!(n.as_str(), "transfer-encoding" | "connection" | "keep-alive"))
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect();
    let body = resp.into_body().collect().await.map_err(|e| format!("upstream body: {e}"))?.to_bytes();
    Ok((status, headers, body))
}

/// A response head. With `length`, its Content-Length replaces the
/// server's; without (HEAD), the server's stays.
fn head(status: u16, headers: &[(String, Vec<u8>)], length: Option<usize>) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status)).into_bytes();
    for (name, value) in headers {
        if length.is_some() && name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(n) = length {
        out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn response(status: u16, headers: &[(String, Vec<u8>)], body: &[u8]) -> Vec<u8> {
    let mut out = head(status, headers, Some(body.len()));
    out.extend_from_slice(body);
    out
}

fn s3_error(status: u16) -> Vec<u8> {
    let (code, message) = match status {
        503 => ("SlowDown", "Please reduce your request rate."),
        403 => ("AccessDenied", "Access Denied"),
        _ => ("InternalError", "We encountered an internal error. Please try again."),
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message><RequestId>fault-proxy</RequestId></Error>"
    );
    response(status, &[("content-type".into(), b"application/xml".to_vec())], body.as_bytes())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        206 => "Partial Content",
        304 => "Not Modified",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
