"""Every benchmark runs from the installed package with the runtime dependencies only,
and prints its table (issue 14).

Each bench runs with ``--quick`` in a subprocess (cwd the checkout, ``PYTHONPATH=.``) in
which pytest, the other test extras and the ``tests`` package cannot be imported, as in
an environment installed without ``.[test]``. The tests check that the table printed:
its header and each of its rows, never the figures in them (no timing is asserted).
The benches that need Docker, Nginx or PostgreSQL are integration tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.postgres import postgres_available
from tests.bench.runner import (
    Row,
    assert_rows,
    parse_table,
    run_bench,
    run_without_test_extras,
)
from tests.conftest import require, require_binary, require_docker

# --- the runner itself ------------------------------------------------------------------


def test_the_runner_makes_the_test_extras_unimportable(tmp_path: Path) -> None:
    """Without this, a bench importing tests.* or pytest would pass the tests below."""
    script = tmp_path / "imports.py"
    script.write_text(
        "import importlib, sys\n"
        "for name in ('tests.conftest', 'pytest', 'bench.report', 'orchestrify'):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError:\n"
        "        print(name, 'missing')\n"
        "    else:\n"
        "        print(name, 'imported')\n"
    )
    proc = run_without_test_extras(str(script), timeout=60)
    assert proc.stdout.splitlines() == [
        "tests.conftest missing",
        "pytest missing",
        "bench.report imported",
        "orchestrify imported",
    ], proc.stderr


def test_the_parser_reads_the_report_table() -> None:
    from bench.report import Report, at_most

    report = Report("a title")
    report.add("a long scenario name", "p99", 12.5, "ms", at_most(100, "ms"))
    report.add("b", "failed", 0)
    title, rows = parse_table("progress line\n" + report.table() + "\n")
    assert title == "a title"
    assert rows == [
        Row("a long scenario name", "p99", "12.5 ms", "≤ 100 ms", "yes"),
        Row("b", "failed", "0", "-", "-"),
    ]


# --- benches with no outside component: fast tests ---------------------------------------


def test_scheduler_prints_its_table() -> None:
    title, rows = run_bench("scheduler", timeout=120)
    assert title.startswith("scheduler")
    figures = ["placements", "seconds", "unplaced", "per-node spread (max - min)"]
    assert_rows(
        rows,
        [("1 service", f) for f in figures] + [("10 services", f) for f in figures],
    )


def test_node_reads_prints_its_table() -> None:
    title, rows = run_bench("node_reads", timeout=120)
    assert title.startswith("node reads")
    figures = [
        "snapshot, kept (median CPU)",
        "node list, kept (median CPU)",
        "snapshot, afresh (median CPU)",
        "node list, afresh (median CPU)",
        "snapshot: afresh / kept",
        "node list: afresh / kept",
    ]
    assert_rows(rows, [("100 nodes", f) for f in figures])


def test_ui_fleet_prints_its_table() -> None:
    title, rows = run_bench("ui_fleet", timeout=120)
    assert title.startswith("status page")
    figures = [
        "GET /ui/ median",
        "GET /ui/ slowest",
        "page size",
        "live table body median",
        "live table body slowest",
        "body size",
    ]
    assert_rows(rows, [("20 nodes, 100 replicas", f) for f in figures])


def test_alert_flood_prints_its_table() -> None:
    title, rows = run_bench("alert_flood", timeout=180)
    assert title.startswith("alert flood")
    figures = [
        "quiet stored after posted",
        "quiet decided after posted",
        "quiet answered after posted",
        "flood answered (last call)",
        "flood decided (last)",
        "flood decisions before quiet's",
        "flood decisions after quiet's",
        "flood decisions quiet waited behind",
    ]
    assert_rows(
        rows,
        [("1 x 300 alerts", f) for f in figures] + [("3 x 100 alerts", f) for f in figures],
    )


# --- benches on the real Docker engine, Nginx, PostgreSQL: integration tests -------------


@pytest.mark.integration
def test_selfheal_prints_its_table() -> None:
    require_docker().close()
    title, rows = run_bench("selfheal")
    assert title.startswith("self-healing")
    stats = ["median", "p95", "min", "max"]
    assert_rows(
        rows,
        [("docker kill -> healthy replacement (n=3)", f) for f in stats]
        + [("health=500 -> healthy replacement (n=1)", f) for f in stats],
    )


# beside: its own controller on a free port and its own browser, and no figure is checked.
@pytest.mark.integration
@pytest.mark.beside
def test_ui_fleet_in_a_browser_prints_its_table() -> None:
    require_binary("chromium")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        require(False, "Playwright for Python (the test extras: pip install -e '.[test]')")
    title, rows = run_bench("ui_fleet", "--browser", timeout=180)
    assert title.startswith("status page: the fleet page in Chromium")
    figures = [
        "page loaded (loadEventEnd) median",
        "page loaded (loadEventEnd) slowest",
        "response end median",
        "DOMContentLoaded median",
        "first frame after load median",
        "first frame after load slowest",
        "last row and load, wall clock median",
        "last row and load, wall clock slowest",
        "live update shown median",
        "live update shown slowest",
    ]
    assert_rows(rows, [("20 nodes, 100 replicas", f) for f in figures])
    # Every figure measured (a missing timing prints n/a), whatever its value.
    assert all(row.measured.endswith(" ms") for row in rows), rows


@pytest.mark.integration
@pytest.mark.beside  # its own controller, agents and containers; no figure is checked
def test_logs_prints_its_table() -> None:
    require_docker().close()
    title, rows = run_bench("logs")
    assert title.startswith("service logs: 3 replicas on 2 nodes")
    api = "GET /v1/services/NAME/logs"
    follow = "controller while following"
    assert_rows(
        rows,
        [("docker logs, one replica", f) for f in ("lines", "lines/s")]
        + [(api, f) for f in ("lines", "notices", "lines/s", "vs docker logs")]
        + [("orchestrify service logs | wc", "lines/s")]
        + [(follow, f) for f in ("lines followed", "RSS before", "RSS max", "RSS growth")],
    )
    lines = {r.figure: r.measured for r in rows if r.scenario == api}
    # Every numbered line of the 3 replicas (3 x 3,000), plus their health checks' lines.
    assert int(lines["lines"].replace(",", "")) >= 9_000 and lines["notices"] == "0"


@pytest.mark.integration
def test_reload_under_load_prints_its_table() -> None:
    require_docker().close()
    require_binary("nginx")
    require_binary("wrk")
    title, rows = run_bench("reload_under_load")
    assert title.startswith("Nginx reloads under load")
    errors = [f"failed: socket errors, {k}" for k in ("connect", "read", "write", "timeout")]
    churn = ["reloads applied", "failed applies", "requests", "failed requests"]
    churn += ["failed: non-2xx", *errors, "p50", "p99"]
    hop = ["direct p50", "direct p99", "through Nginx p50", "through Nginx p99"]
    hop += ["added p50", "added p99"]
    assert_rows(
        rows,
        [("4 s, a replica out and in every 1 s", f) for f in churn]
        + [("Nginx hop, no reloads", f) for f in hop],
    )


@pytest.mark.integration
def test_outage_prints_its_table() -> None:
    require_docker().close()
    require_binary("nginx")
    title, rows = run_bench("outage")
    assert title.startswith("outage drills")
    figures = ["containers replaced", "requests", "failed requests", "whole again after"]
    assert_rows(rows, [("controller-down (2 s)", f) for f in figures])


# beside: its own PostgreSQL, controllers and Nginx on free ports, and only the rows are
# checked, never a figure: it runs beside the timed integration tests.
@pytest.mark.integration
@pytest.mark.beside
def test_failover_prints_its_table() -> None:
    why = postgres_available()
    require(why is None, why or "")
    require_docker().close()
    require_binary("nginx")
    title, rows = run_bench("failover")
    assert title.startswith("failover of the leading controller")
    per_kill = ["new leader after", "first decision after", "requests", "failed requests"]
    per_kill += ["containers replaced"]
    overall = ["new leader after (median)", "first decision after (median)"]
    overall += ["failed requests", "containers replaced"]
    assert_rows(
        rows, [("kill 1: c1 -> ", f) for f in per_kill] + [("all 1 kill", f) for f in overall]
    )
