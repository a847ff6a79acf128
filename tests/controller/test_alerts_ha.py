"""Alert intake with two controllers on one PostgreSQL (issue 11): the same Alertmanager
notification delivered to both at once is stored once and acted on once, every delivery
answers 2xx, and only the leading controller decides (a follower's webhook answers once
the alerts are stored; the leader's loop decides them)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bench.postgres import PostgresServer
from tests.controller.test_alerts_api import (
    ADMIN,
    decisions,
    deploy,
    desired,
    make_client,
    rate_high,
    state_of,
)

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


@pytest.mark.parametrize("b_leads", [True, False], ids=["both-lead", "b-follows"])
def test_one_notification_delivered_to_both_controllers_at_once_acts_once(
    pair: tuple[TestClient, TestClient], b_leads: bool
) -> None:
    a, b = pair
    assert state_of(a).leadership.is_leader and not state_of(b).leadership.is_leader
    if b_leads:
        # B as a deposed leader that does not know it yet, deciding unfenced: only the
        # receipt's row lock stands between the two deciders.
        state_of(b).alerts.leading = lambda: True
        state_of(b).alerts.fence = contextlib.nullcontext
    deploy(a)  # web: 1 replica, healthy
    codes = deliver_everywhere(pair, rate_high())
    assert codes == [200] * DELIVERIES  # no 409 for the delivery that lost the insert race
    # Both leading (a deposed leader that does not know it yet): the receipt's row lock
    # decides once. B following: whatever B stored, A's loop decides.
    state_of(a).alerts.process_pending()
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


def test_a_follower_stores_and_answers_the_leader_decides(
    pair: tuple[TestClient, TestClient],
) -> None:
    a, b = pair
    follower = state_of(b).alerts
    follower.leading = lambda: False
    deploy(a)
    got = b.post("/v1/alerts", json=rate_high(), headers=ADMIN)
    assert got.status_code == 200
    assert got.json()["new"] == 1
    # Stored durably, not decided: no decision, no scale, and the follower's own loop
    # (tick, pending) leaves it to the leader.
    assert follower.alerts.has_pending()
    follower.tick()
    assert follower.process_pending() == 0
    assert decisions(a) == []
    assert desired(a) == 1
    # The leader's loop decides it.
    assert state_of(a).alerts.process_pending() == 1
    assert desired(b) == 2
    assert [d["outcome"] for d in decisions(b)] == ["ok"]
    # A later duplicate at the leader is a duplicate: nothing more.
    again = a.post("/v1/alerts", json=rate_high(), headers=ADMIN).json()
    assert (again["new"], again["duplicates"]) == (0, 1)
    assert desired(a) == 2


@pytest.mark.parametrize("woken", [True, False], ids=["woken", "polled"])
def test_the_leaders_loop_decides_what_a_follower_stored_without_waiting_for_a_tick(
    pair: tuple[TestClient, TestClient], woken: bool
) -> None:
    a, b = pair
    leader, follower = state_of(a).alerts, state_of(b).alerts
    follower.leading = lambda: False
    deploy(a)
    if woken:  # told at once (what a cross-controller notification does): no polling
        leader.pending_poll_s = 3600.0
    assert a.portal is not None
    # The loop's re-evaluation is an hour away: only the wake-up or the poll decides.
    loop = a.portal.start_task_soon(leader.run_forever, 3600.0)
    try:
        assert b.post("/v1/alerts", json=rate_high(), headers=ADMIN).status_code == 200
        if woken:
            wait_until(lambda: leader._wakeup is not None)
            leader.wake()
        wait_until(lambda: desired(a) == 2)
    finally:
        loop.cancel()
    assert [d["outcome"] for d in decisions(a)] == ["ok"]


def test_alert_decisions_and_patches_of_one_service_through_both_controllers_answer_2xx(
    pair: tuple[TestClient, TestClient],
) -> None:
    """The leader deciding (webhook) while the owner PATCHes the same service through
    either controller: the decision and the PATCH lock the service, then its policy
    state, in that order on both sides, so neither is a 503 (deadlock) or a 409 (both
    making the first policy-state row), and the count is the last writer's."""
    a, b = pair
    state_of(b).alerts.leading = lambda: False
    deploy(a, max_replicas=8)
    calls = 40

    def one(i: int) -> int:
        c = pair[(i // 2) % 2]
        if i % 2:
            got = c.patch("/v1/services/web", json={"replicas": 1 + i % 7}, headers=ADMIN)
        else:  # a new alert each time (another replica's): each one is decided
            body = rate_high(fingerprint=f"{i:016x}", replica=f"web-{i}")
            got = c.post("/v1/alerts", json=body, headers=ADMIN)
        return int(got.status_code)

    start = threading.Barrier(16)

    def together(i: int) -> int:
        if i < start.parties:
            start.wait(timeout=30)
        return one(i)

    with ThreadPoolExecutor(max_workers=16) as pool:
        codes = list(pool.map(together, range(calls)))
    assert codes == [200] * calls
    state_of(a).alerts.process_pending()  # what the follower stored
    assert not state_of(a).alerts.alerts.has_pending()
    scales = [e["data"] for e in scale_events(a)]
    assert desired(b) == scales[-1]["to"]  # the last writer's count
