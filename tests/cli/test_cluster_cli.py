"""`orchestrify cluster ls` against two real controller processes on one PostgreSQL
database, and the controller's cluster flags (--controller-id, --advertise-url,
--lease-s)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from bench.postgres import PostgresServer
from orchestrify.cli import app
from orchestrify.controller.settings import ControllerSettings
from tests.api.conftest import wait_for
from tests.processes import controller_process

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "cluster-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
runner = CliRunner()


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[ControllerSettings]:
    """What `orchestrify controller` would serve with, instead of serving."""
    seen: list[ControllerSettings] = []
    monkeypatch.setattr("orchestrify.controller.app.serve_controller", seen.append)
    for var in ("ORCHESTRIFY_CONTROLLER_ID", "ORCHESTRIFY_ADVERTISE_URL", "ORCHESTRIFY_LEASE_S"):
        monkeypatch.delenv(var, raising=False)
    return seen


def test_cluster_flags_reach_the_settings(tmp_path: Path, served: list[ControllerSettings]) -> None:
    base = ["controller", "--data-dir", str(tmp_path / "data"), "--port", "18555"]
    result = runner.invoke(app, base)
    assert result.exit_code == 0, result.output
    (default,) = served
    assert default.controller_id.endswith(":18555") and default.lease_s == 6.0
    assert default.advertise_url == "http://127.0.0.1:18555"
    flags = ["--controller-id", "ctl-1", "--advertise-url", "https://ctl-1.example:8443"]
    result = runner.invoke(app, [*base, *flags, "--lease-s", "9"])
    assert result.exit_code == 0, result.output
    given = served[-1]
    assert (given.controller_id, given.advertise_url, given.lease_s) == (
        "ctl-1",
        "https://ctl-1.example:8443",
        9.0,
    )
    result = runner.invoke(app, base, env={"ORCHESTRIFY_CONTROLLER_ID": "from-env"})
    assert result.exit_code == 0 and served[-1].controller_id == "from-env"


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--controller-id", "has space"), ("--advertise-url", "ctl-1:18080"), ("--lease-s", "0")],
)
def test_a_bad_cluster_flag_is_one_line_and_exit_2(
    tmp_path: Path, served: list[ControllerSettings], flag: str, value: str
) -> None:
    result = runner.invoke(app, ["controller", "--data-dir", str(tmp_path), flag, value])
    assert result.exit_code == 2, result.output
    assert not served
    name = flag.removeprefix("--").replace("-", "_")
    assert name in result.output or flag in result.output
    assert "Traceback" not in result.output


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "orchestrify", "--controller", url, "--token", TOKEN, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def cluster_json(url: str) -> dict[str, Any]:
    res = cli(url, "cluster", "ls", "--json")
    assert res.returncode == 0, res.stderr
    view: dict[str, Any] = json.loads(res.stdout)
    return view


def test_cluster_ls_shows_the_leader_and_the_followers(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    database = postgres.new_database()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ORCHESTRIFY_DATABASE_URL": postgres.url(database),
    }

    def start(name: str, stack: contextlib.ExitStack) -> str:
        args = ["--controller-id", name, "--lease-s", "1.5"]
        return stack.enter_context(
            controller_process(tmp_path / name, token=TOKEN, join_token="join", args=args, env=env)
        )

    leader_stack = contextlib.ExitStack()
    try:
        with contextlib.ExitStack() as stack:
            urls = {"ctl-a": start("ctl-a", leader_stack), "ctl-b": start("ctl-b", stack)}
            res = cli(urls["ctl-b"], "cluster", "ls")
            assert res.returncode == 0, res.stderr
            header, *rows = [ln.split() for ln in res.stdout.splitlines() if ln.strip()]
            assert header[:3] == ["ID", "URL", "ROLE"] and "EPOCH" in header
            roles = {row[0]: (row[1], row[2]) for row in rows if row[0].startswith("ctl-")}
            assert roles == {
                "ctl-a": (urls["ctl-a"], "leader"),
                "ctl-b": (urls["ctl-b"], "follower"),
            }
            view = cluster_json(urls["ctl-a"])
            assert (view["leader"], view["epoch"]) == ("ctl-a", 1)
            assert {c["id"]: c["url"] for c in view["controllers"]} == urls

            leader_stack.close()  # the leader stops; ctl-b takes over with the next epoch

            def states() -> dict[str, str]:
                resp = httpx.get(f"{urls['ctl-b']}/v1/cluster", headers=AUTH, timeout=10)
                return {c["id"]: c["state"] for c in resp.json()["controllers"]}

            # Polled over HTTP (cheaper than a CLI process per look), then shown by the CLI.
            gone = {"ctl-a": "gone", "ctl-b": "leader"}
            wait_for(lambda: states() == gone, what="ctl-b to lead, ctl-a gone", timeout=60)
            after = cluster_json(urls["ctl-b"])
            assert (after["leader"], after["epoch"]) == ("ctl-b", 2)
            table = cli(urls["ctl-b"], "cluster", "ls").stdout
            (line,) = [ln for ln in table.splitlines() if ln.startswith("ctl-a")]
            assert "gone" in line.split()
    finally:
        leader_stack.close()
        postgres.drop_database(database)
