"""Durable jobs and their ansible-runner events, in the controller's store.

Job events live in a table rather than only in ansible-runner's artifact directory:
the stream then survives a restart with the same store (and a future PostgreSQL store
shared by two controllers, where no filesystem is shared), ``?after=N`` is one indexed
query, and the artifact directory stays free to be rotated or deleted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import select

from orchestrify.errors import Conflict, NotFound
from orchestrify.jobs.models import HostStats, Job, JobEvent, JobStatus
from orchestrify.store import Store, as_utc, utcnow
from orchestrify.store.engine import retry_on_race
from orchestrify.store.tables import JobEventRow, JobRow

__all__ = ["JobStore"]


def _job(row: JobRow) -> Job:
    return Job(
        id=row.id,
        playbook=row.playbook,
        limit=row.limit,
        extra_vars=row.extra_vars or {},
        reason=row.reason,
        status=JobStatus(row.status),
        rc=row.rc,
        error=row.error,
        hosts=row.hosts,
        stats={host: HostStats(**counts) for host, counts in (row.stats or {}).items()},
        created_at=as_utc(row.created_at) or utcnow(),
        started_at=as_utc(row.started_at),
        finished_at=as_utc(row.finished_at),
    )


def _job_event(row: JobEventRow) -> JobEvent:
    return JobEvent(
        counter=row.counter,
        event=row.event,
        host=row.host,
        task=row.task,
        play=row.play,
        changed=row.changed,
        stdout=row.stdout,
        created=as_utc(row.created),
    )


class JobStore:
    """Job rows on top of :class:`Store` (same engine, same write lock, same event trail)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @retry_on_race
    def create(
        self,
        *,
        job_id: str,
        playbook: str,
        limit: str | None,
        extra_vars: dict[str, Any],
        reason: str | None,
    ) -> Job:
        with self.store.write() as tx:
            row = JobRow(
                id=job_id,
                playbook=playbook,
                limit=limit,
                extra_vars=extra_vars,
                reason=reason,
                status=JobStatus.PENDING,
                stats={},
                created_at=utcnow(),
            )
            tx.session.add(row)
            tx.session.flush()
            return _job(row)

    def get(self, job_id: str) -> Job:
        with self.store.read() as s:
            row = s.get(JobRow, job_id)
            if row is None:
                raise NotFound(f"no job with id {job_id!r}")
            return _job(row)

    def list_jobs(self, *, status: JobStatus | None = None, limit: int = 100) -> list[Job]:
        with self.store.read() as s:
            q = select(JobRow)
            if status is not None:
                q = q.where(JobRow.status == status)
            q = q.order_by(JobRow.created_at.desc(), JobRow.id.desc()).limit(limit)
            return [_job(r) for r in s.scalars(q).all()]

    @retry_on_race
    def set_hosts(self, job_id: str, hosts: Iterable[str]) -> None:
        with self.store.write() as tx:
            row = tx.get(JobRow, job_id)
            if row is not None:
                row.hosts = sorted(hosts)

    @retry_on_race
    def mark_running(self, job_id: str) -> Job:
        """Start a pending job: compare-and-set from ``pending`` to ``running`` on its
        locked row, so a job is started once even if two runners reach for it
        (``Conflict``: it is not pending any more)."""
        with self.store.write() as tx:
            row = tx.get(JobRow, job_id)
            if row is None:
                raise NotFound(f"no job with id {job_id!r}")
            if row.status != JobStatus.PENDING:
                raise Conflict(f"job {job_id} is {row.status}, not pending: not started again")
            row.status = JobStatus.RUNNING
            row.started_at = utcnow()
            tx.add_event(
                f"job {row.id} started: {row.playbook}"
                + (f" on {row.limit}" if row.limit else " on all hosts"),
                kind="job",
                action="job_start",
                outcome="ok",
                reason=row.reason,
                data={"job": row.id, "playbook": row.playbook, "limit": row.limit},
            )
            return _job(row)

    @retry_on_race
    def finish(
        self,
        job_id: str,
        *,
        status: JobStatus,
        rc: int | None,
        error: str | None,
        stats: dict[str, HostStats] | None = None,
    ) -> Job:
        with self.store.write() as tx:
            row = self._row(tx.session, job_id)
            row.status = status
            row.rc = rc
            row.error = error
            if stats is not None:
                row.stats = {host: s.model_dump() for host, s in stats.items()}
            row.finished_at = utcnow()
            outcome = {JobStatus.SUCCESSFUL: "ok", JobStatus.CANCELED: "canceled"}.get(
                status, "failed"
            )
            tx.add_event(
                f"job {row.id} {status.value}: {row.playbook}"
                + (f" (rc {rc})" if rc is not None else "")
                + (f": {error}" if error else ""),
                kind="job",
                action="job_finish",
                outcome=outcome,
                reason=error or row.reason,
                data={"job": row.id, "playbook": row.playbook, "status": status.value, "rc": rc},
            )
            return _job(row)

    def interrupted(self, *, reason: str) -> tuple[list[Job], list[Job]]:
        """At start-up: fail jobs left running; return (failed now, still pending)."""
        failed = [
            self.finish(j.id, status=JobStatus.FAILED, rc=None, error=reason)
            for j in self.list_jobs(status=JobStatus.RUNNING, limit=100_000)
        ]
        pending = sorted(
            self.list_jobs(status=JobStatus.PENDING, limit=100_000), key=lambda j: j.created_at
        )
        return failed, pending

    # --- events --------------------------------------------------------------------
    @retry_on_race
    def add_events(self, job_id: str, events: Sequence[JobEvent]) -> None:
        if not events:
            return
        with self.store.write() as tx:
            for ev in events:
                tx.session.add(
                    JobEventRow(
                        job_id=job_id,
                        counter=ev.counter,
                        event=ev.event,
                        host=ev.host,
                        task=ev.task,
                        play=ev.play,
                        changed=ev.changed,
                        stdout=ev.stdout,
                        created=ev.created,
                    )
                )

    def events(self, job_id: str, *, after: int = 0, limit: int = 1000) -> list[JobEvent]:
        with self.store.read() as s:
            q = (
                select(JobEventRow)
                .where(JobEventRow.job_id == job_id, JobEventRow.counter > after)
                .order_by(JobEventRow.counter)
                .limit(limit)
            )
            return [_job_event(r) for r in s.scalars(q).all()]

    @staticmethod
    def _row(session: Any, job_id: str) -> JobRow:
        row: JobRow | None = session.get(JobRow, job_id)
        if row is None:
            raise NotFound(f"no job with id {job_id!r}")
        return row
