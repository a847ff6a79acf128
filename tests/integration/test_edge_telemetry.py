"""The latency alert's input stays exact: real Nginx, a real edge, a known latency mix.

Two replicas (small HTTP servers on loopback that sleep as each request asks) sit behind
the edge's Nginx. Requests go through Nginx with a known share of slow (300 ms) and
fast (10 ms) ones; each replica tallies what it served. The edge's histogram of each
replica must hold exactly those requests, the slow ones above the 0.25 s bucket, and
the p95 the shipped ServiceLatencyHigh rule computes from those buckets
(histogram_quantile) must be above a 250 ms target exactly when more than 5% of the
replica's requests were slow.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.edge_lab import ADMIN_TOKEN, JOIN_TOKEN, ControllerThread, EdgeThread, running
from bench.net import free_port
from bench.wait import wait_for
from orchestrify.edge import EdgeSettings
from orchestrify.edge.telemetry import DURATION_BUCKETS, ROTATE_BYTES
from tests.conftest import require_binary

pytestmark = pytest.mark.integration
FAST_MS, SLOW_MS = 10, 300
# The service's p95 target the rule compares with. A bucket bound: 10 ms requests stay
# under it even on a loaded machine, 300 ms ones are above it whatever the load.
TARGET_S = 0.25
HISTOGRAM = "orchestrify_http_request_duration_seconds"


@dataclass
class SleepyReplica:
    """An HTTP/1.1 server answering ``GET /?ms=N`` after N ms; tallies what it served."""

    served: Counter[int] = field(default_factory=Counter)

    def start(self) -> SleepyReplica:
        replica = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as Nginx's upstream pool uses

            def do_GET(self) -> None:
                ms = int(parse_qs(urlsplit(self.path).query).get("ms", ["0"])[0])
                time.sleep(ms / 1000)
                replica.served[ms] += 1
                self.send_response(200)
                self.send_header("Content-Length", "3")
                self.end_headers()
                self.wfile.write(b"ok\n")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Lab:
    edge: EdgeThread
    url: str  # the service through Nginx
    metrics_url: str
    replicas: dict[str, SleepyReplica]  # replica id -> its server


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    require_binary("nginx")
    base = tmp_path_factory.mktemp("telemetry")
    servers = [SleepyReplica().start(), SleepyReplica().start()]
    controller = ControllerThread(base / "controller").start()
    http = controller.http
    creds = http.post(
        "/v1/nodes/register",
        json={"name": "node-1", "address": "127.0.0.1"},
        headers={"Authorization": f"Bearer {JOIN_TOKEN}"},
    ).json()
    node = {"Authorization": f"Bearer {creds['node_token']}"}
    r = http.post(
        "/v1/services",
        json={"name": "mix", "image": "orchestrify-test/none:1", "replicas": 2},
    )
    assert r.status_code == 201, r.text

    def assigned() -> list[str]:
        body = http.get(f"/v1/nodes/{creds['node_id']}/assignments", headers=node).json()
        ids = sorted(a["replica"] for a in body["replicas"] if a["desired"] == "run")
        return ids if len(ids) == 2 else []

    ids = wait_for("two assignments", assigned)
    # This test plays the agent: each server is one replica, reported healthy.
    http.post(
        f"/v1/nodes/{creds['node_id']}/replicas",
        json={
            "replicas": [
                {"id": rid, "state": "healthy", "address": s.address}
                for rid, s in zip(ids, servers, strict=True)
            ]
        },
        headers=node,
    ).raise_for_status()
    listen, metrics_port = free_port(), free_port()
    edge = EdgeThread(
        EdgeSettings(
            controller_url=controller.url,
            token=ADMIN_TOKEN,
            nginx_conf_dir=base / "nginx",
            listen=f"127.0.0.1:{listen}",
            metrics_port=metrics_port,
            name="edge-telemetry",
            worker_processes="2",  # lines from two workers' buffers share the file
        )
    ).start()
    try:
        with running(controller, edge):
            wait_for("both replicas in nginx", lambda: len(edge.served_replicas("mix")) == 2)
            yield Lab(
                edge=edge,
                url=f"http://127.0.0.1:{listen}/mix/",
                metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
                replicas=dict(zip(ids, servers, strict=True)),
            )
    finally:
        for s in servers:
            s.stop()


def buckets(lab: Lab) -> dict[str, dict[float, float]]:
    """Replica -> cumulative count per upper bound (inf included), from /metrics."""
    found: dict[str, dict[float, float]] = {}
    for fam in text_string_to_metric_families(httpx.get(lab.metrics_url, timeout=5).text):
        if fam.name != HISTOGRAM:
            continue
        for s in fam.samples:
            if s.name == HISTOGRAM + "_bucket" and s.labels["service"] == "mix":
                found.setdefault(s.labels["replica"], {})[float(s.labels["le"])] = s.value
    return found


def histogram_quantile(q: float, cumulative: dict[float, float]) -> float:
    """Prometheus's histogram_quantile on one series' cumulative buckets."""
    bounds = sorted(cumulative)
    total = cumulative[math.inf]
    if total == 0:
        return math.nan
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if bound == math.inf:
                return lower  # Prometheus answers the highest finite bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return math.nan


def delta(after: dict[float, float], before: dict[float, float]) -> dict[float, float]:
    return {le: n - before.get(le, 0.0) for le, n in after.items()}


def send_mix(lab: Lab, *, fast: int, slow: int) -> dict[str, dict[float, float]]:
    """Send the mix through Nginx (slow ones spread evenly); the histogram's increase."""
    before = buckets(lab)
    served_before = {rid: Counter(s.served) for rid, s in lab.replicas.items()}
    total = fast + slow
    every = total / slow if slow else math.inf
    with httpx.Client(timeout=10) as client:
        for n in range(total):
            ms = SLOW_MS if slow and int(n % every) == 0 and n // every < slow else FAST_MS
            assert client.get(lab.url, params={"ms": ms}).status_code == 200
    sent = {rid: s.served - served_before[rid] for rid, s in lab.replicas.items()}
    assert sum(c[SLOW_MS] for c in sent.values()) == slow
    assert sum(c.total() for c in sent.values()) == total

    def caught_up() -> dict[str, dict[float, float]] | None:
        grown = {rid: delta(b, before.get(rid, {})) for rid, b in buckets(lab).items()}
        counted = sum(b.get(math.inf, 0.0) for b in grown.values())
        return grown if counted >= total else None

    # Nginx writes its buffered lines within a second; the edge reads every 0.25 s.
    grown = wait_for("every request in the histograms", caught_up, timeout=15)
    for rid, counts in sent.items():
        h = grown[rid]
        assert h[math.inf] == counts.total(), rid  # every request, once, on its replica
        assert h[math.inf] - h[0.25] == counts[SLOW_MS], rid  # the slow ones past 250 ms
        assert h[0.25] == counts[FAST_MS], rid
        assert set(h) == {*DURATION_BUCKETS, math.inf}
    return grown


def slow_share(grown: dict[str, dict[float, float]], rid: str) -> float:
    return (grown[rid][math.inf] - grown[rid][0.25]) / grown[rid][math.inf]


def test_a_few_slow_requests_keep_p95_under_the_target(lab: Lab) -> None:
    grown = send_mix(lab, fast=196, slow=4)
    for rid in lab.replicas:
        assert slow_share(grown, rid) < 0.05
        assert histogram_quantile(0.95, grown[rid]) < TARGET_S, rid


def test_a_tenth_of_slow_requests_puts_p95_over_the_target(lab: Lab) -> None:
    grown = send_mix(lab, fast=90, slow=20)
    assert any(slow_share(grown, rid) > 0.05 for rid in lab.replicas)
    for rid in lab.replicas:
        p95 = histogram_quantile(0.95, grown[rid])
        if slow_share(grown, rid) > 0.05:
            assert p95 > TARGET_S, rid
        else:
            assert p95 < TARGET_S, rid


def test_telemetry_lines_are_read_from_a_file_and_nothing_is_dropped(lab: Lab) -> None:
    access_log = lab.edge.edge.access_log
    assert access_log.is_file() and access_log.stat().st_size > 0
    assert "buffer=64k flush=1s" in (lab.edge.edge.prefix / "nginx.conf").read_text()
    assert lab.edge.edge.metrics.dropped._value.get() == 0


def test_a_rotated_log_loses_no_request(lab: Lab) -> None:
    """Past its size limit the edge unlinks the file and has Nginx reopen it: the lines
    still in the old file and those in the new one are all counted."""
    access_log = lab.edge.edge.access_log
    old_inode = access_log.stat().st_ino
    reader = lab.edge.edge.log_reader
    reader.rotate_bytes = 1  # any line read makes the file due for a rotation
    try:
        send_mix(lab, fast=30, slow=0)
        wait_for(
            "a new access log",
            lambda: access_log.exists() and access_log.stat().st_ino != old_inode,
        )
        reader.rotate_bytes = ROTATE_BYTES
        send_mix(lab, fast=30, slow=0)
    finally:
        reader.rotate_bytes = ROTATE_BYTES
