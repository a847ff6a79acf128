"""`orchestrify job ...` against a real controller process running real ansible-runner jobs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_binary
from tests.controller.test_jobs_api import write_lab
from tests.processes import controller_process

pytestmark = pytest.mark.integration
TOKEN = "cli-admin-token"


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    ansible_playbook = require_binary("ansible-playbook")
    root = tmp_path_factory.mktemp("jobs-cli")
    playbooks, inventory = write_lab(root)
    env = {
        **os.environ,
        "PATH": f"{Path(ansible_playbook).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    args = ["--playbook-dir", str(playbooks), "--inventory", str(inventory)]
    with controller_process(
        root / "data", token=TOKEN, join_token="join", args=args, env=env
    ) as url:
        yield url


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "orchestrify", "--controller", url, "--token", TOKEN, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )


def test_job_run_follows_the_job_and_prints_the_recap(controller: str) -> None:
    res = cli(controller, "job", "run", "hello.yml", "--limit", "a,b", "-e", "who=cli")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "PLAY [Greet]" in out
    assert "ok: [a] Say hello" in out and "ok: [b] Say hello" in out
    assert "PLAY RECAP" in out
    recap = out[out.index("PLAY RECAP") :].splitlines()
    header = next(line for line in recap if "HOST" in line).split()
    assert header[:4] == ["HOST", "OK", "CHANGED", "UNREACHABLE"]
    row_a = next(line for line in recap if line.split()[:1] == ["a"]).split()
    assert row_a[1:5] == ["1", "0", "0", "0"]
    assert "successful (rc 0)" in out


def test_job_run_exits_1_when_the_playbook_fails(controller: str) -> None:
    res = cli(controller, "job", "run", "fail.yml", "--limit", "b")
    assert res.returncode == 1
    assert "Fail on purpose" in res.stdout
    assert "PLAY RECAP" in res.stdout
    assert "failed (rc 2)" in res.stderr and "broken on purpose" in res.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["job", "run", "../secret.yml"],
        ["job", "run", "hello.yml", "--limit", "all; rm -rf /"],
        ["job", "run", "hello.yml", "-e", "a b=1"],
        ["job", "run", "hello.yml", "-e", "novalue"],
    ],
)
def test_job_run_exits_2_on_bad_input(controller: str, args: list[str]) -> None:
    res = cli(controller, *args)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert res.stderr.startswith("error:")


def test_job_ls_and_inspect(controller: str) -> None:
    res = cli(controller, "job", "run", "hello.yml", "--limit", "a", "-d")
    assert res.returncode == 0, res.stderr
    job_id = res.stdout.split()[1].rstrip(":")
    listing = cli(controller, "job", "ls")
    assert listing.returncode == 0
    assert job_id in listing.stdout and "hello.yml" in listing.stdout
    assert "CONTROLLER" in listing.stdout.splitlines()[0]
    deadline = time.monotonic() + 120
    while True:
        shown = cli(controller, "job", "inspect", job_id)
        assert shown.returncode == 0, shown.stderr
        if "successful" in shown.stdout:
            break
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert "playbook" in shown.stdout and "PLAY RECAP" in shown.stdout
    controller_line = next(x for x in shown.stdout.splitlines() if x.startswith("controller"))
    assert controller_line.split()[-1] not in ("controller", "-", "None")  # who ran it
    assert cli(controller, "job", "inspect", "nope").returncode == 1
