"""The nodes of the reconciler's snapshot, kept in memory between reads (SQLite).

The reconciler plans on every node at every cycle: each second, and after each change of
a spec or a node. Read and turned into views afresh, a thousand nodes took about 50 ms of
the GIL per snapshot on an idle machine, several times a second; under load that was a
quarter of the controller's Python time, taken from the event loop that answers the
agents. Here the node views are kept while no committed write changes a node in more
than its heartbeat figures, and a snapshot only reads the figures (one light query), which
the batched heartbeats write every second, and applies those that changed.

A snapshot is one read transaction; kept views must be as current as what that
transaction reads. So a write that changes nodes moves ``generation`` twice, under the
store's write lock: to an odd number just before its commit, and to the next even one
right after. A snapshot takes ``generation`` before its transaction's first query and
again after its other queries, and uses the kept views only when both are the very
generation the views were read at. Any node write its transaction could see was then
committed and counted before it began; any later one moves ``generation``. Otherwise it
reads every node in its own transaction, and keeps what it read only when the two
readings agree on an even generation.

Only where this process makes every write (SQLite, one controller), as ``NodeFacts``.
Under several controllers (PostgreSQL) every snapshot reads the nodes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrify.models import Node
from orchestrify.store.rows import as_utc, node_view
from orchestrify.store.tables import NodeRow

__all__ = ["PlanNodes"]

# The figures a heartbeat writes (``node_facts._FIGURES``), in the order of the light query.
_FIGURE_COLUMNS = (
    NodeRow.last_heartbeat,
    NodeRow.cpu_percent,
    NodeRow.memory_total,
    NodeRow.memory_free,
    NodeRow.disk_free,
    NodeRow.replica_count,
)
_FIGURE_NAMES = tuple(c.key for c in _FIGURE_COLUMNS)

Figures = tuple[Any, ...]


@dataclass(frozen=True)
class _Kept:
    generation: int
    figures_at: int  # the store's ``nodes_generation`` when the figures were read
    nodes: dict[str, tuple[Node, Figures]]  # in the store's row order


def _figures(row: NodeRow) -> Figures:
    return tuple(getattr(row, name) for name in _FIGURE_NAMES)


def _with_figures(node: Node, figures: Figures) -> Node:
    update = dict(zip(_FIGURE_NAMES, figures, strict=True))
    update["last_heartbeat"] = as_utc(update["last_heartbeat"])
    return node.model_copy(update=update)


class PlanNodes:
    """The node views of the last snapshot, with the generation they are current at."""

    def __init__(self) -> None:
        # Moved by every write that changes a node in more than its figures: odd while
        # one commits. Only the writer holding the store's write lock moves it.
        self.generation = 0
        self._kept: _Kept | None = None
        self._lock = threading.Lock()
        self.reads = 0  # full reads of the nodes (for tests and the curious)

    def nodes(self, session: Session, *, before: int, figures_at: int) -> list[Node]:
        """Every node as of ``session``'s read transaction. ``before``: ``generation``
        taken before the transaction's first query; ``figures_at``: the store's
        ``nodes_generation`` taken then too."""
        after = self.generation
        kept = self._kept
        if kept is not None and before == after == kept.generation:
            if kept.figures_at == figures_at:
                return [node for node, _ in kept.nodes.values()]
            return self._refresh(session, kept, figures_at)
        rows = session.scalars(select(NodeRow)).all()
        self.reads += 1
        views = {row.id: (node_view(row), _figures(row)) for row in rows}
        if before == after and before % 2 == 0:
            self._keep(_Kept(generation=before, figures_at=figures_at, nodes=views))
        return [node for node, _ in views.values()]

    def _refresh(self, session: Session, kept: _Kept, figures_at: int) -> list[Node]:
        """The kept views with the figures ``session`` reads (a node changed in more than
        its figures moved ``generation``, so each kept node is still there)."""
        query = select(NodeRow.id, *_FIGURE_COLUMNS)
        fresh = {node_id: tuple(figures) for node_id, *figures in session.execute(query)}
        nodes: dict[str, tuple[Node, Figures]] = {}
        for node_id, (node, figures) in kept.nodes.items():
            now = fresh.get(node_id, figures)
            nodes[node_id] = (node, figures) if now == figures else (_with_figures(node, now), now)
        self._keep(_Kept(generation=kept.generation, figures_at=figures_at, nodes=nodes))
        return [node for node, _ in nodes.values()]

    def drop(self) -> None:
        """Forget the kept views: the next read reads every node (``bench/node_reads.py``
        times that read; the generation still counts every write)."""
        with self._lock:
            self._kept = None

    def _keep(self, kept: _Kept) -> None:
        with self._lock:
            # Two readers at once: the one of the newest generation stays.
            if self._kept is None or self._kept.generation <= kept.generation:
                self._kept = kept
