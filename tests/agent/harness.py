"""Real controller and real agents for tests and the benchmark, each in its own thread.

The controller is uvicorn serving ``create_app`` on a free loopback port; an agent is
``Agent.run()`` in its own asyncio loop, which a test can kill and start again.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

from orchestrify.agent import Agent, AgentSettings, HealSettings
from orchestrify.client import ControllerClient
from orchestrify.controller.app import ControllerServer, create_app
from orchestrify.controller.settings import ControllerSettings
from tests.conftest import TEST_LABEL

RUN_LABEL = "orchestrify.test.run"


@dataclass
class RunningController:
    url: str
    admin_token: str
    join_token: str
    server: ControllerServer
    thread: threading.Thread

    def client(self) -> ControllerClient:
        return ControllerClient(self.url, self.admin_token)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def start_controller(data_dir: Path, port: int, **overrides: Any) -> RunningController:
    """The real controller app on uvicorn in a thread; ``overrides`` are settings."""
    from prometheus_client import CollectorRegistry

    settings = ControllerSettings(
        host="127.0.0.1",
        port=port,
        data_dir=data_dir,
        **{
            "token": "admin-" + uuid.uuid4().hex,
            "join_token": "join-" + uuid.uuid4().hex,
            "reconcile_interval_s": 0.5,
            **overrides,  # a restart on the same data dir may keep the tokens
        },
    )
    app = create_app(settings, registry=CollectorRegistry())
    server = ControllerServer(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=2,
        ),
        handle_signals=False,  # signals belong to the main thread (pytest)
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
        url=f"http://127.0.0.1:{port}",
        admin_token=settings.token,
        join_token=settings.join_token,
        server=server,
        thread=thread,
    )


@dataclass
class RunningAgent:
    """An agent in a thread; ``kill()`` ends it as abruptly as asyncio allows."""

    settings: AgentSettings
    agent: Agent | None = None
    loop: asyncio.AbstractEventLoop | None = None
    task: asyncio.Task[None] | None = None
    thread: threading.Thread | None = None
    error: list[BaseException] = field(default_factory=list)

    def start(self) -> RunningAgent:
        ready = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self.loop = loop
            self.agent = Agent(self.settings)
            self.task = loop.create_task(self.agent.run())
            ready.set()
            try:
                loop.run_until_complete(self.task)
            except asyncio.CancelledError:
                pass
            except BaseException as exc:
                self.error.append(exc)
            finally:
                loop.close()

        self.thread = threading.Thread(target=main, name="agent", daemon=True)
        self.thread.start()
        ready.wait(10)
        return self

    def kill(self) -> None:
        if self.loop is not None and self.task is not None and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self.task.cancel)
        if self.thread is not None:
            self.thread.join(timeout=15)

    @property
    def node_id(self) -> str | None:
        ident = self.agent.identity if self.agent else None
        return ident.node_id if ident else None


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
        container_labels={TEST_LABEL: "1", RUN_LABEL: run_id},
    )


def wait_for(
    what: str, check: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.1
) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # the thing polled may not exist yet
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last: {last!r}")
