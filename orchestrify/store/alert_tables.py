"""Tables of the Alertmanager webhook: receipts, alert instances, per-service policy state.

Kept apart from tables.py (same metadata) so the alert intake is one obvious place.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from orchestrify.store.tables import Base


class AlertReceiptRow(Base):
    """One alert of one notification, stored once per idempotency key."""

    __tablename__ = "alert_receipts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)  # fingerprint+startsAt+status
    instance: Mapped[str] = mapped_column(String(128), index=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    alertname: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(8))
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime | None]
    labels: Mapped[dict[str, Any]] = mapped_column(JSON)
    annotations: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    receiver: Mapped[str] = mapped_column(String(200), default="")
    group_key: Mapped[str] = mapped_column(Text, default="")
    generator_url: Mapped[str] = mapped_column(Text, default="")
    received_at: Mapped[datetime]
    processed_at: Mapped[datetime | None] = mapped_column(index=True)
    # What decisions are scheduled fairly across (``alert_lane``): pending receipts are
    # decided round-robin over lanes, in arrival order within one. None: stored by an
    # older build (one lane of its own).
    lane: Mapped[str | None] = mapped_column(String(300))


# The fair order's query reads undecided receipts by lane and id from this index alone,
# without sorting the backlog for every slice (orchestrify.store.alerts.pending).
PENDING_BY_LANE = Index(
    "ix_alert_receipts_pending_lane",
    AlertReceiptRow.processed_at,
    AlertReceiptRow.lane,
    AlertReceiptRow.id,
)


class AlertInstanceRow(Base):
    """One firing episode of one alert (fingerprint + startsAt) and where it stands."""

    __tablename__ = "alert_instances"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    alertname: Mapped[str] = mapped_column(String(200))
    service: Mapped[str | None] = mapped_column(String(63), index=True)
    labels: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(8), index=True)
    starts_at: Mapped[datetime]
    first_seen_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    resolved_at: Mapped[datetime | None]


class ScalingStateRow(Base):
    """What the scaling policy remembers of a service between decisions."""

    __tablename__ = "scaling_states"
    service: Mapped[str] = mapped_column(String(63), primary_key=True)
    last_action_at: Mapped[datetime | None]
    last_scale_out_firing_at: Mapped[datetime | None]
    baseline: Mapped[int | None]
    # The owner's last manual scale (PATCH replicas) and the count it set: alert episodes
    # that began before it do not act on scale. Written by the service update only.
    manual_scale_at: Mapped[datetime | None]
    manual_replicas: Mapped[int | None]
