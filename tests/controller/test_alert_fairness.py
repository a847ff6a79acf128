"""Fair alert intake through the real controller app: a flood of alerts for one service
never queues another service's decision behind it, and the flood's own alerts are still
decided in order, once each, one scale step for the lot.

Order is read from the event trail (event ids), never from timings."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from bench.live import serve
from orchestrify.alerting.payload import AlertBatch
from orchestrify.controller.alerts import DECISION_SLICE
from orchestrify.store import utcnow
from tests.alerting.payloads import am_alert, am_payload
from tests.controller.test_alerts_api import ADMIN, JOIN, make_client, state_of

CAP = 250  # max_alerts_per_batch in these tests: the flood is made of capped batches
FLOOD_BATCHES = 6  # 1,500 alerts: more than one page of the old 1,000-alert intake


def flood_batch(b: int) -> dict[str, Any]:
    """One capped notification of per-replica latency alerts for service ``flood``."""
    return am_payload(
        *(
            am_alert(
                "ServiceLatencyHigh",
                service="flood",
                replica=f"flood-{b}-{j}",
                fingerprint=f"{b:04x}{j:04x}",
            )
            for j in range(CAP)
        )
    )


def quiet_alert() -> dict[str, Any]:
    return am_payload(am_alert("ServiceRequestRateHigh", service="quiet", fingerprint="0ddba11"))


def decisions(api: TestClient | httpx.Client, service: str) -> list[dict[str, Any]]:
    params = {"kind": "decision", "service": service, "limit": 10_000}
    got: list[dict[str, Any]] = api.get("/v1/events", params=params, headers=ADMIN).json()
    return got


def deploy_flood_and_quiet(api: TestClient | httpx.Client, *, run_once: Any) -> None:
    """Two nodes, services ``flood`` and ``quiet`` with one healthy replica each."""
    for i in range(2):
        r = api.post(
            "/v1/nodes/register", json={"name": f"n{i}", "address": "127.0.0.1"}, headers=JOIN
        )
        assert r.status_code in (200, 201)
    for name in ("flood", "quiet"):
        body: dict[str, Any] = {"name": name, "image": "nginx:1", "replicas": 1, "max_replicas": 4}
        if name == "flood":
            # Dry run, no cooldown: nothing is placed, so only the one-step rule (not
            # "starting", not the cooldown) stops the flood's second alert and the rest.
            body["policy"] = {"cooldown_s": 0, "dry_run": True}
        assert api.post("/v1/services", json=body, headers=ADMIN).status_code == 201
    run_once()
    for r in api.get("/v1/replicas", headers=ADMIN).json():
        report = {"id": r["id"], "state": "healthy", "address": "127.0.0.1:1"}
        got = api.post(
            f"/v1/nodes/{r['node']}/replicas", json={"replicas": [report]}, headers=ADMIN
        )
        assert got.status_code == 204


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with make_client(tmp_path, max_alerts_per_batch=CAP) as c:
        yield c


def test_a_quiet_services_alert_is_decided_ahead_of_a_flood_backlog(client: TestClient) -> None:
    state = state_of(client)
    deploy_flood_and_quiet(client, run_once=state.reconciler.run_once)
    # The flood's notifications are stored and wait for their decisions (their webhook
    # calls are still deciding, or the controller restarted in between).
    for b in range(FLOOD_BATCHES):
        state.alerts.alerts.store_batch(AlertBatch.model_validate(flood_batch(b)), now=utcnow())
    r = client.post("/v1/alerts", json=quiet_alert(), headers=ADMIN)
    assert r.status_code == 200 and r.json()["new"] == 1
    # Answered with its decision taken, while most of the flood still waits.
    (quiet,) = decisions(client, "quiet")
    assert (quiet["outcome"], quiet["data"]["to"]) == ("ok", 2)
    early = len(decisions(client, "flood"))
    assert early <= DECISION_SLICE
    assert state.alerts.process_pending() == CAP * FLOOD_BATCHES - early
    flood = decisions(client, "flood")
    assert len(flood) == CAP * FLOOD_BATCHES  # every flood alert decided, once
    assert sum(1 for d in flood if d["id"] < quiet["id"]) <= DECISION_SLICE
    # One step for the lot, though decided over many slices: the first in arrival order
    # takes it, the rest are refused by the one-step rule.
    assert (flood[0]["reason"], flood[0]["data"]["to"]) == ("dry_run", 2)
    assert {d["reason"] for d in flood[1:]} == {"one_step"}
    assert "flood-0-0" not in flood[1]["message"] and "flood-0-1" in flood[1]["message"]
    assert state.alerts.alerts.pending() == []


def test_concurrent_webhook_calls_decide_the_quiet_alert_before_the_flood_is_done(
    tmp_path: Path,
) -> None:
    """Real uvicorn, the flood's capped notifications posted at once, the quiet one after
    them. Deciding is held until every call has stored its alerts, so the order the
    decisions are then taken in is the scheduler's, not the luck of the threads."""
    from prometheus_client import CollectorRegistry

    from orchestrify.controller.app import create_app
    from orchestrify.controller.settings import ControllerSettings

    settings = ControllerSettings(
        data_dir=tmp_path, token="admin-token", join_token="join-token", max_alerts_per_batch=CAP
    )
    app = create_app(settings, registry=CollectorRegistry(), run_reconciler=False)
    with serve(app) as url, httpx.Client(base_url=url, timeout=300) as api:
        state = app.state.controller
        deploy_flood_and_quiet(api, run_once=state.reconciler.run_once)
        answers: list[int] = []

        def post(body: dict[str, Any]) -> None:
            with httpx.Client(base_url=url, timeout=300) as own:
                answers.append(own.post("/v1/alerts", json=body, headers=ADMIN).status_code)

        def stored() -> int:
            return len(state.alerts.alerts.pending(limit=10_000))

        def wait_stored(count: int) -> None:
            deadline = time.monotonic() + 120
            while stored() < count:
                assert time.monotonic() < deadline, f"only {stored()} of {count} alerts stored"
                time.sleep(0.05)

        threads = [threading.Thread(target=post, args=(flood_batch(b),)) for b in range(4)]
        with state.alerts._lock:  # deciding waits; storing does not
            for t in threads:
                t.start()
            wait_stored(4 * CAP)
            quiet = threading.Thread(target=post, args=(quiet_alert(),))
            quiet.start()
            threads.append(quiet)
            wait_stored(4 * CAP + 1)
        for t in threads:
            t.join(timeout=300)
        assert answers == [200] * 5
        (decided,) = decisions(api, "quiet")
        flood = decisions(api, "flood")
        assert len(flood) == 4 * CAP
        before = sum(1 for d in flood if d["id"] < decided["id"])
        assert before <= DECISION_SLICE  # today's main: all 1,000 of them
        assert decided["outcome"] == "ok"
        assert [d["reason"] for d in flood].count("dry_run") == 1  # one step for the lot
