"""The scheduler benchmark runs and places everything (no timing asserted)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench" / "scheduler.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_scheduler", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_bench_places_everything_balanced() -> None:
    bench = load_bench()
    results = bench.run(nodes=20, replicas=200, services=10)
    assert [r.placed for r in results] == [200, 200]
    assert all(r.unplaced == 0 for r in results)
    assert all(r.max_minus_min <= 1 for r in results)
    table = bench.report(results).table()
    assert "placements" in table and "1 service" in table and "10 services" in table
