"""`service logs` throughput: lines per second the controller delivers over HTTP from
3 replicas on 2 nodes, against what plain `docker logs` reads from one replica on the
same machine in the same run, and the controller's memory while a client follows.

- A controller process and two agents (two nodes, one Docker engine); a service of 3
  demo replicas, each made to print ``--lines`` numbered lines (``/admin/log``).
- ``docker logs --timestamps`` of one replica, to /dev/null: the floor's reference.
- ``GET /v1/services/NAME/logs`` (NDJSON, every replica merged by time), read to the
  end and counted, ``--rounds`` times; and ``orchestrify service logs NAME`` into a
  pipe (the CLI prints the prefixed lines).
- A client follows (``follow=true``) while the replicas print ``--follow-lines`` more
  each in bursts; the controller's RSS is sampled throughout: flat means the
  controller holds no log.

Goals: ≥ 50,000 lines/s over HTTP, and at least half of what `docker logs` reads from
one replica. Prints bench/report.py's table; asserts nothing. Its containers carry
orchestrify.test=1 and are removed at the end.

    python bench/logs.py [--lines 100000] [--rounds 3] [--follow-lines 60000] [--quick]

``--quick``: 3,000 lines per replica, 1 round (a smoke run; a test runs it so).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import docker
import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.` from a checkout

from bench.labels import RUN_LABEL, TEST_LABEL
from bench.outage_lab import ControllerProcess, RunningAgent
from bench.report import Report, at_least, at_most
from bench.wait import wait_for
from orchestrify.agent import AgentSettings, HealSettings
from orchestrify.demo import DEFAULT_TAG, build_demo_image
from orchestrify.logs import setup_logging

SERVICE = "logbench"
REPLICAS = 3


def _healthy(api: httpx.Client) -> list[dict[str, Any]]:
    reps = api.get("/v1/replicas", params={"service": SERVICE}).json()
    return [r for r in reps if r["state"] == "healthy" and r["desired"] == "run"]


def _exactly(found: list[dict[str, Any]], count: int) -> list[dict[str, Any]] | None:
    return found if len(found) == count else None


def _print_lines(reps: list[dict[str, Any]], lines: int) -> None:
    """Each replica prints ``lines`` numbered lines (in parallel, one request each)."""

    def one(rep: dict[str, Any]) -> None:
        url = f"http://{rep['address']}/admin/log?lines={lines}"
        httpx.get(url, timeout=120, trust_env=False).raise_for_status()

    threads = [threading.Thread(target=one, args=(r,)) for r in reps]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _docker_logs(container_id: str) -> tuple[int, float]:
    """Lines and seconds of ``docker logs --timestamps`` of one container."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["docker", "logs", "--timestamps", container_id],
        capture_output=True,
        check=True,
        timeout=300,
    )
    elapsed = time.perf_counter() - t0
    return proc.stdout.count(b"\n") + proc.stderr.count(b"\n"), elapsed


def _api_logs(controller: ControllerProcess) -> tuple[int, int, float]:
    """Log lines, notices and seconds of one full read of the service's logs."""
    lines = notices = 0
    headers = {"Authorization": f"Bearer {controller.admin_token}"}
    url = f"{controller.url}/v1/services/{SERVICE}/logs"
    t0 = time.perf_counter()
    with (
        httpx.Client(timeout=httpx.Timeout(10, read=300), trust_env=False) as http,
        http.stream("GET", url, headers=headers) as resp,
    ):
        resp.raise_for_status()
        for chunk in resp.iter_bytes():
            lines += chunk.count(b"\n")
            notices += chunk.count(b'{"notice"')
    return lines - notices, notices, time.perf_counter() - t0


def _cli_logs(controller: ControllerProcess) -> tuple[int, float]:
    """Lines and seconds of ``orchestrify service logs`` into a pipe."""
    env = {
        "ORCHESTRIFY_URL": controller.url,
        "ORCHESTRIFY_TOKEN": controller.admin_token,
        "PATH": "/usr/bin:/bin",
    }
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrify", "service", "logs", SERVICE],
        capture_output=True,
        check=True,
        timeout=600,
        env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    return proc.stdout.count(b"\n"), time.perf_counter() - t0


class Follower:
    """A client following the service's logs in a thread, counting lines."""

    def __init__(self, controller: ControllerProcess) -> None:
        self.controller = controller
        self.lines = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.controller.admin_token}"}
        url = f"{self.controller.url}/v1/services/{SERVICE}/logs"
        params = {"follow": "true", "tail": "0"}
        with (
            httpx.Client(timeout=httpx.Timeout(10, read=None), trust_env=False) as http,
            http.stream("GET", url, headers=headers, params=params) as resp,
        ):
            for chunk in resp.iter_bytes():
                self.lines += chunk.count(b"\n")
                if self.stop.is_set():
                    return

    def start(self) -> Follower:
        self.thread.start()
        return self


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000, help="Lines per replica.")
    parser.add_argument("--rounds", type=int, default=3, help="Full reads over HTTP.")
    parser.add_argument(
        "--follow-lines", type=int, default=60_000, help="Lines per replica while following."
    )
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--quick", action="store_true", help="3,000 lines, 1 round.")
    args = parser.parse_args()
    if args.quick:
        args.lines, args.rounds, args.follow_lines = 3_000, 1, 3_000
    setup_logging(level=args.log_level)

    build_demo_image()
    client = docker.from_env()
    run_id = "bench-" + uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="orchestrify-bench-logs-"))
    controller = ControllerProcess(tmp / "controller")
    agents: list[RunningAgent] = []
    try:
        controller.start()
        # The agents run in this process (as in bench/selfheal.py); the controller, whose
        # work and memory are measured, in its own.
        for n in (1, 2):
            agents.append(
                RunningAgent(
                    AgentSettings(
                        controller_url=controller.url,
                        join_token=controller.join_token,
                        name=f"{run_id}-n{n}",
                        advertise_address="127.0.0.1",
                        state_dir=tmp / f"agent{n}",
                        metrics_port=0,
                        heal=HealSettings(),
                        heartbeat_interval_s=2.0,
                        container_labels={TEST_LABEL: "1", RUN_LABEL: run_id},
                    )
                ).start()
            )
        with controller.api() as api:
            names = {f"{run_id}-n{n}" for n in (1, 2)}

            def both_ready() -> bool:
                nodes = api.get("/v1/nodes").json()
                return {n["name"] for n in nodes if n["state"] == "ready"} >= names

            # Else the replicas may all go to the first node up, and stay there.
            wait_for("both nodes ready", both_ready, timeout=60)
            api.post(
                "/v1/services",
                json={
                    "name": SERVICE,
                    "image": DEFAULT_TAG,
                    "replicas": REPLICAS,
                    "min_replicas": 0,
                    "health_path": "/health",
                },
            ).raise_for_status()
            reps = wait_for(
                f"{REPLICAS} healthy replicas",
                lambda: _exactly(_healthy(api), REPLICAS),
                timeout=60,
            )
            nodes = len({r["node"] for r in reps})
            _print_lines(reps, args.lines)
            time.sleep(1.0)  # Docker's log writer catches up with the last lines

            docker_lines, docker_s = _docker_logs(reps[0]["container_id"])
            rates, notices, lines = [], 0, 0
            for _ in range(args.rounds):
                lines, notices, seconds = _api_logs(controller)
                rates.append(lines / seconds)
            cli_lines, cli_s = _cli_logs(controller)

            proc = psutil.Process(controller.proc.pid)  # type: ignore[union-attr]
            rss_before = proc.memory_info().rss
            follower = Follower(controller).start()
            samples: list[int] = []
            sampling = threading.Event()

            def sample() -> None:
                while not sampling.is_set():
                    samples.append(proc.memory_info().rss)
                    time.sleep(0.2)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            time.sleep(1.0)
            bursts = 4
            for _ in range(bursts):
                _print_lines(reps, max(1, args.follow_lines // bursts))
            expected = REPLICAS * bursts * max(1, args.follow_lines // bursts)
            wait_for(
                "the followed lines",
                lambda: follower.lines >= expected,
                timeout=120,
            )
            sampling.set()
            sampler.join()
            follower.stop.set()

        rate = statistics.median(rates)
        docker_rate = docker_lines / docker_s
        report = Report(
            f"service logs: {REPLICAS} replicas on {nodes} nodes, {args.lines:,} lines each "
            f"({args.rounds} round(s))"
        )
        report.add("docker logs, one replica", "lines", docker_lines)
        report.add("docker logs, one replica", "lines/s", docker_rate, "/s")
        report.add("GET /v1/services/NAME/logs", "lines", lines)
        report.add("GET /v1/services/NAME/logs", "notices", notices, goal=at_most(0))
        report.add("GET /v1/services/NAME/logs", "lines/s", rate, "/s", at_least(50_000, "/s"))
        report.add(
            "GET /v1/services/NAME/logs",
            "vs docker logs",
            rate / docker_rate,
            "x",
            at_least(0.5, "x"),
        )
        report.add("orchestrify service logs | wc", "lines/s", cli_lines / cli_s, "/s")
        mib = 1024 * 1024
        report.add("controller while following", "lines followed", follower.lines)
        report.add("controller while following", "RSS before", rss_before / mib, "MiB")
        report.add("controller while following", "RSS max", max(samples) / mib, "MiB")
        report.add(
            "controller while following",
            "RSS growth",
            (max(samples) - rss_before) / mib,
            "MiB",
            at_most(32, "MiB"),
        )
        report.print()
    finally:
        for agent in agents:
            agent.kill()
        controller.stop()
        for c in client.containers.list(
            all=True, filters={"label": [f"{TEST_LABEL}=1", f"{RUN_LABEL}={run_id}"]}
        ):
            c.remove(force=True)
        client.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
