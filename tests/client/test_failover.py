"""Clients fail over between controllers (issue 11): real HTTP servers on loopback ports,
each a process of its own (``controller_stub``), one of them down from the start or
SIGKILLed in the middle of a long-poll, as a dying host would be.

The stubs answer in the shapes of the real controller; these tests are about the client
side alone: which controller a request reaches, with which parameters, and what is
never sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.net import free_port
from bench.wait import wait_for
from orchestrify.agent import Agent, AgentSettings
from orchestrify.agent.state import NodeIdentity
from orchestrify.client import (
    AsyncControllerClient,
    ControllerClient,
    parse_controller_urls,
)
from orchestrify.edge.runner import Edge, EdgeSettings
from orchestrify.errors import Conflict, InvalidSpec, NodeUnreachable

REPO = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token-never-logged"


@dataclass
class Stub:
    """One stand-in controller process."""

    name: str
    url: str
    proc: subprocess.Popen[bytes]

    def stats(self) -> dict[str, Any]:
        resp = httpx.get(f"{self.url}/stub/stats", timeout=5)
        resp.raise_for_status()
        result: dict[str, Any] = resp.json()
        return result

    def hits(self, call: str) -> int:
        return int(self.stats()["hits"].get(call, 0))

    def make_unavailable(self, count: int) -> None:
        httpx.post(f"{self.url}/stub/unavailable", params={"count": count}, timeout=5)

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, open connections are cut as by a dead host."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture
def stubs() -> Iterator[Any]:
    started: list[Stub] = []

    def start(name: str, *, hold_s: float = 60.0) -> Stub:
        port = free_port()
        env = {**os.environ, "STUB_NAME": name, "STUB_HOLD_S": str(hold_s)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "tests.client.controller_stub:app",
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            cwd=REPO,
            env=env,
        )  # fmt: skip
        stub = Stub(name=name, url=f"http://127.0.0.1:{port}", proc=proc)
        started.append(stub)
        wait_for(f"stub {name} to serve", lambda: stub.stats()["name"] == name, timeout=60)
        return stub

    yield start
    for stub in started:
        stub.kill()


def dead_url() -> str:
    """A loopback port nothing listens on: connections are refused."""
    return f"http://127.0.0.1:{free_port()}"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRIFY_")}
    return subprocess.run(
        [sys.executable, "-m", "orchestrify", "--token", TOKEN, *args],
        env={**base, **(env or {})},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


# --- parsing ------------------------------------------------------------------------


def test_a_list_of_urls_is_split_checked_and_kept_in_order() -> None:
    assert parse_controller_urls(" http://a:18080/ , https://b:443/api,http://a:18080") == (
        "http://a:18080",
        "https://b:443/api",
    )
    assert parse_controller_urls(["http://[::1]:18080"]) == ("http://[::1]:18080",)


@pytest.mark.parametrize(
    "bad",
    ["ftp://a:1", "http://:18080", "http://a:99999", "http://a:port", "http://u:p@a:1",
     "http://a:1/?q=1", "a:18080", ""],
)  # fmt: skip
def test_a_bad_url_in_a_list_is_named(bad: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        parse_controller_urls(f"http://127.0.0.1:18080,{bad}")
    assert repr(bad) in str(caught.value)
    assert "ORCHESTRIFY_URL" in str(caught.value)


@pytest.mark.parametrize("command", ["node ls", "agent --join-token j", "edge"])
def test_a_bad_url_in_the_list_is_a_one_line_exit_2(command: str, tmp_path: Path) -> None:
    extra = ["--nginx-conf-dir", str(tmp_path), "--nginx-bin", "true"] if command == "edge" else []
    if command == "edge":
        # The edge's own --controller; the global one is exercised by `node ls`.
        args = ["edge", "--controller", "http://127.0.0.1:18080,http://x:99999", *extra]
        result = run_cli(*args)
    else:
        env = {"ORCHESTRIFY_URL": "http://127.0.0.1:18080,http://x:99999"}
        result = run_cli(*command.split(), env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "'http://x:99999'" in lines[0]


# --- the CLI --------------------------------------------------------------------------


def test_the_cli_works_when_the_first_controller_is_down(stubs: Any) -> None:
    second = stubs("second")
    dead = dead_url()
    result = run_cli("--controller", f"{dead},{second.url}", "node", "ls", "--json")
    assert result.returncode == 0, result.stderr
    assert '"name": "second"' in result.stdout
    failovers = [line for line in result.stderr.splitlines() if "failing over" in line]
    assert len(failovers) == 1, result.stderr
    assert dead in failovers[0] and second.url in failovers[0]
    assert TOKEN not in result.stderr


def test_the_cli_takes_the_list_from_orchestrify_url(stubs: Any) -> None:
    second = stubs("second")
    result = run_cli("node", "ls", "--json", env={"ORCHESTRIFY_URL": f"{dead_url()},{second.url}"})
    assert result.returncode == 0, result.stderr
    assert '"name": "second"' in result.stdout


def test_a_4xx_is_an_answer_never_tried_on_another_controller(stubs: Any) -> None:
    first, second = stubs("first"), stubs("second")
    result = run_cli("--controller", f"{first.url},{second.url}", "node", "inspect", "nope")
    assert result.returncode == 1
    assert "no node named it" in result.stderr
    assert first.hits("GET /v1/nodes/nope") == 1
    assert second.hits("GET /v1/nodes/nope") == 0
    assert "failing over" not in result.stderr


# --- stickiness, round-robin, logs ------------------------------------------------------


def test_a_503_fails_over_and_the_client_stays_with_the_one_that_answered(
    stubs: Any, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = stubs("first"), stubs("second")
    first.make_unavailable(1)
    caplog.set_level(logging.INFO, logger="orchestrify.client")
    with ControllerClient(f"{first.url},{second.url}", TOKEN) as api:
        answers = [api.get("/v1/nodes")[0]["name"] for _ in range(4)]
        assert answers == ["second"] * 4
        assert api.url == second.url
        assert first.hits("GET /v1/nodes") == 1  # only the 503: no bouncing back
        second.kill()
        # Round-robin: after the last comes the first again.
        assert api.get("/v1/nodes")[0]["name"] == "first"
        assert api.url == first.url
    failovers = [r for r in caplog.records if r.getMessage() == "controller failed; failing over"]
    assert [(r.controller, r.next) for r in failovers] == [  # type: ignore[attr-defined]
        (first.url, second.url),
        (second.url, first.url),
    ]
    for record in caplog.records:
        assert TOKEN not in str(vars(record))


def test_a_503_of_the_only_controller_is_the_answer(stubs: Any) -> None:
    only = stubs("only")
    only.make_unavailable(1)
    with ControllerClient(only.url, TOKEN) as api, pytest.raises(Exception) as caught:
        api.get("/v1/nodes")
    assert "503" in str(caught.value)


def test_no_controller_answering_names_each(stubs: Any) -> None:
    dead1, dead2 = dead_url(), dead_url()
    with ControllerClient(f"{dead1},{dead2}", TOKEN) as api, pytest.raises(NodeUnreachable) as c:
        api.get("/v1/nodes")
    assert dead1 in str(c.value) and dead2 in str(c.value)


# --- calls that create: never sent twice blindly ---------------------------------------


def test_a_create_refused_at_connect_goes_to_the_next_controller(stubs: Any) -> None:
    second = stubs("second")
    with ControllerClient(f"{dead_url()},{second.url}", TOKEN) as api:
        created = api.request("POST", "/v1/services", json={"name": "web"})
    assert created["served_by"] == "second"
    assert second.hits("POST /v1/services") == 1


def test_a_create_cut_after_it_was_sent_is_not_sent_again(stubs: Any) -> None:
    first, second = stubs("first"), stubs("second")
    outcome: list[BaseException] = []

    def create() -> None:
        with ControllerClient(f"{first.url},{second.url}", TOKEN) as api:
            try:
                api.request("POST", "/v1/services", json={"name": "web", "slow": True})
            except BaseException as exc:  # handed to the test thread
                outcome.append(exc)

    thread = threading.Thread(target=create)
    thread.start()
    wait_for("the create to reach the first", lambda: first.hits("POST /v1/services") == 1)
    first.kill()  # it may have created the service before dying: nobody can tell
    thread.join(timeout=60)
    assert len(outcome) == 1 and isinstance(outcome[0], NodeUnreachable)
    assert "may have been carried out" in str(outcome[0])
    assert second.hits("POST /v1/services") == 0


def test_a_4xx_from_a_create_is_not_tried_elsewhere(stubs: Any) -> None:
    first, second = stubs("first"), stubs("second")
    with ControllerClient(f"{first.url},{second.url}", TOKEN) as api, pytest.raises(Conflict):
        api.request("POST", "/v1/services", json={"name": "web", "exists": True})
    assert first.hits("POST /v1/services") == 1
    assert second.stats()["hits"] == {}


# --- the agent: heartbeats and the assignments long-poll -------------------------------


class _Reconciler:
    """What the agent's heartbeat and watch loops use of a NodeReconciler."""

    cluster_id = "stub-cluster"
    controller_away = False

    def __init__(self) -> None:
        self.assignments: list[Any] = []

    def running_count(self) -> int:
        return 0

    def set_assignments(self, replicas: list[Any], *, prune: list[str]) -> None:
        self.assignments.append(replicas)

    def wake(self) -> None:
        pass


def _agent(tmp_path: Path, urls: str) -> tuple[Agent, AsyncControllerClient]:
    settings = AgentSettings(
        controller_url=urls,
        join_token="j",
        name="n1",
        advertise_address="127.0.0.1",
        state_dir=tmp_path,
        metrics_port=None,
        heartbeat_interval_s=0.1,
        watch_timeout_s=30,
    )
    agent = Agent(settings)
    agent.identity = NodeIdentity(node_id="n1", node_token=TOKEN, cluster_id="stub-cluster")
    client = AsyncControllerClient(urls, TOKEN, component="agent")
    return agent, client


def _in_loop(coro_factory: Any, until: Any) -> None:
    """Run a never-ending agent/edge loop in its own event loop until ``until()`` holds."""

    async def main() -> None:
        task = asyncio.create_task(coro_factory())
        try:
            await asyncio.to_thread(wait_for, "the loop to get there", until, timeout=60)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(main())


def test_agent_heartbeats_go_to_the_next_controller_when_the_first_is_down(
    stubs: Any, tmp_path: Path
) -> None:
    second = stubs("second")
    agent, client = _agent(tmp_path, f"{dead_url()},{second.url}")
    rec: Any = _Reconciler()
    _in_loop(
        lambda: agent._heartbeat_loop(client, rec),
        lambda: second.hits("POST /v1/nodes/n1/heartbeat") >= 3,
    )
    assert client.url == second.url


def test_agent_long_poll_fails_over_mid_poll_and_keeps_its_version(
    stubs: Any, tmp_path: Path
) -> None:
    first, second = stubs("first"), stubs("second")
    agent, client = _agent(tmp_path, f"{first.url},{second.url}")
    rec: Any = _Reconciler()
    killed = threading.Event()

    def kill_first_once_it_holds_the_poll() -> bool:
        if not killed.is_set() and first.stats()["versions"] == [None, "7"]:
            first.kill()  # the poll at version 7 is under way on it
            killed.set()
        return killed.is_set() and second.stats()["versions"] == ["7"]

    _in_loop(lambda: agent._watch_loop(client, rec), kill_first_once_it_holds_the_poll)
    # The first answer (version 7) was applied once; the second controller was asked from
    # version 7, not from scratch, and holds the poll as the first did.
    assert len(rec.assignments) == 1
    assert client.url == second.url


# --- the edge: the upstreams watch -----------------------------------------------------


def test_edge_watch_fails_over_mid_poll_and_keeps_its_version(stubs: Any, tmp_path: Path) -> None:
    first, second = stubs("first"), stubs("second")
    settings = EdgeSettings(
        controller_url=f"{first.url},{second.url}",
        token=TOKEN,
        nginx_conf_dir=tmp_path / "nginx",
        metrics_port=0,
        watch_timeout_s=30,
    )
    edge = Edge(settings)
    killed = threading.Event()

    def kill_first_once_it_holds_the_poll() -> bool:
        if not killed.is_set() and first.stats()["versions"] == [None, "7"]:
            first.kill()
            killed.set()
        return killed.is_set() and second.stats()["versions"] == ["7"]

    _in_loop(edge._watch, kill_first_once_it_holds_the_poll)
    assert edge.upstreams is not None and edge.upstreams.version == 7
    assert edge.client.url == second.url
