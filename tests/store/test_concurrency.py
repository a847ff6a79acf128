"""Two writers at once, as two controllers on one database would be: every
read-decide-write is one transaction that locks what it decides on (PostgreSQL: SELECT
... FOR UPDATE, advisory locks for names not stored yet; SQLite: BEGIN IMMEDIATE), so
concurrent calls through two Store objects never place a replica twice, never lose an
update, and never register one node twice. Runs on both engines (``store_url``)."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from orchestrify.alerting.payload import AlertBatch
from orchestrify.alerting.policy import Decision
from orchestrify.errors import Conflict
from orchestrify.models import NodeRegistration, ServicePatch, ServiceSpec
from orchestrify.store import Store, utcnow
from orchestrify.store.alerts import AlertStore, Commit
from orchestrify.store.jobs import JobStore
from tests.alerting.payloads import am_alert, am_payload

CALLS = 50
NOW = "2026-01-01T00:00:00Z"


@pytest.fixture
def stores(tmp_path: Path, store_url: str) -> Iterator[tuple[Store, Store]]:
    """Two Store objects on one database: two controllers' worth of engines and locks."""
    a = Store.open(store_url, data_dir=tmp_path)
    b = Store.open(store_url, data_dir=tmp_path)
    yield a, b
    a.close()
    b.close()


def _race(
    stores: tuple[Store, Store], call: Callable[[Store, int], Any], *, calls: int = CALLS
) -> list[Any]:
    """``call(store, i)`` for i in 0..calls-1, alternating the stores, all at once (the
    first sixteen released together, so that they do overlap on a busy machine)."""
    start = threading.Barrier(min(calls, 16))

    def together(i: int) -> Any:
        if i < start.parties:
            start.wait(timeout=30)
        return call(stores[i % 2], i)

    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(together, i) for i in range(calls)]
        return [f.result() for f in futures]


def test_concurrent_placements_leave_exactly_the_requested_replicas(
    stores: tuple[Store, Store],
) -> None:
    a, b = stores
    nodes = [
        a.register_node(NodeRegistration(name=f"w{i}", address=f"10.0.0.{i + 1}"))[0].id
        for i in range(3)
    ]
    services = [f"web{n}" for n in range(5)]  # five races: a lost one shows in any
    for name in services:
        a.create_service(ServiceSpec(name=name, image="demo:1", replicas=10, max_replicas=20))

    # Each call is a reconciler that decided from a stale snapshot that one more replica
    # is missing; the first ten placed fill the service, every later one finds it full.
    def place(store: Store, i: int) -> int:
        service = services[i % len(services)]
        return len(store.create_replicas(service, [nodes[i % 3]], reason="race", up_to=10))

    placed = _race(stores, place, calls=15 * len(services))
    assert sum(placed) == 10 * len(services)
    for name in services:
        reps = b.list_replicas(service=name)
        assert len(reps) == 10, name
        assert len({r.id for r in reps}) == 10
        refused = [e for e in a.list_events(service=name) if e.reason == "changed"]
        assert len(refused) == 5  # each call that found it full said so


def test_concurrent_updates_and_scales_lose_no_update(stores: tuple[Store, Store]) -> None:
    a, b = stores
    a.create_service(ServiceSpec(name="web", image="demo:1", replicas=1, max_replicas=60))

    def change(store: Store, i: int) -> None:
        if i % 2:
            store.update_service("web", ServicePatch(env={"N": str(i)}))  # a new generation
        else:
            store.scale_service("web", i + 2, reason="race")

    _race(stores, change)
    svc = b.get_service("web")
    rolled = CALLS // 2
    # Every container change bumped the generation once: none read a stale row.
    assert svc.generation == 1 + rolled
    assert svc.previous_generation == rolled
    # The scale events form one chain, each from where the one before left it.
    scales = [e.data for e in a.list_events(service="web") if e.action == "scale"]
    assert len(scales) == CALLS - rolled
    for before, after in itertools.pairwise(scales):
        assert after["from"] == before["to"]
    assert svc.replicas == scales[-1]["to"]


def test_one_node_name_registered_at_once_from_both_stores_is_one_node(
    stores: tuple[Store, Store],
) -> None:
    a, _b = stores

    def register(store: Store, i: int) -> str:
        try:
            node, _token = store.register_node(
                NodeRegistration(name="worker", address=f"10.0.1.{i + 1}")
            )
        except Conflict:
            return "conflict"  # "a ready node is already named": the answer to all but one
        return node.id

    outcomes = _race(stores, register)
    ids = {o for o in outcomes if o != "conflict"}
    assert len(ids) == 1
    assert [n.name for n in a.list_nodes()] == ["worker"]


def test_a_job_is_started_once_whoever_reaches_for_it(stores: tuple[Store, Store]) -> None:
    a, b = stores
    JobStore(a).create(job_id="j1", playbook="site.yml", limit=None, extra_vars={}, reason="x")

    def start(store: Store, _i: int) -> str:
        try:
            JobStore(store).mark_running("j1")
        except Conflict:
            return "refused"
        return "started"

    outcomes = _race(stores, start, calls=20)
    assert outcomes.count("started") == 1
    assert outcomes.count("refused") == 19
    starts = [e for e in b.list_events() if e.action == "job_start"]
    assert len(starts) == 1


def test_one_alert_decided_by_both_stores_at_once_acts_once(stores: tuple[Store, Store]) -> None:
    a, b = stores
    services = [f"web{n}" for n in range(4)]  # four races: a lost one shows in any
    for name in services:
        a.create_service(ServiceSpec(name=name, image="demo:1", replicas=2, max_replicas=8))
    body = am_payload(
        *(
            am_alert("ServiceRequestRateHigh", fingerprint=f"f{n}", starts_at=NOW, service=name)
            for n, name in enumerate(services)
        )
    )
    AlertStore(a).store_batch(AlertBatch.model_validate(body), now=utcnow())
    receipts = {r.labels["service"]: r for r in AlertStore(b).pending()}
    assert sorted(receipts) == services

    # The decision's one write (receipt processed, the scale, the events), made by both
    # controllers' decision loops at once for the same receipt.
    def commit(store: Store, i: int) -> str | None:
        name = services[(i // 2) % len(services)]  # each alert from both stores in turn
        scale_out = Decision(
            action="scale_out",
            outcome="ok",
            reason="rate high",
            service=name,
            replicas_from=2,
            replicas_to=3,
        )
        done = AlertStore(store).commit(now=utcnow(), receipt=receipts[name], decision=scale_out)
        return name if done is not None else None

    outcomes = _race(stores, commit, calls=15 * len(services))
    assert sorted(o for o in outcomes if o is not None) == services  # each decided once
    for name in services:
        assert a.get_service(name).replicas == 3
        assert sum(1 for e in b.list_events(service=name) if e.action == "scale") == 1
    assert AlertStore(a).pending() == []


def test_alert_decisions_and_patches_of_one_service_at_once_all_land(
    stores: tuple[Store, Store],
) -> None:
    """The alert decision's write (receipt, service, policy state) and the owner's PATCH
    (service, then the manual-scale policy state) lock the same rows: in one order, so
    neither deadlocks nor trips over the other's first policy-state row (no 503, no 409),
    and the service ends where the last write left it."""
    a, b = stores
    # Each service's first four writes (a PATCH of its count, one of its env, a decision
    # that acts, one that does not) are sent together: it has no policy state yet, and
    # three of them make it.
    services = [f"web{n}" for n in range(8)]
    for name in services:
        a.create_service(ServiceSpec(name=name, image="demo:1", replicas=2, max_replicas=200))
    calls = 64
    body = am_payload(
        *(
            am_alert(
                "ServiceRequestRateHigh",
                fingerprint=f"f{i}",
                starts_at=NOW,
                service=services[(i // 4) % len(services)],
            )
            for i in range(calls)
            if i % 4 >= 2  # the decisions' alerts
        )
    )
    AlertStore(a).store_batch(AlertBatch.model_validate(body), now=utcnow())
    receipts = {r.fingerprint: r for r in AlertStore(b).pending()}

    def change(store: Store, i: int) -> str:
        name = services[(i // 4) % len(services)]
        alerts = AlertStore(store)
        if i % 4 == 0:  # the owner
            store.scale_service(name, 10 + i, reason="race")
            return "patched"
        if i % 4 == 1:
            store.update_service(name, ServicePatch(env={"N": str(i)}))
            return "patched"
        now = utcnow()
        state = alerts.policy_state(name)
        if i % 4 == 2:  # a decision that acts: one more replica than it read
            current = store.get_service(name).replicas
            decision = Decision(
                action="scale_out",
                outcome="ok",
                reason="rate high",
                service=name,
                replicas_from=current,
                replicas_to=current + 1,
                new_state=replace(state, last_action_at=now),
            )
            done = alerts.commit(now=now, receipt=receipts[f"f{i}"], decision=decision)
            assert done is not None
            return done.outcome
        # a decision that does not act, written with the others of its slice
        quiet = Decision(
            action="scale_out", outcome="refused", refusal="cooldown", reason="x", service=name
        )
        alerts.commit_many(
            [
                Commit(
                    receipts[f"f{i}"],
                    quiet,
                    (name, replace(state, last_scale_out_firing_at=now)),
                )
            ],
            now=now,
        )
        return "recorded"

    outcomes = _race(stores, change, calls=calls)  # any 409/503 would raise here
    assert outcomes.count("patched") == calls // 2
    # A decision that acted, or found the count changed since it read it: never an error.
    assert set(outcomes) <= {"patched", "ok", "refused", "recorded"}
    assert AlertStore(a).pending() == []
    for name in services:
        scales = [e.data for e in a.list_events(service=name) if e.action == "scale"]
        for before, after in itertools.pairwise(scales):
            assert after["from"] == before["to"]
        assert b.get_service(name).replicas == scales[-1]["to"]
        state = AlertStore(b).policy_state(name)
        assert state.manual_scale_at is not None  # the owner's write was not lost
        assert state.last_scale_out_firing_at is not None  # nor the decisions'
