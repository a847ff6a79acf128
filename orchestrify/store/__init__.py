"""The controller's state store: services, nodes, replicas, edges and the event trail.

Every write is one transaction that locks what it decides on (PostgreSQL row locks;
SQLite's one write lock); every read the reconciler decides on is one transaction too.
After a write commits, subscribers are told (the change feed that wakes long-polling
agents and edges, the metrics that count decisions). The engine is SQLite (the default,
in the data dir) or PostgreSQL; the schema is migrated on open (:mod:`.migrate`).

:class:`Store` is a facade composed of one part per concern, each in its own module:
:mod:`~orchestrify.store.engine` (engine, transactions, error translation),
:mod:`~orchestrify.store.services`, :mod:`~orchestrify.store.nodes`,
:mod:`~orchestrify.store.replicas` (drain, reports, assignments, orphans),
:mod:`~orchestrify.store.edges` (and the upstreams they render) and
:mod:`~orchestrify.store.events`.
"""

from __future__ import annotations

from pathlib import Path

from orchestrify.store.edges import EdgesPart
from orchestrify.store.engine import (
    ChangeKind,
    WriteTx,
    redacted,
    sqlite_path,
    translate_store_error,
)
from orchestrify.store.events import EventsPart
from orchestrify.store.files import (
    DB_FILE,
    create_private_file,
    ensure_private_dir,
    secure_data_dir,
)
from orchestrify.store.nodes import NodeEnrollment, NodesPart
from orchestrify.store.replicas import ReplicasPart
from orchestrify.store.rows import as_utc, service_drain_s, utcnow
from orchestrify.store.services import ServicesPart

__all__ = [
    "ChangeKind",
    "NodeEnrollment",
    "Store",
    "WriteTx",
    "as_utc",
    "redacted",
    "service_drain_s",
    "translate_store_error",
    "utcnow",
]


class Store(ServicesPart, NodesPart, ReplicasPart, EdgesPart, EventsPart):
    """Durable controller state. Thread-safe: API handlers run in a thread pool."""

    @classmethod
    def in_data_dir(cls, data_dir: Path, *, node_timeout_s: float = 15.0) -> Store:
        """The SQLite store in ``data_dir``, which is made private first (0700, files
        0600; see :mod:`orchestrify.store.files`)."""
        secure_data_dir(data_dir)
        return cls(f"sqlite:///{data_dir / DB_FILE}", node_timeout_s=node_timeout_s)

    @classmethod
    def open(
        cls,
        database_url: str | None,
        *,
        data_dir: Path,
        node_timeout_s: float = 15.0,
        idle_in_transaction_s: float | None = None,
    ) -> Store:
        """The store at ``database_url`` (``sqlite:///PATH`` or
        ``postgresql+psycopg://...``), or the SQLite store in ``data_dir`` when it is None.
        A SQLite file elsewhere is made private too (its dir 0700, the file 0600).
        ``InvalidSpec`` for a URL that is no store's, ``StoreUnavailable`` for a database
        that cannot be reached or upgraded. ``idle_in_transaction_s``: see
        :func:`~orchestrify.store.engine.create_store_engine` (PostgreSQL only)."""
        if database_url is None:
            return cls.in_data_dir(data_dir, node_timeout_s=node_timeout_s)
        path = sqlite_path(database_url)
        if path is not None:
            ensure_private_dir(path.parent)
            create_private_file(path)
        return cls(
            database_url, node_timeout_s=node_timeout_s, idle_in_transaction_s=idle_in_transaction_s
        )
