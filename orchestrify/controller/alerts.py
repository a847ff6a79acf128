"""The controller's alert processing: store a notification, decide on each new alert,
apply the decision; and, on a timer, re-evaluate firing alerts and pending scale-ins.

Decisions come from the pure ``orchestrify.alerting.policy``; this module only gathers
their inputs from the store and writes their outcome (``AlertStore.commit``: one
transaction). One lock serializes deciding, so the webhook thread and the timer never
decide on the same alert twice.

Fairness: undecided alerts are decided in slices of ``DECISION_SLICE``, picked
round-robin over lanes (an alert's service, else its node, else its name:
``orchestrify.store.alerts.alert_lane``), and the lock is let go between slices. A flood
for one service therefore puts at most one slice ahead of another service's alert,
whatever its size; within a lane, alerts are still decided in arrival order.

Several controllers (issue 11): every one stores the notifications it receives, only the
leading one decides (``leading``). A follower's webhook answers once the alerts are
stored; the leader's loop finds them pending (woken by ``wake``, or within
``PENDING_POLL_S`` at the latest) and decides them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeGuard

from orchestrify.alerting.payload import AlertBatch
from orchestrify.alerting.policy import (
    AlertFacts,
    Decision,
    Inputs,
    PolicyState,
    before_manual_scale,
    decide,
    decide_settle,
    episode_over,
)
from orchestrify.alerting.rules import (
    Action,
    AlertRule,
    RuleSet,
    default_rules,
    load_rules,
    parse_rules,
)
from orchestrify.controller.reconcile import Reconciler
from orchestrify.errors import OrchestrifyError
from orchestrify.jobs.runner import JobRunner
from orchestrify.models import Node, Replica, Service
from orchestrify.store import Store, utcnow
from orchestrify.store.alerts import AlertInstance, AlertStore, Commit, Intake, Receipt

log = logging.getLogger(__name__)

# Alerts decided per hold of the lock: a quiet service's alert waits behind at most this
# many of a flood's (about 0.1 s of work at ~1 ms an alert), and the fleet view and the
# batched write are paid once per slice, not once per alert.
DECISION_SLICE = 100

# How often the leader's loop looks for alerts stored but not decided (by a follower's
# webhook, or a webhook call that gave up) between its re-evaluations: the safety net of
# ``wake``, which another controller's notification may not reach. One indexed query.
PENDING_POLL_S = 1.0

# Refusals the timer repeats every tick while nothing changes: said once, not every tick.
_REPEATING = frozenset(
    {
        "cooldown",
        "stabilization",
        "at_max",
        "at_min",
        "no_eligible_node",
        "rule_disabled",
        "unavailable",
        "unknown_service",
        "starting",
        "manual_scale",
    }
)


class AlertProcessor:
    def __init__(
        self,
        store: Store,
        reconciler: Reconciler,
        *,
        dry_run: bool = False,
        stale_after_s: float = 3600.0,
        clock: Callable[[], datetime] = utcnow,
        jobs: JobRunner | None = None,
        leading: Callable[[], bool] = lambda: True,
        fence: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
    ) -> None:
        """``leading``: whether this controller decides now (the leader; always, alone).
        ``fence``: entered around the decisions the webhook takes itself on the leader,
        so that they are refused (``Fenced``) once its term is over, as the loop's are."""
        self.store = store
        self.leading = leading
        self.fence = fence
        self.jobs = jobs
        self.alerts = AlertStore(store)
        self.reconciler = reconciler
        self.dry_run = dry_run
        self.stale_after_s = stale_after_s
        self.clock = clock
        self.rules: RuleSet = default_rules()
        self.rules_source = "default"
        self._lock = threading.Lock()
        # Told each time the lock is let go: a webhook call waiting for its alerts'
        # decisions checks them then, instead of queueing for the lock behind calls that
        # would only decide the flood's next slice.
        self._turns = threading.Condition()
        self._turn = 0
        self._said: dict[tuple[str | None, str], str] = {}
        # Services that took their scale step since the backlog of undecided alerts was
        # last empty: alerts that arrive together are one step, even when their
        # decisions are spread over several slices.
        self._backlog_steps: dict[str, str] = {}
        self.slice_size = DECISION_SLICE
        self.pending_poll_s = PENDING_POLL_S
        # The loop's wake-up (``wake``), made by ``run_forever`` on its event loop.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None

    # --- rules ---------------------------------------------------------------------
    def load_rules(self, path: Path | None) -> None:
        """At start: a --rules file wins, else what the API stored, else the default."""
        if path is not None:
            rules = load_rules(path)
            self.set_rules(rules, source=f"file {path}")
            return
        stored = self.alerts.get_rules()
        if stored is not None:
            data, source = stored
            try:
                self.rules, self.rules_source = parse_rules(data), source
            except Exception:
                log.exception("stored alert rules are no longer valid; using the default")

    def set_rules(self, rules: RuleSet, *, source: str) -> None:
        data: dict[str, Any] = rules.model_dump(mode="json", exclude_defaults=True)
        self.alerts.put_rules(data, source=source)
        with self._holding():
            self.rules, self.rules_source = rules, source

    # --- intake --------------------------------------------------------------------
    def receive(self, batch: AlertBatch) -> Intake:
        """Store the notification durably; on the leader, then wait until its alerts are
        decided (by this thread or another, in fair order). A follower answers once they
        are stored: the leader's loop decides them. A failure to decide is logged: the
        alerts stay pending and the loop (or the next start) processes them."""
        intake = self.alerts.store_batch(batch, now=self.clock())
        if not intake.new:
            return intake
        decided = False
        if self.leading():
            try:
                with self.fence():
                    decided = self._decide_until(intake.receipts)
            except Exception:
                log.exception("deciding on stored alerts failed; they stay pending")
        if not decided:
            self.wake()  # the loop takes what this call left pending
        return intake

    def process_pending(self) -> int:
        """Decide on every undecided alert, one slice at a time; returns how many (none
        while following). Stops early at a slice that could not decide all it took (a
        store error: the loop retries)."""
        done = 0
        while self.leading():
            with self._holding():
                n = self._decide_slice()
            done += n
            if n < self.slice_size:
                break
        return done

    def wake(self) -> None:
        """Have the loop look for undecided alerts now (from any thread): alerts stored by
        another controller, or by a webhook call that could not decide them all."""
        loop, wakeup = self._loop, self._wakeup
        if loop is not None and wakeup is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wakeup.set)

    def _decide_until(self, receipts: tuple[int, ...]) -> bool:
        """Decide slices until ``receipts`` are decided; whether they were. Whoever holds
        the lock decides the fairest slice, not its own alerts first: a caller whose
        alerts another thread decided meanwhile returns without deciding anything, and
        while another holds the lock it waits for the next turn, not in the lock's queue.
        Gives up (they stay pending for the loop) when a slice decides nothing, or when
        this controller stops leading: an alert that cannot be decided now must not spin
        the webhook call."""
        while self.leading():
            if not self.alerts.undecided(receipts):
                return True
            with self._turns:
                turn = self._turn
            if not self._lock.acquire(blocking=False):
                self._wait_for_turn(turn)
                continue
            try:
                if not self.alerts.undecided(receipts):
                    return True
                if self._decide_slice() == 0:
                    return False
            finally:
                self._lock.release()
                self._hand_over()
        return False

    @contextlib.contextmanager
    def _holding(self) -> Iterator[None]:
        """Hold the decision lock; let waiting webhook calls know when it is let go."""
        try:
            with self._lock:
                yield
        finally:
            self._hand_over()

    def _wait_for_turn(self, turn: int) -> None:
        """Wait until the lock is let go after ``turn``; at most a second (a holder that
        does not say so, such as a test holding the lock)."""
        with self._turns:
            self._turns.wait_for(lambda: self._turn != turn, timeout=1.0)

    def _hand_over(self) -> None:
        with self._turns:
            self._turn += 1
            self._turns.notify_all()

    def _decide_slice(self, collect: dict[str, str] | None = None) -> int:
        """Decide one slice of undecided alerts, in fair order (caller holds the lock);
        returns how many were decided. ``collect`` gets the services that took their step
        in this backlog, and why."""
        pending = self.alerts.pending(limit=self.slice_size)
        decided = self._process_pending(pending, self._backlog_steps) if pending else 0
        if collect is not None:
            collect.update(self._backlog_steps)
        if len(pending) < self.slice_size:
            self._backlog_steps = {}  # the backlog is empty: the next alerts are new ones
        return decided

    def _process_pending(self, pending: list[Receipt], stepped: dict[str, str]) -> int:
        """Decide on these pending receipts; returns how many were decided. ``stepped``
        collects the services that took their scale step in this run, and why: alerts of
        one service that arrive together (one per slow replica) are one step, whatever the
        cooldown."""
        view = self._view(pending)
        stale = False  # the fleet changed since ``view`` was read
        quiet: list[Commit] = []  # decisions that do not act: written together
        decided = 0
        for receipt in pending:
            now = self.clock()
            if stale:
                view, stale = self._view(pending, resolved=view.resolved), False
            try:
                item = self._decide(receipt, view, now, stepped=stepped)
            except Exception:  # one bad alert never blocks the others
                log.exception("deciding on an alert failed", extra={"alert": receipt.key})
                continue
            d = item.decision
            if d is not None and d.acts and not d.dry_run:
                decided += self._write(quiet, now) + 1
                quiet = []
                recorded = self._commit(
                    receipt=receipt, decision=d, state=item.state, now=now, seen=view.replicas
                )
                if _is_step(recorded):
                    stepped[recorded.service or ""] = recorded.reason
                stale = True
            else:
                if _is_step(d):
                    stepped[d.service or ""] = d.reason
                quiet.append(item)
            view.remember(item)
        return decided + self._write(quiet, self.clock())

    def _write(self, items: list[Commit], now: datetime) -> int:
        """Record decisions that do not act, together; returns how many were recorded."""
        if not items:
            return 0
        try:
            self.alerts.commit_many(items, now=now)
            return len(items)
        except Exception:
            log.exception("recording decisions failed; retrying one by one")
        written = 0
        for item in items:
            try:
                self.alerts.commit(
                    now=now, receipt=item.receipt, decision=item.decision, state=item.state
                )
                written += 1
            except Exception:
                log.exception("recording a decision failed; the alert stays pending")
        return written

    def _view(self, pending: list[Receipt], *, resolved: set[str] | None = None) -> _View:
        services, nodes, replicas = self.store.snapshot()
        if resolved is None:
            resolved = self.alerts.resolved_instances(sorted({r.instance for r in pending}))
        return _View(
            services={s.name: s for s in services},
            nodes=nodes,
            replicas=replicas,
            states=self.alerts.policy_states(),
            resolved=resolved,
        )

    def _decide(
        self, receipt: Receipt, view: _View, now: datetime, *, stepped: dict[str, str]
    ) -> Commit:
        rule = self.rules.match(receipt.labels)
        service_name = receipt.labels.get("service")
        facts = AlertFacts(
            alertname=receipt.alertname,
            status="firing" if receipt.status == "firing" else "resolved",
            labels=receipt.labels,
            starts_at=receipt.starts_at,
            instance=receipt.instance,
        )
        if receipt.status == "firing" and receipt.instance in view.resolved:
            late = Decision(
                action=str(rule.action) if rule else "none",
                outcome="refused",
                refusal="already_resolved",
                reason=f"{receipt.alertname} fired after its resolution had arrived; ignored",
                service=service_name,
                rule=rule.name if rule else None,
                alert=facts,
            )
            return Commit(receipt, self._note(late, quiet=False), None)
        svc = view.services.get(service_name) if service_name else None
        state = view.states.get(svc.name, PolicyState()) if svc is not None else PolicyState()
        extra_state = None
        if _scales_out(rule) and svc is not None:
            # The policy's "last time a scale-out alert fired": now, firing or resolving.
            state = replace(state, last_scale_out_firing_at=now)
            extra_state = (svc.name, state)
        inputs = Inputs(
            service=svc, replicas=view.replicas, nodes=view.nodes, state=state, dry_run=self.dry_run
        )
        decision = decide(facts, rule, inputs, now=now)
        if _is_step(decision) and svc is not None and svc.name in stepped:
            decision = _one_step(decision, receipt, already=stepped[svc.name])
        if decision is not None and decision.new_state is not None:
            extra_state = None  # the decision's state already includes it
        return Commit(receipt, self._note(decision, quiet=False), extra_state)

    # --- timer ---------------------------------------------------------------------
    def tick(self) -> None:
        """Re-evaluate firing alerts (scale out/in one step per cooldown) and settle
        services whose scale-out alerts are gone (scale-in after stabilization)."""
        if not self.leading():
            return
        pending_steps: dict[str, str] = {}
        # The backlog first, one slice per hold of the lock, so webhook calls that
        # arrive meanwhile get their turn; then whatever is left, and the re-evaluation,
        # in one hold.
        while True:
            with self._holding():
                if self._decide_slice(pending_steps) < self.slice_size:
                    break
        with self._holding():
            self._decide_slice(pending_steps)
            now = self.clock()
            states = self.alerts.policy_states()
            firing = [a for a in self.alerts.firing() if self._fresh(a, now)]
            # Per service, the oldest episode that may act: one that began before the
            # owner's last manual scale is only chosen (to say why it is refused) when
            # no newer episode is firing.
            firing.sort(
                key=lambda a: (
                    before_manual_scale(a.starts_at, states.get(a.service or "", PolicyState())),
                    a.starts_at,
                )
            )
            scale_out: dict[str, tuple[AlertInstance, AlertRule]] = {}
            scale_in: dict[str, tuple[AlertInstance, AlertRule]] = {}
            for inst in firing:
                rule = self.rules.match(inst.labels)
                if rule is None or not rule.enabled or inst.service is None:
                    continue
                if rule.action == Action.SCALE_OUT:
                    scale_out.setdefault(inst.service, (inst, rule))
                elif rule.action == Action.SCALE_IN:
                    scale_in.setdefault(inst.service, (inst, rule))
            stepped = set(pending_steps)  # one scale step per service per tick
            for service, (inst, rule) in scale_out.items():
                if service in stepped:
                    continue
                if _is_step(self._reevaluate(inst, rule, scale_out_firing=True, now=now)):
                    stepped.add(service)
            for service, (inst, rule) in scale_in.items():
                if service in stepped:
                    continue
                got = self._reevaluate(inst, rule, scale_out_firing=service in scale_out, now=now)
                if _is_step(got):
                    stepped.add(service)
            for service, state in self.alerts.policy_states().items():
                if state.baseline is None or service in scale_out or service in stepped:
                    continue
                inputs = self._inputs(service)
                if inputs.service is None or episode_over(inputs.service, state):
                    self._commit(state=(service, replace(state, baseline=None)), now=now)
                    continue
                self._commit(
                    decision=decide_settle(inputs, scale_out_firing=False, now=now),
                    now=now,
                    quiet=True,
                    seen=inputs.replicas,
                )

    def _reevaluate(
        self, inst: AlertInstance, rule: AlertRule, *, scale_out_firing: bool, now: datetime
    ) -> Decision | None:
        """Decide again on a still-firing alert; returns the decision as recorded."""
        inputs = self._inputs(inst.service)
        if scale_out_firing:
            inputs = replace(inputs, state=replace(inputs.state, last_scale_out_firing_at=now))
        facts = AlertFacts(
            alertname=inst.alertname,
            status="firing",
            labels=inst.labels,
            starts_at=inst.starts_at,
            instance=inst.id,
        )
        return self._commit(
            decision=decide(facts, rule, inputs, now=now),
            now=now,
            quiet=True,
            seen=inputs.replicas,
        )

    def _note(self, decision: Decision | None, *, quiet: bool) -> Decision | None:
        """Remember the last refusal per service and action; with ``quiet`` (the timer),
        drop a refusal identical to the last one said: nothing new to record."""
        if decision is None:
            return None
        key = (decision.service, str(decision.action))
        repeating = decision.outcome == "refused" and decision.refusal in _REPEATING
        if quiet and repeating and self._said.get(key) == decision.refusal:
            return None
        if repeating and decision.refusal is not None:
            self._said[key] = decision.refusal
        else:
            self._said.pop(key, None)
        return decision

    def _fresh(self, inst: AlertInstance, now: datetime) -> bool:
        return (now - inst.last_seen_at).total_seconds() <= self.stale_after_s

    async def run_forever(self, interval_s: float) -> None:
        """Every ``interval_s``, ``tick``; between ticks, decide alerts as soon as some
        are pending: when ``wake`` is called, else within ``pending_poll_s``."""
        loop = asyncio.get_running_loop()
        self._loop, self._wakeup = loop, asyncio.Event()
        next_tick = loop.time() + interval_s
        while True:
            wait = min(self.pending_poll_s, max(0.0, next_tick - loop.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), wait)
            self._wakeup.clear()
            try:
                if loop.time() >= next_tick:
                    next_tick = loop.time() + interval_s
                    await asyncio.to_thread(self.tick)  # the backlog first, then the rest
                elif self.leading() and await asyncio.to_thread(self.alerts.has_pending):
                    await asyncio.to_thread(self.process_pending)
            except Exception:
                log.exception("alert re-evaluation failed; retrying")

    # --- helpers -------------------------------------------------------------------
    def _inputs(self, service_name: str | None) -> Inputs:
        services, nodes, replicas = self.store.snapshot()
        svc = _find(services, service_name)
        state = self.alerts.policy_state(svc.name) if svc is not None else PolicyState()
        return Inputs(
            service=svc,
            replicas=replicas,
            nodes=nodes,
            state=state,
            dry_run=self.dry_run,
        )

    def _commit(
        self,
        *,
        now: datetime,
        receipt: Receipt | None = None,
        decision: Decision | None = None,
        state: tuple[str, PolicyState] | None = None,
        quiet: bool = False,
        seen: Sequence[Replica] | None = None,
    ) -> Decision | None:
        """Record ``decision`` and, if it acts, apply it and place what it asks at once.
        ``seen``: the replicas it was decided on (read from the store when not given)."""
        decision = self._note(decision, quiet=quiet)
        if decision is None and receipt is None and state is None:
            return None
        if decision is None or not decision.acts or decision.dry_run:
            return self.alerts.commit(now=now, receipt=receipt, decision=decision, state=state)
        if decision.playbook is not None:
            decision = self._submit_playbook(decision)
            return self.alerts.commit(now=now, receipt=receipt, decision=decision, state=state)
        avoid = {
            name: decision.avoid_nodes
            for name in _affected_services(
                decision, seen if seen is not None else self.store.snapshot()[2]
            )
        }
        recorded, _steps = self.reconciler.run_with(
            lambda: self.alerts.commit(now=now, receipt=receipt, decision=decision, state=state),
            avoid={k: v for k, v in avoid.items() if v},
        )
        return recorded

    def _submit_playbook(self, decision: Decision) -> Decision:
        """Queue the Ansible job; a rejected job is a refused decision with the reason."""
        assert decision.playbook is not None
        if self.jobs is None:
            return replace(
                decision, outcome="refused", refusal="unavailable", reason="no job runner"
            )
        try:
            job = self.jobs.submit(
                playbook=decision.playbook,
                limit=decision.limit,
                extra_vars=dict(decision.extra_vars),
                reason=decision.reason,
            )
        except OrchestrifyError as exc:
            return replace(
                decision,
                outcome="refused",
                refusal="job_rejected",
                reason=f"{decision.reason}: the job was rejected: {exc}",
            )
        return replace(decision, reason=f"{decision.reason}: job {job.id} queued")


class _View:
    """What decisions read, loaded once per run of pending alerts and kept current in
    memory as decisions that do not act are taken (reloaded after one that acts)."""

    def __init__(
        self,
        *,
        services: dict[str, Service],
        nodes: list[Node],
        replicas: list[Replica],
        states: dict[str, PolicyState],
        resolved: set[str],
    ) -> None:
        self.services = services
        self.nodes = nodes
        self.replicas = replicas
        self.states = states
        self.resolved = resolved

    def remember(self, item: Commit) -> None:
        receipt, decision, state = item
        if receipt is not None and receipt.status == "resolved":
            self.resolved.add(receipt.instance)
        if decision is not None and decision.new_state is not None and decision.service:
            self.states[decision.service] = decision.new_state
        if state is not None:
            self.states[state[0]] = state[1]


def _is_step(decision: Decision | None) -> TypeGuard[Decision]:
    """A change of the service's desired count, real or simulated (dry run)."""
    return (
        decision is not None
        and decision.service is not None
        and decision.replicas_to is not None
        and (decision.acts or decision.dry_run)
    )


def _one_step(decision: Decision, receipt: Receipt, *, already: str) -> Decision:
    """Refuse a second step for a service in one run of alerts (one per slow replica)."""
    named = receipt.labels.get("replica")
    of = f" (replica {named})" if named else ""
    return Decision(
        action=decision.action,
        outcome="refused",
        refusal="one_step",
        reason=f"{receipt.alertname}{of}: {decision.service} already took its step for the "
        f"alerts that arrived with this one ({already}); alerts of one service that fire "
        "together are one step per cooldown, not one per replica",
        service=decision.service,
        rule=decision.rule,
        alert=decision.alert,
    )


def _scales_out(rule: AlertRule | None) -> bool:
    return rule is not None and rule.enabled and rule.action == Action.SCALE_OUT


def _find(services: list[Service], name: str | None) -> Service | None:
    return next((s for s in services if s.name == name), None) if name else None


def _affected_services(decision: Decision, replicas: Sequence[Replica]) -> set[str]:
    names = {r.service for r in replicas if r.id in decision.drain}
    if decision.service:
        names.add(decision.service)
    return names


__all__ = ["AlertProcessor"]
