"""The fleet table's view model: what the template shows of each node and replica, as
words first (a colour only repeats what a word says), never the models themselves."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from orchestrify.models import DesiredState, Node, NodeState, Replica, ReplicaState

__all__ = ["NodeRow", "ReplicaChip", "fleet_rows", "heartbeat_age", "human_bytes"]

STATE_WORDS = {
    NodeState.READY: "ready",
    NodeState.NOT_READY: "not ready",
    NodeState.UNREACHABLE: "unreachable",
    NodeState.DRAINING: "draining",
}
# The row's tone (a CSS class): "down" for a node whose replicas cannot be trusted to
# serve, "draining" for one that is being emptied.
NODE_TONES = {
    NodeState.READY: "ready",
    NodeState.NOT_READY: "down",
    NodeState.UNREACHABLE: "down",
    NodeState.DRAINING: "draining",
}
REPLICA_TONES = {
    ReplicaState.HEALTHY: "ok",
    ReplicaState.ASSIGNED: "pending",
    ReplicaState.STARTING: "pending",
    ReplicaState.UNHEALTHY: "bad",
    ReplicaState.FAILED: "bad",
    ReplicaState.STOPPING: "leaving",
}


@dataclass(frozen=True)
class ReplicaChip:
    """One replica on a node: "service · short id", its state and what is desired."""

    replica_id: str
    label: str
    state: str
    desired: str
    tone: str


@dataclass(frozen=True)
class NodeRow:
    """One node of the table, every figure already written out."""

    id: str
    name: str
    address: str
    state: str
    tone: str
    removing: bool
    heartbeat: str
    heartbeat_at: str | None
    cpu: str
    memory: str
    disk: str
    replicas: tuple[ReplicaChip, ...]
    action: str  # "drain" or "activate": the path of its button's form
    action_label: str


def human_bytes(count: int | None) -> str:
    """``count`` bytes in binary units, three significant digits ("7.50 GiB")."""
    if count is None:
        return "—"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    if unit == "B":
        return f"{int(value)} B"
    return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"


def heartbeat_age(last: datetime | None, now: datetime) -> str:
    """How long ago ``last`` was, in the largest whole unit ("3 s ago", "2 min ago")."""
    if last is None:
        return "never"
    if last.tzinfo is None:  # stored times are UTC
        last = last.replace(tzinfo=UTC)
    seconds = max(0, int((now - last).total_seconds()))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 2 * 3600:
        return f"{seconds // 60} min ago"
    if seconds < 2 * 86_400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86_400} days ago"


def _memory(node: Node) -> str:
    total, free = node.memory_total, node.memory_free
    if total is None:
        return "—"
    if free is None:
        return f"— / {human_bytes(total)}"
    return f"{human_bytes(max(0, total - free))} / {human_bytes(total)}"


def _short_id(replica: Replica) -> str:
    # Replica ids are "<service>-<8 hex>": the suffix is what tells two apart.
    rest = replica.id.removeprefix(f"{replica.service}-")
    return rest[:12]


def _chip(replica: Replica) -> ReplicaChip:
    tone = REPLICA_TONES.get(replica.state, "pending")
    if replica.desired != DesiredState.RUN:
        tone = "leaving"
    return ReplicaChip(
        replica_id=replica.id,
        label=f"{replica.service} · {_short_id(replica)}",
        state=str(replica.state),
        desired=str(replica.desired),
        tone=tone,
    )


def fleet_rows(
    nodes: Iterable[Node], replicas: Iterable[Replica], *, now: datetime
) -> list[NodeRow]:
    """The table's rows, in the order of ``nodes``, each with its replicas' chips."""
    by_node: dict[str, list[ReplicaChip]] = defaultdict(list)
    for replica in replicas:
        by_node[replica.node].append(_chip(replica))
    rows = []
    for node in nodes:
        draining = node.state == NodeState.DRAINING
        rows.append(
            NodeRow(
                id=node.id,
                name=node.name,
                address=node.address,
                state=STATE_WORDS.get(node.state, str(node.state)),
                tone=NODE_TONES.get(node.state, "down"),
                removing=node.removing,
                heartbeat=heartbeat_age(node.last_heartbeat, now),
                heartbeat_at=node.last_heartbeat.isoformat() if node.last_heartbeat else None,
                cpu="—" if node.cpu_percent is None else f"{node.cpu_percent:.0f} %",
                memory=_memory(node),
                disk=human_bytes(node.disk_free),
                replicas=tuple(by_node.get(node.id, ())),
                action="activate" if draining else "drain",
                action_label="Activate" if draining else "Drain",
            )
        )
    return rows
