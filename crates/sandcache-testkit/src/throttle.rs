//! A bandwidth-throttled HTTP proxy, so that a cold start measured here is
//! honest.
//!
//! The end-to-end tests and the benchmark run real Deno against the npm
//! registry, and from this machine the registry is far faster than the
//! internet a sandbox sees: a cold start would look cheap and the cache
//! pointless. Deno honours `HTTPS_PROXY`/`HTTP_PROXY`, so pointing those at a
//! [`ThrottledProxy`] makes every download share one slow link again, and
//! [`ThrottledProxy::connects`] shows whether a warm start touched the
//! network at all.
//!
//! What it serves:
//!
//! * `CONNECT host:port` (what `HTTPS_PROXY` produces): after
//!   [`ThrottleOptions::connect_delay`] it connects to the target, answers
//!   `200 Connection Established` and relays bytes both ways;
//! * an absolute-form request such as `GET http://host/path` (what
//!   `HTTP_PROXY` produces for plain-http URLs): forwarded to its origin as
//!   `GET /path` with `Connection: close`, one request per client connection,
//!   so a keep-alive client never sends its next request to the wrong host;
//! * anything else: `405` for a request that is not a proxy request, `400`
//!   for one that is not HTTP or whose head passes 8 KiB, `502` when the
//!   target cannot be reached (refused, unresolvable, or no answer in 10 s).
//!
//! Every relayed chunk, in either direction and on any connection, is paid
//! for from one shared token bucket, because a sandbox's bandwidth is one
//! link, not one link per connection: opening more connections must not buy
//! more throughput. A store such as S3 is the other way round, each
//! connection served at its own speed: with
//! [`ThrottleOptions::per_connection`], each connection has a bucket of its
//! own.
//!
//! Two environment variables override the defaults, read by
//! [`ThrottleOptions::from_env`], for benchmarking other links without a
//! rebuild:
//!
//! * `SANDCACHE_THROTTLE_BPS`: the shared budget in bytes per second
//!   (default 40000000, about 320 Mbit/s; `0` turns throttling off);
//! * `SANDCACHE_THROTTLE_CONNECT_MS`: the delay before each connection is
//!   answered, in milliseconds (default 50, a round trip to a far registry).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::os::fd::AsFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use tokio::sync::Mutex;
use tokio::task::{JoinHandle, JoinSet};

/// The longest request head read before answering 400.
const MAX_HEAD: usize = 8 << 10;
/// The least bytes the bucket holds: a short burst, as a real link's
/// buffers allow, without letting a quiet spell bank a fast transfer later.
const BURST: f64 = (64 << 10) as f64;
/// ...and at least this much of the rate: a payer's sleep ends on the
/// timer's next millisecond tick or later, and refill beyond the bucket is
/// lost, so a bucket smaller than a few ticks of the rate caps the link
/// below it (64 KiB held a "100 MB/s" link to about 60).
const BURST_TIME: f64 = 0.004;
/// Bytes read per relayed chunk; well under [`BURST`], so a chunk never has
/// to wait for more than the bucket can ever hold.
const CHUNK: usize = 16 << 10;
/// How long a target may take to accept before the client gets 502.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How slow the proxy's link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleOptions {
    /// The budget shared by all connections and both directions, in bytes per
    /// second; `0` means unthrottled.
    pub bytes_per_sec: u64,
    /// Waited before each proxied connection is answered (or forwarded), as a
    /// distant server's connection setup would take.
    pub connect_delay: Duration,
    /// Waited before each request of a relayed connection goes on: a
    /// distant store's time to first byte, per request, kept-alive
    /// connections included. A request is the client's first bytes on the
    /// connection, or its first after the server sent anything.
    pub first_byte_delay: Duration,
    /// `bytes_per_sec` is each connection's, not shared: a store such as
    /// S3, which serves every connection at its own speed.
    pub per_connection: bool,
}

impl Default for ThrottleOptions {
    fn default() -> Self {
        ThrottleOptions {
            bytes_per_sec: 40_000_000,
            connect_delay: Duration::from_millis(50),
            first_byte_delay: Duration::ZERO,
            per_connection: false,
        }
    }
}

impl ThrottleOptions {
    /// The most bytes the bucket holds ([`BURST`], [`BURST_TIME`]).
    fn burst(&self) -> f64 {
        (self.bytes_per_sec as f64 * BURST_TIME).max(BURST)
    }

    /// The defaults, with `SANDCACHE_THROTTLE_BPS` and
    /// `SANDCACHE_THROTTLE_CONNECT_MS` applied when set.
    ///
    /// Panics on a value that is not a whole number: a typo must not quietly
    /// benchmark a different link.
    pub fn from_env() -> ThrottleOptions {
        let mut opts = ThrottleOptions::default();
        if let Some(bps) = env_u64("SANDCACHE_THROTTLE_BPS") {
            opts.bytes_per_sec = bps;
        }
        if let Some(ms) = env_u64("SANDCACHE_THROTTLE_CONNECT_MS") {
            opts.connect_delay = Duration::from_millis(ms);
        }
        opts
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    Some(value.parse().unwrap_or_else(|_| panic!("{name}={value:?} is not a whole number")))
}

/// The running proxy on `127.0.0.1`. Dropping it stops it, open tunnels
/// included.
pub struct ThrottledProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl ThrottledProxy {
    /// Binds a loopback port and starts serving.
    pub async fn start(opts: ThrottleOptions) -> io::Result<ThrottledProxy> {
        Self::serve_for(opts, None).await
    }

    /// A throttled link to one server instead of a proxy: every connection
    /// to the returned address is relayed to `target` (`host:port`) under
    /// the same shared budget. For a store endpoint (S3 speaks plain HTTP to
    /// the test server): a pod's link to its object store, not loopback.
    pub async fn relay_to(target: &str, opts: ThrottleOptions) -> io::Result<ThrottledProxy> {
        Self::serve_for(opts, Some(target.to_owned())).await
    }

    async fn serve_for(opts: ThrottleOptions, target: Option<String>) -> io::Result<ThrottledProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            opts,
            bucket: Mutex::new(Bucket { tokens: opts.burst(), last: Instant::now() }),
            bytes: AtomicU64::new(0),
            connects: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept(listener, shared.clone()));
        Ok(ThrottledProxy { addr, shared, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The value for `HTTPS_PROXY`/`HTTP_PROXY`: `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Bytes relayed so far, both directions and all connections added up
    /// (request and response heads of forwarded plain-http requests
    /// included; the proxy's own `CONNECT` exchange not).
    pub fn bytes(&self) -> u64 {
        self.shared.bytes.load(Ordering::SeqCst)
    }

    /// Proxy requests received so far (`CONNECT`s and forwarded plain-http
    /// requests), whether or not their target answered.
    pub fn connects(&self) -> u64 {
        self.shared.connects.load(Ordering::SeqCst)
    }
}

impl Drop for ThrottledProxy {
    fn drop(&mut self) {
        // The connections live in the accept task's JoinSet, so they go too.
        self.task.abort();
    }
}

struct Shared {
    /// A fixed target ([`ThrottledProxy::relay_to`]); else a proxy.
    target: Option<String>,
    opts: ThrottleOptions,
    bucket: Mutex<Bucket>,
    bytes: AtomicU64,
    connects: AtomicU64,
}

struct Bucket {
    /// May go negative: a debt the current payer sleeps off.
    tokens: f64,
    last: Instant,
}

impl Shared {
    /// Waits until `n` bytes fit the budget, then counts them.
    ///
    /// The payer sleeps off its debt while holding the lock, so every other
    /// chunk queues behind it (tokio's mutex is first come, first served):
    /// the budget is never overspent and the connections take turns.
    async fn pay(&self, bucket: &Mutex<Bucket>, n: usize) {
        let rate = self.opts.bytes_per_sec;
        if rate > 0 {
            let rate = rate as f64;
            let mut bucket = bucket.lock().await;
            let now = Instant::now();
            let refill = now.duration_since(bucket.last).as_secs_f64() * rate;
            bucket.tokens = (bucket.tokens + refill).min(self.opts.burst()) - n as f64;
            bucket.last = now;
            if bucket.tokens < 0.0 {
                tokio::time::sleep(Duration::from_secs_f64(-bucket.tokens / rate)).await;
            }
        }
        self.bytes.fetch_add(n as u64, Ordering::SeqCst);
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((sock, _)) => {
                    let _ = sock.set_nodelay(true);
                    conns.spawn(serve(sock, shared.clone()));
                }
                // Out of file descriptors, say: back off rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            // Reap finished connections so the set does not grow forever.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// What a client asked for.
enum Ask {
    /// `CONNECT host:port`.
    Tunnel { target: String },
    /// An absolute-form plain-http request: the target and the head to send
    /// it, rewritten to origin form.
    Forward { target: String, head: Vec<u8> },
}

async fn serve(mut client: TcpStream, shared: Arc<Shared>) {
    if let Some(target) = &shared.target {
        shared.connects.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(shared.opts.connect_delay).await;
        if let Ok(Ok(upstream)) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target.as_str())).await {
            let _ = upstream.set_nodelay(true);
            relay(client, upstream, &shared, true).await;
        }
        return;
    }
    // The request head, and whatever the client sent after it.
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let parsed = loop {
        match parse(&buf) {
            Ok(Some(parsed)) => break parsed,
            Ok(None) if buf.len() < MAX_HEAD => {}
            Ok(None) => return reply(&mut client, "400 Bad Request", "request head too long").await,
            Err(why) => return reply(&mut client, "400 Bad Request", why).await,
        }
        match client.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let (ask, head_len) = match parsed {
        (Some(ask), len) => (ask, len),
        (None, _) => return reply(&mut client, "405 Method Not Allowed", "only CONNECT and http:// requests").await,
    };
    let rest = &buf[head_len..];

    shared.connects.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(shared.opts.connect_delay).await;
    let target = match &ask {
        Ask::Tunnel { target } | Ask::Forward { target, .. } => target,
    };
    let mut upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target.as_str())).await {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(e)) => return reply(&mut client, "502 Bad Gateway", &format!("{target}: {e}")).await,
        Err(_) => return reply(&mut client, "502 Bad Gateway", &format!("{target}: no answer")).await,
    };
    let _ = upstream.set_nodelay(true);

    let tunnel = match ask {
        Ask::Tunnel { .. } => {
            if client.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n").await.is_err() {
                return;
            }
            true
        }
        Ask::Forward { head, .. } => {
            shared.pay(&shared.bucket, head.len()).await;
            if upstream.write_all(&head).await.is_err() {
                return;
            }
            false
        }
    };
    if !rest.is_empty() {
        shared.pay(&shared.bucket, rest.len()).await;
        if upstream.write_all(rest).await.is_err() {
            return;
        }
    }
    relay(client, upstream, &shared, tunnel).await;
}

/// Parses a complete request head: `Ok(None)` while it is incomplete, else
/// what it asks for (`None` for a request that is not a proxy request) and
/// its length.
fn parse(buf: &[u8]) -> Result<Option<(Option<Ask>, usize)>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("malformed request head"),
    };
    let (Some(method), Some(path)) = (req.method, req.path) else { return Err("malformed request head") };
    if method.eq_ignore_ascii_case("CONNECT") {
        let target = authority(path).ok_or("CONNECT needs host:port")?;
        return Ok(Some((Some(Ask::Tunnel { target }), len)));
    }
    let Some(rest) = path.get(..7).filter(|s| s.eq_ignore_ascii_case("http://")).map(|_| &path[7..]) else {
        return Ok(Some((None, len)));
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (host, origin) = rest.split_at(split);
    // Credentials in the URL are for the origin, not an address to dial.
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let target = if authority(host).is_some() { host.to_owned() } else { format!("{host}:80") };
    if authority(&target).is_none() {
        return Err("bad host in request target");
    }
    let origin = match origin {
        "" => "/".to_owned(),
        o if o.starts_with('?') => format!("/{o}"),
        o => o.to_owned(),
    };
    let mut head = format!("{method} {origin} HTTP/1.1\r\n").into_bytes();
    for h in req.headers.iter() {
        let hop = ["connection", "proxy-connection", "keep-alive", "proxy-authorization"];
        if hop.iter().any(|n| h.name.eq_ignore_ascii_case(n)) {
            continue;
        }
        head.extend_from_slice(h.name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(h.value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"connection: close\r\n\r\n");
    Ok(Some((Some(Ask::Forward { target, head }), len)))
}

/// `host:port` as given, if it is one (`[v6]:port` included).
fn authority(s: &str) -> Option<String> {
    let (host, port) = s.rsplit_once(':')?;
    let bracketed = host.starts_with('[') && host.ends_with(']');
    let ok = !host.is_empty() && (bracketed || !host.contains(':')) && port.parse::<u16>().is_ok_and(|p| p > 0);
    ok.then(|| s.to_owned())
}

async fn reply(client: &mut TcpStream, status: &str, why: &str) {
    let body = format!("{why}\n");
    let resp = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(resp.as_bytes()).await;
    let _ = client.shutdown().await;
    // Read what the client still sends before closing: closing with unread
    // bytes makes the kernel send a reset, which can destroy the answer
    // before the client reads it.
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(1), async { while let Ok(1..) = client.read(&mut sink).await {} })
        .await;
}

/// Relays until done. A tunnel lives until both directions have ended (each
/// end may half-close); a forwarded request ends with its response. Either
/// ends at the first error in either direction, which would otherwise leave
/// the other side waiting forever.
async fn relay(client: TcpStream, upstream: TcpStream, shared: &Shared, tunnel: bool) {
    // The server's socket acknowledges at once, as a distant client's
    // would have by the time its next segment arrives: Garage writes a
    // response's head and body apart, without TCP_NODELAY, so on loopback
    // the body's last segment waited for the proxy's delayed ack (40 ms,
    // on every pack of a few KB) — a stall no link to S3 has.
    let quick = upstream.as_fd().try_clone_to_owned().ok();
    let (client_r, client_w) = client.into_split();
    let (upstream_r, upstream_w) = upstream.into_split();
    // Set when the server sends: the client's next bytes start a request.
    let answered = AtomicBool::new(true);
    let delay = shared.opts.first_byte_delay;
    // The connection's own budget, or the one all share.
    let own =
        shared.opts.per_connection.then(|| Mutex::new(Bucket { tokens: shared.opts.burst(), last: Instant::now() }));
    let bucket = own.as_ref().unwrap_or(&shared.bucket);
    let up = pump(client_r, upstream_w, shared, bucket, Turn::Request { answered: &answered, delay });
    let down =
        pump(upstream_r, client_w, shared, bucket, Turn::Response { answered: &answered, quick: quick.as_ref() });
    tokio::pin!(up, down);
    let mut up_done = false;
    loop {
        tokio::select! {
            r = &mut up, if !up_done => {
                if r.is_err() {
                    return;
                }
                up_done = true;
            }
            r = &mut down => {
                if r.is_ok() && tunnel && !up_done {
                    let _ = up.await;
                }
                return;
            }
        }
    }
}

/// Which way a pump copies, for the first-byte delay.
#[derive(Clone, Copy)]
enum Turn<'a> {
    /// Client to server: a request's first bytes wait `delay`.
    Request { answered: &'a AtomicBool, delay: Duration },
    /// Server to client: marks the request answered, and acknowledges at
    /// once (`quick`: the server's socket).
    Response { answered: &'a AtomicBool, quick: Option<&'a std::os::fd::OwnedFd> },
}

/// Copies `from` to `to`, paying for each chunk, and passes the end on.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    shared: &Shared,
    bucket: &Mutex<Bucket>,
    turn: Turn<'_>,
) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        match turn {
            Turn::Request { answered, delay } if !delay.is_zero() && answered.swap(false, Ordering::SeqCst) => {
                tokio::time::sleep(delay).await;
            }
            Turn::Response { answered, quick } => {
                answered.store(true, Ordering::SeqCst);
                // Not sticky: the kernel leaves quick-ack mode on its own.
                if let Some(fd) = quick {
                    let _ = rustix::net::sockopt::set_tcp_quickack(fd, true);
                }
            }
            Turn::Request { .. } => {}
        }
        shared.pay(bucket, n).await;
        to.write_all(&buf[..n]).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_request_on_a_kept_alive_connection_waits_its_first_byte_delay() {
        let echo = echo_server().await;
        let delay = Duration::from_millis(80);
        let opts = ThrottleOptions { first_byte_delay: delay, ..fast() };
        let link = ThrottledProxy::relay_to(&echo.to_string(), opts).await.unwrap();
        let mut c = TcpStream::connect(link.addr()).await.unwrap();
        let mut got = [0u8; 2];
        for round in 0..3 {
            let start = Instant::now();
            c.write_all(b"ab").await.unwrap();
            c.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"ab");
            assert!(start.elapsed() >= delay, "round {round}: a request went on before its delay");
        }
    }

    /// Echoes every connection back to itself.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let (mut r, mut w) = sock.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    /// Sends `len` bytes to every connection, then closes it.
    async fn bulk_server(len: usize) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let data = vec![7u8; len];
                    let _ = sock.write_all(&data).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        addr
    }

    fn fast() -> ThrottleOptions {
        ThrottleOptions {
            bytes_per_sec: 0,
            connect_delay: Duration::ZERO,
            first_byte_delay: Duration::ZERO,
            per_connection: false,
        }
    }

    /// Sends `request` to the proxy and reads its answer's head.
    async fn ask(proxy: &ThrottledProxy, request: &[u8]) -> (TcpStream, String) {
        let mut sock = TcpStream::connect(proxy.addr()).await.unwrap();
        sock.write_all(request).await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(sock.read(&mut byte).await.unwrap(), 1, "proxy closed mid-head: {head:?}");
            head.push(byte[0]);
        }
        (sock, String::from_utf8(head).unwrap())
    }

    async fn connect(proxy: &ThrottledProxy, target: SocketAddr) -> TcpStream {
        let (sock, head) = ask(proxy, format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes()).await;
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        sock
    }

    #[tokio::test]
    async fn connect_relays_both_ways() {
        let echo = echo_server().await;
        let proxy = ThrottledProxy::start(fast()).await.unwrap();
        let mut sock = connect(&proxy, echo).await;
        let sent: Vec<u8> = (0..200_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let (mut r, mut w) = sock.split();
        let write = async {
            w.write_all(&sent).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut got = Vec::new();
        let read = r.read_to_end(&mut got);
        let (_, n) = tokio::join!(write, read);
        n.unwrap();
        assert!(got == sent, "echoed {} bytes, sent {}", got.len(), sent.len());
        assert_eq!(proxy.bytes(), 2 * sent.len() as u64);
        assert_eq!(proxy.connects(), 1);
    }

    /// Two connections through a proxy made with `opts`, each fetching
    /// 2 MB at once: how long both took.
    async fn two_fetches(opts: ThrottleOptions) -> Duration {
        const EACH: usize = 2_000_000;
        let bulk = bulk_server(EACH).await;
        let proxy = ThrottledProxy::start(opts).await.unwrap();
        let started = Instant::now();
        let fetch = || async {
            let mut sock = connect(&proxy, bulk).await;
            let mut got = Vec::new();
            sock.read_to_end(&mut got).await.unwrap();
            got.len()
        };
        let (a, b) = tokio::join!(fetch(), fetch());
        assert_eq!((a, b), (EACH, EACH));
        assert_eq!(proxy.bytes(), 2 * EACH as u64);
        started.elapsed()
    }

    #[tokio::test]
    async fn the_budget_is_shared_by_all_connections() {
        let took = two_fetches(ThrottleOptions { bytes_per_sec: 8_000_000, ..fast() }).await;
        // 4 MB at 8 MB/s, less the burst: about 0.49 s at the least.
        assert!(took >= Duration::from_millis(400), "4 MB at 8 MB/s took only {took:?}");
    }

    /// A store's link: each connection at the full rate.
    #[tokio::test]
    async fn per_connection_each_connection_has_the_whole_rate() {
        let took = two_fetches(ThrottleOptions { bytes_per_sec: 8_000_000, per_connection: true, ..fast() }).await;
        // 2 MB each at 8 MB/s each, less the burst: about 0.24 s, and far
        // under the 0.49 s a shared budget takes.
        assert!(took >= Duration::from_millis(150), "2 MB at 8 MB/s took only {took:?}");
        assert!(took < Duration::from_millis(420), "two connections shared the budget: {took:?}");
    }

    #[tokio::test]
    async fn a_malformed_request_gets_400() {
        let proxy = ThrottledProxy::start(fast()).await.unwrap();
        let (_, head) = ask(&proxy, b"\x16\x03\x01 not http at all\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
        let (_, head) = ask(&proxy, b"CONNECT no-port HTTP/1.1\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
        let long = format!("CONNECT a:1 HTTP/1.1\r\nx: {}\r\n\r\n", "y".repeat(MAX_HEAD));
        let (_, head) = ask(&proxy, long.as_bytes()).await;
        assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
        let (_, head) = ask(&proxy, b"GET /relative HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 405 "), "{head}");
        assert_eq!(proxy.connects(), 0);
    }

    #[tokio::test]
    async fn an_unreachable_target_gets_502() {
        // A port that was just free: nothing listens there.
        let free = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let proxy = ThrottledProxy::start(fast()).await.unwrap();
        let (_, head) = ask(&proxy, format!("CONNECT {free} HTTP/1.1\r\n\r\n").as_bytes()).await;
        assert!(head.starts_with("HTTP/1.1 502 "), "{head}");
        assert_eq!(proxy.connects(), 1);
    }

    #[tokio::test]
    async fn a_plain_http_request_is_forwarded_in_origin_form() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut req = Vec::new();
            let mut chunk = [0u8; 1024];
            while !req.ends_with(b"\r\n\r\n") {
                let n = sock.read(&mut chunk).await.unwrap();
                assert!(n > 0);
                req.extend_from_slice(&chunk[..n]);
            }
            sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await.unwrap();
            String::from_utf8(req).unwrap()
        });
        let proxy = ThrottledProxy::start(fast()).await.unwrap();
        let request =
            format!("GET http://{origin}/pkg?v=1 HTTP/1.1\r\nHost: {origin}\r\nProxy-Connection: keep-alive\r\n\r\n");
        let (mut sock, head) = ask(&proxy, request.as_bytes()).await;
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        let mut body = Vec::new();
        sock.read_to_end(&mut body).await.unwrap();
        assert_eq!(body, b"ok");
        let seen = server.await.unwrap();
        assert!(seen.starts_with("GET /pkg?v=1 HTTP/1.1\r\n"), "{seen}");
        assert!(!seen.to_ascii_lowercase().contains("proxy-connection"), "{seen}");
        assert!(seen.contains("connection: close\r\n"), "{seen}");
    }

    #[tokio::test]
    async fn dropping_the_proxy_closes_its_tunnels() {
        let echo = echo_server().await;
        let proxy = ThrottledProxy::start(fast()).await.unwrap();
        let mut sock = connect(&proxy, echo).await;
        drop(proxy);
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await.expect("tunnel still open");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    }
}
