"""How fast orchestrify reacts to an alert.

Part 1 (controller): decision time per Alertmanager notification, median and p95 over
many notifications, goal < 10 ms:
  * ``pure``: rule matching + the pure policy (``decide``) for every alert of a batch,
    on a fleet of 20 nodes, 20 services, 200 replicas;
  * ``http dry-run``: POST /v1/alerts on a real uvicorn (loopback), the batch stored
    durably in SQLite, decided and recorded, not acted on;
  * ``http /healthz``: the floor: uvicorn + FastAPI + httpx on loopback, no work;
  * ``http acting``: the same, and the scale-out applied (desired count + the new
    replica placed by the reconciler with its avoid hint) before the 200.

Part 2 (whole loop, TO DO by the lead once agent and edge land): see ``part2`` below.

Run: PYTHONPATH=. python bench/reaction.py [--batches 300] [--alerts-per-batch 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from orchestrify.alerting.payload import AlertBatch
from orchestrify.alerting.policy import AlertFacts, Inputs, PolicyState, decide
from orchestrify.alerting.rules import default_rules
from orchestrify.controller.app import create_app
from orchestrify.controller.settings import ControllerSettings
from orchestrify.models import (
    DesiredState,
    Node,
    NodeState,
    Replica,
    ReplicaState,
    ScalingPolicy,
    Service,
)
from tests.controller.live import serve

GOAL_MS = 10.0
T0 = datetime(2026, 11, 21, tzinfo=UTC)


def summary(name: str, samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    med = statistics.median(ms)
    verdict = "ok" if p95 < GOAL_MS else "OVER GOAL"
    return f"{name:<16} n={len(ms):<5} median={med:7.3f} ms  p95={p95:7.3f} ms  [{verdict}]"


def payload(i: int, *, per_batch: int, service: str = "web") -> dict[str, Any]:
    starts = (T0 + timedelta(seconds=i)).isoformat().replace("+00:00", "Z")
    alerts = [
        {
            "status": "firing",
            "labels": {
                "alertname": "ServiceLatencyHigh",
                "service": service,
                "replica": f"{service}-{j}",
                "node": f"n{j % 20}",
                "severity": "warning",
            },
            "annotations": {"summary": "slow"},
            "startsAt": starts,
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus:9090/graph",
            "fingerprint": f"{i:08x}{j:08x}",
        }
        for j in range(per_batch)
    ]
    return {
        "receiver": "orchestrify",
        "status": "firing",
        "alerts": alerts,
        "groupLabels": {"alertname": "ServiceLatencyHigh", "service": service},
        "commonLabels": {"alertname": "ServiceLatencyHigh", "service": service},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "version": "4",
        "groupKey": "{}:{" + f'alertname="ServiceLatencyHigh", service="{service}"' + "}",
        "truncatedAlerts": 0,
    }


def bench_pure(batches: int, per_batch: int) -> list[float]:
    rules = default_rules()
    nodes = [
        Node(id=f"id{i}", name=f"n{i}", address="10.0.0.1", state=NodeState.READY, created_at=T0)
        for i in range(20)
    ]
    services = {
        f"svc{s}": Service(
            name=f"svc{s}",
            image="nginx:1",
            replicas=10,
            max_replicas=50,
            policy=ScalingPolicy(cooldown_s=30),
            created_at=T0,
            updated_at=T0,
        )
        for s in range(20)
    }
    replicas = [
        Replica(
            id=f"svc{s}-{j}",
            service=f"svc{s}",
            node=f"id{(s + j) % 20}",
            state=ReplicaState.HEALTHY,
            desired=DesiredState.RUN,
            created_at=T0,
            updated_at=T0,
        )
        for s in range(20)
        for j in range(10)
    ]
    samples = []
    for i in range(batches):
        batch = AlertBatch.model_validate(payload(i, per_batch=per_batch, service=f"svc{i % 20}"))
        start = time.perf_counter()
        for a in batch.alerts:
            facts = AlertFacts(
                alertname=a.alertname, status=a.status, labels=a.labels, starts_at=a.starts_at
            )
            inputs = Inputs(
                service=services.get(a.labels["service"]),
                replicas=replicas,
                nodes=nodes,
                state=PolicyState(last_action_at=T0 + timedelta(seconds=i % 60)),
            )
            decide(facts, rules.match(a.labels), inputs, now=T0 + timedelta(seconds=i))
        samples.append(time.perf_counter() - start)
    return samples


def bench_http(
    batches: int, per_batch: int, *, dry_run: bool, floor: list[float] | None = None
) -> list[float]:
    """POST /v1/alerts timings; ``floor`` gets GET /healthz timings (the HTTP stack alone)."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = ControllerSettings(
            data_dir=Path(tmp), token="bench", join_token="join", dry_run=dry_run
        )
        app = create_app(settings, registry=CollectorRegistry(), run_reconciler=False)
        with (
            serve(app) as url,
            httpx.Client(
                base_url=url, headers={"Authorization": "Bearer bench"}, timeout=30
            ) as api,
        ):
            for i in range(4):
                httpx.post(
                    f"{url}/v1/nodes/register",
                    json={"name": f"n{i}", "address": "127.0.0.1"},
                    headers={"Authorization": "Bearer join"},
                ).raise_for_status()
            api.post(
                "/v1/services",
                json={
                    "name": "web",
                    "image": "nginx:1",
                    "replicas": 1,
                    "max_replicas": 10_000,
                    "policy": {"cooldown_s": 0},
                },
            ).raise_for_status()
            if floor is not None:
                for _ in range(batches):
                    start = time.perf_counter()
                    api.get("/healthz").raise_for_status()
                    floor.append(time.perf_counter() - start)
            samples = []
            for i in range(batches):
                body = payload(i, per_batch=per_batch)
                start = time.perf_counter()
                api.post("/v1/alerts", json=body).raise_for_status()
                samples.append(time.perf_counter() - start)
            return samples


def part2() -> None:
    """TO DO (lead, once agent and edge land): webhook -> new replica healthy and in Nginx.

    Plan: `orchestrify up` with the real agent and edge on this host; deploy the demo
    service with one replica; POST one ServiceLatencyHigh notification naming that
    replica to /v1/alerts; measure until (a) the new replica reports `healthy` (poll
    GET /v1/replicas or follow /v1/events) and (b) the edge's rendered upstream (or a
    request through Nginx hitting the new replica's address) includes it. Report
    median/p95 over ~20 runs, split into decide / place / container start / health /
    Nginx reload.
    """
    print("part 2 (webhook -> replica healthy and in Nginx): not measured yet (stub)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--alerts-per-batch", type=int, default=5)
    args = parser.parse_args()
    floor: list[float] = []
    runs: list[tuple[str, Callable[[], list[float]]]] = [
        ("pure", lambda: bench_pure(args.batches, args.alerts_per_batch)),
        (
            "http dry-run",
            lambda: bench_http(args.batches, args.alerts_per_batch, dry_run=True, floor=floor),
        ),
        ("http /healthz", lambda: floor),
        ("http acting", lambda: bench_http(args.batches, 1, dry_run=False)),
    ]
    load = os.getloadavg()[0]
    print(f"host: {os.cpu_count()} cores, load average {load:.1f} (other work skews http)")
    print(
        f"part 1: controller decision time per notification "
        f"({args.alerts_per_batch} alerts per batch; 'http acting': 1 alert that scales out)"
    )
    for name, run in runs:
        print(summary(name, run()))
    part2()


if __name__ == "__main__":
    main()
