#!/usr/bin/env bash
# deploy/Dockerfile, stage `runtime`: the Debian packages the runner needs.
#
#   packages.sh --install   apt-get install them (in the image build only)
#   packages.sh --list      print them, one a line
#
# The deploy test never installs anything on the host: it runs `--list` and
# checks that the host already has each package (and says so).
set -euo pipefail

packages=(
    ca-certificates # HTTPS to S3, to git hosts, and Deno's downloads
    git             # the runner clones the site (as the worker)
    iptables        # iptables and ip6tables: the init container's REJECT rules
)

case ${1:-} in
    --list)
        printf '%s\n' "${packages[@]}"
        ;;
    --install)
        [[ $(id -u) == 0 ]] || { echo "packages.sh: --install needs root (it runs in the image build)" >&2; exit 1; }
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${packages[@]}"
        apt-get clean
        rm -rf /var/lib/apt/lists/*
        ;;
    *)
        sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2
        exit 2
        ;;
esac
