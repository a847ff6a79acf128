"""The agent while its controller is away: replicas it gave up on are restarted in place
with a crash-loop backoff (nobody else can move them), and nothing changes while the
controller answers."""

from __future__ import annotations

from orchestrify.agent.reconcile import LocalReplica, Nothing, Start, WaitUntil, decide
from orchestrify.agent.settings import HealSettings
from orchestrify.models import ReplicaState
from tests.agent.test_reconcile import (
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


def failed(at: float, *, crashloops: int = 0) -> LocalReplica:
    return LocalReplica(
        assignment=assignment(),
        container=container(running=False),
        state=ReplicaState.FAILED,
        error="5 replacements within 60s",
        failed_at=at,
        crashloops=crashloops,
    )


def test_a_failed_replica_waits_for_the_controller_while_it_answers() -> None:
    assert decide(failed(100), now=10_000, heal=HEAL) == Nothing()


def test_a_failed_replica_is_restarted_with_a_growing_capped_backoff_while_away() -> None:
    heal = HealSettings(crashloop_backoff_s=(10, 20, 40))
    rep = failed(100)
    assert decide(rep, now=105, heal=heal, controller_away=True) == WaitUntil(110)
    action = decide(rep, now=110, heal=heal, controller_away=True)
    assert isinstance(action, Start) and action.replacement
    assert "controller is unreachable" in action.reason
    assert decide(failed(100, crashloops=1), now=115, heal=heal, controller_away=True) == (
        WaitUntil(120)
    )
    assert decide(failed(100, crashloops=2), now=130, heal=heal, controller_away=True) == (
        WaitUntil(140)
    )
    # the cap: however many restarts, never more than the last delay apart
    assert decide(failed(100, crashloops=9), now=130, heal=heal, controller_away=True) == (
        WaitUntil(140)
    )


def test_the_default_crashloop_backoff_is_the_kubelets() -> None:
    heal = HealSettings()
    assert [heal.crashloop_backoff(i) for i in range(8)] == [10, 20, 40, 80, 160, 300, 300, 300]


@sync
async def test_the_reconciler_restarts_a_failed_replica_only_while_the_controller_is_away() -> None:
    engine, prober, clock = FakeEngine(), FakeProber(), Clock()
    rec = make(engine, prober, clock)
    rec.set_assignments([assignment()])
    await cycle(rec)
    rep = rec.replicas["r1"]
    rep.state = ReplicaState.FAILED
    rep.failed_at = clock.now
    clock.now += 3600
    await cycle(rec)
    assert len(engine.specs) == 1, "with the controller there, a failed replica waits for it"
    rec.controller_away = True
    await cycle(rec)
    assert len(engine.specs) == 2, "with the controller away, the agent restarts it itself"
    assert rep.state == ReplicaState.STARTING and rep.crashloops == 1
    assert rep.container is not None and rep.container.running
