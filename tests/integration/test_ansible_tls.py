"""TLS from the roles (``orchestrify_tls: true``), proven on the shared control plane
(tests/integration/ansible_lab.py): ``playbooks/site.yml`` on a control host
(controller, Prometheus, Alertmanager, edge), a worker (Docker engine, agent) and the
controllers' database host.

The roles generate a private CA on the control host (its key stays there), issue the
controller and the edge certificates from it, and every client verifies them with the
CA: the controller answers HTTPS only, the agent registers and heartbeats over it,
Prometheus scrapes the controller and the edge over https (and discovers the agent over
it), and Alertmanager's webhook reaches the controller over https. A second run changes
nothing on any host (no new key or certificate, no restarted unit), and a changed name
list re-issues the controller's certificate from the same CA.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import urllib.request
from typing import Any

import pytest

from tests.integration.ansible_lab import (
    API_TOKEN,
    PORT,
    ControlPlane,
    unit_starts,
    wait_for,
)
from tests.integration.provisioning import run_playbook

pytestmark = [pytest.mark.integration, pytest.mark.timeout(3600)]


@pytest.fixture
def fleet(control_plane: ControlPlane) -> ControlPlane:
    return control_plane


def plain_get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_controller_serves_https_only_with_a_certificate_of_the_fleet_ca(
    fleet: ControlPlane,
) -> None:
    # Verified with the generated CA alone: the certificate is signed by it and names
    # the address the others reach the controller at.
    def healthy() -> bool:
        with urllib.request.urlopen(
            f"{fleet.url}/healthz", timeout=5, context=fleet.context()
        ) as response:
            return response.status == 200

    wait_for("the controller's /healthz over https", healthy, timeout=60)
    # The system's trust store does not know the private CA.
    with (
        pytest.raises(ssl.SSLCertVerificationError),
        socket.create_connection((fleet.control.address, PORT), timeout=10) as raw,
    ):
        ssl.create_default_context().wrap_socket(raw, server_hostname=fleet.control.address)
    # No plain-HTTP listener beside it: an http request gets no HTTP answer.
    with pytest.raises((OSError, http.client.HTTPException)):
        urllib.request.urlopen(f"http://{fleet.control.address}:{PORT}/healthz", timeout=10)

    ex, host = fleet.lab.exec, fleet.control
    start = ex(host, "systemctl", "show", "-p", "ExecStart", "orchestrify-controller")
    assert "--tls-cert /etc/orchestrify/tls/controller.crt" in start, start
    assert "--tls-key /etc/orchestrify/tls/controller.key" in start, start
    profile = ex(host, "cat", "/etc/profile.d/orchestrify.sh")
    assert "ORCHESTRIFY_URL=https://127.0.0.1:18080" in profile, profile
    assert "ORCHESTRIFY_CA=/etc/orchestrify/tls/ca.crt" in profile, profile
    # The CLI on the control host, with the profile's URL and CA and the admin token
    cli = ex(host, "bash", "-lc",
             f"ORCHESTRIFY_TOKEN={API_TOKEN} orchestrify node ls --json")  # fmt: skip
    assert isinstance(json.loads(cli), list), cli


def test_agent_registers_and_heartbeats_over_tls(fleet: ControlPlane) -> None:
    ex, worker = fleet.lab.exec, fleet.worker
    start = ex(worker, "systemctl", "show", "-p", "ExecStart", "orchestrify-agent")
    assert "--ca /etc/orchestrify/tls/agent-ca.crt" in start, start
    assert f"ORCHESTRIFY_URL={fleet.url}" in ex(worker, "cat", "/etc/orchestrify/agent.env")

    def node() -> dict[str, Any] | None:
        nodes = [n for n in fleet.call("GET", "/v1/nodes") if n["name"] == worker.name]
        return nodes[0] if nodes and nodes[0]["state"] == "ready" else None

    first = wait_for("the worker's agent registered and ready", node, timeout=120)
    assert first["address"] == worker.address, first

    def heartbeat_after_first() -> dict[str, Any] | None:
        current = node()
        return current if current and current["last_heartbeat"] != first["last_heartbeat"] else None

    later = wait_for("a later heartbeat", heartbeat_after_first, timeout=60)
    assert later["last_heartbeat"] > first["last_heartbeat"], (first, later)


def test_prometheus_scrapes_controller_and_edge_over_https(fleet: ControlPlane) -> None:
    address = fleet.control.address
    config = plain_get(f"http://{address}:9090/api/v1/status/config")["data"]["yaml"]
    assert "ca_file: /etc/orchestrify/tls/ca.crt" in config, config

    def targets_up() -> dict[str, dict[str, Any]] | None:
        active = plain_get(f"http://{address}:9090/api/v1/targets")["data"]["activeTargets"]
        by_job: dict[str, dict[str, Any]] = {}
        for target in active:
            if target["health"] == "up":
                by_job.setdefault(target["labels"]["job"], target)
        wanted = {"orchestrify-controller", "orchestrify-edge", "orchestrify-agent"}
        return by_job if wanted <= set(by_job) else None

    try:
        up = wait_for("controller, edge and agent targets up", targets_up, timeout=180)
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\n{plain_get(f'http://{address}:9090/api/v1/targets')}"
        ) from None
    assert up["orchestrify-controller"]["scrapeUrl"].startswith(f"https://{address}:{PORT}/")
    assert up["orchestrify-edge"]["scrapeUrl"].startswith(f"https://{address}:18082/")
    # the agent's /metrics stays plain http, found through the controller's https discovery
    assert up["orchestrify-agent"]["scrapeUrl"].startswith(f"http://{fleet.worker.address}:")
    # the edge's /metrics answers HTTPS only too
    with urllib.request.urlopen(
        f"https://{address}:18082/metrics", timeout=10, context=fleet.context()
    ) as response:
        assert "orchestrify_edge" in response.read().decode(errors="replace")


def test_alertmanager_webhook_reaches_the_controller_over_https(fleet: ControlPlane) -> None:
    address = fleet.control.address
    status = plain_get(f"http://{address}:9093/api/v2/status")
    original = status["config"]["original"]
    assert (
        f"{fleet.url}/v1/alerts" in original and "ca_file: /etc/orchestrify/tls/ca.crt" in original
    )
    alert = [{"labels": {"alertname": "TlsWebhookProbe", "service": "tls-probe"}}]
    request = urllib.request.Request(
        f"http://{address}:9093/api/v2/alerts",
        data=json.dumps(alert).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200

    def received() -> bool:
        return any(
            e["kind"] == "alert" and "TlsWebhookProbe" in e["message"]
            for e in fleet.call("GET", "/v1/events")
        )

    wait_for("the alert at the controller's webhook", received, timeout=120)


def test_keys_stay_private_and_the_ca_key_stays_on_the_control_host(fleet: ControlPlane) -> None:
    ex, control, worker = fleet.lab.exec, fleet.control, fleet.worker
    for path, wanted in (
        ("/etc/orchestrify/ca", "700 root"),
        ("/etc/orchestrify/ca/ca.key", "600 root"),
        ("/etc/orchestrify/tls/controller.key", "600 orchestrify"),
        ("/etc/orchestrify/tls/edge.key", "600 orchestrify-edge"),
        ("/etc/orchestrify/tls/controller.crt", "644 root"),
    ):
        assert ex(control, "stat", "-c", "%a %U", path) == wanted, path
    # the controller's certificate is the CA's, for the names others use
    text = ex(control, "openssl", "x509", "-in", "/etc/orchestrify/tls/controller.crt",
              "-noout", "-issuer", "-ext", "subjectAltName")  # fmt: skip
    assert "CN = orchestrify CA" in text and f"IP Address:{control.address}" in text, text
    ex(control, "openssl", "verify", "-CAfile", "/etc/orchestrify/ca/ca.crt",
       "/etc/orchestrify/tls/controller.crt", "/etc/orchestrify/tls/edge.crt")  # fmt: skip

    # The worker has the CA's certificate, and no trace of its key anywhere.
    assert (
        ex(worker, "cat", "/etc/orchestrify/tls/agent-ca.crt") == fleet.ca_file.read_text().strip()
    )
    assert (
        ex(worker, "sh", "-c", "test -e /etc/orchestrify/ca && echo present || echo absent")
        == "absent"
    )
    key_lines = ex(control, "cat", "/etc/orchestrify/ca/ca.key").splitlines()
    body = max(key_lines[1:-1], key=len)  # a line of the key's base64, unique to it
    found = ex(worker, "grep", "-rlF", "--", body, "/etc", "/opt", "/root", "/var/lib/orchestrify",
               "/tmp", check=False)  # fmt: skip
    assert found == "", found
    assert ex(worker, "sh", "-c", "ls /etc/orchestrify/tls") == "agent-ca.crt"


def test_second_run_changes_nothing(fleet: ControlPlane) -> None:
    ex, control = fleet.lab.exec, fleet.control
    before = ex(control, "sha256sum", "/etc/orchestrify/tls/controller.crt",
                "/etc/orchestrify/tls/edge.crt", "/etc/orchestrify/ca/ca.crt")  # fmt: skip
    starts = {
        unit: unit_starts(fleet.lab, control, unit)
        for unit in ("orchestrify-controller", "orchestrify-edge")
    }
    second = fleet.site()
    assert second.rc == 0, second.output[-6000:]
    # the database host too: the same user, database, password and configuration
    for host in (fleet.control, fleet.worker, fleet.db):
        assert second.recap(host.name)["changed"] == 0, second.output[-6000:]
    # nothing restarted either (the roles test restarted the edge once on its own)
    for unit, count in starts.items():
        assert unit_starts(fleet.lab, control, unit) == count, unit
    after = ex(control, "sha256sum", "/etc/orchestrify/tls/controller.crt",
               "/etc/orchestrify/tls/edge.crt", "/etc/orchestrify/ca/ca.crt")  # fmt: skip
    assert after == before


def test_a_new_name_reissues_the_controller_certificate_from_the_same_ca(
    fleet: ControlPlane,
) -> None:
    ex, control = fleet.lab.exec, fleet.control
    ca_before = ex(control, "sha256sum", "/etc/orchestrify/ca/ca.key", "/etc/orchestrify/ca/ca.crt")
    run = run_playbook(
        "control.yml", inventory=fleet.inventory, extra_vars=fleet.extra_vars,
        args=("--tags", "orchestrify_controller",
              "-e", '{"orchestrify_controller_tls_names": ["controller.lab.example"]}'),
    )  # fmt: skip
    assert run.rc == 0, run.output[-6000:]
    assert run.recap(control.name)["changed"] > 0
    assert ex(control, "sha256sum", "/etc/orchestrify/ca/ca.key", "/etc/orchestrify/ca/ca.crt") == (
        ca_before
    )

    # The restarted controller presents a certificate for the new name, from the same CA.
    def serves_new_name() -> bool:
        with (
            socket.create_connection((control.address, PORT), timeout=10) as raw,
            fleet.context().wrap_socket(raw, server_hostname="controller.lab.example"),
        ):
            return True

    wait_for("the controller's certificate for controller.lab.example", serves_new_name, timeout=60)
