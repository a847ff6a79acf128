"""History retention against a real SQLite store: old history goes, everything live stays."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from orchestrify.alerting.payload import AlertBatch
from orchestrify.alerting.policy import PolicyState
from orchestrify.jobs.models import JobEvent, JobStatus
from orchestrify.models import EdgeRegistration, NodeRegistration, ServiceSpec
from orchestrify.store import Store, utcnow
from orchestrify.store.alert_tables import AlertInstanceRow, AlertReceiptRow, ScalingStateRow
from orchestrify.store.alerts import AlertStore
from orchestrify.store.jobs import JobStore
from orchestrify.store.retention import PruneResult, prune_history
from orchestrify.store.tables import EdgeRow, EventRow, JobEventRow, JobRow, NodeRow, ServiceRow
from tests.alerting.payloads import am_alert, am_payload

NOW = utcnow()
CUTOFF = NOW - timedelta(days=14)
OLD = NOW - timedelta(days=20)
RECENT = NOW - timedelta(days=1)


@pytest.fixture
def store(tmp_path: Path, store_url: str) -> Any:
    s = Store.open(store_url, data_dir=tmp_path)
    yield s
    s.close()


def backdate(store: Store, table: Any, key: Any, value: Any, **columns: datetime) -> None:
    with store.engine.begin() as conn:
        conn.execute(update(table).where(key == value).values(**columns))


def event_ids(store: Store) -> set[int]:
    with store.read() as s:
        return set(s.scalars(select(EventRow.id)).all())


# --- events ------------------------------------------------------------------------
def test_events_older_than_the_cutoff_go_and_newer_ones_stay(store: Store) -> None:
    old = [store.record_event(f"old {i}", kind="config") for i in range(5)]
    edge = store.record_event("just inside", kind="config")
    new = store.record_event("today", kind="config")
    for ev in old:
        backdate(store, EventRow, EventRow.id, ev.id, time=OLD)
    backdate(store, EventRow, EventRow.id, edge.id, time=CUTOFF + timedelta(seconds=1))

    result = prune_history(store, before=CUTOFF, batch_size=2)  # three batches

    assert result.events == 5
    assert event_ids(store) == {edge.id, new.id}
    assert prune_history(store, before=CUTOFF) == PruneResult()  # idempotent


def test_a_stop_request_ends_the_prune_before_its_next_batch(store: Store) -> None:
    for i in range(4):
        ev = store.record_event(f"old {i}", kind="config")
        backdate(store, EventRow, EventRow.id, ev.id, time=OLD)
    stop = threading.Event()
    stop.set()
    assert prune_history(store, before=CUTOFF, stop=stop) == PruneResult()
    assert len(event_ids(store)) == 4


# --- jobs --------------------------------------------------------------------------
def make_job(
    jobs: JobStore, job_id: str, status: JobStatus, *, events: int = 2, at: datetime | None = None
) -> None:
    jobs.create(job_id=job_id, playbook="site.yml", limit=None, extra_vars={}, reason=None)
    if status != JobStatus.PENDING:
        jobs.mark_running(job_id)
    jobs.add_events(
        job_id, [JobEvent(counter=n, event="runner_on_ok") for n in range(1, events + 1)]
    )
    if status.finished:
        jobs.finish(job_id, status=status, rc=0, error=None)
    if at is not None:
        backdate(
            jobs.store,
            JobRow,
            JobRow.id,
            job_id,
            created_at=at,
            started_at=at,
            **({"finished_at": at} if status.finished else {}),
        )


def job_rows(store: Store) -> dict[str, int]:
    """Job id -> how many events it still has."""
    with store.read() as s:
        ids = s.scalars(select(JobRow.id)).all()
        events = s.scalars(select(JobEventRow.job_id)).all()
        return {i: sum(1 for e in events if e == i) for i in ids}


def test_finished_jobs_older_than_the_cutoff_go_with_their_events(store: Store) -> None:
    jobs = JobStore(store)
    make_job(jobs, "old-ok", JobStatus.SUCCESSFUL, at=OLD)
    make_job(jobs, "old-failed", JobStatus.FAILED, at=OLD)
    make_job(jobs, "old-canceled", JobStatus.CANCELED, events=0, at=OLD)
    make_job(jobs, "recent-ok", JobStatus.SUCCESSFUL, at=RECENT)
    make_job(jobs, "old-running", JobStatus.RUNNING, at=OLD)  # a long job, or a lost one
    make_job(jobs, "old-pending", JobStatus.PENDING, at=OLD)

    result = prune_history(store, before=CUTOFF)

    assert sorted(result.jobs) == ["old-canceled", "old-failed", "old-ok"]
    assert result.job_events == 4
    assert job_rows(store) == {"recent-ok": 2, "old-running": 2, "old-pending": 2}
    assert jobs.get("old-running").status == JobStatus.RUNNING


def test_a_job_with_more_events_than_a_batch_is_pruned_over_several(store: Store) -> None:
    jobs = JobStore(store)
    make_job(jobs, "big", JobStatus.SUCCESSFUL, events=11, at=OLD)
    make_job(jobs, "small", JobStatus.FAILED, events=1, at=OLD - timedelta(days=1))
    make_job(jobs, "keep", JobStatus.SUCCESSFUL, events=3, at=RECENT)

    heard: list[str] = []
    result = prune_history(store, before=CUTOFF, batch_size=4, on_jobs_deleted=heard.extend)

    assert sorted(result.jobs) == sorted(heard) == ["big", "small"]
    assert result.job_events == 12
    assert job_rows(store) == {"keep": 3}


# --- alerts ------------------------------------------------------------------------
def notify(
    alerts: AlertStore, status: str, *, fingerprint: str, at: datetime, process: bool = True
) -> None:
    """Alertmanager sends one notice at ``at``; the controller decides on it then."""
    body = am_payload(
        am_alert(
            "ServiceRequestRateHigh",
            status=status,
            fingerprint=fingerprint,
            starts_at="2026-01-01T00:00:00Z",
            service="web",
        )
    )
    alerts.store_batch(AlertBatch.model_validate(body), now=at)
    if process:
        for receipt in alerts.pending():
            alerts.commit(now=at, receipt=receipt)


def episodes(store: Store) -> dict[str, tuple[str, int]]:
    """Fingerprint -> (status, receipts left)."""
    with store.read() as s:
        rows = s.scalars(select(AlertInstanceRow)).all()
        receipts = s.scalars(select(AlertReceiptRow.fingerprint)).all()
        return {r.fingerprint: (r.status, receipts.count(r.fingerprint)) for r in rows}


def test_resolved_episodes_older_than_the_cutoff_go_with_their_receipts(store: Store) -> None:
    alerts = AlertStore(store)
    notify(alerts, "firing", fingerprint="old", at=OLD - timedelta(hours=1))
    notify(alerts, "resolved", fingerprint="old", at=OLD)
    notify(alerts, "resolved", fingerprint="only-resolved", at=OLD)  # its firing was lost
    notify(alerts, "firing", fingerprint="still-firing", at=OLD - timedelta(days=30))
    notify(alerts, "firing", fingerprint="recent", at=RECENT - timedelta(hours=1))
    notify(alerts, "resolved", fingerprint="recent", at=RECENT)
    # Resolved long ago, but a late firing notice came in since: not quiet yet.
    notify(alerts, "resolved", fingerprint="late", at=OLD)
    notify(alerts, "firing", fingerprint="late", at=RECENT)
    # Resolved long ago, with a notice stored but not decided on yet: work, not history.
    notify(alerts, "resolved", fingerprint="pending", at=OLD)
    notify(alerts, "firing", fingerprint="pending", at=OLD, process=False)
    alerts.commit(now=OLD, state=("web", PolicyState(baseline=2, last_action_at=OLD)))

    result = prune_history(store, before=CUTOFF, batch_size=1)

    assert (result.alert_instances, result.alert_receipts) == (2, 3)
    assert episodes(store) == {
        "still-firing": ("firing", 1),
        "recent": ("resolved", 2),
        "late": ("resolved", 2),
        "pending": ("resolved", 2),
    }
    assert [a.fingerprint for a in alerts.firing()] == ["still-firing"]
    assert alerts.policy_state("web").baseline == 2


def test_a_notice_of_a_pruned_episode_is_stored_again_as_a_resolved_episode(
    store: Store,
) -> None:
    """Alertmanager re-sending a resolved notice after its episode was forgotten: it is
    new again (its key is gone), and it only records the episode as resolved anew."""
    alerts = AlertStore(store)
    notify(alerts, "firing", fingerprint="a", at=OLD - timedelta(hours=1))
    notify(alerts, "resolved", fingerprint="a", at=OLD)
    assert prune_history(store, before=CUTOFF).alert_instances == 1

    notify(alerts, "resolved", fingerprint="a", at=NOW)

    assert episodes(store) == {"a": ("resolved", 1)}
    assert alerts.firing() == []
    assert prune_history(store, before=CUTOFF) == PruneResult()  # recent now: kept


# --- what is never history -----------------------------------------------------------
def test_services_nodes_replicas_edges_and_policy_state_are_never_pruned(store: Store) -> None:
    store.create_service(ServiceSpec(name="web", image="nginx:1.27", port=80, replicas=1))
    node, _ = store.register_node(NodeRegistration(name="n1", address="127.0.0.1"))
    store.create_replicas("web", [node.id], reason="test")
    store.register_edge(EdgeRegistration(name="edge1"))
    AlertStore(store).commit(now=OLD, state=("web", PolicyState(last_action_at=OLD)))
    long_ago = NOW - timedelta(days=400)
    backdate(store, ServiceRow, ServiceRow.name, "web", created_at=long_ago, updated_at=long_ago)
    backdate(store, NodeRow, NodeRow.id, node.id, created_at=long_ago, last_heartbeat=long_ago)
    backdate(store, EdgeRow, EdgeRow.name, "edge1", created_at=long_ago, last_seen=long_ago)

    result = prune_history(store, before=NOW + timedelta(days=1))  # everything is "old"

    assert result.events > 0  # the trail of creating them went
    assert [s.name for s in store.list_services()] == ["web"]
    _, nodes, replicas = store.snapshot()
    assert [n.name for n in nodes] == ["n1"]
    assert [r.service for r in replicas] == ["web"]
    assert [e.name for e in store.list_edges()] == ["edge1"]
    with store.read() as s:
        assert s.scalars(select(ScalingStateRow.service)).all() == ["web"]
