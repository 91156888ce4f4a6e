//! A plain HTTP/1.1 client for tests, async and blocking: one request a
//! connection, its target sent byte for byte as given (the admin tests send
//! paths no client library would), the headers the caller chooses, and the
//! whole answer read until the server closes.
//!
//! What goes on the wire: the request line, `host: <addr>` unless the
//! caller gave a `host`, the caller's headers in order, then
//! `content-length` and `connection: close` unless given, then the body.
//!
//! ```no_run
//! # async fn demo(addr: std::net::SocketAddr) {
//! use sandcache_testkit::http::{self, Request};
//! let req = Request::new("POST", "/sandbox/deploy").bearer(Some("token")).json(r#"{"site":"s"}"#);
//! let resp = http::send(addr, &req).await.unwrap();
//! assert_eq!(resp.status(), 200, "{}", resp.body());
//! # }
//! ```

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// One request, as it will be written.
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    target: Vec<u8>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    timeout: Option<Duration>,
}

impl Request {
    /// `method target HTTP/1.1`, the target as given, unchecked.
    pub fn new(method: &str, target: impl AsRef<[u8]>) -> Request {
        Request {
            method: method.to_owned(),
            target: target.as_ref().to_vec(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: None,
        }
    }

    /// A header, after those given before it (names may repeat).
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// `authorization: Bearer <token>`, when there is a token.
    pub fn bearer(self, token: Option<&str>) -> Request {
        match token {
            Some(t) => self.header("authorization", &format!("Bearer {t}")),
            None => self,
        }
    }

    /// The body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// `content-type: application/json` and the body (which may be empty).
    pub fn json(self, body: impl Into<Vec<u8>>) -> Request {
        self.header("content-type", "application/json").body(body)
    }

    /// The whole answer must come within `timeout` (blocking: no read may
    /// wait longer), else the request fails with `TimedOut` (default: no
    /// bound).
    pub fn timeout(mut self, timeout: Duration) -> Request {
        self.timeout = Some(timeout);
        self
    }

    /// The bytes written to a server at `addr`.
    pub fn to_bytes(&self, addr: SocketAddr) -> Vec<u8> {
        let has = |name: &str| self.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
        let mut out = Vec::new();
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(&self.target);
        out.extend_from_slice(b" HTTP/1.1\r\n");
        if !has("host") {
            out.extend_from_slice(format!("host: {addr}\r\n").as_bytes());
        }
        for (name, value) in &self.headers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        if !has("content-length") {
            out.extend_from_slice(format!("content-length: {}\r\n", self.body.len()).as_bytes());
        }
        if !has("connection") {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// A whole answer, as text (lossy where it is not UTF-8).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    pub text: String,
}

impl Response {
    fn of(bytes: &[u8]) -> Response {
        Response { text: String::from_utf8_lossy(bytes).into_owned() }
    }

    /// The status code; 0 for an answer that has none.
    pub fn status(&self) -> u16 {
        self.text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    /// Everything after the head (a chunked body as it came).
    pub fn body(&self) -> &str {
        self.text.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "no whole answer in time")
}

/// Sends `req` to `addr` and reads the answer until the server closes.
pub async fn send(addr: SocketAddr, req: &Request) -> io::Result<Response> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut sock = tokio::net::TcpStream::connect(addr).await?;
        sock.write_all(&req.to_bytes(addr)).await?;
        let mut out = Vec::new();
        sock.read_to_end(&mut out).await?;
        Ok(Response::of(&out))
    };
    match req.timeout {
        Some(t) => tokio::time::timeout(t, exchange).await.map_err(|_| timed_out())?,
        None => exchange.await,
    }
}

/// As [`send`], blocking the thread (for tests without a runtime).
pub fn send_blocking(addr: SocketAddr, req: &Request) -> io::Result<Response> {
    use std::io::{Read, Write};
    let mut sock = std::net::TcpStream::connect(addr)?;
    sock.set_read_timeout(req.timeout)?;
    sock.write_all(&req.to_bytes(addr))?;
    let mut out = Vec::new();
    sock.read_to_end(&mut out).map_err(|e| if e.kind() == io::ErrorKind::WouldBlock { timed_out() } else { e })?;
    Ok(Response::of(&out))
}
