"""/ui/jobs: the playbook runs, newest first, a Run form, and a page per job with its
per-host recap and its output, growing while it runs; Cancel on a job not finished.

The list follows the ``events`` feed: a job's start and its end each write an event to
the trail (``job_start``, ``job_finish``), and its live poll re-renders at least every
``LIVE_WAIT_S`` anyway, so a job queued elsewhere (pending: no event) shows within that.
A job's output moves no feed: each ansible-runner event is a row of its own, written
from the job's thread, and bumping a feed kind per line would wake every other waiter
of that kind (the event followers, the leader's alert loop on PostgreSQL) for nothing.
So a job page's live poll reads the store every ``POLL_S`` while it waits, as the API's
``GET /v1/jobs/{id}/events`` stream does: one indexed read of a few rows, only while
someone has a running job's page open.

The actions do what the API does with the same calls and checks: ``state.jobs.submit``
for the Run form (``POST /v1/jobs``), ``state.jobs.cancel`` (``POST
/v1/jobs/{id}/cancel``); every store read and write in a worker thread.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import ValidationError

from orchestrify.controller.deps import ControllerState
from orchestrify.controller.ui import pages
from orchestrify.controller.ui.job_rows import JobRow, job_detail, job_row, output_lines
from orchestrify.controller.ui.pages import (
    LIVE_END_HEADER,
    LIVE_WAIT_MAX_S,
    PAGE_HEADERS,
    TEMPLATES,
    VERSION_HEADER,
    act,
    after_action,
    checked_form,
    decode_versions,
    done_notice,
    encode_versions,
    error_page,
    html_page,
    live_poll,
    redirect,
    signed_form,
    to_login,
    ui_access,
)
from orchestrify.errors import Busy, Conflict, InvalidSpec, NotFound, StoreUnavailable
from orchestrify.jobs.models import JOB_ID, Job, JobRequest, JobStatus
from orchestrify.jobs.validation import list_playbooks

__all__ = ["JOBS_SHOWN", "OUTPUT_SHOWN", "POLL_S", "REASON", "router"]

router = APIRouter(prefix="/ui")

JOBS_LIVE_KINDS = ("events",)  # a job's start and end each write an event
JOBS_SHOWN = 100  # the list: the newest jobs (GET /v1/jobs's default)
# A job page's output: the last events that printed something. A long run's whole
# output is ``orchestrify job logs ID``; the page (and the browser) holds this many.
OUTPUT_SHOWN = 2000
POLL_S = 0.4  # how often a job page's live poll reads the store while it waits
REASON = "requested from the status page"
_STATUSES = list(JobStatus)  # a status as a number, in the live poll's version


def _status_number(job: Job) -> int:
    return _STATUSES.index(job.status)


def _no_job(job_id: str) -> HTMLResponse:
    return error_page(
        404,
        f"There is no job with id {job_id[:40]!r} (it may have been deleted with the "
        "history older than --history-retention-days).",
        back=("/ui/jobs", "Back to the jobs"),
    )


async def _get_job(state: ControllerState, job_id: str) -> Job | None:
    try:
        return await asyncio.to_thread(state.jobs.get, job_id)
    except NotFound:
        return None


# --- the list ------------------------------------------------------------------------
async def _job_rows(state: ControllerState) -> list[JobRow]:
    jobs = await asyncio.to_thread(state.jobs.list_jobs, limit=JOBS_SHOWN)
    return [job_row(job) for job in jobs]


def _runnable(state: ControllerState) -> tuple[list[str], bool]:
    """The playbooks a job may name now (read at each page: files come and go), and
    whether the controller has an inventory to run them against."""
    settings = state.settings
    playbook_dir = settings.playbook_dir
    playbooks = (
        list_playbooks(playbook_dir) if playbook_dir is not None and playbook_dir.is_dir() else []
    )
    inventory = settings.inventory is not None and settings.inventory.exists()
    return playbooks, inventory


@router.get("/jobs")
async def jobs_page(request: Request) -> Response:
    access = ui_access(request)
    session = access.session(request)
    if session is None:
        return to_login(request.url.path)
    state = access.owner
    versions = state.feed.versions(JOBS_LIVE_KINDS)  # before the read
    try:
        rows = await _job_rows(state)
    except StoreUnavailable as exc:
        return error_page(503, f"The store cannot be read now ({exc}). Try again shortly.")
    playbooks, inventory = await asyncio.to_thread(_runnable, state)
    return html_page(
        "jobs.html",
        page="jobs",
        rows=rows,
        playbooks=playbooks,
        inventory=inventory,
        jobs_shown=JOBS_SHOWN,
        live_wait=f"{min(pages.LIVE_WAIT_S, LIVE_WAIT_MAX_S):g}",
        csrf=access.signer.csrf(session),
        version=encode_versions(versions),
    )


@router.get("/live/jobs")
async def jobs_live_poll(request: Request) -> Response:
    """The jobs table's body, live: at once when an event was written (a job started or
    ended), else after ``LIVE_WAIT_S``."""

    async def render(state: ControllerState, _versions: tuple[int, ...], _csrf: str) -> str:
        rows = await _job_rows(state)
        return TEMPLATES.get_template("jobs_body.html").render(rows=rows)

    return await live_poll(request, JOBS_LIVE_KINDS, render)


def _invalid_field(exc: ValidationError) -> str:
    """The first error of a request model, naming its field as the API's 422 does."""
    errors = exc.errors()
    if not errors:
        return str(exc)
    first = errors[0]
    field = ".".join(str(part) for part in first.get("loc", ())) or "form"
    return f"{field}: {first.get('msg', 'not valid')}."


@router.post("/jobs")
async def run_playbook(request: Request) -> Response:
    """What ``POST /v1/jobs`` does (the same model, the same ``submit``) with the form's
    playbook and limit, no extra vars, and the reason "requested from the status page";
    then on to the new job's page. A bad field is a 422 page naming it; a full queue a
    429, a controller without playbooks or inventory a 409."""
    access = ui_access(request)
    session = access.session(request)
    if session is None:
        return to_login("/ui/jobs")
    form = await signed_form(request, access, session, fields=frozenset({"playbook", "limit"}))
    if isinstance(form, HTMLResponse):
        return form
    back = ("/ui/jobs", "Back to the jobs")

    def refused(status: int, message: str, **kw: Any) -> HTMLResponse:
        return error_page(status, f"No job was queued. {message}", back=back, **kw)

    playbook = form.get("playbook", "")
    if not playbook:
        return refused(422, "playbook: choose the playbook to run.")
    # An empty limit is the form's way of giving none (every host), as the API's null.
    limit = form.get("limit", "").strip() or None
    try:
        request_body = JobRequest.model_validate(
            {"playbook": playbook, "limit": limit, "reason": REASON}
        )
    except ValidationError as exc:
        return refused(422, _invalid_field(exc))
    state = access.owner
    submit = functools.partial(
        state.jobs.submit,
        playbook=request_body.playbook,
        limit=request_body.limit,
        extra_vars=request_body.extra_vars,
        reason=request_body.reason,
    )
    try:
        job = await asyncio.to_thread(submit)
    except InvalidSpec as exc:  # names its field: "playbook: ...", "limit: ..."
        return refused(422, f"{exc}.")
    except Busy as exc:
        return refused(429, f"{exc}.", headers={"Retry-After": str(exc.retry_after_s)})
    except Conflict as exc:  # no playbook directory or inventory; shutting down
        return refused(409, f"{exc}.")
    except StoreUnavailable as exc:
        return refused(503, f"The store cannot write now ({exc}).")
    return redirect(f"/ui/jobs/{job.id}")


# --- one job -------------------------------------------------------------------------
async def _job_parts(state: ControllerState, job: Job) -> dict[str, Any]:
    """What a job's page shows (``job`` read before its output: a finished job's
    events are all stored before it was marked finished, so none is missed): its
    figures and recap, the last ``OUTPUT_SHOWN`` events' output, whether earlier output
    was cut, and the counter of the last event shown."""
    events, cut = await asyncio.to_thread(state.jobs.output_tail, job.id, limit=OUTPUT_SHOWN)
    return {
        "job": job_detail(job),
        "lines": output_lines(events),
        "cut": cut,
        "shown": OUTPUT_SHOWN,
        "last": events[-1].counter if events else 0,
    }


@router.get("/jobs/{job_id}")
async def job_page(request: Request, job_id: str) -> Response:
    access = ui_access(request)
    session = access.session(request)
    if session is None:
        return to_login(request.url.path)
    if JOB_ID.fullmatch(job_id) is None:
        return _no_job(job_id)  # no job has such an id: no store read
    state = access.owner
    try:
        job = await _get_job(state, job_id)
        if job is None:
            return _no_job(job_id)
        parts = await _job_parts(state, job)
    except StoreUnavailable as exc:
        return error_page(503, f"The store cannot be read now ({exc}). Try again shortly.")
    # Shown once, right after a cancel from this page (the redirect's query): a running
    # job still reads "running" until its run has stopped.
    canceled = request.query_params.get("cancel") == "asked"
    return await asyncio.to_thread(  # up to OUTPUT_SHOWN lines: rendered off the loop
        html_page,
        "job.html",
        page="job",
        csrf=access.signer.csrf(session),
        version=encode_versions((parts["last"], _status_number(job))),
        cancel_asked=canceled,
        done=await done_notice(request, state),
        **parts,
    )


@router.get("/live/jobs/{job_id}")
async def job_live_poll(request: Request, job_id: str) -> Response:
    """A job's figures and recap, and its new output, live. ``v`` is the page's version
    (``LAST-STATUS``: the counter of the last event it shows, its status as a number):
    answered once an event comes after it or the status changes (the store read every
    ``POLL_S``), or after ``LIVE_WAIT_S``, with only the new output (``data-append``:
    the script adds it to the page's). Without a ``v`` of that shape, the whole page's
    parts. Once the job has finished, ``LIVE_END_HEADER`` tells the script to stop."""
    access = ui_access(request)
    session = access.session(request)
    if session is None:
        return error_page(401, "Your sign-in has ended: sign in again.", signed_in=False)
    if JOB_ID.fullmatch(job_id) is None:
        return _no_job(job_id)
    state = access.owner
    csrf = access.signer.csrf(session)
    since = decode_versions(request.query_params.get("v"))
    if since is not None and len(since) != 2:
        since = None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(pages.LIVE_WAIT_S, LIVE_WAIT_MAX_S)
    try:
        while True:
            job = await _get_job(state, job_id)  # before its events (see _job_parts)
            if job is None:
                return _no_job(job_id)
            status = _status_number(job)
            if since is None:
                parts = await _job_parts(state, job)
                body = await asyncio.to_thread(
                    TEMPLATES.get_template("job_live.html").render,
                    full=True,
                    csrf=csrf,
                    **parts,
                )
                versions = (parts["last"], status)
                ended = job.status.finished
                break
            events = await asyncio.to_thread(
                state.jobs.events, job_id, after=since[0], limit=OUTPUT_SHOWN
            )
            moved = bool(events) or status != since[1] or job.status.finished
            if moved or loop.time() >= deadline or state.feed.closed:
                body = await asyncio.to_thread(
                    TEMPLATES.get_template("job_live.html").render,
                    full=False,
                    csrf=csrf,
                    job=job_detail(job),
                    lines=output_lines(events),
                )
                versions = (events[-1].counter if events else since[0], status)
                # A batch as large as the limit may have more behind it: not the end yet.
                ended = job.status.finished and len(events) < OUTPUT_SHOWN
                break
            await asyncio.sleep(POLL_S)
    except StoreUnavailable as exc:
        return error_page(503, f"The store cannot be read now ({exc}).")
    if state.feed.closed:
        return error_page(503, "The controller is shutting down.", headers={"Retry-After": "2"})
    headers = {**PAGE_HEADERS, VERSION_HEADER: encode_versions(versions)}
    if ended:
        headers[LIVE_END_HEADER] = "finished"
    return HTMLResponse(body, headers=headers)


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(request: Request, job_id: str) -> Response:
    """What ``POST /v1/jobs/{id}/cancel`` does (``state.jobs.cancel``): a pending job
    never starts, a running one is stopped and ends ``canceled``; then back to the
    job's page, which shows the event of a pending job's cancel at its top, or that a
    running job was asked to stop. A finished job is a 409 page, and nothing is done."""
    access = ui_access(request)
    session = access.session(request)
    valid = JOB_ID.fullmatch(job_id) is not None
    if session is None:
        return to_login(f"/ui/jobs/{job_id}" if valid else "/ui/jobs")
    refused = await checked_form(request, access, session)
    if refused is not None:
        return refused
    if not valid:
        return _no_job(job_id)
    page = f"/ui/jobs/{job_id}"
    state = access.owner
    try:
        _, done = await asyncio.to_thread(
            act, state.store, lambda: state.jobs.cancel(job_id), action="job_finish"
        )
    except NotFound:
        return _no_job(job_id)
    except Conflict as exc:  # finished already
        return error_page(409, f"Nothing was done: {exc}.", back=(page, f"Back to job {job_id}"))
    except StoreUnavailable as exc:
        return error_page(
            503,
            f"The store cannot write now ({exc}); nothing was done.",
            back=(page, f"Back to job {job_id}"),
        )
    if done is not None:  # a pending job: canceled at once, its event written
        return after_action(page, done)
    # A running job: asked to stop (here, or through the store for the controller
    # running it); its event comes when its run has stopped, and the page follows it.
    return redirect(f"{page}?cancel=asked")
