"""Speed at fleet scale: N simulated agents against one real controller on this machine.

For each N (100, 500 and 1,000 by default) the bench starts a real controller process
(``python -m orchestrify controller`` on a free loopback port, its own temporary data
dir, SQLite unless ``--database-url`` names a PostgreSQL database), then:

- N simulated agents (``bench/fleet_agents.py``) speak the real agent protocol to it:
  register with the join token (in a ramp: ``--register-rate`` agents a second, at
  random times, as a fleet's agents start, not all at once), heartbeat every 5 s,
  long-poll their assignments and report their replicas ``starting`` then ``healthy``
  at a fake loopback address, or ``stopped``. No Docker. They run in ``--workers``
  processes (asyncio on uvloop, kept-alive connections per agent through the lean client
  of ``bench/wire.py``), apart from the bench's own clients below;
- once they are all registered (or a bounded wait passed) and a warm-up, for ``--seconds``:
  a churn loop creates, scales and deletes services (``drain_s`` 0) every
  ``--churn-interval`` seconds, so assignments change; ``--readers`` loops read the API
  as the CLI and the edge do (``GET /v1/services``, ``/v1/services/{name}``,
  ``/v1/nodes``, ``/v1/upstreams``), one call after another with 0.1 s between rounds,
  and one more client long-polls ``/v1/upstreams`` as an edge does.

It prints, per N (all latencies measured by the clients, with ``time.perf_counter``):

- heartbeat latency p50/p99: ``POST /v1/nodes/{id}/heartbeat`` sent -> answered; and,
  to tell where that time went, the heartbeat p99 as the controller timed it (its
  ``orchestrify_api_request_duration_seconds`` histogram, from two scrapes as below: the
  heartbeats that ended in the window, so a slow one begun in the ramp counts too) and
  the bench clients' own event-loop lag p99 (each worker process times a task that
  sleeps 50 ms: a client whose loop is late measures that lateness too); and the
  heartbeats that took 1 s or more before the measured window (the registration ramp
  and the warm-up), which the percentiles leave out;
- assignment notification latency p50/p99: from the answer of the API call that committed
  a change (create, scale, delete) to the moment the simulated agent that must act has
  it in its watch: a new replica to ``run`` for a create or scale-out, a running one
  turned ``drain``/``stop`` (or gone) for a scale-in or delete. Agents' observations are
  matched to the changes of their service in order; one never seen within the run (and
  2 s after it) counts as missed;
- API read p50/p99 over the readers' calls (and each call's p99);
- the controller's event-loop lag p99: from its ``orchestrify_event_loop_lag_seconds``
  histogram (``orchestrify/controller/looplag.py``), the difference of two scrapes of
  ``/metrics`` at the start and end of the run, interpolated within the bucket as
  Prometheus' ``histogram_quantile`` does (buckets 1, 2, 5, 10, 15, 20, 30, 50 ms...);
- the controller's CPU (% of one core, ``/proc/PID/stat`` over the run) and its peak RSS
  (``VmHWM``, since it started);
- agents never registered: those that did not get through ``POST /v1/nodes/register``
  by the end (a controller that cannot take the ramp), apart from
- nodes wrongly marked not ready: every registered simulated agent heartbeats on time, so
  any of them seen ``not_ready`` or ``unreachable`` in ``/v1/nodes`` or named by a node
  event is wrong (an agent never registered has no node to count);
- what the bench itself cost (CPU of its processes) and the machine's load, to tell a
  slow controller from a starved one.

Every wait is bounded; at the end the bench stops the controller by its PID and removes
its temporary directory.

Run: PYTHONPATH=. python bench/fleet.py [--agents 100,500,1000] [--seconds 60]
     [--register-rate 200] [--database-url postgresql+psycopg://...] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing
import os
import queue
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.fleet_agents import (
    FleetAgentsConfig,
    Observation,
    WorkerResult,
    run_worker,
)
from bench.report import Report, at_least, at_most, percentile
from orchestrify.protocol import announce

LAG_METRIC = "orchestrify_event_loop_lag_seconds"
API_METRIC = "orchestrify_api_request_duration_seconds"
SILENT_STATES = ("not_ready", "unreachable")
READ_PAUSE_S = 0.1  # between a reader's rounds: a CLI user or a dashboard, not a flood
SETTLE_S = 2.0  # after the run, for notifications still on their way (quick: 1 s)
CONTROLLER_START_S = 60.0
QUICK_SECONDS = 6.0  # at least one heartbeat (every 5 s) of each agent falls in it
REUSE_NAME_S = 15.0  # a deleted service's name is created again only after this


@dataclass(frozen=True, kw_only=True)
class FleetOptions:
    agents: int
    seconds: float
    workers: int
    churn_interval_s: float
    readers: int
    ramp_s: float
    warmup_s: float
    settle_s: float
    database_url: str | None


# --- the controller process ---
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ControllerProcess:
    """A controller started by the bench: its PID, URL, tokens and temporary dir."""

    proc: subprocess.Popen[bytes]
    url: str
    token: str
    join_token: str
    data_dir: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 20) -> str:
        path = self.data_dir / "controller.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@contextlib.contextmanager
def controller_process(database_url: str | None) -> Iterator[ControllerProcess]:
    """Start ``orchestrify controller`` on a free loopback port; stop it by its PID and
    remove its data dir at the end, whatever happened."""
    data_dir = Path(tempfile.mkdtemp(prefix="orchestrify-fleet-"))
    port = free_port()
    token, join_token = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    cmd = [
        sys.executable,
        "-m",
        "orchestrify",
        "controller",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--token",
        token,
        "--join-token",
        join_token,
        # Every node is new and heartbeats on time: judged from the start, no grace.
        "--node-startup-grace",
        "0",
    ]
    if database_url:
        cmd += ["--database-url", database_url]
    # Nothing of the caller's ORCHESTRIFY_* settings (a database URL, a token) leaks in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRIFY_")}
    log = (data_dir / "controller.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    ctl = ControllerProcess(
        proc=proc,
        url=f"http://127.0.0.1:{port}",
        token=token,
        join_token=join_token,
        data_dir=data_dir,
    )
    try:
        deadline = time.monotonic() + CONTROLLER_START_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the controller exited ({proc.returncode}):\n{ctl.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{ctl.url}/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the controller did not answer:\n{ctl.log_tail()}")
            time.sleep(0.1)
        yield ctl
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()
        shutil.rmtree(data_dir, ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (``/proc/PID/stat``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory of ``pid`` (``VmHWM``), MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return math.nan


# --- the controller's own histograms, from two scrapes of /metrics ---
HEARTBEAT_ROUTE = "/v1/nodes/{node_id}/heartbeat"


def lag_buckets(metrics_text: str) -> dict[float, float]:
    """Cumulative counts of the lag histogram by upper bound (seconds, +Inf included)."""
    return _buckets(metrics_text, LAG_METRIC, {})


def heartbeat_buckets(metrics_text: str) -> dict[float, float]:
    """Cumulative counts of the heartbeat route's answers (any status) by upper bound, as
    the controller timed them: from the request's arrival in the app to its answer."""
    return _buckets(metrics_text, API_METRIC, {"method": "POST", "route": HEARTBEAT_ROUTE})


def _buckets(metrics_text: str, metric: str, labels: dict[str, str]) -> dict[float, float]:
    out: dict[float, float] = defaultdict(float)
    for family in text_string_to_metric_families(metrics_text):
        if family.name != metric:
            continue
        for sample in family.samples:
            if sample.name == f"{metric}_bucket" and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                out[float(sample.labels["le"])] += sample.value  # summed over statuses
    return dict(out)


@dataclass(frozen=True)
class Histograms:
    """The controller's histograms the bench reads, as scraped once (empty: no answer)."""

    lag: dict[float, float] = field(default_factory=dict)
    heartbeat: dict[float, float] = field(default_factory=dict)


async def scrape(ctl: ControllerProcess, observed: Observed, *, timeout_s: float) -> Histograms:
    """The histograms now; empty when /metrics does not answer in time."""
    try:
        async with httpx.AsyncClient(base_url=ctl.url, timeout=timeout_s) as client:
            resp = await client.get("/metrics")
        resp.raise_for_status()
    except httpx.HTTPError as exc:
        observed.failures[f"metrics: {type(exc).__name__}"] += 1
        return Histograms()
    return Histograms(lag=lag_buckets(resp.text), heartbeat=heartbeat_buckets(resp.text))


def histogram_quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float:
    """The ``q`` (0..1) quantile of what was observed between two scrapes, interpolated
    linearly within its bucket (Prometheus' ``histogram_quantile``); NaN when nothing was
    observed or the histogram is missing."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return math.nan
    rank = q * counts[-1]
    lower, below = 0.0, 0.0
    for bound, cumulative in zip(bounds, counts, strict=True):
        if cumulative >= rank:
            if math.isinf(bound):
                return lower  # beyond the last finite bucket: its bound is all we know
            inside = cumulative - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, cumulative
    return lower


# --- the churn: changes whose notification the agents' watches must bring ---
@dataclass
class Change:
    service: str
    kind: str  # create | scale | delete
    runs: int  # replicas that must appear as ``run`` on some agent
    stops: int  # running replicas that must turn drain/stop or go
    requested: float
    answered: float = math.nan
    ok: bool = False


@dataclass
class Observed:
    """What the bench's own clients saw during the run."""

    reads: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    writes: list[float] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    silent_nodes: set[str] = field(default_factory=set)
    failures: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    upstream_answers: int = 0
    nodes_listed: int = 0  # successful GET /v1/nodes
    notes: list[str] = field(default_factory=list)


class Churn:
    """Creates, scales and deletes services on a small pool of names, one change per
    tick, never changing one service twice within a few ticks (so a slow notification
    is still matched to the change that caused it)."""

    def __init__(self, client: httpx.AsyncClient, observed: Observed, *, pool: int) -> None:
        self.client = client
        self.observed = observed
        self.names = [f"fleet-svc-{k:02d}" for k in range(pool)]
        self.replicas: dict[str, int] = {}  # the services that exist, by the churn's count
        self.last_change: dict[str, float] = {}
        self.rng = random.Random(14)

    def existing(self) -> list[str]:
        return list(self.replicas)

    async def run(self, *, interval_s: float, until: float) -> None:
        while time.perf_counter() < until:
            started = time.perf_counter()
            await self.step(quiet_s=3 * interval_s)
            await asyncio.sleep(max(0.0, interval_s - (time.perf_counter() - started)))

    async def step(self, *, quiet_s: float) -> None:
        now = time.perf_counter()
        ready = [n for n in self.replicas if now - self.last_change.get(n, 0.0) >= quiet_s]
        # A deleted service is gone once its replicas have stopped: its name waits longer.
        free = [
            n
            for n in self.names
            if n not in self.replicas and now - self.last_change.get(n, 0.0) >= REUSE_NAME_S
        ]
        if free and (not ready or self.rng.random() < 0.4):
            name = self.rng.choice(free)
            count = self.rng.randint(1, 3)
            spec = {
                "name": name,
                "image": "nginx:alpine",
                "port": 80,
                "replicas": count,
                "min_replicas": 1,
                "max_replicas": 10,
                "health_path": "/",
                "drain_s": 0,
                "labels": {"bench": "fleet"},
            }
            change = Change(name, "create", runs=count, stops=0, requested=now)
            if await self._send(change, "POST", "/v1/services", json=spec):
                self.replicas[name] = count
        elif ready:
            name = self.rng.choice(ready)
            have = self.replicas[name]
            if self.rng.random() < 0.25:
                change = Change(name, "delete", runs=0, stops=have, requested=now)
                if await self._send(change, "DELETE", f"/v1/services/{name}"):
                    del self.replicas[name]
            else:
                want = self.rng.choice([n for n in range(1, 6) if n != have])
                change = Change(
                    name,
                    "scale",
                    runs=max(0, want - have),
                    stops=max(0, have - want),
                    requested=now,
                )
                if await self._send(
                    change, "PATCH", f"/v1/services/{name}", json={"replicas": want}
                ):
                    self.replicas[name] = want
        else:
            return
        self.last_change[change.service] = now

    async def _send(self, change: Change, method: str, path: str, **kwargs: Any) -> bool:
        try:
            resp = await self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            self.observed.failures[f"churn: {type(exc).__name__}"] += 1
            self.observed.writes.append(time.perf_counter() - change.requested)
            return False
        change.answered = time.perf_counter()
        self.observed.writes.append(change.answered - change.requested)
        change.ok = resp.is_success
        if not change.ok:
            self.observed.failures[f"churn: HTTP {resp.status_code}"] += 1
            return False
        self.observed.changes.append(change)
        return True


async def read_loop(
    client: httpx.AsyncClient, churn: Churn, observed: Observed, *, prefix: str, until: float
) -> None:
    """Read as ``orchestrify service ls/show``, ``node ls`` and an edge's resync do."""
    rng = random.Random()
    while time.perf_counter() < until:
        name = rng.choice(churn.existing() or churn.names)
        for label, path in (
            ("GET /v1/services", "/v1/services"),
            ("GET /v1/services/{name}", f"/v1/services/{name}"),
            ("GET /v1/nodes", "/v1/nodes"),
            ("GET /v1/upstreams", "/v1/upstreams"),
        ):
            sent = time.perf_counter()
            try:
                resp = await client.get(path)
            except httpx.HTTPError as exc:
                observed.failures[f"read: {type(exc).__name__}"] += 1
                observed.reads[label].append(time.perf_counter() - sent)
                continue
            observed.reads[label].append(time.perf_counter() - sent)
            if resp.status_code >= 500:
                observed.failures[f"read: HTTP {resp.status_code}"] += 1
            if label == "GET /v1/nodes" and resp.is_success:
                observed.nodes_listed += 1
                for node in resp.json():
                    if node["name"].startswith(prefix) and node["state"] in SILENT_STATES:
                        observed.silent_nodes.add(node["name"])
        await asyncio.sleep(READ_PAUSE_S)


async def edge_watch(client: httpx.AsyncClient, observed: Observed, *, until: float) -> None:
    """Long-poll ``/v1/upstreams`` as an edge does (its answers are counted, not timed)."""
    version: int | None = None
    while time.perf_counter() < until:
        params: dict[str, Any] = {"timeout": max(0.5, min(30.0, until - time.perf_counter()))}
        if version is not None:
            params["version"] = version
        try:
            resp = await client.get("/v1/upstreams", params=params, timeout=45)
            resp.raise_for_status()
        except httpx.HTTPError as exc:
            observed.failures[f"edge watch: {type(exc).__name__}"] += 1
            await asyncio.sleep(0.5)
            continue
        version = resp.json()["version"]
        observed.upstream_answers += 1


def match_notifications(
    changes: list[Change], observations: list[Observation]
) -> tuple[list[float], int]:
    """Latency of each expected notification (seconds from the change's answer) and how
    many were never seen. Observations of a service are matched, in time order, to the
    oldest change of that service still waiting for one of their kind."""
    timeline: list[tuple[float, int, Any]] = [(c.requested, 0, c) for c in changes]
    timeline += [(o.seen_at, 1, o) for o in observations]
    timeline.sort(key=lambda item: (item[0], item[1]))
    waiting: dict[tuple[str, str], deque[list[Any]]] = defaultdict(deque)
    latencies: list[float] = []
    for _, what, item in timeline:
        if what == 0:
            for kind, count in (("run", item.runs), ("stop", item.stops)):
                if count:
                    waiting[(item.service, kind)].append([item, count])
            continue
        pending = waiting.get((item.service, item.change))
        if not pending:
            continue  # the reconciler's own doing (a move, a replacement): not a change of ours
        entry = pending[0]
        latencies.append(max(0.0, item.seen_at - entry[0].answered))
        entry[1] -= 1
        if entry[1] == 0:
            pending.popleft()
    missed = sum(entry[1] for pending in waiting.values() for entry in pending)
    return latencies, missed


async def node_events(client: httpx.AsyncClient, *, prefix: str, until: datetime) -> set[str]:
    """Names of our nodes that a node event written before ``until`` (the end of the
    run, before the agents stopped) called not ready or unreachable."""
    resp = await client.get("/v1/events", params={"kind": "node", "limit": 10000}, timeout=60)
    resp.raise_for_status()
    named: set[str] = set()
    for ev in resp.json():
        if datetime.fromisoformat(ev["time"]) > until:
            continue
        if ev.get("action") == "node_not_ready" and ev.get("node"):
            named.add(ev["node"])
        elif ev.get("action") == "mass_silence":
            named.update(ev.get("data", {}).get("nodes", []))
    return {n for n in named if n.startswith(prefix)}


@dataclass
class Workers:
    """The agents' worker processes and their queues."""

    procs: list[Any]
    stop: Any
    progress: Any
    results: Any
    registered: dict[int, int] = field(default_factory=dict)

    def poll_registered(self) -> int:
        with contextlib.suppress(queue.Empty):
            while True:
                worker, count = self.progress.get_nowait()
                self.registered[worker] = max(self.registered.get(worker, 0), count)
        return sum(self.registered.values())

    def finish(self, *, timeout_s: float) -> list[WorkerResult]:
        self.stop.set()
        got: list[WorkerResult] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < len(self.procs) and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                got.append(self.results.get(timeout=0.5)[1])
        for proc in self.procs:
            proc.join(timeout=max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.terminate()  # ours, by its PID
                proc.join(timeout=5)
        return got


def start_workers(ctl: ControllerProcess, opts: FleetOptions, prefix: str) -> Workers:
    ctx = multiprocessing.get_context("spawn")
    stop, progress, results = ctx.Event(), ctx.Queue(), ctx.Queue()
    procs = []
    for w in range(opts.workers):
        config = FleetAgentsConfig(
            url=ctl.url,
            join_token=ctl.join_token,
            prefix=prefix,
            indices=tuple(range(w, opts.agents, opts.workers)),
            ramp_s=opts.ramp_s,
            seed=w,
        )
        proc = ctx.Process(
            target=run_worker, args=(config, stop, progress, results), name=f"fleet-agents-{w}"
        )
        proc.start()
        procs.append(proc)
    return Workers(procs=procs, stop=stop, progress=progress, results=results)


def run_scenario(opts: FleetOptions, report: Report) -> None:
    n = opts.agents
    scenario = f"{n:,} agents"
    prefix = f"fleet{secrets.token_hex(2)}"
    say(f"{scenario}: starting a controller")
    try:
        with controller_process(opts.database_url) as ctl:
            at_start = asyncio.run(scrape(ctl, Observed(), timeout_s=30))
            workers = start_workers(ctl, opts, prefix)
            results: list[WorkerResult] = []
            try:
                measured = asyncio.run(measure(ctl, opts, workers, prefix))
            finally:
                results = workers.finish(timeout_s=30)
                peak = peak_rss_mb(ctl.pid)
            # With the agents stopped, an overloaded controller catches up and answers.
            asyncio.run(after_run(ctl, measured, prefix=prefix, at_start=at_start))
            if opts.database_url:  # the next count's controller shares this database
                asyncio.run(forget_fleet(ctl, prefix))
    except Exception as exc:  # one count failing must not lose the others' figures
        say(f"{scenario}: failed: {type(exc).__name__}: {exc}")
        report.add(scenario, "run failed (see stderr)", math.nan, "", at_most(0))
        return
    add_figures(report, scenario, opts, measured, results, peak)
    say(f"{scenario}: done")


async def forget_fleet(ctl: ControllerProcess, prefix: str) -> None:
    """Remove this run's services and nodes (after its agents stopped), so that the next
    run on the same database starts without them. Bounded: what does not go in a minute
    stays (and is said)."""
    headers = {**announce("cli"), "Authorization": f"Bearer {ctl.token}"}
    async with httpx.AsyncClient(base_url=ctl.url, headers=headers, timeout=30) as api:
        try:
            services = (await api.get("/v1/services")).json()
            nodes = (await api.get("/v1/nodes")).json()
        except httpx.HTTPError as exc:
            say(f"  cannot list what to remove: {exc}")
            return
        paths = [
            f"/v1/services/{s['name']}" for s in services if s["name"].startswith("fleet-svc-")
        ]
        paths += [f"/v1/nodes/{n['id']}?force=true" for n in nodes if n["name"].startswith(prefix)]
        gate = asyncio.Semaphore(8)
        left = 0

        async def remove(path: str) -> None:
            nonlocal left
            async with gate:
                try:
                    resp = await api.delete(path)
                    left += resp.status_code not in (200, 204, 404)
                except httpx.HTTPError:
                    left += 1

        try:
            await asyncio.wait_for(asyncio.gather(*(remove(p) for p in paths)), 60)
        except TimeoutError:
            left = -1
        if left:
            say(f"  could not remove all of this run's services and nodes ({left})")


@dataclass
class Measured:
    observed: Observed
    window: tuple[float, float]  # perf_counter
    end_wall: datetime  # the run's end (and settling) on the wall clock, for event times
    registered: int
    before: Histograms
    after: Histograms
    controller_cpu: float
    bench_cpu: float
    load: float
    silent_from_events: set[str] | None = None  # None: the events could not be read


async def measure(
    ctl: ControllerProcess, opts: FleetOptions, workers: Workers, prefix: str
) -> Measured:
    headers = {**announce("cli"), "Authorization": f"Bearer {ctl.token}"}
    limits = httpx.Limits(max_connections=opts.readers + 4)
    async with (
        httpx.AsyncClient(base_url=ctl.url, headers=headers, timeout=30, limits=limits) as api,
        httpx.AsyncClient(
            base_url=ctl.url, headers={**headers, **announce("edge")}, timeout=30
        ) as edge,
    ):
        # All agents registered (bounded: whoever has not by then is left out).
        deadline = time.perf_counter() + opts.ramp_s + max(30.0, n_seconds(opts.agents))
        registered = 0
        while time.perf_counter() < deadline:
            registered = workers.poll_registered()
            if registered >= opts.agents:
                break
            if not any(p.is_alive() for p in workers.procs):
                raise RuntimeError("the agents' worker processes exited")
            await asyncio.sleep(0.2)
        say(f"  {registered} of {opts.agents} agents registered; warming up {opts.warmup_s:g} s")
        await asyncio.sleep(opts.warmup_s)

        observed = Observed()
        churn = Churn(api, observed, pool=max(8, min(20, opts.agents // 25)))
        pids = [p.pid for p in workers.procs if p.pid is not None]
        # /metrics queues behind the agents' calls on a busy controller: a long timeout.
        before = await scrape(ctl, observed, timeout_s=60)
        begin = time.perf_counter()
        cpu_before = cpu_seconds(ctl.pid)
        bench_before = sum(cpu_seconds(pid) for pid in pids) + _own_cpu()
        until = begin + opts.seconds
        say(f"  measuring for {opts.seconds:g} s")
        tasks = [
            asyncio.create_task(churn.run(interval_s=opts.churn_interval_s, until=until)),
            asyncio.create_task(edge_watch(edge, observed, until=until)),
            *(
                asyncio.create_task(read_loop(api, churn, observed, prefix=prefix, until=until))
                for _ in range(opts.readers)
            ),
        ]
        done, pending = await asyncio.wait(tasks, timeout=opts.seconds + 60)
        for task in pending:
            task.cancel()
        for task in done:
            failed = task.exception()
            if failed is not None:
                raise failed
        end = time.perf_counter()
        cpu = (cpu_seconds(ctl.pid) - cpu_before) / (end - begin) * 100
        bench_cpu = (
            (sum(cpu_seconds(pid) for pid in pids) + _own_cpu() - bench_before)
            / (end - begin)
            * 100
        )
        end_wall = datetime.now(UTC)
        after = await scrape(ctl, observed, timeout_s=60)
        load = os.getloadavg()[0]
        await asyncio.sleep(opts.settle_s)  # notifications still on their way
    return Measured(
        observed=observed,
        window=(begin, end),
        end_wall=end_wall + timedelta(seconds=opts.settle_s),
        registered=registered,
        before=before,
        after=after,
        controller_cpu=cpu,
        bench_cpu=bench_cpu,
        load=load,
    )


async def after_run(
    ctl: ControllerProcess, m: Measured, *, prefix: str, at_start: Histograms
) -> None:
    """What could not be read during the run, read once the agents have stopped: the node
    events (those written before the run ended count), and the lag histogram when a
    scrape timed out. A lag taken from the controller's start, or up to this late
    scrape, covers more than the run: said in the failures."""
    if not m.before.lag:
        m.before = at_start
        m.observed.notes.append("controller's histograms counted from its start")
    if not m.after.lag:
        m.after = await scrape(ctl, m.observed, timeout_s=60)
        m.observed.notes.append("controller's histograms counted until after the agents stopped")
    headers = {**announce("cli"), "Authorization": f"Bearer {ctl.token}"}
    async with httpx.AsyncClient(base_url=ctl.url, headers=headers, timeout=60) as api:
        try:
            m.silent_from_events = await node_events(api, prefix=prefix, until=m.end_wall)
        except httpx.HTTPError as exc:
            m.observed.failures[f"events: {type(exc).__name__}"] += 1


def n_seconds(agents: int) -> float:
    """Longest wait for every agent to register beyond the ramp: 60 ms per agent."""
    return agents * 0.06


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def add_figures(
    report: Report,
    scenario: str,
    opts: FleetOptions,
    m: Measured,
    results: list[WorkerResult],
    peak_mb: float,
) -> None:
    begin, end = m.window
    heartbeats = [lat for r in results for (sent, lat, _) in r.heartbeats if begin <= sent <= end]
    # Before the window: the registration ramp and the warm-up, where the heartbeats
    # of agents that just joined wait behind the registrations' writes.
    ramp_slow = sum(
        1 for r in results for (sent, lat, _) in r.heartbeats if sent < begin and lat >= 1.0
    )
    client_lag = [lag for r in results for (at, lag) in r.loop_lag if begin <= at <= end]
    observations = [o for r in results for o in r.observations]
    latencies, missed = match_notifications(m.observed.changes, observations)
    reads = [x for samples in m.observed.reads.values() for x in samples]
    failures: dict[str, int] = defaultdict(int)
    for r in results:
        for kind, count in r.failures.items():
            failures[kind] += count
    for kind, count in m.observed.failures.items():
        failures[kind] += count
    registered_names = {name for r in results for name in r.registered_names}
    never = opts.agents - len(registered_names)
    # Only registered agents' nodes: an agent that never got in is counted apart.
    silent = (m.observed.silent_nodes | (m.silent_from_events or set())) & registered_names
    # Unknown (n/a) when neither the events nor any read of /v1/nodes could tell.
    checked = m.silent_from_events is not None or m.observed.nodes_listed > 0
    wrongly_silent = len(silent) if silent or checked else math.nan
    changes = len(m.observed.changes)

    def ms(samples: list[float], q: float) -> float:
        return percentile(samples, q) * 1000

    add = report.add
    add(scenario, "agents registered at the start", m.registered, "", at_least(opts.agents))
    add(scenario, "  by the end", len(registered_names), "")
    add(scenario, "agents never registered", never, "", at_most(0))
    add(scenario, "heartbeat p50", ms(heartbeats, 50), "ms")
    add(scenario, "heartbeat p99", ms(heartbeats, 99), "ms", at_most(100, "ms"))
    served_p99 = histogram_quantile(0.99, m.before.heartbeat, m.after.heartbeat)
    add(scenario, "  heartbeat p99 inside the controller", served_p99 * 1000, "ms")
    add(scenario, "  bench clients' own loop lag p99", ms(client_lag, 99), "ms")
    add(scenario, "  heartbeats over 1 s in the ramp and warm-up", ramp_slow, "")
    add(scenario, "assignment notification p50", ms(latencies, 50), "ms")
    add(scenario, "assignment notification p99", ms(latencies, 99), "ms", at_most(250, "ms"))
    add(scenario, "notifications missed", missed if changes else math.nan, "", at_most(0))
    add(scenario, "API read p50", ms(reads, 50), "ms")
    add(scenario, "API read p99", ms(reads, 99), "ms", at_most(100, "ms"))
    for label, samples in sorted(m.observed.reads.items()):
        add(scenario, f"  {label} p99", ms(samples, 99), "ms")
    add(scenario, "API write p99 (churn)", ms(m.observed.writes, 99), "ms")
    lag_p99 = histogram_quantile(0.99, m.before.lag, m.after.lag)
    add(scenario, "event-loop lag p99", lag_p99 * 1000, "ms", at_most(20, "ms"))
    add(scenario, "controller CPU (of one core)", m.controller_cpu, "%")
    add(scenario, "controller peak RSS", peak_mb, "MB", at_most(500, "MB"))
    add(scenario, "nodes wrongly not ready", wrongly_silent, "", at_most(0))
    add(scenario, "failed requests", sum(failures.values()), "")
    add(scenario, "  changes made", changes, "")
    add(scenario, "  heartbeats measured", len(heartbeats), "")
    add(scenario, "  reads measured", len(reads), "")
    add(scenario, "bench clients CPU (all processes)", m.bench_cpu, "%")
    add(scenario, "machine load (1 min, 2 cores)", m.load, "")
    if failures:
        say(f"  failures: {dict(sorted(failures.items()))}")
    for note in m.observed.notes:
        say(f"  note: {note}")
    if silent:
        say(f"  nodes seen silent: {sorted(silent)[:10]}")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_agents(value: str) -> list[int]:
    try:
        counts = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--agents: want counts like 100,500,1000, not {value!r}"
        ) from None
    if not counts or any(c < 1 or c > 5000 for c in counts):
        raise argparse.ArgumentTypeError("--agents: each count from 1 to 5,000")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--agents", type=parse_agents, default=[100, 500, 1000], help="counts, e.g. 100,500,1000"
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="measured run per count")
    parser.add_argument(
        "--database-url", help="PostgreSQL store (postgresql+psycopg://...); default SQLite"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes running the agents (default: 1 up to 200 agents, else 2)",
    )
    parser.add_argument(
        "--register-rate",
        type=float,
        default=200.0,
        help="agents registering per second (the ramp; default 200)",
    )
    parser.add_argument("--churn-interval", type=float, default=1.0, help="seconds per change")
    parser.add_argument("--readers", type=int, default=2, help="concurrent API read loops")
    parser.add_argument("--quick", action="store_true", help="5 agents for 6 s (a smoke test)")
    parser.add_argument("--json", action="store_true", help="one JSON object per figure")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.seconds > 3600:
        parser.error("--seconds: from 0 to 3,600")
    if not 0 < args.register_rate <= 100_000:
        parser.error("--register-rate: from 0 to 100,000 agents a second")
    counts = [5] if args.quick else args.agents
    report = Report(
        f"bench/fleet.py: simulated agents against one controller "
        f"({'PostgreSQL' if args.database_url else 'SQLite'}), "
        f"{QUICK_SECONDS if args.quick else args.seconds:g} s each"
    )
    for count in counts:
        opts = FleetOptions(
            agents=count,
            seconds=QUICK_SECONDS if args.quick else args.seconds,
            workers=args.workers or (1 if count <= 200 else 2),
            churn_interval_s=0.5 if args.quick else args.churn_interval,
            readers=args.readers,
            ramp_s=0.5 if args.quick else count / args.register_rate,
            warmup_s=0.0 if args.quick else 5.0,
            settle_s=1.0 if args.quick else SETTLE_S,
            database_url=args.database_url,
        )
        run_scenario(opts, report)
    report.print(json_out=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
