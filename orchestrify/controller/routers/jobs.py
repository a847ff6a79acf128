"""/v1/jobs: playbook runs through ansible-runner, their status and their event stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import Query
from fastapi.responses import StreamingResponse

from orchestrify.controller.border import api_router, errors
from orchestrify.controller.deps import Admin, State
from orchestrify.jobs.models import Job, JobRequest, JobStatus
from orchestrify.jobs.runner import JobRunner
from orchestrify.models import JSON_INT_MAX

router = api_router(prefix="/v1/jobs", tags=["jobs"], dependencies=[Admin])
POLL_S = 0.25  # how often a followed stream looks for new events; a job line is ~ms


@router.post("", response_model=Job, status_code=202, responses=errors(429))
def submit_job(body: JobRequest, state: State) -> Job:
    """Queue a playbook run. It starts once no running job holds any of its hosts."""
    return state.jobs.submit(
        playbook=body.playbook,
        limit=body.limit,
        extra_vars=body.extra_vars,
        reason=body.reason or "requested through the API",
    )


@router.get("", response_model=list[Job])
def list_jobs(
    state: State,
    status: JobStatus | None = Query(None, description="Only jobs in this status."),
    limit: int = Query(100, ge=1, le=10000, description="At most this many, newest first."),
) -> list[Job]:
    return state.jobs.list_jobs(status=status, limit=limit)


@router.get("/{job_id}", response_model=Job)
def get_job(job_id: str, state: State) -> Job:
    return state.jobs.get(job_id)


@router.post("/{job_id}/cancel", response_model=Job, status_code=202)
def cancel_job(job_id: str, state: State) -> Job:
    """Cancel a pending job at once, or stop a running one (it ends ``canceled``); any
    controller takes the request, the one running the job stops it within a poll."""
    return state.jobs.cancel(job_id)


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}}},
)
def job_events(
    job_id: str,
    state: State,
    after: int = Query(
        0, ge=0, le=JSON_INT_MAX, description="Only events with a larger counter (to resume)."
    ),
    follow: bool = Query(True, description="Keep streaming until the job finishes."),
) -> StreamingResponse:
    """The job's events as NDJSON, one JSON object a line (counter, event, host, task,
    stdout...), followed live until the job finishes. The events are in the store, so
    every controller streams them, whichever one ran the job (the job's ``controller``;
    ansible-runner's raw artifacts stay on that controller's disk). A ``lost`` job's
    stream ends with the last event its controller stored."""
    state.jobs.get(job_id)  # 404 before the stream starts
    return StreamingResponse(
        _stream(state.jobs, job_id, after=after, follow=follow),
        media_type="application/x-ndjson",
    )


async def _stream(jobs: JobRunner, job_id: str, *, after: int, follow: bool) -> AsyncIterator[str]:
    last = after
    while True:
        # Read the status before the events: every event is stored before the job is
        # marked finished, so a finished status means this read sees the last event.
        job = await asyncio.to_thread(jobs.get, job_id)
        events = await asyncio.to_thread(jobs.events, job_id, after=last)
        for ev in events:
            last = ev.counter
            yield ev.model_dump_json() + "\n"
        if events:
            continue
        if job.status.finished or not follow:
            return
        await asyncio.sleep(POLL_S)
