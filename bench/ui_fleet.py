"""Benchmark: how long the status page's fleet page takes the controller to answer.

Issue 13's goal: the fleet page of 200 nodes and 1,000 replicas renders in under 1 s.
A store is seeded with ``--nodes`` nodes (each with a heartbeat's figures) and
``--replicas`` replicas spread over them in services of 100, then the real controller
app answers, in this process (Starlette's test client, no socket): a sign-in, then
``GET /ui/`` (the whole page) and ``GET /ui/fleet/live`` with an old version (the table's
body the page swaps in when something changed) ``--rounds`` times each. It prints the
median and the slowest answer, and the page's size. What a browser adds (parsing and
laying out the table) is not in it.

    PYTHONPATH=. .venv/bin/python bench/ui_fleet.py [--nodes 200] [--replicas 1000] [--quick]

Bounded: a temporary data dir, removed at the end; no network, no Docker.
"""

from __future__ import annotations

import argparse
import re
import secrets
import shutil
import statistics
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from bench.report import Report, at_most
from orchestrify.controller.app import create_app
from orchestrify.controller.settings import ControllerSettings
from orchestrify.models import Heartbeat, NodeRegistration, ServiceSpec
from orchestrify.store import Store

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

PER_SERVICE = 100
TOKEN = "ui-bench-admin-token"


def seed(data_dir: Path, *, nodes: int, replicas: int) -> None:
    store = Store.in_data_dir(data_dir)
    try:
        node_ids = [
            store.register_node(
                NodeRegistration(
                    name=f"worker-{i:04d}",
                    address=f"10.0.{i // 250}.{i % 250 + 1}",
                    node_id=secrets.token_hex(6),
                    node_token=secrets.token_urlsafe(32),
                )
            )[0].id
            for i in range(nodes)
        ]
        at = datetime.now(UTC)
        store.record_heartbeats(
            {
                node_id: (
                    Heartbeat(
                        cpu_percent=float(i % 100),
                        memory_total=16 * 2**30,
                        memory_free=(i % 16) * 2**30,
                        disk_free=(i % 90 + 10) * 2**30,
                        replica_count=replicas // max(1, nodes),
                    ),
                    at,
                )
                for i, node_id in enumerate(node_ids)
            }
        )
        left, k = replicas, 0
        while left > 0:
            count = min(PER_SERVICE, left)
            name = f"svc-{k:03d}"
            store.create_service(
                ServiceSpec(name=name, image="demo:1", replicas=count, max_replicas=count)
            )
            start = k * PER_SERVICE
            store.create_replicas(
                name,
                [node_ids[(start + j) % len(node_ids)] for j in range(count)],
                reason="bench",
            )
            left -= count
            k += 1
    finally:
        store.close()


def sign_in(client: TestClient) -> None:
    page = client.get("/ui/login")
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None, "no CSRF field on the sign-in page"
    resp = client.post(
        "/ui/login", data={"token": TOKEN, "csrf": found.group(1)}, follow_redirects=False
    )
    if resp.status_code != 303:
        raise RuntimeError(f"sign-in refused: {resp.status_code} {resp.text[:200]}")


def timed(client: TestClient, path: str, rounds: int) -> tuple[list[float], int]:
    samples, size = [], 0
    for _ in range(rounds):
        started = time.perf_counter()
        resp = client.get(path)
        samples.append(time.perf_counter() - started)
        if resp.status_code != 200:
            raise RuntimeError(f"{path}: {resp.status_code} {resp.text[:200]}")
        size = len(resp.content)
    return samples, size


def run(*, nodes: int, replicas: int, rounds: int) -> Report:
    data_dir = Path(tempfile.mkdtemp(prefix="orchestrify-ui-bench-"))
    try:
        seed(data_dir, nodes=nodes, replicas=replicas)
        settings = ControllerSettings(data_dir=data_dir, token=TOKEN, join_token="j" * 24)
        app = create_app(settings, run_reconciler=False)
        with warnings.catch_warnings():
            # Starlette's in-process client is the one wanted here; its nudge towards
            # another HTTP library is not this bench's output.
            warnings.filterwarnings("ignore", message="Using `httpx` with")
            from fastapi.testclient import TestClient
        with TestClient(app) as client:
            sign_in(client)
            timed(client, "/ui/", 2)  # warm: the views are read once per store version
            page, page_size = timed(client, "/ui/", rounds)
            body, body_size = timed(client, "/ui/fleet/live?v=0-0-0", rounds)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    out = Report("status page: the fleet page, answered by the controller")
    scenario = f"{nodes:,} nodes, {replicas:,} replicas"
    out.add(scenario, "GET /ui/ median", statistics.median(page) * 1000, "ms")
    out.add(scenario, "GET /ui/ slowest", max(page) * 1000, "ms", at_most(1000, "ms"))
    out.add(scenario, "  page size", page_size / 1024, "KiB")
    out.add(scenario, "live table body median", statistics.median(body) * 1000, "ms")
    out.add(scenario, "live table body slowest", max(body) * 1000, "ms", at_most(1000, "ms"))
    out.add(scenario, "  body size", body_size / 1024, "KiB")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--replicas", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="20 nodes, 100 replicas, 3 rounds")
    args = parser.parse_args()
    if args.quick:
        args.nodes, args.replicas, args.rounds = 20, 100, 3
    run(nodes=args.nodes, replicas=args.replicas, rounds=args.rounds).print()


if __name__ == "__main__":
    main()
