"""Heartbeats kept in memory and written in one batch per interval.

A thousand agents heartbeating every 5 s were two hundred write transactions a second,
each one waiting for the store's write lock. Yet what decides on a node's life is this
process's monotonic clock (``NodeLiveness.seen``, told at once); the stored figures are
for display, and, on PostgreSQL, how a leader learns of the heartbeats another
controller received. So a heartbeat is remembered here and answered at once, and every
``flush_s`` the latest heartbeat of each node is written in one transaction.

What cannot wait is written before the answer: a heartbeat of a node the store holds as
silent (``not_ready``/``unreachable``: it becomes ready again now), of a node whose
address moved, or a new node's first (its agent has the answer to its registration).
Those are written alone, not with every heartbeat pending, in one transaction with the
others of their kind that arrive meanwhile (``GroupCommit``): a fleet that joins or comes
back together is a few small writes, not one each, nor one of the whole fleet each. (They
went with the whole pending batch before: while a thousand agents registered, each new
agent's first heartbeat waited for two such writes, 2 to 10 s, and some timed out.) A
node this controller does not know is a 404 (register again).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import datetime

from orchestrify.controller.batching import GroupCommit
from orchestrify.controller.views import NODE, NodeViews, ReadViews, encode
from orchestrify.errors import NotFound, OrchestrifyError
from orchestrify.models import Heartbeat, Node, NodeState
from orchestrify.store import Store
from orchestrify.store.rows import utcnow

__all__ = ["HeartbeatBuffer", "with_figures"]

log = logging.getLogger(__name__)

_SILENT = frozenset({NodeState.NOT_READY, NodeState.UNREACHABLE})


def with_figures(node: Node, hb: Heartbeat, at: datetime) -> Node:
    """``node`` as heartbeat ``hb``, received at ``at``, left it (its figures only: a
    heartbeat that changes more is written before it is answered)."""
    figures = hb.model_dump(exclude_none=True, exclude={"address"})
    return node.model_copy(update={**figures, "last_heartbeat": at})


class HeartbeatBuffer:
    """The heartbeats received since the last batched write, the latest per node."""

    def __init__(self, store: Store, views: ReadViews, *, flush_s: float) -> None:
        self.store = store
        self.views = views
        self.flush_s = flush_s
        self._pending: dict[str, tuple[Heartbeat, datetime]] = {}
        # The batch being written now: still shown by reads until the store has it.
        self._writing: dict[str, tuple[Heartbeat, datetime]] = {}
        # One flush at a time: a read that flushes first then waits for one under way,
        # so it never reads the store before the heartbeats it follows are in it.
        self._flushing = asyncio.Lock()
        self.batches = 0  # batched writes made (for tests and the curious)
        # What the last listing encoded: node id -> (node view, heartbeat, JSON).
        self._overlaid: dict[str, tuple[Node, tuple[Heartbeat, datetime], bytes]] = {}
        # The heartbeats written before their answer, with those that arrive meanwhile.
        self.urgent = GroupCommit(self._write_urgent)

    async def receive(self, node_id: str, hb: Heartbeat) -> Node:
        """Take one heartbeat; the node as it now stands: as stored now, with the
        heartbeat's figures (the agent reads nothing of the answer but its status)."""
        fact = await self.views.node_fact(node_id)
        if fact is None:
            raise NotFound(f"no node with id {node_id!r}; register again")
        now = utcnow()
        beat = (hb, now)
        self._pending[node_id] = beat
        if (
            fact.state in _SILENT
            or (hb.address is not None and hb.address != fact.address)
            or fact.answered_unknown
        ):
            # It changes the node (ready again, moved, or its agent now has the answer
            # to its registration, so a retry of it is answered ``known``): written
            # before the answer, with the other such heartbeats that arrive meanwhile.
            try:
                await self.urgent.submit((node_id, hb, now))
            except OrchestrifyError as exc:
                log.warning(
                    "heartbeat not written; kept for the next batch",
                    extra={"error": str(exc), "node": node_id},
                )
            else:
                if self._pending.get(node_id) is beat:  # written, and nothing newer came
                    del self._pending[node_id]
            fact = await self.views.node_fact(node_id) or fact
        return with_figures(fact.node, hb, now)

    def _write_urgent(self, items: list[tuple[str, Heartbeat, datetime]]) -> list[None]:
        """``GroupCommit``'s writer (in a worker thread): these heartbeats alone, in one
        transaction (a node's latest if it sent two)."""
        self.store.record_heartbeats({node_id: (hb, at) for node_id, hb, at in items})
        return [None] * len(items)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def received(self) -> dict[str, tuple[Heartbeat, datetime]]:
        """The heartbeats received but maybe not yet in the store (a copy): a read of the
        nodes takes it before it reads the store, and shows them over what it read, so
        what a heartbeat answered is in every read that follows it."""
        return {**self._writing, **self._pending}

    def listing(
        self, views: NodeViews, received: Mapping[str, tuple[Heartbeat, datetime]]
    ) -> bytes:
        """``GET /v1/nodes``: the view's JSON, with the nodes in ``received`` encoded
        again with their latest figures (the others as the view encoded them). Not one
        store write and a rebuild of every node's view per read, as flushing first was:
        a client polling the node list of a thousand-node fleet costs a few encodings."""
        if not received.keys() & views.by_id.keys():
            return views.listing
        # A node encoded with the same heartbeat over the same view by an earlier read is
        # not encoded again: a poll of the list encodes the heartbeats new since the last.
        before, overlaid = self._overlaid, {}
        parts = []
        for node, body in views.by_id.values():
            beat = received.get(node.id)
            if beat is not None:
                known = before.get(node.id)
                if known is not None and known[0] is node and known[1] is beat:
                    body = known[2]
                else:
                    body = encode(with_figures(node, *beat), NODE)
                overlaid[node.id] = (node, beat, body)
            parts.append(body)
        self._overlaid = overlaid
        return b"[" + b",".join(parts) + b"]"

    def node(
        self, views: NodeViews, id_or_name: str, received: Mapping[str, tuple[Heartbeat, datetime]]
    ) -> bytes:
        """``GET /v1/nodes/{id}``: one node, with its latest figures."""
        node, body = views.find(id_or_name)
        beat = received.get(node.id)
        return body if beat is None else encode(with_figures(node, *beat), NODE)

    async def flush(self) -> None:
        """Write the heartbeats received so far in one transaction. When the store cannot
        write now they are kept (a newer heartbeat of a node wins) for the next try."""
        async with self._flushing:
            if not self._pending:
                return
            batch, self._pending = self._pending, {}
            self._writing = batch
            try:
                await asyncio.to_thread(self.store.record_heartbeats, batch)
            except OrchestrifyError as exc:
                log.warning(
                    "heartbeats not written; kept for the next batch",
                    extra={"error": str(exc), "nodes": len(batch)},
                )
                for node_id, beat in batch.items():
                    self._pending.setdefault(node_id, beat)
                return
            finally:
                self._writing = {}
            self.batches += 1

    async def run_forever(self) -> None:
        """Flush every ``flush_s`` until cancelled (on every controller, leader or not:
        each writes the heartbeats it received); the app flushes once more at shutdown."""
        while True:
            await asyncio.sleep(self.flush_s)
            await self.flush()
