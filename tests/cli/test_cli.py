"""The real `python -m orchestrify` against a real controller process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from bench.net import free_port
from orchestrify.cli import app as cli_app
from tests.api.conftest import wait_for
from tests.processes import controller_process

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "cli-admin-token"
JOIN = "cli-join-token"


@dataclass
class Controller:
    url: str
    env: dict[str, str]

    def run(self, *args: str, token: str | None = TOKEN, url: str | None = None) -> Any:
        env = dict(self.env)
        env["ORCHESTRIFY_URL"] = url or self.url
        if token is not None:
            env["ORCHESTRIFY_TOKEN"] = token
        return subprocess.run(
            [sys.executable, "-m", "orchestrify", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def ok(self, *args: str) -> str:
        proc = self.run(*args)
        assert proc.returncode == 0, proc.stderr
        out: str = proc.stdout
        return out


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    home = tmp_path_factory.mktemp("home")
    data = tmp_path_factory.mktemp("data")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HOME": str(home),
        "XDG_STATE_HOME": str(home / "state"),
        "COLUMNS": "250",
    }
    for key in ("ORCHESTRIFY_TOKEN", "ORCHESTRIFY_URL", "ORCHESTRIFY_JOIN_TOKEN"):
        env.pop(key, None)
    args = ["--node-timeout", "3600"]  # no agent heartbeats here; keep worker-1 ready
    with controller_process(data, token=TOKEN, join_token=JOIN, args=args, env=env) as url:
        reg = httpx.post(
            f"{url}/v1/nodes/register",
            json={"name": "worker-1", "address": "127.0.0.1"},
            headers={"Authorization": f"Bearer {JOIN}"},
        )
        assert reg.status_code == 200, reg.text
        yield Controller(url=url, env=env)


def test_service_create_with_environment_and_host_port(controller: Controller) -> None:
    out = controller.ok(
        "service",
        "create",
        "nginx:1.27",
        "--name",
        "seed",
        "--environment",
        "MODE:prod",
        "--environment",
        "URL:http://x:1",
        "--env",
        "DEBUG=0",
        "--port",
        "8080:8000",
    )
    assert "service seed created" in out
    spec = json.loads(controller.ok("service", "inspect", "seed", "--json"))
    assert spec["env"] == {"MODE": "prod", "URL": "http://x:1", "DEBUG": "0"}
    assert (spec["port"], spec["host_port"], spec["max_per_node"]) == (8000, 8080, 1)
    assert spec["stop_grace_s"] == 10  # the default grace between SIGTERM and SIGKILL
    out = controller.ok("service", "update", "seed", "--stop-grace", "25")
    assert "stop grace 25s" in out
    spec = json.loads(controller.ok("service", "inspect", "seed", "--json"))
    assert (spec["stop_grace_s"], spec["generation"]) == (25, 1)  # nothing rolls


def test_ls_inspect_scale_ps_rm(controller: Controller) -> None:
    controller.ok("service", "create", "nginx:1.27", "--name", "web", "--replicas", "1")
    lines = controller.ok("service", "ls").splitlines()
    header = next(line for line in lines if "NAME" in line)
    assert header.split()[:3] == ["NAME", "IMAGE", "REPLICAS"]
    row = next(line for line in lines if line.split()[:1] == ["web"])
    assert "nginx:1.27" in row and "/1" in row

    table = controller.ok("service", "inspect", "web")
    assert any(line.split()[:2] == ["image", "nginx:1.27"] for line in table.splitlines())
    assert "policy.cooldown_s" in table

    assert "web scaled to 3" in controller.ok("service", "scale", "web=3")
    assert json.loads(controller.ok("service", "inspect", "web", "--json"))["replicas"] == 3

    def three() -> list[Any]:
        reps = json.loads(controller.ok("ps", "--service", "web", "--json"))
        return reps if len(reps) == 3 else []

    reps = wait_for(three, what="3 replicas of web")
    ps_table = controller.ok("service", "ps", "web")
    assert "ID" in ps_table.splitlines()[0]
    assert all(r["id"] in ps_table for r in reps)
    assert "worker-1" in controller.ok("ps")

    assert "web removed" in controller.ok("service", "rm", "web")
    names = [s["name"] for s in json.loads(controller.ok("service", "ls", "--json"))]
    assert "web" not in names
    gone = controller.run("service", "inspect", "web")
    assert gone.returncode == 1 and gone.stderr.startswith("error: ") and "web" in gone.stderr


def test_service_update_starts_a_rolling_update_shown_by_ls_inspect_and_ps(
    controller: Controller,
) -> None:
    controller.ok("service", "create", "nginx:1.27", "--name", "roll", "--env", "A=1")
    wait_for(
        lambda: json.loads(controller.ok("ps", "--service", "roll", "--json")),
        what="the replica of roll",
    )
    out = controller.ok("service", "update", "roll", "--env", "B=2", "--health-path", "/ready")
    assert "rolling update to generation 2 started" in out
    assert "orchestrify service ps roll" in out
    spec = json.loads(controller.ok("service", "inspect", "roll", "--json"))
    assert spec["env"] == {"A": "1", "B": "2"}  # --env adds to the env, as in Swarm
    assert (spec["health_path"], spec["generation"], spec["update_state"]) == (
        "/ready",
        2,
        "updating",  # no agent here: the old replica is never replaced
    )

    lines = controller.ok("service", "ls").splitlines()
    assert "UP-TO-DATE" in next(line for line in lines if "NAME" in line)
    row = next(line for line in lines if line.split()[:1] == ["roll"])
    assert "(updating)" in row
    fields = controller.ok("service", "inspect", "roll").splitlines()
    assert any(line.split()[:1] == ["updated"] and "/1" in line for line in fields)
    assert "GEN" in controller.ok("service", "ps", "roll").splitlines()[0]

    image = controller.ok("service", "update", "roll", "--image", "nginx:1.28", "--json")
    assert json.loads(image)["generation"] == 3
    bad = controller.run("service", "update", "roll", "--image", "Bad Image")
    assert bad.returncode == 2 and "image" in _error_line(bad)
    assert json.loads(controller.ok("service", "inspect", "roll", "--json"))["generation"] == 3


def test_service_rollback_returns_to_the_spec_before_the_update(controller: Controller) -> None:
    controller.ok("service", "create", "nginx:1.27", "--name", "back", "--env", "A=1")
    wait_for(
        lambda: json.loads(controller.ok("ps", "--service", "back", "--json")),
        what="the replica of back",
    )
    never = controller.run("service", "rollback", "back")
    assert never.returncode == 1
    line = _error_line(never)
    assert "no previous spec" in line and "orchestrify service update back" in line

    controller.ok("service", "update", "back", "--image", "nginx:1.28", "--env", "B=2")
    out = controller.ok("service", "rollback", "back")
    assert len(out.splitlines()) == 1
    assert "rollback from generation 2 started" in out and "nginx:1.27" in out
    assert "orchestrify service ps back" in out
    spec = json.loads(controller.ok("service", "inspect", "back", "--json"))
    assert (spec["image"], spec["env"], spec["generation"]) == ("nginx:1.27", {"A": "1"}, 3)
    assert (spec["previous_generation"], spec["previous_spec"]["image"]) == (2, "nginx:1.28")

    again = json.loads(controller.ok("service", "rollback", "back", "--json"))
    assert (again["image"], again["env"], again["generation"]) == (
        "nginx:1.28",
        {"A": "1", "B": "2"},
        4,
    )
    events = controller.ok("events", "--service", "back", "--since", "1h")
    assert "rolled back to the spec of generation 1" in events

    missing = controller.run("service", "rollback", "nosuch")
    assert missing.returncode == 1 and "nosuch" in _error_line(missing)


def test_node_ls_and_events(controller: Controller) -> None:
    lines = controller.ok("node", "ls").splitlines()
    assert lines[0].split()[:4] == ["ID", "NAME", "ADDRESS", "STATE"]
    assert any("worker-1" in line and "ready" in line for line in lines[1:])
    nodes = json.loads(controller.ok("node", "ls", "--json"))
    assert [n["name"] for n in nodes] == ["worker-1"]

    controller.ok(
        "service", "create", "nginx:1.27", "--name", "evt", "--replicas", "0", "--min", "0"
    )
    events = json.loads(controller.ok("events", "--service", "evt", "--json"))
    assert events and {e["service"] for e in events} == {"evt"}
    assert "create_service" in controller.ok("events", "--service", "evt", "--since", "1h")


def _error_line(proc: Any) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), proc.stderr
    return str(lines[0])


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["service", "create", "nginx", "--name", "b1", "--environment", "1BAD:x"], "env"),
        (["service", "create", "nginx", "--name", "b2", "--environment", "NOCOLON"], "env"),
        (["service", "create", "nginx", "--name", "b3", "--port", "99999"], "port"),
        (["service", "create", "nginx", "--name", "b4", "--port", "http"], "port"),
        (["service", "create", "Bad Image", "--name", "b5"], "image"),
        (
            ["service", "create", "nginx", "--name", "b6", "--replicas", "9", "--max", "5"],
            "replicas",
        ),
        (
            ["service", "create", "nginx", "--name", "b7", "--min", "5", "--max", "2"],
            "min_replicas",
        ),
        (["service", "scale", "web=lots"], "replicas"),
        (["service", "update", "web"], "image"),
        (["service", "update", "web", "--env", "NOEQUALS"], "env"),
        (["service", "rollback", "Bad Name"], "name"),
        (["service", "create", "nginx", "--name", "b8", "--stop-grace", "-1"], "stop_grace_s"),
    ],
)
def test_bad_input_exits_2_with_one_line_naming_the_field(
    controller: Controller, args: list[str], field: str
) -> None:
    proc = controller.run(*args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert field in _error_line(proc).lower()
    stored = httpx.get(
        f"{controller.url}/v1/services", headers={"Authorization": f"Bearer {TOKEN}"}
    ).json()
    if args[1] == "create":
        assert not any(s["name"] == args[args.index("--name") + 1] for s in stored)


def test_wrong_token_exits_1(controller: Controller) -> None:
    proc = controller.run("service", "ls", token="not-the-token")
    assert proc.returncode == 1
    assert "token" in _error_line(proc).lower()


def test_unreachable_controller_exits_1_saying_what_to_do(controller: Controller) -> None:
    proc = controller.run("service", "ls", url=f"http://127.0.0.1:{free_port()}")
    assert proc.returncode == 1
    line = _error_line(proc)
    assert "cannot reach the controller" in line and "ORCHESTRIFY_URL" in line


def _command_paths(cmd: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of the app; groups are whatever has ``commands`` (Typer vendors
    its own click, so an isinstance check against ``click.Group`` finds nothing)."""
    paths = [prefix]
    subcommands = getattr(cmd, "commands", None)
    if subcommands:
        for name, sub in sorted(subcommands.items()):
            paths += _command_paths(sub, (*prefix, name))
    return paths


COMMANDS = _command_paths(typer.main.get_command(cli_app))


def test_the_walk_finds_every_group() -> None:
    assert {("service", "create"), ("node", "rm"), ("replica", "rm"), ("ps",), ("events",)} <= set(
        COMMANDS
    )


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) or "orchestrify" for p in COMMANDS])
def test_help_of_every_command_exits_0(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli_app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_help_through_the_real_entry_point() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrify", "service", "create", "--help"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0 and "--environment" in proc.stdout


def test_node_rm_drains_then_forgets_and_force_forgets_at_once(controller: Controller) -> None:
    """`node rm` asks for drain-then-forget (POST drain?remove=true): DELETE never drains,
    it forgets now, or refuses with 409 a node that still has replicas."""
    auth = {"Authorization": f"Bearer {JOIN}"}
    for name in ("rm-me", "rm-me-now"):
        reg = httpx.post(
            f"{controller.url}/v1/nodes/register",
            json={"name": name, "address": "127.0.0.1"},
            headers=auth,
        )
        assert reg.status_code == 200, reg.text
    assert "removed once" in controller.ok("node", "rm", "rm-me")
    admin = {"Authorization": f"Bearer {TOKEN}"}
    wait_for(
        lambda: httpx.get(f"{controller.url}/v1/nodes/rm-me", headers=admin).status_code == 404,
        what="rm-me forgotten once drained (it had no replica)",
    )
    assert "removed" in controller.ok("node", "rm", "rm-me-now", "--force")
    assert httpx.get(f"{controller.url}/v1/nodes/rm-me-now", headers=admin).status_code == 404


def test_service_log_driver_and_options_from_the_command_line(controller: Controller) -> None:
    controller.ok(
        "service",
        "create",
        "nginx:1.27",
        "--name",
        "logs",
        "--log-driver",
        "gelf",
        "--log-opt",
        "gelf-address=udp://127.0.0.1:12201",
        "--log-opt",
        "tag=logs",
    )
    spec = json.loads(controller.ok("service", "inspect", "logs", "--json"))
    assert (spec["log_driver"], spec["log_opts"]) == (
        "gelf",
        {"gelf-address": "udp://127.0.0.1:12201", "tag": "logs"},
    )
    # --log-opt merges into the options while the driver stays; KEY= removes one.
    controller.ok("service", "update", "logs", "--log-opt", "gelf-compression-type=none")
    controller.ok("service", "update", "logs", "--log-opt", "tag=")
    spec = json.loads(controller.ok("service", "inspect", "logs", "--json"))
    assert spec["log_opts"] == {
        "gelf-address": "udp://127.0.0.1:12201",
        "gelf-compression-type": "none",
    }
    # A new driver starts from its own options.
    controller.ok("service", "update", "logs", "--log-driver", "local", "--log-opt", "max-size=5m")
    spec = json.loads(controller.ok("service", "inspect", "logs", "--json"))
    assert (spec["log_driver"], spec["log_opts"]) == ("local", {"max-size": "5m"})

    for args, named in (
        (("--log-opt", "max-szie=5m"), "max-szie"),
        (("--log-driver", "splunk"), "log_driver"),
        (("--log-opt", "novalue"), "--log-opt"),
    ):
        bad = controller.run("service", "update", "logs", *args)
        assert bad.returncode == 2 and named in _error_line(bad), bad.stderr
    after = json.loads(controller.ok("service", "inspect", "logs", "--json"))
    assert after == spec
