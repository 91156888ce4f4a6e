//! The runner as operators run it (issue 11): what a worker writes, how it
//! exits, and how the runner stops, against the real binary.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use sandcache_testkit::serve::{Serve, term, wait_exit};
use sandcache_testkit::wait_for;

use crate::support::{self, http, worker_user_for_test};

/// `sandcache serve` on a free port, its dirs in `tmp` (made passable for a
/// worker uid), logging to `tmp/serve.log`.
fn serve(tmp: &Path, uid: u32, extra: &[&str]) -> (Child, u16) {
    fs::set_permissions(tmp, fs::Permissions::from_mode(0o755)).unwrap();
    let served = support::serve(tmp).args(worker_user_for_test(uid)).args(extra).log(&tmp.join("serve.log")).start();
    let port = served.port;
    (served.into_child(), port)
}

/// Deploys `body` (JSON text) and waits up to `secs` for the worker.
fn deploy_and_wait(port: u16, body: &str, secs: u64) {
    let reply = http(port, "POST", "/sandbox/deploy", None, body).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    wait_for("the worker ready", secs, || {
        http(port, "GET", "/sandbox/status", None, "").is_some_and(|r| r.contains("\"worker\":\"ready\""))
    });
}

/// Deploy envs for an S3 store at `endpoint`, with invented credentials.
fn store_envs(endpoint: &str) -> serde_json::Value {
    serde_json::json!({"DECO_CACHE_S3_BUCKET": "bkt", "DECO_CACHE_S3_KEY": "s/cache", "DECO_CACHE_S3_ENDPOINT": endpoint,
        "DECO_CACHE_S3_ACCESS_KEY_ID": "AKIDTEST", "DECO_CACHE_S3_SECRET_ACCESS_KEY": "secret-test"})
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).unwrap().trim().trim_end_matches(" kB").parse().unwrap()
}

/// Non-UTF-8 bytes and a 200 MB line without a newline on the worker's
/// stdout: the capture goes on (the worker is not killed by SIGPIPE and its
/// later lines are logged), the long line is cut with a marker, and the
/// runner's memory stays small.
#[test]
fn worker_output_of_any_bytes_and_length_is_logged_safely() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut server, port) = serve(tmp.path(), 4, &[]);
    let script = "printf 'bad \\377\\376 bytes\\n'; head -c 200000000 /dev/zero | tr '\\0' x; echo; \
                  i=0; while [ $i -lt 2000 ]; do echo \"line $i after\"; i=$((i+1)); done; \
                  echo still-alive >&2; exec python3 -m http.server \"$PORT\" --bind 127.0.0.1";
    let body = serde_json::json!({"site": "s", "runCommand": ["sh", "-c", script]}).to_string();
    deploy_and_wait(port, &body, 60);
    let peak = peak_rss_kib(server.id());
    let reply = http(port, "DELETE", "/sandbox/deploy", None, "").unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(server.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    assert!(server.wait().unwrap().success());
    let log = fs::read_to_string(tmp.path().join("serve.log")).unwrap()
        + &fs::read_to_string(tmp.path().join("serve.err")).unwrap();
    assert!(log.contains("bad \u{fffd}\u{fffd} bytes"), "non-UTF-8 is logged lossily");
    assert!(log.contains("line 1999 after") && log.contains("still-alive"), "the capture went on");
    assert!(log.contains(&format!("… [{} more bytes]", 200_000_000 - 16 * 1024)), "the long line is cut with a marker");
    assert!(!log.contains(&"x".repeat(17 * 1024)), "no line over the cap is logged");
    eprintln!("peak RSS of serve with a 200 MB worker line: {} MiB", peak / 1024);
    assert!(peak < 100 * 1024, "the runner stayed small: {peak} KiB");
}

/// A worker that accepts a request and never answers: the client gets a
/// JSON 504 after `--proxy-timeout`, and a WARN names the method and path.
/// A worker that does answer sees the `X-Forwarded-*` headers, and not the
/// headers the client's `Connection` named as hop-by-hop.
#[test]
fn a_worker_that_never_answers_gets_a_504_and_a_named_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut server, port) = serve(tmp.path(), 5, &["--proxy-timeout", "2"]);
    let worker = r#"
import http.server, os, time
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/hang"):
            time.sleep(600)
        body = "".join(f"{k.lower()}: {v}\n" for k, v in self.headers.items()).encode()
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;
    let body = serde_json::json!({"site": "s", "runCommand": ["python3", "-c", worker]}).to_string();
    deploy_and_wait(port, &body, 30);
    let start = Instant::now();
    let reply = http(port, "GET", "/hang/here?x=1", None, "").unwrap();
    let took = start.elapsed();
    assert!(reply.starts_with("HTTP/1.1 504"), "{reply}");
    assert!(reply.contains(r#"{"error":"the worker did not answer within 2 s"}"#), "{reply}");
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(5), "{took:?}");

    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET /echo HTTP/1.1\r\nhost: shop.example\r\nconnection: close, x-hop\r\nx-hop: 1\r\nx-kept: 2\r\n\r\n")
        .unwrap();
    let mut echo = String::new();
    s.read_to_string(&mut echo).unwrap();
    assert!(echo.contains("x-forwarded-for: 127.0.0.1"), "{echo}");
    assert!(echo.contains("x-forwarded-proto: http") && echo.contains("x-forwarded-host: shop.example"), "{echo}");
    assert!(echo.contains("x-kept: 2") && !echo.contains("x-hop"), "{echo}");

    rustix::process::kill_process(
        rustix::process::Pid::from_raw(server.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    assert!(server.wait().unwrap().success());
    let log = fs::read_to_string(tmp.path().join("serve.log")).unwrap()
        + &fs::read_to_string(tmp.path().join("serve.err")).unwrap();
    let warn = log.lines().find(|l| l.contains("no response headers within")).expect("a WARN for the 504");
    assert!(warn.contains("WARN") && warn.contains("GET") && warn.contains("/hang/here"), "{warn}");
}

const STREAMING_WORKER: &str = r#"
import http.server, os, time
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200); self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked"); self.end_headers()
        while True:
            data = b"data: tick\n\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data)); self.wfile.flush(); time.sleep(0.1)
    def log_message(self, *a): pass
open(os.environ["DENO_DIR"] + "/marker", "w").write("x")
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

/// `serve` with `extra` arguments, the streaming worker deployed, and its
/// store one that accepts connections and never answers (as long as the
/// returned listener lives): every snapshot hangs.
fn streaming_on_a_black_hole(tmp: &Path, uid: u32, extra: &[&str]) -> (Child, u16, std::net::TcpListener) {
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", black_hole.local_addr().unwrap());
    let (server, port) = serve(tmp, uid, extra);
    let envs = store_envs(&endpoint);
    let body =
        serde_json::json!({"site": "s", "runCommand": ["python3", "-c", STREAMING_WORKER], "envs": envs}).to_string();
    deploy_and_wait(port, &body, 30);
    (server, port, black_hole)
}

/// An event stream held open by a client, and SIGTERM: serve stops the
/// worker (which ends the stream) and exits 0 within stop grace + final
/// snapshot bound, instead of waiting for the client forever.
#[test]
fn sigterm_ends_serve_in_bounded_time_with_a_stream_open() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut server, port) = serve(tmp.path(), 6, &["--final-snapshot-timeout", "3"]);
    let body = serde_json::json!({"site": "s", "runCommand": ["python3", "-c", STREAMING_WORKER]}).to_string();
    deploy_and_wait(port, &body, 30);
    // A client reading the stream, like a browser tab with live reload.
    let reader = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(s, "GET /events HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        let mut buf = [0u8; 4096];
        let mut got = 0;
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            got += n;
        }
        got
    });
    std::thread::sleep(Duration::from_millis(500));
    term(&server);
    let (status, took) = wait_exit(&mut server, Duration::from_secs(15));
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(2 + 3 + 2), "serve exited in {took:?}");
    assert!(reader.join().unwrap() > 0, "the stream flowed until shutdown");
    eprintln!("SIGTERM with an open stream: exited 0 in {took:?}");
}

/// A final snapshot stuck on a store that never answers, and a second
/// SIGTERM: serve exits at once, killing the worker.
#[test]
fn a_second_signal_exits_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let args = ["--final-snapshot-timeout", "60", "--restore-timeout", "1"];
    let (mut server, port, black_hole) = streaming_on_a_black_hole(tmp.path(), 7, &args);
    // A manual snapshot hangs on the store; a second request says so.
    let first = http(port, "POST", "/sandbox/cache/snapshot", None, "").unwrap();
    assert!(first.contains(r#"{"ok":true,"started":true}"#), "{first}");
    wait_for("the snapshot running", 5, || {
        http(port, "GET", "/sandbox/status", None, "").is_some_and(|r| r.contains("\"snapshot_running\":true"))
    });
    let second = http(port, "POST", "/sandbox/cache/snapshot", None, "").unwrap();
    assert!(second.contains(r#"{"ok":true,"running":true,"started":false}"#), "{second}");
    term(&server);
    std::thread::sleep(Duration::from_secs(4)); // the worker is stopped; the final snapshot hangs
    assert!(server.try_wait().unwrap().is_none(), "the final snapshot is still waiting on the store");
    term(&server);
    let (status, took) = wait_exit(&mut server, Duration::from_secs(5));
    assert_eq!(status.code(), Some(1), "a second signal exits at once, not cleanly");
    eprintln!("second SIGTERM: exited in {took:?}");
    drop(black_hole);
}

/// Real Deno for the worker, where the worker's uid can run it.
fn deno_for_worker(tmp: &Path) -> Option<String> {
    let deno = sandcache_testkit::deno::binary("websockets_and_event_streams_reach_a_deno_worker")?;
    Some(sandcache_testkit::deno::linked_into(&deno, tmp))
}

/// A Deno site with a WebSocket echo and an event stream, behind the
/// runner: the upgrade goes through (101, then frames both ways), and the
/// stream arrives event by event.
#[test]
fn websockets_and_event_streams_reach_a_deno_worker() {
    use std::io::{BufRead, BufReader, Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let Some(deno) = deno_for_worker(tmp.path()) else { return };
    let (mut server, port) = serve(tmp.path(), 8, &[]);
    let app = tmp.path().join("app.ts");
    fs::write(
        &app,
        r#"Deno.serve({ port: Number(Deno.env.get("PORT")), hostname: "127.0.0.1" }, (req) => {
  if (req.headers.get("upgrade") === "websocket") {
    const { socket, response } = Deno.upgradeWebSocket(req);
    socket.onmessage = (e) => socket.send("echo: " + e.data);
    return response;
  }
  if (new URL(req.url).pathname === "/sse") {
    let n = 0;
    const body = new ReadableStream({
      async pull(c) { await new Promise((r) => setTimeout(r, 50)); c.enqueue(new TextEncoder().encode(`data: ${n++}\n\n`)); },
    });
    return new Response(body, { headers: { "content-type": "text/event-stream" } });
  }
  return new Response("ok");
});
"#,
    )
    .unwrap();
    fs::set_permissions(&app, fs::Permissions::from_mode(0o644)).unwrap();
    let run = serde_json::json!([deno, "run", "--allow-net", "--allow-env", app.display().to_string()]);
    let body = serde_json::json!({"site": "s", "runCommand": run, "envs": {"NO_COLOR": "1"}}).to_string();
    deploy_and_wait(port, &body, 60);

    // WebSocket: the RFC 6455 handshake example, then a masked text frame.
    let mut ws = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    ws.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        ws,
        "GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        ws.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="), "{head}");
    let (payload, mask) = (b"hello", [1u8, 2, 3, 4]);
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    ws.write_all(&frame).unwrap();
    let mut hdr = [0u8; 2];
    ws.read_exact(&mut hdr).unwrap();
    let mut echo = vec![0u8; (hdr[1] & 0x7f) as usize];
    ws.read_exact(&mut echo).unwrap();
    assert_eq!((hdr[0], String::from_utf8_lossy(&echo).as_ref()), (0x81, "echo: hello"));

    // The event stream, event by event: the first arrives long before the end.
    let mut sse = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    sse.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(sse, "GET /sse HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut lines = BufReader::new(sse).lines();
    let start = Instant::now();
    let first = lines.by_ref().map(Result::unwrap).find(|l| l.starts_with("data: ")).unwrap();
    let third = lines.by_ref().map(Result::unwrap).filter(|l| l.starts_with("data: ")).nth(1).unwrap();
    assert_eq!((first.as_str(), third.as_str()), ("data: 0", "data: 2"));
    assert!(start.elapsed() < Duration::from_secs(5));

    term(&server);
    let (status, _) = wait_exit(&mut server, Duration::from_secs(15));
    assert!(status.success());
}

/// A worker that exits on its own twice after it was ready, then stays:
/// it is restarted each time (status and metrics count it), requests made
/// while it restarts wait for it instead of failing, and the intentional
/// stop at the end is not a warning.
#[test]
fn a_worker_that_exits_after_ready_is_restarted_and_requests_wait() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut server, port) = serve(tmp.path(), 9, &[]);
    let worker = r#"
import http.server, os, sys, threading, time
runs = os.path.join(os.environ["HOME"], "runs")
n = len(open(runs).read()) if os.path.exists(runs) else 0
open(runs, "a").write("x")
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"run {n}".encode()
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H)
if n < 2:
    threading.Timer(1.0, lambda: os._exit(3)).start()
srv.serve_forever()
"#;
    let body = serde_json::json!({"site": "s", "runCommand": ["python3", "-c", worker]}).to_string();
    let reply = http(port, "POST", "/sandbox/deploy", None, &body).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let status = || -> serde_json::Value {
        let r = http(port, "GET", "/sandbox/status", None, "").unwrap();
        serde_json::from_str(r.split_once("\r\n\r\n").unwrap().1).unwrap()
    };
    // Requests all along: none fails, the later ones reach the third run.
    let start = Instant::now();
    let mut answers = Vec::new();
    while start.elapsed() < Duration::from_secs(20) {
        let reply = http(port, "GET", "/", None, "").unwrap();
        assert!(reply.contains(" 200 "), "a request during a restart failed: {reply}");
        let last = reply.rsplit("\r\n\r\n").next().unwrap().to_owned();
        let done = last == "run 2";
        answers.push(last);
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(answers.last().map(String::as_str), Some("run 2"), "{answers:?}");
    let st = status();
    assert_eq!((st["worker"].as_str(), st["worker_restarts"].as_u64()), (Some("ready"), Some(2)), "{st}");
    assert_eq!(st["worker_last_exit"], "exit status: 3", "{st}");
    assert_eq!((st["phase"].as_str(), &st["last_deploy"]["ok"]), (Some("ready"), &serde_json::json!(true)), "{st}");
    let metrics = http(port, "GET", "/metrics", None, "").unwrap();
    assert!(metrics.contains(r#"sandcache_deploys_total{outcome="ok"} 1"#), "{metrics}");
    assert!(!metrics.contains(r#"sandcache_proxied_requests_total{class="2xx"} 0"#), "{metrics}");
    assert!(metrics.contains("sandcache_upstream_latency_seconds_count"), "{metrics}");
    assert!(metrics.contains("sandcache_worker_restarts_total 2"), "{metrics}");
    assert!(metrics.contains("sandcache_worker_up 1"), "{metrics}");
    let reply = http(port, "DELETE", "/sandbox/deploy", None, "").unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    term(&server);
    assert!(wait_exit(&mut server, Duration::from_secs(15)).0.success());
    let log = fs::read_to_string(tmp.path().join("serve.log")).unwrap()
        + &fs::read_to_string(tmp.path().join("serve.err")).unwrap();
    assert_eq!(log.matches("restarting in").count(), 2, "two restarts logged");
    let after_delete = log.split("worker stopped").last().unwrap_or_default();
    assert!(!after_delete.contains("WARN"), "the intentional stop is not a warning: {after_delete}");
    assert!(log.contains("worker stopped (signal: 15"), "the stop is logged at info with its status");
}

/// A worker that listens on `[::1]` only is ready and reached.
#[test]
fn a_worker_on_ipv6_loopback_only_is_ready_and_proxied() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipping: no IPv6 loopback here");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (mut server, port) = serve(tmp.path(), 10, &[]);
    let script = "exec python3 -m http.server \"$PORT\" --bind ::1";
    let body = serde_json::json!({"site": "s", "runCommand": ["sh", "-c", script]}).to_string();
    let reply = http(port, "POST", "/sandbox/deploy", None, &body).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let reply = http(port, "GET", "/", None, "").unwrap();
    assert!(reply.lines().next().is_some_and(|l| l.contains(" 200 ")), "{reply}");
    term(&server);
    assert!(wait_exit(&mut server, Duration::from_secs(15)).0.success());
}

/// Processes whose command line mentions `needle` (git and its helpers
/// name the repo URL).
fn processes_mentioning(needle: &str) -> Vec<String> {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let pid = e.ok()?.file_name().to_str()?.parse::<u32>().ok()?;
            let cmd = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains(needle).then(|| format!("{pid}: {cmd}"))
        })
        .collect()
}

/// A git server that accepts and never answers: the clone times out after
/// `--clone-timeout` with a 400 that says so, and no git process (git's
/// remote helpers included) is left; a DELETE during such a clone cancels
/// the deploy at once, with the same cleanup.
#[test]
fn a_hung_git_server_times_out_or_is_cancelled_leaving_no_git_process() {
    let tmp = tempfile::tempdir().unwrap();
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://127.0.0.1:{}/org/site.git", hung.local_addr().unwrap().port());
    let (mut server, port) = serve(tmp.path(), 11, &["--clone-timeout", "2"]);
    let body = serde_json::json!({"repo": url, "runCommand": []}).to_string();
    let start = Instant::now();
    let reply = http(port, "POST", "/sandbox/deploy", None, &body).unwrap();
    let took = start.elapsed();
    assert!(reply.starts_with("HTTP/1.1 400") && reply.contains("timed out after 2 s"), "{reply}");
    assert!(took < Duration::from_secs(6), "{took:?}");
    wait_for("git and its helpers to be gone", 5, || processes_mentioning(&url).is_empty());
    term(&server);
    assert!(wait_exit(&mut server, Duration::from_secs(15)).0.success());

    let tmp = tempfile::tempdir().unwrap();
    let (mut server, port) = serve(tmp.path(), 11, &["--clone-timeout", "60"]);
    let deploy = std::thread::spawn({
        let body = body.clone();
        move || http(port, "POST", "/sandbox/deploy", None, &body).unwrap()
    });
    wait_for("git to run", 10, || !processes_mentioning(&url).is_empty());
    // No cache is configured: the restore is over, and the status says the
    // clone is what the deploy waits for.
    wait_for("the phase to be cloning", 5, || {
        let st = http(port, "GET", "/sandbox/status", None, "").unwrap_or_default();
        st.contains(r#""phase":"cloning""#)
    });
    let start = Instant::now();
    let reply = http(port, "DELETE", "/sandbox/deploy", None, "").unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(start.elapsed() < Duration::from_secs(3), "cancelled in {:?}", start.elapsed());
    let reply = deploy.join().unwrap();
    assert!(reply.starts_with("HTTP/1.1 409") && reply.contains("Deploy cancelled"), "{reply}");
    wait_for("git and its helpers to be gone", 5, || processes_mentioning(&url).is_empty());
    assert!(!tmp.path().join("site").join(".git").exists(), "the work dir was cleaned");
    term(&server);
    assert!(wait_exit(&mut server, Duration::from_secs(15)).0.success());
    drop(hung);
}

/// Zombie children of `pid`.
fn zombies_of(pid: u32) -> Vec<u32> {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let p = e.ok()?.file_name().to_str()?.parse::<u32>().ok()?;
            let status = fs::read_to_string(format!("/proc/{p}/status")).ok()?;
            let field = |n: &str| status.lines().find_map(|l| l.strip_prefix(n)).map(str::trim).map(str::to_owned);
            let zombie = field("State:")?.starts_with('Z');
            (zombie && field("PPid:")? == pid.to_string()).then_some(p)
        })
        .collect()
}

/// The runner as PID 1 of its own PID namespace (a container without an
/// init): a worker that leaves many short-lived orphans behind; none stays
/// a zombie, and undeploy leaves no process of the site.
#[test]
fn as_pid_1_the_runner_reaps_every_orphan() {
    if !rustix::process::geteuid().is_root() || std::process::Command::new("unshare").arg("--version").output().is_err()
    {
        eprintln!("skipping: a PID namespace needs root and unshare");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc"]).arg(env!("CARGO_BIN_EXE_sandcache"));
    let served =
        Serve::command(cmd, tmp.path()).args(worker_user_for_test(12)).log(&tmp.path().join("serve.log")).start();
    let port = served.port;
    let mut unshare = served.into_child();
    // The runner's pid outside the namespace: unshare's child.
    let runner = fs::read_to_string(format!("/proc/{}/task/{}/children", unshare.id(), unshare.id()))
        .unwrap()
        .trim()
        .parse::<u32>()
        .unwrap();
    let script = "for i in $(seq 40); do (sleep 0.1 &); done; exec python3 -m http.server \"$PORT\" --bind 127.0.0.1";
    let body = serde_json::json!({"site": "s", "runCommand": ["sh", "-c", script]}).to_string();
    deploy_and_wait(port, &body, 30);
    std::thread::sleep(Duration::from_secs(2));
    let zombies = zombies_of(runner);
    assert!(zombies.is_empty(), "orphans left as zombies of the runner (pid 1 inside): {zombies:?}");
    let reply = http(port, "DELETE", "/sandbox/deploy", None, "").unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(runner as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let (status, _) = wait_exit(&mut unshare, Duration::from_secs(15));
    assert!(status.success(), "{status}");
}

/// An h2c client (HTTP/2 with prior knowledge) is proxied to the worker
/// over HTTP/1.1, and `OPTIONS *` is answered by the runner itself.
#[test]
fn h2c_requests_and_options_star_are_answered() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut server, port) = serve(tmp.path(), 13, &[]);
    let script = "echo hello-h2c > index.html; exec python3 -m http.server \"$PORT\" --bind 127.0.0.1";
    let body = serde_json::json!({"site": "s", "runCommand": ["sh", "-c", script]}).to_string();
    let reply = http(port, "POST", "/sandbox/deploy", None, &body).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let out = std::process::Command::new("curl")
        .args(["-s", "-i", "--http2-prior-knowledge", &format!("http://127.0.0.1:{port}/index.html")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/2 200") && text.contains("hello-h2c"), "{text}");
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "OPTIONS * HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 204") && answer.to_lowercase().contains("allow: get"), "{answer}");
    term(&server);
    assert!(wait_exit(&mut server, Duration::from_secs(15)).0.success());
}

/// With JSON logs, the lines that matter carry their facts as fields, not
/// only in the message: site and ms for deploys, op, reason and ms for the
/// cache, port for the worker.
#[test]
fn json_logs_carry_structured_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let (mut server, port) = serve(tmp.path(), 14, &["--store", store.to_str().unwrap(), "--log-format", "json"]);
    let script = "exec python3 -m http.server \"$PORT\" --bind 127.0.0.1";
    let body = serde_json::json!({"site": "s", "runCommand": ["sh", "-c", script]}).to_string();
    deploy_and_wait(port, &body, 30);
    term(&server);
    assert!(wait_exit(&mut server, Duration::from_secs(15)).0.success());
    let log = fs::read_to_string(tmp.path().join("serve.log")).unwrap()
        + &fs::read_to_string(tmp.path().join("serve.err")).unwrap();
    let lines: Vec<serde_json::Value> = log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let find = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        lines.iter().find(|l| pred(&l["fields"])).unwrap_or_else(|| panic!("no such line in {lines:?}")).clone()
    };
    let deployed = find(&|f| f["message"].as_str().is_some_and(|m| m.starts_with("deployed")));
    assert_eq!(deployed["fields"]["site"], "s");
    assert!(deployed["fields"]["ms"].is_u64(), "{deployed}");
    let restore = find(&|f| f["op"] == "restore");
    assert_eq!(restore["fields"]["reason"], "not_found", "{restore}");
    assert!(restore["fields"]["ms"].is_u64(), "{restore}");
    let ready = find(&|f| f["message"].as_str().is_some_and(|m| m.starts_with("worker ready")));
    assert!(ready["fields"]["port"].is_u64(), "{ready}");
}

/// A manual snapshot stuck on a store that never answers, and SIGTERM: the
/// final snapshot's bound covers waiting for it; when it runs out the
/// manual one is cancelled and serve exits 0 in time (it took 269 s).
#[test]
fn the_final_snapshot_bound_covers_a_running_manual_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let args = ["--final-snapshot-timeout", "3", "--restore-timeout", "1"];
    let (mut server, port, black_hole) = streaming_on_a_black_hole(tmp.path(), 15, &args);
    let reply = http(port, "POST", "/sandbox/cache/snapshot", None, "").unwrap();
    assert!(reply.contains(r#""started":true"#), "{reply}");
    term(&server);
    let (status, took) = wait_exit(&mut server, Duration::from_secs(20));
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(2 + 3 + 3), "serve exited in {took:?}");
    let log = fs::read_to_string(tmp.path().join("serve.log")).unwrap()
        + &fs::read_to_string(tmp.path().join("serve.err")).unwrap();
    assert!(log.contains("a running snapshot did not end within the final snapshot's"), "{log}");
    drop(black_hole);
}
