"""The store's engine and transactions: engine creation (SQLite pragmas), the write
transaction that tells subscribers after it commits, sessions whose errors are translated
at the border, and the core every concern of the store is built on.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy import create_engine, event, inspect, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from orchestrify.errors import Conflict, InvalidSpec, OrchestrifyError, StoreUnavailable
from orchestrify.models import Event, container_spec
from orchestrify.store import alert_tables as _alert_tables  # noqa: F401  (creates its tables)
from orchestrify.store.rows import event_view, utcnow
from orchestrify.store.tables import ADDED_COLUMNS, Base, EventRow, MetaRow, ReplicaRow, ServiceRow

__all__ = [
    "ChangeKind",
    "StoreCore",
    "WriteTx",
    "translate_store_error",
]

CLUSTER_ID_KEY = "cluster_id"

ChangeKind = str  # "spec" (what agents must run) or "state" (what was observed)


def translate_store_error(exc: BaseException) -> OrchestrifyError | None:
    """The orchestrify error for a database error (None: not one).

    A store that cannot write now (locked past its busy timeout, a disk I/O error, a lost
    connection) is ``StoreUnavailable`` (503, retry); a constraint is a ``Conflict``; any
    other statement the database refuses (a value it cannot hold) is ``InvalidSpec``."""
    if isinstance(exc, OrchestrifyError):
        return None
    if isinstance(exc, IntegrityError):
        return Conflict(f"conflicts with what is stored: {exc.orig}")
    if isinstance(exc, OperationalError) or (
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


class BorderSession(Session):
    """A session whose ``with`` block turns database errors into orchestrify errors, so
    nothing above the store sees an SQLAlchemy type."""

    def __exit__(self, type_: Any, value: Any, traceback: Any) -> None:
        super().__exit__(type_, value, traceback)
        translated = translate_store_error(value) if value is not None else None
        if translated is not None:
            raise translated from value


class StoreCore:
    """The engine, sessions, write lock and subscribers that every part of the store
    shares; the parts (services, nodes, replicas, edges, events) add the operations."""

    def __init__(self, url: str, *, node_timeout_s: float = 15.0) -> None:
        self.node_timeout = timedelta(seconds=node_timeout_s)
        self.engine: Engine = create_engine(url, connect_args=_connect_args(url))
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self.engine)
        _add_missing_columns(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False, class_=BorderSession)
        self.cluster_id = _ensure_cluster_id(self._sessions)
        self._write_lock = threading.RLock()
        self._change_listeners: list[Callable[[set[ChangeKind]], None]] = []
        self._event_listeners: list[Callable[[Event], None]] = []

    def close(self) -> None:
        self.engine.dispose()

    # --- subscriptions -------------------------------------------------------------
    def on_change(self, listener: Callable[[set[ChangeKind]], None]) -> None:
        self._change_listeners.append(listener)

    def on_event(self, listener: Callable[[Event], None]) -> None:
        self._event_listeners.append(listener)

    def write(self) -> WriteTx:
        """One write transaction (``with store.write() as tx``): serialized with the
        store's other writes, committed at the end of the block, subscribers told after."""
        return WriteTx(self)

    @contextmanager
    def read(self) -> Iterator[Session]:
        """One read transaction: every query in the block sees the same committed state
        (the reconciler's snapshot, the upstreams, a list with its counts)."""
        with self._sessions() as session, session.begin():
            yield session

    # The names store/alerts.py knows these by (kept while the alert intake changes on
    # another branch; new code uses write() and read()).
    _write = write


def _add_missing_columns(engine: Engine) -> None:
    """Bring a store made by an older build up to date: add the columns it lacks
    (``ADDED_COLUMNS``; ``create_all`` never alters a table) and say what the existing
    replicas run: the service's current generation and spec, which is what the older
    build handed them."""
    inspector = inspect(engine)
    with engine.begin() as conn:
        for table_name, columns in ADDED_COLUMNS.items():
            have = {c["name"] for c in inspector.get_columns(table_name)}
            table = Base.metadata.tables[table_name]
            for column in columns:
                if column not in have:
                    kind = table.c[column].type.compile(dialect=engine.dialect)
                    conn.execute(text(f"ALTER TABLE {table_name} ADD COLUMN {column} {kind}"))
    with Session(engine) as s, s.begin():
        services = {r.name: r for r in s.scalars(select(ServiceRow)).all()}
        for rep in s.scalars(select(ReplicaRow).where(ReplicaRow.generation.is_(None))).all():
            svc = services.get(rep.service)  # None: its service is gone; it only stops
            rep.generation = svc.generation if svc is not None else 1
            rep.spec = container_spec(svc.spec) if svc is not None else {}


def _ensure_cluster_id(sessions: sessionmaker[BorderSession]) -> str:
    """The store's cluster id, made (random) the first time the store is opened. Agents
    label every container with it; a controller whose store has another one is a
    stranger to them, whose silence about a container is no order to remove it."""
    with sessions() as s:
        row = s.get(MetaRow, CLUSTER_ID_KEY)
        if row is not None:
            return row.value
    try:
        with sessions() as s, s.begin():
            s.add(MetaRow(key=CLUSTER_ID_KEY, value=secrets.token_hex(8)))
    except (IntegrityError, Conflict):
        pass  # another controller on the same database made it first
    with sessions() as s:
        made = s.get(MetaRow, CLUSTER_ID_KEY)
        assert made is not None
        return made.value


def _connect_args(url: str) -> dict[str, Any]:
    return {"check_same_thread": False, "timeout": 30} if url.startswith("sqlite") else {}


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


_Row = TypeVar("_Row")


class WriteTx:
    """One serialized write transaction; tells subscribers after it commits."""

    def __init__(self, store: StoreCore) -> None:
        self.store = store
        self.session: Session
        self.changes: set[ChangeKind] = set()
        self.events: list[Event] = []
        self.event_rows: list[EventRow] = []
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

    def preload(self, model: type[Any], column: Any, keys: Iterable[Any]) -> None:
        """Load the ``model`` rows whose primary key ``column`` is in ``keys`` in one
        query, so that ``get`` answers for each of them (present or not) without one."""
        wanted = set(keys) - {k for (m, k) in self._known if m is model}
        if not wanted:
            return
        for key in wanted:
            self._known[(model, key)] = None
        for row in self.session.scalars(select(model).where(column.in_(wanted))).all():
            self._known[(model, getattr(row, column.key))] = row

    def get(self, model: type[_Row], key: Any) -> _Row | None:
        """``session.get``, answered from ``preload`` when it loaded ``key``."""
        try:
            row: _Row | None = self._known[(model, key)]
        except KeyError:
            return self.session.get(model, key)
        return row

    def add(self, row: _Row, key: Any) -> _Row:
        """``session.add`` a new row that ``get`` finds by ``key`` from now on."""
        self.session.add(row)
        self._known[(type(row), key)] = row
        return row

    def __enter__(self) -> WriteTx:
        self.store._write_lock.acquire()
        self.session = self.store._sessions()
        self.session.begin()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                try:
                    if self.event_rows:
                        self.session.flush()  # assigns the event ids
                        self.events.extend(event_view(row) for row in self.event_rows)
                    self.session.commit()
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
            for ev in self.events:
                for listener in self.store._event_listeners:
                    listener(ev)
            if self.changes:
                for change_listener in self.store._change_listeners:
                    change_listener(self.changes)
