"""Registration from the agent's side: the node id and token are picked and saved before
the first send, and every retry (after a lost answer, or a crash before it came) sends
the same ones, so the controller answers it as the first try."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from bench.net import free_port
from orchestrify.agent import Agent, AgentSettings
from orchestrify.agent.state import IDENTITY_FILE, load_identity
from orchestrify.client import AsyncControllerClient
from orchestrify.protocol import PROTOCOL_VERSION
from tests.agent.test_reconcile import CLUSTER, FakeEngine
from tests.agent.test_versions import serve

PROTOCOL = {"X-Orchestrify-Protocol": str(PROTOCOL_VERSION), "X-Orchestrify-Version": "9.9"}


def settings(state: Path, url: str) -> AgentSettings:
    return AgentSettings(
        controller_url=url,
        join_token="join",
        name="n1",
        advertise_address="127.0.0.1",
        state_dir=state,
        metrics_port=None,
        controller_backoff_s=(0.01,),
    )


def credentials(body: dict[str, Any], *, known: bool = False) -> dict[str, Any]:
    """What an idempotent controller answers: the node under the id and token sent."""
    return {
        "node_id": body["node_id"],
        "node_token": body["node_token"],
        "cluster_id": CLUSTER,
        "known": known,
        "controller_version": "9.9",
        "protocol_version": PROTOCOL_VERSION,
    }


def test_the_id_and_token_are_saved_before_sending_and_sent_again_after_a_lost_answer(
    tmp_path: Path,
) -> None:
    asyncio.run(_lost_answer(tmp_path))


async def _lost_answer(tmp_path: Path) -> None:
    state = tmp_path / "agent"
    sent: list[dict[str, Any]] = []
    on_disk: list[dict[str, Any]] = []

    def controller(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        sent.append(body)
        on_disk.append(json.loads((state / IDENTITY_FILE).read_text()))
        if len(sent) == 1:  # stored, but the answer never comes back
            raise httpx.ReadTimeout("timed out", request=request)
        return httpx.Response(200, json=credentials(body), headers=PROTOCOL)

    agent = Agent(settings(state, "http://controller.invalid"), engine=FakeEngine())
    client = AsyncControllerClient(
        "http://controller.invalid", "join", component="agent", min_protocol=2
    )
    client._http._transport = httpx.MockTransport(controller)  # the real client, a fake wire
    try:
        await agent._with_controller("register", lambda: agent._register(client), client)
    finally:
        await client.aclose()
    first, retry = sent
    # Picked by the agent, strong, and in the state file before the first byte was sent.
    assert len(first["node_id"]) == 12 and len(first["node_token"]) >= 32
    assert on_disk[0]["node_id"] == first["node_id"] and on_disk[0]["pending"] is True
    assert on_disk[0]["node_token"] == first["node_token"]
    # The retry is the same registration.
    assert (retry["node_id"], retry["node_token"]) == (first["node_id"], first["node_token"])
    # Answered: confirmed, with the controller's cluster.
    assert agent.identity is not None and not agent.identity.pending
    saved = load_identity(state)
    assert saved is not None and not saved.pending
    assert (saved.node_id, saved.node_token, saved.cluster_id) == (
        first["node_id"],
        first["node_token"],
        CLUSTER,
    )
    assert client.token == first["node_token"]


def test_an_agent_that_stopped_before_the_answer_sends_the_same_id_and_token_again(
    tmp_path: Path,
) -> None:
    asyncio.run(_restarted(tmp_path))


async def _restarted(tmp_path: Path) -> None:
    state = tmp_path / "agent"
    bodies: list[dict[str, Any]] = []
    answer = asyncio.Event()  # set: registrations are answered (else held, unanswered)
    app = FastAPI()

    @app.post("/v1/nodes/register")
    async def register(request: Request) -> JSONResponse:
        body = await request.json()
        bodies.append(body)
        while not answer.is_set():
            await asyncio.sleep(0.02)
        return JSONResponse(credentials(body), headers=PROTOCOL)

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    async def anything_else(path: str) -> JSONResponse:
        await asyncio.sleep(0.5)  # heartbeats and long-polls: nothing to say
        return JSONResponse({"detail": "not served by this stub"}, status_code=503)

    server = serve(app, port := free_port())
    url = f"http://127.0.0.1:{port}"
    try:
        first = asyncio.create_task(Agent(settings(state, url), engine=FakeEngine()).run())
        await _until(lambda: len(bodies) == 1)
        first.cancel()  # stopped while its registration is unanswered
        with contextlib.suppress(asyncio.CancelledError):
            await first
        pending = load_identity(state)
        assert pending is not None and pending.pending
        answer.set()
        again = Agent(settings(state, url), engine=FakeEngine())
        second = asyncio.create_task(again.run())
        try:
            await _until(lambda: (i := load_identity(state)) is not None and not i.pending)
        finally:
            second.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await second
    finally:
        server.should_exit = True
    ids = {(b["node_id"], b["node_token"]) for b in bodies}
    assert ids == {(pending.node_id, pending.node_token)}, "one identity for every try"
    assert len(bodies) >= 2
    assert bodies[-1]["cluster_id"] is None and bodies[-1]["containers"] == []


async def _until(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.02)
