"""The jobs pages' view models: each job's figures in words (a colour only repeats what
a word says), its per-host recap, and its output as ansible-playbook printed it."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from orchestrify.controller.ui.services import as_utc, time_text
from orchestrify.jobs.models import Job, JobEvent, JobStatus

__all__ = [
    "STATUS_TONES",
    "JobDetail",
    "JobRow",
    "OutputLine",
    "RecapRow",
    "job_detail",
    "job_row",
    "output_lines",
]

# A status as its tone (the badges the other pages use): the word is always beside it.
STATUS_TONES = {
    JobStatus.PENDING: "info",
    JobStatus.RUNNING: "pending",
    JobStatus.SUCCESSFUL: "ok",
    JobStatus.FAILED: "bad",
    JobStatus.CANCELED: "leaving",
    JobStatus.LOST: "bad",
}
EXTRA_VARS_MAX = 500  # characters of the extra vars shown; the API has the whole of them
# An output line's look, by the ansible-runner event that printed it (the words
# "ok:", "changed:", "fatal:" are in the line itself).
_EVENT_CLASSES = {
    "runner_on_failed": "out-bad",
    "runner_on_unreachable": "out-bad",
    "playbook_on_stats": "out-recap",
    "playbook_on_task_start": "out-task",
    "playbook_on_play_start": "out-task",
}


@dataclass(frozen=True)
class JobRow:
    """One job, as the list shows it and its page heads it."""

    id: str
    status: str
    tone: str
    finished: bool
    cancelable: bool
    playbook: str
    limit: str  # "all hosts" when the job has none
    reason: str | None
    created_at: str  # ISO 8601, for <time datetime>
    created: str
    started_at: str | None
    started: str
    finished_at: str | None
    finished_text: str
    rc: str
    controller: str


@dataclass(frozen=True)
class RecapRow:
    """One host's line of the PLAY RECAP."""

    host: str
    ok: int
    changed: int
    unreachable: int
    failed: int
    skipped: int
    rescued: int
    ignored: int
    tone: str  # "bad" when the host failed or was unreachable


@dataclass(frozen=True)
class JobDetail:
    """A job's page: its row, and what only the page shows."""

    row: JobRow
    error: str | None
    hosts: str
    extra_vars: str | None
    recap: tuple[RecapRow, ...]


@dataclass(frozen=True)
class OutputLine:
    """One event's output: ``text`` as ansible-playbook printed it (one or more lines,
    without the blank line it prints before a play, a task and the recap: the page's
    style puts that space back)."""

    counter: int
    text: str
    kind: str  # a class for its look, "" for a plain line


def _when(time: datetime | None) -> tuple[str | None, str]:
    if time is None:
        return None, "—"
    return as_utc(time).isoformat(), time_text(time, zone=False)


def job_row(job: Job) -> JobRow:
    created_at, created = _when(job.created_at)
    started_at, started = _when(job.started_at)
    finished_at, finished_text = _when(job.finished_at)
    return JobRow(
        id=job.id,
        status=job.status.value,
        tone=STATUS_TONES.get(job.status, "info"),
        finished=job.status.finished,
        cancelable=job.status in (JobStatus.PENDING, JobStatus.RUNNING),
        playbook=job.playbook,
        limit=job.limit or "all hosts",
        reason=job.reason,
        created_at=created_at or "",
        created=created,
        started_at=started_at,
        started=started,
        finished_at=finished_at,
        finished_text=finished_text,
        rc="—" if job.rc is None else str(job.rc),
        controller=job.controller or "—",
    )


def _hosts(job: Job) -> str:
    """The hosts the job holds (resolved from its limit before it starts), in words."""
    if job.hosts is None:
        return "not resolved yet (the job is waiting to start)"
    if job.hosts == ["*"]:
        if job.limit is None:
            return "every host of the inventory"
        return "every host (the limit could not be resolved against the inventory)"
    return ", ".join(job.hosts) if job.hosts else "none (the limit matches no host)"


def _extra_vars(job: Job) -> str | None:
    if not job.extra_vars:
        return None
    text = json.dumps(job.extra_vars, ensure_ascii=False, default=str, separators=(", ", ": "))
    return text if len(text) <= EXTRA_VARS_MAX else text[: EXTRA_VARS_MAX - 1] + "…"


def job_detail(job: Job) -> JobDetail:
    recap = tuple(
        RecapRow(
            host=host,
            ok=s.ok,
            changed=s.changed,
            unreachable=s.unreachable,
            failed=s.failures,
            skipped=s.skipped,
            rescued=s.rescued,
            ignored=s.ignored,
            tone="bad" if s.failures or s.unreachable else "ok",
        )
        for host, s in sorted(job.stats.items())
    )
    return JobDetail(
        row=job_row(job),
        error=job.error,
        hosts=_hosts(job),
        extra_vars=_extra_vars(job),
        recap=recap,
    )


def output_lines(events: Iterable[JobEvent]) -> list[OutputLine]:
    """The events that printed something, in order: one element each on the page."""
    return [
        OutputLine(counter=ev.counter, text=ev.stdout, kind=_EVENT_CLASSES.get(ev.event, ""))
        for ev in events
        if ev.stdout
    ]
