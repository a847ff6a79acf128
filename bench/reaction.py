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

Part 2 (whole loop): webhook -> new replica healthy and serving through Nginx, median
and p95 over ``--runs`` runs, goal <= 1.0 s median; breach -> webhook with the shipped
timings, computed from the templates' defaults and measured once (``--no-breach`` skips
it); and the polling periods of other autoscalers for comparison.

Run: PYTHONPATH=. python bench/reaction.py [--batches 300] [--alerts-per-batch 5]
     [--runs 10] [--no-breach] [--part1-only | --part2-only]   (part 2 needs Docker and nginx)
"""

from __future__ import annotations

import argparse
import contextlib
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

from bench.live import serve
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
                if not dry_run:
                    report_healthy(api)  # untimed: else the next batch waits for it
            return samples


def report_healthy(api: httpx.Client) -> None:
    """Report the placed replicas healthy, as their agents would once they answer: a
    scale-out waits for the replicas of the last step, so without this every batch after
    the first would time a refusal, not an acting decision."""
    for r in api.get("/v1/replicas").json():
        if r["desired"] == "run" and r["state"] != "healthy":
            report = {"id": r["id"], "state": "healthy", "address": "127.0.0.1:1"}
            api.post(f"/v1/nodes/{r['node']}/replicas", json={"replicas": [report]})


# ------------------------------------------------------------------ part 2

SLOW_MS = 300
BREACH_TIMEOUT_S = 150.0
COMPARISON = (
    "for comparison: Kubernetes' HPA syncs every 15 s, KEDA polls every 30 s, "
    "Nomad's autoscaler evaluates every 10 s"
)


def seconds_of(duration: str) -> float:
    """A Prometheus duration made of one unit (``5s``, ``1m``) in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in ("ms", "s", "m", "h"):
        if duration.endswith(unit) and duration[: -len(unit)].isdigit():
            return int(duration[: -len(unit)]) * units[unit]
    raise ValueError(f"unsupported duration {duration!r}")


def shipped_defaults() -> dict[str, str]:
    """The timing defaults as written in the shipped templates (``| default("...")``)."""
    import re

    from orchestrify.config_render import templates_dir

    found: dict[str, str] = {}
    for name in ("prometheus/prometheus.yml.j2", "prometheus/rules.yml.j2"):
        text = (templates_dir() / name).read_text()
        found.update(re.findall(r'set (\w+) = \w+ \| default\("([^"]+)"\)', text))
    text = (templates_dir() / "alertmanager/alertmanager.yml.j2").read_text()
    found.update(re.findall(r'set (\w+) = \w+ \| default\("([^"]+)"\)', text))
    return found


def breach_to_webhook_estimate() -> tuple[float, float, str]:
    """(best, worst) seconds from a step change in latency to the webhook, shipped timings.

    The p95 over ``latency_range`` crosses the target once over 5 % of the window's
    requests are slow; the edge is scraped every ``scrape_interval``; the rule is
    evaluated every ``evaluation_interval``, pending for ``for_latency`` and firing at
    the first evaluation after it; Prometheus sends at once; Alertmanager waits
    ``group_wait`` for a new group.
    """
    d = shipped_defaults()
    scrape = seconds_of(d["scrape_interval"])
    evaluation = seconds_of(d["evaluation_interval"])
    for_ = seconds_of(d["for_latency"])
    group_wait = seconds_of(d["group_wait"])
    five_percent = 0.05 * seconds_of(d["latency_range"])
    best = for_ + group_wait
    worst = five_percent + scrape + evaluation + for_ + evaluation + group_wait
    formula = (
        f"5% of latency_range {d['latency_range']} + scrape {d['scrape_interval']} "
        f"+ evaluation {d['evaluation_interval']} + for {d['for_latency']} "
        f"+ evaluation {d['evaluation_interval']} + group_wait {d['group_wait']}"
    )
    return best, worst, formula


def part2(*, runs: int, breach: bool) -> None:
    """Webhook -> new replica healthy and in Nginx, with every component real.

    The controller, two agents (two nodes on the local engine), the edge and Nginx run
    here; the demo service has one replica and ``cooldown_s: 0``. Each run POSTs a
    ServiceLatencyHigh notification naming the current replica and times (a) the
    webhook's answer (stored + decided + desired count raised + replica placed),
    (b) the new replica reported healthy, (c) the first request through Nginx that it
    answers. Then the alert is resolved and the service goes back to one replica
    (stabilization 0) before the next run.
    """
    import shutil

    from bench.autoscale_lab import SERVICE, Fleet

    missing = [b for b in ("nginx", "prometheus", "prometheus-alertmanager") if not shutil.which(b)]
    if "nginx" in missing:
        print("part 2: skipped, nginx is not installed")
        return
    print(f"part 2: webhook -> new replica healthy and serving through Nginx ({runs} runs)")
    with tempfile.TemporaryDirectory() as tmp:
        fleet = Fleet(Path(tmp))
        try:
            fleet.start(alert_eval_interval_s=0.2)
            api = fleet.api
            api.post(
                "/v1/services",
                json={
                    "name": SERVICE,
                    "image": "orchestrify/demo:latest",
                    "replicas": 1,
                    "max_replicas": 2,
                    "drain_s": 0,
                    "policy": {
                        "cooldown_s": 0,
                        "scale_down_stabilization_s": 0,
                        "requests_per_replica": 1_000_000,
                    },
                },
            ).raise_for_status()
            stages: dict[str, list[float]] = {name: [] for name in STAGES}
            for i in range(runs):
                for name, seconds in one_reaction(fleet, i).items():
                    stages[name].append(seconds)
            for name in STAGES:
                goal = 1.0 if name == STAGES[-1] else None
                print(spread(name, stages[name], goal_s=goal))
            best, worst, formula = breach_to_webhook_estimate()
            print(
                f"breach -> webhook, shipped timings: {best:.0f}-{worst:.0f} s "
                f"(computed: {formula})"
            )
            if breach and missing:
                print(f"breach -> webhook measured: skipped, missing {', '.join(missing)}")
            elif breach:
                measured = measure_breach(fleet)
                print(f"breach -> webhook measured once, shipped timings: {measured:.1f} s")
            print(COMPARISON)
        finally:
            fleet.stop()


STAGES = (
    "webhook answered",  # stored, decided, desired count raised, replica placed
    "container up",  # the agent reported the new replica with its address
    "replica healthy",  # its first health probe passed
    "in nginx upstream",  # the edge applied (nginx -t, reload, verified) a config with it
    "serving via nginx",  # a request through Nginx was answered by it
)


def one_reaction(fleet: Any, i: int) -> dict[str, float]:
    """One run: alert on the single replica, time each stage, then resolve and settle."""
    from bench.autoscale_lab import SERVICE, poll

    (slow,) = poll("one healthy replica", lambda: healthy_replicas(fleet, 1), timeout=60)
    poll(
        "only it in nginx", lambda: fleet.edge.served_replicas(SERVICE) == {slow["id"]}, timeout=30
    )
    poll("one container", lambda: len(fleet.containers()) == 1, timeout=30)
    # The previous run's replica row goes once its agent reports the container gone.
    poll("one replica", lambda: len(fleet.replicas()) == 1, timeout=30)
    times: dict[str, float] = {}
    start = time.perf_counter()

    def mark(stage: str) -> None:
        times[stage] = time.perf_counter() - start

    fleet.api.post("/v1/alerts", json=latency_alert(i, slow, status="firing")).raise_for_status()
    mark("webhook answered")

    def new_replica() -> dict[str, Any] | None:
        return next(
            (
                r
                for r in fleet.replicas()
                if r["id"] != slow["id"] and r["address"] and r["desired"] == "run"
            ),
            None,
        )

    new = poll("the new replica started", new_replica, timeout=60, interval=0.005)
    mark("container up")
    if new["state"] != "healthy":
        poll(
            "the new replica healthy",
            lambda: fleet.api.get(f"/v1/replicas/{new['id']}").json()["state"] == "healthy",
            timeout=60,
            interval=0.005,
        )
    mark("replica healthy")
    poll(
        "the new replica in nginx's upstream",
        lambda: new["id"] in fleet.edge.served_replicas(SERVICE),
        timeout=60,
        interval=0.005,
    )
    mark("in nginx upstream")
    poll(
        "the new replica answering through nginx",
        lambda: fleet.served_by(timeout=5) == new["id"],
        timeout=60,
        interval=0.005,
    )
    mark("serving via nginx")
    # Resolve: with stabilization 0 and cooldown 0 the controller scales back to 1.
    fleet.api.post("/v1/alerts", json=latency_alert(i, slow, status="resolved")).raise_for_status()
    return times


def healthy_replicas(fleet: Any, count: int) -> list[dict[str, Any]] | None:
    reps = [r for r in fleet.replicas() if r["state"] == "healthy" and r["desired"] == "run"]
    return reps if len(reps) == count else None


def latency_alert(i: int, replica: dict[str, Any], *, status: str) -> dict[str, Any]:
    """What Alertmanager 0.25 sends for ServiceLatencyHigh on ``replica``."""
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    labels = {
        "alertname": "ServiceLatencyHigh",
        "service": replica["service"],
        "replica": replica["id"],
        "node": replica.get("node_name") or replica["node"],
        "severity": "warning",
    }
    alert = {
        "status": status,
        "labels": labels,
        "annotations": {"summary": f"{replica['service']}: p95 latency above target"},
        "startsAt": (T0 + timedelta(seconds=i)).isoformat().replace("+00:00", "Z"),
        "endsAt": now if status == "resolved" else "0001-01-01T00:00:00Z",
        "generatorURL": "http://127.0.0.1:9090/graph",
        "fingerprint": f"bench{i:011x}",
    }
    return {
        "receiver": "orchestrify",
        "status": status,
        "alerts": [alert],
        "groupLabels": {"alertname": "ServiceLatencyHigh", "service": replica["service"]},
        "commonLabels": labels,
        "commonAnnotations": alert["annotations"],
        "externalURL": "http://127.0.0.1:9093",
        "version": "4",
        "groupKey": '{}:{alertname="ServiceLatencyHigh", service="' + replica["service"] + '"}',
        "truncatedAlerts": 0,
    }


def measure_breach(fleet: Any) -> float:
    """Once, with the shipped timings: a replica turns slow under load -> first webhook."""
    import threading

    from bench.autoscale_lab import SERVICE, poll

    fleet.start_monitoring()  # shipped defaults; only Alertmanager's address is ours
    poll(
        "prometheus scraping the edge",
        lambda: any(
            t["labels"].get("job") == "orchestrify-edge" and t["health"] == "up"
            for t in httpx.get(f"{fleet.prometheus_url}/api/v1/targets", timeout=5).json()["data"][
                "activeTargets"
            ]
        ),
        timeout=60,
        interval=0.5,
    )
    (slow,) = poll("one healthy replica", lambda: healthy_replicas(fleet, 1), timeout=60)
    seen = {e["id"] for e in fleet.events("alert")}
    done = threading.Event()

    def load() -> None:
        deadline = time.monotonic() + BREACH_TIMEOUT_S
        with httpx.Client(timeout=5) as client:
            while not done.is_set() and time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    client.get(f"{fleet.nginx_url}/{SERVICE}/")
                done.wait(0.1)

    threads = [threading.Thread(target=load, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(10)  # fast traffic first, so the window holds real samples
    httpx.get(f"http://{slow['address']}/admin/latency", params={"ms": SLOW_MS}, timeout=5)
    start = time.perf_counter()
    try:
        poll(
            "ServiceLatencyHigh at the webhook",
            lambda: [
                e
                for e in fleet.events("alert")
                if e["id"] not in seen
                and e["data"]["labels"].get("alertname") == "ServiceLatencyHigh"
                and e["data"]["status"] == "firing"
            ],
            timeout=BREACH_TIMEOUT_S,
            interval=0.2,
        )
        return time.perf_counter() - start
    finally:
        done.set()
        for t in threads:
            t.join(10)


def spread(name: str, samples: list[float], *, goal_s: float | None = None) -> str:
    ms = sorted(s * 1000 for s in samples)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    med = statistics.median(ms)
    line = f"{name:<18} n={len(ms):<3} median={med:8.1f} ms  p95={p95:8.1f} ms"
    if goal_s is not None:
        line += f"  [{'ok' if med <= goal_s * 1000 else 'OVER GOAL'}: median <= {goal_s:g} s]"
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--alerts-per-batch", type=int, default=5)
    parser.add_argument("--runs", type=int, default=10, help="part 2 runs")
    parser.add_argument(
        "--no-breach", action="store_true", help="skip measuring breach -> webhook (~1 min)"
    )
    parser.add_argument("--part2-only", action="store_true")
    parser.add_argument("--part1-only", action="store_true", help="no Docker or nginx needed")
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
    if not args.part2_only:
        for name, run in runs:
            print(summary(name, run()))
    if not args.part1_only:
        part2(runs=args.runs, breach=not args.no_breach)


if __name__ == "__main__":
    main()
