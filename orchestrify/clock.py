"""The one wall clock orchestrify reads, in one place so that a test (or a drill) can
step it: patch ``orchestrify.clock.utcnow`` and every store timestamp, drain deadline and
event time follows.

Wall time is for display and for deadlines the user set (drain periods); node liveness
never compares wall times (see ``orchestrify.controller.liveness``), so a clock step
cannot mark a node down.
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["utcnow"]


def utcnow() -> datetime:
    """The current wall-clock time, in UTC."""
    return datetime.now(UTC)
