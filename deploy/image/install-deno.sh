#!/usr/bin/env bash
# deploy/Dockerfile, stage `deno`: the pinned Deno binary into ROOT.
#
#   DENO_VERSION=X.Y.Z install-deno.sh ROOT
#
# Gets Deno the way the rest of the repository does (scripts/install-deno.sh:
# the PyPI package `deno` in a virtualenv cached under ~/.cache), checks that
# it is exactly DENO_VERSION, and copies just the binary to
# ROOT/usr/local/bin/deno. The Dockerfile pins DENO_VERSION (ARG).
#
# The venv: SANDCACHE_DENO_VENV when set; else the one scripts/install-deno.sh
# keeps (~/.cache/sandcache-deno-venv) if it holds this version; else
# ~/.cache/sandcache-deno-venv-X.Y.Z.
set -euo pipefail

root=${1:?usage: DENO_VERSION=X.Y.Z install-deno.sh ROOT}
version=${DENO_VERSION:?DENO_VERSION is not set (deploy/Dockerfile pins it: ARG DENO_VERSION)}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

log() { printf 'install-deno.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The first line of `deno --version` ("deno 2.9.8 (stable, ...)"), or nothing.
deno_version() {
    local out
    out=$("$1" --version 2>/dev/null) || return 0
    printf '%s\n' "${out%%$'\n'*}"
}

venv=${SANDCACHE_DENO_VENV:-}
if [[ -z $venv ]]; then
    shared=$HOME/.cache/sandcache-deno-venv
    if [[ -x $shared/bin/deno && $(deno_version "$shared/bin/deno") == "deno $version "* ]]; then
        venv=$shared
    else
        venv=$HOME/.cache/sandcache-deno-venv-$version
    fi
fi

deno=$(SANDCACHE_DENO_VENV=$venv SANDCACHE_DENO_VERSION=$version "$repo/scripts/install-deno.sh")
got=$(deno_version "$deno")
[[ $got == "deno $version "* ]] || die "$deno is '$got', not deno $version (remove $venv, or set SANDCACHE_DENO_VENV)"
install -D -m 0755 "$deno" "$root/usr/local/bin/deno"
log "$(deno_version "$root/usr/local/bin/deno")"
