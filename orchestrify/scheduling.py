"""Replica placement: a pure function of the fleet's state.

Spread first (fewest replicas of this service on the node), then fewest replicas
overall, then most free memory; never on draining or not-ready nodes; honours an
``avoid`` set (to scale out "on a different worker") and a per-node cap.

Placement uses a heap keyed on that order, so placing R replicas over N nodes costs
O(N + R log N) instead of O(R * N).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from orchestrify.models import NodeState


@dataclass(frozen=True, slots=True)
class NodeView:
    """What the scheduler needs to know of a node, and nothing else."""

    id: str
    state: NodeState
    replicas_total: int = 0
    replicas_by_service: Mapping[str, int] = field(default_factory=dict)
    memory_free: int | None = None  # bytes; None when the node has not reported it


@dataclass(frozen=True, slots=True)
class Placement:
    """The outcome: one node id per placed replica, and why the rest could not be placed."""

    nodes: tuple[str, ...]
    unplaced: int = 0
    reason: str | None = None


def place_replicas(
    *,
    service: str,
    count: int,
    nodes: Iterable[NodeView],
    avoid: frozenset[str] = frozenset(),
    max_per_node: int | None = None,
    memory_per_replica: int | None = None,
) -> Placement:
    """Choose a node for each of ``count`` new replicas of ``service``.

    ``avoid`` holds node ids not to use (for example the node of a slow replica);
    ``memory_per_replica`` (bytes) is subtracted from a node's free memory as it fills.
    """
    if count <= 0:
        return Placement(nodes=())
    all_nodes = list(nodes)
    ready = [n for n in all_nodes if n.state == NodeState.READY]
    candidates = [n for n in ready if n.id not in avoid]

    heap: list[tuple[int, int, int, str]] = []
    for n in candidates:
        mine = n.replicas_by_service.get(service, 0)
        if max_per_node is not None and mine >= max_per_node:
            continue
        free = n.memory_free if n.memory_free is not None else 0
        if memory_per_replica and n.memory_free is not None and free < memory_per_replica:
            continue
        heap.append((mine, n.replicas_total, -free, n.id))
    heapq.heapify(heap)

    # Nodes that have not reported memory are placed on by spread alone.
    unknown_memory = {n.id for n in candidates if n.memory_free is None}
    chosen: list[str] = []
    while heap and len(chosen) < count:
        mine, total, neg_free, node_id = heapq.heappop(heap)
        chosen.append(node_id)
        mine += 1
        total += 1
        if max_per_node is not None and mine >= max_per_node:
            continue
        if memory_per_replica and node_id not in unknown_memory:
            neg_free += memory_per_replica
            if -neg_free < memory_per_replica:
                continue
        heapq.heappush(heap, (mine, total, neg_free, node_id))

    unplaced = count - len(chosen)
    if not unplaced:
        return Placement(nodes=tuple(chosen))
    return Placement(
        nodes=tuple(chosen),
        unplaced=unplaced,
        reason=_why_unplaced(
            all_nodes=all_nodes,
            ready=ready,
            candidates=candidates,
            max_per_node=max_per_node,
            memory_per_replica=memory_per_replica,
        ),
    )


def _why_unplaced(
    *,
    all_nodes: list[NodeView],
    ready: list[NodeView],
    candidates: list[NodeView],
    max_per_node: int | None,
    memory_per_replica: int | None,
) -> str:
    if not all_nodes:
        return "no eligible node: no node has registered"
    if not ready:
        states = sorted({n.state.value for n in all_nodes})
        return f"no eligible node: no node is ready (nodes are {', '.join(states)})"
    if not candidates:
        return "no eligible node: every ready node is excluded (it carries the replica being moved)"
    parts = []
    if max_per_node is not None:
        parts.append(f"every eligible node holds max_per_node={max_per_node} replicas")
    if memory_per_replica:
        parts.append("not enough free memory")
    return "no eligible node: " + (" or ".join(parts) if parts else "capacity exhausted")
