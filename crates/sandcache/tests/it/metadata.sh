#!/usr/bin/env bash
# Run by the isolation tests inside a fresh network namespace (unshare --net):
# fake credential endpoints on their real addresses, `sandcache serve
# --block-metadata`, and a worker that tries to reach them.
#   metadata.sh SANDCACHE_BIN TMP WORKER_UID
set -euo pipefail
bin=$1 tmp=$2 uid=$3
ip link set lo up
for a in 169.254.169.254 169.254.170.23 169.254.170.2; do ip addr add "$a/32" dev lo; done
for a in fd00:ec2::254 fd00:ec2::23; do ip -6 addr add "$a/128" dev lo nodad; done
python3 -m http.server 80 --bind 0.0.0.0 >/dev/null 2>&1 &
python3 -m http.server 80 --bind fd00:ec2::23 >/dev/null 2>&1 &
python3 -m http.server 80 --bind fd00:ec2::254 >/dev/null 2>&1 &
probe='
import socket, sys, json
r = {}
for host in ["169.254.169.254", "169.254.170.23", "169.254.170.2", "fd00:ec2::23", "fd00:ec2::254"]:
    try:
        socket.create_connection((host, 80), timeout=3).close(); r[host] = "connected"
    except OSError as e:
        r[host] = "refused: " + str(e)
json.dump(r, open(sys.argv[1], "w"))
'
sleep 0.5
python3 -c "$probe" "$tmp/out/root.json"
"$bin" serve --listen 127.0.0.1:8000 --block-metadata --worker-user "$uid" --state-dir "$tmp/state" \
    --dir "$tmp/deno-dir" --work-dir "$tmp/site" >"$tmp/out/serve.log" 2>&1 &
serve=$!
for _ in $(seq 100); do curl -sf 127.0.0.1:8000/deco/_liveness >/dev/null && break; sleep 0.1; done
iptables -S OUTPUT >"$tmp/out/rules"; ip6tables -S OUTPUT >>"$tmp/out/rules"
body=$(python3 -c 'import json,sys; print(json.dumps({"site": "m", "runCommand": ["python3", "-c", sys.argv[1], sys.argv[2]]}))' \
    "$probe" "$tmp/out/worker.json")
curl -sf -X POST 127.0.0.1:8000/sandbox/deploy -d "$body" >/dev/null
for _ in $(seq 100); do [[ -s $tmp/out/worker.json ]] && break; sleep 0.1; done
kill -TERM "$serve"; wait "$serve" || true
kill $(jobs -p) 2>/dev/null || true
