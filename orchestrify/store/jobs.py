"""Durable jobs and their ansible-runner events, in the controller's store.

Job events live in a table rather than only in ansible-runner's artifact directory:
the stream then survives a restart with the same store (and a PostgreSQL store shared
by several controllers, where no filesystem is shared: any controller streams the
events of a job another one ran), ``?after=N`` is one indexed query, and the artifact
directory stays free to be rotated or deleted.

The queue is the table: a job is ``pending`` until the leader's runner starts it with a
compare-and-set (``mark_running``) that records which controller runs it, so a job
submitted to any controller is run by the leader, and by one controller only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import func, select

from orchestrify.errors import Conflict, NotFound
from orchestrify.jobs.models import HostStats, Job, JobEvent, JobStatus
from orchestrify.store import Store, as_utc, utcnow
from orchestrify.store.engine import WriteTx, retry_on_race
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
        controller=row.controller,
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

    def pending(self, *, limit: int = 1000) -> list[Job]:
        """Jobs waiting to start, oldest first (the order they run in)."""
        with self.store.read() as s:
            q = (
                select(JobRow)
                .where(JobRow.status == JobStatus.PENDING)
                .order_by(JobRow.created_at, JobRow.id)
                .limit(limit)
            )
            return [_job(r) for r in s.scalars(q).all()]

    def count(self, status: JobStatus) -> int:
        """How many jobs are in ``status`` now, whichever controller took them."""
        with self.store.read() as s:
            n = s.scalar(select(func.count()).select_from(JobRow).where(JobRow.status == status))
            return int(n or 0)

    @retry_on_race
    def mark_running(self, job_id: str, *, controller: str | None = None) -> Job:
        """Start a pending job on ``controller``: compare-and-set from ``pending`` to
        ``running`` on its locked row, in one transaction, so a job is started once even
        if two runners (two controllers) reach for it (``Conflict``: it is not pending
        any more)."""
        with self.store.write() as tx:
            row = tx.get(JobRow, job_id)
            if row is None:
                raise NotFound(f"no job with id {job_id!r}")
            if row.status != JobStatus.PENDING:
                raise Conflict(f"job {job_id} is {row.status}, not pending: not started again")
            row.status = JobStatus.RUNNING
            row.controller = controller
            row.started_at = utcnow()
            tx.add_event(
                f"job {row.id} started: {row.playbook}"
                + (f" on {row.limit}" if row.limit else " on all hosts"),
                kind="job",
                action="job_start",
                outcome="ok",
                reason=row.reason,
                data={
                    "job": row.id,
                    "playbook": row.playbook,
                    "limit": row.limit,
                    "controller": controller,
                },
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
        controller: str | None = None,
    ) -> Job:
        """Record a job's outcome. With ``controller``, only while the job is still
        ``running`` on that controller (compare-and-set; ``Conflict`` otherwise): a
        controller that stopped leading records what its run did unless a new leader
        marked the job ``lost`` first, and never overwrites that."""
        with self.store.write() as tx:
            row = tx.get(JobRow, job_id)
            if row is None:
                raise NotFound(f"no job with id {job_id!r}")
            if controller is not None and (
                row.status != JobStatus.RUNNING or row.controller != controller
            ):
                raise Conflict(
                    f"job {job_id} is {row.status} (controller {row.controller}), no longer "
                    f"running on {controller}: its {status.value} outcome is not recorded"
                )
            self._finish_row(tx, row, status=status, rc=rc, error=error, stats=stats)
            return _job(row)

    @retry_on_race
    def cancel_pending(self, job_id: str) -> Job | None:
        """Cancel a job that has not started (compare-and-set from ``pending``, so a
        runner starting it at the same moment either wins or sees it canceled); None
        when it is not pending any more."""
        with self.store.write() as tx:
            row = tx.get(JobRow, job_id)
            if row is None:
                raise NotFound(f"no job with id {job_id!r}")
            if row.status != JobStatus.PENDING:
                return None
            self._finish_row(
                tx, row, status=JobStatus.CANCELED, rc=None, error="canceled before it started"
            )
            return _job(row)

    @retry_on_race
    def request_cancel(self, job_id: str) -> Job:
        """Ask the controller running a job to stop it (any controller may ask; the one
        running it finds the request on its next poll, see ``cancel_requests``)."""
        with self.store.write() as tx:
            row = tx.get(JobRow, job_id)
            if row is None:
                raise NotFound(f"no job with id {job_id!r}")
            if row.status == JobStatus.RUNNING and row.cancel_requested_at is None:
                row.cancel_requested_at = utcnow()
            return _job(row)

    def cancel_requests(self, *, controller: str) -> set[str]:
        """Ids of the jobs running on ``controller`` that someone asked to cancel."""
        with self.store.read() as s:
            q = select(JobRow.id).where(
                JobRow.status == JobStatus.RUNNING,
                JobRow.controller == controller,
                JobRow.cancel_requested_at.is_not(None),
            )
            return set(s.scalars(q).all())

    def running_hosts(self) -> dict[str, list[str] | None]:
        """Every running job (any controller) and the hosts it holds."""
        with self.store.read() as s:
            q = select(JobRow.id, JobRow.hosts).where(JobRow.status == JobStatus.RUNNING)
            return {job_id: hosts for job_id, hosts in s.execute(q).all()}

    @retry_on_race
    def take_over(
        self, *, controller: str, keep: Iterable[str] = (), interrupted: str
    ) -> tuple[list[Job], list[Job]]:
        """When ``controller`` starts leading: settle the jobs the store still shows
        running, in one transaction with their rows locked. A job another controller
        started is marked ``lost`` (that controller stopped leading, so nothing will
        record its outcome; it is not re-run). A job of ``controller`` itself (a previous
        run of it, which stopped) or of a build before controllers were recorded fails
        with ``interrupted``, as a restart always did. Jobs in ``keep`` (still running in
        this process) are left alone. Returns (lost, interrupted)."""
        keep = set(keep)
        lost: list[Job] = []
        failed: list[Job] = []
        with self.store.write() as tx:
            q = select(JobRow).where(JobRow.status == JobStatus.RUNNING).order_by(JobRow.id)
            if tx.locks_rows:
                q = q.with_for_update().execution_options(populate_existing=True)
            for row in tx.session.scalars(q).all():
                if row.id in keep:
                    continue
                if row.controller is None or row.controller == controller:
                    self._finish_row(tx, row, status=JobStatus.FAILED, rc=None, error=interrupted)
                    failed.append(_job(row))
                    continue
                error = (
                    f"controller {row.controller} ran this job and stopped leading "
                    f"before it finished (it died or lost the database); {controller} "
                    "leads now. What the playbook did is unknown and the job was not "
                    "re-run: check the hosts, then run it again if needed"
                )
                self._finish_row(tx, row, status=JobStatus.LOST, rc=None, error=error)
                lost.append(_job(row))
        return lost, failed

    @staticmethod
    def _finish_row(
        tx: WriteTx,
        row: JobRow,
        *,
        status: JobStatus,
        rc: int | None,
        error: str | None,
        stats: dict[str, HostStats] | None = None,
    ) -> None:
        row.status = status
        row.rc = rc
        row.error = error
        if stats is not None:
            row.stats = {host: s.model_dump() for host, s in stats.items()}
        row.finished_at = utcnow()
        outcome = {JobStatus.SUCCESSFUL: "ok", JobStatus.CANCELED: "canceled"}.get(
            status, "failed"
        )  # lost: failed (its outcome is unknown)
        tx.add_event(
            f"job {row.id} {status.value}: {row.playbook}"
            + (f" (rc {rc})" if rc is not None else "")
            + (f": {error}" if error else ""),
            kind="job",
            action="job_finish",
            outcome=outcome,
            reason=error or row.reason,
            data={
                "job": row.id,
                "playbook": row.playbook,
                "status": status.value,
                "rc": rc,
                "controller": row.controller,
            },
        )

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

    def output_tail(self, job_id: str, *, limit: int) -> tuple[list[JobEvent], bool]:
        """The job's last ``limit`` events that printed something (``stdout``), oldest
        first, and whether earlier ones were left out: what a page shows of a long run's
        output (the whole of it is ``events``)."""
        with self.store.read() as s:
            q = (
                select(JobEventRow)
                .where(JobEventRow.job_id == job_id, JobEventRow.stdout != "")
                .order_by(JobEventRow.counter.desc())
                .limit(limit + 1)
            )
            rows = s.scalars(q).all()
            return [_job_event(r) for r in reversed(rows[:limit])], len(rows) > limit
