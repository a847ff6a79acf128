"""A restart with the same data dir loses nothing: state, tokens, node credentials."""

from __future__ import annotations

import stat
from pathlib import Path

from fastapi.testclient import TestClient

from orchestrify.controller.app import create_app
from tests.api.conftest import bearer, settings


def test_everything_survives_a_restart(tmp_path: Path) -> None:
    cfg = settings(tmp_path, token=None, join_token=None)  # generated and stored
    with TestClient(create_app(cfg)) as first:
        admin = (tmp_path / "admin.token").read_text().strip()
        join = (tmp_path / "join.token").read_text().strip()
        assert first.app.state.controller.admin_token == admin  # type: ignore[attr-defined]
        auth = bearer(admin)
        reg = first.post(
            "/v1/nodes/register", json={"name": "w1", "address": "10.0.0.1"}, headers=bearer(join)
        ).json()
        created = first.post(
            "/v1/services",
            json={"name": "web", "image": "nginx:1.27", "replicas": 0, "min_replicas": 0},
            headers=auth,
        )
        assert created.status_code == 201
        first.patch("/v1/services/web", json={"env": {"A": "1"}}, headers=auth)
        services_before = first.get("/v1/services", headers=auth).json()
        nodes_before = first.get("/v1/nodes", headers=auth).json()
        events_before = first.get("/v1/events", params={"kind": "action"}, headers=auth).json()

    for name in ("admin.token", "join.token"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert (tmp_path / "orchestrify.db").exists()

    with TestClient(create_app(cfg)) as second:
        state = second.app.state.controller  # type: ignore[attr-defined]
        assert (state.admin_token, state.join_token) == (admin, join)
        auth = bearer(admin)
        assert second.get("/v1/services", headers=auth).json() == services_before
        assert second.get("/v1/services/web", headers=auth).json()["env"] == {"A": "1"}
        nodes = second.get("/v1/nodes", headers=auth).json()
        assert [(n["id"], n["name"]) for n in nodes] == [(n["id"], n["name"]) for n in nodes_before]
        after = second.get("/v1/events", params={"kind": "action"}, headers=auth).json()
        assert after[: len(events_before)] == events_before
        # The node's token from before the restart still works.
        hb = second.post(
            f"/v1/nodes/{reg['node_id']}/heartbeat", json={}, headers=bearer(reg["node_token"])
        )
        assert hb.status_code == 200
