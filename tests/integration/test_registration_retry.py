"""A registration sent twice (its first answer lost) against a real controller: both
answers are the same node and token, the node token works for heartbeats, and the real
agent that saved that identity before sending (pending) registers as that same node.

The controller is the real app on uvicorn (SQLite, in a thread); the agent is the real
agent on the Docker engine. No container is started (no service); the agent's labels
are the test's anyway, and its state dir is the test's temp dir.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from bench.agent_harness import RunningAgent, agent_settings, start_controller
from bench.net import free_port
from bench.wait import wait_for
from orchestrify.agent.state import load_identity, new_identity, save_identity
from orchestrify.protocol import PROTOCOL_VERSION
from tests.conftest import require_docker

pytestmark = pytest.mark.integration

DEADLINE_S = 60.0


def test_a_registration_sent_twice_is_one_node_with_one_token(tmp_path: Path) -> None:
    require_docker().close()
    run_id = uuid.uuid4().hex[:12]
    controller = start_controller(tmp_path / "controller", free_port(), node_timeout_s=10.0)
    name = f"node-{run_id}"
    state = tmp_path / "agent"
    agent: RunningAgent | None = None
    try:
        # What the agent does first: pick the identity and save it, then send it.
        picked = new_identity()
        save_identity(state, picked)
        body = {
            "name": name,
            "address": "127.0.0.1",
            "node_id": picked.node_id,
            "node_token": picked.node_token,
        }
        headers = {
            "Authorization": f"Bearer {controller.join_token}",
            "X-Orchestrify-Protocol": str(PROTOCOL_VERSION),
            "X-Orchestrify-Component": "agent",
        }
        with httpx.Client(base_url=controller.url, timeout=30) as http:
            lost = http.post("/v1/nodes/register", json=body, headers=headers)
            retry = http.post("/v1/nodes/register", json=body, headers=headers)
            assert lost.status_code == retry.status_code == 200, retry.text
            for answer in (lost.json(), retry.json()):
                assert answer["node_id"] == picked.node_id
                assert answer["node_token"] == picked.node_token
                assert answer["known"] is False
            node_auth = {**headers, "Authorization": f"Bearer {picked.node_token}"}
            beat = http.post(f"/v1/nodes/{picked.node_id}/heartbeat", json={}, headers=node_auth)
            assert beat.status_code == 200, beat.text
        api = controller.client()
        nodes = api.get("/v1/nodes")
        assert [(n["id"], n["name"], n["state"]) for n in nodes] == [
            (picked.node_id, name, "ready")
        ]
        registered = [e for e in api.get("/v1/events", kind="node") if e["action"] == "register"]
        assert len(registered) == 1, registered  # the retry wrote nothing

        # The real agent, which had saved that identity before sending (and stopped before
        # the answer), comes up: the same node, the same token, and its heartbeats work.
        settings = agent_settings(controller, name=name, state_dir=state, run_id=run_id)
        agent = RunningAgent(settings).start()

        def confirmed() -> bool:
            saved = load_identity(state)
            return saved is not None and not saved.pending

        wait_for("the agent registered", confirmed, timeout=DEADLINE_S)
        saved = load_identity(state)
        assert saved is not None
        assert (saved.node_id, saved.node_token) == (picked.node_id, picked.node_token)
        before = api.get(f"/v1/nodes/{picked.node_id}")["last_heartbeat"]
        wait_for(
            "a heartbeat of the agent",
            lambda: api.get(f"/v1/nodes/{picked.node_id}")["last_heartbeat"] != before,
            timeout=DEADLINE_S,
        )
        assert [n["id"] for n in api.get("/v1/nodes")] == [picked.node_id]
        assert agent.error == []
    finally:
        if agent is not None:
            agent.kill()
        controller.stop()
