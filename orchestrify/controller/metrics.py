"""The controller's Prometheus metrics, on an explicit registry (tests use a fresh one)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client import Counter as PromCounter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from orchestrify.controller.looplag import LOOP_LAG_BUCKETS
from orchestrify.models import Event, NodeState, ReplicaState
from orchestrify.store import Store
from orchestrify.store.retention import PruneResult

PRUNED_KINDS = tuple(PruneResult().counts())


class StoreCollector(Collector):
    """Gauges read from the store at scrape time, so they are never stale."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        services, nodes, replicas = self.store.snapshot()
        by_state = Counter(n.state for n in nodes)
        g = GaugeMetricFamily("orchestrify_nodes", "Nodes by state.", labels=["state"])
        for state in NodeState:
            g.add_metric([state.value], by_state.get(state, 0))
        yield g
        up = GaugeMetricFamily(
            "orchestrify_node_up",
            "1 when the node is ready or draining, 0 when it is silent (not_ready or unreachable).",
            labels=["node"],
        )
        silent = (NodeState.NOT_READY, NodeState.UNREACHABLE)
        for n in nodes:
            up.add_metric([n.name], 0 if n.state in silent else 1)
        yield up
        reps = GaugeMetricFamily(
            "orchestrify_replicas", "Replicas by service and state.", labels=["service", "state"]
        )
        counts = Counter((r.service, r.state) for r in replicas)
        for svc in services:
            for rstate in ReplicaState:
                reps.add_metric([svc.name, rstate.value], counts.get((svc.name, rstate), 0))
        yield reps
        per_service = {
            "orchestrify_service_desired_replicas": ("Desired replicas.", lambda s: s.replicas),
            "orchestrify_service_min_replicas": ("Lower bound.", lambda s: s.min_replicas),
            "orchestrify_service_max_replicas": ("Upper bound.", lambda s: s.max_replicas),
            "orchestrify_service_latency_target_seconds": (
                "p95 latency target.",
                lambda s: s.policy.latency_target_ms / 1000,
            ),
            "orchestrify_service_requests_per_replica": (
                "Requests one replica takes per window.",
                lambda s: s.policy.requests_per_replica,
            ),
            "orchestrify_service_request_window_seconds": (
                "Window of requests_per_replica.",
                lambda s: s.policy.request_window_s,
            ),
        }
        for name, (doc, get) in per_service.items():
            fam = GaugeMetricFamily(name, doc, labels=["service"])
            for svc in services:
                fam.add_metric([svc.name], float(get(svc)))
            yield fam


class LeadershipCollector(Collector):
    """Whether this controller leads, and at which epoch, read at scrape time."""

    def __init__(self, *, leading: Callable[[], bool], epoch: Callable[[], int | None]) -> None:
        self.leading = leading
        self.epoch = epoch

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "orchestrify_controller_leader",
            "1 on the controller that holds the leader lease, 0 on the others (alert when "
            "the max over all controllers is 0: no controller leads).",
            value=1 if self.leading() else 0,
        )
        yield GaugeMetricFamily(
            "orchestrify_controller_epoch",
            "The epoch this controller leads at (raised by one at every election); 0 while "
            "it follows.",
            value=self.epoch() or 0,
        )


class ControllerMetrics:
    def __init__(self, store: Store, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.registry.register(StoreCollector(store))
        self.decisions = PromCounter(
            "orchestrify_decisions_total",
            "Decisions and actions by action and outcome (ok, refused, failed).",
            ["action", "outcome"],
            registry=self.registry,
        )
        self.api_latency = Histogram(
            "orchestrify_api_request_duration_seconds",
            "API request latency by method, route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.event_loop_lag = Histogram(
            "orchestrify_event_loop_lag_seconds",
            "How late the controller's event loop woke a task that slept a fixed interval "
            "(orchestrify.controller.looplag): the longest stretch something blocked it.",
            buckets=LOOP_LAG_BUCKETS,
            registry=self.registry,
        )
        self.history_pruned = PromCounter(
            "orchestrify_history_pruned_total",
            "History rows deleted by the retention prune, by kind (the table: events, "
            "jobs, job_events, alert_instances, alert_receipts).",
            ["kind"],
            registry=self.registry,
        )
        for kind in PRUNED_KINDS:
            self.history_pruned.labels(kind)  # exported at 0 from the start, for rate()
        store.on_event(self.count_event)

    def track_leadership(
        self, *, leading: Callable[[], bool], epoch: Callable[[], int | None]
    ) -> None:
        """Export ``orchestrify_controller_leader`` and ``orchestrify_controller_epoch``."""
        self.registry.register(LeadershipCollector(leading=leading, epoch=epoch))

    def count_event(self, ev: Event) -> None:
        if ev.kind in {"decision", "action"} and ev.action:
            self.decisions.labels(ev.action, ev.outcome or "info").inc()
