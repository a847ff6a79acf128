"""The leader lease and the cluster view, in the store every controller shares.

One lease row (``leases``, name ``leader``) says which controller leads and at which
epoch. Acquiring it is one conditional UPDATE (the lease is free or expired: the holder
becomes the caller, the epoch goes up by one); renewing it is one conditional UPDATE
too (still the holder, at the same epoch, not yet expired). Times are the database's
(PostgreSQL's ``clock_timestamp()``), so controllers whose clocks disagree still agree
on who leads. The epoch fences the leader's writes (``orchestrify.store.engine.Fence``).

The ``controllers`` table lists every controller that ever ran on the store, with when
it last tried or renewed the lease: ``GET /v1/cluster``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import (
    ColumnElement,
    DateTime,
    Interval,
    and_,
    false,
    func,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session

from orchestrify.store.engine import StoreCore, db_now, term_held, translate_store_error
from orchestrify.store.lease_tables import FENCE_LOCK_KEY, LEADER_LEASE, ControllerRow, LeaseRow
from orchestrify.store.rows import as_utc
from orchestrify.store.stalls import end_session

__all__ = ["ClusterView", "ControllerView", "LeaseStore", "LeaseTerm"]

log = logging.getLogger(__name__)

# PostgreSQL's SQLSTATE of a lock not granted within lock_timeout.
_LOCK_NOT_AVAILABLE = "55P03"

# The sessions that hold the fence's advisory lock (fenced writes and renewals in
# flight) in a transaction begun before the lease they were made for expired, while it
# is expired: the former leader's, which nothing will let commit.
_STALE_TERM_SESSIONS = text(
    """
    SELECT a.pid, a.usename, s.holder, s.epoch
      FROM pg_locks l
      JOIN pg_stat_activity a ON a.pid = l.pid
      JOIN leases s ON s.name = :lease
     WHERE l.locktype = 'advisory' AND l.classid = 0 AND l.objid = :key AND l.objsubid = 1
       AND l.granted
       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND l.pid <> pg_backend_pid()
       AND s.expires_at <= clock_timestamp()
       AND (a.xact_start <= s.expires_at OR a.xact_start IS NULL)
    """
)


class _LeaseRowBusy(Exception):
    """The lease row stayed locked longer than an acquisition waits (PostgreSQL)."""


@dataclass(frozen=True)
class LeaseTerm:
    """A lease as the database granted it: ``holder`` leads at ``epoch`` from
    ``acquired_at`` until ``expires_at`` (the database's clock)."""

    holder: str
    epoch: int
    acquired_at: datetime
    expires_at: datetime


class ControllerView(BaseModel):
    """One controller that ran on this store."""

    id: str = Field(description="The controller's id (--controller-id).")
    url: str | None = Field(None, description="Where the others reach it (--advertise-url).")
    leader: bool = Field(description="Whether it holds the leader lease now.")
    state: str = Field(
        description="leader, follower, or gone (not seen for longer than a lease period)."
    )
    leader_since: datetime | None = Field(
        None, description="When it was elected (only while it leads)."
    )
    started_at: datetime = Field(description="When it started (the database's clock).")
    last_seen: datetime = Field(
        description="When it last tried or renewed the lease (every lease_s/3)."
    )
    version: str = Field(description="Its orchestrify version.")


class ClusterView(BaseModel):
    """Who leads, at which epoch, until when, and every controller that ran."""

    leader: str | None = Field(description="The id of the leading controller (null: none).")
    epoch: int | None = Field(
        description="The leader's epoch (null: no lease was ever taken). It goes up by one "
        "at every election; writes made for an older epoch are refused."
    )
    lease_expires_at: datetime | None = Field(
        description="When the leader's lease ends unless renewed (the database's clock)."
    )
    controllers: list[ControllerView]


class LeaseStore:
    """The leader lease and the controllers table on top of the controller's store.

    Lease transactions do not take the store's process-wide write lock (a renewal must
    not queue behind this process's long writes); each is one short transaction."""

    def __init__(self, store: StoreCore) -> None:
        self.store = store
        self.dialect = store.dialect

    # --- the database's clock ----------------------------------------------------------
    def _now(self) -> ColumnElement[datetime]:
        return db_now(self.dialect)

    def _later(self, seconds: float) -> ColumnElement[datetime]:
        if self.dialect == "postgresql":
            return func.clock_timestamp() + literal(timedelta(seconds=seconds), Interval())
        return literal(datetime.now(UTC) + timedelta(seconds=seconds), DateTime(timezone=True))

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        """One short write transaction (SQLite: BEGIN IMMEDIATE), errors translated."""
        try:
            with self.store._sessions() as session, session.begin():
                if self.dialect == "sqlite":
                    session.connection(execution_options={"sqlite_write": True})
                yield session
        except SQLAlchemyError as err:
            translated = translate_store_error(err)
            if translated is None:
                raise
            raise translated from err

    def _lock_lease_row(
        self, session: Session, *, wait_s: float | None = None, renewal: bool = False
    ) -> None:
        """PostgreSQL: wait for the lease row (held FOR SHARE by fenced writes in flight)
        before the UPDATE computes its values. An UPDATE that waits for a lock without a
        newer row version behind it keeps the values it computed before waiting: a term
        acquired after a long wait would be born with an expiry already in the past.

        ``wait_s``: wait that long at most (``_LeaseRowBusy`` after it). ``renewal``: also
        take the fence's advisory lock, as a fenced write does, so a renewal stalled in
        flight can be found and ended once its lease is over."""
        if self.dialect != "postgresql":
            return
        if wait_s is not None:
            ms = max(1, int(wait_s * 1000))
            session.execute(text(f"SET LOCAL lock_timeout = {ms}"))
        query = select(LeaseRow.name).where(LeaseRow.name == LEADER_LEASE)
        if renewal:
            query = query.add_columns(func.pg_advisory_xact_lock_shared(FENCE_LOCK_KEY))
        try:
            session.execute(query.with_for_update())
        except DBAPIError as err:
            if getattr(err.orig, "sqlstate", None) == _LOCK_NOT_AVAILABLE:
                raise _LeaseRowBusy from err
            raise

    def end_stale_term(self) -> int:
        """PostgreSQL: end the sessions whose transactions still hold the fence of a lease
        that has expired (``pg_terminate_backend``); how many were ended.

        The server ends a transaction that waits for its client between two statements
        (``idle_in_transaction_session_timeout``), but not one cut off in the middle of a
        message, or of a pipeline before its Sync: that session counts as active, and
        holds the lease row until TCP gives up on the client, which may be never when
        something on the way still answers for it (a proxy, a frozen process's kernel).
        Only sessions in a transaction begun before the lease expired are ended: those of
        the term that is over (a role that may not read another role's ``xact_start`` in
        pg_stat_activity takes every holder: while the lease row is held, no new term can
        begin). Ending them needs the same database role as theirs, or
        pg_signal_backend; without it, a warning says so and the lease waits."""
        if self.dialect != "postgresql":
            return 0
        with self.store._sessions() as session:
            lease = session.execute(
                select(LeaseRow.expires_at <= func.clock_timestamp()).where(
                    LeaseRow.name == LEADER_LEASE
                )
            ).scalar()
            if not lease:  # held, and by a leader whose writes are in flight: it leads
                return 0
            stale = session.execute(
                _STALE_TERM_SESSIONS, {"lease": LEADER_LEASE, "key": FENCE_LOCK_KEY}
            ).all()
        if not stale:
            log.warning(
                "the lease row stays locked, and by no transaction of an expired term that "
                "this controller can see; trying again"
            )
        return sum(
            end_session(
                self.store,
                pid,
                what="a transaction of the former leader that held the lease past its end",
                fields={"role": role, "holder": holder, "epoch": epoch},
            )
            for pid, role, holder, epoch in stale
        )

    def _insert(self, table: type[LeaseRow] | type[ControllerRow]) -> Any:
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    def _seen(
        self, session: Session, controller_id: str, *, url: str | None, version: str, starting: bool
    ) -> None:
        """Record that ``controller_id`` is alive now (and, ``starting``, started now)."""
        now = self._now()
        values: dict[str, Any] = {"url": url, "version": version, "last_seen": now}
        changed = {**values, "started_at": now} if starting else values
        stmt = (
            self._insert(ControllerRow)
            .values(id=controller_id, started_at=now, **values)
            .on_conflict_do_update(index_elements=[ControllerRow.id], set_=changed)
        )
        session.execute(stmt)

    # --- the lease -----------------------------------------------------------------
    def announce(self, controller_id: str, *, url: str | None, version: str) -> None:
        """Record that ``controller_id`` starts now (the cluster view lists it)."""
        with self._tx() as session:
            self._seen(session, controller_id, url=url, version=version, starting=True)

    def acquire(
        self,
        controller_id: str,
        *,
        lease_s: float,
        url: str | None,
        version: str,
        reclaim_own: bool = False,
        reclaim_epoch: int | None = None,
        force: bool = False,
    ) -> LeaseTerm | None:
        """Take the lease if it is free or expired (None: another controller holds it).

        Also taken when ``reclaim_own`` and the holder is ``controller_id`` (a previous
        run of this controller: a restart need not wait out its own lease), when it is
        ``controller_id``'s term at ``reclaim_epoch`` (one it stepped down from), or
        always with ``force`` (SQLite at start: one host, one controller). The epoch
        goes up by one every time, so the older term's writes are fenced.

        PostgreSQL: the lease row is waited for ``lease_s / 3`` at most. When it is still
        held then, by transactions of a term that has expired, they are ended
        (``end_stale_term``) and None is returned: the next attempt takes the lease."""
        try:
            return self._acquire(
                controller_id,
                lease_s=lease_s,
                url=url,
                version=version,
                reclaim_own=reclaim_own,
                reclaim_epoch=reclaim_epoch,
                force=force,
            )
        except _LeaseRowBusy:
            self.end_stale_term()
            return None

    def _acquire(
        self,
        controller_id: str,
        *,
        lease_s: float,
        url: str | None,
        version: str,
        reclaim_own: bool,
        reclaim_epoch: int | None,
        force: bool,
    ) -> LeaseTerm | None:
        with self._tx() as session:
            self._seen(session, controller_id, url=url, version=version, starting=False)
            session.execute(
                self._insert(LeaseRow)
                .values(name=LEADER_LEASE, epoch=0)
                .on_conflict_do_nothing(index_elements=[LeaseRow.name])
            )
            self._lock_lease_row(session, wait_s=lease_s / 3)
            takeable = or_(
                LeaseRow.holder.is_(None),
                LeaseRow.expires_at.is_(None),
                LeaseRow.expires_at <= self._now(),
                LeaseRow.holder == controller_id if reclaim_own else false(),
                and_(LeaseRow.holder == controller_id, LeaseRow.epoch == reclaim_epoch)
                if reclaim_epoch is not None
                else false(),
            )
            stmt = (
                update(LeaseRow)
                .where(LeaseRow.name == LEADER_LEASE, *([] if force else [takeable]))
                .values(
                    holder=controller_id,
                    epoch=LeaseRow.epoch + 1,
                    acquired_at=self._now(),
                    expires_at=self._later(lease_s),
                )
                .returning(LeaseRow.epoch, LeaseRow.acquired_at, LeaseRow.expires_at)
            )
            row = session.execute(stmt).first()
        if row is None:
            return None
        return LeaseTerm(
            holder=controller_id,
            epoch=row.epoch,
            acquired_at=_utc(row.acquired_at),
            expires_at=_utc(row.expires_at),
        )

    def renew(
        self,
        controller_id: str,
        *,
        epoch: int,
        lease_s: float,
        url: str | None,
        version: str,
    ) -> datetime | None:
        """Extend ``controller_id``'s lease at ``epoch`` by ``lease_s`` from now; its new
        end (the database's clock), or None: it no longer holds it (it expired, or
        another controller took it), and must stop acting as the leader at once."""
        with self._tx() as session:
            self._seen(session, controller_id, url=url, version=version, starting=False)
            self._lock_lease_row(session, renewal=True)
            stmt = (
                update(LeaseRow)
                .where(*term_held(controller_id, epoch, dialect=self.dialect))
                .values(expires_at=self._later(lease_s))
                .returning(LeaseRow.expires_at)
            )
            row = session.execute(stmt).first()
        return None if row is None else _utc(row.expires_at)

    def release(self, controller_id: str, *, epoch: int) -> bool:
        """End ``controller_id``'s lease at ``epoch`` now (a clean shutdown), so another
        controller leads without waiting for it to expire. Holder and epoch stay: the
        next leader's epoch is one more. Whether it was still held."""
        with self._tx() as session:
            stmt = (
                update(LeaseRow)
                .where(*term_held(controller_id, epoch, dialect=self.dialect))
                .values(expires_at=self._now())
                .returning(LeaseRow.epoch)
            )
            return session.execute(stmt).first() is not None

    # --- the view ------------------------------------------------------------------
    def cluster(self, *, gone_after_s: float) -> ClusterView:
        """Who leads now and every controller that ran; one not seen for longer than
        ``gone_after_s`` is ``gone``."""
        with self.store.read() as session:
            if self.dialect == "postgresql":
                now = _utc(session.execute(select(func.clock_timestamp())).scalar_one())
            else:
                now = datetime.now(UTC)
            lease = session.get(LeaseRow, LEADER_LEASE)
            rows = session.scalars(select(ControllerRow).order_by(ControllerRow.id)).all()
        expires = as_utc(lease.expires_at) if lease is not None else None
        leader = (
            lease.holder
            if lease is not None
            and lease.holder is not None
            and expires is not None
            and expires > now
            else None
        )
        gone_after = timedelta(seconds=gone_after_s)
        controllers = []
        for row in rows:
            last_seen = _utc(row.last_seen)
            leads = row.id == leader
            controllers.append(
                ControllerView(
                    id=row.id,
                    url=row.url,
                    leader=leads,
                    state="leader"
                    if leads
                    else "gone"
                    if now - last_seen > gone_after
                    else "follower",
                    leader_since=as_utc(lease.acquired_at) if leads and lease is not None else None,
                    started_at=_utc(row.started_at),
                    last_seen=last_seen,
                    version=row.version,
                )
            )
        return ClusterView(
            leader=leader,
            epoch=lease.epoch if lease is not None and lease.holder is not None else None,
            lease_expires_at=expires if leader is not None else None,
            controllers=controllers,
        )


def _utc(dt: datetime) -> datetime:
    made = as_utc(dt)
    assert made is not None
    return made
