#!/usr/bin/env bash
# deploy/Dockerfile, stage `build`: the sandcache binary into ROOT.
#
#   build.sh ROOT
#
# Runs `cargo build --locked --release -p sandcache` in the repository this
# script belongs to (in CARGO_TARGET_DIR when set, else target/), installs
# the binary as ROOT/usr/local/bin/sandcache and checks that it runs.
#
# SANDCACHE_PREBUILT_BIN=PATH installs that binary instead of building one:
# the deploy test (crates/sandcache/tests/it/deploy.rs) passes the binary
# `cargo test` already built, rather than start a nested release build.
set -euo pipefail

root=${1:?usage: build.sh ROOT}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

log() { printf 'build.sh: %s\n' "$*" >&2; }

if [[ -n ${SANDCACHE_PREBUILT_BIN:-} ]]; then
    bin=$SANDCACHE_PREBUILT_BIN
    log "installing the prebuilt $bin (no cargo build)"
else
    target=${CARGO_TARGET_DIR:-$repo/target}
    log "cargo build --locked --release -p sandcache (target dir $target)"
    (cd "$repo" && CARGO_TARGET_DIR=$target cargo build --locked --release -p sandcache)
    bin=$target/release/sandcache
fi
install -D -m 0755 "$bin" "$root/usr/local/bin/sandcache"
log "$("$root/usr/local/bin/sandcache" --version)"
