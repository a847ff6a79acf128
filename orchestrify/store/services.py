"""Services: create, update (a new generation rolls out), roll back, scale, remove."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select

from orchestrify.errors import Conflict, InvalidSpec, NotFound
from orchestrify.models import (
    CONTAINER_FIELDS,
    REPLICAS_HARD_MAX,
    DesiredState,
    FieldError,
    Service,
    ServicePatch,
    ServiceSpec,
    check_bounds,
    container_spec,
    error_location,
)
from orchestrify.store.alert_tables import scaling_state_row
from orchestrify.store.engine import StoreCore, WriteTx, retry_on_race
from orchestrify.store.replicas import adopt_orphans_of, drain_replica
from orchestrify.store.rows import (
    replicas_by_service,
    replicas_of,
    service_drain_s,
    service_view,
    utcnow,
    way_out,
)
from orchestrify.store.tables import NodeRow, ReplicaRow, ServiceRow

__all__ = ["ServicesPart", "manual_scale"]


def manual_scale(tx: WriteTx, name: str, *, replicas: int, now: datetime) -> None:
    """Remember that the owner set ``name``'s count by hand (even to the count it has:
    that confirms it), for the scaling policy: alert episodes that began before now
    no longer act on scale, and an open autoscaling episode's baseline (where
    scale-in stops) becomes ``replicas``."""
    state = scaling_state_row(tx, name)  # the caller locked the service's row first
    state.manual_scale_at = now
    state.manual_replicas = replicas
    if state.baseline is not None and state.baseline != replicas:
        tx.add_event(
            f"autoscaling baseline of {name} moved from {state.baseline} to {replicas}: "
            "scaled by hand during a scaling episode; scale-in returns to it",
            kind="action",
            service=name,
            action="baseline",
            outcome="ok",
            data={"from": state.baseline, "to": replicas},
        )
        state.baseline = replicas


def _spec_changes(before: dict[str, Any], after: dict[str, Any]) -> str:
    """The container fields that differ, for an event: ``image a -> b, env (KEY)``. Env
    values are not shown (they may be secrets), only the keys that changed."""
    parts = []
    before, after = container_spec(before), container_spec(after)
    for key in CONTAINER_FIELDS:
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if key in ("env", "log_opts"):  # values may be secrets: only the keys
            old, new = old or {}, new or {}
            keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            parts.append(f"{key} ({', '.join(keys)})")
        else:
            parts.append(f"{key} {old} -> {new}")
    return ", ".join(parts) or "no container field differs"


def _invalid_from(exc: ValueError) -> InvalidSpec:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        loc = ".".join(error_location(first)) or None
        msg = str(first.get("msg", exc)).removeprefix("Value error, ")
        return InvalidSpec(f"{loc}: {msg}" if loc else msg, field=loc)
    return InvalidSpec(str(exc))


class ServicesPart(StoreCore):
    """The services and their rollouts."""

    @retry_on_race
    def create_service(self, spec: ServiceSpec) -> Service:
        now = utcnow()
        with self.write() as tx:
            tx.lock(f"service:{spec.name}")
            existing = tx.get(ServiceRow, spec.name)
            if existing is not None:
                if existing.deleting:
                    raise Conflict(
                        f"service {spec.name!r} is still being removed; retry in a few seconds"
                    )
                raise Conflict(f"service {spec.name!r} already exists")
            row = ServiceRow(
                name=spec.name, spec=spec.model_dump(mode="json"), created_at=now, updated_at=now
            )
            tx.session.add(row)
            tx.add_event(
                f"service {spec.name} created with {spec.replicas} replica(s) of {spec.image}",
                kind="action",
                service=spec.name,
                action="create_service",
                outcome="ok",
            )
            # Orphans of a service of this name (a store lost and the service re-created)
            # become its replicas now, before the reconciler places new ones beside them.
            for node in tx.session.scalars(select(NodeRow)).all():
                if any(o.get("service") == spec.name for o in node.orphans or []):
                    adopt_orphans_of(tx, node, services={spec.name: row}, now=now)
            tx.changes.add("spec")
            tx.session.flush()
            return service_view(row, replicas_of(tx.session, spec.name))

    def list_services(self) -> list[Service]:
        with self.read() as s:
            rows = s.scalars(
                select(ServiceRow).where(ServiceRow.deleting.is_(False)).order_by(ServiceRow.name)
            ).all()
            reps = replicas_by_service(s)
            return [service_view(r, reps.get(r.name, ())) for r in rows]

    def get_service(self, name: str) -> Service:
        with self.read() as s:
            row = s.get(ServiceRow, name)
            if row is None or row.deleting:
                raise NotFound(f"no service named {name!r}")
            return service_view(row, replicas_of(s, name))

    @retry_on_race
    def update_service(
        self, name: str, patch: ServicePatch, *, reason: str = "requested through the API"
    ) -> Service:
        with self.write() as tx:
            row = tx.get(ServiceRow, name)
            if row is None or row.deleting:
                raise NotFound(f"no service named {name!r}")
            current = ServiceSpec.model_validate(row.spec)
            changes = patch.changes()
            merged = current.model_dump() | changes
            # Counts the patch itself gets wrong are a 422; counts that are fine on their
            # own but clash with the stored ones (replicas 50 against a stored max of 10)
            # are a 409: the same body is accepted by a service with other bounds.
            r, lo, hi = (changes.get(k) for k in ("replicas", "min_replicas", "max_replicas"))
            try:  # (a count the patch leaves out cannot clash here)
                check_bounds(
                    r if r is not None else (lo if lo is not None else 0),
                    lo if lo is not None else 0,
                    hi if hi is not None else REPLICAS_HARD_MAX,
                )
            except FieldError as exc:
                raise InvalidSpec(f"{exc.field}: {exc}", field=exc.field) from exc
            try:
                check_bounds(merged["replicas"], merged["min_replicas"], merged["max_replicas"])
            except FieldError as exc:
                raise Conflict(
                    f"{exc.field}: {exc}, with the service's stored counts; patch "
                    "replicas, min_replicas and max_replicas together"
                ) from exc
            try:
                updated = ServiceSpec.model_validate(merged)
            except ValueError as exc:  # pydantic.ValidationError is a ValueError
                raise _invalid_from(exc) from exc
            # Only a change to what the containers run is a new generation (rolled out one
            # replica at a time); counts, policy, drain_s and max_per_node apply as they are.
            spec_fields = set(changes) & set(CONTAINER_FIELDS)
            rolled = any(changes[k] != current.model_dump()[k] for k in spec_fields)
            if rolled:
                # What a rollback returns to: the spec this generation bump leaves behind.
                row.previous_spec = container_spec(row.spec)
                row.previous_generation = row.generation
                row.generation += 1
            row.spec = updated.model_dump(mode="json")
            row.updated_at = utcnow()
            if "replicas" in changes:
                manual_scale(tx, name, replicas=updated.replicas, now=row.updated_at)
            if "replicas" in changes and changes["replicas"] != current.replicas:
                tx.add_event(
                    f"service {name} scaled from {current.replicas} "
                    f"to {updated.replicas}: {reason}",
                    kind="action",
                    service=name,
                    action="scale",
                    outcome="ok",
                    reason=reason,
                    data={"from": current.replicas, "to": updated.replicas},
                )
            others = sorted(set(changes) - {"replicas"})
            reps = replicas_of(tx.session, name)
            if others:
                live = any(r.desired == DesiredState.RUN for r in reps)
                rollout = (
                    f"; rolling update to generation {row.generation}, one replica at a time"
                    if rolled and live
                    else ""
                )
                tx.add_event(
                    f"service {name} updated: {', '.join(others)}{rollout}",
                    kind="action",
                    service=name,
                    action="update_service",
                    outcome="ok",
                )
            tx.changes.add("spec")
            return service_view(row, reps)

    @retry_on_race
    def rollback_service(self, name: str, *, reason: str = "requested through the API") -> Service:
        """Put the container fields back to the spec before the last update (Swarm's
        ``docker service rollback``) as a new generation, so the usual rolling update
        replaces every replica, the failed new ones included. Scaling fields, ``drain_s``
        and ``max_per_node`` keep their current values. The spec replaced becomes the
        previous one: rolling back twice returns to the update."""
        with self.write() as tx:
            row = tx.get(ServiceRow, name)
            if row is None or row.deleting:
                raise NotFound(f"no service named {name!r}")
            previous = row.previous_spec
            if not previous:
                raise Conflict(
                    f"service {name!r} has no previous spec to roll back to (it has not "
                    "been updated since it was created, or since the store was upgraded); "
                    f"change it with `orchestrify service update {name}` instead"
                )
            current = dict(row.spec)
            try:
                restored = ServiceSpec.model_validate(current | container_spec(previous))
            except ValueError as exc:  # pydantic.ValidationError is a ValueError
                raise _invalid_from(exc) from exc
            back_to = row.previous_generation
            row.previous_spec = container_spec(current)
            row.previous_generation = row.generation
            row.generation += 1
            row.spec = restored.model_dump(mode="json")
            # The paused rollout was of the generation just left; say so no more.
            row.paused_generation = None
            row.pause_reason = None
            row.updated_at = utcnow()
            reps = replicas_of(tx.session, name)
            live = any(r.desired == DesiredState.RUN for r in reps)
            rollout = (
                f"; rolling update to generation {row.generation}, one replica at a time"
                if live
                else ""
            )
            of = f" of generation {back_to}" if back_to is not None else ""
            tx.add_event(
                f"service {name} rolled back to the spec{of}: "
                f"{_spec_changes(current, row.spec)}{rollout}",
                kind="action",
                service=name,
                action="rollback",
                outcome="ok",
                reason=reason,
                data={
                    "from_generation": row.previous_generation,
                    "spec_of_generation": back_to,
                    "generation": row.generation,
                },
            )
            tx.changes.add("spec")
            return service_view(row, reps)

    def scale_service(self, name: str, replicas: int, *, reason: str) -> Service:
        return self.update_service(name, ServicePatch(replicas=replicas), reason=reason)

    @retry_on_race
    def delete_service(self, name: str) -> None:
        """Mark a service for removal: its replicas drain out of Nginx, then stop."""
        with self.write() as tx:
            row = tx.get(ServiceRow, name)
            if row is None or row.deleting:
                raise NotFound(f"no service named {name!r}")
            row.deleting = True
            drain_s = service_drain_s(row.spec)
            for rep in replicas_of(tx.session, name):
                # One event for the service below, not one per replica.
                drain_replica(tx, rep, reason=f"service {name} removed", quiet=True)
            tx.add_event(
                f"service {name} removed; its replicas drain for {drain_s:g}s, then stop",
                kind="action",
                service=name,
                action="remove_service",
                outcome="ok",
            )
            tx.changes.update({"spec", "state"})

    @retry_on_race
    def purge_deleted_services(self) -> list[str]:
        """Drop services marked for removal once none of their replicas is left."""
        with self.write() as tx:
            gone = []
            doomed = select(ServiceRow).where(ServiceRow.deleting.is_(True))
            if tx.locks_rows:
                doomed = doomed.order_by(ServiceRow.name).with_for_update()
            for row in tx.session.scalars(doomed):
                left = tx.session.scalars(
                    select(ReplicaRow.id).where(ReplicaRow.service == row.name).limit(1)
                ).first()
                if left is None:
                    tx.session.delete(row)
                    gone.append(row.name)
            return gone

    @retry_on_race
    def pause_rollout(self, service: str, *, generation: int, reason: str) -> bool:
        """Pause ``service``'s rolling update to ``generation``: no more old replicas are
        replaced until a new generation. Said once: False when already paused (or when the
        service has moved on to another generation since)."""
        with self.write() as tx:
            row = tx.get(ServiceRow, service)
            if row is None or row.generation != generation:
                return False
            if row.paused_generation == generation:
                return False
            row.paused_generation = generation
            row.pause_reason = reason
            tx.add_event(
                f"rolling update of {service} to generation {generation} paused: {reason}; "
                f"the old replicas keep serving. To go on: {way_out(row)}",
                kind="decision",
                service=service,
                action="rolling_update",
                outcome="failed",
                reason=reason,
                data={"generation": generation},
            )
            tx.changes.add("state")
            return True
