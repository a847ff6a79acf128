"""A real controller app (reconciler running) behind FastAPI's TestClient, on each store
engine: SQLite in the data dir and a database on the tests' own PostgreSQL (``store_url``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from orchestrify.controller.app import create_app
from orchestrify.controller.settings import ControllerSettings

ADMIN = "admin-secret"
JOIN = "join-secret"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
T = TypeVar("T")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def settings(data_dir: Path, **kw: Any) -> ControllerSettings:
    base: dict[str, Any] = {
        "data_dir": data_dir,
        "token": ADMIN,
        "join_token": JOIN,
        "reconcile_interval_s": 0.1,
    }
    return ControllerSettings(**(base | kw))


def wait_for(check: Callable[[], T], *, what: str, timeout: float = 20.0) -> T:
    """Poll until ``check`` returns something truthy; the deadline only guards a hang."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last value: {value!r}")
        time.sleep(0.05)


@pytest.fixture
def make_client(tmp_path: Path, store_url: str) -> Iterator[Callable[..., TestClient]]:
    """Build apps on ``tmp_path`` and the store at ``store_url`` with settings overrides;
    all are closed at teardown. Apps built one after the other share the store (a
    restart)."""
    opened: list[TestClient] = []

    def make(*, run_reconciler: bool = True, **kw: Any) -> TestClient:
        kw.setdefault("database_url", store_url)
        app: FastAPI = create_app(settings(tmp_path, **kw), run_reconciler=run_reconciler)
        client = TestClient(app, headers=AUTH)
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in reversed(opened):
        client.__exit__(None, None, None)


@pytest.fixture
def api(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def reconcile(client: TestClient) -> list[Any]:
    """One reconcile cycle, for tests that run without the background loop."""
    steps: list[Any] = client.app.state.controller.reconciler.run_once()  # type: ignore[attr-defined]
    return steps


def register(
    client: TestClient, name: str, *, token: str = JOIN, address: str = "127.0.0.1"
) -> tuple[str, str]:
    resp = client.post(
        "/v1/nodes/register",
        json={"name": name, "address": address, "memory_total": 8 * 2**30},
        headers=bearer(token),
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    return body["node_id"], body["node_token"]


def service_spec(name: str = "web", **kw: Any) -> dict[str, Any]:
    return {"name": name, "image": "nginx:1.27", "port": 80, "drain_s": 0, **kw}


def replicas_of(client: TestClient, service: str) -> list[dict[str, Any]]:
    resp = client.get("/v1/replicas", params={"service": service})
    assert resp.status_code == 200, resp.text
    rows: list[dict[str, Any]] = resp.json()
    return rows


def running(client: TestClient, service: str, *, count: int | None = None) -> list[dict[str, Any]]:
    """Replicas meant to run; with ``count``, empty unless there are exactly that many."""
    rows = [r for r in replicas_of(client, service) if r["desired"] == "run"]
    return rows if count is None or len(rows) == count else []
