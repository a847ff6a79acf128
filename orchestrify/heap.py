"""Garbage collection set for a long-running server with one event loop.

Python's cyclic garbage collector stops the whole process while it runs, and a full
collection walks every tracked object. Measured in the controller under 1,000 simulated
agents (``bench/fleet.py``): full collections of about 400,000 objects (its modules,
pydantic schemas and routes, plus a thousand parked long-polls) took 250-500 ms, every
2-3 s. Every request in flight waited that long, and they were its event loop's p99 lag.

``settle_heap`` is called once the program has started (modules imported, app built):

- ``gc.freeze()`` moves everything alive then (about 160,000 objects that live as long
  as the process) to a permanent generation that no collection walks again, as
  Instagram's servers do (and the ``gc`` docs suggest for long-lived state);
- a much higher young-generation threshold (``YOUNG_THRESHOLD`` allocations instead of
  700): a request's objects are mostly freed by reference counting before a collection
  sees them, instead of being promoted to older generations.

Why so high. A young collection walks more than the allocations that triggered it: it
walks everything young that is still alive (a reconciler snapshot, a node list being
built, a batch of rows), and those hardly ever die in it. Measured under 1,000 simulated
agents: at 10,000, each young collection walked 20,000-90,000 objects, found 10 to a few
hundred to free, and took 10-60 ms, about once a second; with the older collections it
triggered, 1.3 s of pauses in a minute, and the loop's lag p99 was 28-37 ms (goal 20).
At 100,000 there are a handful of young collections a minute (60-120 ms each), under
0.5 s of pauses, the loop's lag p99 is 10-20 ms, and the resident memory is the same
(210 MB): few of the objects between two collections are still alive at the second.

The collector stays on: reference cycles are still found, only less often and over
fewer objects.
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG_THRESHOLD", "settle_heap"]

YOUNG_THRESHOLD = 100_000
"""Allocations (net of frees) between young-generation collections (CPython's default:
700); why this many: the module's docstring."""


_settled = False


def settle_heap() -> None:
    """Collect what start-up left behind, freeze the rest, and collect less often; once
    per process (a test that starts servers one after another freezes nothing of them)."""
    global _settled
    if _settled:
        return
    _settled = True
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
