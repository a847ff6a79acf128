#!/usr/bin/env bash
# The test command: installs what is missing, starts the Docker engine, then runs the
# linters, the type checker and the whole pytest suite (unit tests with fakes, and
# integration tests against the real Docker engine, Nginx, Prometheus, Alertmanager
# and Ansible). Under CI (CI set) a missing component fails a test instead of skipping.
#
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh -k agent   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-packages.sh
bash scripts/ensure-docker.sh
bash scripts/setup-venv.sh --test
export PATH="$PWD/.venv/bin:$PATH"   # ansible-runner calls ansible-playbook from PATH

echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy"
mypy
echo "== pytest"
# Two workers: the integration tests run one after another on one of them (one xdist
# group, see tests/conftest.py), the fast tests on the other. `-n 0` runs it all serially.
exec pytest -ra --durations=15 -n 2 --dist loadgroup "$@"
