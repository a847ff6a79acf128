"""What an outage of the control plane costs the data plane, measured on the real stack.

Drills (issue 9), each on a fresh fleet: a controller process, an agent on the local
Docker engine, an edge process with its Nginx, one service of 3 demo replicas, and
requests through Nginx every 20 ms on new connections.

- controller-down: SIGKILL the controller, wait ``--outage`` seconds, start it again.
- data-dir-wiped: SIGKILL the controller, delete its data dir, start a fresh one,
  re-create the service by name (which adopts the orphaned containers).
- edge-killed: SIGKILL the edge and start it again, with the controller up.
- edge-killed-controller-down: the same while the controller is away.

For each it prints containers replaced (or removed), requests failed, and seconds from
the end of the fault (the component back) until the fleet is whole again: the service's
replicas healthy in the controller, Nginx serving them, and every node heard from since.
Goal: 0 and 0. Asserts nothing.

    source .venv/bin/activate && python bench/outage.py [--outage 60] [--only NAME]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.` from a checkout

from bench.outage_lab import Fleet, containers, fleet
from bench.wait import wait_for
from orchestrify.demo import DEFAULT_TAG, build_demo_image

SERVICE = "web"
REPLICAS = 3


@dataclass(frozen=True)
class Outcome:
    drill: str
    replaced: int
    requests: int
    failed: int
    whole_after_s: float


def _whole(f: Fleet, *, since: float = 0.0) -> bool:
    """The service served as it should be, and every node heard from since ``since``
    (wall-clock seconds): the controller, if it was the one lost, knows the fleet again."""
    if not f.serving(SERVICE, REPLICAS):
        return False
    with f.controller.api() as api:
        nodes = api.get("/v1/nodes").json()
    return bool(nodes) and all(
        n["state"] == "ready"
        and n["last_heartbeat"] is not None
        and datetime.fromisoformat(n["last_heartbeat"]).timestamp() >= since
        for n in nodes
    )


def _drill(
    name: str, client: docker.DockerClient, fault: Callable[[Fleet], None], *, workdir: Path
) -> Outcome:
    with fleet(workdir / name, client, controller_args=["--node-timeout", "3"]) as f:
        f.deploy(SERVICE, image=DEFAULT_TAG, replicas=REPLICAS)
        wait_for("the service to be served", lambda: _whole(f), timeout=120)
        before = containers(client, f.run_id)
        load = f.load(SERVICE)
        time.sleep(1)
        fault(f)
        ended, ended_wall = time.monotonic(), time.time()
        wait_for("the fleet to be whole", lambda: _whole(f, since=ended_wall), timeout=180)
        whole_after = time.monotonic() - ended
        time.sleep(1)
        load.finish()
        after = containers(client, f.run_id)
        return Outcome(
            drill=name,
            replaced=len(set(before) - set(after)),
            requests=load.total,
            failed=len(load.failures),
            whole_after_s=whole_after,
        )


def controller_down(outage_s: float) -> Callable[[Fleet], None]:
    def fault(f: Fleet) -> None:
        f.controller.kill()
        time.sleep(outage_s)
        f.controller.start()

    return fault


def data_dir_wiped(f: Fleet) -> None:
    f.controller.kill()
    shutil.rmtree(f.controller.data_dir)
    f.controller.start()

    def orphans() -> int:
        with f.controller.api() as api:
            return sum(len(n["orphaned"]) for n in api.get("/v1/nodes").json())

    # The agent finds a stranger and reports its containers as orphans; the operator
    # then re-creates the service by name, which adopts them.
    wait_for("the agent to report its orphans", lambda: orphans() == REPLICAS, timeout=60)
    f.deploy(SERVICE, image=DEFAULT_TAG, replicas=REPLICAS)


def edge_killed(f: Fleet) -> None:
    f.edge.kill()
    time.sleep(2)
    f.edge.start()


def edge_killed_controller_down(f: Fleet) -> None:
    f.controller.kill()
    f.edge.kill()
    time.sleep(2)
    f.edge.start()
    time.sleep(5)
    f.controller.start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outage", type=float, default=60.0, help="controller-down seconds")
    parser.add_argument("--only", help="run only this drill")
    args = parser.parse_args()
    client = docker.from_env()
    build_demo_image()
    drills: dict[str, Callable[[Fleet], None]] = {
        "controller-down": controller_down(args.outage),
        "data-dir-wiped": data_dir_wiped,
        "edge-killed": edge_killed,
        "edge-killed-controller-down": edge_killed_controller_down,
    }
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="orchestrify-outage-") as tmp:
        for name, fault in drills.items():
            if args.only and name != args.only:
                continue
            print(f"drill {name} ...", flush=True)
            outcomes.append(_drill(name, client, fault, workdir=Path(tmp)))
    print()
    print(f"{'drill':<30} {'replaced':>9} {'requests':>9} {'failed':>7} {'whole after':>12}")
    for o in outcomes:
        print(
            f"{o.drill:<30} {o.replaced:>9} {o.requests:>9} {o.failed:>7} {o.whole_after_s:>11.1f}s"
        )
    print("goal: 0 replaced, 0 failed")
    client.close()


if __name__ == "__main__":
    main()
