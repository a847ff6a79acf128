"""Versions: every request announces the peer's versions; an answer of a protocol the
agent cannot serve (or a 426 refusal) is never acted on, and nothing is removed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from bench.net import free_port
from orchestrify import __version__
from orchestrify.agent import Agent, AgentSettings
from orchestrify.agent.state import NodeIdentity, save_assignments, save_identity
from orchestrify.client import AsyncControllerClient
from orchestrify.errors import VersionMismatch
from orchestrify.protocol import PROTOCOL_VERSION
from tests.agent.test_reconcile import CLUSTER, FakeEngine, assignment, container, sync


def mock_client(handler: httpx.MockTransport, *, min_protocol: int | None) -> AsyncControllerClient:
    client = AsyncControllerClient(
        "http://controller.invalid", "tok", component="agent", min_protocol=min_protocol
    )
    client._http._transport = handler  # the real client, a fake wire
    return client


@sync
async def test_requests_announce_the_versions_and_an_old_controller_is_refused() -> None:
    seen: list[httpx.Request] = []

    def old_controller(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"version": 1, "node": "n", "replicas": []})

    client = mock_client(httpx.MockTransport(old_controller), min_protocol=2)
    with pytest.raises(VersionMismatch) as err:
        await client.request("GET", "/v1/nodes/n/assignments")
    await client.aclose()
    (request,) = seen
    assert request.headers["X-Orchestrify-Version"] == __version__
    assert request.headers["X-Orchestrify-Protocol"] == str(PROTOCOL_VERSION)
    assert request.headers["X-Orchestrify-Component"] == "agent"
    message = str(err.value)
    assert "controller (unknown version) speaks protocol 1" in message
    assert f"orchestrify {__version__} speaks protocol {PROTOCOL_VERSION}" in message


@sync
async def test_a_426_refusal_is_a_version_mismatch_with_the_controllers_message() -> None:
    def refusing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            426,
            json={"detail": "protocol mismatch: the agent (9.9) speaks protocol 9"},
            headers={"X-Orchestrify-Protocol": "3", "X-Orchestrify-Version": "3.0"},
        )

    client = mock_client(httpx.MockTransport(refusing), min_protocol=2)
    with pytest.raises(VersionMismatch, match="speaks protocol 9"):
        await client.request("POST", "/v1/nodes/register", json={})
    await client.aclose()


def serve(app: FastAPI, port: int) -> uvicorn.Server:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    threading.Thread(target=server.run, name="refusing-controller", daemon=True).start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the stub controller did not start"
        time.sleep(0.05)
    return server


def test_a_refusing_controller_never_makes_the_agent_remove_anything(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    asyncio.run(_refused(tmp_path, caplog))


async def _refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="orchestrify")
    calls: list[str] = []
    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    async def refuse(path: str, request: Request) -> JSONResponse:
        calls.append(path)
        why = "protocol mismatch: the agent speaks protocol 2, this controller speaks 3"
        return JSONResponse(status_code=426, content={"detail": why})

    server = serve(app, port := free_port())
    state = tmp_path / "agent"
    save_identity(state, NodeIdentity(node_id="node1", node_token="t" * 43, cluster_id=CLUSTER))
    save_assignments(state, [assignment("r1"), assignment("r2")])
    engine = FakeEngine()
    engine.containers = {"c1": container("c1", "r1"), "stray": container("stray", "gone")}
    settings = AgentSettings(
        controller_url=f"http://127.0.0.1:{port}",
        join_token="join",
        name="n1",
        advertise_address="127.0.0.1",
        state_dir=state,
        metrics_port=None,
        controller_backoff_s=(0.05,),
    )
    agent = Agent(settings, engine=engine)
    task = asyncio.create_task(agent.run())
    try:
        deadline = time.monotonic() + 20
        while len(calls) < 5:
            assert time.monotonic() < deadline, "the agent did not retry"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        server.should_exit = True
    assert engine.removed == [] and engine.specs == []  # nothing removed, nothing started
    assert set(engine.containers) == {"c1", "stray"}
    assert agent.reconciler is not None and agent.reconciler.replicas["r1"].container
    assert any(
        "versions do not match" in r.getMessage()
        and "this controller speaks 3" in str(getattr(r, "error", ""))
        for r in caplog.records
    )
