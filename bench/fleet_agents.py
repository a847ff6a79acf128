"""Simulated agents for ``bench/fleet.py``: the real agent's protocol, without Docker.

Each ``SimAgent`` does what ``orchestrify.agent.agent.Agent`` does towards the
controller, with the same models and headers (``orchestrify.models``,
``orchestrify.protocol.announce``, ``orchestrify.client.raise_for_status``):

- registers with the join token (``POST /v1/nodes/register``), sending the node id and
  token it picked before the first try (on every retry too), then uses its node token;
- heartbeats every ``AgentSettings.heartbeat_interval_s`` (5 s), the next one counted from
  the end of the previous one as the real agent does;
- long-polls ``GET /v1/nodes/{id}/assignments?version=V&timeout=30``;
- reports replicas (``POST /v1/nodes/{id}/replicas``): a new ``run`` assignment is
  ``starting`` at once and ``healthy`` 0.1 s later, at a fake ``address:port``; a ``stop``
  is ``stopped``; a full report at least every 30 s.

An agent runs no container; its address is a distinct loopback address that nothing
connects to. It registers again on a 401/404 like the real agent, and backs off on
errors with the real agent's delays.

What the bench measures is recorded with ``time.perf_counter`` (CLOCK_MONOTONIC on
Linux, the same clock in every process of the host, so the parent compares the
workers' times with its own): every heartbeat's latency, and every time a watch answer
brings an agent a replica to run or takes one away (``Observation``). Agents run in one
or more worker processes (``run_worker``), apart from the bench's own API clients, so
that a busy agent loop does not delay the bench's other measurements.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvloop

from bench.wire import WireClient
from orchestrify.agent.settings import AgentSettings
from orchestrify.client import check_controller_protocol, raise_for_status
from orchestrify.errors import NotFound, OrchestrifyError, Unauthorized
from orchestrify.heap import settle_heap
from orchestrify.models import (
    Assignment,
    Assignments,
    DesiredState,
    Heartbeat,
    NodeCredentials,
    NodeRegistration,
    ReplicaReport,
    ReplicaReports,
    ReplicaState,
)
from orchestrify.protocol import MIN_PROTOCOL_VERSION, announce

__all__ = [
    "AgentTimings",
    "FleetAgentsConfig",
    "Observation",
    "WorkerResult",
    "node_name",
    "run_worker",
]


def _agent_default(name: str) -> Any:
    """A default of the real agent's settings, so the simulation keeps its timings."""
    return next(f.default for f in dataclasses.fields(AgentSettings) if f.name == name)


@dataclass(frozen=True, kw_only=True)
class AgentTimings:
    """The real agent's timings (``AgentSettings`` defaults), in seconds."""

    heartbeat_interval_s: float = _agent_default("heartbeat_interval_s")
    watch_timeout_s: float = _agent_default("watch_timeout_s")
    full_report_interval_s: float = _agent_default("full_report_interval_s")
    backoff_s: tuple[float, ...] = _agent_default("controller_backoff_s")
    request_timeout_s: float = 10.0
    """The agent's client timeout (``AsyncControllerClient``'s default)."""
    healthy_after_s: float = 0.1
    """A new replica's first probe passes after this (the startup probe interval)."""


@dataclass(frozen=True, kw_only=True)
class FleetAgentsConfig:
    """What one worker process needs to run its share of the fleet."""

    url: str
    join_token: str = field(repr=False)
    prefix: str
    """Node names are ``PREFIX-0001``...: one run's nodes, told apart from any other's."""
    indices: tuple[int, ...]
    ramp_s: float
    """Each agent starts after a random delay below this, so heartbeats spread out as in
    a fleet whose agents started at different times."""
    timings: AgentTimings = field(default_factory=AgentTimings)
    seed: int = 0


@dataclass(frozen=True)
class Observation:
    """An agent's watch answer brought it a change of one replica: ``run`` (a replica it
    must start) or ``stop`` (one that was ``run`` and is now ``drain``/``stop``, or gone)."""

    seen_at: float  # perf_counter when the answer was decoded
    service: str
    replica: str
    change: str  # "run" | "stop"


@dataclass
class WorkerResult:
    """What a worker sends back at the end (picklable)."""

    heartbeats: list[tuple[float, float, bool]] = field(default_factory=list)
    """(sent at, seconds until answered or failed, ok)."""
    observations: list[Observation] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    """Failed calls by kind (register, heartbeat, watch, report)."""
    watch_answers: int = 0
    reports: int = 0
    registered: int = 0
    registered_names: list[str] = field(default_factory=list)
    """The node names of the agents that registered (once each)."""
    loop_lag: list[tuple[float, float]] = field(default_factory=list)
    """(woke at, seconds late): how late this worker's own event loop woke a task that
    slept ``LAG_TICK_S``. A latency measured here includes it: a starved client is not
    a slow controller."""


LAG_TICK_S = 0.05


async def measure_own_lag(result: WorkerResult, stop: asyncio.Event) -> None:
    """Record how late this process's event loop wakes, every ``LAG_TICK_S``."""
    while not stop.is_set():
        asked = time.perf_counter()
        await asyncio.sleep(LAG_TICK_S)
        woke = time.perf_counter()
        result.loop_lag.append((woke, max(0.0, woke - asked - LAG_TICK_S)))


def node_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:04d}"


def node_address(index: int) -> str:
    """A distinct loopback address per simulated node (nothing ever connects to it)."""
    return f"127.1.{index // 250}.{index % 250 + 1}"


class _Refused(Exception):
    """The controller no longer knows this node (401/404): register again."""


class SimAgent:
    """One simulated node's agent; ``run()`` until ``stop`` is set."""

    def __init__(
        self,
        *,
        index: int,
        config: FleetAgentsConfig,
        http: WireClient,
        result: WorkerResult,
        stop: asyncio.Event,
        on_registered: Callable[[], None] | None = None,
    ) -> None:
        self.index = index
        self.config = config
        self.t = config.timings
        self.http = http
        self.result = result
        self.stop = stop
        self.on_registered = on_registered
        self.name = node_name(config.prefix, index)
        self.address = node_address(index)
        self.node_id: str | None = None
        self.token: str | None = None
        self.assigned: dict[str, Assignment] = {}
        # replica id -> the report the agent would send for it now
        self.replicas: dict[str, ReplicaReport] = {}
        self.changed: set[str] = set()
        self._report_now = asyncio.Event()
        self._next_port = 20000
        self._registering: asyncio.Lock = asyncio.Lock()
        self._registrations = 0

    # --- the transport: kept-alive connections per agent, as a real agent has; a lean
    # client (bench/wire.py), so that the bench's CPU is not the controller's latency ---
    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        timeout: float | None = None,
        json: Any = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        resp = await self.http.request(
            method, path, headers=headers, json_body=json, params=params, timeout=timeout
        )
        if resp.status_code != 426:
            check_controller_protocol(resp, minimum=MIN_PROTOCOL_VERSION)
        try:
            raise_for_status(resp)
        except (Unauthorized, NotFound) as exc:
            raise _Refused(str(exc)) from exc
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    async def _pause(self, attempt: int) -> None:
        delays = self.t.backoff_s
        delay = delays[min(attempt, len(delays) - 1)] * random.uniform(0.8, 1.2)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), delay)

    # --- register ---
    async def register(self) -> None:
        if self.node_id is None or self.token is None:
            # As the real agent: picked before the first try and sent on every retry, so a
            # registration whose answer timed out is answered the same the next time.
            self.node_id, self.token = secrets.token_hex(6), secrets.token_urlsafe(32)
        attempt = 0
        while not self.stop.is_set():
            reg = NodeRegistration(
                name=self.name,
                address=self.address,
                node_id=self.node_id,
                node_token=self.token,
                cpus=4,
                memory_total=8 << 30,
                labels={"bench": "fleet"},
            )
            try:
                body = await self.call(
                    "POST",
                    "/v1/nodes/register",
                    token=self.config.join_token,
                    json=reg.model_dump(),
                )
            except (httpx.HTTPError, OrchestrifyError, _Refused) as exc:
                self.result.failures[f"register: {type(exc).__name__}"] += 1
                await self._pause(attempt)
                attempt += 1
                continue
            creds = NodeCredentials.model_validate(body)
            self.node_id, self.token = creds.node_id, creds.node_token
            self._registrations += 1
            self.changed.update(self.replicas)  # a (maybe new) controller hears everything
            self._report_now.set()
            return

    async def _reregister(self, seen: int) -> None:
        async with self._registering:
            if self._registrations == seen:
                await self.register()

    # --- the loops ---
    async def run(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), random.uniform(0, self.config.ramp_s))
        if self.stop.is_set():
            return
        await self.register()
        if not self._registrations:  # stopped before it got through
            return
        self.result.registered += 1
        self.result.registered_names.append(self.name)
        if self.on_registered is not None:
            self.on_registered()
        loops = [self._heartbeat_loop(), self._watch_loop(), self._report_loop()]
        tasks = [asyncio.create_task(c) for c in loops]
        try:
            await self.stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _heartbeat_loop(self) -> None:
        attempt = 0
        while not self.stop.is_set():
            running = sum(1 for r in self.replicas.values() if r.state == ReplicaState.HEALTHY)
            hb = Heartbeat(
                cpu_percent=3.0,
                memory_total=8 << 30,
                memory_free=6 << 30,
                disk_free=40 << 30,
                replica_count=running,
            )
            seen = self._registrations
            sent = time.perf_counter()
            ok = True
            try:
                await self.call("POST", f"/v1/nodes/{self.node_id}/heartbeat", json=hb.model_dump())
            except _Refused:
                ok = False
                self.result.failures["heartbeat: refused"] += 1
                await self._reregister(seen)
            except (httpx.HTTPError, OrchestrifyError) as exc:
                ok = False
                self.result.failures[f"heartbeat: {type(exc).__name__}"] += 1
            self.result.heartbeats.append((sent, time.perf_counter() - sent, ok))
            if ok:
                attempt = 0
                pause = self.t.heartbeat_interval_s
            else:  # the real agent retries a failed heartbeat after its backoff
                pause = self.t.backoff_s[min(attempt, len(self.t.backoff_s) - 1)]
                attempt += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), pause)

    async def _watch_loop(self) -> None:
        version: int | None = None
        attempt = 0
        timeout = self.t.watch_timeout_s
        while not self.stop.is_set():
            params: dict[str, Any] = {"timeout": timeout}
            if version is not None:
                params["version"] = version
            seen = self._registrations
            try:
                body = await self.call(
                    "GET",
                    f"/v1/nodes/{self.node_id}/assignments",
                    params=params,
                    timeout=timeout + 10,
                )
                answer = Assignments.model_validate(body)
            except _Refused:
                self.result.failures["watch: refused"] += 1
                await self._reregister(seen)
                version = None
                continue
            except (httpx.HTTPError, OrchestrifyError) as exc:
                self.result.failures[f"watch: {type(exc).__name__}"] += 1
                await self._pause(attempt)
                attempt += 1
                continue
            attempt = 0
            seen_at = time.perf_counter()
            self.result.watch_answers += 1
            if answer.version != version or seen != self._registrations:
                version = answer.version
                self._apply(answer, seen_at)

    def _apply(self, answer: Assignments, seen_at: float) -> None:
        """What the real agent's reconciler does with new assignments, minus Docker."""
        new = {a.replica: a for a in answer.replicas}
        run = DesiredState.RUN
        for rid, a in new.items():
            before = self.assigned.get(rid)
            if a.desired == run and (before is None or before.desired != run):
                self.result.observations.append(Observation(seen_at, a.service, rid, "run"))
            if a.desired == run and rid not in self.replicas:
                port = a.host_port or self._port()
                self.replicas[rid] = ReplicaReport(
                    id=rid,
                    state=ReplicaState.STARTING,
                    address=f"{self.address}:{port}",
                    container_id=f"sim{self.index:04d}{rid}"[:64],
                    restarts=0,
                )
                self.changed.add(rid)
                asyncio.get_running_loop().call_later(self.t.healthy_after_s, self._healthy, rid)
            elif a.desired == DesiredState.STOP and rid in self.replicas:
                self.replicas[rid] = self.replicas[rid].model_copy(
                    update={"state": "stopped", "address": None}
                )
                self.changed.add(rid)
        for rid, before in self.assigned.items():
            now = new.get(rid)
            if before.desired == run and (now is None or now.desired != run):
                self.result.observations.append(Observation(seen_at, before.service, rid, "stop"))
            if now is None:
                self.replicas.pop(rid, None)  # the real agent removes it without a word
                self.changed.discard(rid)
        self.assigned = new
        if self.changed:
            self._report_now.set()

    def _port(self) -> int:
        self._next_port += 1
        return self._next_port

    def _healthy(self, rid: str) -> None:
        report = self.replicas.get(rid)
        if report is not None and report.state == ReplicaState.STARTING:
            self.replicas[rid] = report.model_copy(update={"state": ReplicaState.HEALTHY})
            self.changed.add(rid)
            self._report_now.set()

    async def _report_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last_full = loop.time()
        full_next = True
        attempt = 0
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._report_now.wait(), self.t.full_report_interval_s)
            await asyncio.sleep(0.02)  # a burst of changes goes in one report
            self._report_now.clear()
            full = full_next or loop.time() - last_full >= self.t.full_report_interval_s
            if not full and not self.changed:
                continue
            ids = set(self.replicas) if full else set(self.changed)
            body = ReplicaReports(
                replicas=[self.replicas[i] for i in sorted(ids) if i in self.replicas],
                full=full,
            )
            self.changed.clear()
            seen = self._registrations
            try:
                await self.call(
                    "POST", f"/v1/nodes/{self.node_id}/replicas", json=body.model_dump()
                )
            except (httpx.HTTPError, OrchestrifyError, _Refused) as exc:
                self.result.failures[f"report: {type(exc).__name__}"] += 1
                self.changed.update(i for i in ids if i in self.replicas)
                full_next = full_next or full
                if isinstance(exc, _Refused):
                    await self._reregister(seen)
                else:
                    await self._pause(attempt)
                    attempt += 1
                self._report_now.set()
                continue
            attempt = 0
            self.result.reports += 1
            for rid in [i for i in ids if self.replicas.get(i, None) is not None]:
                if self.replicas[rid].state == "stopped":
                    del self.replicas[rid]  # said once; the container is gone
            if full:
                full_next = False
                last_full = loop.time()


async def run_agents(
    config: FleetAgentsConfig,
    *,
    stop: asyncio.Event,
    on_registered: Callable[[int], None] | None = None,
) -> WorkerResult:
    """Run ``config.indices``' agents until ``stop`` is set; their measurements.
    ``on_registered`` hears the number registered so far after each registration."""
    random.seed(config.seed)
    result = WorkerResult()
    t = config.timings
    clients = [
        WireClient(config.url, headers=announce("agent"), timeout=t.request_timeout_s)
        for _ in config.indices
    ]

    def registered() -> None:
        if on_registered is not None:
            on_registered(result.registered)

    agents = [
        SimAgent(index=i, config=config, http=c, result=result, stop=stop, on_registered=registered)
        for i, c in zip(config.indices, clients, strict=True)
    ]
    lag = asyncio.create_task(measure_own_lag(result, stop))
    try:
        await asyncio.gather(*(a.run() for a in agents))
    finally:
        lag.cancel()
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)
    return result


def run_worker(config: FleetAgentsConfig, stop: Any, progress: Any, results: Any) -> None:
    """A worker process: run the agents until ``stop`` (a multiprocessing Event) is set,
    telling ``progress`` (a Queue) how many registered, and put a ``WorkerResult`` in
    ``results`` (a Queue) at the end."""

    # Its own garbage-collection pauses would count as the controller's latency.
    settle_heap()

    async def main() -> WorkerResult:
        done = asyncio.Event()

        async def watch_stop() -> None:
            await asyncio.to_thread(stop.wait)
            done.set()

        watcher = asyncio.create_task(watch_stop())
        try:
            return await run_agents(
                config, stop=done, on_registered=lambda n: progress.put((config.seed, n))
            )
        finally:
            watcher.cancel()

    # libuv's loop, as the controller runs under uvicorn: the simulated agents' own CPU
    # competes with the controller's on the same machine.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        results.put((config.seed, runner.run(main())))
