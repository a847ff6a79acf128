"""Polling until something holds, for the labs, the benchmarks and the tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["wait_for"]

T = TypeVar("T")


def wait_for(
    what: str, check: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.05
) -> T:
    """Poll ``check`` every ``interval`` seconds until it returns something truthy, and
    return that. An exception from ``check`` counts as "not yet" (what is polled may not
    exist yet). AssertionError naming ``what`` and the last result at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # not there yet
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last: {last!r}")
