"""The shipped monitoring config against the real Prometheus and Alertmanager.

1. promtool / amtool accept the rendered files, and `promtool test rules` proves each
   alert fires on the series it should and stays quiet on the others
   (tests/promtool/rules_test.yml).
2. The real Prometheus and Alertmanager start with the rendered files and become ready.
3. End to end: Prometheus discovers targets from a stand-in controller's HTTP SD (with
   the bearer token), scrapes a stand-in agent and edge, fires alerts, and Alertmanager
   delivers them to the stand-in's webhook with the token. The stand-in plays only the
   controller/agent/edge side of the metric contract (those programs live elsewhere);
   Prometheus and Alertmanager are the real ones.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bench.net import free_port
from orchestrify.config_render import render_config
from tests.conftest import require_binary
from tests.processes import stop_process

pytestmark = pytest.mark.integration

TOKEN = "integration-token"
RULES_TEST = Path(__file__).resolve().parents[1] / "promtool" / "rules_test.yml"


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture
def rendered(tmp_path: Path) -> Path:
    render_config(out_dir=tmp_path, controller_url="http://127.0.0.1:18080", token=TOKEN)
    return tmp_path


def test_promtool_accepts_the_prometheus_config(rendered: Path) -> None:
    promtool = require_binary("promtool")
    _run(promtool, "check", "config", str(rendered / "prometheus.yml"), cwd=rendered)


def test_promtool_accepts_the_rules(rendered: Path) -> None:
    promtool = require_binary("promtool")
    out = _run(promtool, "check", "rules", str(rendered / "rules.yml"), cwd=rendered)
    assert "6 rules found" in out.stdout


def test_amtool_accepts_the_alertmanager_config(rendered: Path) -> None:
    amtool = require_binary("amtool")
    _run(amtool, "check-config", str(rendered / "alertmanager.yml"), cwd=rendered)


def test_promtool_and_amtool_accept_a_config_for_several_controllers(tmp_path: Path) -> None:
    # Several controllers (issue 11): a webhook and a scrape target each, one discovery
    # per controller in every job; the real tools must take that shape too.
    urls = "https://10.0.0.1:18080,https://10.0.0.2:18080,https://10.0.0.3:18080"
    render_config(out_dir=tmp_path, controller_url=urls, token=TOKEN)
    _run(require_binary("promtool"), "check", "config", "prometheus.yml", cwd=tmp_path)
    _run(require_binary("amtool"), "check-config", "alertmanager.yml", cwd=tmp_path)


def test_rules_fire_exactly_where_they_should(rendered: Path) -> None:
    promtool = require_binary("promtool")
    shutil.copy(RULES_TEST, rendered / "rules_test.yml")
    _run(promtool, "test", "rules", "rules_test.yml", cwd=rendered)


# ------------------------------------------------------------ real processes


class _Processes:
    """Processes a test started; stop() kills exactly those, by PID."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        self.started.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.started):
            stop_process(proc)


@pytest.fixture
def processes() -> Iterator[_Processes]:
    procs = _Processes()
    try:
        yield procs
    finally:
        procs.stop()


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except OSError:
        return 0, b""


def _is_ready(address: str) -> bool:
    return _get(f"http://{address}/-/ready")[0] == 200


def _wait_until(check: Callable[[], Any], *, seconds: float, what: str, logs: list[Path]) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    tails = "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs if log.exists())
    pytest.fail(f"timed out after {seconds:.0f}s waiting for {what}\n{tails}")


def _start_alertmanager(procs: _Processes, config_dir: Path, port: int) -> tuple[str, Path]:
    binary = require_binary("prometheus-alertmanager")
    log = config_dir / "alertmanager.log"
    procs.start(
        [
            binary,
            f"--config.file={config_dir / 'alertmanager.yml'}",
            f"--storage.path={config_dir / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        log,
    )
    return f"127.0.0.1:{port}", log


def _start_prometheus(procs: _Processes, config_dir: Path) -> tuple[str, Path]:
    binary = require_binary("prometheus")
    port = free_port()
    log = config_dir / "prometheus.log"
    procs.start(
        [
            binary,
            f"--config.file={config_dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={config_dir / 'prom-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            # Alerts evaluated before Prometheus has found Alertmanager are resent
            # only after this delay (1m by default): keep the test short.
            "--rules.alert.resend-delay=1s",
        ],
        log,
    )
    return f"127.0.0.1:{port}", log


def test_prometheus_and_alertmanager_start_ready_with_the_rendered_config(
    tmp_path: Path, processes: _Processes
) -> None:
    require_binary("prometheus")
    require_binary("prometheus-alertmanager")
    am_port = free_port()
    # Nothing listens at this controller URL: discovery fails, which must not keep
    # either program from becoming ready.
    render_config(
        out_dir=tmp_path,
        controller_url=f"http://127.0.0.1:{free_port()}",
        token=TOKEN,
        alertmanager_targets=[f"127.0.0.1:{am_port}"],
    )
    am, am_log = _start_alertmanager(processes, tmp_path, am_port)
    prom, prom_log = _start_prometheus(processes, tmp_path)
    logs = [am_log, prom_log]
    for address in (am, prom):
        ready = functools.partial(_is_ready, address)
        _wait_until(ready, seconds=30, what=f"{address}/-/ready", logs=logs)

    _, body = _get(f"http://{prom}/api/v1/rules")
    names = {r["name"] for g in json.loads(body)["data"]["groups"] for r in g["rules"]}
    assert names == {
        "ServiceLatencyHigh",
        "ServiceRequestRateHigh",
        "ServiceRequestRateLow",
        "ReplicaUnhealthy",
        "NodeDown",
        "ControllerLeaderMissing",
    }
    _, body = _get(f"http://{am}/api/v2/status")
    assert "/v1/alerts" in json.loads(body)["config"]["original"]


# ------------------------------------------------------------ end to end


class _StandIn:
    """Plays the controller, one agent and one edge on one loopback port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.started = time.monotonic()
        self.webhooks: list[tuple[str | None, dict[str, Any]]] = []
        self.sd_auth: list[str | None] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep pytest output clean
                pass

            def _send(self, status: int, body: str, content_type: str = "text/plain") -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/v1/discovery/prometheus":
                    auth = self.headers.get("Authorization")
                    stand_in.sd_auth.append(auth)
                    if auth != f"Bearer {TOKEN}":
                        self._send(401, "unauthorized")
                        return
                    self._send(200, json.dumps(stand_in.targets()), "application/json")
                elif self.path in ("/metrics", "/agent/metrics", "/edge/metrics"):
                    self._send(200, stand_in.metrics(self.path))
                else:
                    self._send(404, "not found")

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path == "/v1/alerts":
                    stand_in.webhooks.append((self.headers.get("Authorization"), json.loads(body)))
                    self._send(200, "ok")
                else:
                    self._send(404, "not found")

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def targets(self) -> list[dict[str, Any]]:
        # Prometheus' http_sd has no per-target path, so agent and edge are told apart
        # by __metrics_path__ here; real ones each have their own host:port.
        me = f"127.0.0.1:{self.port}"
        return [
            {"targets": [me], "labels": {"job": "orchestrify-controller"}},
            {
                "targets": [me],
                "labels": {
                    "job": "orchestrify-agent",
                    "node": "n1",
                    "__metrics_path__": "/agent/metrics",
                },
            },
            {
                "targets": [me],
                # A node label on the edge target must not clobber the histogram's own.
                "labels": {
                    "job": "orchestrify-edge",
                    "node": "edge-host",
                    "__metrics_path__": "/edge/metrics",
                },
            },
        ]

    def metrics(self, path: str) -> str:
        if path == "/metrics":
            return (
                'orchestrify_service_latency_target_seconds{service="web"} 0.1\n'
                'orchestrify_node_up{node="n1"} 1\n'
            )
        if path == "/agent/metrics":
            return (
                'orchestrify_replica_healthy{service="web",replica="r1"} 0\n'
                'orchestrify_replica_healthy{service="web",replica="r2"} 1\n'
            )
        # Edge: replica r2 on n2 serves 10 requests a second, all between 0.25 and 0.5 s.
        count = int((time.monotonic() - self.started) * 10)
        lines = []
        for le, value in (("0.1", 0), ("0.25", 0), ("0.5", count), ("+Inf", count)):
            lines.append(
                "orchestrify_http_request_duration_seconds_bucket"
                f'{{service="web",replica="r2",node="n2",le="{le}"}} {value}'
            )
        return "\n".join(lines) + "\n"

    def alerts(self) -> list[tuple[str | None, dict[str, Any]]]:
        return [(auth, alert) for auth, payload in self.webhooks for alert in payload["alerts"]]

    def __enter__(self) -> _StandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_alerts_reach_the_controller_webhook_end_to_end(
    tmp_path: Path, processes: _Processes
) -> None:
    require_binary("prometheus")
    require_binary("prometheus-alertmanager")
    with _StandIn() as stand_in:
        am_port = free_port()
        render_config(
            out_dir=tmp_path,
            controller_url=f"http://127.0.0.1:{stand_in.port}",
            token=TOKEN,
            alertmanager_targets=[f"127.0.0.1:{am_port}"],
            scrape_interval="1s",
            evaluation_interval="1s",
            sd_refresh_interval="1s",
            for_latency="1s",
            for_health="1s",
            group_wait="1s",
            group_interval="1s",
        )
        # Alertmanager first, so Prometheus finds it before its first alert.
        _, am_log = _start_alertmanager(processes, tmp_path, am_port)
        _, prom_log = _start_prometheus(processes, tmp_path)
        logs = [am_log, prom_log]

        def arrived(alertname: str) -> list[tuple[str | None, dict[str, Any]]]:
            return [
                (auth, alert)
                for auth, alert in stand_in.alerts()
                if alert["labels"]["alertname"] == alertname and alert["status"] == "firing"
            ]

        unhealthy = _wait_until(
            lambda: arrived("ReplicaUnhealthy"), seconds=60, what="ReplicaUnhealthy", logs=logs
        )
        slow = _wait_until(
            lambda: arrived("ServiceLatencyHigh"), seconds=60, what="ServiceLatencyHigh", logs=logs
        )

    assert f"Bearer {TOKEN}" in stand_in.sd_auth
    auth, alert = unhealthy[0]
    assert auth == f"Bearer {TOKEN}"
    # `node` comes from discovery: the agent's metric does not carry it.
    assert {k: alert["labels"][k] for k in ("service", "replica", "node", "severity")} == {
        "service": "web",
        "replica": "r1",
        "node": "n1",
        "severity": "warning",
    }
    assert {a["labels"]["replica"] for _, a in unhealthy} == {"r1"}
    auth, alert = slow[0]
    assert auth == f"Bearer {TOKEN}"
    # `node` is the replica's node from the histogram, not the edge target's label.
    assert {k: alert["labels"][k] for k in ("service", "replica", "node")} == {
        "service": "web",
        "replica": "r2",
        "node": "n2",
    }
    assert "above the service's p95 target of 100ms" in alert["annotations"]["description"]
