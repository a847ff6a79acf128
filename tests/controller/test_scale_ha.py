"""100 concurrent scale and create calls spread over two controllers on one PostgreSQL
(issue 11) leave exactly the requested replicas and no duplicates: no replica id twice,
and no service with a fixed host port twice on one node. Both controllers' reconcilers
run meanwhile (the worst case: a deposed leader that does not know it yet), placing from
snapshots that the calls keep making stale. No agents: placed replicas stay assigned."""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bench.postgres import PostgresServer
from tests.controller.test_alerts_api import ADMIN, JOIN, make_client, state_of

CALLS = 100
EXISTING = [f"old{n}" for n in range(10)]  # scaled during the race
CREATED = [f"new{n}" for n in range(5)]  # created during it, through both controllers
NODES = 4


@pytest.fixture
def pair(tmp_path: Path, postgres: PostgresServer) -> Iterator[tuple[TestClient, TestClient]]:
    url = postgres.url(postgres.emptied_database())
    # Nodes never report here: a long node timeout keeps them ready for the whole test.
    options: dict[str, Any] = {"database_url": url, "node_timeout_s": 3600}
    with (
        make_client(tmp_path / "a", **options) as a,
        make_client(tmp_path / "b", **options) as b,
    ):
        yield a, b


def spec(name: str, n: int) -> dict[str, Any]:
    """Every other service has a fixed host port: at most one replica per node."""
    body: dict[str, Any] = {"name": name, "image": "demo:1", "replicas": 1, "max_replicas": 4}
    if n % 2:
        body["host_port"] = 20000 + n
    return body


def test_concurrent_scale_and_create_calls_leave_exactly_the_requested_replicas(
    pair: tuple[TestClient, TestClient],
) -> None:
    a, b = pair
    for i in range(NODES):
        got = a.post(
            "/v1/nodes/register", json={"name": f"n{i}", "address": "127.0.0.1"}, headers=JOIN
        )
        assert got.status_code == 200, got.text
    for n, name in enumerate(EXISTING):
        assert a.post("/v1/services", json=spec(name, n), headers=ADMIN).status_code == 201
    state_of(a).reconciler.run_once()

    rng = random.Random(11)
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/v1/services", spec(name, n)) for n, name in enumerate(CREATED) for _ in (0, 1)
    ]
    calls += [
        ("PATCH", f"/v1/services/{name}", {"replicas": rng.randint(1, 4)})
        for name in rng.choices(EXISTING, k=CALLS - len(calls))
    ]
    rng.shuffle(calls)

    stop = threading.Event()

    def reconcile(c: TestClient) -> int:
        cycles = 0
        while not stop.is_set():
            state_of(c).reconciler.run_once()
            cycles += 1
        return cycles

    start = threading.Barrier(16)

    def call(i: int) -> tuple[str, int]:
        method, path, body = calls[i]
        if i < start.parties:
            start.wait(timeout=30)
        got = pair[i % 2].request(method, path, json=body, headers=ADMIN)
        return path, got.status_code

    with ThreadPoolExecutor(max_workers=2) as loops:
        cycles = [loops.submit(reconcile, c) for c in pair]
        try:
            with ThreadPoolExecutor(max_workers=16) as pool:
                answers = list(pool.map(call, range(len(calls))))
        finally:
            stop.set()
        assert all(f.result() > 0 for f in cycles)

    # Each new service created once (201), its second create a 409; every scale a 200.
    codes = Counter(answers)
    creates = [c for p, c in answers if p == "/v1/services"]
    assert sorted(creates) == [201] * len(CREATED) + [409] * len(CREATED), codes
    assert all(c == 200 for p, c in answers if p != "/v1/services"), codes

    # The leader's next cycles converge on what was asked.
    for _ in range(10):
        if not state_of(a).reconciler.run_once():
            break
    services = {s["name"]: s for s in b.get("/v1/services", headers=ADMIN).json()}
    assert sorted(services) == sorted(EXISTING + CREATED)
    replicas = b.get("/v1/replicas", headers=ADMIN).json()
    assert len({r["id"] for r in replicas}) == len(replicas)  # no replica id twice
    running = [r for r in replicas if r["desired"] == "run"]
    for name, svc in services.items():
        mine = [r for r in running if r["service"] == name]
        assert len(mine) == svc["replicas"], (name, mine)
        if svc.get("host_port") is not None:  # one per node: no port taken twice
            assert len({r["node"] for r in mine}) == len(mine), (name, mine)
    # The count each scaled service ends with is its last scale's.
    events = a.get("/v1/events", params={"kind": "action", "limit": 5000}, headers=ADMIN).json()
    for name in EXISTING:
        scales = [e["data"] for e in events if e["service"] == name and e["action"] == "scale"]
        if scales:
            assert services[name]["replicas"] == scales[-1]["to"], name
