"""Real controller and real agents for the tests and the benchmarks, each in its own
thread.

The controller is uvicorn serving ``create_app`` on a free loopback port; an agent is
``Agent.run()`` in its own asyncio loop, which a test can kill and start again. Runtime
dependencies only (no pytest): bench/selfheal.py runs on it too.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from bench.labels import RUN_LABEL, TEST_LABEL
from bench.outage_lab import RunningAgent
from bench.wait import wait_for
from orchestrify.agent import AgentSettings, HealSettings
from orchestrify.client import ControllerClient
from orchestrify.controller.app import ControllerServer, create_app
from orchestrify.controller.settings import ControllerSettings

__all__ = [
    "RunningAgent",
    "RunningController",
    "agent_settings",
    "start_agents",
    "start_controller",
    "wait_ready",
]


@dataclass
class RunningController:
    url: str
    admin_token: str
    join_token: str
    server: ControllerServer
    thread: threading.Thread
    ca: Path | None = None  # the CA its clients verify it with (an https controller)

    def client(self) -> ControllerClient:
        return ControllerClient(self.url, self.admin_token, ca=self.ca)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def start_controller(
    data_dir: Path,
    port: int,
    *,
    admin_token: str | None = None,
    join_token: str | None = None,
    ca: Path | None = None,
    run_reconciler: bool = True,
    **overrides: Any,
) -> RunningController:
    """The real controller app on uvicorn in a thread; ``overrides`` are settings. The
    tokens are random unless given (``admin_token`` or ``token``, and ``join_token``):
    give a previous run's to restart it as it was. With the ``tls_cert`` and ``tls_key``
    settings it serves HTTPS only, and ``ca`` is what its clients verify it with. Without
    ``run_reconciler`` nothing but the requests moves the fleet (a bench's seeded store
    stays as seeded)."""
    from prometheus_client import CollectorRegistry

    settings = ControllerSettings(
        host="127.0.0.1",
        port=port,
        data_dir=data_dir,
        **{
            "token": admin_token or "admin-" + uuid.uuid4().hex,
            "join_token": join_token or "join-" + uuid.uuid4().hex,
            "reconcile_interval_s": 0.5,
            **overrides,
        },
    )
    app = create_app(settings, registry=CollectorRegistry(), run_reconciler=run_reconciler)
    server = ControllerServer(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=2,
            ssl_certfile=settings.tls_cert,
            ssl_keyfile=settings.tls_key,
        ),
        handle_signals=False,  # signals belong to the main thread (pytest's, a bench's)
    )
    thread = threading.Thread(target=server.run, name="controller", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("controller did not start")
        time.sleep(0.05)
    assert settings.token and settings.join_token
    return RunningController(
        url=f"{'https' if settings.tls else 'http'}://127.0.0.1:{port}",
        admin_token=settings.token,
        join_token=settings.join_token,
        server=server,
        thread=thread,
        ca=ca,
    )


def agent_settings(
    controller: RunningController,
    *,
    name: str,
    state_dir: Path,
    run_id: str,
    heal: HealSettings | None = None,
) -> AgentSettings:
    return AgentSettings(
        controller_url=controller.url,
        join_token=controller.join_token,
        name=name,
        advertise_address="127.0.0.1",
        state_dir=state_dir,
        metrics_port=0,
        heal=heal or HealSettings(),
        heartbeat_interval_s=2.0,
        ca=controller.ca,
        container_labels={TEST_LABEL: "1", RUN_LABEL: run_id},
    )


def start_agents(
    controller: RunningController,
    state_root: Path,
    *,
    names: list[str],
    run_id: str,
    heal: HealSettings | None = None,
) -> list[RunningAgent]:
    """One started agent per name, each with its state dir under ``state_root`` and
    its containers labelled with ``run_id`` (``remove_containers`` finds them)."""
    return [
        RunningAgent(
            agent_settings(
                controller, name=name, state_dir=state_root / name, run_id=run_id, heal=heal
            )
        ).start()
        for name in names
    ]


def wait_ready(
    client: ControllerClient, names: list[str], *, timeout: float = 60
) -> dict[str, str]:
    """Wait until every node in ``names`` is registered and ready; their ids by name.
    (A service created before then is placed on the nodes ready so far, and stays there.)"""

    def ready() -> dict[str, str] | None:
        nodes = {n["name"]: n for n in client.get("/v1/nodes")}
        if all(name in nodes and nodes[name]["state"] == "ready" for name in names):
            return {name: nodes[name]["id"] for name in names}
        return None

    return wait_for(f"nodes {', '.join(names)} ready", ready, timeout=timeout)
