"""Unit tests of the agent's reconcile and heal logic, with a fake engine and prober."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable, Coroutine
from typing import Any

from orchestrify.agent.docker_engine import ContainerEvent, ContainerInfo, ContainerSpec
from orchestrify.agent.metrics import AgentMetrics
from orchestrify.agent.probe import ProbeResult
from orchestrify.agent.reconcile import (
    REPLACE_GRACE_S,
    GiveUp,
    LocalReplica,
    NodeReconciler,
    Nothing,
    Remove,
    Start,
    WaitUntil,
    decide,
)
from orchestrify.agent.settings import HealSettings
from orchestrify.errors import ImagePullFailed
from orchestrify.models import Assignment, DesiredState


def sync(fn: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test in its own loop (no pytest plugin needed)."""

    @functools.wraps(fn)
    def wrapper() -> None:
        asyncio.run(fn())

    return wrapper


HEAL = HealSettings(backoff_s=(0, 1, 2, 4), max_replacements=3, replacement_window_s=60)


def assignment(
    replica: str = "r1", *, desired: str = "run", image: str = "img", stop_grace_s: float = 10
) -> Assignment:
    return Assignment(
        replica=replica,
        service="web",
        desired=DesiredState(desired),
        image=image,
        env={"A": "1"},
        port=8000,
        host_port=None,
        health_path="/health",
        memory_mb=64,
        cpus=0.5,
        generation=1,
        stop_grace_s=stop_grace_s,
    )


CLUSTER = "cluster-a"


def container(
    cid: str = "c1",
    replica: str = "r1",
    *,
    running: bool = True,
    cluster: str | None = CLUSTER,
    spec: str | None = None,
    service: str = "web",
) -> ContainerInfo:
    labels = {"orchestrify.generation": "1"}
    if cluster is not None:
        labels["orchestrify.cluster"] = cluster
    if spec is not None:
        labels["orchestrify.spec"] = spec
    return ContainerInfo(
        id=cid,
        replica=replica,
        service=service,
        running=running,
        status="running" if running else "exited",
        host_port=32000,
        labels=labels,
        image="img",
    )


class FakeEngine:
    def __init__(self) -> None:
        self.containers: dict[str, ContainerInfo] = {}
        self.specs: list[ContainerSpec] = []
        self.removed: list[str] = []
        self.graces: dict[str, float] = {}  # container id -> grace_s it was stopped with
        self.missing_images: set[str] = set()
        self.retired: list[ContainerInfo] = []  # removed with keep_logs
        self._n = 0

    async def list_containers(self, node_id: str) -> list[ContainerInfo]:
        return list(self.containers.values())

    async def ensure_image(self, image: str) -> None:
        if image in self.missing_images:
            raise ImagePullFailed(f"cannot pull image {image}: not found")

    async def run(self, spec: ContainerSpec) -> ContainerInfo:
        self._n += 1
        self.specs.append(spec)
        info = ContainerInfo(
            id=f"new{self._n}",
            replica=spec.labels["orchestrify.replica"],
            service=spec.labels["orchestrify.service"],
            running=True,
            status="running",
            host_port=32000 + self._n,
            labels=spec.labels,
        )
        self.containers[info.id] = info
        return info

    async def remove(
        self, container_id: str, *, grace_s: float = 0.0, keep_logs: bool = False
    ) -> None:
        self.removed.append(container_id)
        self.graces[container_id] = grace_s
        gone = self.containers.pop(container_id, None)
        if keep_logs and gone is not None:
            self.retired.append(gone)

    async def retired_containers(self, node_id: str) -> list[ContainerInfo]:
        return list(self.retired)


class FakeProber:
    def __init__(self) -> None:
        self.ok = True
        self.urls: list[str] = []

    async def probe(self, url: str) -> ProbeResult:
        self.urls.append(url)
        return ProbeResult(self.ok, 0.001, "HTTP 200" if self.ok else "HTTP 500")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(engine: FakeEngine, prober: FakeProber, clock: Clock) -> NodeReconciler:
    rec = NodeReconciler(
        engine=engine,
        prober=prober,
        heal=HEAL,
        metrics=AgentMetrics(),
        advertise_address="10.0.0.5",
        extra_labels={"orchestrify.test": "1"},
        clock=clock,
    )
    rec.node_id = "node1"
    rec.cluster_id = CLUSTER
    return rec


async def cycle(rec: NodeReconciler) -> None:
    rec.step()
    await rec.settle()


# --- decide: pure ---------------------------------------------------------------------
def test_decide_starts_a_missing_container_and_leaves_a_running_one() -> None:
    rep = LocalReplica(assignment=assignment())
    assert isinstance(decide(rep, now=0, heal=HEAL), Start)
    rep.container = container()
    assert decide(rep, now=0, heal=HEAL) == Nothing()


def test_decide_backs_off_then_gives_up() -> None:
    rep = LocalReplica(assignment=assignment(), container=container(running=False))
    assert decide(rep, now=100, heal=HEAL) == Start(replacement=True, reason="container exited")
    rep.attempts = [100.0]
    assert decide(rep, now=100.5, heal=HEAL) == WaitUntil(101.0)
    assert isinstance(decide(rep, now=101.0, heal=HEAL), Start)
    rep.attempts = [100.0, 101.0]
    assert decide(rep, now=102, heal=HEAL) == WaitUntil(103.0)
    rep.attempts = [100.0, 101.0, 103.0]
    assert isinstance(decide(rep, now=104, heal=HEAL), GiveUp)
    # outside the window the count starts afresh
    assert isinstance(decide(rep, now=100 + 60 + 4, heal=HEAL), Start)


def test_decide_stop_removes_and_drain_keeps_running() -> None:
    rep = LocalReplica(assignment=assignment(desired="stop"), container=container())
    assert decide(rep, now=0, heal=HEAL) == Remove()
    rep = LocalReplica(assignment=assignment(desired="drain"), container=container(running=False))
    assert decide(rep, now=0, heal=HEAL) == Nothing()


def test_backoff_sequence_is_capped() -> None:
    assert [HEAL.backoff(i) for i in range(6)] == [0, 1, 2, 4, 4, 4]


# --- the reconciler with a fake engine ---------------------------------------------------
@sync
async def test_start_sets_env_labels_limits_and_reports_address() -> None:
    engine, prober, clock = FakeEngine(), FakeProber(), Clock()
    rec = make(engine, prober, clock)
    rec.set_assignments([assignment()])
    await cycle(rec)
    (spec,) = engine.specs
    assert spec.env == {"A": "1", "ORCHESTRIFY_REPLICA": "r1", "ORCHESTRIFY_SERVICE": "web"}
    assert spec.labels["orchestrify.node"] == "node1"
    assert spec.labels["orchestrify.replica"] == "r1"
    assert spec.labels["orchestrify.test"] == "1"
    assert (spec.memory_mb, spec.cpus) == (64, 0.5)
    (report,) = rec.take_reports(full=True)
    assert report.state == "starting" and report.address == "10.0.0.5:32001"
    rec.probe_due()
    await rec.settle()
    assert prober.urls == ["http://10.0.0.5:32001/health"]
    assert rec.replicas["r1"].state == "healthy"


@sync
async def test_dead_container_is_replaced_with_restarts_counted() -> None:
    engine, prober, clock = FakeEngine(), FakeProber(), Clock()
    rec = make(engine, prober, clock)
    rec.set_assignments([assignment()])
    await cycle(rec)
    rec.on_event(ContainerEvent(container_id="new1", replica="r1", action="die", exit_code=137))
    await cycle(rec)
    rep = rec.replicas["r1"]
    assert engine.removed == ["new1"]
    assert engine.graces == {"new1": REPLACE_GRACE_S}  # a dead one: the short grace
    assert rep.container is not None and rep.container.id == "new2"
    assert rep.restarts == 1
    assert rec.metrics.replacements.labels("web")._value.get() == 1
    # an event about the container we removed ourselves changes nothing
    rec.on_event(ContainerEvent(container_id="new1", replica="r1", action="destroy"))
    await cycle(rec)
    assert rep.container.id == "new2"


@sync
async def test_replaced_containers_are_kept_for_their_logs_then_pruned() -> None:
    engine, prober, clock = FakeEngine(), FakeProber(), Clock()
    rec = make(engine, prober, clock)
    assert rec.retired_to_remove([container("old")]) == []  # the controller not heard yet
    rec.set_assignments([assignment(), assignment("r2")])
    await cycle(rec)
    rec.on_event(ContainerEvent(container_id="new1", replica="r1", action="die", exit_code=1))
    await cycle(rec)
    assert [c.id for c in engine.retired] == ["new1"]  # kept, stopped, for its logs
    assert rec.replicas["r1"].container is not None
    assert rec.replicas["r1"].container.id == "new3"

    def retired(cid: str, restarts: int, replica: str = "r1") -> ContainerInfo:
        c = container(cid, replica, running=False)
        return dataclasses.replace(c, labels={**c.labels, "orchestrify.restarts": str(restarts)})

    kept = [retired("a", 0), retired("b", 2), retired("c", 1), retired("x", 0, "gone")]
    # The two newest of a replica the node runs stay; every one of a replica it does not.
    assert sorted(rec.retired_to_remove(kept)) == ["a", "x"]
    rec.set_assignments([assignment("r2")])
    assert sorted(rec.retired_to_remove(kept)) == ["a", "b", "c", "x"]


@sync
async def test_unhealthy_after_threshold_then_replaced_then_failed() -> None:
    engine, prober, clock = FakeEngine(), FakeProber(), Clock()
    rec = make(engine, prober, clock)
    rec.set_assignments([assignment()])
    await cycle(rec)
    rec.probe_due()
    await rec.settle()  # healthy
    prober.ok = False
    for _ in range(HEAL.unhealthy_threshold):
        clock.now += HEAL.fault_interval_s
        rec.probe_due()
        await rec.settle()
    rep = rec.replicas["r1"]
    assert rep.state == "unhealthy" and rep.error is not None and "HTTP 500" in rep.error
    await cycle(rec)
    assert rep.container is not None and rep.container.id == "new2" and rep.restarts == 1
    # keeps dying: replaced with backoff, then given up and reported failed
    for _ in range(5):
        assert rep.container is not None
        rep.container = dataclasses.replace(rep.container, running=False)
        clock.now += 10
        await cycle(rec)
    assert rep.state == "failed"
    assert "replacements within" in (rep.error or "")


@sync
async def test_pull_failure_becomes_the_error_and_other_replicas_still_start() -> None:
    engine, prober, clock = FakeEngine(), FakeProber(), Clock()
    engine.missing_images.add("nope")
    rec = make(engine, prober, clock)
    rec.set_assignments([assignment("r1", image="nope"), assignment("r2")])
    await cycle(rec)
    assert "cannot pull image nope" in (rec.replicas["r1"].error or "")
    assert rec.replicas["r2"].container is not None
    await cycle(rec)  # backing off: no second attempt yet
    assert len(rec.replicas["r1"].attempts) == 1
    for _ in range(HEAL.max_replacements):
        clock.now += 10
        await cycle(rec)
    assert rec.replicas["r1"].state == "failed"


@sync
async def test_adopts_labelled_containers_and_removes_unassigned_ones() -> None:
    engine, prober, clock = FakeEngine(), FakeProber(), Clock()
    engine.containers = {
        "c1": container("c1", "r1"),
        "dup": container("dup", "r1"),
        "old": container("old", "gone"),
    }
    rec = make(engine, prober, clock)
    rec.observe(await engine.list_containers("node1"))
    await cycle(rec)
    assert engine.removed == []  # nothing removed before the assignments are known
    rec.set_assignments([assignment("r1")])
    await cycle(rec)
    assert engine.specs == []  # adopted, not started again
    assert rec.replicas["r1"].container is not None
    assert sorted(engine.removed) == ["dup", "old"]


@sync
async def test_stop_removes_then_reports_stopped() -> None:
    engine, prober, clock = FakeEngine(), FakeProber(), Clock()
    rec = make(engine, prober, clock)
    rec.set_assignments([assignment()])
    await cycle(rec)
    rec.take_reports(full=True)
    rec.set_assignments([assignment(desired="stop")])
    await cycle(rec)
    assert engine.removed == ["new1"]
    assert engine.graces == {"new1": 10}  # SIGTERM, SIGKILL after the service's grace
    (report,) = rec.take_reports(full=False)
    assert report.state == "stopped"
    rec.set_assignments([])
    assert rec.replicas == {}


@sync
async def test_a_stopped_replica_gets_its_own_stop_grace() -> None:
    engine, prober, clock = FakeEngine(), FakeProber(), Clock()
    rec = make(engine, prober, clock)
    rec.set_assignments([assignment("r1", stop_grace_s=45), assignment("r2", stop_grace_s=0)])
    await cycle(rec)
    rec.set_assignments(
        [
            assignment("r1", desired="stop", stop_grace_s=45),
            assignment("r2", desired="stop", stop_grace_s=0),
        ]
    )
    await cycle(rec)
    assert engine.graces == {"new1": 45, "new2": 0}


@sync
async def test_one_failing_action_never_stops_the_loop() -> None:
    engine, prober, clock = FakeEngine(), FakeProber(), Clock()

    async def broken_run(spec: ContainerSpec) -> ContainerInfo:
        raise RuntimeError("engine bug")

    engine.run = broken_run  # type: ignore[method-assign]
    rec = make(engine, prober, clock)
    rec.set_assignments([assignment()])
    await cycle(rec)
    assert "engine bug" in (rec.replicas["r1"].error or "")
    assert not rec.replicas["r1"].busy


@sync
async def test_probes_run_at_a_fixed_rate_whatever_they_take() -> None:
    """'Every fault_interval' is measured from the start of one probe to the next,
    so a slow answer does not stretch the period (and the time to detect a failure)."""
    engine, clock = FakeEngine(), Clock()

    class SlowProber(FakeProber):
        async def probe(self, url: str) -> ProbeResult:
            clock.now += 0.3  # the answer takes 0.3 s
            return await super().probe(url)

    rec = make(engine, SlowProber(), clock)
    rec.set_assignments([assignment()])
    await cycle(rec)
    rec.probe_due()
    await rec.settle()  # healthy: the startup interval no longer applies
    clock.now = started = rec.replicas["r1"].next_probe_at
    rec.probe_due()
    await rec.settle()
    assert rec.replicas["r1"].next_probe_at == started + HEAL.fault_interval_s


class SlowEngine(FakeEngine):
    """``run`` waits for ``release`` (a container start that takes a while)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def run(self, spec: ContainerSpec) -> ContainerInfo:
        await self.release.wait()
        return await super().run(spec)


@sync
async def test_aclose_lets_a_start_in_flight_finish() -> None:
    engine = SlowEngine()
    rec = make(engine, FakeProber(), Clock())
    rec.set_assignments([assignment()])
    rec.step()
    await asyncio.sleep(0)
    asyncio.get_running_loop().call_later(0.05, engine.release.set)
    await rec.aclose(timeout_s=10)
    assert [c.replica for c in engine.containers.values()] == ["r1"]
    assert rec.replicas["r1"].container is not None  # the agent knows what it started
    assert not rec._tasks


@sync
async def test_aclose_cancels_what_does_not_finish_in_time() -> None:
    engine = SlowEngine()  # never released
    rec = make(engine, FakeProber(), Clock())
    rec.set_assignments([assignment()])
    rec.step()
    await asyncio.sleep(0)
    assert rec._tasks
    await rec.aclose(timeout_s=0.05)
    assert not rec._tasks and not engine.containers
