"""How long a quiet service's alert waits behind another service's alert flood.

A real controller (uvicorn on loopback, SQLite store, its reconciler and 5 s alert timer
running) with services ``flood`` and ``quiet``, one healthy replica each. A flood of
10,000 alerts for ``flood`` (each a distinct per-replica latency alert) is posted, in two
shapes: ``1x10000``, the one notification of issue 10's probe (the cap raised to take
it), and ``10x1000``, ten notifications the default ``max_alerts_per_batch`` accepts,
posted at once as Alertmanager posts the notifications of different groups. Once the
controller has begun taking it in, one ``ServiceRequestRateHigh`` alert for ``quiet`` is
posted.

Prints per shape, in bench/report.py's table:
  * ``quiet stored``: seconds from posting the quiet alert until it is stored (its event);
  * ``quiet decided``: seconds from posting the quiet alert until its decision is recorded;
  * ``quiet answered``: until its webhook call is answered;
  * ``flood answered`` / ``flood decided``: from the flood's start until its last call is
    answered / its last alert decided;
  * how many flood decisions were recorded before and after the quiet one, and how many
    between the quiet alert stored and decided: those it waited behind. Goal: at most
    one decision slice (``DECISION_SLICE``, 100), however large the flood.

Run: python bench/alert_flood.py [--shapes 1x10000,10x1000] [--quick]
``--quick``: shapes 1x300,3x100 (a smoke run; a test runs it so).
(The cost per alert was profiled with ``py-spy record -p PID`` on this process.)
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.` from a checkout

from bench.report import Report, at_most
from orchestrify.controller.alerts import DECISION_SLICE
from orchestrify.controller.app import create_app
from orchestrify.controller.settings import ControllerSettings

T0 = datetime(2026, 11, 21, tzinfo=UTC)
ADMIN = {"Authorization": "Bearer bench"}


def alert(
    alertname: str, *, service: str, fingerprint: str, starts: datetime, **labels: str
) -> dict[str, Any]:
    return {
        "status": "firing",
        "labels": {"alertname": alertname, "service": service, "severity": "warning", **labels},
        "annotations": {"summary": f"{alertname} on {service}"},
        "startsAt": starts.isoformat().replace("+00:00", "Z"),
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": fingerprint,
    }


def notification(alerts: list[dict[str, Any]], *, group: str) -> dict[str, Any]:
    return {
        "receiver": "orchestrify",
        "status": "firing",
        "alerts": alerts,
        "groupLabels": {"alertname": group},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "version": "4",
        "groupKey": "{}:{" + f'alertname="{group}"' + "}",
        "truncatedAlerts": 0,
    }


def flood_batch(b: int, *, per_batch: int) -> dict[str, Any]:
    alerts = [
        alert(
            "ServiceLatencyHigh",
            service="flood",
            fingerprint=f"{b:06x}{j:06x}",
            starts=T0 + timedelta(seconds=b),
            replica=f"flood-{b}-{j}",
            node=f"n{j % 4}",
        )
        for j in range(per_batch)
    ]
    return notification(alerts, group=f"ServiceLatencyHigh-{b}")


def quiet_batch() -> dict[str, Any]:
    one = alert(
        "ServiceRequestRateHigh", service="quiet", fingerprint="0ddba11", starts=T0 + timedelta(1)
    )
    return notification([one], group="ServiceRequestRateHigh")


@contextlib.contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """The app on a real uvicorn, on a free loopback port, in a thread."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise SystemExit("the controller did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def run(batches: int, per_batch: int, *, report: Report) -> None:
    """One shape: ``batches`` notifications of ``per_batch`` flood alerts, then the quiet
    one; its figures go to ``report``."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = ControllerSettings(
            data_dir=Path(tmp),
            token="bench",
            join_token="join",
            node_timeout_s=3600,
            max_alerts_per_batch=max(per_batch, 1),
            max_body_bytes=64 * 1024 * 1024,
        )
        app = create_app(settings, registry=CollectorRegistry())
        with (
            serve(app) as url,
            httpx.Client(base_url=url, headers=ADMIN, timeout=600) as api,
        ):
            for i in range(4):
                api.post(
                    "/v1/nodes/register",
                    json={"name": f"n{i}", "address": "127.0.0.1"},
                    headers={"Authorization": "Bearer join"},
                ).raise_for_status()
            for name in ("flood", "quiet"):
                api.post(
                    "/v1/services",
                    json={"name": name, "image": "nginx:1", "replicas": 1, "max_replicas": 20},
                ).raise_for_status()
            report_healthy(api)
            bodies = [flood_batch(b, per_batch=per_batch) for b in range(batches)]
            flood_answered: list[float] = []
            lock = threading.Lock()

            def post_flood(body: dict[str, Any]) -> None:
                with httpx.Client(base_url=url, headers=ADMIN, timeout=600) as own:
                    own.post("/v1/alerts", json=body).raise_for_status()
                with lock:
                    flood_answered.append(time.perf_counter())

            flood_start = time.perf_counter()
            flood_start_at = datetime.now(UTC)
            threads = [threading.Thread(target=post_flood, args=(b,)) for b in bodies]
            for t in threads:
                t.start()
            # Posted after the flood: wait until the server has taken in some of it.
            wait_for_alert_events(api, at_least=min(per_batch, 100), timeout=120)
            quiet_posted = time.perf_counter()
            quiet_posted_at = datetime.now(UTC)
            api.post("/v1/alerts", json=quiet_batch()).raise_for_status()
            quiet_answered = time.perf_counter() - quiet_posted
            for t in threads:
                t.join()
            flood_answered_s = max(flood_answered) - flood_start
            # What the webhook calls left pending is decided by the alert timer.
            quiet, last_flood = wait_for_decisions(api, flood=batches * per_batch)
            after = len(events(api, kind="decision", service="flood", after=quiet["id"]))
            before = batches * per_batch - after
            (quiet_stored,) = events(api, kind="alert", service="quiet")
            ahead = [
                e
                for e in events(api, kind="decision", service="flood", after=quiet_stored["id"])
                if e["id"] < quiet["id"]
            ]
    print(f"  quiet's decision: {quiet['outcome']}: {quiet['message'][:60]}", file=sys.stderr)
    scenario = f"{batches} x {per_batch:,} alerts"
    report.add(scenario, "quiet stored after posted", since(quiet_posted_at, quiet_stored), "s")
    report.add(scenario, "quiet decided after posted", since(quiet_posted_at, quiet), "s")
    report.add(scenario, "quiet answered after posted", quiet_answered, "s")
    report.add(scenario, "flood answered (last call)", flood_answered_s, "s")
    report.add(scenario, "flood decided (last)", since(flood_start_at, last_flood), "s")
    report.add(scenario, "flood decisions before quiet's", before)
    report.add(scenario, "flood decisions after quiet's", after)
    report.add(
        scenario,
        "flood decisions quiet waited behind",
        len(ahead),
        "",
        at_most(DECISION_SLICE),
    )


def since(start: datetime, event: dict[str, Any]) -> float:
    """Seconds from ``start`` to when ``event`` was recorded (the same machine's clock)."""
    at = datetime.fromisoformat(event["time"])
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at
    return (at - start).total_seconds()


def wait_for_decisions(
    api: httpx.Client, *, flood: int, timeout: float = 900.0
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Wait until quiet's alert and every flood alert are decided; their decisions (the
    quiet one, the last flood one)."""
    deadline = time.monotonic() + timeout
    quiet: list[dict[str, Any]] = []
    flood_seen, last, after = 0, None, 0
    while time.monotonic() < deadline:
        if not quiet:
            quiet = events(api, kind="decision", service="quiet")
        page = events(api, kind="decision", service="flood", after=after)
        if page:
            flood_seen += len(page)
            last, after = page[-1], page[-1]["id"]
        if quiet and last is not None and flood_seen >= flood:
            return quiet[0], last
        time.sleep(0.25)
    raise SystemExit(f"not decided in {timeout:.0f} s: quiet {bool(quiet)}, flood {flood_seen}")


def report_healthy(api: httpx.Client) -> None:
    """Report every placed replica healthy, as its agent would once it answers: a scale
    out waits for the replicas of the last step to be healthy."""
    deadline = time.monotonic() + 30
    while len(api.get("/v1/replicas").json()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # the reconciler places the services' first replicas
    for r in api.get("/v1/replicas").json():
        if r["desired"] == "run" and r["state"] != "healthy":
            report = {"id": r["id"], "state": "healthy", "address": "127.0.0.1:1"}
            api.post(
                f"/v1/nodes/{r['node']}/replicas", json={"replicas": [report]}
            ).raise_for_status()


def wait_for_alert_events(api: httpx.Client, *, at_least: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = api.get("/v1/events", params={"kind": "alert", "limit": at_least}).json()
        if len(got) >= at_least:
            return
        time.sleep(0.05)
    raise SystemExit("the flood was not taken in")


def events(api: httpx.Client, *, kind: str, service: str, after: int = 0) -> list[dict[str, Any]]:
    """Events of one kind and service (the newest 10,000: the whole flood's by default)."""
    params: dict[str, Any] = {"kind": kind, "service": service, "after": after, "limit": 10_000}
    got: list[dict[str, Any]] = api.get("/v1/events", params=params).json()
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shapes", default="1x10000,10x1000", help="BATCHESxALERTS, comma-separated"
    )
    parser.add_argument("--quick", action="store_true", help="Small floods (a smoke run).")
    args = parser.parse_args()
    shapes = "1x300,3x100" if args.quick else args.shapes
    report = Report("alert flood: one service's alert behind another's flood")
    for shape in shapes.split(","):
        batches, per_batch = (int(x) for x in shape.split("x"))
        print(f"flood {shape} ...", file=sys.stderr, flush=True)
        run(batches, per_batch, report=report)
    report.print()


if __name__ == "__main__":
    main()
