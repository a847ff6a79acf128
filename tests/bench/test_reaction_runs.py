"""bench/reaction.py runs from the installed package with the runtime dependencies only,
and prints its table (issue 14).

It runs with ``--quick`` in a subprocess (cwd the checkout, ``PYTHONPATH=.``) in which
pytest, the other test extras and the ``tests`` package cannot be imported, as in an
environment installed without ``.[test]``. The tests check that the table printed, its
header and each of its rows, never the figures in them (no timing is asserted). Part 1
needs nothing outside; parts 2 and 3 need Docker, Nginx, Prometheus and Alertmanager.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_binary, require_docker

ROOT = Path(__file__).resolve().parents[2]
NOT_INSTALLED = ("tests", "pytest", "_pytest", "pytest_timeout", "schemathesis", "hypothesis")
HEADER = ["scenario", "figure", "measured", "goal", "met"]

PART1 = [
    (f"decision per notification, {name} (n=20)", figure)
    for name in ("pure", "http dry-run", "http /healthz", "http acting")
    for figure in ("median", "p95")
]
PART2 = [
    ("webhook -> serving (n=1)", f"{stage}, median")
    for stage in (
        "webhook answered",
        "container up",
        "replica healthy",
        "in nginx upstream",
        "serving via nginx",
    )
] + [("webhook -> serving (n=1)", "serving via nginx, p95")]
BREACH = "breach -> serving, fast profile (n=1)"
PART3 = (
    [
        (BREACH, f"{stage}, median")
        for stage in (
            "pending in Prometheus",
            "firing in Prometheus",
            "webhook received",
            "scale-out decided",
            "new replica healthy",
            "serving via nginx",
        )
    ]
    + [
        (BREACH, "serving via nginx, p95"),
        (BREACH, "computed breach -> webhook, best"),
        (BREACH, "computed breach -> webhook, worst"),
        (BREACH, "Prometheus CPU (% of a core)"),
    ]
    + [
        (f"{what}, fast profile", figure)
        for what in ("2 s blip under load", "one slow request, no other traffic")
        for figure in (
            "alert went pending",
            "alert active for (longest)",
            "alert fired",
            "scale-outs",
        )
    ]
)


def run_reaction(*args: str, timeout: float) -> list[tuple[str, str, str, str, str]]:
    """``bench/reaction.py --quick ARGS`` without the test extras; the table's rows."""
    code = (
        "import runpy, sys\n"
        f"for name in {NOT_INSTALLED!r}:\n"
        "    sys.modules[name] = None  # import fails: not installed\n"
        f"sys.argv = {['bench/reaction.py', '--quick', *args]!r}\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": "."},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"
    lines = proc.stdout.splitlines()
    at = next((i for i, line in enumerate(lines) if line.split() == HEADER), None)
    assert at is not None and at > 0, f"no table in:\n{proc.stdout}"
    assert lines[at - 1].startswith("reaction:"), lines[at - 1]
    rule = lines[at + 1]
    spans, col = [], 0
    for dashes in rule.split("  "):
        spans.append((col, col + len(dashes)))
        col += len(dashes) + 2
    assert len(spans) == len(HEADER), rule
    rows = []
    for line in lines[at + 2 :]:
        a, b, c, d, e = (line[x:y].strip() for x, y in spans)
        rows.append((a, b, c, d, e))
    return rows


def _check(rows: list[tuple[str, str, str, str, str]], expected: list[tuple[str, str]]) -> None:
    assert [(r[0], r[1]) for r in rows] == expected
    for row in rows:
        assert row[2] and row[3] and row[4] in ("yes", "NO", "-"), row


def test_part1_prints_its_table_without_the_test_extras() -> None:
    _check(run_reaction("--parts", "1", timeout=180), PART1)


@pytest.mark.integration
def test_the_whole_loop_prints_its_table_without_the_test_extras() -> None:
    require_docker().close()
    for binary in ("nginx", "prometheus", "prometheus-alertmanager"):
        require_binary(binary)
    _check(run_reaction("--parts", "2,3", timeout=600), PART2 + PART3)
