"""Tables of the Alertmanager webhook: receipts, alert instances, per-service policy state.

Kept apart from tables.py (same metadata) so the alert intake is one obvious place.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, Index, Integer, String, Text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Mapped, mapped_column

from orchestrify.store.tables import Base

if TYPE_CHECKING:  # engine.py imports this module (its tables join Base.metadata)
    from orchestrify.store.engine import WriteTx


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


def scaling_state_row(tx: WriteTx, service: str) -> ScalingStateRow:
    """``service``'s policy state row in this write transaction, made (empty) when it has
    none yet; locked until the transaction ends (PostgreSQL: FOR UPDATE).

    Both the alert decisions and the owner's PATCH write this row, and the first of each
    finds none: two plain INSERTs of one key would make the later one a unique-key error
    (a 409). ``ON CONFLICT DO NOTHING`` waits for the other's insert instead, and then
    both lock and update the one row. Callers lock the service's row before this one
    (the store's lock order: service, then its policy state, then its replicas)."""
    row = tx.get(ScalingStateRow, service)
    if row is not None:
        return row
    make = pg_insert if tx.store.dialect == "postgresql" else sqlite_insert
    tx.session.execute(
        make(ScalingStateRow)
        .values(service=service)
        .on_conflict_do_nothing(index_elements=[ScalingStateRow.service])
    )
    made = tx.session.get(
        ScalingStateRow, service, with_for_update=tx.locks_rows, populate_existing=True
    )
    assert made is not None  # inserted now, or by a transaction that committed it
    return tx.add(made, service)
