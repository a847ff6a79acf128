"""Running a bench as an installation without the test extras would: the one runner
the bench tests share, and the parser of bench/report.py's table.

A bench runs in a subprocess (cwd the checkout, ``PYTHONPATH`` the checkout) in which
pytest, the other test extras and the ``tests`` package cannot be imported, and without
the caller's ``ORCHESTRIFY_*`` variables (a bench starts and addresses its own
components).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "HEADER",
    "NOT_INSTALLED",
    "Row",
    "assert_rows",
    "parse_table",
    "run_bench",
    "run_without_test_extras",
]

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
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRIFY_")}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
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
