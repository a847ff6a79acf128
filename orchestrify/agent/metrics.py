"""The agent's Prometheus metrics, on their own registry (served on --metrics-port)."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class AgentMetrics:
    """Declared once per agent; tests build one on a fresh registry and read samples."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.replica_healthy = Gauge(
            "orchestrify_replica_healthy",
            "1 when the replica's last health probe passed, else 0.",
            ["service", "replica"],
            registry=self.registry,
        )
        self.probe_duration = Histogram(
            "orchestrify_probe_duration_seconds",
            "Time one health probe took (timeouts included).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.8, 1.0, 2.5),
            registry=self.registry,
        )
        self.replacements = Counter(
            "orchestrify_replacements",
            "Containers replaced in place because they died or failed their probes.",
            ["service"],
            registry=self.registry,
        )

    def forget(self, service: str, replica: str) -> None:
        """Drop a replica's series once it is no longer on this node."""
        with contextlib.suppress(KeyError):
            self.replica_healthy.remove(service, replica)
