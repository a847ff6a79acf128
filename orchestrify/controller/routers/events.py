"""/v1/events: the audit trail of every alert, decision and action."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from fastapi import HTTPException, Query

from orchestrify.controller.border import api_router
from orchestrify.controller.deps import Admin, State
from orchestrify.models import INT64_MAX, Event
from orchestrify.store import utcnow

router = api_router(prefix="/v1/events", tags=["events"], dependencies=[Admin])
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(value: str) -> datetime:
    """A duration back from now (``90s``, ``15m``, ``2h``, ``1d``) or an ISO 8601 time."""
    m = _DURATION.match(value.strip())
    if m:
        try:
            return utcnow() - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
        except (OverflowError, ValueError) as exc:
            raise ValueError(f"since: {value!r} reaches back before the year 1") from exc
    try:
        dt = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(
            f"since: {value!r} is neither a duration like 15m nor an ISO 8601 time"
        ) from exc
    # The store compares wall-clock UTC (SQLite keeps no offset), so convert to UTC here;
    # a naive time is taken as local time. At the ends of the calendar (year 1 or 9999)
    # the conversion leaves it: that is a 422 too, not an OverflowError.
    try:
        return (dt if dt.tzinfo else dt.astimezone()).astimezone(UTC)
    except (OverflowError, ValueError) as exc:
        raise ValueError(f"since: {value!r} is out of range once converted to UTC") from exc


@router.get("", response_model=list[Event])
def list_events(
    state: State,
    service: str | None = Query(None),
    since: str | None = Query(
        None, max_length=64, description="Duration (15m, 2h) or ISO 8601 time."
    ),
    kind: str | None = Query(None, description="alert, decision, action, node, replica, job"),
    after: int | None = Query(
        None, ge=0, le=INT64_MAX, description="Only events with a larger id (for following)."
    ),
    limit: int = Query(500, ge=1, le=10000),
) -> list[Event]:
    try:
        since_dt = parse_since(since) if since else None
    except ValueError as exc:
        raise HTTPException(
            422, detail=[{"loc": ["query", "since"], "msg": str(exc), "type": "value_error"}]
        ) from exc
    return state.store.list_events(
        service=service, since=since_dt, kind=kind, after_id=after, limit=limit
    )
