"""The services pages' view models: each service's figures, its replicas and its event
timeline, already written out as words (a colour only repeats what a word says)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from orchestrify.controller.ui.fleet import REPLICA_TONES
from orchestrify.models import DesiredState, Event, Replica, Service, UpdateState
from orchestrify.rollout import healthy_counts, rollout_text

__all__ = [
    "EventRow",
    "ReplicaRow",
    "ServiceRow",
    "alert_words",
    "as_utc",
    "event_rows",
    "policy_words",
    "replica_rows",
    "service_row",
    "service_rows",
    "time_text",
]

ROLLOUT_TONES = {
    UpdateState.COMPLETED: "ok",
    UpdateState.UPDATING: "pending",
    UpdateState.PAUSED: "bad",
}
# An event's outcome as its tone: words the store writes (ok | refused | failed | info).
OUTCOME_TONES = {"ok": "ok", "refused": "pending", "failed": "bad", "info": "info"}
DATA_VALUE_MAX = 500  # characters of one data value shown; the API has the whole of it


@dataclass(frozen=True)
class ServiceRow:
    """One service's figures, as the list and its detail page show them."""

    name: str
    image: str
    healthy: int
    desired: int
    min_replicas: int
    max_replicas: int
    rollout: str  # the rolling update's state, as the API says it: completed | updating | paused
    rollout_tone: str
    up_to_date: str  # the CLI's UP-TO-DATE column: "2/3 (updating)"
    update_message: str | None
    generation: int
    latency_target_ms: str
    scaling_tone: str  # "ok" when every desired replica is healthy, else "pending"
    # The policy's figures the charts draw their lines from (ui.charts).
    latency_target_s: float
    requests_per_replica: int
    request_window_s: int
    # What a rollback returns to: the generation before the last update and its image
    # (None: never updated, nothing to roll back to).
    previous_generation: int | None = None
    previous_image: str | None = None


@dataclass(frozen=True)
class ReplicaRow:
    """One replica of a service."""

    id: str
    node: str
    address: str
    generation: int
    state: str
    tone: str
    desired: str
    restarts: int
    error: str | None


@dataclass(frozen=True)
class EventRow:
    """One event of a service's timeline."""

    id: int
    time: str  # ISO 8601, for <time datetime>
    time_text: str
    kind: str
    action: str
    outcome: str
    tone: str
    reason: str | None
    message: str
    data: tuple[tuple[str, str], ...]


def _ms(value: float) -> str:
    return f"{value:g} ms"


def service_row(service: Service, healthy: int) -> ServiceRow:
    state = service.update_state
    return ServiceRow(
        name=service.name,
        image=service.image,
        healthy=healthy,
        desired=service.replicas,
        min_replicas=service.min_replicas,
        max_replicas=service.max_replicas,
        rollout=str(state),
        rollout_tone=ROLLOUT_TONES.get(state, "pending"),
        up_to_date=rollout_text(
            updated=service.updated_replicas, desired=service.replicas, state=str(state)
        ),
        update_message=service.update_message,
        generation=service.generation,
        latency_target_ms=_ms(service.policy.latency_target_ms),
        scaling_tone="ok" if healthy >= service.replicas else "pending",
        latency_target_s=service.policy.latency_target_ms / 1000,
        requests_per_replica=service.policy.requests_per_replica,
        request_window_s=service.policy.request_window_s,
        previous_generation=service.previous_generation if service.previous_spec else None,
        previous_image=_previous_image(service.previous_spec),
    )


def _previous_image(previous: Mapping[str, Any] | None) -> str | None:
    image = (previous or {}).get("image")
    return image if isinstance(image, str) else None


def service_rows(services: Iterable[Service], replicas: Iterable[Replica]) -> list[ServiceRow]:
    """The list's rows, in the order of ``services``."""
    healthy = healthy_counts((r.service, str(r.state), str(r.desired)) for r in replicas)
    return [service_row(s, healthy.get(s.name, 0)) for s in services]


def replica_rows(replicas: Iterable[Replica]) -> list[ReplicaRow]:
    """A service's replicas: those meant to run first, then by id."""
    rows = []
    ordered = sorted(replicas, key=lambda r: (r.desired != DesiredState.RUN, r.id))
    for replica in ordered:
        tone = REPLICA_TONES.get(replica.state, "pending")
        if replica.desired != DesiredState.RUN:
            tone = "leaving"
        rows.append(
            ReplicaRow(
                id=replica.id,
                node=replica.node_name or replica.node,
                address=replica.address or "—",
                generation=replica.generation,
                state=str(replica.state),
                tone=tone,
                desired=str(replica.desired),
                restarts=replica.restarts,
                error=replica.error,
            )
        )
    return rows


def _value(value: Any) -> str:
    """A data value as text: scalars as they are, lists and objects as compact JSON."""
    if value is None:
        text = "—"
    elif isinstance(value, str):
        text = value
    elif isinstance(value, bool | int | float):
        text = json.dumps(value)
    else:
        text = json.dumps(value, ensure_ascii=False, default=str, separators=(", ", ": "))
    if len(text) > DATA_VALUE_MAX:
        text = text[: DATA_VALUE_MAX - 1] + "…"
    return text


def _data(data: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    words = {"alert": alert_words, "policy": policy_words}
    return tuple(
        (str(key), words[key](value) if key in words else _value(value))
        for key, value in data.items()
    )


def as_utc(time: datetime) -> datetime:
    """A stored time in UTC (the store keeps naive UTC on SQLite)."""
    return time.replace(tzinfo=UTC) if time.tzinfo is None else time.astimezone(UTC)


def time_text(time: datetime, *, zone: bool = True) -> str:
    """A time as the pages write it: UTC, to the second (``zone``: with "UTC" after it;
    without, for a column whose heading says so)."""
    return as_utc(time).strftime("%Y-%m-%d %H:%M:%S" + (" UTC" if zone else ""))


def _iso_text(value: Any) -> str | None:
    """An ISO 8601 time of an event's data as the pages write times (None: not one)."""
    if not isinstance(value, str):
        return None
    try:
        return time_text(datetime.fromisoformat(value))
    except ValueError:
        return None


def alert_words(alert: Any) -> str:
    """A decision's alert (``orchestrify.store.alerts.decision_alert``) in words: which
    alert, in what status, about what, and when its episode began."""
    if not isinstance(alert, Mapping):
        return _value(alert)
    about = ", ".join(f"{k} {alert[k]}" for k in ("service", "replica", "node") if alert.get(k))
    began = _iso_text(alert.get("starts_at"))
    return _value(
        f"{alert.get('name', '?')} {alert.get('status', '?')}"
        + (f" ({about})" if about else "")
        + (f", episode began {began}" if began else "")
    )


def _number(value: Any) -> str:
    """A count or a number of seconds as words: 600.0 as "600", 0.5 as "0.5"."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return _value(value)


def policy_words(policy: Any) -> str:
    """The policy state a decision met, in words: its cooldown (and until when it ran),
    its scale-in stabilization (and the earliest scale-in), the episode's baseline."""
    if not isinstance(policy, Mapping):
        return _value(policy)
    parts = []
    cooldown = policy.get("cooldown_s")
    if cooldown is not None:
        until = _iso_text(policy.get("cooldown_until"))
        last = _iso_text(policy.get("last_action_at"))
        parts.append(
            f"cooldown {_number(cooldown)} s"
            + (f", last action {last}, until {until}" if until and last else ", no action yet")
        )
    up = policy.get("scale_up_stabilization_s")
    if up:
        parts.append(f"scale-out stabilization {_number(up)} s")
    down = policy.get("scale_down_stabilization_s")
    if down is not None:
        not_before = _iso_text(policy.get("scale_in_not_before"))
        parts.append(
            f"scale-in stabilization {_number(down)} s"
            + (f", no scale-in before {not_before}" if not_before else "")
        )
    baseline = policy.get("baseline")
    if baseline is not None:
        parts.append(f"baseline {_number(baseline)} replicas (where scale-in returns)")
    return _value("; ".join(parts) or "no scaling state yet")


def event_rows(events: Iterable[Event]) -> list[EventRow]:
    """A service's events, newest first (as given oldest first by the store)."""
    rows = []
    for event in sorted(events, key=lambda e: e.id, reverse=True):
        when = as_utc(event.time)
        outcome = event.outcome or "info"
        rows.append(
            EventRow(
                id=event.id,
                time=when.isoformat(),
                time_text=time_text(when),
                kind=event.kind,
                action=event.action or "—",
                outcome=outcome,
                tone=OUTCOME_TONES.get(outcome, "info"),
                reason=event.reason,
                message=event.message,
                data=_data(event.data),
            )
        )
    return rows
