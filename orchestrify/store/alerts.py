"""The store side of the Alertmanager webhook: receipts, alert instances, policy state,
the alert rules, and the one transaction that records a decision together with its effect.

Everything a decision changes (the receipt marked processed, the alert instance, the
policy state, the service's desired count or the drained replicas, and the events) is
written in one transaction: a crash leaves the receipt pending and nothing half done, and
the controller processes pending receipts at start-up.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from orchestrify.alerting.payload import AlertBatch, AlertmanagerAlert
from orchestrify.alerting.policy import AlertFacts, Decision, PolicyState
from orchestrify.models import Event, check_bounds
from orchestrify.store import Store, utcnow
from orchestrify.store.alert_tables import (
    AlertInstanceRow,
    AlertReceiptRow,
    ScalingStateRow,
    scaling_state_row,
)
from orchestrify.store.engine import WriteTx, retry_on_race
from orchestrify.store.replicas import drain_replica
from orchestrify.store.tables import EventRow, MetaRow, ReplicaRow, ServiceRow

RULES_KEY = "alert_rules"


def _utc(dt: datetime | None) -> datetime | None:
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt


def _later(stored: datetime | None, given: datetime | None) -> datetime | None:
    if stored is None or given is None:
        return given if stored is None else stored
    return max(stored, _utc_req(given))


def _utc_req(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt


@dataclass(frozen=True)
class Receipt:
    id: int
    key: str
    instance: str
    fingerprint: str
    alertname: str
    status: str
    starts_at: datetime
    labels: dict[str, str]
    received_at: datetime


@dataclass(frozen=True)
class AlertInstance:
    id: str
    fingerprint: str
    alertname: str
    service: str | None
    labels: dict[str, str]
    status: str
    starts_at: datetime
    last_seen_at: datetime
    resolved_at: datetime | None


class Commit(NamedTuple):
    """What one processed alert writes: all of it, or none of it."""

    receipt: Receipt | None
    decision: Decision | None
    state: tuple[str, PolicyState] | None


@dataclass(frozen=True)
class Intake:
    received: int
    new: int
    duplicates: int
    receipts: tuple[int, ...] = ()  # ids of the new receipts, to wait for their decisions


def alert_lane(labels: dict[str, str]) -> str:
    """The lane an alert waits in for its decision: its service, else its node, else its
    alert name. Lanes are served round-robin, so a flood in one never holds another's
    decisions back; within a lane alerts are decided in arrival order, so the scaling
    policy (cooldown, stabilization, one step) sees a service's alerts in order."""
    if labels.get("service"):
        return f"service={labels['service']}"
    if labels.get("node"):
        return f"node={labels['node']}"
    return f"alertname={labels.get('alertname', '')}"


def _receipt(row: AlertReceiptRow) -> Receipt:
    return Receipt(
        id=row.id,
        key=row.key,
        instance=row.instance,
        fingerprint=row.fingerprint,
        alertname=row.alertname,
        status=row.status,
        starts_at=_utc_req(row.starts_at),
        labels=dict(row.labels),
        received_at=_utc_req(row.received_at),
    )


def _instance(row: AlertInstanceRow) -> AlertInstance:
    return AlertInstance(
        id=row.id,
        fingerprint=row.fingerprint,
        alertname=row.alertname,
        service=row.service,
        labels=dict(row.labels),
        status=row.status,
        starts_at=_utc_req(row.starts_at),
        last_seen_at=_utc_req(row.last_seen_at),
        resolved_at=_utc(row.resolved_at),
    )


def _insert_receipts(tx: WriteTx, rows: list[dict[str, Any]]) -> dict[str, int]:
    """Insert these receipts, skipping any whose key another transaction stored first
    (committed, or committed while this insert waited for it); the ids of those inserted,
    by key. SQLite runs one writer at a time, so there the skip never happens; the
    statement is the same on both engines."""
    if not rows:
        return {}
    make = pg_insert if tx.store.dialect == "postgresql" else sqlite_insert
    statement = (
        make(AlertReceiptRow)
        .on_conflict_do_nothing(index_elements=[AlertReceiptRow.key])
        .returning(AlertReceiptRow.key, AlertReceiptRow.id)
    )
    return {key: rid for key, rid in tx.session.execute(statement, rows)}


def _alert_event(batch: AlertBatch, alert: AlertmanagerAlert, *, duplicate: bool) -> dict[str, Any]:
    """The ``alert`` event of one alert of a notification (stored, or a duplicate)."""
    labels = alert.labels
    return {
        "time": utcnow(),
        "kind": "alert",
        "service": labels.get("service"),
        "node": labels.get("node"),
        "replica": labels.get("replica"),
        "action": None,
        "outcome": "info",
        "reason": "duplicate" if duplicate else None,
        "message": f"alert {alert.alertname} {alert.status}"
        + "".join(f" {k}={labels[k]}" for k in ("service", "replica", "node") if k in labels)
        + (" (duplicate, already stored)" if duplicate else ""),
        "data": {
            "status": alert.status,
            "fingerprint": alert.identity,
            "startsAt": alert.starts_at.isoformat(),
            "labels": labels,
            "annotations": alert.annotations,
            "receiver": batch.receiver,
            "groupKey": batch.group_key,
            "duplicate": duplicate,
        },
    }


def decision_alert(alert: AlertFacts) -> dict[str, Any]:
    """What a decision event says of the alert it was decided on: its name, status, the
    episode (instance id and when it began) and the labels that name what it is about."""
    return {
        "name": alert.alertname,
        "status": alert.status,
        "instance": alert.instance,
        "starts_at": _utc_req(alert.starts_at).isoformat(),
        **{k: alert.labels[k] for k in ("service", "replica", "node") if k in alert.labels},
    }


def decisions_by_episode(decisions: Iterable[Event]) -> dict[str, list[Event]]:
    """Decision events by the episode they name (``data.alert.instance``, written by
    ``decision_alert``), newest first."""
    found: dict[str, list[Event]] = {}
    for event in sorted(decisions, key=lambda e: e.id, reverse=True):
        alert = event.data.get("alert")
        instance = alert.get("instance") if isinstance(alert, dict) else None
        if isinstance(instance, str):
            found.setdefault(instance, []).append(event)
    return found


def _iso(dt: datetime | None) -> str | None:
    found = _utc(dt)
    return None if found is None else found.isoformat()


def _policy_at(tx: WriteTx, service: str) -> dict[str, Any] | None:
    """The scaling policy of ``service`` as the decision met it: its windows (cooldown,
    stabilization) and what the policy remembered (the last action, the last firing
    scale-out alert, the episode's baseline), read from the rows the commit already
    holds (preloaded); the times the windows end, so the event says until when. None
    for a service that is gone."""
    svc = tx.get(ServiceRow, service)
    if svc is None:
        return None
    spec_policy = svc.spec.get("policy") or {}
    state = tx.get(ScalingStateRow, service)
    last_action = _utc(state.last_action_at) if state is not None else None
    last_firing = _utc(state.last_scale_out_firing_at) if state is not None else None
    cooldown = spec_policy.get("cooldown_s")
    down = spec_policy.get("scale_down_stabilization_s")

    def after(start: datetime | None, seconds: Any) -> str | None:
        if start is None or not isinstance(seconds, int | float):
            return None
        try:
            return (start + timedelta(seconds=seconds)).isoformat()
        except OverflowError:
            return None

    return {
        "cooldown_s": cooldown,
        "scale_up_stabilization_s": spec_policy.get("scale_up_stabilization_s"),
        "scale_down_stabilization_s": down,
        "last_action_at": _iso(last_action),
        "cooldown_until": after(last_action, cooldown),
        "last_scale_out_firing_at": _iso(last_firing),
        "scale_in_not_before": after(last_firing, down),
        "baseline": state.baseline if state is not None else None,
    }


class AlertStore:
    """Alert intake and policy state on top of the controller's ``Store``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # --- intake --------------------------------------------------------------------
    @retry_on_race
    def store_batch(self, batch: AlertBatch, *, now: datetime) -> Intake:
        """Record every alert of a notification; each idempotency key is stored once,
        whichever controller stores it and however many deliver it at once.

        Receipts are inserted with ``ON CONFLICT DO NOTHING``: when the same notification
        reaches two controllers together, both read the key as new, one inserts it and the
        other's insert waits for it and skips it; that delivery counts it as a duplicate
        and still answers 2xx (a unique-key error here was a 409, which Alertmanager does
        not retry). A deadlock of two notifications sharing keys in another order is run
        again (``retry_on_race``): nothing is written or told before the commit.

        Receipts and their ``alert`` events are written as two multi-row inserts, not as
        one ORM object each: a 1,000-alert notification holds the store's write lock (and
        every other notification waiting for it) about a fifth as long."""
        with self.store.write() as tx:
            s = tx.session
            keys = [a.receipt_key for a in batch.alerts]
            # One query for the whole batch, not one per alert.
            stored = set(
                s.scalars(select(AlertReceiptRow.key).where(AlertReceiptRow.key.in_(keys))).all()
            )
            wanted: dict[str, dict[str, Any]] = {}  # key -> its receipt, in batch order
            for alert, key in zip(batch.alerts, keys, strict=True):
                if key in stored or key in wanted:
                    continue
                wanted[key] = {
                    "key": key,
                    "instance": alert.instance,
                    "fingerprint": alert.identity,
                    "alertname": alert.alertname,
                    "status": alert.status,
                    "starts_at": alert.starts_at,
                    "ends_at": alert.ends_at,
                    "labels": alert.labels,
                    "annotations": alert.annotations,
                    "receiver": batch.receiver,
                    "group_key": batch.group_key,
                    "generator_url": alert.generator_url,
                    "received_at": now,
                    "processed_at": None,
                    "lane": alert_lane(alert.labels)[:300],
                }
            inserted = _insert_receipts(tx, list(wanted.values()))
            new = dup = 0
            firsts: set[str] = set()
            events: list[dict[str, Any]] = []
            for alert, key in zip(batch.alerts, keys, strict=True):
                duplicate = key not in inserted or key in firsts
                firsts.add(key)
                if duplicate:
                    dup += 1
                    inst = s.get(AlertInstanceRow, alert.instance)
                    if inst is not None and inst.status == alert.status == "firing":
                        inst.last_seen_at = now  # a repeat notification: still firing
                else:
                    new += 1
                events.append(_alert_event(batch, alert, duplicate=duplicate))
            s.flush()  # the touched alert instances, before the events
            event_ids = (
                s.scalars(
                    insert(EventRow).returning(EventRow.id, sort_by_parameter_order=True), events
                ).all()
                if events
                else []
            )
            # Told to the event subscribers (the /v1/events followers) after the commit,
            # as ``Store._add_event`` rows are.
            tx.events.extend(
                Event(id=event_id, **fields)
                for event_id, fields in zip(event_ids, events, strict=True)
            )
        ids = tuple(inserted[key] for key in wanted if key in inserted)
        return Intake(received=len(batch.alerts), new=new, duplicates=dup, receipts=ids)

    def pending(self, *, limit: int = 1000) -> list[Receipt]:
        """Up to ``limit`` undecided receipts in fair order: round-robin over lanes
        (``alert_lane``), the first of every lane, then the second of every lane, and so
        on; in arrival order within a lane. A lane with 10,000 waiting puts one receipt
        ahead of a quiet lane's first, not 10,000."""
        # Receipts of an older build (lane NULL) are one lane: SQL partitions NULLs together.
        turn = func.row_number().over(
            partition_by=AlertReceiptRow.lane, order_by=AlertReceiptRow.id
        )
        waiting = (
            select(AlertReceiptRow.id.label("id"), turn.label("turn"))
            .where(AlertReceiptRow.processed_at.is_(None))
            .subquery()
        )
        with self.store.read() as s:
            order = list(
                s.scalars(
                    select(waiting.c.id).order_by(waiting.c.turn, waiting.c.id).limit(limit)
                ).all()
            )
            if not order:
                return []
            rows = {
                r.id: r
                for r in s.scalars(select(AlertReceiptRow).where(AlertReceiptRow.id.in_(order)))
            }
            return [_receipt(rows[i]) for i in order if i in rows]

    def has_pending(self) -> bool:
        """Whether any receipt waits for its decision (one indexed row at most)."""
        with self.store.read() as s:
            first = s.scalars(
                select(AlertReceiptRow.id).where(AlertReceiptRow.processed_at.is_(None)).limit(1)
            ).first()
            return first is not None

    def undecided(self, ids: tuple[int, ...]) -> int:
        """How many of these receipts still wait for their decision."""
        if not ids:
            return 0
        with self.store.read() as s:
            count = s.scalar(
                select(func.count())
                .select_from(AlertReceiptRow)
                .where(AlertReceiptRow.id.in_(ids), AlertReceiptRow.processed_at.is_(None))
            )
            return int(count or 0)

    def instance(self, instance_id: str) -> AlertInstance | None:
        with self.store.read() as s:
            row = s.get(AlertInstanceRow, instance_id)
            return _instance(row) if row is not None else None

    def episodes(self, *, status: str, limit: int) -> list[tuple[AlertInstance, str | None]]:
        """Alert episodes of ``status`` (firing: newest start first; resolved: latest
        resolution first), at most ``limit``, each with the ``summary`` annotation of its
        latest notice (None when it had none): what the status page's alerts list shows."""
        order = (
            AlertInstanceRow.starts_at.desc()
            if status == "firing"
            else AlertInstanceRow.resolved_at.desc()
        )
        with self.store.read() as s:
            rows = s.scalars(
                select(AlertInstanceRow)
                .where(AlertInstanceRow.status == status)
                .order_by(order, AlertInstanceRow.id)
                .limit(limit)
            ).all()
            summaries: dict[str, str] = {}
            ids = [r.id for r in rows]
            if ids:
                notices = s.execute(
                    select(AlertReceiptRow.instance, AlertReceiptRow.annotations)
                    .where(AlertReceiptRow.instance.in_(ids))
                    .order_by(AlertReceiptRow.id)
                ).all()
                for instance, annotations in notices:  # the latest notice's wins
                    summary = (annotations or {}).get("summary")
                    if isinstance(summary, str) and summary:
                        summaries[instance] = summary
            return [(_instance(r), summaries.get(r.id)) for r in rows]

    def firing(self) -> list[AlertInstance]:
        with self.store.read() as s:
            rows = s.scalars(
                select(AlertInstanceRow)
                .where(AlertInstanceRow.status == "firing")
                .order_by(AlertInstanceRow.starts_at)
            ).all()
            return [_instance(r) for r in rows]

    # --- policy state --------------------------------------------------------------
    def policy_states(self) -> dict[str, PolicyState]:
        with self.store.read() as s:
            return {
                r.service: PolicyState(
                    last_action_at=_utc(r.last_action_at),
                    last_scale_out_firing_at=_utc(r.last_scale_out_firing_at),
                    baseline=r.baseline,
                    manual_scale_at=_utc(r.manual_scale_at),
                    manual_replicas=r.manual_replicas,
                )
                for r in s.scalars(select(ScalingStateRow)).all()
            }

    def policy_state(self, service: str) -> PolicyState:
        return self.policy_states().get(service, PolicyState())

    def resolved_instances(self, ids: list[str]) -> set[str]:
        with self.store.read() as s:
            return set(
                s.scalars(
                    select(AlertInstanceRow.id).where(
                        AlertInstanceRow.id.in_(ids), AlertInstanceRow.status == "resolved"
                    )
                ).all()
            )

    # --- the one write of a decision -----------------------------------------------
    @retry_on_race
    def commit(
        self,
        *,
        now: datetime,
        receipt: Receipt | None = None,
        decision: Decision | None = None,
        state: tuple[str, PolicyState] | None = None,
    ) -> Decision | None:
        """Mark ``receipt`` processed (updating its alert instance), apply ``decision``'s
        effect, record it and store the policy state: all or nothing.

        Returns the decision as recorded (refused if the service changed meanwhile), or
        None when the receipt had already been processed.
        """
        item = Commit(receipt, decision, state)
        with self.store.write() as tx:
            self._prefetch(tx, [item])
            return self._commit(tx, item, now)

    @retry_on_race
    def commit_many(self, items: list[Commit], *, now: datetime) -> None:
        """Several commits in one transaction (the decisions of one batch that do not
        act: one disk sync instead of one per alert)."""
        with self.store.write() as tx:
            self._prefetch(tx, items)
            for item in items:
                self._commit(tx, item, now)

    def _prefetch(self, tx: WriteTx, items: list[Commit]) -> None:
        """Load (and on PostgreSQL lock) the rows the commits touch, a few queries in all;
        ``tx.get`` then answers for each (found, or known to be absent) without asking the
        database once per row.

        The order is the store's lock order, the one ``update_service`` (service, then its
        policy state) and ``delete_service`` (service, then its replicas) follow too:
        the alert's own rows (receipts, instances: no other writer locks them), then the
        services, then their policy states, then the replicas drained, each in key order.
        A decision that locked the policy state before the service would deadlock with an
        owner's PATCH of that service."""
        receipts = [i.receipt for i in items if i.receipt is not None]
        services = {i.decision.service for i in items if i.decision and i.decision.service}
        services |= {i.state[0] for i in items if i.state is not None}
        drain = {rid for i in items if i.decision and i.decision.acts for rid in i.decision.drain}
        if drain:  # the drained replicas' services are locked before the replicas
            services |= set(
                tx.session.scalars(select(ReplicaRow.service).where(ReplicaRow.id.in_(drain)))
            )
        tx.preload(AlertReceiptRow, AlertReceiptRow.id, [r.id for r in receipts])
        tx.preload(AlertInstanceRow, AlertInstanceRow.id, [r.instance for r in receipts])
        tx.preload(ServiceRow, ServiceRow.name, services)
        tx.preload(ScalingStateRow, ScalingStateRow.service, services)
        tx.preload(ReplicaRow, ReplicaRow.id, drain)

    def _commit(self, tx: WriteTx, item: Commit, now: datetime) -> Decision | None:
        receipt, decision, state = item
        if receipt is not None:
            row = tx.get(AlertReceiptRow, receipt.id)
            if row is None or row.processed_at is not None:
                return None
            row.processed_at = now
            self._update_instance(tx, receipt, now)
        if decision is not None:
            decision = self._apply(tx, decision, now)
            self._record(tx, decision)
            if decision.new_state is not None and decision.service:
                self._put_state(tx, decision.service, decision.new_state)
        if state is not None:
            self._put_state(tx, *state)
        return decision

    def _update_instance(self, tx: WriteTx, receipt: Receipt, now: datetime) -> None:
        inst = tx.get(AlertInstanceRow, receipt.instance)
        if inst is None:
            inst = AlertInstanceRow(
                id=receipt.instance,
                fingerprint=receipt.fingerprint,
                alertname=receipt.alertname,
                service=receipt.labels.get("service"),
                labels=receipt.labels,
                status=receipt.status,
                starts_at=receipt.starts_at,
                first_seen_at=now,
                last_seen_at=now,
                resolved_at=now if receipt.status == "resolved" else None,
            )
            tx.add(inst, receipt.instance)
            return
        inst.last_seen_at = now
        if receipt.status == "resolved" and inst.status != "resolved":
            inst.status = "resolved"
            inst.resolved_at = now
        # A firing notice never re-opens a resolved instance: it arrived late.

    def _put_state(self, tx: WriteTx, service: str, state: PolicyState) -> None:
        row = scaling_state_row(tx, service)
        # "The last time" only moves forward: a state read before another decision's
        # write (a second controller deciding during a failover) does not take back its
        # cooldown or its scale-out alert.
        row.last_action_at = _later(_utc(row.last_action_at), state.last_action_at)
        row.last_scale_out_firing_at = _later(
            _utc(row.last_scale_out_firing_at), state.last_scale_out_firing_at
        )
        # The manual-scale fields belong to the service update (``Store._manual_scale``).
        # A state read before a manual scale carries the old baseline: the owner's wins.
        if _utc(row.manual_scale_at) == state.manual_scale_at:
            row.baseline = state.baseline

    def _apply(self, tx: WriteTx, d: Decision, now: datetime) -> Decision:
        if not d.acts or d.dry_run:
            return d
        if d.replicas_to is not None and d.service:
            svc = tx.get(ServiceRow, d.service)  # locked: decided on, then written
            current = svc.spec.get("replicas") if svc is not None and not svc.deleting else None
            manual = tx.get(ScalingStateRow, d.service)
            decided_on = d.new_state.manual_scale_at if d.new_state is not None else None
            if manual is not None and _utc(manual.manual_scale_at) != decided_on:
                return Decision(
                    action=d.action,
                    outcome="refused",
                    refusal="changed",
                    reason=f"{d.service} was scaled by hand while deciding (to "
                    f"{manual.manual_replicas}); not applied",
                    service=d.service,
                    rule=d.rule,
                    alert=d.alert,
                )
            if svc is None or current != d.replicas_from:
                return Decision(
                    action=d.action,
                    outcome="refused",
                    refusal="changed",
                    reason=f"{d.service} changed while deciding (now {current}); not applied",
                    service=d.service,
                    rule=d.rule,
                    alert=d.alert,
                )
            check_bounds(d.replicas_to, svc.spec["min_replicas"], svc.spec["max_replicas"])
            svc.spec = {**svc.spec, "replicas": d.replicas_to}
            svc.updated_at = now
            tx.add_event(
                f"service {d.service} scaled from {d.replicas_from} to {d.replicas_to}",
                kind="action",
                service=d.service,
                action="scale",
                outcome="ok",
                reason=d.reason,
                data={"from": d.replicas_from, "to": d.replicas_to, "rule": d.rule},
            )
            tx.changes.add("spec")
        for rid in d.drain:
            rep = tx.get(ReplicaRow, rid)
            if rep is not None:
                drain_replica(tx, rep, reason=d.reason, action="remove_replica")
        return d

    def _record(self, tx: WriteTx, d: Decision) -> None:
        data: dict[str, Any] = {
            "rule": d.rule,
            "refusal": d.refusal,
            "from": d.replicas_from,
            "to": d.replicas_to,
            "avoid_nodes": sorted(d.avoid_nodes),
            "drain": list(d.drain),
            "dry_run": d.dry_run,
        }
        if d.alert is not None:
            data["alert"] = decision_alert(d.alert)
        if d.service:
            policy = _policy_at(tx, d.service)
            if policy is not None:
                data["policy"] = policy
        tx.add_event(
            d.reason,
            kind="decision",
            service=d.service,
            action=str(d.action),
            outcome=d.outcome,
            reason=d.refusal or (f"rule {d.rule}" if d.rule else None),
            data=data,
        )

    # --- rules ---------------------------------------------------------------------
    def get_rules(self) -> tuple[dict[str, Any], str] | None:
        """The stored rules and where they came from, or None (the shipped default)."""
        with self.store.read() as s:
            row = s.get(MetaRow, RULES_KEY)
            if row is None:
                return None
            stored = json.loads(row.value)
            return stored["ruleset"], stored["source"]

    def put_rules(self, data: dict[str, Any], *, source: str) -> None:
        with self.store.write() as tx:
            row = tx.session.get(MetaRow, RULES_KEY)
            text = json.dumps({"ruleset": data, "source": source}, sort_keys=True)
            if row is not None and row.value == text:
                return
            if row is None:
                tx.session.add(MetaRow(key=RULES_KEY, value=text))
            else:
                row.value = text
            tx.add_event(
                f"alert rules replaced ({len(data.get('rules', []))} rule(s)) from {source}",
                kind="config",
                action="put_rules",
                outcome="ok",
                data={"source": source},
            )
