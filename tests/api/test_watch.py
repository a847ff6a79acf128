"""The assignments long-poll: at once on a new version, on change, or same version on timeout."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import bearer, reconcile, register, service_spec, wait_for


def test_answers_at_once_without_or_with_another_version(
    make_client: Callable[..., TestClient],
) -> None:
    api = make_client(run_reconciler=False)
    node_id, token = register(api, "a")
    first = api.get(f"/v1/nodes/{node_id}/assignments", headers=bearer(token)).json()
    assert first["node"] == node_id and first["replicas"] == []
    other = api.get(
        f"/v1/nodes/{node_id}/assignments",
        params={"version": first["version"] - 1, "timeout": 300},
        headers=bearer(token),
    ).json()
    assert other["version"] == first["version"]


def test_times_out_with_the_same_version(make_client: Callable[..., TestClient]) -> None:
    api = make_client(run_reconciler=False)
    node_id, token = register(api, "a")
    v = api.get(f"/v1/nodes/{node_id}/assignments", headers=bearer(token)).json()["version"]
    same = api.get(
        f"/v1/nodes/{node_id}/assignments",
        params={"version": v, "timeout": 0.2},
        headers=bearer(token),
    ).json()
    assert same["version"] == v and same["replicas"] == []


def test_waits_then_returns_on_change(make_client: Callable[..., TestClient]) -> None:
    api = make_client(run_reconciler=False)
    node_id, token = register(api, "a")
    api.post("/v1/services", json=service_spec(replicas=1, env={"K": "v"}))
    v = api.get(f"/v1/nodes/{node_id}/assignments", headers=bearer(token)).json()["version"]

    result: dict[str, Any] = {}

    def watch() -> None:
        resp = api.get(
            f"/v1/nodes/{node_id}/assignments",
            params={"version": v, "timeout": 120},
            headers=bearer(token),
        )
        result.update(resp.json())

    watcher = threading.Thread(target=watch)
    watcher.start()
    time.sleep(0.2)  # let the watch start waiting (a later start answers at once: also fine)
    assert not result  # nothing changed yet, so it is still waiting
    reconcile(api)  # places the replica on node a: a change of what a must run
    watcher.join(timeout=60)
    assert not watcher.is_alive()
    assert result["version"] != v
    (assignment,) = result["replicas"]
    assert assignment["service"] == "web" and assignment["desired"] == "run"
    assert assignment["image"] == "nginx:1.27" and assignment["env"] == {"K": "v"}
    assert assignment["port"] == 80


def test_a_long_poll_answered_at_once_takes_the_watchs_view_when_it_is_current(
    make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent that starts, or comes back after its long-poll timed out while the
    version moved on, is answered from the view the watch read once for every node when
    that view is as recent as the version; a node not in it (joined since) is read alone.
    The answers are the same either way."""
    api = make_client(run_reconciler=False)
    state = api.app.state.controller  # type: ignore[attr-defined]
    node_id, token = register(api, "a")
    api.post("/v1/services", json=service_spec(replicas=1, env={"K": "v"}))
    reconcile(api)  # places the replica on node a
    wait_for(
        lambda: state.watch.version == state.feed.version("spec"), what="the watch to catch up"
    )
    alone = state.store.node_assignments(node_id)
    reads: list[str] = []
    read_alone = state.store.node_assignments

    def counted(node: str) -> Any:
        reads.append(node)
        return read_alone(node)

    monkeypatch.setattr(state.store, "node_assignments", counted)
    url = f"/v1/nodes/{node_id}/assignments"
    first = api.get(url, headers=bearer(token)).json()
    other = api.get(url, params={"version": 0, "timeout": 30}, headers=bearer(token)).json()
    assert reads == []
    for answer in (first, other):
        assert answer["version"] == state.watch.version
        assert [a["replica"] for a in answer["replicas"]] == [a.replica for a in alone[0]]
        assert answer["replicas"][0]["env"] == {"K": "v"}
    # Not in the view (a node that registered after the watch read it): read alone.
    monkeypatch.setattr(state.watch, "view", {})
    again = api.get(url, headers=bearer(token)).json()
    assert reads == [node_id]
    assert again["replicas"] == first["replicas"]


@pytest.mark.parametrize("catches_up", [True, False])
def test_a_long_poll_answered_at_once_waits_for_the_watch_to_catch_up(
    make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch, catches_up: bool
) -> None:
    """When the version has moved past the watch's view, a long-poll answered at once
    waits for the watch to read the new one rather than read its node alone; if the
    watch does not catch up in time (here: its read is held), it reads its node alone."""
    import asyncio

    from orchestrify.controller.routers import nodes

    api = make_client(run_reconciler=False)
    state = api.app.state.controller  # type: ignore[attr-defined]
    node_id, token = register(api, "a")
    wait_for(lambda: state.watch.version == state.feed.version("spec"), what="the watch")
    held, release = state.views.assignments, threading.Event()

    async def held_read(version: int) -> Any:
        await asyncio.to_thread(release.wait, 30)
        return await held(version)

    monkeypatch.setattr(state.views, "assignments", held_read)
    monkeypatch.setattr(nodes, "WATCH_CATCH_UP_S", 10.0 if catches_up else 0.3)
    reads: list[str] = []
    read_alone = state.store.node_assignments
    monkeypatch.setattr(
        state.store, "node_assignments", lambda node: reads.append(node) or read_alone(node)
    )
    api.post("/v1/services", json=service_spec(replicas=1))
    reconcile(api)  # places the replica on node a: the version moves past the watch's view
    assert state.watch.version < state.feed.version("spec")
    answer: dict[str, Any] = {}
    poll = threading.Thread(
        target=lambda: answer.update(
            api.get(f"/v1/nodes/{node_id}/assignments", headers=bearer(token)).json()
        )
    )
    poll.start()
    if catches_up:
        time.sleep(0.5)
        assert not answer  # waiting for the watch, not reading its node alone
        release.set()
    poll.join(timeout=30)
    release.set()
    assert not poll.is_alive()
    assert reads == ([] if catches_up else [node_id])
    (assignment,) = answer["replicas"]
    assert assignment["service"] == "web" and assignment["desired"] == "run"


def test_an_events_follower_waits_then_gets_the_new_event(
    make_client: Callable[..., TestClient],
) -> None:
    api = make_client(run_reconciler=False, watch_timeout_s=120)
    before = api.get("/v1/events").json()
    last = before[-1]["id"] if before else 0
    result: list[Any] = []

    def follow() -> None:
        result.append(api.get("/v1/events", params={"after": last, "wait": 120}).json())

    follower = threading.Thread(target=follow)
    follower.start()
    time.sleep(0.2)  # let it start waiting (a later start answers at once: also fine)
    assert not result  # no event yet, so it is still waiting
    api.post("/v1/services", json=service_spec("followed"))
    follower.join(timeout=60)
    assert not follower.is_alive()
    (rows,) = result
    assert rows and all(e["id"] > last for e in rows)
    assert any(e.get("service") == "followed" for e in rows)


def test_an_events_follower_times_out_with_nothing(
    make_client: Callable[..., TestClient],
) -> None:
    api = make_client(run_reconciler=False)
    api.post("/v1/services", json=service_spec("quiet"))
    last = api.get("/v1/events").json()[-1]["id"]
    assert api.get("/v1/events", params={"after": last, "wait": 0.2}).json() == []
    assert api.get("/v1/events", params={"after": last}).json() == []  # no wait: at once
