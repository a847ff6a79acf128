"""The API's contract, checked from outside: schemathesis against a real controller process.

Every check (``--checks all``), positive and negative data, every phase (examples,
coverage, fuzzing, stateful), once with a fixed seed and once with a random one (printed,
so a failure can be replayed with ``--seed``). It must find no server error, no response
that breaks its schema, no undocumented status, no schema-valid request refused and no
schema-violating one accepted. Its own report goes straight to the terminal (not into
pytest's capture), so the CI log shows the operations tested, the cases generated and the
failures; README "The API contract" says how to run it by hand.

The controller runs jobs from a playbook directory holding only ping.yml against an
inventory of localhost (local connection), at most one at a time and five queued, so
fuzzing POST /v1/jobs never runs site.yml and never loads the machine.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import ROOT, controller_process

# Its own controller process and nothing shared: scripts/test.sh runs it beside the
# integration tests, in the fast tests' stream (it is most of two minutes).
pytestmark = [pytest.mark.integration, pytest.mark.beside]

ADMIN = "contract-admin-token"
JOIN = "contract-join-token"
FIXED_SEED = 20261130
# Seconds per run: both runs together stay near 4 minutes on a 2-core machine (the
# fuzzing and stateful phases repeat until the budget is spent).
MAX_TIME_S = 45
HERE = Path(__file__).resolve().parent


def _schemathesis() -> str:
    path = Path(sys.executable).with_name("schemathesis")
    assert path.exists(), "schemathesis is part of the test extra: pip install -e '.[test]'"
    return str(path)


def _playbooks(tmp_path: Path) -> tuple[Path, Path]:
    """A playbook dir with the harmless ping.yml only, and an inventory of localhost."""
    playbooks = tmp_path / "playbooks"
    playbooks.mkdir()
    shutil.copy(ROOT / "playbooks" / "ping.yml", playbooks / "ping.yml")
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("localhost ansible_connection=local\n")
    return playbooks, inventory


def _summary(output: str) -> tuple[int, int, int]:
    """(operations tested, test cases generated, failures) from schemathesis' summary."""
    tested = re.search(r"Tested:\s+(\d+)", output)
    generated = re.search(r"(\d+) generated", output)
    failures = re.search(r"(\d+) (?:unique )?failures?", output.split("Test cases:")[-1])
    assert tested and generated, "schemathesis printed no summary (see its output above)"
    return int(tested.group(1)), int(generated.group(1)), int(failures.group(1) if failures else 0)


@pytest.mark.parametrize("seed_kind", ["fixed", "random"])
def test_schemathesis_finds_no_contract_failure(
    tmp_path: Path, seed_kind: str, pytestconfig: pytest.Config
) -> None:
    # ORCHESTRIFY_CONTRACT_SEED replays a random run's seed (printed in its header).
    replay = os.environ.get("ORCHESTRIFY_CONTRACT_SEED")
    random_seed = int(replay) if replay else secrets.randbelow(2**32)
    seed = FIXED_SEED if seed_kind == "fixed" else random_seed
    playbooks, inventory = _playbooks(tmp_path)
    venv_bin = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",  # ansible-playbook
        "ORCHESTRIFY_MAX_RUNNING_JOBS": "1",
        "ORCHESTRIFY_MAX_PENDING_JOBS": "5",
        # Long-polls (assignments, upstreams, an events follower) answer within a second:
        # a fuzzed wait must not spend the run's time budget waiting.
        "ORCHESTRIFY_WATCH_TIMEOUT_S": "1",
    }
    args = ["--playbook-dir", str(playbooks), "--inventory", str(inventory)]
    with controller_process(
        tmp_path / "data", token=ADMIN, join_token=JOIN, args=args, env=env
    ) as url:
        cmd = [
            _schemathesis(),
            "--config-file",
            str(HERE / "schemathesis.toml"),
            "--no-color",
            "run",
            f"{url}/openapi.json",
            "--header",
            f"Authorization: Bearer {ADMIN}",
            "--checks",
            "all",
            "--mode",
            "all",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-time",
            str(MAX_TIME_S),
            "--seed",
            str(seed),
            # One worker: Python 3.11's ast.parse is not thread-safe, and Hypothesis
            # calls it while describing strategies ("AST constructor recursion depth
            # mismatch" with two).
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--request-timeout",
            "30",
        ]
        run_env = {
            **env,
            "SCHEMATHESIS_HOOKS": "tests.api.schemathesis_hooks",
            "PYTHONPATH": str(ROOT),
        }
        capture = pytestconfig.pluginmanager.getplugin("capturemanager")
        lines: list[str] = []
        with capture.global_and_fixture_disabled() if capture else _nothing():
            print(f"\n== schemathesis, {seed_kind} seed {seed} (replay: --seed {seed})", flush=True)
            proc = subprocess.Popen(
                cmd,
                cwd=tmp_path,
                env=run_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
            )
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                sys.stdout.write(line)
                sys.stdout.flush()
            rc = proc.wait(timeout=MAX_TIME_S * 3)
            output = "".join(lines)
            tested, generated, failures = _summary(output)
            print(
                f"== schemathesis {seed_kind} seed {seed}: {tested} operations tested, "
                f"{generated} test cases generated, {failures} failures (exit {rc})",
                flush=True,
            )
    assert rc == 0 and failures == 0, f"schemathesis failed (seed {seed}); see its report above"
    assert tested >= 30, f"only {tested} operations tested: the schema lost operations?"


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
