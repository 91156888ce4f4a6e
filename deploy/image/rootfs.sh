#!/usr/bin/env bash
# deploy/Dockerfile, stage `runtime`, last step: the worker user, the
# runner's directories, and a check that both binaries run.
#
#   rootfs.sh ROOT
#
# Reads, as the Dockerfile sets them (ARG and ENV): WORKER_UID, WORKER_GID,
# DENO_DIR, SANDCACHE_WORK_DIR, SANDCACHE_STATE_DIR.
#
# It writes the passwd and group lines itself instead of calling useradd,
# so that the deploy test can run these same commands against a temp dir
# without touching the host's users.
set -euo pipefail

root=${1:?usage: rootfs.sh ROOT}
root=${root%/} # "/" becomes "", so "$root/etc/passwd" is /etc/passwd
uid=${WORKER_UID:?} gid=${WORKER_GID:?}
name=sandcache-worker

log() { printf 'rootfs.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $uid =~ ^[1-9][0-9]*$ && $gid =~ ^[1-9][0-9]*$ ]] || die "WORKER_UID and WORKER_GID must be non-zero numbers"
for v in DENO_DIR SANDCACHE_WORK_DIR SANDCACHE_STATE_DIR; do
    [[ ${!v:-} == /?* ]] || die "$v must be an absolute path"
done

# add_entry FILE NAME ID LINE: LINE, unless NAME already has ID there; a
# NAME with another ID, or ID under another NAME, is an error.
add_entry() {
    local file=$1 want_name=$2 want_id=$3 line=$4 n id
    mkdir -p "$(dirname "$file")"
    [[ -e $file ]] || install -m 0644 /dev/null "$file"
    while IFS=: read -r n _ id _; do
        if [[ $n == "$want_name" || $id == "$want_id" ]]; then
            [[ $n == "$want_name" && $id == "$want_id" ]] && return 0
            die "$file already has $n with id $id (wanted $want_name, $want_id)"
        fi
    done <"$file"
    printf '%s\n' "$line" >>"$file"
}
add_entry "$root/etc/group" "$name" "$gid" "$name:x:$gid:"
add_entry "$root/etc/passwd" "$name" "$uid" "$name:x:$uid:$gid:sandcache worker:/nonexistent:/usr/sbin/nologin"

# Every directory is root's: the runner (root) gives DENO_DIR and the work dir
# to the worker at each deploy, and keeps the state dir to itself.
owner=()
if [[ $(id -u) == 0 ]]; then owner=(-o 0 -g 0); else log "not root: the directories keep your owner"; fi
install -d -m 0755 "${owner[@]}" "$root$DENO_DIR"
install -d -m 0755 "${owner[@]}" "$root$(dirname "$SANDCACHE_WORK_DIR")"
install -d -m 0711 "${owner[@]}" "$root$SANDCACHE_STATE_DIR"
install -d -m 1777 "${owner[@]}" "$root/tmp"

log "$("$root/usr/local/bin/sandcache" --version)"
deno=$("$root/usr/local/bin/deno" --version)
log "${deno%%$'\n'*}"
