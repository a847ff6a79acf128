"""Node liveness as this controller process saw it, on a monotonic clock.

Acting on silence is the most dangerous decision a controller makes, so it is made
from what this process itself observed, never from wall-clock times in the store:

- ``NodeLiveness`` records when this process last saw each node (a heartbeat, a
  registration, or a stored ``last_heartbeat`` that changed since it last looked, which
  is how a heartbeat taken by another controller on the same store shows). A node known
  when the process starts counts as seen at start, so a restarted controller gives every
  node a full ``node_timeout`` and more before it calls one silent, and a wall-clock step
  changes nothing.
- ``judge`` turns silences into decisions: nothing during the startup grace; when more
  than ``mass_silence_threshold`` of the live nodes are silent at once, they are
  ``unreachable`` (the problem is more likely the controller's or the network's: keep
  their replicas, Kubernetes' unhealthy-zone rule); otherwise silent nodes are
  ``not_ready``.
- ``RescheduleLimiter`` is the token bucket that lets replicas move off not-ready nodes
  only so many nodes per minute (Kubernetes' eviction rate limit).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from orchestrify.models import NodeState

__all__ = ["LIVE_STATES", "LivenessVerdict", "NodeLiveness", "RescheduleLimiter"]

Clock = Callable[[], float]


class Beat(Protocol):
    """What liveness reads of a node (a ``Node`` of the reconciler's snapshot)."""

    @property
    def id(self) -> str: ...
    @property
    def state(self) -> NodeState: ...
    @property
    def last_heartbeat(self) -> datetime | None: ...


# States of a node that is (or may be) running its replicas: the denominator of the
# silent share.
LIVE_STATES = frozenset({NodeState.READY, NodeState.DRAINING, NodeState.UNREACHABLE})


@dataclass(frozen=True)
class LivenessVerdict:
    """What one look at the fleet decided. ``silent_s`` maps every silent live node's id
    to the seconds this process has not seen it."""

    unreachable: tuple[str, ...] = ()
    not_ready: tuple[str, ...] = ()
    silent_s: dict[str, float] = field(default_factory=dict)
    live: int = 0
    in_grace: bool = False

    @property
    def mass_silence(self) -> bool:
        return bool(self.unreachable)


class NodeLiveness:
    """When this process last saw each node, on ``clock`` (monotonic seconds).

    Thread-safe: heartbeats arrive on API worker threads while the reconciler judges.
    """

    def __init__(
        self,
        *,
        timeout_s: float,
        startup_grace_s: float,
        mass_silence_threshold: float,
        clock: Clock = time.monotonic,
    ) -> None:
        if not 0 < mass_silence_threshold <= 1:
            raise ValueError("mass_silence_threshold must be in (0, 1]")
        self.timeout_s = timeout_s
        self.startup_grace_s = startup_grace_s
        self.threshold = mass_silence_threshold
        self.clock = clock
        self.started = clock()
        self._seen: dict[str, float] = {}
        self._stored: dict[str, datetime | None] = {}
        self._first_look = True
        self._lock = threading.Lock()

    def restart(self) -> None:
        """Start over as a controller that just started: the startup grace begins now,
        every node counts as seen now. Called when this controller is elected leader, so
        a failover is a controller restart to the liveness rules (grace, mass silence),
        and replaces no container whose node simply had not reached the new leader."""
        with self._lock:
            self.started = self.clock()
            self._seen.clear()
            self._stored.clear()
            self._first_look = True

    def seen(self, node_id: str) -> None:
        """The node spoke to this process just now (heartbeat or registration)."""
        with self._lock:
            self._seen[node_id] = self.clock()

    def forget(self, node_id: str) -> None:
        with self._lock:
            self._seen.pop(node_id, None)
            self._stored.pop(node_id, None)

    def uptime_s(self) -> float:
        return self.clock() - self.started

    def in_grace(self) -> bool:
        """True while the process is younger than the startup grace: nobody is silent yet."""
        return self.uptime_s() < self.startup_grace_s

    def silent_for(self, node_id: str) -> float:
        """Seconds since this process last saw the node (since start if never)."""
        with self._lock:
            return self.clock() - self._seen.get(node_id, self.started)

    def _observe(self, nodes: Iterable[Beat]) -> None:
        """Count a changed stored heartbeat time as a sighting (now, on our clock): only a
        change counts, never the wall-clock value itself. A node in the store at the
        first look counts as seen at start; one met later (registered through another
        controller) as seen when met."""
        now = self.clock()
        with self._lock:
            first_met = self.started if self._first_look else now
            self._first_look = False
            for n in nodes:
                if n.id not in self._seen:
                    self._seen[n.id] = first_met
                elif self._stored.get(n.id, n.last_heartbeat) != n.last_heartbeat:
                    self._seen[n.id] = max(self._seen[n.id], now)
                self._stored[n.id] = n.last_heartbeat

    def judge(self, nodes: Iterable[Beat]) -> LivenessVerdict:
        """Which live nodes become ``unreachable`` and which ``not_ready`` now."""
        nodes = list(nodes)
        self._observe(nodes)
        live = [n for n in nodes if n.state in LIVE_STATES]
        if self.in_grace():
            return LivenessVerdict(live=len(live), in_grace=True)
        silent = {n.id: self.silent_for(n.id) for n in live}
        silent = {i: s for i, s in silent.items() if s > self.timeout_s}
        if not silent:
            return LivenessVerdict(live=len(live))
        states = {n.id: n.state for n in live}
        if len(silent) / len(live) > self.threshold:
            # Mass silence: keep everything where it is; a heartbeat brings each one back.
            newly = tuple(sorted(i for i in silent if states[i] != NodeState.UNREACHABLE))
            return LivenessVerdict(unreachable=newly, silent_s=silent, live=len(live))
        return LivenessVerdict(not_ready=tuple(sorted(silent)), silent_s=silent, live=len(live))


class RescheduleLimiter:
    """A token bucket: at most ``nodes_per_minute`` nodes admitted for rescheduling per
    minute, with a burst of one (as Kubernetes' eviction limiter), so a fleet losing many
    nodes one after the other moves their replicas a node at a time, not all at once."""

    def __init__(self, *, nodes_per_minute: float, clock: Clock = time.monotonic) -> None:
        if nodes_per_minute <= 0:
            raise ValueError("nodes_per_minute must be > 0")
        self.rate_per_s = nodes_per_minute / 60.0
        self.burst = 1.0
        self.clock = clock
        self._tokens = self.burst
        self._at = clock()

    def try_take(self) -> bool:
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate_per_s)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
