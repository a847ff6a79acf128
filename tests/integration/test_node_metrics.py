"""node_exporter, scraped and used, with every part real: a `prometheus-node-exporter`
process on loopback, a controller process whose discovery lists it (a node registered at
127.0.0.1, the controller's --node-exporter-port), the shipped config rendered for them,
and the real Prometheus and Alertmanager.

Proves: the node_exporter target is found through the controller's discovery, with the
node's name as `node`, and is up; the node alerts evaluate on its real series and carry
the node (their thresholds set so they must fire on any machine: every node has less
than 100% of its memory available and of its disk free); the alerts reach the controller's
webhook and the shipped mapping records them without acting (notify_only); the
dashboard's node panels answer with the node.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from orchestrify.config_render import render_config
from tests.conftest import free_port, require_binary
from tests.processes import ROOT, controller_process, stop_process

pytestmark = pytest.mark.integration

TOKEN = "node-metrics-token"
JOIN = "node-metrics-join"
T = TypeVar("T")


class _Processes:
    """The processes this test started; stop() ends exactly those, by PID."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, args: list[str]) -> None:
        log = self.folder / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        self.started.append((proc, log))

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for _, log in self.started)

    def stop(self) -> None:
        for proc, _ in reversed(self.started):
            stop_process(proc)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[_Processes]:
    procs = _Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop()


def _wait(
    what: str, check: Callable[[], T | None], *, seconds: float, logs: Callable[[], str]
) -> T:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            value = check()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out after {seconds:.0f}s waiting for {what}\n{logs()}")


def _prom(address: str, path: str, **params: str) -> Any:
    url = f"http://{address}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.loads(answer.read())["data"]


def test_node_exporter_is_discovered_scraped_alerted_on_and_recorded(
    tmp_path: Path, processes: _Processes
) -> None:
    node_exporter = require_binary("prometheus-node-exporter")
    prometheus = require_binary("prometheus")
    alertmanager = require_binary("prometheus-alertmanager")

    exporter_port = free_port()
    processes.start(
        "node-exporter", [node_exporter, f"--web.listen-address=127.0.0.1:{exporter_port}"]
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = ["--node-exporter-port", str(exporter_port)]
    with controller_process(
        tmp_path / "controller", token=TOKEN, join_token=JOIN, args=args, env=env
    ) as url:
        api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"})
        # A node as its agent registers it: its address is where node_exporter answers.
        reg = httpx.post(
            f"{url}/v1/nodes/register",
            json={"name": "n1", "address": "127.0.0.1"},
            headers={"Authorization": f"Bearer {JOIN}"},
        )
        assert reg.status_code == 200, reg.text

        am_port, prom_port = free_port(), free_port()
        render_config(
            out_dir=tmp_path,
            controller_url=url,
            token=TOKEN,
            alertmanager_targets=[f"127.0.0.1:{am_port}"],
            scrape_interval="1s",
            evaluation_interval="1s",
            sd_refresh_interval="1s",
            node_scrape_interval="1s",
            group_wait="1s",
            group_interval="1s",
            # Thresholds every machine is under, so the rules must fire here.
            node_disk_free_ratio=1.0,
            node_memory_free_ratio=1.0,
            for_disk="0s",
            for_memory="0s",
        )
        # Alertmanager first: Prometheus drops alerts evaluated before it found one.
        processes.start(
            "alertmanager",
            [
                alertmanager,
                f"--config.file={tmp_path / 'alertmanager.yml'}",
                f"--storage.path={tmp_path / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",
            ],
        )
        processes.start(
            "prometheus",
            [
                prometheus,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--rules.alert.resend-delay=1s",
            ],
        )
        prom = f"127.0.0.1:{prom_port}"

        def node_exporter_up() -> list[dict[str, Any]]:
            targets = _prom(prom, "/api/v1/targets", state="active")["activeTargets"]
            return [
                t
                for t in targets
                if t["labels"].get("job") == "orchestrify-node-exporter" and t["health"] == "up"
            ]

        (target,) = _wait(
            "the node_exporter target up", node_exporter_up, seconds=60, logs=processes.logs
        )
        assert target["scrapeUrl"] == f"http://127.0.0.1:{exporter_port}/metrics"
        assert target["labels"]["node"] == "n1"

        def firing(alertname: str) -> list[dict[str, Any]]:
            alerts = _prom(prom, "/api/v1/alerts")["alerts"]
            return [
                a
                for a in alerts
                if a["labels"]["alertname"] == alertname and a["state"] == "firing"
            ]

        (memory,) = _wait(
            "NodeMemoryPressure firing",
            lambda: firing("NodeMemoryPressure"),
            seconds=60,
            logs=processes.logs,
        )
        assert memory["labels"]["node"] == "n1"
        assert "Node n1 has " in memory["annotations"]["description"]
        disks = _wait(
            "NodeDiskFull firing", lambda: firing("NodeDiskFull"), seconds=60, logs=processes.logs
        )
        assert {d["labels"]["node"] for d in disks} == {"n1"}
        # Only real filesystems: never tmpfs, overlay (containers' roots) and the like.
        excluded = {"tmpfs", "ramfs", "devtmpfs", "overlay", "squashfs", "nsfs", "iso9660"}
        assert not {d["labels"]["fstype"] for d in disks} & excluded

        # Through Alertmanager to the controller: recorded, and decided "recorded only".
        def recorded() -> list[dict[str, Any]]:
            events: list[dict[str, Any]] = api.get("/v1/events", params={"kind": "decision"}).json()
            return [e for e in events if "NodeMemoryPressure recorded only" in e["message"]]

        _wait(
            "the controller's decision on NodeMemoryPressure",
            recorded,
            seconds=60,
            logs=processes.logs,
        )
        alerts = api.get("/v1/events", params={"kind": "alert"}).json()
        assert any(
            e["node"] == "n1" and "NodeMemoryPressure firing" in e["message"] for e in alerts
        )
        actions = api.get("/v1/events", params={"kind": "action"}).json()
        assert actions == []  # nothing acted on
        (node,) = api.get("/v1/nodes").json()
        assert node["state"] != "draining"

        # The dashboard's node panels answer for the node (Grafana fills its variables).
        dashboard = json.loads((tmp_path / "grafana-dashboard.json").read_text())
        panels = [
            p
            for p in dashboard["panels"]
            if "node_" in "".join(t["expr"] for t in p.get("targets", []))
        ]
        assert len(panels) == 4
        for panel in panels:
            expr = panel["targets"][0]["expr"]
            expr = expr.replace("$node", ".*").replace("$__rate_interval", "30s")

            def answers(expr: str = expr) -> list[dict[str, Any]]:
                result: list[dict[str, Any]] = _prom(prom, "/api/v1/query", query=expr)["result"]
                return result

            result = _wait(f"panel {panel['title']!r}", answers, seconds=30, logs=processes.logs)
            assert {r["metric"]["node"] for r in result} == {"n1"}, panel["title"]
