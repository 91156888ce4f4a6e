#!/usr/bin/env bash
# Install kubernetes-validate (PyPI; it carries Kubernetes' JSON schemas)
# into a private virtualenv, if it is not there yet, and print the absolute
# path of its command on stdout (nothing else). The deploy tests check the
# manifests in deploy/k8s with it.
#
# Environment:
#   SANDCACHE_KV_VENV     venv location (default ~/.cache/sandcache-kv-venv)
#   SANDCACHE_KV_VERSION  PyPI `kubernetes-validate` version (default 1.37.0)
#   PYTHON                python interpreter used to create the venv (default python3)
set -euo pipefail

VENV=${SANDCACHE_KV_VENV:-$HOME/.cache/sandcache-kv-venv}
VERSION=${SANDCACHE_KV_VERSION:-1.37.0}
PYTHON=${PYTHON:-python3}

log() { printf 'install-kubernetes-validate: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

TOOL=$VENV/bin/kubernetes-validate

if [[ ! -x $TOOL ]] || [[ $("$TOOL" --version 2>/dev/null) != "$VERSION" ]]; then
    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (set PYTHON=...)"
    if [[ ! -x $VENV/bin/python ]]; then
        log "creating venv $VENV"
        mkdir -p "$(dirname "$VENV")"
        "$PYTHON" -m venv "$VENV" >&2 || die "could not create a venv with $PYTHON"
    fi
    log "installing kubernetes-validate==$VERSION from PyPI into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "kubernetes-validate==$VERSION" >&2 \
        || die "pip install kubernetes-validate==$VERSION failed"
    [[ -x $TOOL ]] || die "pip installed kubernetes-validate but $TOOL does not exist"
fi
log "kubernetes-validate $("$TOOL" --version)"
printf '%s/%s\n' "$(cd "$(dirname "$TOOL")" && pwd -P)" "$(basename "$TOOL")"
