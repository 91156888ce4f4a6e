# A hostile site's worker: tries to reach what the runner holds, records what
# it got, then serves the record as JSON on $PORT. Run by the isolation tests.
import http.server
import json
import os
import socket
import urllib.request

R = {}


def attempt(name, fn):
    try:
        R[name] = "ok " + repr(fn())[:300]
    except Exception as e:  # every failure is a result
        R[name] = "denied " + type(e).__name__ + ": " + str(e)[:300]


runner = os.getppid()
attempt("runner environ", lambda: open(f"/proc/{runner}/environ", "rb").read())
attempt("runner mem", lambda: open(f"/proc/{runner}/mem", "rb").read(1))
attempt("runner fds", lambda: os.listdir(f"/proc/{runner}/fd"))
attempt("signal runner", lambda: os.kill(runner, 0))
attempt("token file", lambda: open(os.environ["PROBE_TOKEN_FILE"]).read())
for path in os.environ["PROBE_RUNNER_FILES"].split(":"):
    attempt("write " + path, lambda p=path: open(p, "a").write("planted"))
    attempt("replace " + path, lambda p=path: os.rename(p, p + ".moved"))
attempt("create in state dir", lambda: open(os.environ["PROBE_STATE_DIR"] + "/cache/planted", "x").write("x"))
attempt("create beside dir", lambda: open(os.environ["PROBE_BESIDE"], "x").write("x"))
attempt("credential env", lambda: sorted(k for k in os.environ if k.startswith(("AWS_", "ADMIN_S3_", "SANDCACHE_", "DECO_CACHE_S3_"))))


def put_victim():
    req = urllib.request.Request(os.environ["PROBE_VICTIM_URL"], data=b"poison", method="PUT")
    return urllib.request.urlopen(req, timeout=5).status


attempt("put another site's key", put_victim)


def admin(method, path, body=b""):
    s = socket.create_connection(("127.0.0.1", int(os.environ["PROBE_RUNNER_PORT"])), timeout=10)
    s.sendall(
        f"{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode() + body
    )
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    status = out.split(b"\r\n", 1)[0].decode()
    if " 200 " in status or " 202 " in status:
        return status
    raise PermissionError(status)


victim = json.dumps({"site": "victim", "runCommand": ["sh", "-c", "sleep 600"]}).encode()
attempt("admin status", lambda: admin("GET", "/sandbox/status"))
attempt("admin snapshot", lambda: admin("POST", "/sandbox/cache/snapshot"))
attempt("admin undeploy", lambda: admin("DELETE", "/sandbox/deploy"))
attempt("admin deploy", lambda: admin("POST", "/sandbox/deploy", victim))

# What the worker must still be able to do.
deno_dir = os.environ["DENO_DIR"]
def add_module():
    os.makedirs(deno_dir + "/npm/registry.npmjs.org/added-at-run-time/1.0.0", exist_ok=True)
    with open(deno_dir + "/npm/registry.npmjs.org/added-at-run-time/1.0.0/index.js", "w") as f:
        f.write("export default 42;\n")
    return sorted(os.listdir(deno_dir))
attempt("write deno dir", add_module)
attempt("rewrite a restored file", lambda: open(os.environ["PROBE_RESTORED_FILE"], "a").write("\n// edited\n"))
attempt("write work dir", lambda: open("written-by-worker.txt", "w").write("x"))
attempt("write home", lambda: open(os.environ["HOME"] + "/.probe", "w").write("x"))
attempt("write tmpdir", lambda: open(os.environ["TMPDIR"] + "/probe", "w").write("x"))
R["uid"] = os.getuid()
R["gid"] = os.getgid()
R["groups"] = os.getgroups()
R["home"] = os.environ.get("HOME")
R["tmpdir"] = os.environ.get("TMPDIR")
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
