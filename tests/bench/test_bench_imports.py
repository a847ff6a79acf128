"""No benchmark imports the test suite or a test extra (issue 14): shared helpers live in
bench/, and tests may import them, not the other way round. Checked on the source (every
import statement, also those inside functions), so it stays true for new benches."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
FORBIDDEN = {"tests", "pytest", "_pytest", "pytest_timeout", "schemathesis", "hypothesis"}


# Benches whose helpers another change of issue 14 moves out of tests/ (remove the entry
# when it has: the test then passes, and a strict xfail fails to say so).
def imported_modules(path: Path) -> set[str]:
    """The top-level names of every module ``path`` imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


BENCHES = sorted(BENCH.glob("*.py"))


@pytest.mark.parametrize("path", BENCHES, ids=[p.name for p in BENCHES])
def test_a_bench_imports_no_test_code(path: Path) -> None:
    assert not imported_modules(path) & FORBIDDEN


def test_the_check_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import os\n\ndef f():\n    from tests.agent import x\n")
    assert imported_modules(sample) == {"os", "tests"}
