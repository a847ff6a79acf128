"""Small fake fleets for the pure policy (unit tests and the bench)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from orchestrify.models import (
    DesiredState,
    Node,
    NodeState,
    Replica,
    ReplicaState,
    ScalingPolicy,
    Service,
)

T0 = datetime(2026, 11, 21, 22, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def service(
    name: str = "web",
    *,
    replicas: int = 2,
    min_replicas: int = 1,
    max_replicas: int = 5,
    **policy: Any,
) -> Service:
    return Service(
        name=name,
        image="nginx:1",
        replicas=replicas,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        policy=ScalingPolicy(**policy),
        created_at=T0,
        updated_at=T0,
    )


def nodes(*names: str, state: NodeState = NodeState.READY) -> list[Node]:
    return [
        Node(id=f"id-{n}", name=n, address="127.0.0.1", state=state, created_at=T0) for n in names
    ]


def replica(
    rid: str,
    node: str,
    *,
    svc: str = "web",
    desired: DesiredState = DesiredState.RUN,
    state: ReplicaState = ReplicaState.HEALTHY,
) -> Replica:
    return Replica(
        id=rid,
        service=svc,
        node=f"id-{node}",
        state=state,
        desired=desired,
        created_at=T0,
        updated_at=T0,
    )
