#!/usr/bin/env bash
# Install the Debian packages orchestrify's real components need, skipping any already
# present; safe to run any number of times.
#
#   bash scripts/ensure-packages.sh          # what the single-host demo runs on (demo.sh)
#   bash scripts/ensure-packages.sh --test   # and what the tests run too (test.sh, CI)
#
# Installing them starts nothing: scripts/ensure-docker.sh starts the Docker engine, and
# tests run nginx, Prometheus and Alertmanager as their own processes.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

# package:command that proves it is installed. The demo (`orchestrify up`, the demo
# image, the edge's Nginx) needs these:
PACKAGES=(
    docker.io:dockerd
    iptables:iptables
    nginx:nginx
    busybox-static:busybox
    curl:curl
    python3-venv:python3-venv
)
# The tests add the monitoring stack, lab hosts (debootstrap, ssh), load (wrk), a
# throwaway PostgreSQL and the status page's browser.
TEST_PACKAGES=(
    prometheus:prometheus
    prometheus-alertmanager:prometheus-alertmanager
    prometheus-node-exporter:prometheus-node-exporter
    debootstrap:debootstrap
    wrk:wrk
    openssh-client:ssh
    postgresql:postgresql
    chromium:chromium
)
case "${1:-}" in
    "") ;;
    --test) PACKAGES+=("${TEST_PACKAGES[@]}") ;;
    *) echo "usage: $0 [--test]" >&2; exit 2 ;;
esac

is_installed() {  # PACKAGE COMMAND
    if [ "$1" = python3-venv ]; then
        # Debian's python3 needs python3-venv for `python3 -m venv`; another Python
        # (pyenv, a CI image) may have it built in: ask the interpreter itself.
        python3 -c 'import ensurepip, venv' >/dev/null 2>&1
    elif [ "$1" = postgresql ]; then
        # The tests run a throwaway PostgreSQL 15 cluster (initdb, pg_ctl) as its own
        # process; Debian keeps those tools off PATH, under the version's own dir.
        [ -x /usr/lib/postgresql/15/bin/initdb ]
    elif [ "$1" = busybox-static ]; then
        # A dynamically linked busybox (package "busybox") also answers to the name, but
        # cannot run in the demo's empty image: ask dpkg for the static one.
        dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'
    else
        command -v "$2" >/dev/null 2>&1
    fi
}

missing=()
for entry in "${PACKAGES[@]}"; do
    package=${entry%%:*}
    command=${entry#*:}
    is_installed "$package" "$command" || missing+=("$package")
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "ensure-packages: all present" >&2
    exit 0
fi

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

echo "ensure-packages: installing ${missing[*]}" >&2
as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${missing[@]}"
