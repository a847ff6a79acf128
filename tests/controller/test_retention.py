"""History retention in the controller: the pruner (store rows, job dirs, metric, log
line) and the app that runs it at start."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from orchestrify.controller.app import create_app
from orchestrify.controller.deps import ControllerState
from orchestrify.controller.metrics import ControllerMetrics
from orchestrify.controller.retention import HistoryPruner
from orchestrify.controller.settings import ControllerSettings
from orchestrify.jobs.models import JobEvent, JobStatus
from orchestrify.store import Store, utcnow
from orchestrify.store.jobs import JobStore
from orchestrify.store.tables import EventRow, JobRow
from tests.api.conftest import wait_for

OLD = utcnow() - timedelta(days=30)
RECENT = utcnow() - timedelta(days=2)


def old_events(store: Store, count: int, *, at: datetime = OLD) -> list[int]:
    ids = [store.record_event(f"long ago {i}", kind="config").id for i in range(count)]
    with store.engine.begin() as conn:
        conn.execute(update(EventRow).where(EventRow.id.in_(ids)).values(time=at))
    return ids


def finished_job(store: Store, jobs_dir: Path, job_id: str, *, at: datetime) -> Path:
    """A job that ran and finished at ``at``, with its ansible-runner dir on disk."""
    jobs = JobStore(store)
    jobs.create(job_id=job_id, playbook="site.yml", limit=None, extra_vars={}, reason=None)
    jobs.mark_running(job_id)
    jobs.add_events(job_id, [JobEvent(counter=1, event="runner_on_ok")])
    jobs.finish(job_id, status=JobStatus.SUCCESSFUL, rc=0, error=None)
    with store.engine.begin() as conn:
        conn.execute(update(JobRow).where(JobRow.id == job_id).values(finished_at=at))
    private = jobs_dir / job_id
    (private / "artifacts" / job_id).mkdir(parents=True)
    (private / "artifacts" / job_id / "stdout").write_text("PLAY RECAP\n")
    return private


def event_ids(store: Store) -> set[int]:
    with store.read() as s:
        return set(s.scalars(select(EventRow.id)).all())


# --- the pruner ----------------------------------------------------------------------
def test_pruner_removes_the_dirs_of_pruned_jobs_only_and_counts_and_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store.in_data_dir(tmp_path / "data")
    jobs_dir = tmp_path / "jobs"
    old_dir = finished_job(store, jobs_dir, "old1", at=OLD)
    recent_dir = finished_job(store, jobs_dir, "recent1", at=RECENT)
    unrelated = jobs_dir / "not-a-job"  # never a job the store pruned: left alone
    unrelated.mkdir()
    old_events(store, 3)
    registry = CollectorRegistry()
    pruner = HistoryPruner(
        store,
        retention_days=7,
        jobs_dir=jobs_dir,
        metrics=ControllerMetrics(store, registry),
    )

    with caplog.at_level(logging.INFO, logger="orchestrify.controller.retention"):
        result = pruner.run_once()
        again = pruner.run_once()

    assert result.jobs == ("old1",)
    assert not old_dir.exists()
    assert recent_dir.is_dir() and unrelated.is_dir()
    assert again.total == 0
    (line,) = [vars(r) for r in caplog.records if r.getMessage() == "history pruned"]
    # The backdated events only: the jobs' start and finish events are recent.
    assert (line["events"], line["jobs"], line["job_events"], line["job_dirs"]) == (3, 1, 1, 1)

    def sample(kind: str) -> float | None:
        return registry.get_sample_value("orchestrify_history_pruned_total", {"kind": kind})

    assert (sample("events"), sample("jobs"), sample("job_events")) == (3.0, 1.0, 1.0)
    assert sample("alert_instances") == 0.0  # exported before anything was pruned
    store.close()


def test_a_prune_that_fails_later_still_removes_the_dirs_of_the_jobs_it_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store.in_data_dir(tmp_path / "data")
    old_dir = finished_job(store, tmp_path / "jobs", "old1", at=OLD)

    def disk_full(self: object) -> tuple[int, int]:
        raise OperationalError("DELETE", {}, Exception("database or disk is full"))

    monkeypatch.setattr("orchestrify.store.retention._Pruner.alert_episodes", disk_full)
    pruner = HistoryPruner(store, retention_days=7, jobs_dir=tmp_path / "jobs")

    with pytest.raises(OperationalError):
        pruner.run_once()
    assert not old_dir.exists()
    assert JobStore(store).list_jobs() == []
    store.close()


def test_pruner_with_retention_0_keeps_everything(tmp_path: Path) -> None:
    store = Store.in_data_dir(tmp_path / "data")
    old_dir = finished_job(store, tmp_path / "jobs", "old1", at=OLD - timedelta(days=3650))
    ids = old_events(store, 2, at=OLD - timedelta(days=3650))
    pruner = HistoryPruner(store, retention_days=0, jobs_dir=tmp_path / "jobs")

    assert not pruner.enabled
    assert pruner.run_once().total == 0
    assert set(ids) <= event_ids(store) and old_dir.is_dir()
    assert [j.id for j in JobStore(store).list_jobs()] == ["old1"]
    store.close()


# --- the app -------------------------------------------------------------------------
def settings(tmp_path: Path, **kw: object) -> ControllerSettings:
    return ControllerSettings(
        data_dir=tmp_path / "data", token="admin-token", join_token="join-token", **kw
    )


def test_the_controller_prunes_old_history_at_start(tmp_path: Path) -> None:
    cfg = settings(tmp_path, history_retention_days=14)
    store = Store.in_data_dir(cfg.data_dir)
    old = set(old_events(store, 5))
    kept = store.record_event("yesterday", kind="config").id
    old_dir = finished_job(store, cfg.resolved_jobs_dir, "old1", at=OLD)
    recent_dir = finished_job(store, cfg.resolved_jobs_dir, "recent1", at=RECENT)
    store.close()

    app = create_app(cfg, registry=CollectorRegistry(), run_reconciler=False)
    with TestClient(app) as client:
        state: ControllerState = client.app.state.controller  # type: ignore[attr-defined]
        wait_for(lambda: not old & event_ids(state.store), what="old events pruned at start")
        wait_for(lambda: not old_dir.exists(), what="the old job's dir removed")
        assert kept in event_ids(state.store)
        assert [j.id for j in state.jobs.list_jobs()] == ["recent1"]
        assert recent_dir.is_dir()
        metrics = client.get("/metrics").text
        assert 'orchestrify_history_pruned_total{kind="jobs"} 1.0' in metrics


def test_the_controller_keeps_everything_with_retention_0(tmp_path: Path) -> None:
    cfg = settings(tmp_path, history_retention_days=0)
    store = Store.in_data_dir(cfg.data_dir)
    old = set(old_events(store, 3, at=OLD - timedelta(days=3650)))
    store.close()

    app = create_app(cfg, registry=CollectorRegistry(), run_reconciler=False)
    with TestClient(app) as client:
        state: ControllerState = client.app.state.controller  # type: ignore[attr-defined]
        assert state.history.retention_days == 0
        assert state.history.run_once().total == 0  # what the start and every hour do
        assert old <= event_ids(state.store)


def test_history_retention_days_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORCHESTRIFY_HISTORY_RETENTION_DAYS", raising=False)
    assert ControllerSettings().history_retention_days == 14
    with pytest.raises(ValueError, match="history_retention_days"):
        ControllerSettings(history_retention_days=-1)
    monkeypatch.setenv("ORCHESTRIFY_HISTORY_RETENTION_DAYS", "3")
    assert ControllerSettings().history_retention_days == 3
