"""Benchmark: what the edge's hop costs, next to a plain Nginx proxy.

Against one backend container (the host's Nginx answering ``200 ok``, see
``bench/edge_backend.py``), wrk measures four paths one after the other:

- ``direct``: straight to the container's published port;
- ``plain nginx``: a minimal Nginx proxy written by this bench (upstream keep-alive,
  no access log): the floor any proxy in front of the replica pays;
- ``edge``: orchestrify's own edge (``orchestrify controller`` + ``orchestrify edge``
  processes, the backend reported as the service's one healthy replica), telemetry on;
- ``edge, no telemetry``: the same edge with ``--telemetry off``.

Goals (issue 14): the edge with telemetry on keeps ≥ 0.9 x the plain proxy's
requests/s, with p99 ≤ 1.5 x the plain proxy's p99. With telemetry on it also checks
that the edge's ``/metrics`` counted every request wrk completed (lost telemetry
would starve the latency alerts).

Throughput on a shared machine swings from one minute to the next, so the paths are
interleaved over ``--rounds`` in rotating order, each figure is a median over rounds,
and the edge is also compared with the plain proxy round by round. "Proxy CPU per
request" (the Nginx workers' CPU time, plus the edge process's, over the requests
served) is the figure least moved by other load: it shows what telemetry costs.

    PYTHONPATH=. .venv/bin/python bench/edge_hop.py [--seconds 10] [--rounds 1] [--quick]

Needs Docker, nginx and wrk. Bounded: each path runs ``--seconds`` per round (2 s with
``--quick``), and everything it started (container, image, processes) is removed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench.edge_backend import Backend, start_backend
from bench.report import Report, at_least, at_most
from orchestrify.errors import OrchestrifyError

T = TypeVar("T")
SERVICE = "hop"
ADMIN_TOKEN = "edge-hop-admin"
JOIN_TOKEN = "edge-hop-join"
CONNECTIONS = 16
THREADS = 2
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}
PATHS = ("direct", "plain nginx", "edge", "edge, no telemetry")


class BenchError(Exception):
    """Something the bench needs is missing or did not start: one line, exit 2."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what: str, check: Callable[[], T | None], *, timeout: float = 30.0) -> T:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.HTTPError, OSError) as exc:  # still starting
            last = exc
        if last and not isinstance(last, Exception):
            return last  # type: ignore[return-value]
        time.sleep(0.1)
    raise BenchError(f"timed out waiting for {what} (last: {last!r})")


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_s: float
    p99_s: float
    errors: int


def _seconds(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def run_wrk(url: str, *, seconds: int) -> WrkResult:
    """wrk -t2 -c16 for ``seconds`` (bounded by a timeout), parsed."""
    cmd = ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency"]
    cmd += ["--timeout", "5s", url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
    out = proc.stdout
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    if proc.returncode != 0 or not m:
        raise BenchError(f"wrk failed on {url}: {proc.stderr.strip() or out.strip()}")
    requests = int(m.group(1))
    took = _seconds(m.group(2) + m.group(3))
    errors = 0
    if se := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    ):
        errors += sum(int(g) for g in se.groups())
    if bad := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(bad.group(1))
    pct = {}
    for q in ("50", "99"):
        pm = re.search(rf"^\s+{q}%\s+(\S+)", out, re.M)
        pct[q] = _seconds(pm.group(1)) if pm else float("nan")
    return WrkResult(
        requests=requests,
        seconds=took,
        rps=requests / took,
        p50_s=pct["50"],
        p99_s=pct["99"],
        errors=errors,
    )


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stop_pid(pid: int, *, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            stat = Path(f"/proc/{pid}/stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                return
        except (ProcessLookupError, FileNotFoundError):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


PLAIN_CONF = """\
worker_processes auto;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    upstream backend {{
        server {backend};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://backend;
        }}
    }}
}}
"""


@contextlib.contextmanager
def plain_proxy(workdir: Path, backend: str) -> Iterator[tuple[str, int]]:
    """A minimal Nginx reverse proxy to ``backend``; yields its URL and master's pid."""
    folder = workdir / "plain"
    (folder / "tmp").mkdir(parents=True)
    port = free_port()
    (folder / "nginx.conf").write_text(PLAIN_CONF.format(dir=folder, backend=backend, port=port))
    proc = subprocess.Popen(
        [
            "nginx",
            "-p",
            f"{folder}/",
            "-c",
            str(folder / "nginx.conf"),
            "-e",
            "stderr",
            "-g",
            "daemon off;",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(folder / "stderr.log").open("wb"),
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until("the plain proxy", lambda: httpx.get(url, timeout=1).status_code == 200)
        yield url, proc.pid
    finally:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class EdgeUnderTest:
    url: str  # the service through the edge's Nginx
    pid: int  # the edge process (not its Nginx)
    metrics_url: str
    nginx_pid: int  # the Nginx master the edge started


def _orchestrify(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrify", *args]


def _env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{root}:{path}" if path else root}


@contextlib.contextmanager
def controller(workdir: Path, backend: str) -> Iterator[str]:
    """A real controller with one service whose only replica is ``backend``."""
    port = free_port()
    data = workdir / "controller"
    data.mkdir()
    log = (workdir / "controller.log").open("wb")
    proc = subprocess.Popen(
        [
            *_orchestrify("controller", "--port", str(port), "--data-dir", str(data)),
            "--token",
            ADMIN_TOKEN,
            "--join-token",
            JOIN_TOKEN,
            "--node-timeout",
            "3600",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_env(),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=10) as http:
            wait_until("the controller", lambda: http.get("/healthz").status_code == 200)
            admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            creds = http.post(
                "/v1/nodes/register",
                json={"name": "bench-node", "address": "127.0.0.1"},
                headers={"Authorization": f"Bearer {JOIN_TOKEN}"},
            ).json()
            node = {"Authorization": f"Bearer {creds['node_token']}"}
            created = http.post(
                "/v1/services",
                json={"name": SERVICE, "image": "orchestrify-test/edge-backend:bench"},
                headers=admin,
            )
            if created.status_code != 201:
                raise BenchError(f"creating the service failed: {created.text}")

            def assigned() -> str | None:
                body = http.get(f"/v1/nodes/{creds['node_id']}/assignments", headers=node).json()
                run = [a["replica"] for a in body["replicas"] if a["desired"] == "run"]
                return run[0] if run else None

            replica = wait_until("the replica's assignment", assigned)
            # The bench plays the agent: the backend container is that replica.
            http.post(
                f"/v1/nodes/{creds['node_id']}/replicas",
                json={"replicas": [{"id": replica, "state": "healthy", "address": backend}]},
                headers=node,
            ).raise_for_status()
        yield url
    finally:
        _stop_pid(proc.pid)
        log.close()


@contextlib.contextmanager
def edge(workdir: Path, controller_url: str, *, telemetry: bool) -> Iterator[EdgeUnderTest]:
    """``orchestrify edge`` and the Nginx it starts; both stopped at the end."""
    name = "on" if telemetry else "off"
    prefix = workdir / f"edge-{name}"
    prefix.mkdir()
    listen, metrics = free_port(), free_port()
    log = (workdir / f"edge-{name}.log").open("wb")
    proc = subprocess.Popen(
        [
            *_orchestrify("edge", "--controller", controller_url, "--token", ADMIN_TOKEN),
            "--nginx-conf-dir",
            str(prefix),
            "--listen",
            f"127.0.0.1:{listen}",
            "--metrics-port",
            str(metrics),
            "--name",
            f"bench-edge-{name}",
            "--telemetry",
            name,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_env(),
    )
    url = f"http://127.0.0.1:{listen}/{SERVICE}/"
    try:
        wait_until(
            "the edge to serve the backend", lambda: httpx.get(url, timeout=1).text == "ok\n"
        )
        yield EdgeUnderTest(
            url=url,
            pid=proc.pid,
            metrics_url=f"http://127.0.0.1:{metrics}/metrics",
            nginx_pid=int((prefix / "nginx.pid").read_text()),
        )
    finally:
        _stop_pid(proc.pid)
        log.close()
        with contextlib.suppress(OSError, ValueError):
            # Nginx outlives its edge by design; this bench started it, so it stops it.
            _stop_pid(int((prefix / "nginx.pid").read_text()), sig=signal.SIGQUIT)


def counted_requests(metrics_url: str) -> float:
    """Requests of SERVICE the edge's /metrics has counted so far."""
    text = httpx.get(metrics_url, timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("orchestrify_http_requests_total{") and f'service="{SERVICE}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@dataclass
class PathFigures:
    runs: list[WrkResult]
    edge_cpu: list[float]  # the edge process's CPU, share of one core, per run
    hop_cpu: list[float]  # CPU µs per request of the proxy (Nginx workers + edge), per run
    kept: list[float]  # requests counted by /metrics / requests wrk completed, per run


@dataclass(frozen=True)
class Target:
    """One path to measure: its URL, the Nginx master in front, the edge process."""

    name: str
    url: str
    nginx_pid: int | None = None
    edge: EdgeUnderTest | None = None


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def _proxy_cpu(target: Target) -> float:
    """CPU seconds used so far by the proxy's Nginx workers and the edge process."""
    pids = _children(target.nginx_pid) if target.nginx_pid else []
    if target.edge is not None:
        pids.append(target.edge.pid)
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += _cpu_seconds(pid)
    return total


def measure(target: Target, *, seconds: int, figures: PathFigures) -> None:
    # A short warm-up: connections to the backend open, caches filled.
    run_wrk(target.url, seconds=1)
    edge = target.edge
    before_count = counted_requests(edge.metrics_url) if edge else 0.0
    before_edge = _cpu_seconds(edge.pid) if edge else 0.0
    before_hop = _proxy_cpu(target)
    result = run_wrk(target.url, seconds=seconds)
    hop_cpu = _proxy_cpu(target) - before_hop
    figures.runs.append(result)
    if target.nginx_pid is not None:
        figures.hop_cpu.append(hop_cpu / max(result.requests, 1) * 1e6)
    if edge is not None:
        figures.edge_cpu.append((_cpu_seconds(edge.pid) - before_edge) / result.seconds)
        if target.name == "edge":
            # Nginx writes its buffered lines within a second and the edge reads them
            # every 0.25 s: wait until every request is counted, or 5 s.
            deadline = time.monotonic() + 5.0
            while True:
                counted = counted_requests(edge.metrics_url) - before_count
                if counted >= result.requests or time.monotonic() > deadline:
                    break
                time.sleep(0.25)
            figures.kept.append(counted / result.requests)
    print(
        f"  {target.name}: {result.rps:,.0f} req/s, p50 {result.p50_s * 1e3:.2f} ms, "
        f"p99 {result.p99_s * 1e3:.2f} ms, errors {result.errors}",
        file=sys.stderr,
        flush=True,
    )


def check_tools() -> None:
    for tool, package in (("wrk", "wrk"), ("nginx", "nginx"), ("docker", "docker.io")):
        if shutil.which(tool) is None:
            raise BenchError(
                f"{tool} not found on PATH; install it: apt-get install {package} "
                "(or bash scripts/ensure-packages.sh --test)"
            )


def run(*, seconds: int, rounds: int) -> Report:
    check_tools()
    load_before = os.getloadavg()[0]
    results = {p: PathFigures(runs=[], edge_cpu=[], hop_cpu=[], kept=[]) for p in PATHS}
    backend: Backend | None = None
    with tempfile.TemporaryDirectory(prefix="edge-hop-") as tmp:
        workdir = Path(tmp)
        try:
            backend = start_backend()
            with (
                plain_proxy(workdir, backend.address) as (plain_url, plain_pid),
                controller(workdir, backend.address) as ctl,
                edge(workdir, ctl, telemetry=True) as edge_on,
                edge(workdir, ctl, telemetry=False) as edge_off,
            ):
                targets = [
                    Target("direct", f"http://{backend.address}/"),
                    Target("plain nginx", plain_url, plain_pid),
                    Target("edge", edge_on.url, edge_on.nginx_pid, edge_on),
                    Target("edge, no telemetry", edge_off.url, edge_off.nginx_pid, edge_off),
                ]
                # Rounds interleave the paths, each round in another order, so that load
                # elsewhere on the machine hits them alike; figures are medians over rounds.
                for n in range(rounds):
                    print(f"round {n + 1}/{rounds}, {seconds} s per path", file=sys.stderr)
                    for target in targets[n % 4 :] + targets[: n % 4]:
                        measure(target, seconds=seconds, figures=results[target.name])
        finally:
            if backend is not None:
                backend.stop()
    return build_report(
        results, seconds=seconds, rounds=rounds, load=(load_before, os.getloadavg()[0])
    )


def build_report(
    results: dict[str, PathFigures], *, seconds: int, rounds: int, load: tuple[float, float]
) -> Report:
    def med(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    report = Report(
        f"edge hop: wrk -t{THREADS} -c{CONNECTIONS}, {seconds} s per path, "
        f"median of {rounds} round(s); load {load[0]:.2f} before, {load[1]:.2f} after"
    )
    plain = results["plain nginx"].runs
    plain_rps = med([r.rps for r in plain])
    plain_p99 = med([r.p99_s for r in plain]) * 1e3
    for path in PATHS:
        fig = results[path]
        is_edge = path == "edge"
        rps_goal = at_least(round(0.9 * plain_rps)) if is_edge else None
        p99_goal = at_most(round(1.5 * plain_p99, 2), "ms") if is_edge else None
        report.add(path, "requests/s", med([r.rps for r in fig.runs]), "/s", rps_goal)
        report.add(path, "p50", med([r.p50_s for r in fig.runs]) * 1e3, "ms")
        report.add(path, "p99", med([r.p99_s for r in fig.runs]) * 1e3, "ms", p99_goal)
        report.add(
            path, "errors", sum(r.errors for r in fig.runs), "", at_most(0) if is_edge else None
        )
        if fig.hop_cpu:
            report.add(path, "proxy CPU per request", med(fig.hop_cpu), "µs")
        if path.startswith("edge"):
            report.add(path, "edge process CPU", med(fig.edge_cpu) * 100, "%")
        if fig.kept:
            report.add(
                path, "requests counted by /metrics", min(fig.kept) * 100, "%", at_least(99, "%")
            )
    # The same two measured minutes apart compare better than two medians: per round.
    edge = results["edge"].runs
    pairs = list(zip(edge, plain, strict=True))
    report.add(
        "edge",
        "requests/s vs plain nginx, per round",
        med([e.rps / p.rps for e, p in pairs if p.rps]),
        "x",
        at_least(0.9, "x"),
    )
    report.add(
        "edge",
        "p99 vs plain nginx, per round",
        med([e.p99_s / p.p99_s for e, p in pairs if p.p99_s]),
        "x",
        at_most(1.5, "x"),
    )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per path and round")
    parser.add_argument("--rounds", type=int, default=1, help="rounds over the four paths")
    parser.add_argument("--quick", action="store_true", help="2 s per path, one round")
    parser.add_argument("--json", action="store_true", help="one JSON object per figure")
    args = parser.parse_args(argv)
    if args.seconds < 1 or args.seconds > 120 or args.rounds < 1 or args.rounds > 10:
        print("error: --seconds must be 1..120 and --rounds 1..10", file=sys.stderr)
        return 2
    seconds, rounds = (2, 1) if args.quick else (args.seconds, args.rounds)
    try:
        report = run(seconds=seconds, rounds=rounds)
    except (BenchError, OrchestrifyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report.print(json_out=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
