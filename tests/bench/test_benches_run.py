"""Every benchmark runs from the installed package with the runtime dependencies only,
and prints its table (issue 14).

Each bench runs with ``--quick`` in a subprocess (cwd the checkout, ``PYTHONPATH=.``) in
which pytest, the other test extras and the ``tests`` package cannot be imported, as in
an environment installed without ``.[test]``. The tests check that the table printed:
its header and each of its rows, never the figures in them (no timing is asserted).
The benches that need Docker, Nginx or PostgreSQL are integration tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.postgres import postgres_available
from tests.conftest import require, require_binary, require_docker

ROOT = Path(__file__).resolve().parents[2]
# The test extras (pyproject's [test]) by module name, and the test suite itself.
NOT_INSTALLED = (
    "tests",
    "pytest",
    "_pytest",
    "pytest_timeout",
    "schemathesis",
    "hypothesis",
    "mypy",
    "ansiblelint",
)
HEADER = ["scenario", "figure", "measured", "goal", "met"]


@dataclass(frozen=True)
class Row:
    scenario: str
    figure: str
    measured: str
    goal: str
    met: str


def run_without_test_extras(*argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python argv...`` as ``__main__`` with the test extras made unimportable."""
    code = (
        "import runpy, sys\n"
        f"for name in {NOT_INSTALLED!r}:\n"
        "    sys.modules[name] = None  # import fails: not installed\n"
        f"sys.argv = {list(argv)!r}\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": "."},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_bench(name: str, *args: str, timeout: float = 240) -> tuple[str, list[Row]]:
    """Run ``bench/NAME.py --quick ARGS``; the title and rows of the table it printed."""
    proc = run_without_test_extras(f"bench/{name}.py", "--quick", *args, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return parse_table(proc.stdout)


def parse_table(out: str) -> tuple[str, list[Row]]:
    """bench/report.py's table: a title, the header, a rule of dashes (one run per
    column, which gives the column widths), then one line per figure."""
    lines = out.splitlines()
    at = next(
        (i for i, line in enumerate(lines) if line.split() == HEADER and i > 0),
        None,
    )
    assert at is not None, f"no table header in:\n{out}"
    rule = lines[at + 1]
    assert set(rule.replace(" ", "")) == {"-"}, rule
    spans: list[tuple[int, int]] = []
    col = 0
    for dashes in rule.split("  "):
        if dashes:
            spans.append((col, col + len(dashes)))
        col += len(dashes) + 2
    assert len(spans) == len(HEADER), rule
    rows = []
    for line in lines[at + 2 :]:
        if not line.strip():
            break
        cells = [line[a:b].strip() for a, b in spans]
        rows.append(Row(*cells))
    return lines[at - 1], rows


def assert_rows(rows: list[Row], expected: list[tuple[str, str]]) -> None:
    """Each (scenario, figure) of ``expected`` printed once, in that order, with a
    measured value and a goal column; a scenario is matched by its beginning."""
    got = [(r.scenario, r.figure) for r in rows]
    assert len(rows) == len(expected), got
    for row, (scenario, figure) in zip(rows, expected, strict=True):
        assert row.scenario.startswith(scenario) and row.figure == figure, (row, got)
        assert row.measured and row.goal and row.met in ("yes", "NO", "-"), row


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


@pytest.mark.integration
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
