"""The scaling policy: pure functions from (alert, rule, service, replicas, nodes, policy
state, now) to a ``Decision``. No I/O, no clock: unit tests and the bench call them as is.

Semantics (HPA-like, per service, bounds and knobs from ``ServiceSpec``/``ScalingPolicy``):

* scale_out (a firing alert matched by a scale_out rule): refused while the alert has
  fired for less than ``scale_up_stabilization_s`` (default 0), during ``cooldown_s`` after
  the service's last scaling action, at ``max_replicas``, while replicas already placed
  are still starting (capacity on its way: adding more on top of it overshoots), or with
  no Ready node able to take a replica. Otherwise +min(step, max_step, max - current),
  counted from the desired count (which includes the starting replicas), never from the
  healthy count. The new replicas avoid the node of the replica (or node) the alert
  names, as a preference. The first scale-out of an episode remembers the count before
  it: the *baseline*.
* An alert that stays firing is re-evaluated (on every tick of the controller's timer),
  so it keeps adding one step per cooldown (once the last step's replicas are healthy)
  until max.
* A manual scale (``PolicyState.manual_scale_at``): an alert whose episode began before
  it describes the service as it was before the owner's change, so it never acts on
  scale (scale_out, scale_in, nor resolution-driven scale-in); a new episode does. The
  glue moves the baseline to the count set by hand.
* Resolution-driven scale-in: once no scale-out alert of the service has fired for
  ``scale_down_stabilization_s`` (default 300), the service steps down, one step per
  cooldown, to its baseline clamped to min..max: autoscaling gives back what it added,
  and never goes below what the user had deployed.
* scale_in (a firing scale_in rule, ServiceRequestRateLow): a positive signal that the
  load fits in fewer replicas, so it steps toward ``min_replicas``, but only once the
  low-load alert has fired for ``scale_down_stabilization_s`` and no scale-out alert has
  fired within that window; one step per cooldown.
* replace / reschedule act once per alert (the replicas they drain are no longer
  ``run``, so a second look finds nothing to do); no cooldown: healing is not scaling.
* dry run (controller-wide or ``policy.dry_run``): the decision is computed and recorded
  as refused with reason "dry run: would ...", and counts as an action for the cooldown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from orchestrify.alerting.rules import Action, AlertRule, action_unavailable
from orchestrify.models import DesiredState, Node, NodeState, Replica, ReplicaState, Service

Outcome = Literal["ok", "refused"]


@dataclass(frozen=True)
class AlertFacts:
    """What the policy needs of one alert."""

    alertname: str
    status: Literal["firing", "resolved"]
    labels: Mapping[str, str]
    starts_at: datetime
    instance: str = ""


@dataclass(frozen=True)
class PolicyState:
    """What the policy remembers of one service between decisions."""

    last_action_at: datetime | None = None
    # When a scale-out alert of the service was last known firing (``now`` while one is).
    last_scale_out_firing_at: datetime | None = None
    baseline: int | None = None
    # The last time the owner set the desired count by hand (PATCH replicas), and to what.
    # Alerts whose episode began before it do not act on scale; the store writes these.
    manual_scale_at: datetime | None = None
    manual_replicas: int | None = None


@dataclass(frozen=True)
class Decision:
    action: str
    outcome: Outcome
    reason: str
    refusal: str | None = None  # a short code: cooldown, at_max, dry_run...
    service: str | None = None
    rule: str | None = None
    replicas_from: int | None = None
    replicas_to: int | None = None
    avoid_nodes: frozenset[str] = frozenset()
    drain: tuple[str, ...] = ()
    # run_playbook: what to submit as an Ansible job.
    playbook: str | None = None
    limit: str | None = None
    extra_vars: Mapping[str, Any] = field(default_factory=dict)
    dry_run: bool = False
    # The policy state to store after this decision; None keeps it as it is.
    new_state: PolicyState | None = None
    # The alert it was decided on (None: the timer's settling, no alert): recorded with
    # the decision, so "why did it scale" names the alert episode.
    alert: AlertFacts | None = None

    @property
    def acts(self) -> bool:
        return self.outcome == "ok" and (
            self.replicas_to is not None or bool(self.drain) or self.playbook is not None
        )


@dataclass(frozen=True)
class Inputs:
    """Everything a decision reads; the glue builds it from the store."""

    service: Service | None
    replicas: Sequence[Replica] = ()
    nodes: Sequence[Node] = ()
    state: PolicyState = field(default_factory=PolicyState)
    dry_run: bool = False  # the controller-wide flag; the service's policy.dry_run adds to it


def _refuse(action: str, refusal: str, reason: str, **kw: object) -> Decision:
    return Decision(action=action, outcome="refused", refusal=refusal, reason=reason, **kw)  # type: ignore[arg-type]


def _secs(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds >= 1 else f"{seconds:.1f}s"


def _when(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def before_manual_scale(starts_at: datetime, state: PolicyState) -> bool:
    """True when an alert episode that began at ``starts_at`` predates the owner's last
    manual scale: it describes the service from before that change (a notice Alertmanager
    delivered late, an alert Prometheus has already cleared), so it must not act on scale.
    Prometheus keeps ``startsAt`` for as long as the alert stays firing; only a new
    episode (a later ``startsAt``) is evidence about the service as its owner set it."""
    return state.manual_scale_at is not None and starts_at < state.manual_scale_at


def _manual_refusal(
    action: str, alert: AlertFacts, svc: Service, state: PolicyState, rule: AlertRule
) -> Decision:
    assert state.manual_scale_at is not None
    to = f" to {state.manual_replicas}" if state.manual_replicas is not None else ""
    return _refuse(
        action,
        "manual_scale",
        f"{alert.alertname} {'began' if alert.status == 'firing' else 'resolved, but began'} "
        f"at {_when(alert.starts_at)}, before {svc.name} was scaled by hand{to} at "
        f"{_when(state.manual_scale_at)}: it describes the service from before that change, "
        "so it does not act on scale (a new episode of the alert will)",
        service=svc.name,
        rule=rule.name,
    )


def _starting(svc: Service, inputs: Inputs) -> tuple[int, int]:
    """(replicas of ``svc`` placed on a Ready node but not yet healthy, healthy ones).

    A replica on a node that is not Ready is not counted as starting: it is not coming
    up there, and the node's replicas are rescheduled (or wait for the node) elsewhere.
    """
    ready = {n.id for n in inputs.nodes if n.state == NodeState.READY}
    starting = healthy = 0
    for r in inputs.replicas:
        if r.service != svc.name or r.desired != DesiredState.RUN:
            continue
        if r.state == ReplicaState.HEALTHY:
            healthy += 1
        elif r.state in (ReplicaState.ASSIGNED, ReplicaState.STARTING) and r.node in ready:
            starting += 1
    return starting, healthy


def _cooldown_left(policy_cooldown: float, state: PolicyState, now: datetime) -> float:
    if state.last_action_at is None:
        return 0.0
    return policy_cooldown - (now - state.last_action_at).total_seconds()


def _dry(decision: Decision, inputs: Inputs, now: datetime) -> Decision:
    """Turn an acting decision into a recorded-only one when dry run is on."""
    svc = inputs.service
    per_service = svc is not None and svc.policy.dry_run
    if not decision.acts or not (inputs.dry_run or per_service):
        return decision
    why = (
        "controller --dry-run" if inputs.dry_run or svc is None else f"policy.dry_run of {svc.name}"
    )
    return replace(
        decision,
        outcome="refused",
        refusal="dry_run",
        reason=f"dry run ({why}): would {decision.reason}",
        dry_run=True,
        # A simulated action still starts the cooldown, so a dry run shows the cadence
        # the real thing would have; the baseline only follows real scaling.
        new_state=replace(inputs.state, last_action_at=now),
    )


def find_node(nodes: Sequence[Node], id_or_name: str) -> Node | None:
    """Alerts name nodes by name (Prometheus labels) or id (the protocol)."""
    for n in nodes:
        if n.id == id_or_name:
            return n
    for n in nodes:
        if n.name == id_or_name:
            return n
    return None


def decide(
    alert: AlertFacts,
    rule: AlertRule | None,
    inputs: Inputs,
    *,
    now: datetime,
) -> Decision | None:
    """What to do about one alert notification; None when there is nothing to decide.
    The decision carries ``alert`` (what it was decided on).

    ``inputs.state.last_scale_out_firing_at`` must already account for this alert when
    it is a firing scale-out alert (the glue sets it to ``now``).
    """
    decision = _decide_alert(alert, rule, inputs, now=now)
    return None if decision is None else replace(decision, alert=alert)


def _decide_alert(
    alert: AlertFacts,
    rule: AlertRule | None,
    inputs: Inputs,
    *,
    now: datetime,
) -> Decision | None:
    service_name = alert.labels.get("service")
    firing = alert.status == "firing"
    if rule is None:
        if not firing:
            return None
        return _refuse(
            "none", "no_rule", f"no rule matches {alert.alertname}", service=service_name
        )
    common: dict[str, object] = {"service": service_name, "rule": rule.name}
    if not rule.enabled:
        if not firing:
            return None
        return _refuse(rule.action, "rule_disabled", f"rule {rule.name} is disabled", **common)
    why = action_unavailable(rule.action)
    if why is not None:
        return _refuse(rule.action, "unavailable", why, **common) if firing else None

    match rule.action:
        case Action.SCALE_OUT:
            if not firing:
                return _scale_out_resolved(alert, rule, inputs, now=now)
            return _dry(_scale_out(alert, rule, inputs, now=now), inputs, now)
        case Action.SCALE_IN:
            return _dry(_scale_in(alert, rule, inputs, now=now), inputs, now) if firing else None
        case Action.REPLACE:
            return _dry(_replace(alert, rule, inputs), inputs, now) if firing else None
        case Action.RESCHEDULE:
            return _dry(_reschedule(alert, rule, inputs), inputs, now) if firing else None
        case Action.RUN_PLAYBOOK:
            if not firing:
                return None
            return _dry(_run_playbook(alert, rule), inputs, now)
        case Action.NOTIFY_ONLY:
            if not firing:
                return None
            return Decision(
                action=rule.action,
                outcome="ok",
                reason=f"{alert.alertname} recorded only (rule {rule.name})",
                **common,  # type: ignore[arg-type]
            )
    return None


def _run_playbook(alert: AlertFacts, rule: AlertRule) -> Decision:
    """One job per firing alert; its labels become extra vars (the rule's win)."""
    assert rule.playbook is not None  # the rule's validation requires it
    labels = {k: v for k, v in alert.labels.items() if playbook_var_allowed(k)}
    return Decision(
        action=rule.action,
        outcome="ok",
        reason=f"run playbook {rule.playbook} for {alert.alertname} (rule {rule.name})",
        service=alert.labels.get("service"),
        rule=rule.name,
        playbook=rule.playbook,
        limit=rule.limit,
        extra_vars={**labels, "alert_labels": dict(alert.labels), **rule.extra_vars},
    )


def playbook_var_allowed(key: str) -> bool:
    """Alert labels that may become extra vars: never Ansible's own variables."""
    from orchestrify.jobs.validation import (
        EXTRA_VAR_KEY,
        RESERVED_EXTRA_VAR_PREFIX,
        RESERVED_EXTRA_VARS,
    )

    return (
        bool(EXTRA_VAR_KEY.match(key))
        and not key.startswith(RESERVED_EXTRA_VAR_PREFIX)
        and key not in RESERVED_EXTRA_VARS
    )


def _ready_capacity(svc: Service, inputs: Inputs) -> tuple[int, int]:
    """(Ready nodes, how many more replicas of ``svc`` they can take)."""
    ready = {n.id for n in inputs.nodes if n.state == NodeState.READY}
    if not ready:
        return 0, 0
    if svc.max_per_node is None:
        return len(ready), 10**6
    running = sum(
        1
        for r in inputs.replicas
        if r.service == svc.name and r.desired == DesiredState.RUN and r.node in ready
    )
    return len(ready), max(0, len(ready) * svc.max_per_node - running)


def _scale_out(alert: AlertFacts, rule: AlertRule, inputs: Inputs, *, now: datetime) -> Decision:
    svc = inputs.service
    name = alert.labels.get("service")
    if svc is None:
        return _refuse(
            rule.action,
            "unknown_service",
            f"{alert.alertname} names no known service ({name or 'no service label'})",
            service=name,
            rule=rule.name,
        )
    pol = svc.policy
    common: dict[str, object] = {"service": svc.name, "rule": rule.name}
    if before_manual_scale(alert.starts_at, inputs.state):
        return _manual_refusal(rule.action, alert, svc, inputs.state, rule)
    fired_for = (now - alert.starts_at).total_seconds()
    if fired_for < pol.scale_up_stabilization_s:
        return _refuse(
            rule.action,
            "stabilization",
            f"scale-up stabilization: {alert.alertname} has fired for {_secs(fired_for)} "
            f"of the {_secs(pol.scale_up_stabilization_s)} required",
            **common,
        )
    left = _cooldown_left(pol.cooldown_s, inputs.state, now)
    if left > 0:
        return _refuse(
            rule.action, "cooldown", f"cooldown: {_secs(left)} left after the last action", **common
        )
    if svc.replicas >= svc.max_replicas:
        return _refuse(
            rule.action, "at_max", f"{svc.name} is at max_replicas ({svc.max_replicas})", **common
        )
    # The desired count already holds the replicas of the last step; until they are
    # healthy (and take traffic), the alert still measures the fleet without them.
    starting, healthy = _starting(svc, inputs)
    if starting > 0:
        return _refuse(
            rule.action,
            "starting",
            f"{starting} replica(s) of {svc.name} still starting (desired {svc.replicas}, "
            f"healthy {healthy}): no scale-out on top of capacity already on its way",
            **common,
        )
    ready, room = _ready_capacity(svc, inputs)
    if room <= 0:
        why = "no node is ready" if ready == 0 else f"max_per_node={svc.max_per_node} on all"
        return _refuse(rule.action, "no_eligible_node", f"no eligible node: {why}", **common)
    step = min(rule.step, pol.max_step, svc.max_replicas - svc.replicas, room)
    avoid = _avoid(alert, inputs)
    target = svc.replicas + step
    where = ""
    if avoid:
        others = [n for n in inputs.nodes if n.state == NodeState.READY and n.id not in avoid]
        where = (
            f" away from node {', '.join(sorted(_names(avoid, inputs)))}"
            if others
            else " (no other node is ready: the same node is used)"
        )
    state = inputs.state
    return Decision(
        action=rule.action,
        outcome="ok",
        reason=f"scale {svc.name} from {svc.replicas} to {target}{where}: "
        f"{alert.alertname} (rule {rule.name})",
        replicas_from=svc.replicas,
        replicas_to=target,
        avoid_nodes=avoid,
        new_state=replace(
            state,
            last_action_at=now,
            baseline=state.baseline if state.baseline is not None else svc.replicas,
        ),
        **common,  # type: ignore[arg-type]
    )


def _names(ids: frozenset[str], inputs: Inputs) -> list[str]:
    by_id = {n.id: n.name for n in inputs.nodes}
    return [by_id.get(i, i) for i in ids]


def _avoid(alert: AlertFacts, inputs: Inputs) -> frozenset[str]:
    """The node of the replica the alert names, else the node it names."""
    replica = alert.labels.get("replica")
    if replica:
        for r in inputs.replicas:
            if r.id == replica:
                return frozenset({r.node})
    node_label = alert.labels.get("node")
    if node_label:
        node = find_node(inputs.nodes, node_label)
        if node is not None:
            return frozenset({node.id})
    return frozenset()


def baseline_floor(svc: Service, state: PolicyState) -> int:
    """Where resolution-driven scale-in stops: the baseline, clamped to min..max."""
    base = svc.min_replicas if state.baseline is None else state.baseline
    return max(svc.min_replicas, min(base, svc.max_replicas))


def _scale_out_resolved(
    alert: AlertFacts, rule: AlertRule, inputs: Inputs, *, now: datetime
) -> Decision | None:
    svc = inputs.service
    if svc is None or inputs.state.baseline is None:
        return None
    if before_manual_scale(alert.starts_at, inputs.state):
        # Its resolution says nothing about the service as its owner set it: no window
        # starts, and the baseline (the count set by hand) is where scale-in stops anyway.
        return _manual_refusal(Action.SCALE_IN, alert, svc, inputs.state, rule)
    floor = baseline_floor(svc, inputs.state)
    if svc.replicas <= floor:
        return None
    window = svc.policy.scale_down_stabilization_s
    return _refuse(
        Action.SCALE_IN,
        "stabilization",
        f"scale-out alert resolved: {svc.name} scales in toward {floor} once no scale-out "
        f"alert has fired for {_secs(window)}",
        service=svc.name,
        rule=rule.name,
        new_state=replace(inputs.state, last_scale_out_firing_at=now),
    )


def _scale_down_wait(svc: Service, state: PolicyState, now: datetime) -> float:
    """Seconds left before the scale-down stabilization window is over."""
    if state.last_scale_out_firing_at is None:
        return 0.0
    quiet = (now - state.last_scale_out_firing_at).total_seconds()
    return svc.policy.scale_down_stabilization_s - quiet


def _scale_in_to(
    svc: Service,
    inputs: Inputs,
    *,
    floor: int,
    step: int,
    why: str,
    rule: str | None,
    now: datetime,
) -> Decision:
    pol = svc.policy
    common: dict[str, object] = {"service": svc.name, "rule": rule}
    left = _cooldown_left(pol.cooldown_s, inputs.state, now)
    if left > 0:
        return _refuse(
            Action.SCALE_IN,
            "cooldown",
            f"cooldown: {_secs(left)} left after the last action",
            **common,
        )
    if svc.replicas <= floor:
        at = "min_replicas" if floor == svc.min_replicas else "its baseline"
        return _refuse(Action.SCALE_IN, "at_min", f"{svc.name} is at {at} ({floor})", **common)
    target = svc.replicas - min(step, pol.max_step, svc.replicas - floor)
    return Decision(
        action=Action.SCALE_IN,
        outcome="ok",
        reason=f"scale {svc.name} from {svc.replicas} to {target}: {why}",
        replicas_from=svc.replicas,
        replicas_to=target,
        new_state=replace(inputs.state, last_action_at=now),
        **common,  # type: ignore[arg-type]
    )


def _scale_in(alert: AlertFacts, rule: AlertRule, inputs: Inputs, *, now: datetime) -> Decision:
    svc = inputs.service
    if svc is None:
        name = alert.labels.get("service")
        return _refuse(
            rule.action,
            "unknown_service",
            f"{alert.alertname} names no known service ({name or 'no service label'})",
            service=name,
            rule=rule.name,
        )
    if before_manual_scale(alert.starts_at, inputs.state):
        return _manual_refusal(rule.action, alert, svc, inputs.state, rule)
    # Any episode that may act began after the last manual scale, so the window below
    # is counted from the owner's change at the earliest.
    window = svc.policy.scale_down_stabilization_s
    fired_for = (now - alert.starts_at).total_seconds()
    wait = max(window - fired_for, _scale_down_wait(svc, inputs.state, now))
    if wait > 0:
        return _refuse(
            rule.action,
            "stabilization",
            f"scale-down stabilization: {_secs(wait)} left of {_secs(window)} "
            f"(low load must last, with no scale-out alert)",
            service=svc.name,
            rule=rule.name,
        )
    return _scale_in_to(
        svc,
        inputs,
        floor=svc.min_replicas,
        step=rule.step,
        why=f"{alert.alertname} (rule {rule.name})",
        rule=rule.name,
        now=now,
    )


def decide_settle(inputs: Inputs, *, scale_out_firing: bool, now: datetime) -> Decision | None:
    """Resolution-driven scale-in, on the controller's timer. None: nothing to say.

    Only services with an open episode (a baseline) are concerned; the glue clears the
    baseline once the service is back at it (see ``episode_over``).
    """
    svc = inputs.service
    if svc is None or inputs.state.baseline is None or scale_out_firing:
        return None
    floor = baseline_floor(svc, inputs.state)
    if svc.replicas <= floor:
        return None
    wait = _scale_down_wait(svc, inputs.state, now)
    if wait > 0:
        return _refuse(
            Action.SCALE_IN,
            "stabilization",
            f"scale-down stabilization: {_secs(wait)} left of "
            f"{_secs(svc.policy.scale_down_stabilization_s)} without a scale-out alert",
            service=svc.name,
        )
    return _dry(
        _scale_in_to(
            svc,
            inputs,
            floor=floor,
            step=svc.policy.max_step,
            why=f"no scale-out alert for {_secs(svc.policy.scale_down_stabilization_s)}; "
            f"back toward the baseline {floor}",
            rule=None,
            now=now,
        ),
        inputs,
        now,
    )


def episode_over(svc: Service, state: PolicyState) -> bool:
    """The service is back at (or under) its baseline: forget the baseline."""
    return state.baseline is not None and svc.replicas <= baseline_floor(svc, state)


def _replace(alert: AlertFacts, rule: AlertRule, inputs: Inputs) -> Decision:
    rid = alert.labels.get("replica", "")
    common: dict[str, object] = {"service": alert.labels.get("service"), "rule": rule.name}
    replica = next((r for r in inputs.replicas if r.id == rid), None)
    if replica is None:
        return _refuse(
            rule.action, "unknown_replica", f"no replica {rid or '(no replica label)'}", **common
        )
    common["service"] = replica.service
    if replica.desired != DesiredState.RUN:
        return _refuse(
            rule.action,
            "already_replaced",
            f"replica {rid} is already {replica.desired.value}",
            **common,
        )
    return Decision(
        action=rule.action,
        outcome="ok",
        reason=f"replace replica {rid} (drain it, place a new one elsewhere): "
        f"{alert.alertname} (rule {rule.name})",
        drain=(rid,),
        avoid_nodes=frozenset({replica.node}),
        **common,  # type: ignore[arg-type]
    )


def _reschedule(alert: AlertFacts, rule: AlertRule, inputs: Inputs) -> Decision:
    label = alert.labels.get("node", "")
    service = alert.labels.get("service") if rule.scope == "service" else None
    common: dict[str, object] = {"service": service, "rule": rule.name}
    node = find_node(inputs.nodes, label) if label else None
    if node is None:
        return _refuse(
            rule.action, "unknown_node", f"no node {label or '(no node label)'}", **common
        )
    if node.state == NodeState.UNREACHABLE:
        # Silent together with many others: the controller or the network is suspected,
        # so its replicas stay (the reconciler's mass-silence rule; an alert must not
        # undo it).
        return _refuse(
            rule.action,
            "unreachable",
            f"node {node.name} is unreachable (many nodes went silent at once): assuming a "
            "controller or network problem, its replicas stay where they are",
            **common,
        )
    moving = tuple(
        r.id
        for r in inputs.replicas
        if r.node == node.id
        and r.desired == DesiredState.RUN
        and (service is None or r.service == service)
    )
    if not moving:
        what = f"of {service} " if service else ""
        return _refuse(
            rule.action,
            "nothing_to_do",
            f"no running replica {what}left on node {node.name}",
            **common,
        )
    return Decision(
        action=rule.action,
        outcome="ok",
        reason=f"reschedule {len(moving)} replica(s) off node {node.name}: "
        f"{alert.alertname} (rule {rule.name})",
        drain=moving,
        avoid_nodes=frozenset({node.id}),
        **common,  # type: ignore[arg-type]
    )
