#!/usr/bin/env bash
# Ensures the etcd server binary the governance benchmark compares against is installed, and
# prints its path on stdout. On Debian it comes from the `etcd-server` package; the package's
# own service is stopped and disabled, since the benchmark starts its own members on
# loopback.
#
#   deploy/scripts/etcd.sh install

set -euo pipefail

readonly script_name="etcd.sh"
# shellcheck source=deploy/scripts/common.sh
source "$(dirname "$0")/common.sh"

cmd_install() {
    if command -v etcd >/dev/null 2>&1; then
        command -v etcd
        return
    fi
    command -v apt-get >/dev/null 2>&1 || die "no etcd and no apt-get: install etcd 3.4+ and put it on PATH"
    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null 2>&1 || die "installing etcd-server needs root"
        sudo=(sudo)
    fi
    log "installing etcd-server from the Debian archive"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server >&2 \
        || die "apt-get install etcd-server failed"
    if command -v systemctl >/dev/null 2>&1; then
        "${sudo[@]}" systemctl disable --now etcd >/dev/null 2>&1 || true
    fi
    command -v etcd >/dev/null 2>&1 || die "etcd-server installed but no etcd on PATH"
    command -v etcd
}

case "${1:-}" in
    install) cmd_install ;;
    *) die "usage: $0 install" ;;
esac
