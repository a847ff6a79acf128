"""Role log_collector on a fresh lab host, the Molecule way, and a worker's service
reaching its per-service file there.

One lab host of this module's own plays the control host: ``playbooks/control.yml``
with ``--tags log_collector`` (the role is off unless the inventory sets
``orchestrify_log_collector``), applied, then applied again with ``changed=0``. This
machine's Docker engine plays the worker: a real controller and a real agent process
(``orchestrify agent`` with ``ORCHESTRIFY_LOG_COLLECTOR``, as the agent role's env file
sets it) run a service that chose no log driver, so the agent gives its container
Docker's syslog driver towards the lab host, and the service's request lines must appear
in ``/var/log/orchestrify/<svc>.log`` there, while ``service logs`` still reads Docker's
local copy. A container with a hostile tag, over TCP, must land in ``unknown.log``.

The session's shared labs (ansible_lab.py) are not used: they need a wheelhouse and
minutes of provisioning that this role does not; a host of the same lab image, rsyslog
from the mirror and two playbook runs take under a minute.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import pytest

from bench.agent_harness import start_controller
from bench.labels import TEST_LABEL
from bench.net import free_port
from bench.processes import stop_process
from bench.wait import wait_for
from orchestrify.demo import DEFAULT_TAG, build_demo_image
from orchestrify.models import spec_hash
from tests.conftest import require, require_binary, require_docker
from tests.integration import lab
from tests.integration.provisioning import REPO, PlaybookRun, run_playbook

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

LOG_DIR = "/var/log/orchestrify"
LINES = 12


def apply_role(inventory: Path, extra_vars: Path) -> PlaybookRun:
    """control.yml, only the log collector's part (as `--tags log_collector` runs it)."""
    return run_playbook(
        "control.yml", inventory=inventory, extra_vars=extra_vars, args=("--tags", "log_collector")
    )


@dataclass(frozen=True)
class Collector:
    the_lab: lab.Lab
    host: lab.LabHost
    first: PlaybookRun  # the role on the fresh host
    second: PlaybookRun  # the same again: must change nothing

    def read(self, path: str) -> str:
        return self.the_lab.exec(self.host, "cat", path, check=False)


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    require_binary("docker")
    require_binary("ssh")
    require_binary("ansible-playbook")
    require(lab.docker_available(), "a running Docker engine (see shared/ENVIRONMENT.md)")
    require(
        shutil.which("debootstrap") is not None or lab.image_label(lab.HOST_IMAGE, "x") is not None,
        "debootstrap (apt-get install debootstrap) to build the lab image",
    )
    tmp = tmp_path_factory.mktemp("log-collector")
    lab.ensure_images()
    the_lab = lab.Lab(key=lab.generate_ssh_key(tmp / "ssh"))

    def variables(name: str, **values: object) -> Path:
        path = tmp / f"{name}.json"
        path.write_text(json.dumps(values))
        return path

    try:
        (host,) = the_lab.start(1)
        inventory = the_lab.write_inventory(tmp / "hosts.yml", groups={"controller": [host]})

        # Off unless the inventory says so: nothing runs, not even the variables' check.
        skipped = apply_role(inventory, variables("off", log_collector_protocols="sctp"))
        assert skipped.rc == 0, skipped.output[-3000:]
        assert skipped.recap(host.name)["changed"] == 0
        absent = the_lab.exec(host, "sh", "-c", "command -v rsyslogd || echo absent")
        assert absent == "absent"
        # On, a bad variable fails the play before anything is installed.
        refused = apply_role(
            inventory,
            variables("bad", orchestrify_log_collector=True, log_collector_protocols="sctp"),
        )
        assert refused.rc != 0
        assert "log_collector_protocols must be udp, tcp or both" in refused.output, refused.output[
            -3000:
        ]

        on = variables("on", orchestrify_log_collector=True)
        first = apply_role(inventory, on)
        assert first.rc == 0, first.output[-5000:]
        second = apply_role(inventory, on)
        assert second.rc == 0, second.output[-5000:]
        yield Collector(the_lab, host, first, second)
    finally:
        the_lab.teardown()


def test_the_role_runs_rsyslog_and_changes_nothing_the_second_time(collector: Collector) -> None:
    host, ex = collector.host, collector.the_lab.exec
    assert collector.first.recap(host.name)["changed"] > 0
    assert collector.second.recap(host.name)["changed"] == 0, collector.second.output[-5000:]
    assert "RUNNING HANDLER [log_collector : Restart rsyslog]" in collector.first.output
    # rsyslog under systemd, listening on both transports
    assert ex(host, "systemctl", "is-active", "rsyslog") == "active"
    assert ex(host, "systemctl", "is-enabled", "rsyslog") == "enabled"
    for transport in ("-Hlnup", "-Hlntp"):
        listening = ex(host, "ss", transport)
        assert re.search(r":514\s.*rsyslogd", listening), (transport, listening)
    # the whole configuration (Debian's and the drop-in) is valid
    ex(host, "rsyslogd", "-N1")
    assert ex(host, "stat", "-c", "%a %U %G", LOG_DIR) == "750 root adm"
    rotate = ex(host, "cat", "/etc/logrotate.d/orchestrify")
    for directive in (f"{LOG_DIR}/*.log", "daily", "rotate 14", "compress", "missingok",
                      "notifempty", "/usr/lib/rsyslog/rsyslog-rotate"):  # fmt: skip
        assert directive in rotate, rotate
    ex(host, "logrotate", "--debug", "/etc/logrotate.d/orchestrify")


@dataclass(frozen=True)
class Shipped:
    service: str
    marker: str  # in each of its lines, and in no other
    lines: list[str]
    stored: dict[str, Any]
    container: dict[str, Any]  # docker inspect of its container
    logs: list[dict[str, Any]]  # GET /v1/services/{name}/logs


@pytest.fixture(scope="module")
def shipped(collector: Collector, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shipped]:
    """A service of one replica and no log driver of its own, run by a real agent process
    started as the role's unit starts it (the collector in ORCHESTRIFY_LOG_COLLECTOR, as
    the env file carries it); LINES numbered requests to it."""
    client = require_docker()
    try:
        build_demo_image()
    except Exception as exc:
        require(False, f"the demo image can be built ({exc})")
    tmp = tmp_path_factory.mktemp("log-collector-fleet")
    run_id = uuid.uuid4().hex[:10]
    service = f"shipped-{run_id[:6]}"
    controller = start_controller(tmp / "controller", free_port(), reconcile_interval_s=0.2)
    api = controller.client()
    log = tmp / "agent.log"
    with log.open("wb") as out:
        agent = subprocess.Popen(
            [sys.executable, "-m", "orchestrify", "agent", "--controller", controller.url,
             "--name", f"worker-{run_id}", "--advertise-address", "127.0.0.1",
             "--state-dir", str(tmp / "agent"), "--metrics-port", "0"],
            stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO),
                 "ORCHESTRIFY_JOIN_TOKEN": controller.join_token,
                 "ORCHESTRIFY_LOG_COLLECTOR": f"udp://{collector.host.address}:514"},
        )  # fmt: skip
    try:
        api.request(
            "POST",
            "/v1/services",
            json={"name": service, "image": DEFAULT_TAG, "replicas": 1, "min_replicas": 0},
        )

        def healthy() -> dict[str, Any] | None:
            assert agent.poll() is None, log.read_text(errors="replace")[-3000:]
            reps: list[dict[str, Any]] = api.get("/v1/replicas", service=service)
            return next((r for r in reps if r["state"] == "healthy"), None)

        replica = wait_for("a healthy replica", healthy, timeout=90, interval=0.2)
        assert replica is not None
        lines = []
        with httpx.Client(timeout=5) as http:
            for n in range(1, LINES + 1):
                path = f"/{run_id}/{n}"
                assert http.get(f"http://{replica['address']}{path}").status_code == 200
                lines.append(f"GET {path} 200")
        (found,) = client.containers.list(filters={"label": f"orchestrify.service={service}"})
        yield Shipped(
            service=service,
            marker=run_id,
            lines=lines,
            stored=api.get(f"/v1/services/{service}"),
            container=found.attrs,
            logs=list(api.stream_ndjson(f"/v1/services/{service}/logs", since="5m")),
        )
    finally:
        stop_process(agent, timeout=20)
        api.close()
        controller.stop()
        # An agent's containers outlive it (by design): these are this test's service's.
        for container in client.containers.list(
            all=True, filters={"label": f"orchestrify.service={service}"}
        ):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        client.close()


def test_a_service_without_a_driver_reaches_its_file_on_the_collector(
    collector: Collector, shipped: Shipped
) -> None:
    path = f"{LOG_DIR}/{shipped.service}.log"

    def all_lines() -> list[str] | None:
        text = collector.read(path)
        ours = [line for line in text.splitlines() if shipped.marker in line]
        return ours if len(ours) >= len(shipped.lines) else None

    got = wait_for(f"{len(shipped.lines)} lines in {path}", all_lines, timeout=30, interval=0.5)
    assert got is not None
    # TIME WORKER MESSAGE, in the order sent (one sender, one UDP path: nothing reorders)
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)"
    worker = socket.gethostname()  # the engine's host, as Docker's syslog driver names it
    for line, sent in zip(got, shipped.lines, strict=True):
        assert re.fullmatch(rf"{stamp} {re.escape(worker)} {re.escape(sent)}", line), line
    # the agent's choice, not the service's: Docker's syslog driver in RFC 5424, tagged
    # with the service, its local copy bounded like json-file; the spec label unchanged
    log_config = shipped.container["HostConfig"]["LogConfig"]
    assert log_config == {
        "Type": "syslog",
        "Config": {
            "syslog-address": f"udp://{collector.host.address}:514",
            "syslog-format": "rfc5424",
            "tag": shipped.service,
            "cache-max-size": "10m",
            "cache-max-file": "3",
        },
    }
    assert shipped.stored["log_driver"] == "json-file" and shipped.stored["log_opts"] == {}
    labels = shipped.container["Config"]["Labels"]
    assert labels["orchestrify.spec"] == spec_hash(shipped.stored)
    # `service logs` still reads every line, from Docker's local copy (dual logging)
    read_back = [o["line"] for o in shipped.logs if "line" in o]
    assert [line for line in read_back if line in shipped.lines] == shipped.lines
    # the collector's lines stay out of the host's own logs
    host_logs = collector.read("/var/log/syslog")
    assert shipped.lines[0] not in host_logs


def test_a_hostile_tag_lands_in_unknown_log(collector: Collector) -> None:
    """Over TCP this time: a tag that would climb out of the directory is not a file name."""
    require_docker().close()
    build_demo_image()
    marker = f"hostile-{uuid.uuid4().hex}"
    lab.docker(
        "run", "--rm", "--label", f"{TEST_LABEL}=1", "--entrypoint", "/bin/sh",
        "--log-driver", "syslog",
        "--log-opt", f"syslog-address=tcp://{collector.host.address}:514",
        "--log-opt", "syslog-format=rfc5424", "--log-opt", "tag=../../etc/x",
        DEFAULT_TAG, "-c", f"echo {marker}",
    )  # fmt: skip
    wait_for(
        "the hostile line in unknown.log",
        lambda: marker in collector.read(f"{LOG_DIR}/unknown.log"),
        timeout=30,
        interval=0.5,
    )
    ex, host = collector.the_lab.exec, collector.host
    found = ex(host, "grep", "-rl", marker, "/etc", "/var/log", check=False).split()
    assert found == [f"{LOG_DIR}/unknown.log"], found
    assert ex(host, "ls", LOG_DIR).split().count("x.log") == 0
