# A hostile site's worker against the admin API of a runner with no token,
# listening on every address (`[::]`): every socket trick it knows, each
# recorded as "ok <status>" or "denied <why>", then the record served as
# JSON on $PORT. Run by `isolation::the_worker_reaches_no_admin_route_by_any_socket_trick`.
import http.server
import json
import os
import socket
import time

R = {}
PORT = int(os.environ["PROBE_RUNNER_PORT"])


def request(s, method="GET", path="/sandbox/status", close_write=False):
    s.sendall(f"{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".encode())
    if close_write:
        s.shutdown(socket.SHUT_WR)
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out.split(b"\r\n", 1)[0].decode()


def attempt(name, fn):
    try:
        status = fn()
        R[name] = ("ok " if (" 200 " in status or " 202 " in status) else "denied ") + status
    except Exception as e:  # every failure is a result
        R[name] = "denied " + type(e).__name__ + ": " + str(e)[:200]


def connect(family, addr):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(addr)
    return s


def local_ip(family, probe):
    """One of this host's non-loopback addresses (the pod IP), if any."""
    try:
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.connect((probe, 9))
        ip = s.getsockname()[0]
        s.close()
        return ip
    except OSError:
        return None


attempt("ipv4 loopback", lambda: request(connect(socket.AF_INET, ("127.0.0.1", PORT))))
attempt("ipv6 loopback", lambda: request(connect(socket.AF_INET6, ("::1", PORT))))
attempt("v4-mapped", lambda: request(connect(socket.AF_INET6, ("::ffff:127.0.0.1", PORT))))
pod4, pod6 = local_ip(socket.AF_INET, "198.51.100.1"), local_ip(socket.AF_INET6, "2001:db8::1")
R["pod ips"] = [pod4, pod6]
if pod4:
    attempt("pod ip v4", lambda: request(connect(socket.AF_INET, (pod4, PORT))))
if pod6 and not pod6.startswith("fe80"):
    attempt("pod ip v6", lambda: request(connect(socket.AF_INET6, (pod6, PORT))))


def time_wait_then_reuse():
    # The review's trick: close a throw-away v4-mapped IPv6 connection from
    # port E first (its end lingers in TIME_WAIT, listed with uid 0), then
    # connect to the runner from 127.0.0.1:E with SO_REUSEADDR.
    lsn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsn.bind(("127.0.0.1", 0))
    lsn.listen(1)
    throw = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    throw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    throw.connect(("::ffff:127.0.0.1", lsn.getsockname()[1]))
    port_e = throw.getsockname()[1]
    peer, _ = lsn.accept()
    throw.close()  # this end closes first: it is the one in TIME_WAIT
    time.sleep(0.05)
    peer.close()
    time.sleep(0.05)
    with open("/proc/net/tcp6") as f:
        R["time_wait listed"] = any(
            (":%04X " % port_e) in line and line.split()[3] == "06" for line in f.readlines()[1:]
        )
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.settimeout(10)
    s.bind(("127.0.0.1", port_e))
    s.connect(("127.0.0.1", PORT))
    return request(s)


attempt("time_wait + reuseaddr", time_wait_then_reuse)


def handed_to_a_child():
    # The connection is made here and used by a child after this process
    # closed its copy: the socket is still the one the worker created.
    s = connect(socket.AF_INET, ("127.0.0.1", PORT))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            os.write(w, request(s).encode())
        finally:
            os._exit(0)
    s.close()
    os.close(w)
    os.waitpid(pid, 0)
    return os.read(r, 4096).decode()


attempt("handed to a child", handed_to_a_child)
attempt("half closed", lambda: request(connect(socket.AF_INET, ("127.0.0.1", PORT)), close_write=True))


def sent_then_closed():
    # The request goes out and the socket is closed at once: nobody holds
    # it when the runner looks. Undeploy must not happen.
    s = connect(socket.AF_INET, ("127.0.0.1", PORT))
    s.sendall(b"DELETE /sandbox/deploy HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
    s.close()
    time.sleep(1)
    return "sent"


R["sent then closed"] = sent_then_closed()
R["uid"] = os.getuid()
body = json.dumps(R).encode()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
