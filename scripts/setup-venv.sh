#!/usr/bin/env bash
# Create (or reuse) the project's virtualenv in .venv and install orchestrify into it,
# with the test tools when called with --test. Safe to run any number of times.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
.venv/bin/pip install --quiet --upgrade pip >/dev/null
.venv/bin/pip install --quiet -e ".${extras}"
echo "orchestrify installed in $(pwd)/.venv (activate with: source .venv/bin/activate)"
