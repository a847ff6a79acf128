#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine; safe to run any number of times.
#
# Machines here have no systemd as PID 1, so the engine is started as a plain
# background process with its log in /var/log/dockerd.log.
# Overrides: ENSURE_DOCKER_WAIT_SECONDS (default 30), DOCKERD_LOG.
set -euo pipefail

WAIT_SECONDS=${ENSURE_DOCKER_WAIT_SECONDS:-30}
LOG=${DOCKERD_LOG:-/var/log/dockerd.log}
PIDFILE=/var/run/docker.pid  # written by dockerd itself
export PATH="$PATH:/usr/sbin:/sbin"

if docker info >/dev/null 2>&1; then
    exit 0
fi

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
    echo "ensure-docker: installing docker.io and iptables" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        docker.io iptables
fi

# Another run (or someone else) may have started dockerd already: wait, do not start a second.
if [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    echo "ensure-docker: dockerd already running (pid $(cat "$PIDFILE")), waiting for it" >&2
else
    echo "ensure-docker: starting dockerd, log in $LOG" >&2
    as_root sh -c "nohup dockerd >'$LOG' 2>&1 &"
fi

for _ in $(seq "$WAIT_SECONDS"); do
    if docker info >/dev/null 2>&1; then
        echo "ensure-docker: Docker engine is up" >&2
        exit 0
    fi
    sleep 1
done

echo "ensure-docker: the Docker engine did not answer within ${WAIT_SECONDS}s; last lines of $LOG:" >&2
tail -n 20 "$LOG" >&2 || true
exit 1
