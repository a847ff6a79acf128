#!/usr/bin/env bash
# The single-host demo, from a fresh Debian machine: installs what is missing, starts
# the Docker engine, installs orchestrify into .venv, builds the demo image (no
# registry needed), runs `orchestrify up` and deploys the demo service with 3 replicas.
# Ctrl-C stops orchestrify; the containers keep running and the next run adopts them.
#
# Settings (environment): ORCHESTRIFY_DATA_DIR (default ~/.local/state/orchestrify),
# ORCHESTRIFY_PORT (API, default 18080), ORCHESTRIFY_LISTEN (Nginx, default 8080),
# DEMO_REPLICAS (default 3), DEMO_DETACH=1 (deploy, show, then stop orchestrify: for tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-packages.sh
bash scripts/ensure-docker.sh
bash scripts/setup-venv.sh
export PATH="$PWD/.venv/bin:$PATH"

data_dir=${ORCHESTRIFY_DATA_DIR:-$HOME/.local/state/orchestrify}
port=${ORCHESTRIFY_PORT:-18080}
listen=${ORCHESTRIFY_LISTEN:-8080}
replicas=${DEMO_REPLICAS:-3}
export ORCHESTRIFY_URL="http://127.0.0.1:$port"

echo "== building the demo image"
orchestrify demo-image

echo "== starting orchestrify up (API $ORCHESTRIFY_URL, data in $data_dir)"
orchestrify up --data-dir "$data_dir" --port "$port" --listen "$listen" &
up_pid=$!
stop_up() { kill -INT "$up_pid" 2>/dev/null || true; wait "$up_pid" 2>/dev/null || true; }
trap stop_up INT TERM EXIT

for _ in $(seq 1 100); do
    curl -fsS "$ORCHESTRIFY_URL/healthz" >/dev/null 2>&1 && break
    kill -0 "$up_pid" 2>/dev/null || { echo "error: orchestrify up exited; see its output above" >&2; exit 1; }
    sleep 0.2
done
ORCHESTRIFY_TOKEN=$(cat "$data_dir/admin.token")
export ORCHESTRIFY_TOKEN

echo "== deploying the demo service ($replicas replicas)"
if ! orchestrify service inspect demo >/dev/null 2>&1; then
    orchestrify service create orchestrify/demo:latest --name demo --replicas "$replicas" --min 1 --max 6
fi
for _ in $(seq 1 150); do
    healthy=$(orchestrify ps --service demo --json | python3 -c \
        'import json,sys; print(sum(r["state"] == "healthy" for r in json.load(sys.stdin)))')
    [ "$healthy" -ge "$replicas" ] && break
    sleep 0.2
done
orchestrify ps --service demo

if curl -fsS "http://127.0.0.1:$listen/__orchestrify/health" >/dev/null 2>&1; then
    echo "== three requests through Nginx (http://127.0.0.1:$listen/demo/)"
    for _ in 1 2 3; do
        for _ in $(seq 1 25); do
            curl -fsS "http://127.0.0.1:$listen/demo/" 2>/dev/null | head -1 && break
            sleep 0.2
        done
    done
fi

cat <<TXT

orchestrify is running (PID $up_pid). In another shell:
  source .venv/bin/activate
  export ORCHESTRIFY_URL=$ORCHESTRIFY_URL ORCHESTRIFY_TOKEN=\$(cat $data_dir/admin.token)
  orchestrify ps                                   # replicas, nodes, addresses
  curl http://127.0.0.1:$listen/demo/                # through Nginx
  docker kill \$(docker ps -q --filter label=orchestrify.service=demo | head -1)   # watch it heal
  orchestrify service update demo --env GREETING=hi   # a rolling update, one replica at a time
  orchestrify events --since 5m
Ctrl-C stops orchestrify; the containers keep running.
TXT
if [ "${DEMO_DETACH:-0}" = 1 ]; then
    exit 0
fi
wait "$up_pid"
