#!/usr/bin/env bash
# The test command: installs what is missing, starts the Docker engine, then runs the
# linters, the type checker and the whole pytest suite (unit tests with fakes, and
# integration tests against the real Docker engine, Nginx, Prometheus, Alertmanager
# and Ansible). Under CI (CI set) a missing component fails a test instead of skipping.
#
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh -k agent   # extra arguments go to pytest (one process then)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-packages.sh --test
bash scripts/ensure-docker.sh
bash scripts/setup-venv.sh --test
export PATH="$PWD/.venv/bin:$PATH"   # ansible-runner calls ansible-playbook from PATH

echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy"
mypy
echo "== pytest"
# Two pytest processes side by side (the machine has 2 cores, and the integration tests
# mostly wait on SSH, Docker and real failovers): the integration tests one after
# another, as always (they share lab hosts and time real failovers, so never two at
# once), and the fast tests beside them, whose report follows at the end. Integration
# tests marked `beside` (their own processes, no lab host, nothing timed) run in the fast
# tests' stream, which finishes well before the other one.
# With arguments (they go to pytest), or ORCHESTRIFY_TEST_SERIAL=1: one process.
if [ "$#" -gt 0 ] || [ -n "${ORCHESTRIFY_TEST_SERIAL:-}" ]; then
  exec pytest -ra --durations=15 "$@"
fi
fast_log="$(mktemp -t orchestrify-fast-tests.XXXXXX)"
echo "== pytest: the fast tests run beside the integration tests; their report follows"
pytest -ra --durations=5 -m "not integration or beside" >"$fast_log" 2>&1 &
fast_pid=$!
trap 'kill "$fast_pid" 2>/dev/null || true' INT TERM  # an interrupted run stops both
set +e
pytest -ra --durations=15 -m "integration and not beside"
integration_rc=$?
wait "$fast_pid"
fast_rc=$?
set -e
echo "== pytest: the fast tests"
cat "$fast_log"
rm -f "$fast_log"
if [ "$integration_rc" -eq 0 ] && [ "$fast_rc" -eq 0 ]; then
  exit 0
fi
echo "== pytest failed: integration tests exit $integration_rc, fast tests exit $fast_rc" >&2
exit 1
