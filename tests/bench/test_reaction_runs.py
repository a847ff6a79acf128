"""bench/reaction.py runs from the installed package with the runtime dependencies only,
and prints its table (issue 14).

It runs with ``--quick`` in a subprocess (cwd the checkout, ``PYTHONPATH=.``) in which
pytest, the other test extras and the ``tests`` package cannot be imported, as in an
environment installed without ``.[test]``. The tests check that the table printed, its
header and each of its rows, never the figures in them (no timing is asserted). Part 1
needs nothing outside; parts 2 and 3 need Docker, Nginx, Prometheus and Alertmanager.
"""

from __future__ import annotations

import pytest

from tests.bench.runner import assert_rows, run_bench
from tests.conftest import require_binary, require_docker

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


def _check(args: tuple[str, ...], expected: list[tuple[str, str]], *, timeout: float) -> None:
    """``bench/reaction.py --quick ARGS`` prints its table with exactly these rows."""
    title, rows = run_bench("reaction", *args, timeout=timeout)
    assert title.startswith("reaction:"), title
    assert [(r.scenario, r.figure) for r in rows] == expected
    assert_rows(rows, expected)


def test_part1_prints_its_table_without_the_test_extras() -> None:
    _check(("--parts", "1"), PART1, timeout=180)


# beside: its own Docker containers, Nginx, Prometheus and Alertmanager on free ports, and
# only the rows are checked, never a figure: it runs beside the timed integration tests.
@pytest.mark.integration
@pytest.mark.beside
def test_the_whole_loop_prints_its_table_without_the_test_extras() -> None:
    require_docker().close()
    for binary in ("nginx", "prometheus", "prometheus-alertmanager"):
        require_binary(binary)
    _check(("--parts", "2,3"), PART2 + PART3, timeout=600)
