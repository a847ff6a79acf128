"""Read views cached per change, not per request.

A thousand agents and the CLI read the same few things over and over: the services, the
nodes, each node's assignments. Each is read from the store once per version of the
store (``Store.data_version``: every committed write moves it) and kept with its JSON
already encoded, so a read served from the cache costs no thread, no ORM load and no
serialization, and never blocks the event loop. A read that misses is made in a worker
thread, once for every request that waits for the same version (single flight).

Why a cached view is never older than a write the reader saw: the version is taken
*before* the view is read, and a write moves it before its request answers. So a view
kept under version V holds every write counted in V, and is served only while the
version is still V.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections import Counter
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fastapi import Response
from pydantic import TypeAdapter

from orchestrify.controller.border import SafeJSONResponse
from orchestrify.errors import NotFound
from orchestrify.models import Assignment, Event, Node, Replica, Service, Upstreams
from orchestrify.store import Store
from orchestrify.store.alerts import AlertInstance, AlertStore
from orchestrify.store.node_facts import NodeFact

__all__ = [
    "NODE",
    "AlertEpisodes",
    "AnsweredAssignments",
    "NodeAssignments",
    "NodeViews",
    "ReadViews",
    "ServiceViews",
    "ViewCache",
    "encode",
    "json_answer",
]

_V = TypeVar("_V")


def encode(value: Any, adapter: TypeAdapter[Any]) -> bytes:
    """``value`` as the API answers it: the response model's JSON (by alias), rendered
    as every answer is (``SafeJSONResponse``: a stored lone surrogate escaped)."""
    return bytes(SafeJSONResponse(adapter.dump_python(value, mode="json", by_alias=True)).body)


def json_answer(body: bytes) -> Response:
    """An answer of JSON encoded beforehand (FastAPI passes a Response on untouched)."""
    return Response(content=body, media_type="application/json")


@dataclass
class _Entry(Generic[_V]):
    version: Hashable
    value: _V


class ViewCache:
    """Views kept per key with the store version they were read at; ``get`` serves one
    only while that version is current, else reads it again (in a worker thread, once
    for all the requests that ask for the same key and version meanwhile)."""

    def __init__(self, version: Callable[[], Hashable], *, version_costs_io: bool) -> None:
        """``version()``: the store's version now (``Store.data_version``);
        ``version_costs_io``: whether asking it reads the database (PostgreSQL), so it is
        asked from a worker thread."""
        self._version = version
        self._version_costs_io = version_costs_io
        # Threads of their own: the loop's default executor (cores + 4 threads) is where
        # the leader's loops wait for the store's write lock, and a read must not queue
        # behind them. A read holds no lock (SQLite WAL, PostgreSQL MVCC).
        self.threads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="orchestrify-views")
        self._entries: dict[str, _Entry[Any]] = {}
        self._building: dict[tuple[str, Hashable], asyncio.Future[Any]] = {}
        self.reads: Counter[str] = Counter()  # views read from the store, by key (for tests)

    async def version(self) -> Hashable:
        if self._version_costs_io:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.threads, self._version)
        return self._version()

    async def get(
        self,
        key: str,
        build: Callable[[], _V],
        *,
        version: Hashable | None = None,
    ) -> _V:
        """The view ``key`` as of now; ``build`` (run in a worker thread) reads it.
        ``version``: what the view depends on, when narrower than the store's version
        (taken before the view is read, as the store's is)."""
        if version is None:
            version = await self.version()
        entry = self._entries.get(key)
        if entry is not None and entry.version == version:
            value: _V = entry.value
            return value
        inflight = self._building.get((key, version))
        if inflight is not None:
            return await asyncio.shield(inflight)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._building[(key, version)] = future
        try:
            self.reads[key] += 1
            value = await asyncio.get_running_loop().run_in_executor(self.threads, build)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here: no "never retrieved" warning without waiters
            raise
        finally:
            del self._building[(key, version)]
        self._entries[key] = _Entry(version, value)
        future.set_result(value)
        return value

    def close(self) -> None:
        self.threads.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True)
class ServiceViews:
    """Every live service: the list's JSON and each one's, by name; and the models, in
    the listing's order (the status page renders them)."""

    listing: bytes
    by_name: dict[str, bytes]
    services: tuple[Service, ...] = ()


@dataclass(frozen=True)
class NodeViews:
    """Every node: the list's JSON, each node (model and JSON) by id and by name."""

    listing: bytes
    by_id: dict[str, tuple[Node, bytes]]
    by_name: dict[str, tuple[Node, bytes]]

    def find(self, id_or_name: str) -> tuple[Node, bytes]:
        found = self.by_id.get(id_or_name) or self.by_name.get(id_or_name)
        if found is None:
            raise NotFound(f"no node with id or name {id_or_name!r}")
        return found


@dataclass(frozen=True)
class NodeAssignments:
    """One node's assignments and ``prune`` list, as of one store version."""

    replicas: list[Assignment]
    prune: list[str]


_UPSTREAMS = TypeAdapter(Upstreams)
_SERVICES = TypeAdapter(list[Service])
_SERVICE = TypeAdapter(Service)
NODE = TypeAdapter(Node)


@dataclass(frozen=True)
class AlertEpisodes:
    """Alert episodes (each with its latest summary) and recent decisions (oldest first)."""

    firing: list[tuple[AlertInstance, str | None]]
    resolved: list[tuple[AlertInstance, str | None]]
    decisions: list[Event]


class ReadViews:
    """The controller's cached reads of ``store`` (see the module's docstring)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.cache = ViewCache(
            store.data_version,
            version_costs_io=store.shares_changes,
        )
        self._node_bodies: dict[str, tuple[Node, bytes]] = {}  # the last nodes view's

    async def services(self) -> ServiceViews:
        def build() -> ServiceViews:
            services = self.store.list_services()
            return ServiceViews(
                listing=encode(services, _SERVICES),
                by_name={s.name: encode(s, _SERVICE) for s in services},
                services=tuple(services),
            )

        return await self.cache.get("services", build)

    async def service(self, name: str) -> bytes:
        found = (await self.services()).by_name.get(name)
        if found is None:
            raise NotFound(f"no service named {name!r}")
        return found

    async def nodes(self) -> NodeViews:
        """Every node as stored (the figures of the last batched heartbeat write: the
        routes lay the heartbeats received since over it). Read again only when a node
        row changed (SQLite), not at every write of the store; always on PostgreSQL,
        where other controllers write the nodes too."""

        def build() -> NodeViews:
            # A node the store kept unchanged since the last build is the same object
            # (SQLite: see orchestrify/store/plan_nodes.py): its JSON is too.
            before = self._node_bodies
            pairs = []
            for n in self.store.list_nodes():
                known = before.get(n.id)
                pairs.append((n, known[1] if known and known[0] is n else encode(n, NODE)))
            views = NodeViews(
                listing=b"[" + b",".join(body for _, body in pairs) + b"]",
                by_id={n.id: (n, body) for n, body in pairs},
                by_name={n.name: (n, body) for n, body in pairs},
            )
            self._node_bodies = views.by_id
            return views

        version = ("nodes", *self.store.nodes_version())  # no I/O on either engine
        return await self.cache.get("nodes", build, version=version)

    async def replicas(self) -> list[Replica]:
        """Every replica, by service: read once per store version (the status page's
        viewers, polling every few seconds, share one read)."""
        return await self.cache.get("replicas", self.store.list_replicas)

    async def service_events(self, name: str, *, limit: int, events_version: int) -> list[Event]:
        """Service ``name``'s last ``limit`` events (oldest first, as the store lists
        them) as of the feed's ``events`` version ``events_version`` (taken before the
        call): the status page's viewers of one service share one read per new event."""

        def build() -> list[Event]:
            return self.store.list_events(service=name, limit=limit)

        return await self.cache.get(
            f"events:{name}:{limit}", build, version=("events", events_version)
        )

    async def alert_episodes(self, *, limit: int, decisions: int) -> AlertEpisodes:
        """The alert episodes firing and the latest resolved (``limit`` of each), with
        the last ``decisions`` decision events, as of the store's version (an episode
        can be resolved by a notice that leads to no decision, so no event): the status
        page's alerts list, one read per change for every viewer."""

        def build() -> AlertEpisodes:
            alerts = AlertStore(self.store)
            return AlertEpisodes(
                firing=alerts.episodes(status="firing", limit=limit),
                resolved=alerts.episodes(status="resolved", limit=limit),
                decisions=self.store.list_events(kind="decision", limit=decisions),
            )

        return await self.cache.get(f"alerts:{limit}:{decisions}", build)

    async def upstreams(self, state_version: int) -> bytes:
        """``GET /v1/upstreams``'s answer at the feed's ``state`` version ``state_version``
        (taken before the call), encoded once per version: an edge's long-poll, every
        edge of the fleet and the CLI read the same snapshot, not one query each.

        Its ``as_of`` is the time the snapshot was read. A snapshot kept while no state
        changed is still exact now, and an older ``as_of`` only tells less than a new one
        would (an edge that reports it back acknowledges less, never more). Under several
        controllers (PostgreSQL) it is read per request: each answer's ``as_of`` comes
        from the database's clock under the upstreams lock (``Store.upstreams``), so an
        edge that moves from one controller to another never sees it go back."""

        def build() -> bytes:
            as_of, services = self.store.upstreams()
            answer = Upstreams(
                version=state_version,
                as_of=as_of,
                services=services,
                cluster_id=self.store.cluster_id,
            )
            return encode(answer, _UPSTREAMS)

        if self.store.shares_changes:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.cache.threads, build)
        return await self.cache.get("upstreams", build, version=("state", state_version))

    async def node_assignments(self, node_id: str) -> NodeAssignments | None:
        """One node's assignments as of now (None: no such node), read for this node
        alone (an agent that starts, registers or fails over), not cached."""
        loop = asyncio.get_running_loop()
        found = await loop.run_in_executor(self.cache.threads, self.store.node_assignments, node_id)
        return None if found is None else NodeAssignments(replicas=found[0], prune=found[1])

    async def node_fact(self, node_id: str) -> NodeFact | None:
        """Node ``node_id`` and its token hash as of now (its heartbeat figures maybe
        older; None: no such node). A thousand agents' requests are checked against
        these: on SQLite each node's is kept in memory until a write changes it (no
        thread, no query); on PostgreSQL, where another controller may change it, read
        alone (one primary-key read, in a worker thread)."""
        facts = self.store.node_facts
        if facts is not None:
            kept = facts.get(node_id)
            if kept is not None:
                return kept
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.cache.threads, self.store.node_fact, node_id)

    async def assignments(self, spec_version: int) -> dict[str, NodeAssignments]:
        """Every node's assignments as of the feed's ``spec`` version ``spec_version``
        (taken before the call): they change only with writes of that kind, so the
        reports, registrations and events written meanwhile do not make a fleet's
        woken long-polls read them again. A node that joined since is not in it: ask
        ``node_assignments`` for it."""

        def build() -> dict[str, NodeAssignments]:
            return {
                node: NodeAssignments(replicas=replicas, prune=prune)
                for node, (replicas, prune) in self.store.every_assignment().items()
            }

        return await self.cache.get("assignments", build, version=("spec", spec_version))

    async def node_token_ok(self, node_id: str, token: str) -> bool | None:
        """Whether ``token`` is node ``node_id``'s (None: no such node)."""
        fact = await self.node_fact(node_id)
        if fact is None:
            return None
        given = hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()
        return secrets.compare_digest(given, fact.token_hash)


class AnsweredAssignments:
    """The version and assignments this controller last answered each node's long-poll
    with. A node whose agent presents that version, and whose assignments are still the
    same at a later one, has nothing to act on: its long-poll keeps waiting, so a change
    wakes only the agents that must act on it, not every agent of the fleet. (Another
    controller, or this one after a restart, knows nothing of it and answers at once.)"""

    def __init__(self) -> None:
        self._sent: dict[str, tuple[int, NodeAssignments]] = {}

    def unchanged(self, node_id: str, version: int | None, now: NodeAssignments) -> bool:
        sent = self._sent.get(node_id)
        return (
            version is not None
            and sent is not None
            and sent[0] == version
            and (sent[1] is now or sent[1] == now)
        )

    def sent(self, node_id: str, version: int) -> NodeAssignments | None:
        """What node ``node_id`` was answered at ``version`` (None: not that version)."""
        sent = self._sent.get(node_id)
        return sent[1] if sent is not None and sent[0] == version else None

    def record(self, node_id: str, version: int, answered: NodeAssignments) -> None:
        self._sent[node_id] = (version, answered)

    def forget(self, node_id: str) -> None:
        self._sent.pop(node_id, None)
