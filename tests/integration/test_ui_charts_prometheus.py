"""The service page's charts from a real Prometheus: Debian's `prometheus` scrapes, every
second, an exposition endpoint this test serves with the edge's metric names (every
request 80 ms, ten a second, to service `web`), and a real controller process started
with `--prometheus-url` and `--alerting-profile fast` charts them.

Proves: the flag reaches the page; the queries Prometheus is asked parse and answer; the
p95 the chart says now is the one the observations make (all in the (50 ms, 100 ms]
bucket: histogram_quantile puts the 95th percentile at 97.5 ms), the request rate is
the one sent, and the dashed lines are the service's latency target and the rate at
which ServiceRequestRateHigh fires for its two healthy replicas.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from orchestrify.controller.ui.prometheus import latency_query, rate_query
from orchestrify.edge.telemetry import DURATION_BUCKETS
from tests.conftest import free_port, require_binary
from tests.processes import ROOT, controller_process, stop_process

pytestmark = [pytest.mark.integration, pytest.mark.beside]

TOKEN = "ui-charts-token"
JOIN = "ui-charts-join"
PER_S = 10.0  # requests a second the fake edge counts
LATENCY_S = 0.08
SVG = "{http://www.w3.org/2000/svg}"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class FakeEdge:
    """The edge's two metrics, fed at a steady PER_S by a thread, served for scraping."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "orchestrify_http_request_duration_seconds",
            "Request duration through the edge.",
            ["service", "replica", "node"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "orchestrify_http_requests",
            "Requests through the edge.",
            ["service", "status"],
            registry=self.registry,
        )
        self.port = free_port()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._feed, daemon=True, name="fake-edge")

    def _feed(self) -> None:
        start = time.monotonic()
        sent = 0
        while not self._stop.is_set():
            due = int((time.monotonic() - start) * PER_S)  # on schedule, not drifting
            for _ in range(due - sent):
                self.latency.labels("web", "web-1", "n1").observe(LATENCY_S)
                self.requests.labels("web", "200").inc()
            sent = max(sent, due)
            self._stop.wait(0.02)

    def __enter__(self) -> FakeEdge:
        self.server, _ = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, FakeEdge]]:
    """A real Prometheus scraping a FakeEdge every second; its URL and the edge."""
    binary = require_binary("prometheus")
    with FakeEdge() as edge:
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: orchestrify-edge\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{edge.port}']\n"
        )
        port = free_port()
        log = tmp_path / "prometheus.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            url = f"http://127.0.0.1:{port}"
            _until(lambda: _get(f"{url}/-/ready") == 200, "Prometheus ready", log, 30)
            yield url, edge
        finally:
            stop_process(proc)


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


def _until(check: Callable[[], bool], what: str, log: Path | None, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    pytest.fail(f"timed out after {seconds:.0f}s waiting for {what}\n{tail}")


def _instant(prometheus: str, query: str) -> float | None:
    resp = httpx.get(f"{prometheus}/api/v1/query", params={"query": query}, timeout=2)
    result = resp.json()["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def _sign_in(url: str) -> httpx.Client:
    browser = httpx.Client(base_url=url)
    form = browser.get("/ui/login")
    csrf = _CSRF.search(form.text)
    assert csrf is not None, form.text
    resp = browser.post("/ui/login", data={"token": TOKEN, "csrf": csrf.group(1)})
    assert resp.status_code == 303, resp.text
    return browser


def _healthy_service(url: str) -> None:
    """Service `web` with two healthy replicas on node n1 (as its agent reports them)."""
    api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"})
    reg = httpx.post(
        f"{url}/v1/nodes/register",
        json={"name": "n1", "address": "127.0.0.1", "memory_total": 8 * 2**30},
        headers={"Authorization": f"Bearer {JOIN}"},
    ).json()
    spec = {
        "name": "web",
        "image": "orchestrify/demo:latest",
        "port": 8000,
        "replicas": 2,
        "policy": {"latency_target_ms": 120, "requests_per_replica": 60, "request_window_s": 10},
    }
    assert api.post("/v1/services", json=spec).status_code == 201
    replicas: list[dict[str, str]] = []

    def placed() -> bool:
        replicas[:] = [r for r in api.get("/v1/replicas").json() if r["desired"] == "run"]
        return len(replicas) == 2

    _until(placed, "two replicas placed", None, 20)
    report = {
        "replicas": [
            {"id": r["id"], "state": "healthy", "address": "127.0.0.1:1"} for r in replicas
        ]
    }
    resp = api.post(
        f"/v1/nodes/{reg['node_id']}/replicas",
        json=report,
        headers={"Authorization": f"Bearer {reg['node_token']}"},
    )
    assert resp.status_code == 204, resp.text


def test_the_service_page_charts_what_prometheus_scraped(
    tmp_path: Path, prometheus: tuple[str, FakeEdge]
) -> None:
    prom, _edge = prometheus
    # Until Prometheus has a full fast-profile window of traffic (10 s of rate): the
    # first page then has what the test sent, not a window still filling.
    rate_q = rate_query("web", window="10s")
    latency_q = latency_query("web", window="3s")

    def settled() -> bool:
        rate = _instant(prom, rate_q)
        return rate is not None and abs(rate - PER_S) < 0.05 * PER_S

    _until(settled, f"a rate of {PER_S}/s in Prometheus", None, 25)
    assert _instant(prom, latency_q) == pytest.approx(0.0975)

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = ["--prometheus-url", prom + "/", "--alerting-profile", "fast"]
    with controller_process(
        tmp_path / "controller", token=TOKEN, join_token=JOIN, args=args, env=env
    ) as url:
        _healthy_service(url)
        page = _sign_in(url).get("/ui/services/web")
        assert page.status_code == 200
        text = page.text
        assert "Prometheus did not answer" not in text, text
        assert "<strong>97.5 ms</strong>" in text  # p95 of 80 ms requests, as Prometheus has it
        assert "dashed line: target 120 ms" in text
        # 60 requests per 10 s per healthy replica, 2 healthy: 12/s
        why = "(60 requests per 10 s per healthy replica, 2 healthy)"
        assert f"dashed line: scale-out above 12/s {why}" in text
        now_rate = re.search(
            r'chart-web-rate-chart-large-title">Request rate, last hour: now ([\d.]+)/s', text
        )
        assert now_rate is not None, text
        assert float(now_rate.group(1)) == pytest.approx(PER_S, rel=0.1)

        # The drawing agrees: the latest point below the dashed line, where 97.5 of
        # 120 ms puts it.
        found = re.search(r'<svg[^>]*id="chart-web-latency-chart-large".*?</svg>', text, re.S)
        assert found is not None
        svg = ET.fromstring(found.group(0))
        (line,) = svg.findall(f"{SVG}line")
        # A few seconds of data at one point a minute: the last point, alone, is a dot
        # (a path's end once there are two).
        marks = [m for m in svg if m.tag in (f"{SVG}path", f"{SVG}circle")]
        assert marks, found.group(0)
        last = marks[-1]
        last_y = float(last.get("cy") or last.get("d", "").split()[-1])
        line_y = float(line.get("y1", ""))
        height = float(svg.get("height", ""))
        assert last_y > line_y  # below the line (y grows downwards)
        bottom = height - 3
        assert (bottom - last_y) / (bottom - line_y) == pytest.approx(97.5 / 120, abs=0.02)
