"""/v1/events: the audit trail of every alert, decision and action."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta

from fastapi import HTTPException, Query

from orchestrify.controller.border import api_router
from orchestrify.controller.deps import Admin, State
from orchestrify.models import JSON_INT_MAX, Event
from orchestrify.store import utcnow

router = api_router(prefix="/v1/events", tags=["events"], dependencies=[Admin])
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = r"[0-9]+(\.[0-9]+)?[smhd]"
# A calendar date that exists: days 29-31 only in the months that have them, and
# February 29th only in leap years (every 4th year, but of the centuries every 4th).
_YEAR = r"([0-9]{3}[1-9]|[0-9]{2}[1-9][0-9]|[0-9][1-9][0-9]{2}|[1-9][0-9]{3})"
_LEAP_YEAR = r"([0-9]{2}(0[48]|[2468][048]|[13579][26])|(0[48]|[2468][048]|[13579][26])00)"
_DATE = (
    rf"({_YEAR}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])"
    rf"|{_YEAR}-(0[13-9]|1[0-2])-(29|30)"
    rf"|{_YEAR}-(0[13578]|1[02])-31"
    rf"|{_LEAP_YEAR}-02-29)"
)
_TIME = r"([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?"
_OFFSET = r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
# What ``since`` takes, stated as the query parameter's pattern: exactly what parse_since
# reads, so no value the schema allows is refused.
SINCE_PATTERN = rf"^({_DURATION}|{_DATE}(T{_TIME}{_OFFSET}?)?)$"
_SINCE = re.compile(SINCE_PATTERN)


def parse_since(value: str) -> datetime:
    """A duration back from now (``90s``, ``15m``, ``2h``, ``1d``) or an ISO 8601 date or
    time (``2026-05-01``, ``2026-05-01T12:00:00Z``; without an offset, local time).

    A time beyond the calendar's ends (a duration back past the year 1, an offset that
    crosses it) is clamped to that end: it asks for every event, or for none."""
    if _SINCE.fullmatch(value) is None:
        raise ValueError(
            f"since: {value!r} is neither a duration like 15m nor an ISO 8601 date or time"
        )
    if value[-1] in _UNITS:
        try:
            return utcnow() - timedelta(seconds=float(value[:-1]) * _UNITS[value[-1]])
        except (OverflowError, ValueError):
            return datetime.min.replace(tzinfo=UTC)  # before the year 1: every event
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    # The store compares wall-clock UTC (SQLite keeps no offset), so convert to UTC here;
    # a naive time is taken as local time.
    try:
        return (dt if dt.tzinfo else dt.astimezone()).astimezone(UTC)
    except (OverflowError, ValueError):
        return (datetime.min if dt.year == 1 else datetime.max).replace(tzinfo=UTC)


@router.get("", response_model=list[Event])
async def list_events(
    state: State,
    service: str | None = Query(None),
    since: str | None = Query(
        None,
        max_length=64,
        # stated, and checked by parse_since (a 422 with a readable message)
        json_schema_extra={"pattern": SINCE_PATTERN},
        description="Duration back from now (90s, 15m, 2h, 1d) or an ISO 8601 date or time "
        "(2026-05-01, 2026-05-01T12:00:00Z; local time without an offset).",
    ),
    kind: str | None = Query(None, description="alert, decision, action, node, replica, job"),
    after: int | None = Query(
        None, ge=0, le=JSON_INT_MAX, description="Only events with a larger id (for following)."
    ),
    limit: int = Query(500, ge=1, le=10000),
    wait: float = Query(
        0,
        ge=0,
        le=300,
        description="With `after`: when no event matches yet, wait up to this many seconds "
        "(at most the controller's watch timeout) for one, written through any controller "
        "(a long-poll; an empty list when none came).",
    ),
) -> list[Event]:
    """Events, oldest first. Followers pass the last id they saw as ``after`` (with
    ``wait`` to long-poll instead of polling)."""
    try:
        since_dt = parse_since(since) if since is not None else None  # "" is a 422 too
    except ValueError as exc:
        raise HTTPException(
            422, detail=[{"loc": ["query", "since"], "msg": str(exc), "type": "value_error"}]
        ) from exc

    def matching() -> list[Event]:
        return state.store.list_events(
            service=service, since=since_dt, kind=kind, after_id=after, limit=limit
        )

    # The version is read before the query: an event written between the two wakes it.
    version = state.feed.version("events")
    rows = await asyncio.to_thread(matching)
    if rows or after is None or wait <= 0:
        return rows
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(wait, state.settings.watch_timeout_s)
    while not rows and not state.feed.closed:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        seen = await state.feed.wait("events", version, remaining)
        if seen == version:
            break  # timed out (or shutting down) with nothing new
        version = seen
        rows = await asyncio.to_thread(matching)
    return rows
