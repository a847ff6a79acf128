"""The agent program: register, heartbeat, watch assignments, report, heal.

It talks to the controller only through ``AsyncControllerClient`` and to Docker only
through ``DockerEngine``. The controller may vanish at any time: the agent keeps
probing and healing from its last known assignments, retries with backoff, and
registers again when the controller no longer knows it (401/404).

Registration is idempotent: before its first registration the agent picks its node id
and node token and saves them (``state.new_identity``), then sends them every time, so a
retry after a lost answer (or after a crash before it came) is answered as the first
try, never refused. The controller keeps a presented valid token; the agent saves what
it answers.

A controller that answers registration with another cluster id than the one saved, or
says it did not know the node id, is a stranger: the containers the agent has become
orphans (kept running, reported), never removed for being "unassigned". A controller of
a protocol this agent cannot serve (or that refuses this agent's) gets nothing applied:
the agent logs why and retries, its containers running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psutil

from orchestrify.agent.address import detect_address
from orchestrify.agent.docker_engine import ContainerEvent, DockerEngine, Engine
from orchestrify.agent.logs_api import AgentApp, LogsEngine, start_server
from orchestrify.agent.metrics import AgentMetrics
from orchestrify.agent.probe import HttpProber
from orchestrify.agent.reconcile import NodeReconciler
from orchestrify.agent.settings import AgentSettings
from orchestrify.agent.state import (
    NodeIdentity,
    load_assignments,
    load_identity,
    load_orphans,
    new_identity,
    save_assignments,
    save_identity,
    save_orphans,
)
from orchestrify.client import AsyncControllerClient
from orchestrify.errors import (
    Conflict,
    NotFound,
    OrchestrifyError,
    Unauthorized,
    VersionMismatch,
)
from orchestrify.models import (
    Assignments,
    Heartbeat,
    NodeCredentials,
    NodeRegistration,
    ReplicaReports,
)
from orchestrify.protocol import MIN_PROTOCOL_VERSION

log = logging.getLogger(__name__)
T = TypeVar("T")

RESYNC_ENGINE_S = 10.0  # a missed Docker event is noticed at the latest after this
FALLBACK_ADDRESS = "127.0.0.1"  # before the first detection: reaches published ports anyway


class Agent:
    """One node's agent. ``run()`` until cancelled; containers outlive it on purpose."""

    def __init__(self, settings: AgentSettings, *, engine: Engine | None = None) -> None:
        self.settings = settings
        self.metrics = AgentMetrics()
        self._engine = engine
        self.identity: NodeIdentity | None = None
        self.reconciler: NodeReconciler | None = None
        self.metrics_port: int | None = None
        # The bearer key of the logs API (agent_url /v1/), from the controller's answer
        # to registration: kept in memory only, never logged; None until then.
        self.agent_key: str | None = None
        self._report_now = asyncio.Event()
        self._register_lock = asyncio.Lock()
        self._registrations = 0
        self._full_next = True  # the first report, and the first after registering, is full
        # Set while the controller answers; cleared by a failed call. Loops backing off
        # wait on it, so the first call that gets through wakes the others at once.
        self._reachable = asyncio.Event()
        # The address replicas publish on: pinned, or detected (and followed) towards the
        # controller; the fallback only serves local healing before the first detection.
        self.address: str = settings.advertise_address or FALLBACK_ADDRESS

    async def run(self) -> None:
        s = self.settings
        s.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        engine = self._engine or DockerEngine(s.docker_url)
        prober = HttpProber(timeout_s=s.heal.probe_timeout_s)
        client = AsyncControllerClient(
            s.controller_url,
            s.join_token,
            component="agent",
            min_protocol=MIN_PROTOCOL_VERSION,
            ca=s.ca,
        )
        if not s.pinned:
            with contextlib.suppress(OrchestrifyError):  # registering detects it again
                self.address = await asyncio.to_thread(detect_address, client.ring.preferred())
        rec = NodeReconciler(
            engine=engine,
            prober=prober,
            heal=s.heal,
            metrics=self.metrics,
            advertise_address=self.address,
            bind_address=s.bind_address,
            extra_labels=s.container_labels,
            log_max_size=s.log_max_size,
            log_max_file=s.log_max_file,
            log_collector=s.log_collector,
        )
        rec.on_change = self._report_now.set
        rec.on_orphans = lambda ids: save_orphans(s.state_dir, ids)
        self.reconciler = rec
        stop_metrics = self._serve_metrics(engine)
        stop_events: Callable[[], None] | None = None
        tasks: list[asyncio.Task[Any]] = []
        try:
            self.identity = load_identity(s.state_dir)
            if self.identity is not None and not self.identity.pending:
                # Known node: adopt and probe what runs right away, controller or not.
                # The saved assignments only claim running containers: nothing is started
                # for them before the controller says they are still this node's.
                rec.cluster_id = self.identity.cluster_id
                rec.remember_orphans(load_orphans(s.state_dir))
                stop_events = await self._start_local(rec, engine, self.identity.node_id)
                saved = load_assignments(s.state_dir)
                if saved is not None:
                    rec.set_assignments(saved, current=False)
                tasks += self._local_tasks(rec, engine)
            await self._with_controller("register", lambda: self._register(client), client)
            assert self.identity is not None
            if stop_events is None:
                stop_events = await self._start_local(rec, engine, self.identity.node_id)
                tasks += self._local_tasks(rec, engine)
            tasks += [
                asyncio.create_task(self._heartbeat_loop(client, rec), name="heartbeat"),
                asyncio.create_task(self._watch_loop(client, rec), name="watch"),
                asyncio.create_task(self._report_loop(client, rec), name="report"),
            ]
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await rec.aclose()
            if stop_events is not None:
                stop_events()
            stop_metrics()
            await prober.aclose()
            await client.aclose()
            if self._engine is None and isinstance(engine, DockerEngine):
                engine.close()
            log.info("agent stopped; its containers keep running")

    # --- local side: engine and probes ---
    async def _start_local(
        self, rec: NodeReconciler, engine: Engine, node_id: str
    ) -> Callable[[], None]:
        rec.node_id = node_id
        stop: Callable[[], None] = lambda: None  # noqa: E731
        if isinstance(engine, DockerEngine):
            loop = asyncio.get_running_loop()

            def hand_over(event: ContainerEvent) -> None:
                loop.call_soon_threadsafe(rec.on_event, event)  # from the events thread

            stop = engine.watch_events(node_id, hand_over)
        containers = await self._retry_engine(lambda: engine.list_containers(node_id))
        rec.observe(containers)  # adoption: these are claimed, not duplicated
        log.info(
            "agent watching its containers",
            extra={"node_id": node_id, "containers": len(containers)},
        )
        return stop

    def _local_tasks(self, rec: NodeReconciler, engine: Engine) -> list[asyncio.Task[Any]]:
        return [
            asyncio.create_task(rec.run_forever(), name="reconcile"),
            asyncio.create_task(rec.probe_forever(), name="probes"),
            asyncio.create_task(self._resync_loop(rec, engine), name="engine-resync"),
        ]

    async def _resync_loop(self, rec: NodeReconciler, engine: Engine) -> None:
        assert rec.node_id is not None
        while True:
            await asyncio.sleep(RESYNC_ENGINE_S)
            epochs = rec.epochs()
            try:
                containers = await engine.list_containers(rec.node_id)
            except OrchestrifyError as exc:
                log.warning("cannot list containers", extra={"error": str(exc)})
                continue
            rec.observe(containers, epochs=epochs)
            await self._prune_retired(rec, engine)

    async def _prune_retired(self, rec: NodeReconciler, engine: Engine) -> None:
        """Remove the replaced containers kept for their logs that are no longer kept."""
        assert rec.node_id is not None
        try:
            for cid in rec.retired_to_remove(await engine.retired_containers(rec.node_id)):
                await engine.remove(cid)
                log.info(
                    "removed a replaced container kept for its logs", extra={"container": cid[:12]}
                )
        except OrchestrifyError as exc:
            log.warning("cannot prune replaced containers", extra={"error": str(exc)})

    async def _retry_engine(self, fn: Callable[[], Awaitable[T]]) -> T:
        delays = self.settings.controller_backoff_s
        attempt = 0
        while True:
            try:
                return await fn()
            except OrchestrifyError as exc:
                delay = delays[min(attempt, len(delays) - 1)]
                log.warning("Docker engine not usable; retrying", extra={"error": str(exc)})
                attempt += 1
                await asyncio.sleep(delay)

    def _serve_metrics(self, engine: Engine) -> Callable[[], None]:
        """Serve /metrics and the logs API (``logs_api``) on ``metrics_port``; returns
        the function that stops them."""
        port = self.settings.metrics_port
        if port is None:
            return lambda: None
        app = AgentApp(
            registry=self.metrics.registry,
            engine=engine if isinstance(engine, LogsEngine) else None,
            node_id=lambda: self.identity.node_id if self.identity else None,
            key=lambda: self.agent_key,
        )
        server = start_server(app, address=self.settings.bind_address, port=port)
        self.metrics_port = server.port
        return server.stop

    # --- controller side ---
    async def _with_controller(
        self, what: str, call: Callable[[], Awaitable[T]], client: AsyncControllerClient
    ) -> T:
        """Call until it works: back off while unreachable, register again on 401/404."""
        delays = self.settings.controller_backoff_s
        attempt = 0
        while True:
            seen = self._registrations
            try:
                result = await call()
            except (Unauthorized, NotFound) as exc:
                if what == "register":
                    log.error("registration refused", extra={"error": str(exc)})
                else:
                    log.warning("controller does not know us; registering again")
                    await self._reregister(client, seen)
                    continue
            except VersionMismatch as exc:
                # Nothing is applied; the containers keep running while we retry.
                if attempt == 0 or attempt % 10 == 0:
                    log.error(
                        f"{what} refused: versions do not match; containers keep running",
                        extra={"error": str(exc)},
                    )
            except OrchestrifyError as exc:
                self._controller_lost(exc)
                if isinstance(exc, Conflict) and what == "register":
                    # Our node id is known with another token, or our name is another
                    # node's: retried, the containers keep running meanwhile, and
                    # `orchestrify node rm ID --force` on the controller lets us back in.
                    log.error("registration refused; retrying", extra={"error": str(exc)})
                elif attempt == 0 or attempt % 10 == 0:
                    log.warning(f"{what} failed; retrying", extra={"error": str(exc)})
            else:
                self._controller_answered()
                return result
            delay = delays[min(attempt, len(delays) - 1)] * random.uniform(0.8, 1.2)
            # Woken early when another loop gets through: the controller is back.
            self._reachable.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reachable.wait(), delay)
            attempt += 1

    def _controller_lost(self, exc: Exception) -> None:
        """A call failed: heal on our own (crash-loop restarts) until it answers again."""
        self._reachable.clear()
        rec = self.reconciler
        if rec is not None and not rec.controller_away:
            log.warning(
                "controller unreachable; healing locally until it answers",
                extra={"error": str(exc)},
            )
            rec.controller_away = True
            rec.wake()

    def _controller_answered(self) -> None:
        """A call got through. After an outage, tell the controller everything at once
        (replicas replaced or moved meanwhile, new addresses), not at the next resync."""
        self._reachable.set()
        rec = self.reconciler
        if rec is not None and rec.controller_away:
            log.info("controller answers again; sending a full report")
            rec.controller_away = False
            self._full_next = True
            self._report_now.set()
            rec.wake()

    async def _reregister(self, client: AsyncControllerClient, seen: int) -> None:
        async with self._register_lock:
            if self._registrations == seen:  # nobody else did it meanwhile
                await self._with_controller("register", lambda: self._register(client), client)

    def _follow_address(self, address: str) -> None:
        """Publish replicas at ``address`` from now on (reports and probes)."""
        if address != self.address:
            log.warning("this host's address changed", extra={"old": self.address, "new": address})
            self.address = address
            if self.reconciler is not None:
                self.reconciler.advertise_address = address

    async def _register(self, client: AsyncControllerClient) -> None:
        s = self.settings
        if not s.pinned:
            # Raises NodeUnreachable while there is no route: retried like the call.
            urls = client.ring.preferred()  # the route to the controller in use first
            self._follow_address(await asyncio.to_thread(detect_address, urls))
        client.set_token(s.join_token)
        if self.identity is None:
            # Picked and saved before the first send: a retry (after a lost answer, or a
            # crash before it came) sends the same id and token, which the controller
            # answers as the first try, never with a second node or a 409.
            picked = new_identity()
            save_identity(s.state_dir, picked)
            self.identity = picked
        sent = self.identity
        reg = NodeRegistration(
            name=s.name,
            address=self.address,
            node_id=sent.node_id,
            # Proves the saved node id is ours: a controller that knows the id refuses
            # it (409) without its token; one that does not (a new node, a wiped store)
            # makes the node under this id with this token.
            node_token=sent.node_token,
            cpus=psutil.cpu_count(),
            memory_total=psutil.virtual_memory().total,
            agent_url=(
                f"http://{self.address}:{self.metrics_port}"
                if self.metrics_port is not None
                else None
            ),
            cluster_id=sent.cluster_id,
            containers=self.reconciler.containers() if self.reconciler else [],
        )
        # Sent again (to this or another controller) after a timeout: the same id and
        # token, so the controller answers the repeat as the first try (same node, same
        # token, same ``known``), without writing anything twice.
        body = await client.request(
            "POST", "/v1/nodes/register", json=reg.model_dump(), idempotent=True
        )
        creds = NodeCredentials.model_validate(body)
        # A controller older than the logs API sends none: its /v1/ then answers 503.
        self.agent_key = creds.agent_key
        identity = NodeIdentity(
            node_id=creds.node_id, node_token=creds.node_token, cluster_id=creds.cluster_id
        )
        # A pending identity was never confirmed: nothing ran under it, no stranger to
        # fear (a new node is known=False by definition).
        previous = None if sent.pending else sent
        if identity.node_id != sent.node_id:
            log.warning(
                "controller gave another node id than the one sent",
                extra={"old": sent.node_id, "new": identity.node_id},
            )
        rec = self.reconciler
        if previous is not None and rec is not None:
            stranger = None
            if previous.cluster_id and previous.cluster_id != creds.cluster_id:
                stranger = (
                    f"the controller's cluster id is {creds.cluster_id}, not "
                    f"{previous.cluster_id} (a new or lost store)"
                )
            elif not creds.known:
                stranger = f"the controller did not know node id {previous.node_id}"
            if stranger is not None:
                rec.orphan_everything(stranger)
        if rec is not None:
            rec.cluster_id = creds.cluster_id
        save_identity(s.state_dir, identity)
        self.identity = identity
        client.set_token(identity.node_token)
        self._registrations += 1
        self._full_next = True  # tell the (maybe new) controller everything
        self._report_now.set()
        log.info(
            "registered",
            extra={
                "node_id": identity.node_id,
                "node_name": s.name,
                "cluster_id": creds.cluster_id,
                "known": creds.known,
                "controller_version": creds.controller_version,
                "protocol": creds.protocol_version,
            },
        )

    def _node_path(self, suffix: str) -> str:
        assert self.identity is not None
        return f"/v1/nodes/{self.identity.node_id}/{suffix}"

    async def _heartbeat_loop(self, client: AsyncControllerClient, rec: NodeReconciler) -> None:
        psutil.cpu_percent(interval=None)  # primes the counter; the first value is 0
        while True:
            urls = client.ring.preferred()  # the route to the controller in use first
            hb = await asyncio.to_thread(self._heartbeat, rec.running_count(), urls)
            if hb.address is not None:
                self._follow_address(hb.address)

            async def send(hb: Heartbeat = hb) -> None:
                await client.request(
                    "POST", self._node_path("heartbeat"), json=hb.model_dump(), idempotent=True
                )

            await self._with_controller("heartbeat", send, client)
            await asyncio.sleep(self.settings.heartbeat_interval_s)

    def _heartbeat(
        self, replica_count: int, controller_urls: tuple[str, ...] | None = None
    ) -> Heartbeat:
        """What the heartbeat says; unpinned, with the address detected now towards the
        first reachable of ``controller_urls`` (default: the settings' order; the last
        address known when detection fails: the controller keeps what it has)."""
        address: str | None = None
        if not self.settings.pinned:
            try:
                address = detect_address(controller_urls or self.settings.controller_url)
            except OrchestrifyError as exc:
                log.warning("cannot detect this host's address", extra={"error": str(exc)})
                address = self.address
        mem = psutil.virtual_memory()
        try:
            disk_free: int | None = psutil.disk_usage(str(self.settings.state_dir)).free
        except OSError:
            disk_free = None
        return Heartbeat(
            address=address,
            cpu_percent=psutil.cpu_percent(interval=None),
            memory_total=mem.total,
            memory_free=mem.available,
            disk_free=disk_free,
            replica_count=replica_count,
        )

    async def _watch_loop(self, client: AsyncControllerClient, rec: NodeReconciler) -> None:
        version: int | None = None
        timeout = self.settings.watch_timeout_s
        while True:

            async def poll(version: int | None = version) -> Assignments:
                params: dict[str, Any] = {"timeout": timeout}
                if version is not None:
                    params["version"] = version
                body = await client.request(
                    "GET", self._node_path("assignments"), params=params, timeout=timeout + 10
                )
                return Assignments.model_validate(body)

            seen = self._registrations
            answer = await self._with_controller("watch assignments", poll, client)
            if answer.cluster_id and answer.cluster_id != rec.cluster_id:
                # Not the cluster we registered with: nothing of it is applied; registering
                # again says what it is (and makes our containers orphans if a stranger).
                log.warning(
                    "assignments from another cluster; registering again",
                    extra={"cluster_id": answer.cluster_id, "ours": rec.cluster_id},
                )
                await self._reregister(client, seen)
                version = None
                continue
            if answer.version != version or seen != self._registrations:
                version = answer.version
                rec.set_assignments(answer.replicas, prune=answer.prune)
                await asyncio.to_thread(save_assignments, self.settings.state_dir, answer.replicas)
                log.debug("assignments", extra={"version": version, "n": len(answer.replicas)})

    async def _report_loop(self, client: AsyncControllerClient, rec: NodeReconciler) -> None:
        loop = asyncio.get_running_loop()
        last_full = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._report_now.wait(), self.settings.full_report_interval_s
                )
            await asyncio.sleep(0.02)  # gather a burst of changes into one report
            self._report_now.clear()
            full = (
                self._full_next or loop.time() - last_full >= self.settings.full_report_interval_s
            )
            self._full_next = False
            if not full and not rec.changed and not rec.orphans_changed:
                continue

            async def send(full: bool = full) -> None:
                # Taken afresh at every attempt: after an outage the controller hears the
                # replicas as they are now, not as they were when the outage began.
                full = full or self._full_next
                self._full_next = False
                reports = rec.take_reports(full=full)
                orphans = rec.take_orphans(full=full)
                body = ReplicaReports(replicas=reports, full=full, orphans=orphans)
                try:
                    # A report states what runs: sent twice, it says the same twice.
                    await client.request(
                        "POST", self._node_path("replicas"), json=body.model_dump(), idempotent=True
                    )
                except BaseException:
                    rec.changed.update(r.id for r in reports)  # sent again next attempt
                    rec.orphans_changed = rec.orphans_changed or orphans is not None
                    self._full_next = self._full_next or full
                    raise

            await self._with_controller("report", send, client)
            if full:
                last_full = loop.time()
            # Changes made while sending are already in rec.changed for the next round.


def default_node_name() -> str:
    return socket.gethostname()
