"""GET /v1/cluster and leadership through the API: alone on its store a controller leads
at once (and again at once after a restart); two controllers on one PostgreSQL
database: exactly one leads, both say the same, a frozen leader is replaced with the
next epoch, and the reconciler of a controller whose lease is gone writes nothing."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bench.postgres import PostgresServer
from orchestrify.controller.app import create_app
from orchestrify.controller.deps import ControllerState
from orchestrify.errors import Fenced
from tests.api.conftest import AUTH, register, replicas_of, service_spec, settings, wait_for


def state_of(client: TestClient) -> ControllerState:
    state: ControllerState = client.app.state.controller  # type: ignore[attr-defined]
    return state


def cluster(client: TestClient) -> dict[str, Any]:
    resp = client.get("/v1/cluster")
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def metric(client: TestClient, name: str) -> str:
    (line,) = [ln for ln in client.get("/metrics").text.splitlines() if ln.startswith(name + " ")]
    return line.split()[1]


def test_alone_a_controller_leads_at_once_and_again_after_a_restart(
    make_client: Callable[..., TestClient],
) -> None:
    first = make_client(controller_id="solo:1", advertise_url="http://solo:1", lease_s=60)
    view = cluster(first)
    assert view["leader"] == "solo:1" and view["epoch"] == 1
    assert view["lease_expires_at"] is not None
    (me,) = view["controllers"]
    assert (me["id"], me["url"], me["leader"], me["state"]) == (
        "solo:1",
        "http://solo:1",
        True,
        "leader",
    )
    assert me["leader_since"] is not None and me["version"]
    assert metric(first, "orchestrify_controller_leader") == "1.0"
    assert metric(first, "orchestrify_controller_epoch") == "1.0"
    assert first.get("/v1/cluster", headers={"Authorization": "Bearer nope"}).status_code == 401
    # A restart (the same id, the old run's lease still far from expired) leads at once.
    again = make_client(controller_id="solo:1", lease_s=60)
    assert state_of(again).leadership.is_leader
    assert cluster(again)["epoch"] == 2


@pytest.fixture
def shared_database(postgres: PostgresServer) -> Iterator[str]:
    name = postgres.new_database()
    yield postgres.url(name)
    postgres.drop_database(name)


def test_two_controllers_one_leads_and_a_frozen_leader_writes_nothing(
    tmp_path: Path, shared_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="orchestrify.controller.reconcile")
    clients: list[TestClient] = []

    def controller(name: str) -> TestClient:
        given = settings(
            tmp_path / name,
            database_url=shared_database,
            controller_id=name,
            advertise_url=f"http://{name}:18080",
            lease_s=3.0,  # renewals every second ride out a busy machine's stalls
        )
        client = TestClient(create_app(given), headers=AUTH)
        client.__enter__()
        clients.append(client)
        return client

    try:
        a, b = controller("ctl-a"), controller("ctl-b")
        assert state_of(a).leadership.is_leader and not state_of(b).leadership.is_leader
        first = state_of(a).leadership.epoch
        assert first is not None
        for client in (a, b):  # any controller answers the same
            view = cluster(client)
            assert (view["leader"], view["epoch"]) == ("ctl-a", first)
            roles = {c["id"]: (c["state"], c["url"]) for c in view["controllers"]}
            assert roles == {
                "ctl-a": ("leader", "http://ctl-a:18080"),
                "ctl-b": ("follower", "http://ctl-b:18080"),
            }
        assert metric(a, "orchestrify_controller_leader") == "1.0"
        assert metric(b, "orchestrify_controller_leader") == "0.0"

        # The follower serves the API; the leader's reconciler places the replica.
        register(b, "node-1")
        assert b.post("/v1/services", json=service_spec(replicas=1)).status_code == 201
        wait_for(lambda: replicas_of(b, "web"), what="the leader to place a replica")

        # a freezes (no more renewals): b leads with the next epoch.
        a.portal.call(state_of(a).leadership.pause)  # type: ignore[union-attr]
        frozen = state_of(a).leadership.epoch
        assert frozen is not None
        wait_for(lambda: state_of(b).leadership.is_leader, what="b to take over", timeout=60)
        taken = state_of(b).leadership.epoch
        assert taken == frozen + 1
        assert (cluster(a)["leader"], cluster(a)["epoch"]) == ("ctl-b", taken)
        assert state_of(a).leadership.is_leader  # frozen: it does not know yet

        # b freezes too, and its lease runs out: both believe they lead, neither does.
        b.portal.call(state_of(b).leadership.pause)  # type: ignore[union-attr]
        wait_for(lambda: cluster(a)["leader"] is None, what="b's lease to expire", timeout=60)
        assert b.post("/v1/services", json=service_spec("late", replicas=1)).status_code == 201

        def refused_placements() -> list[logging.LogRecord]:
            return [
                r
                for r in caplog.records
                if r.exc_info
                and isinstance(r.exc_info[1], Fenced)
                and "late" in str(getattr(r, "step", ""))
            ]

        # Both reconcilers still run and decide to place it; the store refuses both.
        wait_for(refused_placements, what="a deposed reconciler's placement to be refused")
        assert replicas_of(a, "late") == []

        # They wake up: each finds its lease gone, steps down, and one leads anew.
        for client in (a, b):
            client.portal.call(state_of(client).leadership.resume)  # type: ignore[union-attr]
        wait_for(lambda: cluster(a)["leader"] is not None, what="a new leader", timeout=60)
        assert cluster(b)["epoch"] > taken  # taken + 1, unless a busy machine made it flap
        wait_for(lambda: replicas_of(a, "late"), what="the new leader to place late")
        assert len(replicas_of(a, "late")) == 1
        leaders = [c for c in (a, b) if state_of(c).leadership.is_leader]
        assert len(leaders) == 1
    finally:
        for client in reversed(clients):
            client.__exit__(None, None, None)
