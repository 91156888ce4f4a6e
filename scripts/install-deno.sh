#!/usr/bin/env bash
# Install Deno (from the PyPI package `deno`) into a private virtualenv, if it is not
# there yet, and print the absolute path of the deno binary on stdout (nothing else).
#
# Environment:
#   SANDCACHE_DENO_VENV     venv location (default ~/.cache/sandcache-deno-venv)
#   SANDCACHE_DENO_VERSION  PyPI `deno` version to install (default 2.9.8)
#   PYTHON                  python interpreter used to create the venv (default python3)
set -euo pipefail

VENV=${SANDCACHE_DENO_VENV:-$HOME/.cache/sandcache-deno-venv}
VERSION=${SANDCACHE_DENO_VERSION:-2.9.8}
PYTHON=${PYTHON:-python3}

log() { printf 'install-deno: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

DENO=$VENV/bin/deno

if [[ ! -x $DENO ]]; then
    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (set PYTHON=...)"
    if [[ ! -x $VENV/bin/python ]]; then
        log "creating venv $VENV"
        mkdir -p "$(dirname "$VENV")"
        "$PYTHON" -m venv "$VENV" >&2 || die "could not create a venv with $PYTHON (is the venv module installed?)"
    fi
    log "installing deno==$VERSION from PyPI into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "deno==$VERSION" >&2 \
        || die "pip install deno==$VERSION failed"
    # Some wheels (deno 2.5.0) ship the binary without its execute bit.
    if [[ -f $DENO && ! -x $DENO ]]; then
        log "$DENO is not executable as installed; setting its execute bit"
        chmod +x "$DENO"
    fi
    [[ -x $DENO ]] || die "pip installed deno but $DENO does not exist"
fi

version=$("$DENO" --version 2>&1) || die "'$DENO --version' failed: $version"
log "${version%%$'\n'*}"

# Absolute path, even if SANDCACHE_DENO_VENV was relative.
printf '%s/%s\n' "$(cd "$(dirname "$DENO")" && pwd -P)" "$(basename "$DENO")"
