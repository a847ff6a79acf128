"""Failover drills of the highly available control plane (issue 11, "How it is shown"):
real PostgreSQL, three controller processes, two real agents on the Docker engine, the
edge with the real Nginx, and traffic through Nginx every 20 ms on new connections.

One fleet serves every drill (a module fixture: bringing it up is most of the cost).
The drills run in file order and each leaves the fleet whole: the batch to two
controllers first (nothing broken), then the partition and the frozen leader, then the
SIGKILL. The lease is 3 s here (6 s by default) to keep the file short; timings are
printed, never asserted (bench/failover.py measures them). Drill 3 of the issue (100
concurrent scale and create calls) is an API test of the alert/placement work.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from bench.ha_lab import HaLab, ha_lab
from bench.postgres import postgres_available
from bench.wait import wait_for
from tests.alerting.payloads import am_alert, am_payload
from tests.conftest import require, require_binary, require_docker

pytestmark = pytest.mark.integration

LEASE_S = 3.0
SERVED = "web"  # 2 replicas under traffic; the SIGKILL drill's alert scales it to 3
ALERTED = "api"  # 1 replica; the double delivery's alert scales it to 2
BOUND_S = 60.0  # generous waits for a busy machine: correctness, not speed, is tested
STEPPED_DOWN = "stepped down as leader"  # the controller's log lines
FENCED = "no longer leads at epoch"
FLOOD = 1000  # alerts that keep the leader's loop writing (the webhook's most per batch)


@pytest.fixture(scope="module")
def lab(demo_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HaLab]:
    require_binary("nginx")
    why = postgres_available()
    require(why is None, why or "")
    client = require_docker()
    try:
        with ha_lab(
            tmp_path_factory.mktemp("ha"),
            client,
            # The database is left at PostgreSQL's defaults: the controllers' own sessions
            # end a transaction stalled by the partition (idle_in_transaction_session_
            # timeout, 0.8 of the lease), or no one else would be elected.
            lease_s=LEASE_S,
        ) as lab:
            lab.deploy(SERVED, replicas=2, image=demo_image)
            lab.deploy(ALERTED, replicas=1, image=demo_image)
            wait_for(
                "both services served",
                lambda: lab.serving(SERVED, 2) and lab.serving(ALERTED, 1),
                timeout=120,
            )
            yield lab
    finally:
        client.close()


def _alert(service: str, *, fingerprint: str) -> dict[str, Any]:
    starts = datetime.now().astimezone().isoformat()  # a new alert each run
    return am_payload(
        am_alert(
            "ServiceRequestRateHigh", service=service, fingerprint=fingerprint, starts_at=starts
        )
    )


def _scale_outs(lab: HaLab, service: str) -> list[dict[str, Any]]:
    """The scale-outs taken (a firing alert is also re-evaluated on a timer, and refused
    within the cooldown: that is a decision, not an action)."""
    with lab.api() as api:
        events = api.get(
            "/v1/events", params={"kind": "decision", "service": service, "limit": 1000}
        ).json()
    refused = [e["reason"] for e in events if e["outcome"] != "ok"]
    print(f"{service}: decisions refused: {refused}")
    return [e for e in events if e["action"] == "scale_out" and e["outcome"] == "ok"]


def _post(url: str, token: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = httpx.post(
        f"{url}/v1/alerts", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    resp.raise_for_status()
    answer: dict[str, Any] = resp.json()
    return answer


def _leader_since(cluster: dict[str, Any], ident: str) -> datetime:
    (me,) = [c for c in cluster["controllers"] if c["id"] == ident]
    return datetime.fromisoformat(me["leader_since"].replace("Z", "+00:00"))


def test_one_batch_delivered_to_two_controllers_at_once_acts_once(lab: HaLab) -> None:
    """Drill 4: two Alertmanagers deliver the same batch to two controllers (the leader
    and a follower) at the same moment: one is stored as new, the other as a duplicate,
    and the service takes one step."""
    leader = lab.leader()
    follower = next(c for c in lab.alive() if c.ident != leader)
    targets = [lab.controller(str(leader)), follower]
    body = _alert(ALERTED, fingerprint="aa11aa11aa11aa11")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda c: _post(c.url, lab.admin_token, body), targets))

    assert sorted(a["new"] for a in answers) == [0, 1], answers
    assert sorted(a["duplicates"] for a in answers) == [0, 1], answers
    wait_for("the step", lambda: lab.desired(ALERTED) == 2, timeout=BOUND_S)
    wait_for(f"{ALERTED} served with 2", lambda: lab.serving(ALERTED, 2), timeout=BOUND_S)
    assert lab.desired(ALERTED) == 2
    assert len(_scale_outs(lab, ALERTED)) == 1


def test_partitioned_leader_stops_acting_and_nothing_it_writes_lands_late(lab: HaLab) -> None:
    """Drill 2: the leader loses the database (its connections stall, as in a real
    partition) while it decides a flood of alerts, and keeps running. It stops leading,
    another controller takes over, work given meanwhile is done once, and when the
    partition heals and its stalled writes reach the database, none of them lands after
    its lease expired (fencing): the audit finds no row of its written since."""
    old = lab.controller(str(lab.leader()))
    load = lab.load(SERVED)
    before = lab.containers()
    # Keep the leader writing when the partition falls: a flood of alerts stored by a
    # follower, which the leader's loop decides in fenced transactions, slice by slice.
    follower = next(c for c in lab.alive() if c.ident != old.ident)
    starts = datetime.now().astimezone().isoformat()

    def flood(status: str) -> dict[str, Any]:
        return am_payload(
            *(
                am_alert(
                    "ServiceRequestRateHigh",
                    status=status,
                    starts_at=starts,
                    fingerprint=f"{n:016x}",
                    service=f"nowhere-{n}",
                )
                for n in range(FLOOD)
            )
        )

    assert _post(follower.url, lab.admin_token, flood("firing"))["new"] == FLOOD
    time.sleep(0.5)  # the leader has been woken to decide them

    stepped_down = old.said(STEPPED_DOWN)
    lab.proxies[old.ident].cut()
    cut_at = time.monotonic()
    # Its /metrics reads the store too, and stalls with it: its log says when it stopped.
    wait_for(
        f"{old.ident} to stop leading",
        lambda: old.said(STEPPED_DOWN) > stepped_down,
        timeout=BOUND_S,
    )
    stopped_after = time.monotonic() - cut_at
    new = wait_for(
        "another controller to lead",
        lambda: (lead := lab.leader(avoid=[old.ident])) not in (None, old.ident) and lead,
        timeout=BOUND_S,
    )
    took_over_after = time.monotonic() - cut_at
    expired = lab.lease_end(old.ident)  # its last lease's end, by the database's clock
    assert expired is not None
    assert expired <= _leader_since(lab.cluster(avoid=[old.ident]), str(new))
    print(
        f"partition: {old.ident} stopped leading after {stopped_after:.1f}s, {new} led after "
        f"{took_over_after:.1f}s (lease {LEASE_S:g}s)"
    )

    # Work for the leader while the old one is cut off: one more replica to place.
    with lab.api(avoid=[old.ident]) as api:
        api.patch(f"/v1/services/{ALERTED}", json={"replicas": 3}).raise_for_status()
    wait_for(f"{ALERTED} served with 3", lambda: lab.serving(ALERTED, 3), timeout=BOUND_S)

    lab.proxies[old.ident].heal()
    time.sleep(2 * LEASE_S)  # the old leader's stalled writes, and its next loops, run now
    print(f"partition: {old.ident}'s writes refused as fenced: {old.said(FENCED)}")
    _post(follower.url, lab.admin_token, flood("resolved"))  # nothing left to re-evaluate
    assert lab.leader(avoid=[old.ident]) == new, "the healed controller took the lead back"
    assert old.metric("orchestrify_controller_leader") == 0
    load.finish()

    # c1 serves no agent or edge (they prefer c3): any row of its is a leader loop's.
    assert lab.writes(who=old.ident, after=expired) == []
    assert lab.writes(who=str(new), after=expired, fenced_only=True), "the audit is blind"
    with lab.api() as api:
        reps = api.get("/v1/replicas", params={"service": ALERTED}).json()
    assert len([r for r in reps if r["desired"] == "run"]) == 3, "a replica placed twice"
    assert len(lab.containers(service=ALERTED)) == 3
    assert set(before) <= set(lab.containers()), "a container was replaced"
    assert load.failures == [], load.failures[:5]


def test_frozen_leader_wakes_up_late_and_writes_nothing(lab: HaLab) -> None:
    """Drill 2, the other way to lose a lease: the leader freezes (SIGSTOP, as a long GC
    pause or a stalled VM) past its lease, another takes over, and when it wakes up
    (SIGCONT) believing it still leads, nothing it writes lands (fencing)."""
    old = lab.controller(str(lab.leader()))
    load = lab.load(SERVED)
    before = lab.containers()
    served = lab.containers(service=SERVED)

    old.pause()
    try:
        new = wait_for(
            "another controller to lead",
            lambda: (lead := lab.leader(avoid=[old.ident])) not in (None, old.ident) and lead,
            timeout=BOUND_S,
        )
        expired = lab.lease_end(old.ident)
        assert expired is not None
        with lab.api(avoid=[old.ident]) as api:
            api.patch(f"/v1/services/{ALERTED}", json={"replicas": 2}).raise_for_status()
        wait_for(f"{ALERTED} back to 2", lambda: lab.serving(ALERTED, 2), timeout=BOUND_S)
    finally:
        old.resume()
    wait_for(
        f"{old.ident} to know it does not lead",
        lambda: old.metric("orchestrify_controller_leader") == 0,
        timeout=BOUND_S,
    )
    time.sleep(LEASE_S)  # its loops, woken, try their writes now
    load.finish()
    print(f"frozen: {old.ident}'s writes refused as fenced: {old.said(FENCED)}")

    assert lab.leader() == new
    # It may have served agents until it froze: their requests' writes are not fenced.
    assert lab.writes(who=old.ident, after=expired, fenced_only=True) == []
    wait_for(
        f"{ALERTED}'s third container removed",
        lambda: len(lab.containers(service=ALERTED)) == 2,
        timeout=BOUND_S,
    )
    assert set(lab.containers()) <= set(before), "a container was started in the gap"
    assert lab.containers(service=SERVED) == served, "a container was replaced"
    assert load.failures == [], load.failures[:5]


def test_leader_killed_another_leads_nothing_fails_and_the_gap_alert_acts_once(
    lab: HaLab,
) -> None:
    """Drill 1: SIGKILL the leader under traffic. Another controller leads; no request
    through Nginx fails; no container is replaced; an alert that arrives in the gap (at a
    surviving controller, before anyone leads again) is acted on exactly once."""
    old = lab.controller(str(lab.leader()))
    load = lab.load(SERVED)
    before = lab.containers()

    old.kill()
    killed_at = time.monotonic()
    survivor = lab.alive()[0]
    answer = _post(survivor.url, lab.admin_token, _alert(SERVED, fingerprint="bb22bb22bb22bb22"))
    assert answer["new"] == 1
    new = wait_for(
        "another controller to lead",
        lambda: (lead := lab.leader()) not in (None, old.ident) and lead,
        timeout=BOUND_S,
    )
    print(f"SIGKILL: {new} led {time.monotonic() - killed_at:.1f}s after {old.ident} died")
    wait_for("the gap alert's step", lambda: lab.desired(SERVED) == 3, timeout=BOUND_S)
    wait_for(f"{SERVED} served with 3", lambda: lab.serving(SERVED, 3), timeout=BOUND_S)
    time.sleep(2)
    load.finish()

    after = lab.containers()
    assert set(before) <= set(after), "a container was replaced"
    (added,) = set(after) - set(before)
    assert added in lab.containers(service=SERVED)
    assert len(_scale_outs(lab, SERVED)) == 1
    assert lab.desired(SERVED) == 3
    assert load.total > 20  # requests flowed throughout (a busy machine slows them)
    assert load.failures == [], load.failures[:5]
