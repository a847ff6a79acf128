"""Alert intake with two controllers on one PostgreSQL (issue 11): the same Alertmanager
notification delivered to both at once is stored once and acted on once, every delivery
answers 2xx, and only the leading controller decides (a follower's webhook answers once
the alerts are stored; the leader's loop decides them)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.controller.test_alerts_api import (
    ADMIN,
    decisions,
    deploy,
    desired,
    make_client,
    rate_high,
    state_of,
)
from tests.postgres import PostgresServer

DELIVERIES = 40  # per test: the same notification, half through each controller


@pytest.fixture
def pair(tmp_path: Path, postgres: PostgresServer) -> Iterator[tuple[TestClient, TestClient]]:
    """Two controllers (own data dirs, own engines and locks) on one PostgreSQL database."""
    url = postgres.url(postgres.emptied_database())
    with (
        make_client(tmp_path / "a", database_url=url) as a,
        make_client(tmp_path / "b", database_url=url) as b,
    ):
        yield a, b


def deliver_everywhere(
    clients: tuple[TestClient, TestClient], body: dict[str, Any], *, times: int = DELIVERIES
) -> list[int]:
    """POST ``body`` to /v1/alerts ``times`` times, alternating the controllers, all at
    once (released together by a barrier); the status codes."""
    start = threading.Barrier(min(times, 16))

    def one(i: int) -> int:
        if i < start.parties:
            start.wait(timeout=30)
        return int(clients[i % 2].post("/v1/alerts", json=body, headers=ADMIN).status_code)

    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(one, range(times)))


def scale_events(c: TestClient) -> list[dict[str, Any]]:
    events = c.get("/v1/events", params={"service": "web"}, headers=ADMIN).json()
    return [e for e in events if e["action"] == "scale"]


def wait_until(check: Callable[[], bool], *, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.05)


def test_one_notification_delivered_to_both_controllers_at_once_acts_once(
    pair: tuple[TestClient, TestClient],
) -> None:
    a, b = pair
    deploy(a)  # web: 1 replica, healthy
    codes = deliver_everywhere(pair, rate_high())
    assert codes == [200] * DELIVERIES  # no 409 for the delivery that lost the insert race
    # Both controllers lead here (no lease yet): the receipt's row lock decides once.
    assert desired(a) == desired(b) == 2
    assert len(scale_events(b)) == 1
    acted = [d for d in decisions(a) if d["outcome"] == "ok"]
    assert len(acted) == 1
    receipts = [
        e
        for e in a.get("/v1/events", params={"kind": "alert"}, headers=ADMIN).json()
        if not e["data"]["duplicate"]
    ]
    assert len(receipts) == 1  # stored once; every other delivery was a duplicate
