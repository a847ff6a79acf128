"""The `orchestrify` inventory plugin, run by the real ansible-inventory against a tiny
HTTP server standing in for the controller's GET /v1/nodes (the controller itself is
tested elsewhere)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bench.net import free_port
from tests.conftest import require_binary

REPO = Path(__file__).resolve().parents[1]
NODES = [
    {"id": "n-1", "name": "worker-a", "address": "10.20.0.5", "state": "Ready"},
    {"id": "n-2", "name": "worker-b", "address": "10.20.0.6", "state": "NotReady"},
    {"id": "n-3", "name": "worker-c", "address": "10.20.0.7", "state": "Draining"},
]


class FakeController(ThreadingHTTPServer):
    nodes: list[dict[str, Any]]
    seen_authorization: list[str | None]
    seen_paths: list[str]


class NodesHandler(BaseHTTPRequestHandler):
    server: FakeController

    def do_GET(self) -> None:
        self.server.seen_authorization.append(self.headers.get("Authorization"))
        self.server.seen_paths.append(self.path)
        if self.path != "/v1/nodes":
            self.send_error(404)
            return
        body = json.dumps(self.server.nodes).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def controller() -> Iterator[FakeController]:
    server = FakeController(("127.0.0.1", 0), NodesHandler)
    server.nodes = NODES
    server.seen_authorization = []
    server.seen_paths = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _unwrap(value: Any) -> Any:
    """ansible-inventory marks values from inventory plugins as unsafe: {"__ansible_unsafe": v}."""
    if isinstance(value, dict) and set(value) == {"__ansible_unsafe"}:
        return value["__ansible_unsafe"]
    return value


def _source_for(url: str, directory: Path) -> Path:
    """The shipped inventory/orchestrify.yml, pointed at ``url``."""
    text = (REPO / "inventory" / "orchestrify.yml").read_text()
    assert "controller_url: http://127.0.0.1:18080" in text
    source = directory / "orchestrify.yml"
    source.write_text(text.replace("http://127.0.0.1:18080", url))
    return source


def _inventory(source: Path, **env: str) -> subprocess.CompletedProcess[str]:
    binary = require_binary("ansible-inventory")
    bindir = str(Path(sys.executable).parent)
    # the caller's own ORCHESTRIFY_* must not leak into the run
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRIFY_")}
    run_env.update(
        PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        **env,
    )
    return subprocess.run(
        [binary, "-i", str(source), "--list"],
        cwd=REPO,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_lists_controller_nodes_as_workers(controller: FakeController, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{controller.server_address[1]}"
    proc = _inventory(_source_for(url, tmp_path), ORCHESTRIFY_TOKEN="s3cret")
    assert proc.returncode == 0, proc.stderr
    listing = json.loads(proc.stdout)

    assert sorted(listing["workers"]["hosts"]) == ["worker-a", "worker-b", "worker-c"]
    assert listing["state_ready"]["hosts"] == ["worker-a"]
    assert listing["state_notready"]["hosts"] == ["worker-b"]
    assert listing["state_draining"]["hosts"] == ["worker-c"]
    hostvars = {
        host: {k: _unwrap(v) for k, v in hv.items()}
        for host, hv in listing["_meta"]["hostvars"].items()
    }
    assert hostvars["worker-a"]["ansible_host"] == "10.20.0.5"
    assert hostvars["worker-b"]["orchestrify_node_id"] == "n-2"
    assert hostvars["worker-c"]["orchestrify_node_state"] == "Draining"
    # the token comes from the environment, as a Bearer token
    assert controller.seen_authorization == ["Bearer s3cret"]


def test_unreachable_controller_is_an_error(tmp_path: Path) -> None:
    # Nothing listens there: free_port() closes its socket before returning.
    source = _source_for(f"http://127.0.0.1:{free_port()}", tmp_path)
    proc = _inventory(source, ANSIBLE_INVENTORY_UNPARSED_FAILED="true")
    assert proc.returncode != 0
    assert "unreachable" in proc.stderr


def test_a_list_of_controllers_asks_the_next_when_one_is_unreachable(
    controller: FakeController, tmp_path: Path
) -> None:
    live = f"http://127.0.0.1:{controller.server_address[1]}"
    dead = f"http://127.0.0.1:{free_port()}"
    source = tmp_path / "orchestrify.yml"
    source.write_text(f"plugin: orchestrify\ncontroller_url:\n  - {dead}\n  - {live}\n")
    proc = _inventory(source, ORCHESTRIFY_TOKEN="s3cret")
    assert proc.returncode == 0, proc.stderr
    assert sorted(json.loads(proc.stdout)["workers"]["hosts"]) == [
        "worker-a",
        "worker-b",
        "worker-c",
    ]


def test_orchestrify_url_takes_the_same_comma_separated_list(
    controller: FakeController, tmp_path: Path
) -> None:
    live = f"http://127.0.0.1:{controller.server_address[1]}"
    dead = f"http://127.0.0.1:{free_port()}"
    source = tmp_path / "orchestrify.yml"
    source.write_text("plugin: orchestrify\n")
    proc = _inventory(source, ORCHESTRIFY_URL=f"{dead},{live}", ORCHESTRIFY_TOKEN="s3cret")
    assert proc.returncode == 0, proc.stderr
    assert "worker-a" in json.loads(proc.stdout)["workers"]["hosts"]


def test_an_answer_is_not_asked_of_the_next_controller(
    controller: FakeController, tmp_path: Path
) -> None:
    # The first answers 404 (nothing at that prefix): an answer, so the second is never
    # asked and the inventory fails, naming the first.
    live = f"http://127.0.0.1:{controller.server_address[1]}"
    source = tmp_path / "orchestrify.yml"
    source.write_text(f"plugin: orchestrify\ncontroller_url: {live}/wrong,{live}\n")
    proc = _inventory(source, ANSIBLE_INVENTORY_UNPARSED_FAILED="true")
    assert proc.returncode != 0
    assert "answered 404" in proc.stderr
    assert set(controller.seen_paths) == {"/wrong/v1/nodes"}  # the second never asked
