"""A node that stops heartbeating becomes not_ready; its replicas move to a live node."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from fastapi.testclient import TestClient

from tests.api.conftest import bearer, register, running, service_spec, wait_for


@contextmanager
def heartbeating(api: TestClient, node_id: str, token: str) -> Iterator[None]:
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            api.post(f"/v1/nodes/{node_id}/heartbeat", json={}, headers=bearer(token))
            stop.wait(0.05)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def test_silent_node_goes_not_ready_and_its_replicas_move(
    make_client: Callable[..., TestClient],
) -> None:
    api = make_client(node_timeout_s=1.0, reconcile_interval_s=0.05)
    a, a_token = register(api, "a")
    with heartbeating(api, a, a_token):
        api.post("/v1/services", json=service_spec(replicas=1))
        (old,) = wait_for(lambda: running(api, "web"), what="replica on a")
        assert old["node"] == a
    # a falls silent from here on; b registers and keeps beating.
    b, b_token = register(api, "b")
    with heartbeating(api, b, b_token):
        wait_for(lambda: api.get(f"/v1/nodes/{a}").json()["state"] == "not_ready", what="a down")
        (new,) = wait_for(
            lambda: [r for r in running(api, "web") if r["node"] == b], what="replica on b"
        )
        assert api.get(f"/v1/nodes/{b}").json()["state"] == "ready"
    assert new["id"] != old["id"]
    assert api.get(f"/v1/replicas/{old['id']}").status_code == 404  # forgotten
    node_events = api.get("/v1/events", params={"kind": "node"}).json()
    assert any(e["action"] == "node_not_ready" and e["node"] == "a" for e in node_events)
    forgot = api.get("/v1/events", params={"service": "web", "kind": "replica"}).json()
    assert any(e["replica"] == old["id"] and e["action"] == "forget_replica" for e in forgot)

    # Its next heartbeat makes it ready again.
    api.post(f"/v1/nodes/{a}/heartbeat", json={}, headers=bearer(a_token))
    assert api.get(f"/v1/nodes/{a}").json()["state"] == "ready"


def test_silent_draining_node_goes_not_ready_and_rm_completes(
    make_client: Callable[..., TestClient],
) -> None:
    """A dead host being removed must not wait forever for replicas that never report."""
    api = make_client(node_timeout_s=1.0, reconcile_interval_s=0.05)
    a, a_token = register(api, "a")
    with heartbeating(api, a, a_token):
        api.post("/v1/services", json=service_spec(replicas=1))
        wait_for(lambda: running(api, "web"), what="replica on a")
        assert api.delete(f"/v1/nodes/{a}").status_code == 202
        assert api.get(f"/v1/nodes/{a}").json()["state"] == "draining"
    # a falls silent while draining: it goes not_ready, its replica is forgotten, and
    # the pending removal completes.
    wait_for(lambda: api.get(f"/v1/nodes/{a}").status_code == 404, what="a removed")


def test_draining_survives_a_silence(make_client: Callable[..., TestClient]) -> None:
    api = make_client(node_timeout_s=1.0, reconcile_interval_s=0.05)
    a, a_token = register(api, "a")
    api.post(f"/v1/nodes/{a}/drain")
    wait_for(lambda: api.get(f"/v1/nodes/{a}").json()["state"] == "not_ready", what="a silent")
    api.post(f"/v1/nodes/{a}/heartbeat", json={}, headers=bearer(a_token))
    assert api.get(f"/v1/nodes/{a}").json()["state"] == "draining"
