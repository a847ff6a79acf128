"""Benchmark: what reading every node costs one controller (SQLite), per heartbeat batch.

The reconciler reads every node at each cycle (each second, and after each change), and
``GET /v1/nodes`` after each heartbeat batch; at a thousand nodes that was a quarter of
the controller's Python time in ``bench/fleet.py``, taken from the event loop that
answers the agents (the GIL). The store keeps the node views between reads and reads
only the heartbeat figures again (``orchestrify/store/plan_nodes.py``).

For ``--nodes`` nodes (and one service with a replica on every tenth node), each round
writes one batch of heartbeats from ``--changed`` of the nodes (new figures, as the
controller's batched write does every second), then times ``Store.snapshot()`` (what
the reconciler plans on) and ``Store.list_nodes()`` (what the node list's view is built
from): with the kept views, and reading every node afresh as before (the same store
with its kept views dropped just before the read). Medians over ``--rounds``; CPU
time of this process, which is what the reads take from the controller's other threads.

    PYTHONPATH=. .venv/bin/python bench/node_reads.py [--nodes 1000] [--rounds 30] [--quick]

Bounded: a temporary data dir, removed at the end; no network, no Docker.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench.report import Report
from orchestrify.models import Heartbeat, NodeRegistration, ServiceSpec
from orchestrify.store import Store


def _cpu_ms(read: Callable[[], object]) -> float:
    started = time.thread_time()
    read()
    return (time.thread_time() - started) * 1000


def _beat(store: Store, node_ids: list[str], k: int, changed: float, round_no: int) -> None:
    count = max(1, int(len(node_ids) * changed))
    start = (round_no * count) % len(node_ids)
    chosen = [node_ids[(start + i) % len(node_ids)] for i in range(count)]
    at = datetime.now(UTC)
    store.record_heartbeats(
        {
            node_id: (Heartbeat(cpu_percent=float(k % 100), memory_free=2**30 + k + i), at)
            for i, node_id in enumerate(chosen)
        }
    )


def run(*, nodes: int, rounds: int, changed: float) -> Report:
    data_dir = Path(tempfile.mkdtemp(prefix="orchestrify-node-reads-"))
    try:
        store = Store.in_data_dir(data_dir)
        try:
            return _measure(store, nodes=nodes, rounds=rounds, changed=changed)
        finally:
            store.close()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def _measure(store: Store, *, nodes: int, rounds: int, changed: float) -> Report:
    node_ids = [
        store.register_node(
            NodeRegistration(
                name=f"node-{i:05d}",
                address="127.0.0.1",
                node_id=secrets.token_hex(6),
                node_token=secrets.token_urlsafe(32),
            )
        )[0].id
        for i in range(nodes)
    ]
    count = max(1, nodes // 10)
    store.create_service(
        ServiceSpec(name="web", image="demo:1", replicas=count, max_replicas=count)
    )
    store.create_replicas("web", node_ids[::10], reason="bench")
    _beat(store, node_ids, 0, 1.0, 0)  # each node's first heartbeat changes more than figures
    plan = store.plan_nodes
    assert plan is not None  # a SQLite store keeps them
    figures: dict[str, list[float]] = {}
    k = 1
    for round_no in range(rounds):
        for mode in ("kept", "afresh"):
            for what, read in (("snapshot", store.snapshot), ("node list", store.list_nodes)):
                _beat(store, node_ids, k, changed, round_no)
                k += 1
                if mode == "afresh":
                    plan.drop()  # the read then reads every node, as before the views
                figures.setdefault(f"{what}, {mode}", []).append(_cpu_ms(read))
    out = Report(f"node reads: every node read per heartbeat batch ({changed:.0%} changed)")
    scenario = f"{nodes:,} nodes"
    for name, samples in figures.items():
        out.add(scenario, f"{name} (median CPU)", statistics.median(samples), "ms")
    for what in ("snapshot", "node list"):
        ratio = statistics.median(figures[f"{what}, afresh"]) / max(
            statistics.median(figures[f"{what}, kept"]), 1e-6
        )
        out.add(scenario, f"{what}: afresh / kept", ratio, "x")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument(
        "--changed", type=float, default=0.2, help="share of the nodes in each heartbeat batch"
    )
    parser.add_argument("--quick", action="store_true", help="100 nodes, 3 rounds")
    args = parser.parse_args()
    if args.quick:
        args.nodes, args.rounds = 100, 3
    run(nodes=args.nodes, rounds=args.rounds, changed=args.changed).print()


if __name__ == "__main__":
    main()
