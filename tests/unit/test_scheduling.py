"""place_replicas: spread, eligibility, avoid, caps, memory, and why nothing fits."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from orchestrify.models import NodeState
from orchestrify.scheduling import NodeView, place_replicas

READY = NodeState.READY
MiB = 2**20


def node(
    node_id: str,
    *,
    state: NodeState = READY,
    total: int = 0,
    mine: int = 0,
    free: int | None = None,
) -> NodeView:
    return NodeView(
        id=node_id,
        state=state,
        replicas_total=total,
        replicas_by_service={"web": mine} if mine else {},
        memory_free=free,
    )


def test_zero_count_places_nothing() -> None:
    p = place_replicas(service="web", count=0, nodes=[node("a")])
    assert p.nodes == () and p.unplaced == 0 and p.reason is None


def test_fewest_of_this_service_wins_over_fewest_overall() -> None:
    nodes = [node("busy", total=9, mine=0), node("idle", total=1, mine=1)]
    assert place_replicas(service="web", count=1, nodes=nodes).nodes == ("busy",)


def test_then_fewest_replicas_overall() -> None:
    nodes = [node("a", total=5), node("b", total=2), node("c", total=3)]
    assert place_replicas(service="web", count=1, nodes=nodes).nodes == ("b",)


def test_then_most_free_memory() -> None:
    nodes = [node("a", free=100 * MiB), node("b", free=900 * MiB), node("c", free=500 * MiB)]
    assert place_replicas(service="web", count=1, nodes=nodes).nodes == ("b",)


def test_spreads_over_nodes_before_doubling_up() -> None:
    p = place_replicas(service="web", count=3, nodes=[node("a"), node("b"), node("c")])
    assert sorted(p.nodes) == ["a", "b", "c"]


@pytest.mark.parametrize("state", [NodeState.DRAINING, NodeState.NOT_READY])
def test_never_on_draining_or_not_ready_nodes(state: NodeState) -> None:
    nodes = [node("bad", state=state), node("good", total=50, mine=3)]
    p = place_replicas(service="web", count=4, nodes=nodes)
    assert set(p.nodes) == {"good"} and len(p.nodes) == 4


def test_no_ready_node_says_so() -> None:
    nodes = [node("a", state=NodeState.DRAINING), node("b", state=NodeState.NOT_READY)]
    p = place_replicas(service="web", count=2, nodes=nodes)
    assert p.nodes == () and p.unplaced == 2
    assert p.reason is not None and "no node is ready" in p.reason
    assert "draining" in p.reason and "not_ready" in p.reason


def test_no_node_at_all_says_so() -> None:
    p = place_replicas(service="web", count=1, nodes=[])
    assert p.unplaced == 1 and p.reason is not None and "no node has registered" in p.reason


def test_avoid_is_honoured() -> None:
    nodes = [node("slow"), node("other", total=10, mine=2)]
    p = place_replicas(service="web", count=2, nodes=nodes, avoid=frozenset({"slow"}))
    assert p.nodes == ("other", "other")


def test_avoid_everything_says_why() -> None:
    p = place_replicas(service="web", count=1, nodes=[node("a")], avoid=frozenset({"a"}))
    assert p.nodes == () and p.reason is not None and "excluded" in p.reason


def test_max_per_node_caps_and_reports() -> None:
    nodes = [node("a", mine=1, total=1), node("b")]
    p = place_replicas(service="web", count=5, nodes=nodes, max_per_node=2)
    assert Counter(p.nodes) == {"a": 1, "b": 2}
    assert p.unplaced == 2
    assert p.reason is not None and "max_per_node=2" in p.reason


def test_memory_is_subtracted_as_nodes_fill() -> None:
    nodes = [node("small", free=150 * MiB), node("big", free=1000 * MiB)]
    p = place_replicas(service="web", count=6, nodes=nodes, memory_per_replica=100 * MiB)
    counts = Counter(p.nodes)
    assert counts["small"] == 1  # a second one would not fit in 50 MiB
    assert counts["big"] == 5
    assert p.unplaced == 0


def test_not_enough_memory_says_so() -> None:
    nodes = [node("a", free=50 * MiB), node("b", free=150 * MiB)]
    p = place_replicas(service="web", count=3, nodes=nodes, memory_per_replica=100 * MiB)
    assert p.nodes == ("b",) and p.unplaced == 2
    assert p.reason is not None and "memory" in p.reason


def test_unknown_memory_is_placed_on_by_spread() -> None:
    p = place_replicas(
        service="web", count=2, nodes=[node("a"), node("b")], memory_per_replica=100 * MiB
    )
    assert sorted(p.nodes) == ["a", "b"]


@pytest.mark.parametrize("seed", range(20))
def test_placement_is_balanced_on_equal_nodes(seed: int) -> None:
    """Property: one service on equal nodes ends with per-node counts within 1 of each other,
    whether placed in one call or in several calls that carry the counts forward."""
    rng = random.Random(seed)
    ids = [f"n{i}" for i in range(rng.randint(1, 40))]
    counts: Counter[str] = Counter()
    for _ in range(rng.randint(1, 5)):
        want = rng.randint(0, 120)
        views = [
            NodeView(
                id=i,
                state=READY,
                replicas_total=counts[i],
                replicas_by_service={"web": counts[i]},
            )
            for i in ids
        ]
        p = place_replicas(service="web", count=want, nodes=views)
        assert len(p.nodes) == want and p.unplaced == 0
        counts.update(p.nodes)
        per_node = [counts[i] for i in ids]
        assert max(per_node) - min(per_node) <= 1
