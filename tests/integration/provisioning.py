"""Helpers shared by the tests that run the real playbooks against lab hosts: the
offline wheelhouse the roles ship, and ``ansible-playbook`` runs with their PLAY RECAP.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import require_binary

REPO = Path(__file__).resolve().parents[2]
# Dependencies' wheels change only with pyproject.toml: cache them across sessions.
WHEEL_CACHE = Path(os.environ.get("ORCHESTRIFY_TEST_WHEEL_CACHE", "/tmp/orchestrify-test-wheels"))


@dataclass(frozen=True)
class PlaybookRun:
    rc: int
    output: str
    seconds: float

    def recap(self, host: str) -> dict[str, int]:
        """The host's PLAY RECAP counters (ok, changed, failed, ...)."""
        match = re.search(rf"^{re.escape(host)}\s*:\s*(.*)$", self.output, re.M)
        assert match, f"no PLAY RECAP line for {host}:\n{self.output[-3000:]}"
        return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}


def venv_path() -> str:
    """PATH with this Python's bin first: ansible-playbook and ansible-runner live there."""
    return f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def run_playbook(
    playbook: str, *, inventory: Path, extra_vars: Path | None = None, args: tuple[str, ...] = ()
) -> PlaybookRun:
    """``ansible-playbook`` from the repository root (so ansible.cfg applies)."""
    binary = require_binary("ansible-playbook")
    run_env = {
        **os.environ,
        "PATH": venv_path(),
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
    }
    command = [binary, "-i", str(inventory)]
    if extra_vars is not None:
        command += ["-e", f"@{extra_vars}"]
    started = time.monotonic()
    proc = subprocess.run(
        [*command, str(REPO / "playbooks" / playbook), *args],
        cwd=REPO, env=run_env, capture_output=True, text=True, timeout=1800, check=False,
        # Never the caller's stdin: Ansible refuses a non-blocking one ("requires blocking
        # IO"), and two playbooks run at once (the labs' set-ups) must not share it.
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    run = PlaybookRun(proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started)
    print(f"{playbook} {' '.join(args)}: rc={run.rc} in {run.seconds:.1f}s")
    return run


def build_wheelhouse(dest: Path) -> Path:
    """orchestrify's wheel, built fresh, plus its dependencies' wheels from the cache."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "wheel"]
    digest = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:16]
    deps = WHEEL_CACHE / digest
    if not deps.is_dir():
        partial = deps.with_name(deps.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        subprocess.run([*pip, "--wheel-dir", str(partial), str(REPO)], check=True, timeout=600)
        for own in partial.glob("orchestrify-*.whl"):
            own.unlink()
        partial.rename(deps)
    dest.mkdir(parents=True)
    for wheel in deps.glob("*.whl"):
        shutil.copy2(wheel, dest)
    # Build from a copy so no build/ or egg-info lands in the work tree. copytree follows
    # the orchestrify/_templates symlink, so the wheel carries the real templates.
    src = dest.parent / "src"
    shutil.copytree(REPO / "orchestrify", src / "orchestrify")
    for name in ("pyproject.toml", "README.md"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, src / name)
    subprocess.run(
        [*pip, "--no-deps", "--wheel-dir", str(dest), str(src)],
        check=True, timeout=300, env={**os.environ, "SOURCE_DATE_EPOCH": "315532800"},
    )  # fmt: skip
    return dest
