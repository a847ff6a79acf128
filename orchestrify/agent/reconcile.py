"""The node's reconcile loop: desired (assignments) vs actual (containers, probes).

``decide`` is a pure function of one replica's record and the time: it returns what to
do as a value. ``NodeReconciler`` applies those values through the engine, one task per
replica, so a replica whose image pull hangs or fails never holds up the others, and
records each outcome on the replica (kopf's style: success, retry after a delay, or
permanent failure).

What may be removed. A container is removed only on an order of the controller that
owns the cluster (its store's ``cluster_id``, which every container carries as a label):

- a replica it assigns with ``desired: stop``;
- a replica it assigned and no longer does (same cluster, a node it knows), or a
  container labelled with its cluster that none of its replicas claims;
- an orphan whose container id it lists in ``Assignments.prune``.

Everything else is an *orphan*, kept running and reported: the containers the agent had
when it met a controller of another cluster or one that did not know its node id, and
containers of another cluster (or of an older build, without the label) that nothing
assigns. The orphan set is kept on disk, so an agent restart keeps them orphans.

After an agent restart the assignments saved on disk are *provisional*: they let the
agent adopt (and probe) what already runs, but nothing is started, replaced or removed
for them until the controller's current assignments arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from orchestrify.agent.docker_engine import (
    LABEL_CLUSTER,
    LABEL_GENERATION,
    LABEL_NODE,
    LABEL_REPLICA,
    LABEL_RESTARTS,
    LABEL_SERVICE,
    LABEL_SPEC,
    ContainerEvent,
    ContainerInfo,
    ContainerSpec,
    Engine,
)
from orchestrify.agent.log_collector import container_logging
from orchestrify.agent.metrics import AgentMetrics
from orchestrify.agent.probe import Prober
from orchestrify.agent.settings import HealSettings
from orchestrify.errors import OrchestrifyError
from orchestrify.models import (
    DEFAULT_STOP_GRACE_S,
    Assignment,
    DesiredState,
    Orphan,
    ReplicaReport,
    ReplicaState,
)

log = logging.getLogger(__name__)

STOPPED = "stopped"  # reported once a replica told to stop has no container any more
# Grace (SIGTERM to SIGKILL) for a container replaced in place because it died or failed
# its probes, capped below the service's stop_grace_s: it is out of Nginx already (an
# unhealthy replica leaves the upstreams), it is often hung, and with a fixed host port
# its replacement cannot start before it is gone. A drained, scaled-in or replaced-by-
# update replica gets its service's full stop_grace_s.
REPLACE_GRACE_S = 2.0
# Containers replaced in place (died, failed their probes, another spec) that are kept,
# stopped, per replica, so that `service logs` shows what they wrote before they went.
# Swarm keeps 5 tasks per slot; containers cost disk, so fewer.
KEEP_RETIRED = 2


# --- what to do: values -------------------------------------------------------------
@dataclass(frozen=True)
class Nothing:
    """Desired and actual agree."""


@dataclass(frozen=True)
class WaitUntil:
    """A replacement is due but backing off until ``at`` (monotonic seconds)."""

    at: float


@dataclass(frozen=True)
class Start:
    """Run a (new) container for the replica, removing its old one first if any."""

    replacement: bool
    reason: str


@dataclass(frozen=True)
class Remove:
    """Remove the replica's container: it was told to stop."""


@dataclass(frozen=True)
class GiveUp:
    """Too many replacements in the window: report ``failed``, the controller reschedules."""

    reason: str


Action = Nothing | WaitUntil | Start | Remove | GiveUp


@dataclass
class LocalReplica:
    """What the agent knows of one assigned replica; mutated only on the event loop."""

    assignment: Assignment
    container: ContainerInfo | None = None
    state: str = ReplicaState.STARTING
    error: str | None = None
    restarts: int = 0
    failures: int = 0  # consecutive failed probes
    unhealthy_reason: str | None = None  # set when probes decided it must be replaced
    started_at: float | None = None  # monotonic time its current container started
    attempts: list[float] = field(default_factory=list)  # replacement attempt times
    next_probe_at: float = 0.0
    busy: bool = False  # an engine action is in flight
    probing: bool = False
    epoch: int = 0  # bumped whenever an action changed the container
    failed_at: float | None = None  # monotonic time it was last given up on (``failed``)
    crashloops: int = 0  # restarts of a failed replica while the controller was away
    # From the assignments saved before a restart, not yet confirmed by the controller:
    # only adopted and probed, never started, replaced or removed.
    provisional: bool = False

    @property
    def id(self) -> str:
        return self.assignment.replica

    @property
    def service(self) -> str:
        return self.assignment.service


def decide(
    rep: LocalReplica, *, now: float, heal: HealSettings, controller_away: bool = False
) -> Action:
    """What one replica needs now. Pure: no I/O, the clock is an argument.

    ``controller_away``: the controller has not answered lately, so nobody will move a
    replica given up on; the agent then keeps restarting it with a crash-loop backoff.
    """
    desired = rep.assignment.desired
    if desired == DesiredState.STOP:
        return Remove() if rep.container is not None else Nothing()
    if rep.state == ReplicaState.FAILED:
        if not controller_away or desired != DesiredState.RUN:
            return Nothing()  # the controller stops it and places it elsewhere
        return _crashloop(rep, now=now, heal=heal)
    container = rep.container
    if container is None:
        if desired == DesiredState.DRAIN:
            return Nothing()  # never start a replica that is on its way out
        reason = "no container yet" if not rep.attempts else (rep.error or "start failed")
        return _replace_or_give_up(rep, now=now, heal=heal, reason=reason, first=True)
    if desired != DesiredState.RUN:
        return Nothing()  # draining: leave it as it is until told to stop
    if not container.running:
        code = f" (exit code {container.exit_code})" if container.exit_code is not None else ""
        return _replace_or_give_up(
            rep, now=now, heal=heal, reason=f"container {container.status}{code}"
        )
    if rep.unhealthy_reason is not None:
        return _replace_or_give_up(rep, now=now, heal=heal, reason=rep.unhealthy_reason)
    # A spec change (image, env...) is an update, not a failure: no backoff, no count.
    wanted = rep.assignment.spec_hash
    if wanted is not None:
        # The hash decides. A container without the label (an older build's) is kept: a
        # replica's own spec never changes in place, and an orphan adopted without a
        # known hash is replaced by the controller's rolling update, gracefully.
        label = container.labels.get(LABEL_SPEC)
        if label is not None and label != wanted:
            return Start(replacement=False, reason=f"spec changed ({label} -> {wanted})")
        return Nothing()
    gen = container.generation  # a controller from before spec hashes
    if gen is not None and gen != rep.assignment.generation:
        return Start(replacement=False, reason=f"spec changed (generation {gen} -> new)")
    return Nothing()


def _crashloop(rep: LocalReplica, *, now: float, heal: HealSettings) -> Action:
    """A failed replica with no controller to move it: restart it in place, after a delay
    that grows with every such restart up to a cap, as the kubelet does."""
    due = (rep.failed_at if rep.failed_at is not None else now) + heal.crashloop_backoff(
        rep.crashloops
    )
    if now < due:
        return WaitUntil(due)
    return Start(
        replacement=True,
        reason=f"failed, and the controller is unreachable: crash-loop restart "
        f"{rep.crashloops + 1} (last: {rep.error or 'no error recorded'})",
    )


def _replace_or_give_up(
    rep: LocalReplica, *, now: float, heal: HealSettings, reason: str, first: bool = False
) -> Action:
    recent = [t for t in rep.attempts if now - t < heal.replacement_window_s]
    if len(recent) >= heal.max_replacements:
        return GiveUp(
            f"{len(recent)} replacements within {heal.replacement_window_s:g}s; last: {reason}"
        )
    if recent:
        due = recent[-1] + heal.backoff(len(recent))
        if now < due:
            return WaitUntil(due)
    return Start(replacement=not first, reason=reason)


# --- applying them ------------------------------------------------------------------
class NodeReconciler:
    """Keeps the node's containers in line with its assignments, and heals them."""

    def __init__(
        self,
        *,
        engine: Engine,
        prober: Prober,
        heal: HealSettings,
        metrics: AgentMetrics,
        advertise_address: str,
        bind_address: str = "0.0.0.0",
        extra_labels: dict[str, str] | None = None,
        log_max_size: str = "10m",
        log_max_file: int = 3,
        log_collector: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.prober = prober
        self.heal = heal
        self.metrics = metrics
        self.advertise_address = advertise_address
        self.bind_address = bind_address
        self.extra_labels = dict(extra_labels or {})
        self.log_max_size = log_max_size
        self.log_max_file = log_max_file
        self.log_collector = log_collector
        self.clock = clock
        self.node_id: str | None = None
        self.cluster_id: str | None = None  # of the controller whose orders it follows
        self.replicas: dict[str, LocalReplica] = {}
        # True once the controller's current assignments arrived; until then nothing
        # unassigned is removed and nothing is started.
        self.assignments_known = False
        # Set by the agent while the controller does not answer: replicas given up on are
        # then restarted in place (crash-loop backoff) instead of waiting to be moved.
        self.controller_away = False
        self.unclaimed: dict[str, ContainerInfo] = {}  # labelled containers not yet ours
        self.orphans: dict[str, ContainerInfo] = {}  # kept running, reported, never removed
        self.prune: set[str] = set()  # orphan container ids the controller wants removed
        self.changed: set[str] = set()  # replica ids whose report changed
        self.orphans_changed = True  # the orphan set must be reported (and saved)
        self.on_change: Callable[[], None] = lambda: None
        self.on_orphans: Callable[[set[str]], None] = lambda ids: None  # saves them
        self._remembered_orphans: set[str] = set()  # ids saved before a restart
        self._released: set[str] = set()  # containers of replicas the controller removed
        self._removing: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._next_due: float | None = None
        # The controller's own list has arrived (not only the one saved before a restart).
        self.assignments_current = False

    # --- inputs ---
    def set_assignments(
        self,
        assignments: Iterable[Assignment],
        *,
        current: bool = True,
        prune: Iterable[str] = (),
    ) -> None:
        """Take the controller's latest list for this node, and the orphans it wants
        removed. ``current=False``: the list saved before a restart, which only lets the
        agent adopt what runs (provisional replicas) until the controller answers."""
        wanted = {a.replica: a for a in assignments}
        if current:
            self.assignments_current = True
        for rid, a in wanted.items():
            rep = self.replicas.get(rid)
            if rep is None:
                self.replicas[rid] = LocalReplica(assignment=a, provisional=not current)
                self._mark(rid)
            else:
                if rep.assignment != a:
                    rep.assignment = a
                    self._mark(rid)
                if current and rep.provisional:
                    rep.provisional = False
                    self._mark(rid)
        for rid in list(self.replicas):
            if rid not in wanted:
                rep = self.replicas.pop(rid)
                self.metrics.forget(rep.service, rid)
                if rep.container is not None:
                    if current and not rep.provisional:
                        self._released.add(rep.container.id)  # this controller removed it
                    self.unclaimed[rep.container.id] = rep.container  # decided at next step
        if current:
            self.assignments_known = True
            self.prune = set(prune)
        self.wake()

    def remember_orphans(self, container_ids: Iterable[str]) -> None:
        """The orphan ids saved before a restart: those containers stay orphans."""
        self._remembered_orphans = set(container_ids)

    def orphan_everything(self, reason: str) -> None:
        """The controller is a stranger (another cluster, or it did not know this node):
        every container the agent has becomes an orphan, kept running. Assignments are
        forgotten: the stranger's own arrive next."""
        count = 0
        for rid, rep in list(self.replicas.items()):
            if rep.busy:
                continue  # its container, once started, is decided on at the next step
            self.replicas.pop(rid)
            self.metrics.forget(rep.service, rid)
            if rep.container is not None:
                self._add_orphan(rep.container)
                count += 1
        for cid, c in list(self.unclaimed.items()):
            del self.unclaimed[cid]
            self._add_orphan(c)
            count += 1
        self._released.clear()
        self.assignments_known = False
        self.prune = set()
        if count:
            log.warning(
                "keeping every container as an orphan",
                extra={"reason": reason, "containers": count},
            )
        self.wake()

    def epochs(self) -> dict[str, int]:
        """Snapshot to pass to ``observe``: records changed since are not second-guessed."""
        return {rid: rep.epoch for rid, rep in self.replicas.items()}

    def observe(
        self, containers: Iterable[ContainerInfo], *, epochs: dict[str, int] | None = None
    ) -> None:
        """Take the engine's view (at start-up: adoption; later: a periodic resync).

        ``epochs`` is what ``epochs()`` returned before the engine was listed: a replica
        whose container changed while the list was taken is left alone.
        """
        current = {
            r.container.id: r
            for r in self.replicas.values()
            if r.container and (epochs is None or epochs.get(r.id) == r.epoch)
        }
        mine = {r.container.id for r in self.replicas.values() if r.container}
        listed = {c.id: c for c in containers}
        for cid in list(self.orphans):
            if cid not in listed and cid not in self._removing:
                del self.orphans[cid]  # removed by hand (docker rm): nothing to keep
                self._orphans_changed()
        for cid, c in listed.items():
            if cid in self.orphans or cid in self._remembered_orphans:
                if cid not in mine and cid not in self._removing:
                    self._add_orphan(c)
                continue
            rep = current.get(cid)
            if rep is not None:
                if (
                    not rep.busy
                    and rep.container is not None
                    and rep.container.running
                    and not c.running
                ):
                    rep.container = c
                    self._mark(rep.id)
            elif (
                cid not in mine
                and cid not in self._removing
                and not self._busy_replica(c.replica)
                and not self._changed_since(c.replica, epochs)
            ):
                self.unclaimed[cid] = c
        for cid, rep in current.items():
            if cid not in listed and not rep.busy and rep.container is not None:
                # Removed behind our back (docker rm): the same as dead.
                rep.container = dataclasses.replace(rep.container, running=False, status="removed")
                self._mark(rep.id)
        if self._remembered_orphans:
            self._remembered_orphans.clear()  # the ones not listed are gone
            self._orphans_changed()
        self.wake()

    def retired_to_remove(self, retired: Iterable[ContainerInfo]) -> list[str]:
        """Of the containers kept for their logs, those to remove now: all of a replica
        this node no longer runs, and all but the ``KEEP_RETIRED`` newest of one it does.
        Nothing before the controller's own assignments have arrived: the list saved
        before a restart may lack a replica the node still runs."""
        if not self.assignments_current:
            return []
        by_replica: dict[str, list[ContainerInfo]] = {}
        for c in retired:
            by_replica.setdefault(c.replica, []).append(c)
        doomed: list[str] = []
        for rid, kept in by_replica.items():
            kept.sort(key=lambda c: c.restarts, reverse=True)
            doomed += [c.id for c in kept[KEEP_RETIRED if rid in self.replicas else 0 :]]
        return doomed

    def on_event(self, event: ContainerEvent) -> None:
        """A Docker event for one of the node's containers (called on the event loop)."""
        if event.action not in ("die", "destroy", "oom", "kill"):
            return
        if event.action == "kill":
            return  # the "die" that follows carries the exit code
        for rep in self.replicas.values():
            c = rep.container
            if c is not None and c.id == event.container_id and c.running:
                status = "removed" if event.action == "destroy" else "exited"
                rep.container = dataclasses.replace(
                    c, running=False, status=status, exit_code=event.exit_code
                )
                log.info(
                    "container died",
                    extra={"replica": rep.id, "service": rep.service, "exit_code": event.exit_code},
                )
                self._set_healthy(rep, False)
                self._mark(rep.id)
                self.wake()
                return

    def wake(self) -> None:
        self._wake.set()

    # --- the reconcile step ---
    def step(self) -> None:
        """Decide for every replica and start the engine work; never raises."""
        now = self.clock()
        self._next_due = None
        self._claim_or_remove_unclaimed()
        for rep in list(self.replicas.values()):
            if rep.busy:
                continue
            try:
                action = decide(rep, now=now, heal=self.heal, controller_away=self.controller_away)
            except Exception:
                log.exception("decision failed", extra={"replica": rep.id})
                continue
            if rep.provisional and not isinstance(action, Nothing):
                continue  # remembered from before a restart: wait for the controller
            if isinstance(action, Nothing):
                if rep.assignment.desired == DesiredState.STOP and rep.state != STOPPED:
                    rep.state = STOPPED
                    self._mark(rep.id)
                continue
            if isinstance(action, WaitUntil):
                self._next_due = (
                    action.at if self._next_due is None else min(self._next_due, action.at)
                )
                continue
            if isinstance(action, GiveUp):
                log.warning(
                    "giving up on replica", extra={"replica": rep.id, "reason": action.reason}
                )
                if rep.failed_at is not None and now - rep.failed_at > 2 * max(
                    self.heal.crashloop_backoff_s, default=0.0
                ):
                    rep.crashloops = 0  # it ran long enough since: a new crash loop
                rep.state = ReplicaState.FAILED
                rep.error = action.reason
                rep.failed_at = now
                self._set_healthy(rep, False)
                self._mark(rep.id)
                continue
            rep.busy = True
            self._spawn(self._apply(rep, action), name=f"replica-{rep.id}")

    async def run_forever(self) -> None:
        while True:
            timeout = 5.0
            if self._next_due is not None:
                timeout = max(0.0, min(timeout, self._next_due - self.clock()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            self.step()

    async def settle(self) -> None:
        """Wait for every engine action and probe in flight (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self, timeout_s: float = 10.0) -> None:
        """At shutdown: let the engine actions and probes in flight finish for up to
        ``timeout_s`` (so a container being started is either there or not, not left to
        a task destroyed with the event loop), then cancel what is left."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(list(self._tasks), timeout=timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if pending:
            log.warning("stopped with replica actions unfinished", extra={"count": len(pending)})

    def _claimable(self, c: ContainerInfo) -> LocalReplica | None:
        """The assigned replica that ``c`` runs and that has no container yet."""
        rep = self.replicas.get(c.replica)
        if (
            rep is not None
            and not rep.busy
            and rep.container is None
            and rep.assignment.desired != DesiredState.STOP
            and c.service == rep.service
        ):
            return rep
        return None

    def _claim(self, rep: LocalReplica, c: ContainerInfo) -> None:
        rep.container = c
        rep.restarts = max(rep.restarts, c.restarts)
        rep.started_at = self.clock()
        rep.next_probe_at = 0.0
        rep.state = ReplicaState.STARTING
        log.info("adopted container", extra={"replica": rep.id, "container": c.id[:12]})
        self._mark(rep.id)

    def _claim_or_remove_unclaimed(self) -> None:
        for cid, c in list(self.orphans.items()):
            rep = self._claimable(c)
            if rep is not None and not rep.provisional:  # adopted by the controller
                del self.orphans[cid]
                self._orphans_changed()
                self._claim(rep, c)
            elif cid in self.prune and self.assignments_known:
                del self.orphans[cid]
                self._orphans_changed()
                self._start_removal(c, why="orphan pruned on the controller's order")
        for cid, c in list(self.unclaimed.items()):
            rep = self.replicas.get(c.replica)
            if rep is not None and rep.busy:
                continue
            claimable = self._claimable(c)
            if claimable is not None:
                del self.unclaimed[cid]
                self._claim(claimable, c)
                continue
            if not self.assignments_known:
                continue  # nothing is removed before the controller's current answer
            del self.unclaimed[cid]
            told_to_stop = (
                rep is not None
                and rep.assignment.desired == DesiredState.STOP
                and c.service == rep.service
            )
            ours = self.cluster_id is not None and c.labels.get(LABEL_CLUSTER) == self.cluster_id
            if told_to_stop or cid in self._released or ours:
                # A known replica told to stop, one this controller removed, or a
                # container of this cluster that none of its replicas claims (a duplicate,
                # or a replica removed while the agent was away).
                self._released.discard(cid)
                self._start_removal(c, why="not assigned by the controller of its cluster")
            else:
                # Another cluster's, or an older build's (no cluster label): not this
                # controller's to remove.
                self._add_orphan(c)

    def _add_orphan(self, c: ContainerInfo) -> None:
        if self.orphans.get(c.id) != c:
            if c.id not in self.orphans:
                log.warning(
                    "keeping an orphaned container",
                    extra={"replica": c.replica, "service": c.service, "container": c.id[:12]},
                )
            self.orphans[c.id] = c
            self._orphans_changed()

    def _orphans_changed(self) -> None:
        self.orphans_changed = True
        try:
            self.on_orphans(set(self.orphans) | self._remembered_orphans)
        except Exception:  # saving must not stop the loop; the next change saves again
            log.exception("cannot save the orphan list")
        self.on_change()

    def _start_removal(self, c: ContainerInfo, *, why: str) -> None:
        self._removing.add(c.id)
        self._spawn(self._remove_orphan(c, why=why), name=f"remove-{c.id[:12]}")

    async def _remove_orphan(self, c: ContainerInfo, *, why: str) -> None:
        try:
            # Gracefully, as any stop: it may still finish requests Nginx sent it before
            # its replica was removed (the replica's own grace is not known any more).
            await self.engine.remove(c.id, grace_s=DEFAULT_STOP_GRACE_S)
            log.info(
                "removed container",
                extra={"replica": c.replica, "container": c.id[:12], "why": why},
            )
        except OrchestrifyError as exc:
            log.warning(
                "cannot remove container", extra={"container": c.id[:12], "error": str(exc)}
            )
            if c.id in self.prune:
                self._add_orphan(c)  # still an orphan; retried at the next step
            else:
                self.unclaimed[c.id] = c  # retried at the next step
        finally:
            self._removing.discard(c.id)

    async def _apply(self, rep: LocalReplica, action: Action) -> None:
        try:
            if isinstance(action, Remove):
                await self._remove(rep)
            elif isinstance(action, Start):
                await self._start(rep, action)
        except Exception as exc:  # an outcome, never the end of the loop
            log.exception("replica action failed", extra={"replica": rep.id})
            rep.error = str(exc)
            self._mark(rep.id)
        finally:
            rep.busy = False
            rep.epoch += 1
            self.wake()

    async def _remove(self, rep: LocalReplica) -> None:
        assert rep.container is not None
        try:
            await self.engine.remove(rep.container.id, grace_s=rep.assignment.stop_grace_s)
        except OrchestrifyError as exc:
            rep.error = str(exc)
            self._mark(rep.id)
            return
        log.info("stopped and removed replica", extra={"replica": rep.id, "service": rep.service})
        rep.container = None
        rep.state = STOPPED
        self._set_healthy(rep, False)
        self._mark(rep.id)

    async def _start(self, rep: LocalReplica, action: Start) -> None:
        a = rep.assignment
        now = self.clock()
        if action.replacement:
            rep.attempts.append(now)  # counts towards backoff and giving up
        if rep.state == ReplicaState.FAILED:
            rep.crashloops += 1  # a crash-loop restart (the controller is away)
            rep.failed_at = now
        log.info(
            "replacing replica" if action.replacement else "starting replica",
            extra={"replica": rep.id, "service": a.service, "reason": action.reason},
        )
        old = rep.container
        restarts = rep.restarts + (1 if action.replacement else 0)
        removing: asyncio.Task[None] | None = None
        # A healthy container replaced by a spec change gets the full grace; a dead or
        # failing one a short one (see REPLACE_GRACE_S).
        grace = min(a.stop_grace_s, REPLACE_GRACE_S) if action.replacement else a.stop_grace_s
        try:
            if old is not None:
                if a.host_port is None:
                    # Each attempt has its own container name, so the replacement starts
                    # while the old container is removed: recovery is not serialized on it.
                    removing = asyncio.get_running_loop().create_task(
                        self.engine.remove(old.id, grace_s=grace, keep_logs=True)
                    )
                else:
                    # A fixed host port is free only then.
                    await self.engine.remove(old.id, grace_s=grace, keep_logs=True)
                rep.container = None
            await self.engine.ensure_image(a.image)
            info = await self.engine.run(self._spec(a, restarts))
        except OrchestrifyError as exc:
            if removing is not None:
                await self._finish_removal(removing, old)
            log.warning("replica did not start", extra={"replica": rep.id, "error": str(exc)})
            if not action.replacement:
                rep.attempts.append(now)  # a failed first start counts as well
            rep.error = str(exc)
            rep.state = ReplicaState.STARTING if old is None else ReplicaState.UNHEALTHY
            self._set_healthy(rep, False)
            self._mark(rep.id)
            return
        if removing is not None:
            await self._finish_removal(removing, old)
        if action.replacement:
            self.metrics.replacements.labels(a.service).inc()
        if self.replicas.get(rep.id) is not rep:
            # Dropped while it started (the controller removed it, or a stranger made
            # everything orphans): decided on like any container nobody claims.
            self.unclaimed[info.id] = info
            return
        rep.container = info
        rep.restarts = restarts
        rep.state = ReplicaState.STARTING
        rep.error = None
        rep.failures = 0
        rep.unhealthy_reason = None
        rep.started_at = self.clock()
        rep.next_probe_at = 0.0
        self._mark(rep.id)

    async def _finish_removal(
        self, removing: asyncio.Task[None], old: ContainerInfo | None
    ) -> None:
        try:
            await removing
        except OrchestrifyError as exc:
            # The old container is not ours any more: the next sync removes it as unclaimed.
            log.warning(
                "cannot remove replaced container",
                extra={"container": old.id[:12] if old else "?", "error": str(exc)},
            )

    def _spec(self, a: Assignment, restarts: int) -> ContainerSpec:
        assert self.node_id is not None, "the node id is set before any container starts"
        labels = {
            **self.extra_labels,
            LABEL_SERVICE: a.service,
            LABEL_REPLICA: a.replica,
            LABEL_NODE: self.node_id,
            LABEL_GENERATION: str(a.generation),
            LABEL_RESTARTS: str(restarts),
        }
        if self.cluster_id:
            labels[LABEL_CLUSTER] = self.cluster_id
        if a.spec_hash:
            labels[LABEL_SPEC] = a.spec_hash  # the service's spec: the collector is not in it
        log_setup = container_logging(
            service=a.service,
            log_driver=a.log_driver,
            log_opts=a.log_opts,
            collector=self.log_collector,
            local_max_size=self.log_max_size,
            local_max_file=self.log_max_file,
        )
        return ContainerSpec(
            name=f"orchestrify-{a.replica}-{restarts}",
            image=a.image,
            env={**a.env, "ORCHESTRIFY_REPLICA": a.replica, "ORCHESTRIFY_SERVICE": a.service},
            port=a.port,
            host_port=a.host_port,
            bind_address=self.bind_address,
            labels=labels,
            memory_mb=a.memory_mb,
            cpus=a.cpus,
            log_max_size=self.log_max_size,
            log_max_file=self.log_max_file,
            log_driver=log_setup.driver,
            log_opts=log_setup.opts,
        )

    # --- health probes ---
    def probe_due(self) -> list[asyncio.Task[None]]:
        """Start the probes that are due; returns their tasks."""
        now = self.clock()
        started = []
        for rep in self.replicas.values():
            c = rep.container
            if (
                rep.busy
                or rep.probing
                or c is None
                or not c.running
                or c.host_port is None
                or rep.state in (ReplicaState.FAILED, STOPPED)
                or rep.assignment.desired == DesiredState.STOP
                or now < rep.next_probe_at
            ):
                continue
            rep.probing = True
            started.append(self._spawn(self._probe(rep, c), name=f"probe-{rep.id}"))
        return started

    async def probe_forever(self) -> None:
        tick = min(self.heal.startup_probe_interval_s, self.heal.fault_interval_s)
        while True:
            self.probe_due()
            # Wake exactly when the next probe is due (at most ``tick`` later, so new
            # containers are noticed), not on a coarse tick that stretches the period.
            now = self.clock()
            due = [r.next_probe_at for r in self.replicas.values() if r.next_probe_at > now]
            await asyncio.sleep(max(0.005, min([tick, *(d - now for d in due)])))

    async def _probe(self, rep: LocalReplica, c: ContainerInfo) -> None:
        try:
            url = f"http://{self.advertise_address}:{c.host_port}{rep.assignment.health_path}"
            probed_at = self.clock()
            result = await self.prober.probe(url)
            self.metrics.probe_duration.observe(result.duration_s)
            if rep.container is None or rep.container.id != c.id or rep.busy:
                return  # replaced meanwhile: this answer is about a container now gone
            now = self.clock()
            starting = rep.state == ReplicaState.STARTING
            if result.ok:
                rep.failures = 0
                if rep.state != ReplicaState.HEALTHY:
                    log.info("replica healthy", extra={"replica": rep.id, "service": rep.service})
                    rep.state = ReplicaState.HEALTHY
                    rep.error = None
                    self._mark(rep.id)
                self._set_healthy(rep, True)
            else:
                in_grace = (
                    starting
                    and rep.started_at is not None
                    and now - rep.started_at < self.heal.startup_grace_s
                )
                if not in_grace:
                    rep.failures += 1
                    if rep.failures >= self.heal.unhealthy_threshold:
                        reason = (
                            f"{rep.failures} failed health probes on "
                            f"{rep.assignment.health_path}: {result.detail}"
                        )
                        if rep.state != ReplicaState.UNHEALTHY:
                            log.warning(
                                "replica unhealthy", extra={"replica": rep.id, "reason": reason}
                            )
                        rep.state = ReplicaState.UNHEALTHY
                        rep.error = reason
                        rep.unhealthy_reason = reason
                        self._set_healthy(rep, False)
                        self._mark(rep.id)
                        self.wake()
            fast = rep.state == ReplicaState.STARTING
            # Fixed rate: one probe every fault_interval from the start of the last one,
            # so the probe's own duration does not stretch the period.
            rep.next_probe_at = probed_at + (
                self.heal.startup_probe_interval_s if fast else self.heal.fault_interval_s
            )
        finally:
            rep.probing = False

    # --- outputs ---
    def report(self, rep: LocalReplica) -> ReplicaReport:
        c = rep.container
        address = (
            f"{self.advertise_address}:{c.host_port}" if c is not None and c.host_port else None
        )
        return ReplicaReport(
            id=rep.id,
            state=rep.state,
            address=address,
            container_id=c.id if c is not None else None,
            error=rep.error,
            restarts=rep.restarts,
        )

    def take_reports(self, *, full: bool) -> list[ReplicaReport]:
        """Reports of the replicas that changed (or all of them), clearing the changed set.
        A provisional replica without a container is not reported: the agent does not
        know yet whether it is still meant to run here."""
        ids = list(self.replicas) if full else [r for r in self.changed if r in self.replicas]
        self.changed.clear()
        return [
            self.report(rep)
            for rep in (self.replicas[r] for r in ids)
            if not (rep.provisional and rep.container is None)
        ]

    def orphan(self, c: ContainerInfo) -> Orphan:
        return Orphan(
            container_id=c.id,
            replica=c.replica,
            service=c.service,
            address=f"{self.advertise_address}:{c.host_port}" if c.host_port else None,
            spec_hash=c.labels.get(LABEL_SPEC),
            image=c.image or None,
            cluster_id=c.labels.get(LABEL_CLUSTER),
            running=c.running,
        )

    def containers(self) -> list[Orphan]:
        """Every labelled container the agent knows of (claimed, unclaimed, orphaned),
        described as an orphan would be: sent at registration."""
        seen: dict[str, ContainerInfo] = {**self.unclaimed, **self.orphans}
        for rep in self.replicas.values():
            if rep.container is not None:
                seen[rep.container.id] = rep.container
        return [self.orphan(c) for c in seen.values()]

    def take_orphans(self, *, full: bool) -> list[Orphan] | None:
        """Every orphan, when the set changed since the last call (or ``full``); else None."""
        if not (full or self.orphans_changed):
            return None
        self.orphans_changed = False
        return [self.orphan(c) for c in self.orphans.values()]

    def running_count(self) -> int:
        return sum(1 for r in self.replicas.values() if r.container and r.container.running)

    def _changed_since(self, replica: str, epochs: dict[str, int] | None) -> bool:
        rep = self.replicas.get(replica)
        return epochs is not None and rep is not None and epochs.get(replica) != rep.epoch

    def _busy_replica(self, replica: str) -> bool:
        rep = self.replicas.get(replica)
        return rep is not None and rep.busy

    def _set_healthy(self, rep: LocalReplica, healthy: bool) -> None:
        self.metrics.replica_healthy.labels(rep.service, rep.id).set(1 if healthy else 0)

    def _mark(self, replica_id: str) -> None:
        self.changed.add(replica_id)
        self.on_change()

    def _spawn(self, coro: object, *, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
