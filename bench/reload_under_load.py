"""Benchmark: Nginx reloads under load must cost no request.

Runs a real controller (in process), demo containers on the local Docker engine, an edge
and its Nginx. wrk sends requests through Nginx for --seconds while the service is
scaled 3 -> 4 -> 3 ... every --every seconds (each step is one Nginx reload: a replica
joins once healthy, or drains out before its container stops). Then measures the added
latency of the Nginx hop: wrk straight at one replica vs through Nginx to it.

    PYTHONPATH=. /work/venv/bin/python bench/reload_under_load.py [--seconds 30]

Bounded in time (about --seconds + 40 s), and removes every container it started.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import docker

from bench.edge_lab import (
    ADMIN_TOKEN,
    ControllerThread,
    EdgeThread,
    StandInAgent,
    demo_image,
    running,
)
from bench.net import free_port
from bench.wait import wait_for
from orchestrify.edge import EdgeSettings

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _seconds(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(
    url: str, *, seconds: float, host: str | None, connections: int, close: bool = False
) -> dict[str, float]:
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{int(seconds)}s", "--latency", "--timeout", "5s"]
    if host:
        cmd += ["-H", f"Host: {host}"]
    if close:  # one connection per request: no keep-alive race with a reload's close
        cmd += ["-H", "Connection: close"]
    out = subprocess.run(
        [*cmd, url], capture_output=True, text=True, timeout=seconds + 30, check=True
    ).stdout
    stats: dict[str, float] = {}
    stats["requests"] = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    socket_errors = sum(int(g) for g in errors.groups()) if errors else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    stats["failed"] = float(socket_errors + (int(non2xx.group(1)) if non2xx else 0))
    stats["socket_errors"] = float(socket_errors)
    stats["non_2xx"] = float(non2xx.group(1)) if non2xx else 0.0
    if errors:
        for kind, value in zip(
            ("connect", "read", "write", "timeout"), errors.groups(), strict=True
        ):
            stats[f"err_{kind}"] = float(value)
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        stats[f"p{pct}"] = _seconds(m.group(1)) if m else float("nan")
    return stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="Load duration (s).")
    parser.add_argument("--every", type=float, default=2.0, help="Scale step period (s).")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections.")
    parser.add_argument(
        "--keepalive",
        action="store_true",
        help="Keep client connections alive: a reload then closes idle ones, and wrk (which "
        "never retries) counts a request raced with that close as a read error.",
    )
    args = parser.parse_args()
    if not shutil.which("wrk") or not shutil.which("nginx"):
        print("needs wrk and nginx on PATH", file=sys.stderr)
        return 2

    client = docker.from_env()
    image = demo_image(client)
    base = Path(tempfile.mkdtemp(prefix="orchestrify-bench-"))
    controller = ControllerThread(base / "controller").start()
    agent = StandInAgent(controller, client, image).start()
    listen = free_port()
    edge = EdgeThread(
        EdgeSettings(
            controller_url=controller.url,
            token=ADMIN_TOKEN,
            nginx_conf_dir=base / "nginx",
            listen=f"127.0.0.1:{listen}",
            metrics_port=0,
            name="bench-edge",
        )
    ).start()
    try:
        with running(controller, agent, edge):
            for name, n in (("bench", 3), ("solo", 1)):
                controller.http.post(
                    "/v1/services",
                    json={
                        "name": name,
                        "image": image,
                        "replicas": n,
                        "max_replicas": 10,
                        "drain_s": 1.5,
                    },
                ).raise_for_status()
            wait_for(
                "4 replicas in nginx",
                lambda: (
                    len(edge.served_replicas("bench")) == 3
                    and len(edge.served_replicas("solo")) == 1
                ),
                timeout=60,
            )
            reloads = edge.edge.metrics.reloads.labels("ok")
            start_reloads = reloads._value.get()

            stop = threading.Event()

            def churn() -> None:
                # Each step takes one replica out (it drains, then stops) and the
                # reconciler adds a replacement: two reloads per step.
                while not stop.wait(args.every):
                    served = sorted(edge.served_replicas("bench"))
                    if served:
                        controller.http.post(f"/v1/replicas/{served[0]}/stop")

            churner = threading.Thread(target=churn, daemon=True)
            churner.start()
            url = f"http://127.0.0.1:{listen}/"
            load = wrk(
                url,
                seconds=args.seconds,
                host="bench.localhost",
                connections=args.connections,
                close=not args.keepalive,
            )
            stop.set()
            churner.join()
            n_reloads = reloads._value.get() - start_reloads
            refused = sum(
                edge.edge.metrics.reloads.labels(o)._value.get() for o in ("refused", "rolled_back")
            )

            (solo,) = edge.served_replicas("solo")
            direct_url = f"http://{agent.addresses[solo]}/"
            direct = wrk(direct_url, seconds=8, host=None, connections=4)
            proxied = wrk(url, seconds=8, host="solo.localhost", connections=4)
    finally:
        client.images.remove(image, force=True)
        client.close()
        shutil.rmtree(base, ignore_errors=True)

    mode = "keep-alive" if args.keepalive else "Connection: close"
    print(
        f"reload under load ({args.seconds:g} s, one replica out and one in every "
        f"{args.every:g} s, {args.connections} connections, {mode})"
    )
    print(f"  reloads applied:   {n_reloads:.0f} (failed applies: {refused:.0f})")
    print(f"  requests:          {load['requests']:.0f}")
    socket_errors = ", ".join(f"{k[4:]} {v:.0f}" for k, v in load.items() if k[:4] == "err_")
    print(
        f"  failed requests:   {load['failed']:.0f} (non-2xx {load['non_2xx']:.0f}, "
        f"socket errors: {socket_errors or 'none'})"
    )
    print(f"  p50 / p99:         {load['p50'] * 1000:.2f} ms / {load['p99'] * 1000:.2f} ms")
    print("nginx hop (one replica, 4 keep-alive connections, 8 s each, no reloads)")
    print(f"  direct  p50 / p99: {direct['p50'] * 1000:.2f} ms / {direct['p99'] * 1000:.2f} ms")
    print(f"  nginx   p50 / p99: {proxied['p50'] * 1000:.2f} ms / {proxied['p99'] * 1000:.2f} ms")
    print(
        f"  added   p50 / p99: {(proxied['p50'] - direct['p50']) * 1000:+.2f} ms / "
        f"{(proxied['p99'] - direct['p99']) * 1000:+.2f} ms"
    )
    ok = load["failed"] == 0 and n_reloads >= 15
    print("goal (0 failed requests, >= 15 reloads):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
