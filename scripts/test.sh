#!/usr/bin/env bash
# Run all tests: starts the local Garage S3 server (scripts/dev-s3.sh), installs Deno
# (scripts/install-deno.sh) and kubernetes-validate (scripts/install-kubernetes-validate.sh), checks
# the source layout (scripts/layout.py), then `cargo test --workspace --locked "$@"`.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh -p sandcache-store -- conformance
#
# Garage is left running if it was already running; if this script started it,
# it is stopped on exit unless SANDCACHE_KEEP_S3=1.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'test: %s\n' "$*" >&2; }

started_s3=0
if ! scripts/dev-s3.sh status 2>/dev/null; then
    started_s3=1
fi
stop_s3() {
    if [[ $started_s3 == 1 && ${SANDCACHE_KEEP_S3:-0} != 1 ]]; then
        scripts/dev-s3.sh stop || true
    fi
}
trap stop_s3 EXIT

scripts/dev-s3.sh start
eval "$(scripts/dev-s3.sh env)"

SANDCACHE_DENO=$(scripts/install-deno.sh)
export SANDCACHE_DENO
# The deploy tests validate deploy/k8s against Kubernetes' schemas.
SANDCACHE_KUBERNETES_VALIDATE=$(scripts/install-kubernetes-validate.sh)
export SANDCACHE_KUBERNETES_VALIDATE

# The house rules for the source layout (no file over 700 lines of code,
# no import circle between a crate's files): a failure fails the run, after
# the tests.
layout=0
python3 scripts/layout.py || layout=$?

log "S3 at $AWS_ENDPOINT_URL ($SANDCACHE_TEST_S3), deno at $SANDCACHE_DENO"
log "cargo test --workspace --locked $*"
out=$(mktemp)
status=0
cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$out" || status=$?
# One closing total over every test binary (cargo prints one line per binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "\ntests: %d passed, %d failed\n", p, f }' "$out"
rm -f "$out"
if [[ $layout != 0 ]]; then
    log "scripts/layout.py found violations (above)"
    [[ $status != 0 ]] || status=$layout
fi
exit "$status"
