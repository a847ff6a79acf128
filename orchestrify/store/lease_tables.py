"""Tables of the leader election: the one leader lease, and every controller that ran.

Kept apart from tables.py (same metadata), as the alert tables are: the lease and the
cluster view are one obvious place (:mod:`orchestrify.store.leases`).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from orchestrify.store.tables import Base

# The name of the one lease row (a table of named leases leaves room for another one).
LEADER_LEASE = "leader"

# PostgreSQL: the key of the transaction-level advisory lock that every fenced write (and
# every renewal) takes in shared mode next to its FOR SHARE of the lease row. A row lock
# does not show who holds it; this lock does (``pg_locks``), so a follower kept from an
# expired lease can find, and end, the former leader's transactions that still hold it.
FENCE_LOCK_KEY = 0x6F726368  # "orch": below 2**32, so pg_locks shows it as objid


class LeaseRow(Base):
    """The leader lease: who holds it, at which epoch (raised by one at every
    acquisition, so a write fenced by an older epoch is refused), since when and until
    when, in the database's clock. A lease whose ``expires_at`` passed is free."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(253))
    epoch: Mapped[int] = mapped_column(default=0)
    acquired_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]


class ControllerRow(Base):
    """A controller that ran on this store: what ``GET /v1/cluster`` lists. ``last_seen``
    (the database's clock) moves at every lease attempt, every lease_s/3."""

    __tablename__ = "controllers"
    id: Mapped[str] = mapped_column(String(253), primary_key=True)
    url: Mapped[str | None] = mapped_column(String(512))
    version: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime]
    last_seen: Mapped[datetime]
