"""The agent protocol and the CLI over TLS, against the real controller on HTTPS, a real
agent and the real Docker engine; and a controller whose certificate another CA signed is
refused with a clear message, the agent registering nothing and touching no container.

Each test makes its own private CAs and a server certificate for 127.0.0.1 (tests/tls.py);
every container carries ``orchestrify.test=1`` and the test's run id and is removed by
those labels in teardown.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import pytest
from typer.testing import CliRunner

from bench.agent_harness import RunningAgent, RunningController, agent_settings, start_controller
from bench.labels import RUN_LABEL, TEST_LABEL
from bench.net import free_port
from bench.wait import wait_for
from orchestrify.agent import HealSettings
from orchestrify.cli import app as cli_app
from orchestrify.client import ControllerClient
from tests.conftest import require_docker
from tests.tls import CertAuthority, make_ca, make_server_pair

pytestmark = pytest.mark.integration

DEADLINE_S = 60.0  # generous: the machine is shared
REFUSED = "not signed by the CA in"


@dataclass
class TlsCluster:
    controller: RunningController
    api: ControllerClient
    docker: docker.DockerClient
    run_id: str
    tmp: Path
    ca: CertAuthority
    other_ca: CertAuthority  # signed nothing the controller serves
    agents: list[RunningAgent]

    def start_agent(self, *, name: str, state_dir: Path, ca: Path) -> RunningAgent:
        settings = agent_settings(
            self.controller,
            name=name,
            state_dir=state_dir,
            run_id=self.run_id,
            heal=HealSettings(fault_interval_s=0.5, probe_timeout_s=0.4),
        )
        agent = RunningAgent(replace(settings, ca=ca)).start()
        self.agents.append(agent)
        return agent

    def containers(self) -> list[Any]:
        labels = [f"{TEST_LABEL}=1", f"{RUN_LABEL}={self.run_id}"]
        return self.docker.containers.list(all=True, filters={"label": labels})

    def nodes(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api.get("/v1/nodes")
        return result

    def cli(self, *args: str, ca: Path | None) -> Any:
        opts = ["--controller", self.controller.url, "--token", self.controller.admin_token]
        if ca is not None:
            opts += ["--ca", str(ca)]
        return CliRunner().invoke(cli_app, [*opts, *args], env={"ORCHESTRIFY_CA": None})


@pytest.fixture
def tls_cluster(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[TlsCluster]:
    caplog.set_level(logging.INFO, logger="orchestrify")
    client = require_docker()
    ca = make_ca(tmp_path / "pki", name="ca")
    other_ca = make_ca(tmp_path / "pki", name="other-ca")
    pair = make_server_pair(ca, tmp_path / "pki", name="controller")
    controller = start_controller(
        tmp_path / "controller",
        free_port(),
        tls_cert=pair.cert_file,
        tls_key=pair.key_file,
        ca=ca.cert_file,
    )
    api = controller.client()
    c = TlsCluster(controller, api, client, uuid.uuid4().hex[:10], tmp_path, ca, other_ca, [])
    try:
        yield c
    finally:
        for agent in c.agents:
            agent.kill()
        api.close()
        controller.stop()
        for container in c.containers():
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        client.close()


def _heartbeat(c: TlsCluster, name: str) -> datetime | None:
    for node in c.nodes():
        if node["name"] == name and node["last_heartbeat"]:
            return datetime.fromisoformat(node["last_heartbeat"])
    return None


def _refusals(caplog: pytest.LogCaptureFixture, agent: RunningAgent) -> list[str]:
    """What ``agent`` logged (from its own thread) saying the certificate was refused."""
    assert agent.thread is not None
    return [
        str(getattr(r, "error", ""))
        for r in caplog.records
        if r.thread == agent.thread.ident and REFUSED in str(getattr(r, "error", ""))
    ]


def test_the_agent_and_the_cli_work_over_https_with_the_private_ca(
    tls_cluster: TlsCluster, demo_image: str
) -> None:
    c = tls_cluster
    assert c.controller.url.startswith("https://")
    # The controller speaks HTTPS only: plain HTTP on its port gets no API answer.
    with pytest.raises(httpx.HTTPError):
        httpx.get(c.controller.url.replace("https://", "http://") + "/healthz", timeout=5)

    c.start_agent(name=f"tls-{c.run_id}", state_dir=c.tmp / "agent", ca=c.ca.cert_file)
    first = wait_for(
        "the agent registered over TLS", lambda: _heartbeat(c, f"tls-{c.run_id}"), timeout=60
    )
    wait_for(
        "a later heartbeat over TLS",
        lambda: (_heartbeat(c, f"tls-{c.run_id}") or first) > first,
        timeout=DEADLINE_S,
    )

    # The whole protocol: assignments reach the agent, its reports come back.
    c.api.request(
        "POST",
        "/v1/services",
        json={"name": "web", "image": demo_image, "replicas": 1, "min_replicas": 0, "drain_s": 0},
    )
    wait_for(
        "a healthy replica reported over TLS",
        lambda: [r for r in c.api.get("/v1/replicas", service="web") if r["state"] == "healthy"],
        timeout=DEADLINE_S,
    )

    listed = c.cli("node", "ls", ca=c.ca.cert_file)
    assert listed.exit_code == 0, listed.output
    assert f"tls-{c.run_id}" in listed.output

    # An http:// URL to the HTTPS-only controller says what to change.
    plain = CliRunner().invoke(
        cli_app,
        ["--controller", c.controller.url.replace("https://", "http://"), "node", "ls"],
        env={"ORCHESTRIFY_CA": None, "ORCHESTRIFY_TOKEN": c.controller.admin_token},
    )
    assert plain.exit_code == 1 and "use an https:// URL" in plain.output, plain.output

    # Without --ca the system's store is used, which does not hold the private CA.
    untrusted = c.cli("node", "ls", ca=None)
    assert untrusted.exit_code == 1
    assert "not trusted by this system's CA store" in untrusted.output
    assert "--ca" in untrusted.output and "Traceback" not in untrusted.output


def test_a_controller_signed_by_another_ca_is_refused_and_nothing_changes(
    tls_cluster: TlsCluster, demo_image: str, caplog: pytest.LogCaptureFixture
) -> None:
    c = tls_cluster
    name = f"tls-{c.run_id}"
    state_dir = c.tmp / "agent"
    # A node that ran a replica with the right CA...
    agent = c.start_agent(name=name, state_dir=state_dir, ca=c.ca.cert_file)
    c.api.request(
        "POST",
        "/v1/services",
        json={"name": "web", "image": demo_image, "replicas": 1, "min_replicas": 0, "drain_s": 0},
    )
    wait_for(
        "a healthy replica",
        lambda: [r for r in c.api.get("/v1/replicas", service="web") if r["state"] == "healthy"],
        timeout=DEADLINE_S,
    )
    agent.kill()
    c.agents.remove(agent)
    (before,) = c.containers()
    started_at = before.attrs["State"]["StartedAt"]
    caplog.clear()

    # ...restarted with the wrong CA, plus a new host with the wrong CA.
    restarted = c.start_agent(name=name, state_dir=state_dir, ca=c.other_ca.cert_file)
    newcomer = c.start_agent(
        name=f"new-{c.run_id}", state_dir=c.tmp / "new-agent", ca=c.other_ca.cert_file
    )
    for running in (restarted, newcomer):
        wait_for(
            "the agent to log the refused certificate",
            functools.partial(_refusals, caplog, running),
            timeout=DEADLINE_S,
        )
    message = _refusals(caplog, newcomer)[0]
    assert str(c.other_ca.cert_file) in message and "ORCHESTRIFY_CA" in message

    # Nothing registered: the newcomer is unknown to the controller.
    assert [n["name"] for n in c.nodes()] == [name]
    # The agents keep retrying (a refused certificate is not "unknown node")...
    for running in (restarted, newcomer):
        assert running.thread is not None and running.thread.is_alive()
        assert running.error == []
    # ...and the replica's container is the same one, never restarted or removed.
    (after,) = c.containers()
    after.reload()
    assert after.id == before.id and after.status == "running"
    assert after.attrs["State"]["StartedAt"] == started_at

    # The CLI with the wrong CA: exit 1 and the message, never a traceback.
    refused = c.cli("node", "ls", ca=c.other_ca.cert_file)
    assert refused.exit_code == 1
    assert REFUSED in refused.output and str(c.other_ca.cert_file) in refused.output
    assert "Traceback" not in refused.output
