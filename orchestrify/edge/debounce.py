"""Debounce bursts of changes into one regeneration (docker-gen's -wait min:max).

After the first change, wait until no change came for ``min_wait_s``, but never longer
than ``max_wait_s`` in all, so a steady trickle of changes still gets applied. An
*urgent* change (a replica left) is applied ``min_wait_s`` after it, whatever follows.

Leading edge: the first change after an idle period (no fire for ``min_wait_s``) is
applied at once, so a lone change (a new replica turned healthy after a scale-out)
does not wait for quiet; the rest of its burst is batched as above, which costs at
most one extra reload per burst.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

__all__ = ["Debouncer", "fire_at"]


def fire_at(
    *, first: float, last: float, urgent: float | None, min_wait_s: float, max_wait_s: float
) -> float:
    """When a pending burst is due (all times on one monotonic clock, in seconds)."""
    due = min(last + min_wait_s, first + max_wait_s)
    if urgent is not None:
        due = min(due, urgent + min_wait_s)
    return due


class Debouncer:
    def __init__(
        self,
        *,
        min_wait_s: float = 0.2,
        max_wait_s: float = 2.0,
        clock: Callable[[], float] | None = None,
        leading: bool = True,
    ) -> None:
        if not 0 <= min_wait_s <= max_wait_s:
            raise ValueError("need 0 <= min_wait_s <= max_wait_s")
        self.min_wait_s = min_wait_s
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._first: float | None = None
        self._last = 0.0
        self._urgent: float | None = None
        self._poked = asyncio.Event()
        self.leading = leading
        self._fired_at: float | None = None  # None: never fired, so the next change leads

    def _now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    def poke(self, *, urgent: bool = False) -> None:
        now = self._now()
        if self._first is None:
            self._first = now
        self._last = now
        if urgent and self._urgent is None:
            self._urgent = now
        self._poked.set()

    @property
    def pending(self) -> bool:
        return self._first is not None

    async def settled(self) -> None:
        """Wait for a change, then for its burst to settle; resets for the next burst."""
        while True:
            if self._first is None:
                self._poked.clear()
                await self._poked.wait()
                continue
            # No reload for min_wait_s: this change starts a burst rather than continuing
            # one, so it goes at once. Reloads stay bounded at about one per min_wait_s.
            idle = self._fired_at is None or self._first - self._fired_at >= self.min_wait_s
            due = (
                self._first
                if self.leading and idle
                else fire_at(
                    first=self._first,
                    last=self._last,
                    urgent=self._urgent,
                    min_wait_s=self.min_wait_s,
                    max_wait_s=self.max_wait_s,
                )
            )
            now = self._now()
            delay = due - now
            if delay <= 0:
                self._first, self._urgent = None, None
                self._fired_at = now
                return
            self._poked.clear()
            # Wake up early on a new poke to recompute (an urgent poke moves ``due`` in).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poked.wait(), delay)
