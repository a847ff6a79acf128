"""The event trail: an append-only audit of every alert, decision, action and outcome."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select

from orchestrify.models import (
    Event,
)
from orchestrify.store.engine import StoreCore, retry_on_race
from orchestrify.store.rows import (
    event_view,
)
from orchestrify.store.tables import EventRow

__all__ = ["EventsPart"]


class EventsPart(StoreCore):
    """Record and list events."""

    @retry_on_race
    def record_event(
        self,
        message: str,
        *,
        kind: str,
        service: str | None = None,
        node: str | None = None,
        replica: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        reason: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> Event:
        with self.write() as tx:
            tx.add_event(
                message,
                kind=kind,
                service=service,
                node=node,
                replica=replica,
                action=action,
                outcome=outcome,
                reason=reason,
                data=data,
            )
        return tx.events[-1]

    def get_event(self, event_id: int) -> Event | None:
        """The event of id ``event_id``, or None (never written, or pruned)."""
        with self.read() as s:
            row = s.get(EventRow, event_id)
            return event_view(row) if row is not None else None

    def list_events(
        self,
        *,
        service: str | None = None,
        since: datetime | None = None,
        kind: str | None = None,
        after_id: int | None = None,
        limit: int = 500,
    ) -> list[Event]:
        with self.read() as s:
            q = select(EventRow)
            if service:
                q = q.where(EventRow.service == service)
            if since:
                q = q.where(EventRow.time >= since)
            if kind:
                q = q.where(EventRow.kind == kind)
            if after_id is not None:
                q = q.where(EventRow.id > after_id)
            q = q.order_by(EventRow.id.desc()).limit(limit)
            return [event_view(r) for r in reversed(s.scalars(q).all())]
