from __future__ import annotations

from dataclasses import replace

from orchestrify.alerting.policy import (
    AlertFacts,
    Inputs,
    PolicyState,
    decide,
    decide_settle,
    episode_over,
)
from orchestrify.alerting.rules import AlertRule, parse_rules
from orchestrify.models import DesiredState, NodeState, ReplicaState
from tests.alerting.fleet import T0, at, nodes, replica, service

RULES = parse_rules(
    {
        "rules": [
            {"name": "lat", "matchers": ['alertname="ServiceLatencyHigh"'], "action": "scale_out"},
            {"name": "big", "matchers": ['alertname="Burst"'], "action": "scale_out", "step": 5},
            {
                "name": "low",
                "matchers": ['alertname="ServiceRequestRateLow"'],
                "action": "scale_in",
            },
            {
                "name": "off",
                "matchers": ['alertname="Off"'],
                "action": "scale_out",
                "enabled": False,
            },
            {"name": "rep", "matchers": ['alertname="ReplicaUnhealthy"'], "action": "replace"},
            {
                "name": "down",
                "matchers": ['alertname="NodeDown"'],
                "action": "reschedule",
                "scope": "all",
            },
            {"name": "mine", "matchers": ['alertname="NodeSlow"'], "action": "reschedule"},
            {"name": "log", "matchers": ['alertname="Info"'], "action": "notify_only"},
        ]
    }
)


def alert(name: str, *, status: str = "firing", starts: float = 0, **labels: str) -> AlertFacts:
    return AlertFacts(
        alertname=name,
        status=status,  # type: ignore[arg-type]
        labels={"alertname": name, **labels},
        starts_at=at(starts),
    )


def rule(labels: AlertFacts) -> AlertRule | None:
    return RULES.match(labels.labels)


def run(a: AlertFacts, inputs: Inputs, now: float = 60):
    return decide(a, rule(a), inputs, now=at(now))


FLEET = nodes("n1", "n2", "n3")
REPS = [replica("web-a", "n1"), replica("web-b", "n2")]


def test_scale_out_one_step_away_from_the_slow_replicas_node() -> None:
    d = run(
        alert("ServiceLatencyHigh", service="web", replica="web-a", node="n1"),
        Inputs(service=service(), replicas=REPS, nodes=FLEET),
    )
    assert d is not None and d.outcome == "ok" and d.acts
    assert (d.replicas_from, d.replicas_to) == (2, 3)
    assert d.avoid_nodes == frozenset({"id-n1"})
    assert d.new_state == PolicyState(last_action_at=at(60), baseline=2)
    assert "away from node n1" in d.reason


def test_avoid_falls_back_to_the_node_label_by_name_or_id() -> None:
    inputs = Inputs(service=service(), replicas=REPS, nodes=FLEET)
    by_name = run(alert("ServiceLatencyHigh", service="web", node="n2"), inputs)
    by_id = run(alert("ServiceLatencyHigh", service="web", node="id-n3"), inputs)
    assert by_name and by_name.avoid_nodes == frozenset({"id-n2"})
    assert by_id and by_id.avoid_nodes == frozenset({"id-n3"})


def test_only_node_is_the_slow_one_still_scales_there() -> None:
    d = run(
        alert("ServiceLatencyHigh", service="web", replica="web-a"),
        Inputs(service=service(), replicas=REPS[:1], nodes=nodes("n1")),
    )
    assert d and d.outcome == "ok" and "same node" in d.reason


def test_cooldown_refuses_then_allows() -> None:
    state = PolicyState(last_action_at=at(50))
    inputs = Inputs(service=service(cooldown_s=30), replicas=REPS, nodes=FLEET, state=state)
    a = alert("ServiceLatencyHigh", service="web")
    refused = run(a, inputs, now=60)
    assert refused and refused.outcome == "refused" and refused.refusal == "cooldown"
    assert "20s left" in refused.reason
    assert run(a, inputs, now=80).outcome == "ok"


def test_at_max_and_step_capped_by_max_and_policy() -> None:
    a = alert("ServiceLatencyHigh", service="web")
    at_max = run(a, Inputs(service=service(replicas=5), nodes=FLEET))
    assert at_max and at_max.refusal == "at_max"
    burst = alert("Burst", service="web")
    capped_by_policy = run(burst, Inputs(service=service(max_step=2), nodes=FLEET))
    assert capped_by_policy and capped_by_policy.replicas_to == 4
    capped_by_max = run(burst, Inputs(service=service(replicas=4, max_step=10), nodes=FLEET))
    assert capped_by_max and capped_by_max.replicas_to == 5


def test_scale_up_stabilization_waits_for_the_alert_to_persist() -> None:
    inputs = Inputs(service=service(scale_up_stabilization_s=120), nodes=FLEET)
    young = run(alert("ServiceLatencyHigh", service="web", starts=0), inputs, now=60)
    assert young and young.refusal == "stabilization"
    old = run(alert("ServiceLatencyHigh", service="web", starts=0), inputs, now=121)
    assert old and old.outcome == "ok"


def test_no_eligible_node() -> None:
    a = alert("ServiceLatencyHigh", service="web")
    none_ready = run(a, Inputs(service=service(), nodes=nodes("n1", state=NodeState.NOT_READY)))
    assert none_ready and none_ready.refusal == "no_eligible_node"
    svc = service().model_copy(update={"max_per_node": 1})
    full = run(a, Inputs(service=svc, replicas=REPS, nodes=nodes("n1", "n2")))
    assert full and full.refusal == "no_eligible_node"


def test_unknown_service_disabled_rule_no_rule() -> None:
    unknown = run(alert("ServiceLatencyHigh", service="nope"), Inputs(service=None, nodes=FLEET))
    assert unknown and unknown.refusal == "unknown_service" and unknown.service == "nope"
    off = run(alert("Off", service="web"), Inputs(service=service(), nodes=FLEET))
    assert off and off.refusal == "rule_disabled"
    none = run(alert("Whatever", service="web"), Inputs(service=service(), nodes=FLEET))
    assert none and none.refusal == "no_rule"
    assert run(alert("Whatever", status="resolved"), Inputs(service=None)) is None


def test_dry_run_controller_wide_or_per_service() -> None:
    a = alert("ServiceLatencyHigh", service="web")
    for inputs in (
        Inputs(service=service(), nodes=FLEET, dry_run=True),
        Inputs(service=service(dry_run=True), nodes=FLEET),
    ):
        d = run(a, inputs)
        assert d and d.outcome == "refused" and d.refusal == "dry_run" and d.dry_run
        assert not d.acts or d.dry_run
        assert "would scale web from 2 to 3" in d.reason
        # The cooldown runs as if it had acted; the baseline does not move.
        assert d.new_state == PolicyState(last_action_at=at(60))


def test_scale_in_alert_waits_out_the_scale_down_window() -> None:
    low = alert("ServiceRequestRateLow", service="web", starts=0)
    svc = service(replicas=3, scale_down_stabilization_s=300, cooldown_s=30)
    young = run(low, Inputs(service=svc, nodes=FLEET), now=200)
    assert young and young.refusal == "stabilization"
    recent_out = Inputs(
        service=svc, nodes=FLEET, state=PolicyState(last_scale_out_firing_at=at(250))
    )
    blocked = run(low, recent_out, now=400)
    assert blocked and blocked.refusal == "stabilization" and "150s left" in blocked.reason
    ok = run(low, Inputs(service=svc, nodes=FLEET), now=300)
    assert ok and ok.outcome == "ok" and ok.replicas_to == 2
    at_min = run(low, Inputs(service=service(replicas=1), nodes=FLEET), now=400)
    assert at_min and at_min.refusal == "at_min"
    assert run(replace(low, status="resolved"), Inputs(service=svc), now=400) is None


def test_resolution_starts_the_window_then_steps_back_to_the_baseline() -> None:
    svc = service(replicas=4, min_replicas=1, cooldown_s=30, scale_down_stabilization_s=300)
    state = PolicyState(last_action_at=at(0), last_scale_out_firing_at=at(100), baseline=2)
    resolved = run(
        alert("ServiceLatencyHigh", status="resolved", service="web"),
        Inputs(service=svc, state=state),
        now=100,
    )
    assert resolved and resolved.refusal == "stabilization" and "toward 2" in resolved.reason
    inputs = Inputs(service=svc, nodes=FLEET, state=state)
    assert decide_settle(inputs, scale_out_firing=True, now=at(1000)) is None
    early = decide_settle(inputs, scale_out_firing=False, now=at(399))
    assert early and early.refusal == "stabilization"
    first = decide_settle(inputs, scale_out_firing=False, now=at(400))
    assert first and first.outcome == "ok" and (first.replicas_from, first.replicas_to) == (4, 3)
    svc3 = svc.model_copy(update={"replicas": 3})
    after = Inputs(service=svc3, nodes=FLEET, state=first.new_state)  # type: ignore[arg-type]
    cool = decide_settle(after, scale_out_firing=False, now=at(420))
    assert cool and cool.refusal == "cooldown"
    second = decide_settle(after, scale_out_firing=False, now=at(430))
    assert second and second.replicas_to == 2
    svc2 = svc.model_copy(update={"replicas": 2})
    assert episode_over(svc2, second.new_state)  # type: ignore[arg-type]
    assert decide_settle(replace(after, service=svc2), scale_out_firing=False, now=at(500)) is None


def test_baseline_is_clamped_to_the_bounds() -> None:
    svc = service(replicas=3, min_replicas=3, max_replicas=5, scale_down_stabilization_s=0)
    state = PolicyState(baseline=1)
    assert episode_over(svc, state)


def test_replace_drains_the_named_replica_once() -> None:
    d = run(
        alert("ReplicaUnhealthy", service="web", replica="web-b", node="n2"),
        Inputs(service=service(), replicas=REPS, nodes=FLEET),
    )
    assert d and d.outcome == "ok" and d.drain == ("web-b",) and d.avoid_nodes == {"id-n2"}
    drained = [REPS[0], replica("web-b", "n2", desired=DesiredState.DRAIN)]
    again = run(
        alert("ReplicaUnhealthy", service="web", replica="web-b"),
        Inputs(service=service(), replicas=drained, nodes=FLEET),
    )
    assert again and again.refusal == "already_replaced"
    gone = run(alert("ReplicaUnhealthy", replica="web-z"), Inputs(service=None, replicas=REPS))
    assert gone and gone.refusal == "unknown_replica"


def test_reschedule_a_nodes_replicas_all_or_of_the_service() -> None:
    reps = [*REPS, replica("api-a", "n1", svc="api")]
    everything = run(alert("NodeDown", node="n1"), Inputs(service=None, replicas=reps, nodes=FLEET))
    assert everything and set(everything.drain) == {"web-a", "api-a"}
    mine = run(
        alert("NodeSlow", node="n1", service="api"),
        Inputs(service=None, replicas=reps, nodes=FLEET),
    )
    assert mine and mine.drain == ("api-a",)
    empty = run(alert("NodeDown", node="n3"), Inputs(service=None, replicas=reps, nodes=FLEET))
    assert empty and empty.refusal == "nothing_to_do"
    dry = run(
        alert("NodeDown", node="n1"), Inputs(service=None, replicas=reps, nodes=FLEET, dry_run=True)
    )
    assert dry and dry.refusal == "dry_run"


def test_reschedule_refuses_an_unreachable_node() -> None:
    """NodeDown fires for an unreachable node too (it is not up), but mass silence means
    the controller or the network is suspected: the alert must not move its replicas."""
    fleet = [*nodes("n1", state=NodeState.UNREACHABLE), *nodes("n2", "n3")]
    decision = run(alert("NodeDown", node="n1"), Inputs(service=None, replicas=REPS, nodes=fleet))
    assert decision and decision.refusal == "unreachable" and not decision.drain
    assert "controller or network problem" in decision.reason


def test_notify_only() -> None:
    d = run(alert("Info", service="web"), Inputs(service=service()))
    assert d and d.outcome == "ok" and not d.acts


def test_decisions_are_pure() -> None:
    inputs = Inputs(service=service(), replicas=REPS, nodes=FLEET)
    a = alert("ServiceLatencyHigh", service="web", replica="web-a")
    assert run(a, inputs) == run(a, inputs)
    assert T0.tzinfo is not None


def test_scale_out_waits_while_replicas_already_placed_are_still_starting() -> None:
    # desired 4: two healthy, the last step's two replicas placed and not yet healthy.
    reps = [
        *REPS,
        replica("web-c", "n3", state=ReplicaState.ASSIGNED),
        replica("web-d", "n1", state=ReplicaState.STARTING),
    ]
    a = alert("ServiceLatencyHigh", service="web", replica="web-a")
    d = run(a, Inputs(service=service(replicas=4, max_replicas=8), replicas=reps, nodes=FLEET))
    assert d and d.outcome == "refused" and d.refusal == "starting" and not d.acts
    assert "2 replica(s) of web still starting (desired 4, healthy 2)" in d.reason
    # Once they are up, the step counts from the desired count, not from the healthy one
    # (an unhealthy replica is being healed: it is no reason to add on top of 4 either).
    up = [*REPS, replica("web-c", "n3"), replica("web-d", "n1", state=ReplicaState.UNHEALTHY)]
    ok = run(a, Inputs(service=service(replicas=4, max_replicas=8), replicas=up, nodes=FLEET))
    assert ok and ok.outcome == "ok" and (ok.replicas_from, ok.replicas_to) == (4, 5)


def test_a_replica_assigned_to_a_node_that_is_not_ready_is_not_starting() -> None:
    fleet = [*nodes("n1", "n2"), *nodes("n3", state=NodeState.NOT_READY)]
    reps = [*REPS, replica("web-c", "n3", state=ReplicaState.ASSIGNED)]
    a = alert("ServiceLatencyHigh", service="web")
    d = run(a, Inputs(service=service(replicas=3), replicas=reps, nodes=fleet))
    assert d and d.outcome == "ok" and d.replicas_to == 4


MANUAL = PolicyState(manual_scale_at=at(100), manual_replicas=3)


def test_alerts_that_began_before_a_manual_scale_do_not_act_on_scale() -> None:
    svc = service(replicas=3, scale_down_stabilization_s=300, cooldown_s=0)
    inputs = Inputs(service=svc, replicas=REPS, nodes=FLEET, state=MANUAL)
    low = run(alert("ServiceRequestRateLow", service="web", starts=0), inputs, now=400)
    assert low and low.outcome == "refused" and low.refusal == "manual_scale"
    assert not low.acts and low.new_state is None
    assert "before web was scaled by hand to 3 at 2026-11-21 22:01:40Z" in low.reason
    assert "ServiceRequestRateLow began at 2026-11-21 22:00:00Z" in low.reason
    high = run(alert("ServiceLatencyHigh", service="web", starts=99), inputs, now=400)
    assert high and high.refusal == "manual_scale" and high.action == "scale_out"
    # A new episode is evidence about the service as its owner set it; the scale-down
    # window then runs from that episode's start, so from the manual scale at the earliest.
    new_low = alert("ServiceRequestRateLow", service="web", starts=100)
    young = run(new_low, inputs, now=399)
    assert young and young.refusal == "stabilization"
    ok = run(new_low, inputs, now=400)
    assert ok and ok.outcome == "ok" and ok.replicas_to == 2
    assert ok.new_state and ok.new_state.manual_scale_at == at(100)  # kept as it was
    new_high = run(alert("ServiceLatencyHigh", service="web", starts=101), inputs, now=400)
    assert new_high and new_high.outcome == "ok" and new_high.replicas_to == 4


def test_the_resolution_of_an_episode_from_before_a_manual_scale_starts_no_scale_in() -> None:
    svc = service(replicas=4, scale_down_stabilization_s=300)
    state = replace(MANUAL, baseline=4, last_action_at=at(50))
    old = run(
        alert("ServiceLatencyHigh", status="resolved", service="web", starts=10),
        Inputs(service=svc, state=state),
        now=200,
    )
    assert old and old.refusal == "manual_scale" and old.new_state is None
    assert "resolved, but began at" in old.reason
    new = run(
        alert("ServiceLatencyHigh", status="resolved", service="web", starts=150),
        Inputs(service=svc.model_copy(update={"replicas": 5}), state=state),
        now=200,
    )
    assert new and new.refusal == "stabilization" and "toward 4" in new.reason
