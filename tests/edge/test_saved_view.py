"""The edge with a fake Nginx and a fake controller: it saves every view it applied,
applies the saved one at start while the controller is away, never stops Nginx on exit,
and acknowledges the as_of of the view Nginx serves."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from orchestrify.edge import Edge, EdgeSettings
from orchestrify.edge.runner import VIEW_FILE
from orchestrify.errors import NodeUnreachable
from orchestrify.models import UpstreamReplica, Upstreams, UpstreamService
from tests.edge.test_apply import FakeNginx

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@dataclass
class StoppableNginx(FakeNginx):
    stopped: bool = False

    def pid(self) -> int | None:
        return 4242 if self.live else None

    async def stop(self) -> None:
        self.stopped = True


@dataclass
class FakeController:
    """Answers ``GET /v1/upstreams`` with what the test puts in ``answers`` (waiting
    for it), or fails while ``away``; records every ``POST /v1/edges`` body."""

    away: bool = False
    answers: asyncio.Queue[Upstreams] = field(default_factory=asyncio.Queue)
    registrations: list[dict[str, Any]] = field(default_factory=list)

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        if self.away:
            raise NodeUnreachable("controller away (test)")
        if method == "GET" and path == "/v1/upstreams":
            return (await self.answers.get()).model_dump(mode="json")
        if method == "POST" and path == "/v1/edges":
            self.registrations.append(kwargs["json"])
        return None

    async def aclose(self) -> None:
        return None


def upstreams(*addresses: str, as_of_s: float = 0, version: int = 1) -> Upstreams:
    return Upstreams(
        version=version,
        as_of=T0 + timedelta(seconds=as_of_s),
        services=[
            UpstreamService(
                name="web",
                port=8000,
                drain_s=10,
                replicas=[
                    UpstreamReplica(id=f"web-{n}", address=a, node="n1")
                    for n, a in enumerate(addresses)
                ],
            )
        ],
    )


def make_edge(prefix: Path, controller: FakeController, nginx: StoppableNginx) -> Edge:
    settings = EdgeSettings(
        controller_url="http://127.0.0.1:1",
        token="t",
        nginx_conf_dir=prefix,
        metrics_port=0,
        name="edge-1",
        debounce_min_s=0.01,
        debounce_max_s=0.05,
    )
    edge = Edge(settings, client=controller, registry=CollectorRegistry())  # type: ignore[arg-type]
    edge.nginx = nginx  # type: ignore[assignment]
    edge.applier.nginx = nginx
    return edge


async def _until(what: str, check: Callable[[], object], timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def test_a_restarted_edge_serves_its_saved_view_while_the_controller_is_away(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        # First life: the controller answers; the edge applies and saves the view.
        nginx = StoppableNginx(live=False)
        first = FakeController()
        first.answers.put_nowait(upstreams("10.0.0.1:30001", as_of_s=5))
        edge = make_edge(tmp_path, first, nginx)
        run = asyncio.create_task(edge.run())
        await _until("the first view applied", lambda: edge.applied_as_of is not None)
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        assert not nginx.stopped  # Nginx outlives the edge
        saved = json.loads((tmp_path / VIEW_FILE).read_text())
        assert saved["upstreams"]["services"][0]["replicas"][0]["address"] == "10.0.0.1:30001"

        # The host rebooted: no Nginx runs, and the controller is away. The new edge
        # starts Nginx with the saved view without waiting for the controller.
        (tmp_path / "upstreams.conf").unlink()
        rebooted = StoppableNginx(live=False)
        away = FakeController(away=True)
        edge = make_edge(tmp_path, away, rebooted)
        run = asyncio.create_task(edge.run())
        await _until("nginx started", lambda: "start" in rebooted.calls)
        assert "10.0.0.1:30001" in (tmp_path / "upstreams.conf").read_text()
        assert edge.applied_as_of == T0 + timedelta(seconds=5)
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        assert not rebooted.stopped

        # Restarted again with Nginx running those files: the saved view is a no-op.
        running = StoppableNginx(live=True)
        edge = make_edge(tmp_path, FakeController(away=True), running)
        run = asyncio.create_task(edge.run())
        await _until("the saved view applied", lambda: edge.last_result is not None)
        assert edge.last_result is not None and edge.last_result.ok
        assert not edge.last_result.changed and running.calls == []
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)

    asyncio.run(scenario())


def test_the_edge_acknowledges_each_view_nginx_serves(tmp_path: Path) -> None:
    async def scenario() -> None:
        nginx = StoppableNginx(live=False)
        controller = FakeController()
        edge = make_edge(tmp_path, controller, nginx)
        run = asyncio.create_task(edge.run())

        def acked() -> set[str]:
            return {r["applied_as_of"] for r in controller.registrations if "applied_as_of" in r}

        answers = [
            upstreams("10.0.0.1:30001", "10.0.0.2:30002", as_of_s=1, version=1),
            upstreams("10.0.0.1:30001", as_of_s=2, version=2),  # one left
            upstreams("10.0.0.1:30001", as_of_s=3, version=3),  # same view, newer
        ]
        for n, answer in enumerate(answers, start=1):
            controller.answers.put_nowait(answer)
            await _until(f"snapshot {n} acknowledged", lambda n=n: len(acked()) == n)  # type: ignore[misc]
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        assert acked() == {(T0 + timedelta(seconds=s)).isoformat() for s in (1, 2, 3)}
        # The third answer changed nothing: acknowledged without another reload.
        assert nginx.calls.count("reload") == 1
        assert "10.0.0.2" not in (tmp_path / "upstreams.conf").read_text()

    asyncio.run(scenario())
