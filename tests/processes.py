"""A real `python -m orchestrify controller` process for tests that drive it from outside."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench.net import free_port
from bench.processes import stop_process

ROOT = Path(__file__).resolve().parents[1]
__all__ = ["ROOT", "controller_process", "stop_process"]


@contextmanager
def controller_process(
    data_dir: Path,
    *,
    token: str,
    join_token: str,
    args: Sequence[str] = (),
    env: Mapping[str, str],
    timeout: float = 60.0,
) -> Iterator[str]:
    """Start the controller on a free loopback port, wait for /healthz, yield its URL,
    and stop it (SIGTERM, then SIGKILL) however the test ends."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = data_dir / "controller.log"
    cmd = [sys.executable, "-m", "orchestrify", "controller", "--port", str(port)]
    cmd += ["--data-dir", str(data_dir), "--token", token, "--join-token", join_token, *args]
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, env=dict(env), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, f"controller exited:\n{log_path.read_text()}"
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"controller did not start:\n{log_path.read_text()}"
            time.sleep(0.2)
        yield url
    finally:
        stop_process(proc, timeout=20)
