"""What every agent request is checked against, per node, kept in memory.

Each heartbeat, long-poll and report of a thousand agents checks its node's token, and a
heartbeat its node's state and address (and answers with the node). Read from the store
once per store version, those were a read of every node after every write (a
registration, a report): during a fleet's start, one full read per registration. Here
each node's facts are read alone, once, and kept until a committed write changes them:
the store's write transactions say which nodes they changed (``NodeFacts.forget``,
called under the write lock right after the commit). The heartbeat figures (CPU, memory,
disk, replica count, time) do not count as a change: a heartbeat's answer carries its
own, and the batch that stores them every second would otherwise forget every fact.

Only where this process makes every write (SQLite, one controller). Under several
controllers (PostgreSQL) another one may change a node at any time, so the controller
reads them per store version instead (``ReadViews``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event, inspect
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import get_history

from orchestrify.models import Node
from orchestrify.store.tables import NodeRow

__all__ = ["NODES_WRITTEN_KEY", "TOUCHED_KEY", "NodeFact", "NodeFacts"]

# The node's fields a heartbeat brings (its answer overlays them): a write that changes
# any other field forgets the node's fact.
_FIGURES = frozenset(
    {"last_heartbeat", "cpu_percent", "memory_total", "memory_free", "disk_free", "replica_count"}
)
# Where a write transaction's session collects the ids of the nodes whose facts it changed
# (present, as an empty set, only in the sessions of a store that keeps facts: the others
# pay nothing for it at each flush).
TOUCHED_KEY = "node_facts_touched"
NODES_WRITTEN_KEY = "node_rows_written"
"""``session.info`` key: set when a flush of the session wrote any node row (its heartbeat
figures included), so the node list's view is read again after it commits."""


@dataclass(frozen=True)
class NodeFact:
    """One node as committed (its heartbeat figures maybe older), and its token hash."""

    node: Node
    token_hash: str
    answered_unknown: bool = False
    """Whether its registration was answered ``known=false`` and nothing since told the
    store that the agent has that answer (its first heartbeat or report does)."""

    @property
    def state(self) -> str:
        return self.node.state

    @property
    def address(self) -> str:
        return self.node.address


class NodeFacts:
    """Facts by node id, each kept until a committed write changes that node.

    A fact read while a write that changes it commits could be stale; so a read keeps
    its fact only if no node was forgotten between the start of the read and its end
    (``epoch``). Unknown node ids are not kept: the ids come from request paths."""

    def __init__(self) -> None:
        self._facts: dict[str, NodeFact] = {}
        self._lock = threading.Lock()
        self.epoch = 0
        self.reads = 0  # facts read from the store (for tests and the curious)

    def get(self, node_id: str) -> NodeFact | None:
        return self._facts.get(node_id)

    def keep(self, node_id: str, fact: NodeFact, *, epoch: int) -> None:
        """Keep ``fact``, read since ``epoch``, unless a node was forgotten meanwhile."""
        with self._lock:
            if self.epoch == epoch:
                self._facts[node_id] = fact

    def forget(self, node_ids: Iterable[str]) -> None:
        with self._lock:
            self.epoch += 1
            for node_id in node_ids:
                self._facts.pop(node_id, None)


def touched_nodes(session: Session) -> set[str]:
    """The ids of the nodes whose facts the session's flushes changed so far."""
    found: set[str] = session.info.get(TOUCHED_KEY, set())
    return found


def _changed_keys(row: NodeRow) -> set[str]:
    """The attributes whose pending changes alter the row."""
    # Only the attributes set since the load (``committed_state``), read without
    # ``inspect(row).attrs``: that makes an AttributeState per column, in reference
    # cycles, which a thousand heartbeats a batch turned into most of the controller's
    # cyclic garbage (and its longest garbage-collection pauses).
    return {key for key in inspect(row).committed_state if get_history(row, key).has_changes()}


@event.listens_for(Session, "after_flush")
def _collect_touched(session: Session, _context: Any) -> None:
    # Still the pre-flush view here: new, dirty and deleted lists, attribute histories.
    touched: set[str] | None = session.info.get(TOUCHED_KEY)
    if touched is None:
        return
    added = [row.id for row in (*session.new, *session.deleted) if isinstance(row, NodeRow)]
    changed = {
        row.id: keys
        for row in session.dirty
        if isinstance(row, NodeRow) and (keys := _changed_keys(row))
    }
    touched.update(added)
    touched.update(node_id for node_id, keys in changed.items() if keys - _FIGURES)
    if added or changed:
        session.info[NODES_WRITTEN_KEY] = True
