"""How long a failover of the leading controller takes, and what it costs the data plane.

One fleet (tests/integration/ha_lab.py): PostgreSQL 15 of its own, three controller
processes (lease ``--lease`` seconds, 6 by default as in production), two agents on the
local Docker engine, an edge with its Nginx, one service of 3 demo replicas, requests
through Nginx every 20 ms on new connections. Then, ``--kills`` times (5):

- SIGKILL the leader; at once, an alert (``FailoverDrill``, mapped to ``notify_only``)
  arrives at a surviving controller, which stores it; only a leader decides on it;
- measure the seconds until a new leader shows in ``GET /v1/cluster`` and until the
  alert's decision is recorded (the first decision of the new leader);
- count requests failed through Nginx from the kill until 2 s after that decision, and
  containers replaced; then start the killed controller again (it comes back a follower).

Prints each kill and the medians. Goal: the first decision within 10 s (median), 0
failed, 0 replaced. Asserts nothing.

    source .venv/bin/activate && python bench/failover.py [--kills 5] [--lease 6]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tests.` from a checkout

from bench.ha_lab import HaLab, ha_lab
from bench.postgres import postgres_available
from bench.wait import wait_for
from orchestrify.demo import DEFAULT_TAG, build_demo_image

SERVICE = "web"
REPLICAS = 3
ALERTNAME = "FailoverDrill"
DEFAULT_RULES = Path(__file__).resolve().parents[1] / "orchestrify/controller/default_rules.yml"


@dataclass(frozen=True)
class Kill:
    killed: str
    new_leader: str
    leader_after_s: float
    decided_after_s: float
    requests: int
    failed: int
    replaced: int


def _rules_file(workdir: Path) -> Path:
    """The shipped rules with one more in front: the drill's alert is recorded only."""
    rules = yaml.safe_load(DEFAULT_RULES.read_text())
    rules["rules"].insert(
        0,
        {
            "name": "failover-drill",
            "description": "bench/failover.py: the alert a new leader decides on first.",
            "matchers": [f'alertname="{ALERTNAME}"'],
            "action": "notify_only",
        },
    )
    path = workdir / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    return path


def _alert(n: int) -> dict[str, Any]:
    now = datetime.now().astimezone().isoformat()
    labels = {"alertname": ALERTNAME, "severity": "info", "drill": str(n)}
    return {
        "receiver": "orchestrify",
        "status": "firing",
        "alerts": [
            {
                "status": "firing",
                "labels": labels,
                "annotations": {},
                "startsAt": now,
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus:9090/graph",
                "fingerprint": f"{n:016x}",
            }
        ],
        "groupLabels": {"alertname": ALERTNAME},
        "commonLabels": labels,
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "version": "4",
        "groupKey": f'{{}}:{{alertname="{ALERTNAME}"}}',
        "truncatedAlerts": 0,
    }


def _decisions(lab: HaLab) -> int:
    with lab.api() as api:
        events = api.get("/v1/events", params={"kind": "decision", "limit": 10_000}).json()
    return sum(1 for e in events if e["action"] == "notify_only")


def _kill_once(lab: HaLab, n: int) -> Kill:
    old = lab.controller(str(lab.leader()))
    decided_before = _decisions(lab)
    before = lab.containers()
    load = lab.load(SERVICE)
    time.sleep(1)

    old.kill()
    killed_at = time.monotonic()
    survivor = lab.alive()[-1]
    httpx.post(
        f"{survivor.url}/v1/alerts",
        json=_alert(n),
        headers={"Authorization": f"Bearer {lab.admin_token}"},
        timeout=30,
    ).raise_for_status()
    seen: dict[str, float] = {}  # when each was first seen, seconds after the kill
    leader: list[str] = []

    def both() -> bool:
        """Poll the two independently: a decision taken by anyone but a new leader (a
        follower, the dead one) would show before the new leader does."""
        if "leader" not in seen and (lead := lab.leader()) not in (None, old.ident):
            seen["leader"] = time.monotonic() - killed_at
            leader.append(str(lead))
        if "decided" not in seen and _decisions(lab) > decided_before:
            seen["decided"] = time.monotonic() - killed_at
        return len(seen) == 2

    wait_for("a new leader and its decision", both, timeout=120)
    leader_after, decided_after = seen["leader"], seen["decided"]
    new = leader[0]
    time.sleep(2)
    load.finish()
    after = lab.containers()

    old.start()  # back as a follower, for the next kill
    wait_for("the cluster whole", lambda: lab.serving(SERVICE, REPLICAS), timeout=120)
    return Kill(
        killed=old.ident,
        new_leader=str(new),
        leader_after_s=leader_after,
        decided_after_s=decided_after,
        requests=load.total,
        failed=len(load.failures),
        replaced=len(set(before) - set(after)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=5, help="leaders to kill, one by one")
    parser.add_argument("--lease", type=float, default=6.0, help="--lease-s of the controllers")
    args = parser.parse_args()
    why = postgres_available()
    if why is not None:
        sys.exit(f"failover bench: needs {why}")
    client = docker.from_env()
    build_demo_image()
    kills: list[Kill] = []
    with tempfile.TemporaryDirectory(prefix="orchestrify-failover-") as tmp:
        workdir = Path(tmp)
        controller_args = ["--rules", str(_rules_file(workdir))]
        with ha_lab(workdir, client, lease_s=args.lease, controller_args=controller_args) as lab:
            lab.deploy(SERVICE, replicas=REPLICAS, image=DEFAULT_TAG)
            wait_for("the service served", lambda: lab.serving(SERVICE, REPLICAS), timeout=120)
            for n in range(1, args.kills + 1):
                print(f"kill {n} ...", flush=True)
                kills.append(_kill_once(lab, n))
    print()
    print(
        f"{'kill':>4} {'killed':>7} {'new':>5} {'leader after':>13} {'decided after':>14}"
        f" {'requests':>9} {'failed':>7} {'replaced':>9}"
    )
    for n, k in enumerate(kills, 1):
        print(
            f"{n:>4} {k.killed:>7} {k.new_leader:>5} {k.leader_after_s:>12.1f}s"
            f" {k.decided_after_s:>13.1f}s {k.requests:>9} {k.failed:>7} {k.replaced:>9}"
        )
    if kills:
        leader = statistics.median(k.leader_after_s for k in kills)
        decided = statistics.median(k.decided_after_s for k in kills)
        print(
            f"median (lease {args.lease:g}s): new leader after {leader:.1f}s, first decision"
            f" after {decided:.1f}s; failed {sum(k.failed for k in kills)},"
            f" replaced {sum(k.replaced for k in kills)}"
        )
    print("goal: first decision <= 10 s (median), 0 failed, 0 replaced")
    client.close()


if __name__ == "__main__":
    main()
