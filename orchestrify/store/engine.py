"""The store's engine and transactions: engine creation for SQLite and PostgreSQL, the
write transaction (locks on what it reads, subscribers told after it commits), the read
transaction (one consistent state on both engines), database errors translated at the
border and races retried, and the core every concern of the store is built on.
"""

from __future__ import annotations

import contextvars
import functools
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import (
    URL,
    ColumnElement,
    DateTime,
    create_engine,
    event,
    func,
    literal,
    make_url,
    select,
    text,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.orm import Session, sessionmaker

from orchestrify.errors import (
    Conflict,
    Fenced,
    InvalidSpec,
    OrchestrifyError,
    StoreUnavailable,
    WriteConflict,
)
from orchestrify.models import Event
from orchestrify.store import alert_tables as _alert_tables  # noqa: F401  (joins Base.metadata)
from orchestrify.store import listen, migrate
from orchestrify.store.lease_tables import FENCE_LOCK_KEY, LEADER_LEASE, LeaseRow
from orchestrify.store.node_facts import NODES_WRITTEN_KEY, TOUCHED_KEY, NodeFacts, touched_nodes
from orchestrify.store.plan_nodes import PlanNodes
from orchestrify.store.rows import event_view, utcnow
from orchestrify.store.tables import EventRow, MetaRow

__all__ = [
    "ChangeKind",
    "Fence",
    "StoreCore",
    "WriteTx",
    "create_store_engine",
    "current_fence",
    "db_now",
    "fenced",
    "redacted",
    "retry_on_race",
    "sqlite_path",
    "term_held",
    "translate_store_error",
]

CLUSTER_ID_KEY = "cluster_id"
AGENT_SECRET_KEY = "agent_secret"


@dataclass(frozen=True)
class Fence:
    """The leader term a write is made for: the lease ``holder`` (a controller id) and
    the ``epoch`` it was elected with. A write transaction begun under a fence (see
    ``fenced``) checks, in the same transaction, that the lease is still held by that
    holder at that epoch and not expired, and is refused (``Fenced``) otherwise."""

    holder: str
    epoch: int


# The fence of the leader loop running in this context: set around a loop's task (a
# task copies the context it is made in, and asyncio.to_thread hands it to its thread),
# so store methods need no parameter for it. None: an API request's write, not fenced.
_FENCE: contextvars.ContextVar[Fence | None] = contextvars.ContextVar(
    "orchestrify_fence", default=None
)


def current_fence() -> Fence | None:
    """The fence the writes made in this context are checked against (None: none)."""
    return _FENCE.get()


@contextmanager
def fenced(fence: Fence | None) -> Iterator[None]:
    """Every store write begun in this block (and in the tasks and threads it starts
    with a copy of its context) is fenced by ``fence``; None lifts the fence."""
    token = _FENCE.set(fence)
    try:
        yield
    finally:
        _FENCE.reset(token)


def db_now(dialect: str) -> ColumnElement[datetime]:
    """ "Now" as the database sees it, for times every controller must agree on (the
    lease): PostgreSQL's ``clock_timestamp()`` (the time of the statement, not of the
    transaction's start, which ``now()`` is), so controllers whose own clocks are skewed
    still agree. SQLite is one host: its local clock."""
    if dialect == "postgresql":
        return func.clock_timestamp()
    return literal(datetime.now(UTC), DateTime(timezone=True))


def term_held(holder: str, epoch: int, *, dialect: str) -> tuple[ColumnElement[bool], ...]:
    """The conditions under which the lease row is still ``holder``'s term at ``epoch``
    and not expired by the database's clock: what a fenced write, a renewal and a
    release each check."""
    return (
        LeaseRow.name == LEADER_LEASE,
        LeaseRow.holder == holder,
        LeaseRow.epoch == epoch,
        LeaseRow.expires_at > db_now(dialect),
    )


ChangeKind = str  # "spec" (what agents must run), "nodes" (fleet membership), "state"


def translate_store_error(exc: BaseException) -> OrchestrifyError | None:
    """The orchestrify error for a database error (None: not one).

    A store that cannot write now (SQLite locked past its busy timeout, a disk I/O error,
    PostgreSQL unreachable or its connection lost) is ``StoreUnavailable`` (503, retry);
    two writers that raced (a PostgreSQL serialization failure or deadlock) are a
    ``WriteConflict``, a StoreUnavailable too (nothing written, send it again); a
    constraint is a
    ``Conflict``; any other statement the database refuses (a value it cannot hold) is
    ``InvalidSpec``. Only the driver's message is kept, never the statement or its
    parameters."""
    if isinstance(exc, OrchestrifyError):
        return None
    if isinstance(exc, DBAPIError) and _raced(exc):
        return WriteConflict(f"another writer changed the same rows; try again: {exc.orig}")
    if isinstance(exc, IntegrityError):
        return Conflict(f"conflicts with what is stored: {exc.orig}")
    if isinstance(exc, OperationalError | InterfaceError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    ):
        return StoreUnavailable(f"the store cannot be used now: {exc.orig}")
    if isinstance(exc, SQLAlchemyError):
        cause = getattr(exc, "orig", None) or exc
        return InvalidSpec(f"the store refused a value: {cause}")
    if isinstance(exc, UnicodeEncodeError):  # a lone surrogate (the API refuses them)
        return InvalidSpec(f"a text the store cannot hold (not valid Unicode): {exc.reason}")
    if isinstance(exc, OverflowError) and "SQLite" in str(exc):
        return InvalidSpec(f"a number is too large for the store: {exc}")
    return None


# SQLSTATEs of a transaction PostgreSQL rolled back because it raced another one: safe to
# run again from the start (serialization_failure, deadlock_detected).
_RACE_SQLSTATES = frozenset({"40001", "40P01"})


def _raced(exc: DBAPIError) -> bool:
    return getattr(exc.orig, "sqlstate", None) in _RACE_SQLSTATES


# A read of one consistent state on PostgreSQL (see ``StoreCore.read``).
_PG_SNAPSHOT = {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}

# How often a write that raced another writer is run again before it is a WriteConflict.
WRITE_ATTEMPTS = 5
_P = ParamSpec("_P")
_R = TypeVar("_R")


def retry_on_race(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run a store write again (up to ``WRITE_ATTEMPTS`` times, after a short random
    pause) when PostgreSQL rolled it back for racing another writer. Safe because such a
    transaction left nothing behind and told no subscriber; the method reads and decides
    again from the start. Any other error goes up as it is."""

    @functools.wraps(method)
    def attempt(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        for n in range(1, WRITE_ATTEMPTS + 1):
            try:
                return method(*args, **kwargs)
            except WriteConflict:
                if n == WRITE_ATTEMPTS:
                    raise
                time.sleep(random.uniform(0.005, 0.02) * n)
        raise AssertionError("unreachable")

    return attempt


# How the controllers' sessions name themselves to PostgreSQL (pg_stat_activity): the
# stall watch (orchestrify.store.stalls) ends only sessions of this name.
APPLICATION_NAME = "orchestrify"


def create_store_engine(url: str | URL, *, idle_in_transaction_s: float | None = None) -> Engine:
    """An engine for the store at ``url``: SQLite (``sqlite:///path``) or PostgreSQL
    (``postgresql+psycopg://user:password@host:port/db``). ``InvalidSpec`` for a URL that
    is neither; nothing connects yet.

    ``idle_in_transaction_s`` (PostgreSQL): the server ends a session of ours that sits
    that long inside a transaction without a word from us. A controller cut off from the
    database in the middle of a write (a partition) would otherwise keep its row locks,
    the lease row's among them, until TCP gives up on it (hours), and no other
    controller could be elected meanwhile."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise InvalidSpec(
            "not a database URL (sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST/DB)",
            field="database_url",
        ) from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        engine = create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if backend == "postgresql":
        if parsed.get_driver_name() != "psycopg":
            raise InvalidSpec(
                f"PostgreSQL through psycopg 3 only: postgresql+psycopg://..., not "
                f"{parsed.drivername}://...",
                field="database_url",
            )
        return create_engine(
            parsed,
            # A connection the server dropped (a restart, a failover) is found out before
            # it is used, not by the request that would use it.
            pool_pre_ping=True,
            pool_size=10,
            max_overflow=20,
            pool_timeout=10,
            connect_args={
                "connect_timeout": 10,
                "application_name": APPLICATION_NAME,
                **(
                    {
                        # Idle: the server waits for us (our COMMIT held up). TCP: what it
                        # sent is never acknowledged (packets dropped on the way to us).
                        "options": f"-c idle_in_transaction_session_timeout={idle_ms} "
                        f"-c tcp_user_timeout={idle_ms}"
                    }
                    if (idle_ms := _milliseconds(idle_in_transaction_s))
                    else {}
                ),
            },
        )
    raise InvalidSpec(
        f"unsupported database {backend!r}: use sqlite:///PATH or postgresql+psycopg://...",
        field="database_url",
    )


def _milliseconds(seconds: float | None) -> int | None:
    return None if seconds is None else max(1, round(seconds * 1000))


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///PATH`` URL (None: another database, or SQLite in memory)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def redacted(url: str | URL) -> str:
    """``url`` with its password hidden, for logs and messages (never the password)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(not a database URL)"


class BorderSession(Session):
    """A session whose ``with`` block turns database errors into orchestrify errors, so
    nothing above the store sees an SQLAlchemy type."""

    def __exit__(self, type_: Any, value: Any, traceback: Any) -> None:
        super().__exit__(type_, value, traceback)
        translated = translate_store_error(value) if value is not None else None
        if translated is not None:
            raise translated from value


# Whether a write transaction changed anything (``session.info["wrote"]``): a flush of
# ORM changes, or an INSERT/UPDATE/DELETE statement. One that did not (a reconciler's
# cycle with nothing to do) moves no version: no cached view is read again for it.
@event.listens_for(BorderSession, "after_flush")
def _wrote_by_flush(session: Session, _context: Any) -> None:
    session.info["wrote"] = True


@event.listens_for(BorderSession, "do_orm_execute")
def _wrote_by_statement(state: Any) -> None:
    if state.is_insert or state.is_update or state.is_delete:
        state.session.info["wrote"] = True


class StoreCore:
    """The engine, sessions, write lock and subscribers that every part of the store
    shares; the parts (services, nodes, replicas, edges, events) add the operations."""

    def __init__(
        self, url: str, *, node_timeout_s: float = 15.0, idle_in_transaction_s: float | None = None
    ) -> None:
        self.node_timeout = timedelta(seconds=node_timeout_s)
        self.url = redacted(url)
        self.engine: Engine = create_store_engine(url, idle_in_transaction_s=idle_in_transaction_s)
        self.dialect = self.engine.dialect.name
        try:
            migrate.upgrade(self.engine)
        except BaseException as exc:
            self.engine.dispose()
            translated = translate_store_error(exc)
            if translated is None:
                raise
            raise translated from exc
        self._sessions = sessionmaker(self.engine, expire_on_commit=False, class_=BorderSession)
        self.cluster_id = _ensure_meta(self._sessions, CLUSTER_ID_KEY, secrets.token_hex(8))
        # What each node's agent key is made from (controller/logs.py ``agent_key``): in
        # the store, so every controller of the cluster holds the same keys.
        self.agent_secret = _ensure_meta(self._sessions, AGENT_SECRET_KEY, secrets.token_hex(32))
        self._write_lock = threading.RLock()
        self._change_listeners: list[Callable[[set[ChangeKind]], None]] = []
        self._event_listeners: list[Callable[[Event], None]] = []
        # The events committed by this thread's writes inside ``capturing_events``.
        self._captures = threading.local()
        # Changes across controllers (PostgreSQL): see orchestrify/store/listen.py.
        self.origin = listen.new_origin()
        self._commit_listeners: list[listen.Deliver] = []
        # Bumped after every commit of this process (under the write lock), so a cached
        # view read at generation G is current while the generation is still G (see
        # ``data_version``): ``generation`` by every write but the heartbeats' batches,
        # ``heartbeat_generation`` by those (they change only nodes' display fields).
        self.generation = 0
        self.heartbeat_generation = 0
        self.nodes_generation = 0  # moved by the writes of node rows (SQLite)
        # Each node's view and token hash, kept until a write of this process changes
        # the node (SQLite only: see orchestrify/store/node_facts.py).
        self.node_facts: NodeFacts | None = None if self.shares_changes else NodeFacts()
        # The reconciler snapshot's node views, kept the same way (SQLite only: see
        # orchestrify/store/plan_nodes.py).
        self.plan_nodes: PlanNodes | None = None if self.shares_changes else PlanNodes()

    def data_version(self, *, heartbeats: bool = False) -> tuple[int, ...]:
        """A version of everything stored that moves whenever a committed write changes a
        row: a view read after taking it is current for as long as it stays the same.
        Take it *before* reading the view; without ``heartbeats`` the heartbeats'
        batched writes do not move it (only nodes' display fields change in them).

        SQLite (one controller owns the store): this process's commit counters, no I/O.
        PostgreSQL: the commit sequence read from the database, which every write
        transaction bumps (but the heartbeats' batches: ask for ``heartbeats`` there
        and the answer is never the same twice, so nothing is cached on it)."""
        if not self.shares_changes:
            return (self.generation, self.heartbeat_generation if heartbeats else 0)
        if heartbeats:
            return (-1, secrets.randbits(62))  # never equal twice: read it afresh
        try:
            with self.engine.connect() as conn:
                value = conn.execute(
                    text("SELECT value FROM meta WHERE key = :key"), {"key": listen.SEQUENCE_KEY}
                ).scalar()
                conn.rollback()
        except SQLAlchemyError as err:  # the database is away: a 503, as any read
            translated = translate_store_error(err)
            if translated is None:
                raise
            raise translated from err
        return (int(value) if value is not None else 0, 0)

    def nodes_version(self) -> tuple[int, ...]:
        """A version of the node rows alone (heartbeat figures included), taken like
        ``data_version``: the node list is not read again for the reports and service
        changes of a busy fleet. SQLite: this process's counter of the writes that
        changed a node row. PostgreSQL: ``data_version(heartbeats=True)`` (never the same
        twice: read afresh)."""
        if not self.shares_changes:
            return (self.nodes_generation,)
        return self.data_version(heartbeats=True)

    @property
    def shares_changes(self) -> bool:
        """Whether other controllers may write this store (PostgreSQL): changes are then
        numbered by the database's commit sequence and announced with NOTIFY."""
        return self.dialect == "postgresql"

    def change_sequence(self) -> int:
        """The commit sequence now (PostgreSQL only; see ``listen.announce``)."""
        with self._sessions() as s, s.begin():
            return listen.read_sequence(s.connection())

    def change_listener(self, deliver: listen.Deliver, *, resync_s: float) -> listen.ChangeListener:
        """A (not yet started) thread that tells ``deliver`` of the changes other
        controllers commit (PostgreSQL only)."""
        return listen.ChangeListener(
            self.engine.url, origin=self.origin, deliver=deliver, resync_s=resync_s
        )

    def close(self) -> None:
        self.engine.dispose()

    # --- subscriptions -------------------------------------------------------------
    def on_change(self, listener: Callable[[set[ChangeKind]], None]) -> None:
        self._change_listeners.append(listener)

    def on_event(self, listener: Callable[[Event], None]) -> None:
        self._event_listeners.append(listener)

    @contextmanager
    def capturing_events(self) -> Iterator[list[Event]]:
        """The events that this thread's writes commit inside the block, in order (a
        write retried after a race counts once: only its committed attempt): how the
        status page shows the event its own action wrote, not another one written at
        the same moment."""
        captured: list[Event] = []
        outer = getattr(self._captures, "events", None)
        self._captures.events = captured
        try:
            yield captured
        finally:
            self._captures.events = outer

    def on_commit(self, listener: listen.Deliver) -> None:
        """``listener(kinds, sequence)`` after each write that changed something commits
        (PostgreSQL only: the kinds with ``events``, and its commit sequence)."""
        self._commit_listeners.append(listener)

    def write(self, *, heartbeats_only: bool = False) -> WriteTx:
        """One write transaction (``with store.write() as tx``): serialized with the
        store's other writes, committed at the end of the block, subscribers told after.

        ``heartbeats_only``: it writes nothing but nodes' heartbeat figures (the batch of
        ``record_heartbeats``), so it moves only the heartbeat part of ``data_version``,
        and on PostgreSQL it bumps the commit sequence only if it records ``changes``."""
        return WriteTx(self, heartbeats_only=heartbeats_only)

    @contextmanager
    def read(self) -> Iterator[Session]:
        """One read transaction: every query in the block sees the same committed state
        (the reconciler's snapshot, the upstreams, a list with its counts). On SQLite the
        BEGIN is explicit (see ``_sqlite_begin``); on PostgreSQL it is REPEATABLE READ,
        which for a read-only transaction is one snapshot and never a serialization
        failure."""
        with self._sessions() as session, session.begin():
            if self.dialect == "postgresql":
                session.connection(execution_options=_PG_SNAPSHOT)
            yield session


def _ensure_meta(sessions: sessionmaker[BorderSession], key: str, new: str) -> str:
    """A fact of the store, made (``new``) the first time the store is opened; the first
    controller on a shared database to make it wins. The cluster id is one: agents label
    every container with it, and a controller whose store has another one is a stranger
    to them, whose silence about a container is no order to remove it."""
    with sessions() as s:
        row = s.get(MetaRow, key)
        if row is not None:
            return row.value
    try:
        with sessions() as s, s.begin():
            s.add(MetaRow(key=key, value=new))
    except (IntegrityError, Conflict):
        pass  # another controller on the same database made it first
    with sessions() as s:
        made = s.get(MetaRow, key)
        assert made is not None
        return made.value


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    # pysqlite begins a transaction only before a write, so a read of several SELECTs
    # would see several states: it is told to begin none, and ``_sqlite_begin`` emits
    # BEGIN at the start of every transaction (SQLAlchemy's pysqlite recipe).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    # A write takes SQLite's write lock at once (IMMEDIATE): a deferred transaction that
    # read first could not upgrade once another connection wrote meanwhile.
    mode = "IMMEDIATE" if conn.get_execution_options().get("sqlite_write") else "DEFERRED"
    conn.exec_driver_sql(f"BEGIN {mode}")


_Row = TypeVar("_Row")


class WriteTx:
    """One serialized write transaction; tells subscribers after it commits."""

    def __init__(self, store: StoreCore, *, heartbeats_only: bool = False) -> None:
        self.store = store
        self.heartbeats_only = heartbeats_only
        self.session: Session
        self.changes: set[ChangeKind] = set()
        self.events: list[Event] = []
        self.event_rows: list[EventRow] = []
        self.sequence: int | None = None  # its commit sequence (PostgreSQL, once committed)
        # Rows loaded ahead by ``preload`` (None: known to be absent), held here because
        # the session's identity map only references them weakly.
        self._known: dict[tuple[type[Any], Any], Any] = {}

    def add_event(self, message: str, **fields: Any) -> None:
        """Add an event row (fields of :class:`~orchestrify.models.Event`) to this
        transaction; it is written (one flush for all) at commit, and the event
        listeners are told after it."""
        row = EventRow(
            time=utcnow(), message=message, **{**fields, "data": fields.get("data") or {}}
        )
        self.session.add(row)
        self.event_rows.append(row)

    @property
    def locks_rows(self) -> bool:
        """Whether rows read through ``get``/``preload`` are locked (PostgreSQL: FOR
        UPDATE). SQLite needs none: BEGIN IMMEDIATE holds its one write lock already."""
        return self.store.dialect == "postgresql"

    def preload(self, model: type[Any], column: Any, keys: Iterable[Any]) -> None:
        """Load the ``model`` rows whose primary key ``column`` is in ``keys`` in one
        query, so that ``get`` answers for each of them (present or not) without one.
        On PostgreSQL they are locked (in key order, so two writers never deadlock over
        them) until the transaction ends."""
        wanted = set(keys) - {k for (m, k) in self._known if m is model}
        if not wanted:
            return
        for key in wanted:
            self._known[(model, key)] = None
        query = select(model).where(column.in_(wanted))
        if self.locks_rows:
            query = (
                query.order_by(column).with_for_update().execution_options(populate_existing=True)
            )
        for row in self.session.scalars(query).all():
            self._known[(model, getattr(row, column.key))] = row

    def get(self, model: type[_Row], key: Any) -> _Row | None:
        """The ``model`` row of primary key ``key`` (None: absent), answered from
        ``preload`` when it loaded ``key``. This is how a read-decide-write reads what it
        decides on: on PostgreSQL the row is locked (SELECT ... FOR UPDATE) until the
        transaction ends, so a second writer of the same row waits, then reads what the
        first one committed, and never decides on a value already changed."""
        try:
            row: _Row | None = self._known[(model, key)]
        except KeyError:
            if not self.locks_rows:
                return self.session.get(model, key)
            row = self.session.get(model, key, with_for_update=True, populate_existing=True)
            self._known[(model, key)] = row
        return row

    def lock(self, name: str) -> None:
        """Serialize this transaction with every other one that locks ``name`` (for
        what has no row to lock yet: a node name being registered, a service name being
        created). PostgreSQL: a transaction-level advisory lock; SQLite: nothing to do."""
        if self.locks_rows:
            self.session.execute(
                text("SELECT pg_advisory_xact_lock(hashtextextended(:name, 0))"), {"name": name}
            )

    def add(self, row: _Row, key: Any) -> _Row:
        """``session.add`` a new row that ``get`` finds by ``key`` from now on."""
        self.session.add(row)
        self._known[(type(row), key)] = row
        return row

    def __enter__(self) -> WriteTx:
        self.store._write_lock.acquire()
        self.session = self.store._sessions()
        if self.store.node_facts is not None:
            self.session.info[TOUCHED_KEY] = set()  # collected by node_facts at each flush
        self.session.begin()
        try:
            if self.store.dialect == "sqlite":
                self.session.connection(execution_options={"sqlite_write": True})
            fence = _FENCE.get()
            if fence is not None:
                self._check_fence(fence)
        except SQLAlchemyError as err:  # BEGIN IMMEDIATE itself failed (locked)
            self.session.close()
            self.store._write_lock.release()
            translated = translate_store_error(err)
            if translated is None:
                raise
            raise translated from err
        except Fenced:
            self.session.rollback()
            self.session.close()
            self.store._write_lock.release()
            raise
        return self

    def _check_fence(self, fence: Fence) -> None:
        """Refuse (``Fenced``) to write unless ``fence`` still holds the leader lease.

        PostgreSQL: the lease row is read FOR SHARE, so a competing acquisition (an
        UPDATE of that row) waits until this transaction ends, and what this
        transaction writes lands before any new leader's term begins. SQLite: BEGIN
        IMMEDIATE already holds the one write lock an acquisition needs too."""
        query = select(LeaseRow.holder).where(
            *term_held(fence.holder, fence.epoch, dialect=self.store.dialect)
        )
        if self.locks_rows:
            # With the row lock, the shared advisory lock that makes this transaction
            # visible in pg_locks (see ``LeaseStore.end_stale_term``).
            query = query.add_columns(
                func.pg_advisory_xact_lock_shared(FENCE_LOCK_KEY)
            ).with_for_update(read=True)
        if self.session.execute(query).first() is None:
            raise Fenced(
                f"controller {fence.holder} no longer leads at epoch {fence.epoch} (its "
                "lease expired or another controller was elected): its leader loops' "
                "writes are refused"
            )

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                try:
                    if self.event_rows:
                        self.session.flush()  # assigns the event ids
                        self.events.extend(event_view(row) for row in self.event_rows)
                    self.session.flush()
                    wrote = bool(self.session.info.get("wrote"))
                    announced = self._announced()
                    # On PostgreSQL every write that changed a row bumps the commit
                    # sequence (with its kinds, or none), the version cached views are
                    # checked against; a heartbeats batch only when it changed a state.
                    if self.store.shares_changes and (
                        announced or (wrote and not self.heartbeats_only)
                    ):
                        self.sequence = listen.announce(
                            self.session, origin=self.store.origin, kinds=announced
                        )
                    # A write that changes nodes moves the snapshot's generation before
                    # and after its commit (see orchestrify/store/plan_nodes.py).
                    plan = self.store.plan_nodes
                    touched = touched_nodes(self.session)  # empty unless SQLite's
                    if plan is not None and touched:
                        plan.generation += 1
                    try:
                        self.session.commit()
                    finally:
                        if plan is not None and touched:
                            plan.generation += 1
                    # Forgotten before the write lock is released: no later write's
                    # reader can see the fact this one replaced.
                    if self.store.node_facts is not None:
                        if touched:
                            self.store.node_facts.forget(touched)
                        if self.session.info.get(NODES_WRITTEN_KEY):
                            self.store.nodes_generation += 1
                    if self.heartbeats_only and not self.changes:
                        self.store.heartbeat_generation += 1
                    elif wrote or self.changes:
                        self.store.generation += 1
                except (SQLAlchemyError, OverflowError, UnicodeEncodeError) as err:
                    self.session.rollback()
                    translated = translate_store_error(err)
                    if translated is None:
                        raise
                    raise translated from err
            else:
                self.session.rollback()
                translated = translate_store_error(exc)
                if translated is not None:
                    raise translated from exc
        finally:
            self.session.close()
            self.store._write_lock.release()
        if exc_type is None:
            captured = getattr(self.store._captures, "events", None)
            if captured is not None:
                captured.extend(self.events)
            for ev in self.events:
                for listener in self.store._event_listeners:
                    listener(ev)
            if self.changes:
                for change_listener in self.store._change_listeners:
                    change_listener(self.changes)
            if self.sequence is not None and self._announced():
                for commit_listener in self.store._commit_listeners:
                    commit_listener(self._announced(), self.sequence)

    def _announced(self) -> set[ChangeKind]:
        """What this transaction tells other controllers of (PostgreSQL only; none on
        SQLite, which one controller owns)."""
        if not self.store.shares_changes:
            return set()
        kinds = listen.with_implied(self.changes)
        if self.event_rows or self.events:  # alert intake bulk-inserts into ``events``
            kinds.add("events")
        return kinds

    def upstreams_clock(self) -> datetime:
        """The time a replica leaves the upstreams (``left_upstreams_at``), ordered with
        the ``as_of`` of every upstreams snapshot: the store's write lock does it on
        SQLite; on PostgreSQL, the database's clock under a shared advisory lock (see
        ``listen.lock_upstreams_clock``), whichever controller reads the snapshot."""
        if self.store.shares_changes:
            return listen.lock_upstreams_clock(self.session)
        return utcnow()
