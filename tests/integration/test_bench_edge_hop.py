"""bench/edge_hop.py runs on the runtime dependencies alone and prints its table.

It runs ``--quick`` in a subprocess (cwd the checkout, ``PYTHONPATH=.``) in which
pytest, the other test extras and the ``tests`` package cannot be imported, as in an
environment installed without ``.[test]``. Only the table's shape is checked, never its
figures (no timing is asserted). Needs Docker, nginx and wrk.
"""

from __future__ import annotations

import pytest

from bench.labels import TEST_LABEL
from tests.bench.runner import run_without_test_extras
from tests.conftest import require_binary, require_docker

pytestmark = pytest.mark.integration
PATHS = ("direct", "plain nginx", "edge", "edge, no telemetry")


def test_edge_hop_quick_prints_its_table() -> None:
    client = require_docker()
    require_binary("nginx")
    require_binary("wrk")
    backends = {"label": TEST_LABEL, "name": "orchestrify-edge-backend-"}
    before = {c.id for c in client.containers.list(all=True, filters=backends)}
    proc = run_without_test_extras("bench/edge_hop.py", "--quick", timeout=300)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr[-4000:]}"
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("edge hop: wrk -t2 -c16, 2 s per path")
    assert lines[1].split() == ["scenario", "figure", "measured", "goal", "met"]
    rows = lines[3:]
    for path in PATHS:
        for figure in ("requests/s", "p50", "p99"):
            assert any(r.startswith(f"{path} ") and f" {figure} " in r for r in rows), (
                path,
                figure,
            )
    goals = [r for r in rows if "≥" in r or "≤" in r]
    assert goals and all(r.rstrip().endswith(("yes", "NO")) for r in goals)
    assert any("requests counted by /metrics" in r for r in rows)
    # Everything it started is gone: the backend container and its image.
    after = {c.id for c in client.containers.list(all=True, filters=backends)}
    assert after <= before
    assert not client.images.list(name="orchestrify-test/edge-backend")
    client.close()
