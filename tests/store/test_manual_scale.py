"""A manual scale in the store: what the scaling policy learns from it (the time, the
count, an open episode's new baseline), that a decision taken before it is not applied,
and that a store from before these columns gains them."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import inspect

from orchestrify.alerting.policy import Decision, PolicyState
from orchestrify.models import ServicePatch, ServiceSpec
from orchestrify.store import Store, utcnow
from orchestrify.store.alerts import AlertStore


@pytest.fixture
def store(tmp_path: Path, store_url: str) -> Iterator[Store]:
    s = Store.open(store_url, data_dir=tmp_path)
    s.create_service(ServiceSpec(name="web", image="demo:1", replicas=2, max_replicas=8))
    yield s
    s.close()


def scale_out(state: PolicyState, *, frm: int, to: int) -> Decision:
    return Decision(
        action="scale_out",
        outcome="ok",
        reason=f"scale web from {frm} to {to}: test",
        service="web",
        rule="lat",
        replicas_from=frm,
        replicas_to=to,
        new_state=replace(state, last_action_at=utcnow(), baseline=state.baseline or frm),
    )


def test_a_patch_of_replicas_is_a_manual_scale_and_other_fields_are_not(store: Store) -> None:
    alerts = AlertStore(store)
    store.update_service("web", ServicePatch(drain_s=5))
    assert alerts.policy_state("web") == PolicyState()
    before = utcnow()
    store.scale_service("web", 3, reason="test")
    state = alerts.policy_state("web")
    assert state.manual_replicas == 3 and state.manual_scale_at is not None
    assert state.manual_scale_at >= before
    assert state.baseline is None  # no episode open: nothing to move
    # The same count again confirms it: a later manual scale, same count.
    store.scale_service("web", 3, reason="test")
    again = alerts.policy_state("web").manual_scale_at
    assert again is not None and again > state.manual_scale_at


def test_a_manual_scale_moves_an_open_episodes_baseline(store: Store) -> None:
    alerts = AlertStore(store)
    got = alerts.commit(now=utcnow(), decision=scale_out(PolicyState(), frm=2, to=3))
    assert got and got.outcome == "ok"
    assert alerts.policy_state("web").baseline == 2
    store.scale_service("web", 5, reason="requested through the API")
    state = alerts.policy_state("web")
    assert (state.baseline, state.manual_replicas) == (5, 5)
    (moved,) = [e for e in store.list_events(service="web") if e.action == "baseline"]
    assert moved.message.startswith("autoscaling baseline of web moved from 2 to 5")


def test_a_decision_taken_before_a_manual_scale_is_not_applied(store: Store) -> None:
    alerts = AlertStore(store)
    read_before = alerts.policy_state("web")
    store.scale_service("web", 2, reason="test")  # same count: replicas_from still matches
    got = alerts.commit(now=utcnow(), decision=scale_out(read_before, frm=2, to=3))
    assert got and got.outcome == "refused" and got.refusal == "changed"
    assert "scaled by hand while deciding" in got.reason
    assert store.get_service("web").replicas == 2
    # A state written from a read made before the manual scale keeps the owner's baseline.
    alerts.commit(now=utcnow(), decision=scale_out(alerts.policy_state("web"), frm=2, to=3))
    stale = alerts.policy_state("web")
    store.scale_service("web", 6, reason="test")
    alerts.commit(now=utcnow(), state=("web", replace(stale, baseline=None)))
    assert alerts.policy_state("web").baseline == 6


# scaling_states as the build before manual scales made it (SQLAlchemy's DDL).
OLD_SCALING_STATES = """CREATE TABLE scaling_states (
    service VARCHAR(63) NOT NULL, last_action_at DATETIME, last_scale_out_firing_at DATETIME,
    baseline INTEGER, PRIMARY KEY (service))"""


def test_a_store_from_before_manual_scales_gains_the_columns(tmp_path: Path) -> None:
    Store.in_data_dir(tmp_path).close()
    db = sqlite3.connect(tmp_path / "orchestrify.db")
    with db:
        db.execute("DROP TABLE alembic_version")  # a store from before migrations
        db.execute("DROP TABLE scaling_states")
        db.execute(OLD_SCALING_STATES)
        db.execute("INSERT INTO scaling_states VALUES ('web', NULL, NULL, 2)")
    db.close()
    store = Store.in_data_dir(tmp_path)
    try:
        columns = {c["name"] for c in inspect(store.engine).get_columns("scaling_states")}
        assert {"manual_scale_at", "manual_replicas"} <= columns
        alerts = AlertStore(store)
        assert alerts.policy_state("web") == PolicyState(baseline=2)
        store.create_service(ServiceSpec(name="web", image="demo:1", replicas=3, max_replicas=8))
        store.scale_service("web", 4, reason="test")
        assert alerts.policy_state("web").baseline == 4
    finally:
        store.close()
