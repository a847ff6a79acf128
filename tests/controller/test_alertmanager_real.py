"""The real Alertmanager drives the real controller: an alert posted to Alertmanager's
API reaches POST /v1/alerts (bearer token through http_config.authorization), is stored,
decided on, and scales a service out onto a registered node; its resolution arrives too."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from bench.live import serve
from bench.net import free_port
from orchestrify.controller.app import create_app
from orchestrify.controller.settings import ControllerSettings
from tests.conftest import require_binary

pytestmark = pytest.mark.integration
TOKEN = "am-admin-token"


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = check()
            if got:
                return got
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[str]:
    settings = ControllerSettings(data_dir=tmp_path / "controller", token=TOKEN, join_token="join")
    with serve(create_app(settings, registry=CollectorRegistry())) as url:
        yield url


@pytest.fixture
def alertmanager(tmp_path: Path, controller: str) -> Iterator[str]:
    with running_alertmanager(tmp_path, controller) as url:
        yield url


@contextlib.contextmanager
def running_alertmanager(tmp_path: Path, controller: str) -> Iterator[str]:
    """A real Alertmanager sending every alert (resolved too) to ``controller``."""
    binary = require_binary("prometheus-alertmanager")
    port = free_port()
    config = tmp_path / "alertmanager.yml"
    config.write_text(
        f"""
route:
  receiver: orchestrify
  group_by: ["alertname", "service"]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1m
receivers:
  - name: orchestrify
    webhook_configs:
      - url: "{controller}/v1/alerts"
        send_resolved: true
        http_config:
          authorization:
            type: Bearer
            credentials: "{TOKEN}"
"""
    )
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for("alertmanager", lambda: httpx.get(f"{url}/-/ready").status_code == 200)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if proc.stdout is not None:
            proc.stdout.close()


def test_alertmanager_webhook_scales_a_service_out(controller: str, alertmanager: str) -> None:
    api = httpx.Client(base_url=controller, headers={"Authorization": f"Bearer {TOKEN}"})
    nodes = []
    for name in ("worker-a", "worker-b"):
        r = httpx.post(
            f"{controller}/v1/nodes/register",
            json={"name": name, "address": "127.0.0.1"},
            headers={"Authorization": "Bearer join"},
        )
        nodes.append(r.json()["node_id"])
    r = api.post("/v1/services", json={"name": "web", "image": "nginx:1", "max_replicas": 3})
    assert r.status_code == 201
    (slow,) = wait_for("the first replica", lambda: api.get("/v1/replicas").json())
    # No agent runs here: report the replica healthy as its agent would, or the
    # scale-out would wait for it (a replica still starting is capacity on its way).
    report = {"id": slow["id"], "state": "healthy", "address": "127.0.0.1:1"}
    r = api.post(f"/v1/nodes/{slow['node']}/replicas", json={"replicas": [report]})
    assert r.status_code == 204

    labels = {
        "alertname": "ServiceLatencyHigh",
        "service": "web",
        "replica": slow["id"],
        "node": slow["node_name"],
        "severity": "warning",
    }
    starts = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    alert = {"labels": labels, "annotations": {"summary": "slow"}, "startsAt": starts}
    assert httpx.post(f"{alertmanager}/api/v2/alerts", json=[alert]).status_code == 200

    wait_for("the scale-out", lambda: api.get("/v1/services/web").json()["replicas"] == 2)
    reps = wait_for("the new replica", lambda: len(api.get("/v1/replicas").json()) == 2)
    assert reps
    new = [r for r in api.get("/v1/replicas").json() if r["id"] != slow["id"]]
    assert new[0]["node"] != slow["node"]  # on a different worker
    received = api.get("/v1/events", params={"kind": "alert"}).json()
    assert received[0]["data"]["receiver"] == "orchestrify"
    assert received[0]["data"]["fingerprint"]
    decided = api.get("/v1/events", params={"kind": "decision"}).json()
    assert [(d["action"], d["outcome"]) for d in decided] == [("scale_out", "ok")]

    ended = {**alert, "endsAt": datetime.now(UTC).isoformat().replace("+00:00", "Z")}
    assert httpx.post(f"{alertmanager}/api/v2/alerts", json=[ended]).status_code == 200
    wait_for(
        "the resolved notice",
        lambda: any(
            e["data"]["status"] == "resolved"
            for e in api.get("/v1/events", params={"kind": "alert"}).json()
        ),
    )
    # The notice is stored (its "alert" event) before it is decided on, in a second
    # transaction: wait for the decision itself.
    decided = wait_for(
        "the decision on the resolved notice",
        lambda: (d := api.get("/v1/events", params={"kind": "decision"}).json())[1:] and d,
    )
    assert [(d["action"], d["reason"]) for d in decided[1:]] == [("scale_in", "stabilization")]
    assert api.get("/v1/services/web").json()["replicas"] == 2  # waits out 300 s
    api.close()


def test_a_late_notice_from_alertmanager_does_not_undo_a_manual_scale(tmp_path: Path) -> None:
    # The lab's case: `service scale demo=3` undone 2 s later by a ServiceRequestRateLow
    # that Prometheus had already cleared and Alertmanager had not yet reported resolved.
    settings = ControllerSettings(
        data_dir=tmp_path / "controller",
        token=TOKEN,
        join_token="join",
        alert_eval_interval_s=0.5,  # the timer that re-evaluated the stale alert
    )
    with (
        serve(create_app(settings, registry=CollectorRegistry())) as controller,
        running_alertmanager(tmp_path, controller) as alertmanager,
        httpx.Client(base_url=controller, headers={"Authorization": f"Bearer {TOKEN}"}) as api,
    ):
        httpx.post(
            f"{controller}/v1/nodes/register",
            json={"name": "worker-a", "address": "127.0.0.1"},
            headers={"Authorization": "Bearer join"},
        )
        body = {
            "name": "demo",
            "image": "nginx:1",
            "replicas": 3,
            "min_replicas": 2,  # the alert takes one step, 3 -> 2, then holds at min
            "policy": {"cooldown_s": 0, "scale_down_stabilization_s": 5},
        }
        assert api.post("/v1/services", json=body).status_code == 201
        labels = {"alertname": "ServiceRequestRateLow", "service": "demo", "severity": "info"}
        begun = datetime.now(UTC) - timedelta(seconds=60)  # low load for a minute already
        low = {"labels": labels, "startsAt": begun.isoformat().replace("+00:00", "Z")}
        assert httpx.post(f"{alertmanager}/api/v2/alerts", json=[low]).status_code == 200
        wait_for("the scale-in", lambda: api.get("/v1/services/demo").json()["replicas"] == 2)

        # The owner scales back up by hand while the alert is still firing here.
        assert api.patch("/v1/services/demo", json={"replicas": 3}).status_code == 200

        def refusal() -> list[dict[str, Any]]:
            return [
                d
                for d in api.get("/v1/events", params={"kind": "decision"}).json()
                if d["reason"] == "manual_scale"
            ]

        (refused,) = wait_for("the timer's decision on the old episode", refusal)
        assert "before demo was scaled by hand to 3" in refused["message"]
        assert api.get("/v1/services/demo").json()["replicas"] == 3
        # Alertmanager's late resolve changes nothing either.
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        assert httpx.post(f"{alertmanager}/api/v2/alerts", json=[{**low, "endsAt": now}]).is_success
        wait_for(
            "the resolved notice",
            lambda: any(
                e["data"]["status"] == "resolved"
                for e in api.get("/v1/events", params={"kind": "alert"}).json()
            ),
        )
        assert api.get("/v1/services/demo").json()["replicas"] == 3
        scaled = [
            e["data"]["to"]
            for e in api.get("/v1/events", params={"service": "demo"}).json()
            if e["action"] == "scale"
        ]
        assert scaled == [2, 3]  # the alert's step and the owner's, nothing after
