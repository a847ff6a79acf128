"""Unit tests of what the agent may remove (only on its cluster's controller's order),
of orphans, and of the provisional assignments after a restart; fakes from
test_reconcile (engine, prober, clock)."""

from __future__ import annotations

import dataclasses

from orchestrify.agent.reconcile import LocalReplica, Nothing, Start, decide
from orchestrify.models import Assignment
from tests.agent.test_reconcile import (
    CLUSTER,
    HEAL,
    Clock,
    FakeEngine,
    FakeProber,
    assignment,
    container,
    cycle,
    make,
    sync,
)


def hashed(replica: str = "r1", *, spec_hash: str = "h1", desired: str = "run") -> Assignment:
    return assignment(replica, desired=desired).model_copy(update={"spec_hash": spec_hash})


# --- which containers may go -------------------------------------------------------------
@sync
async def test_a_stranger_controller_makes_every_container_an_orphan_and_removes_none() -> None:
    engine, clock = FakeEngine(), Clock()
    engine.containers = {
        "c1": container("c1", "r1"),
        "c2": container("c2", "r2"),
        "dup": container("dup", "r1"),
    }
    rec = make(engine, FakeProber(), clock)
    rec.observe(await engine.list_containers("node1"))
    rec.set_assignments([assignment("r1"), assignment("r2")], current=False)  # saved ones
    await cycle(rec)
    saved: list[set[str]] = []
    rec.on_orphans = saved.append

    # A controller with a new store: another cluster id, the node id unknown to it.
    rec.orphan_everything("the controller's cluster id is cluster-b")
    rec.cluster_id = "cluster-b"
    rec.set_assignments([], current=True)  # its (empty) answer
    for _ in range(3):
        clock.now += 30
        await cycle(rec)

    assert engine.removed == [] and engine.specs == []
    assert set(rec.orphans) == {"c1", "c2", "dup"}
    assert saved[-1] == {"c1", "c2", "dup"}  # kept on disk for a restart
    orphans = {o.container_id: o for o in rec.take_orphans(full=False) or []}
    assert set(orphans) == {"c1", "c2", "dup"}
    c1 = orphans["c1"]
    assert (c1.replica, c1.service, c1.address, c1.image) == ("r1", "web", "10.0.0.5:32000", "img")
    assert c1.cluster_id == CLUSTER
    assert rec.take_orphans(full=False) is None  # unchanged since: not sent again


@sync
async def test_unassigned_containers_of_another_cluster_or_an_older_build_are_orphans() -> None:
    engine = FakeEngine()
    engine.containers = {
        "ours": container("ours", "gone"),
        "theirs": container("theirs", "x1", cluster="cluster-b"),
        "old": container("old", "x2", cluster=None),
        "assigned-old": container("assigned-old", "r1", cluster=None),
    }
    rec = make(engine, FakeProber(), Clock())
    rec.observe(await engine.list_containers("node1"))
    rec.set_assignments([assignment("r1")])
    await cycle(rec)
    assert engine.removed == ["ours"]  # labelled with this cluster and unassigned
    assert set(rec.orphans) == {"theirs", "old"}
    rep = rec.replicas["r1"]
    assert rep.container is not None and rep.container.id == "assigned-old"  # adopted
    assert engine.specs == []


@sync
async def test_a_replica_this_controller_removed_goes_even_if_it_was_an_adopted_orphan() -> None:
    engine = FakeEngine()
    engine.containers = {"c1": container("c1", "r1", cluster="cluster-old")}
    rec = make(engine, FakeProber(), Clock())
    rec.observe(await engine.list_containers("node1"))
    await cycle(rec)
    rec.set_assignments([])
    await cycle(rec)
    assert set(rec.orphans) == {"c1"} and engine.removed == []
    rec.set_assignments([assignment("r1")])  # adopted by the controller: a replica again
    await cycle(rec)
    assert rec.replicas["r1"].container is not None and rec.orphans == {}
    assert rec.take_orphans(full=False) == []
    rec.set_assignments([])  # then removed by it (say its node was declared not ready)
    await cycle(rec)
    assert engine.removed == ["c1"]


@sync
async def test_a_known_replica_told_to_stop_is_removed() -> None:
    engine = FakeEngine()
    engine.containers = {"c1": container("c1", "r1", cluster="cluster-old")}
    rec = make(engine, FakeProber(), Clock())
    rec.observe(await engine.list_containers("node1"))
    rec.set_assignments([assignment("r1", desired="stop")])
    await cycle(rec)
    assert engine.removed == ["c1"] and rec.orphans == {}


@sync
async def test_prune_removes_only_listed_orphans() -> None:
    engine = FakeEngine()
    engine.containers = {
        "o1": container("o1", "x1", cluster="cluster-b"),
        "o2": container("o2", "x2", cluster="cluster-b"),
    }
    rec = make(engine, FakeProber(), Clock())
    rec.set_assignments([assignment("r1")])
    rec.observe(await engine.list_containers("node1"))
    await cycle(rec)
    running = rec.replicas["r1"].container
    assert running is not None and set(rec.orphans) == {"o1", "o2"}
    rec.take_orphans(full=False)
    # A prune list naming an orphan and an assigned replica's container: only the orphan.
    rec.set_assignments([assignment("r1")], prune=["o1", running.id])
    await cycle(rec)
    assert engine.removed == ["o1"]
    assert [o.container_id for o in rec.take_orphans(full=False) or []] == ["o2"]
    assert rec.replicas["r1"].container is running


@sync
async def test_orphans_saved_before_a_restart_stay_orphans() -> None:
    """A node id the controller did not know, same cluster: the containers carry this
    cluster's label, so only the saved orphan list keeps them from removal."""
    engine = FakeEngine()
    engine.containers = {"c1": container("c1", "r1"), "gone": container("gone", "r9")}
    rec = make(engine, FakeProber(), Clock())
    rec.remember_orphans({"c1", "vanished"})
    saved: list[set[str]] = []
    rec.on_orphans = saved.append
    rec.observe(await engine.list_containers("node1"))
    rec.set_assignments([assignment("r1")], current=False)  # saved before the orphaning
    await cycle(rec)
    assert rec.replicas["r1"].container is None  # only the controller adopts an orphan
    rec.set_assignments([])
    await cycle(rec)
    assert engine.removed == ["gone"]
    assert set(rec.orphans) == {"c1"}
    assert saved[-1] == {"c1"}  # the one no longer there is forgotten


# --- spec changes: the hash label decides -----------------------------------------------
def test_spec_hash_label_decides_a_replacement() -> None:
    rep = LocalReplica(assignment=hashed(spec_hash="h2"), container=container(spec="h1"))
    assert isinstance(decide(rep, now=0, heal=HEAL), Start)
    rep.container = container(spec="h2")
    assert decide(rep, now=0, heal=HEAL) == Nothing()
    # Another generation label with the same hash (an adopted orphan): kept.
    rep.container = dataclasses.replace(
        container(spec="h2"), labels={"orchestrify.generation": "7", "orchestrify.spec": "h2"}
    )
    assert decide(rep, now=0, heal=HEAL) == Nothing()
    # No hash label (an older build's container): kept, whatever its generation.
    rep.container = dataclasses.replace(container(), labels={"orchestrify.generation": "7"})
    assert decide(rep, now=0, heal=HEAL) == Nothing()
    # A controller without hashes: the generation label decides, as before.
    rep = LocalReplica(assignment=assignment(), container=rep.container)
    assert isinstance(decide(rep, now=0, heal=HEAL), Start)


@sync
async def test_started_containers_carry_the_cluster_and_spec_labels() -> None:
    engine = FakeEngine()
    rec = make(engine, FakeProber(), Clock())
    rec.set_assignments([hashed(spec_hash="abc")])
    await cycle(rec)
    (spec,) = engine.specs
    assert spec.labels["orchestrify.cluster"] == CLUSTER
    assert spec.labels["orchestrify.spec"] == "abc"


# --- an agent restart never doubles ---------------------------------------------------------
@sync
async def test_after_a_restart_saved_assignments_start_nothing_until_the_controller_answers() -> (
    None
):
    engine, clock = FakeEngine(), Clock()
    engine.containers = {
        "c1": container("c1", "r1"),
        "dead": container("dead", "r3", running=False),
    }
    rec = make(engine, FakeProber(), clock)
    rec.observe(await engine.list_containers("node1"))
    # Remembered from before the restart: r1 runs, r2 has no container, r3's died.
    rec.set_assignments([assignment("r1"), assignment("r2"), assignment("r3")], current=False)
    for _ in range(3):
        clock.now += 30
        await cycle(rec)
    assert engine.specs == [] and engine.removed == []  # nothing started, nothing removed
    assert rec.replicas["r1"].container is not None  # adopted...
    rec.probe_due()
    await rec.settle()
    assert rec.replicas["r1"].state == "healthy"  # ...and probed
    assert [r.id for r in rec.take_reports(full=True)] == ["r1", "r3"]  # r2: not known yet

    # The controller's current answer: r2 and r3 were moved elsewhere meanwhile.
    rec.set_assignments([assignment("r1")])
    await cycle(rec)
    assert engine.specs == []  # never started here
    assert engine.removed == ["dead"]  # r3's container: this cluster's, no longer assigned
    assert rec.replicas["r1"].container is not None and "r2" not in rec.replicas


@sync
async def test_after_the_answer_a_confirmed_replica_is_started_as_usual() -> None:
    engine = FakeEngine()
    rec = make(engine, FakeProber(), Clock())
    rec.set_assignments([assignment("r2")], current=False)
    await cycle(rec)
    assert engine.specs == []
    rec.set_assignments([assignment("r2")])
    await cycle(rec)
    assert [s.labels["orchestrify.replica"] for s in engine.specs] == ["r2"]
