"""How late the controller's event loop runs what is due: its lag, as a histogram.

Every request, long-poll wake-up and reconcile step of the controller runs on one event
loop. Work that blocks it (a synchronous store call, a big JSON encoding) delays all of
them at once, which request latencies alone do not single out. ``LoopLagMonitor`` is a
task that sleeps a short, fixed interval and records how much later than asked it woke:
near zero on an idle loop, and as long as the longest blocking stretch otherwise.

It measures on the loop's own monotonic clock, costs one wake-up per interval, and
observes into ``orchestrify_event_loop_lag_seconds`` (``ControllerMetrics``), whose fine
buckets around the 20 ms goal let a reader (``bench/fleet.py``) take a p99 from two
scrapes.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

__all__ = ["LOOP_LAG_BUCKETS", "LoopLagMonitor"]

# Seconds. Fine below 50 ms, where a healthy loop's lag lies and where the goal
# (p99 <= 20 ms) is judged; coarse above, where only "how bad" matters.
LOOP_LAG_BUCKETS: tuple[float, ...] = (
    0.001,
    0.002,
    0.005,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

DEFAULT_INTERVAL_S = 0.05
"""Seconds between wake-ups: 20 samples a second is enough for a p99 over a minute, and
costs the loop nothing measurable."""


class Observer(Protocol):
    """What the monitor records into (a prometheus_client ``Histogram``)."""

    def observe(self, amount: float) -> None: ...


class LoopLagMonitor:
    """Sleeps ``interval_s`` on the running loop, over and over, and observes how late it
    woke into ``histogram``. ``start()`` in the loop to measure, ``await stop()`` to end."""

    def __init__(self, histogram: Observer, *, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self.histogram = histogram
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> LoopLagMonitor:
        """Begin measuring on the running loop; returns itself (one line to hook up)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="loop-lag")
        return self

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            # Never negative: the loop may wake a hair early within its clock resolution.
            self.histogram.observe(max(0.0, loop.time() - asked))
