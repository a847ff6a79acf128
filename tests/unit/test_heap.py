"""settle_heap: start-up objects frozen out of every collection, young collections rarer;
once per process. Run in a fresh interpreter (it changes the process's collector)."""

from __future__ import annotations

import json
import subprocess
import sys

from orchestrify.heap import YOUNG_THRESHOLD

_PROBE = """
import gc, json
from orchestrify.heap import settle_heap
before = (gc.get_freeze_count(), gc.get_threshold())
settle_heap()
frozen = gc.get_freeze_count()
garbage = [[] for _ in range(10)]
for item in garbage:
    item.append(item)  # reference cycles made after start-up stay collectable
del garbage, item
settle_heap()  # once per process: the cycles above are not frozen
print(json.dumps({"before": before, "frozen": frozen, "again": gc.get_freeze_count(),
                  "threshold": gc.get_threshold(), "collected": gc.collect()}))
"""


def test_settle_heap_freezes_start_up_once_and_collects_young_objects_less_often() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    seen = json.loads(out.stdout)
    assert seen["before"] == [0, [700, 10, 10]]  # CPython's defaults before
    assert seen["frozen"] > 1_000  # the modules, classes and functions of start-up
    assert seen["again"] == seen["frozen"]
    assert seen["threshold"] == [YOUNG_THRESHOLD, 10, 10]
    assert seen["collected"] >= 10  # the collector still finds new cycles
