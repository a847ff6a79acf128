"""No token in any log line: a whole run of the real controller, agent and edge (with the
real Docker engine and Nginx) is logged at DEBUG, every logger included, in both the
text and the JSON format the programs use; then the logs are searched for the admin
token, the join token and the node token the agent was given.

The run covers what handles tokens: registration, heartbeats and reports with the node
token, the edge's watch with the admin token, a deploy through Nginx, requests refused
for a wrong token (each kind of token on a route it does not open), an agent restart
(it comes back with its saved identity) and the event trail.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import pytest

from bench.agent_harness import RunningAgent, agent_settings, start_controller
from bench.edge_lab import EdgeThread
from bench.labels import RUN_LABEL, TEST_LABEL
from bench.net import free_port
from bench.wait import wait_for
from orchestrify.agent import HealSettings
from orchestrify.demo import DEFAULT_TAG, build_demo_image
from orchestrify.edge import EdgeSettings
from orchestrify.logs import JsonFormatter, TextFormatter
from tests.conftest import require, require_binary, require_docker

pytestmark = pytest.mark.integration

# Libraries the programs quieten in production (setup_logging); here they speak too.
LOUD = ("httpx", "httpcore", "docker", "urllib3", "uvicorn", "uvicorn.error", "uvicorn.access")


@contextlib.contextmanager
def everything_logged() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """Every record of every logger at DEBUG, formatted as the programs format them."""
    text, as_json = io.StringIO(), io.StringIO()
    handlers = [logging.StreamHandler(text), logging.StreamHandler(as_json)]
    handlers[0].setFormatter(TextFormatter())
    handlers[1].setFormatter(JsonFormatter())
    root = logging.getLogger()
    saved = {name: logging.getLogger(name).level for name in ("", *LOUD)}
    for handler in handlers:
        handler.setLevel(logging.DEBUG)
        root.addHandler(handler)
    for name in saved:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield text, as_json
    finally:
        for handler in handlers:
            root.removeHandler(handler)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def test_a_full_run_logs_no_token(tmp_path: Path) -> None:
    require_binary("nginx")
    client = require_docker()
    try:
        build_demo_image()
    except Exception as exc:
        require(False, f"the demo image can be built ({exc})")
    run_id = uuid.uuid4().hex[:10]
    things: list[Any] = []
    with everything_logged() as (text, as_json):
        try:
            controller = start_controller(tmp_path / "controller", free_port())
            things.append(controller)
            api = controller.client()
            settings = agent_settings(
                controller,
                name=f"node-{run_id}",
                state_dir=tmp_path / "agent",
                run_id=run_id,
                heal=HealSettings(fault_interval_s=0.5, probe_timeout_s=0.4),
            )
            agent = RunningAgent(settings).start()
            things.append(agent)
            listen = free_port()
            edge = EdgeThread(
                EdgeSettings(
                    controller_url=controller.url,
                    token=controller.admin_token,
                    nginx_conf_dir=tmp_path / "nginx",
                    listen=f"127.0.0.1:{listen}",
                    metrics_port=free_port(),
                    name=f"edge-{run_id}",
                    worker_processes="1",
                )
            ).start()
            things.append(edge)

            api.request(
                "POST",
                "/v1/services",
                json={"name": "quiet", "image": DEFAULT_TAG, "replicas": 1, "min_replicas": 0},
            )
            wait_for(
                "the replica healthy and in Nginx",
                lambda: len(edge.served_replicas("quiet")) == 1,
                timeout=90,
            )
            answer = httpx.get(f"http://127.0.0.1:{listen}/quiet/", timeout=10)
            assert answer.status_code == 200

            identity = json.loads((tmp_path / "agent" / "node.json").read_text())
            node_id, node_token = identity["node_id"], identity["node_token"]
            # Each token on a route it does not open: refused, and the refusal logged.
            for token, path in [
                (controller.join_token, "/v1/services"),
                (node_token, "/v1/services"),
                (node_token, "/v1/jobs"),
                ("not-a-token-" + run_id, f"/v1/nodes/{node_id}/assignments"),
            ]:
                refused = httpx.get(
                    controller.url + path, headers={"Authorization": f"Bearer {token}"}
                )
                assert refused.status_code == 401, (path, refused.text)

            # A restarted agent comes back with its saved identity (the node token).
            agent.kill()
            things.remove(agent)
            agent = RunningAgent(settings).start()
            things.append(agent)
            wait_for(
                "the restarted agent heard from",
                lambda: api.get(f"/v1/nodes/{node_id}")["state"] == "ready",
                timeout=60,
            )
            api.request("DELETE", "/v1/services/quiet")
            wait_for(
                "the replica gone from Nginx",
                lambda: not edge.served_replicas("quiet"),
                timeout=60,
            )
            trail = json.dumps(api.get("/v1/events", limit=1000))
            api.close()
        finally:
            for thing in reversed(things):
                with contextlib.suppress(Exception):
                    thing.stop() if not isinstance(thing, RunningAgent) else thing.kill()
            labels = [f"{TEST_LABEL}=1", f"{RUN_LABEL}={run_id}"]
            for container in client.containers.list(all=True, filters={"label": labels}):
                with contextlib.suppress(docker.errors.NotFound):
                    container.remove(force=True)
            client.close()

    logs = {"text": text.getvalue(), "json": as_json.getvalue()}
    # The logs are real: registration, the edge's applied config, the refusals were there.
    assert "registered" in logs["text"] and "nginx config applied" in logs["text"]
    assert len(logs["text"].splitlines()) > 50
    secrets = {
        "admin token": controller.admin_token,
        "join token": controller.join_token,
        "node token": node_token,
    }
    for fmt, lines in logs.items():
        for what, token in secrets.items():
            leaked = [line for line in lines.splitlines() if token in line]
            assert not leaked, f"the {what} is in the {fmt} log: {leaked[:3]}"
    for what, token in secrets.items():
        assert token not in trail, f"the {what} is in the event trail"
