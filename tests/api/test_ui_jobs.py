"""The status page's jobs: the list, a job's page (figures, per-host recap, output),
their live polls, Cancel and the Run form; on both store engines.

Most tests place jobs through the job store with the runner stepped down (nothing
starts them); one runs a real playbook from the form (ansible-playbook, connection
local)."""

from __future__ import annotations

import html
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from orchestrify.controller.ui import jobs as ui_jobs
from orchestrify.controller.ui import pages
from orchestrify.jobs.models import HostStats, Job, JobEvent, JobStatus, new_job_id
from orchestrify.jobs.runner import JobRunner
from tests.api.test_ui import CSP, _browser, _csrf, _signed_in
from tests.api.test_ui import api as api  # the controller without its reconciler
from tests.conftest import require_binary

ROOT = Path(__file__).resolve().parents[2]
_VERSION = re.compile(r'data-version="([^"]+)"')
_OUTPUT = re.compile(r'<pre id="job-output"[^>]*>(.*?)</pre>', re.S)
_LINE = re.compile(r'<span class="out[^"]*" data-counter="[0-9]+">(.*?)</span>', re.S)
_JOB_LINK = re.compile(r'id="job-link-([0-9a-f]{12})"')


def _runner(api: TestClient) -> JobRunner:
    runner: JobRunner = api.app.state.controller.jobs  # type: ignore[attr-defined]
    return runner


def _quiet(api: TestClient) -> JobRunner:
    """The app's job runner, stepped down: no dispatcher starts (or fails) the jobs the
    test places through the store."""
    runner = _runner(api)
    runner.step_down()
    return runner


def _place(
    api: TestClient,
    *,
    status: JobStatus = JobStatus.SUCCESSFUL,
    playbook: str = "ping.yml",
    limit: str | None = None,
    reason: str | None = "a test",
    outputs: tuple[tuple[str, str], ...] = (),
    stats: dict[str, HostStats] | None = None,
    rc: int | None = None,
    error: str | None = None,
) -> Job:
    """A job as the runner leaves it: created, started (unless pending), its events
    (``outputs``: event name and stdout, counters from 1), finished (unless pending or
    running)."""
    store = _quiet(api).jobs
    job = store.create(
        job_id=new_job_id(), playbook=playbook, limit=limit, extra_vars={}, reason=reason
    )
    if status == JobStatus.PENDING:
        return store.get(job.id)
    store.mark_running(job.id, controller="ctl-test")
    _emit(api, job.id, outputs)
    if status != JobStatus.RUNNING:
        store.finish(job.id, status=status, rc=rc, error=error, stats=stats)
    return store.get(job.id)


def _emit(api: TestClient, job_id: str, outputs: tuple[tuple[str, str], ...]) -> None:
    store = _runner(api).jobs
    last = store.events(job_id, after=0, limit=100_000)
    first = last[-1].counter + 1 if last else 1
    store.add_events(
        job_id,
        [
            JobEvent(counter=first + i, event=event, stdout=stdout)
            for i, (event, stdout) in enumerate(outputs)
        ],
    )


def _status(api: TestClient, job_id: str) -> str:
    resp = api.get(f"/v1/jobs/{job_id}")
    assert resp.status_code == 200, resp.text
    status: str = resp.json()["status"]
    return status


def _output(page: str) -> list[str]:
    """A page's (or a live answer's) output: each event's text, as the browser shows
    it (one block each)."""
    found = _OUTPUT.search(page)
    assert found is not None, page
    lines = _LINE.findall(found.group(1))
    assert not re.sub(
        r'<span class="out[^"]*" data-counter="[0-9]+">.*?</span>', "", found.group(1), flags=re.S
    ), found.group(1)  # nothing else in it
    return [html.unescape(line) for line in lines]


def _version(page: httpx.Response) -> str:
    found = _VERSION.search(page.text)
    assert found is not None, page.text
    return found.group(1)


PING_OUTPUT = (
    ("playbook_on_start", ""),
    ("playbook_on_play_start", "PLAY [Check that every host answers] ****"),
    ("playbook_on_task_start", "TASK [Ping the host] ****"),
    ("runner_on_start", ""),
    ("runner_on_ok", "ok: [localhost]"),
    (
        "playbook_on_stats",
        "PLAY RECAP ****\nlocalhost : ok=1    changed=0    unreachable=0    failed=0",
    ),
)


# --- sessions ----------------------------------------------------------------------------
def test_without_a_session_the_jobs_pages_redirect_and_actions_do_nothing(
    api: TestClient,
) -> None:
    job = _place(api, status=JobStatus.PENDING)
    browser = _browser(api)
    for path in ("/ui/jobs", f"/ui/jobs/{job.id}"):
        resp = browser.get(path, follow_redirects=False)
        assert resp.status_code == 303
        assert resp.headers["location"] == f"/ui/login?next={path}"
    for path in ("/ui/live/jobs", f"/ui/live/jobs/{job.id}"):
        resp = browser.get(path, params={"v": "1-2"}, follow_redirects=False)
        assert resp.status_code == 401
        assert "jobs-body" not in resp.text and "job-output" not in resp.text
    resp = browser.post(f"/ui/jobs/{job.id}/cancel", data={"csrf": "x"}, follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"].startswith("/ui/login")
    resp = browser.post("/ui/jobs", data={"playbook": "ping.yml"}, follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"].startswith("/ui/login")
    assert _status(api, job.id) == "pending"
    assert len(api.get("/v1/jobs").json()) == 1
    # The API's bearer token is no session.
    assert api.get("/ui/jobs", follow_redirects=False).status_code == 303


# --- the list ----------------------------------------------------------------------------
def test_the_jobs_page_lists_jobs_newest_first_with_their_figures(api: TestClient) -> None:
    done = _place(api, rc=0, stats={"localhost": HostStats(ok=1)})
    time.sleep(0.01)  # distinct creation times
    broken = _place(
        api, status=JobStatus.FAILED, playbook="site.yml", limit="web:!w3", rc=2, error="boom"
    )
    time.sleep(0.01)
    waiting = _place(api, status=JobStatus.PENDING, reason="<b>why</b>")
    browser = _signed_in(api)
    page = browser.get("/ui/jobs")
    assert page.status_code == 200
    assert page.headers["content-security-policy"] == CSP
    assert page.headers["cache-control"] == "no-store"
    text = page.text
    assert '<a href="/ui/jobs" aria-current="page">Jobs</a>' in text
    assert _JOB_LINK.findall(text) == [waiting.id, broken.id, done.id]  # newest first
    assert [j["id"] for j in api.get("/v1/jobs").json()] == [waiting.id, broken.id, done.id]
    rows = {
        m.group(1): m.group(0)
        for m in re.finditer(
            r'<tr class="job[^"]*">\s*<th scope="row"><a[^>]*href="/ui/jobs/'
            r'([0-9a-f]{12})".*?</tr>',
            text,
            re.S,
        )
    }
    assert '<span class="state-word">successful</span>' in rows[done.id]
    assert "all hosts" in rows[done.id] and "ctl-test" in rows[done.id]
    assert '<td class="num">0</td>' in rows[done.id]
    assert '<span class="state-word">failed</span>' in rows[broken.id]
    assert "web:!w3" in rows[broken.id] and "site.yml" in rows[broken.id]
    assert '<td class="num">2</td>' in rows[broken.id]
    assert '<span class="state-word">pending</span>' in rows[waiting.id]
    assert "&lt;b&gt;why&lt;/b&gt;" in rows[waiting.id] and "<b>why" not in text
    # The Run form: the checkout's playbooks, its CSRF token and a question first.
    assert '<option value="ping.yml">ping.yml</option>' in text
    assert 'action="/ui/jobs"' in text and "data-confirm=" in text
    assert f'name="csrf" value="{_csrf(page)}"' in text
    assert "has no inventory" in text  # this controller has none: said before a run
    assert 'data-live="/ui/live/jobs"' in text
    assert "<script>" not in text and "style=" not in text


def test_the_jobs_live_poll_shows_a_start_within_two_seconds(
    api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pages, "LIVE_WAIT_S", 20.0)
    job = _place(api, status=JobStatus.PENDING)
    browser = _signed_in(api)
    version = _version(browser.get("/ui/jobs"))
    starting = threading.Timer(
        0.3, lambda: _runner(api).jobs.mark_running(job.id, controller="ctl-test")
    )
    starting.start()
    began = time.monotonic()
    try:
        resp = browser.get("/ui/live/jobs", params={"v": version})
    finally:
        starting.join()
    took = time.monotonic() - began
    assert resp.status_code == 200 and 0.2 < took < 2.0
    assert resp.text.lstrip().startswith('<tbody id="jobs-body">')
    assert '<span class="state-word">running</span>' in resp.text
    assert resp.headers[pages.VERSION_HEADER] != version


# --- one job -------------------------------------------------------------------------------
def test_a_job_page_shows_its_figures_recap_and_output(api: TestClient) -> None:
    job = _place(
        api,
        status=JobStatus.FAILED,
        limit="localhost,web2",
        outputs=(*PING_OUTPUT[:-1], ("runner_on_failed", "fatal: [web2]: <unreachable & gone>")),
        stats={
            "localhost": HostStats(ok=1, changed=3, skipped=4),
            "web2": HostStats(failures=1, rescued=5, ignored=6),
        },
        rc=2,
        error="task 'Ping the host' failed on web2",
    )
    browser = _signed_in(api)
    page = browser.get(f"/ui/jobs/{job.id}")
    assert page.status_code == 200
    text = page.text
    assert '<a href="/ui/jobs" aria-current="location">Jobs</a>' in text
    assert '<span class="state-word">failed</span>' in text
    assert "Error: task &#39;Ping the host&#39; failed on web2" in text
    # The recap: a row per host with the seven counts, the failed host marked in words.
    recap = re.search(r'<tbody id="recap-body">(.*?)</tbody>', text, re.S)
    assert recap is not None
    cells = [
        re.findall(r"<t[hd][^>]*>([^<]*)</t[hd]>", row)
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", recap.group(1), re.S)
    ]
    assert cells == [
        ["localhost", "1", "3", "0", "0", "4", "0", "0"],
        ["web2", "0", "0", "0", "1", "0", "5", "6"],
    ]
    assert '<tr class="recap recap-bad">' in recap.group(1)
    # The output as ansible-playbook printed it, in order, escaped; silent events left out.
    assert _output(text) == [
        "PLAY [Check that every host answers] ****",
        "TASK [Ping the host] ****",
        "ok: [localhost]",
        "fatal: [web2]: <unreachable & gone>",
    ]
    assert "&lt;unreachable &amp; gone&gt;" in text
    assert '<span class="out out-bad"' in text
    # Finished: no live poll, no Cancel.
    assert "data-live" not in text and "The job has finished" in text
    assert "cancel-job" not in text
    assert 'id="job-output-cut" class="hint" hidden' in text


def test_a_long_output_keeps_its_last_events_and_says_so(
    api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ui_jobs, "OUTPUT_SHOWN", 3)
    job = _place(api, outputs=tuple(("runner_on_ok", f"line {i}") for i in range(1, 7)))
    text = _signed_in(api).get(f"/ui/jobs/{job.id}").text
    assert _output(text) == ["line 4", "line 5", "line 6"]
    assert 'id="job-output-cut" class="hint">' in text  # shown, not hidden
    assert 'data-keep="3"' in text  # the script keeps as many as it grows


def test_the_job_live_poll_appends_new_output_then_ends(
    api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pages, "LIVE_WAIT_S", 1.0)
    job = _place(api, status=JobStatus.RUNNING, outputs=PING_OUTPUT[:3])
    browser = _signed_in(api)
    page = browser.get(f"/ui/jobs/{job.id}")
    assert f'data-live="/ui/live/jobs/{job.id}"' in page.text and "cancel-job" in page.text
    version = _version(page)
    live = f"/ui/live/jobs/{job.id}"
    # Nothing new: answered at its deadline, nothing to append, still live.
    began = time.monotonic()
    resp = browser.get(live, params={"v": version})
    assert resp.status_code == 200 and time.monotonic() - began >= 0.9
    assert resp.headers[pages.VERSION_HEADER] == version
    assert pages.LIVE_END_HEADER not in resp.headers
    assert _output(resp.text) == []
    # A new line: answered within the store poll, with only that line, to append.
    monkeypatch.setattr(pages, "LIVE_WAIT_S", 20.0)
    more = threading.Timer(0.3, lambda: _emit(api, job.id, (PING_OUTPUT[4],)))
    more.start()
    began = time.monotonic()
    try:
        resp = browser.get(live, params={"v": version})
    finally:
        more.join()
    assert resp.status_code == 200 and 0.2 < time.monotonic() - began < 2.0
    assert '<pre id="job-output" data-append>' in resp.text
    assert _output(resp.text) == ["ok: [localhost]"]
    assert resp.headers[pages.VERSION_HEADER] != version
    version = resp.headers[pages.VERSION_HEADER]
    # The recap, then the end: answered at once, the status and recap replaced, the
    # script told to stop.
    _emit(api, job.id, (PING_OUTPUT[5],))
    _runner(api).jobs.finish(
        job.id, status=JobStatus.SUCCESSFUL, rc=0, error=None, stats={"localhost": HostStats(ok=1)}
    )
    began = time.monotonic()
    resp = browser.get(live, params={"v": version})
    assert time.monotonic() - began < 2.0
    assert resp.headers[pages.LIVE_END_HEADER] == "finished"
    assert _output(resp.text) == [PING_OUTPUT[5][1]]
    assert '<span class="state-word">successful</span>' in resp.text
    assert '<th scope="row">localhost</th>' in resp.text
    assert "cancel-job" not in resp.text
    # A version not of its shape: the whole output, to replace the page's.
    for stale in ("garbage", "1-2-3", None):
        resp = browser.get(live, params={"v": stale} if stale else None)
        assert resp.status_code == 200 and "data-append" not in resp.text
        assert _output(resp.text) == [out for _, out in PING_OUTPUT if out]
        assert 'id="job-output-cut"' in resp.text


def test_an_unknown_or_malformed_job_id_is_a_404_page(api: TestClient) -> None:
    browser = _signed_in(api)
    csrf = _csrf(browser.get("/ui/jobs"))
    for job_id in ("0123456789ab", "NOT-A-JOB", "x" * 300, "0123456789abc"):
        for resp in (
            browser.get(f"/ui/jobs/{job_id}"),
            browser.get(f"/ui/live/jobs/{job_id}", params={"v": "1-1"}),
            browser.post(f"/ui/jobs/{job_id}/cancel", data={"csrf": csrf}),
        ):
            assert resp.status_code == 404, (job_id, resp.text)
            assert "There is no job with id" in resp.text
            assert resp.headers["content-security-policy"] == CSP


# --- cancel ------------------------------------------------------------------------------
def test_cancel_a_pending_job_from_its_page(api: TestClient) -> None:
    job = _place(api, status=JobStatus.PENDING)
    browser = _signed_in(api)
    page = browser.get(f"/ui/jobs/{job.id}")
    form = re.search(r'<form method="post" action="/ui/jobs/[^"]+/cancel"[^>]*>', page.text)
    assert form is not None and f"Cancel job {job.id}" in form.group(0)
    assert "data-confirm=" in form.group(0)
    resp = browser.post(
        f"/ui/jobs/{job.id}/cancel", data={"csrf": _csrf(page)}, follow_redirects=False
    )
    assert resp.status_code == 303
    assert _status(api, job.id) == "canceled"
    # Back to its page, naming the event the cancel wrote, shown at the top.
    event = api.get("/v1/events", params={"kind": "job"}).json()[-1]
    assert event["action"] == "job_finish" and event["data"]["job"] == job.id
    assert resp.headers["location"] == f"/ui/jobs/{job.id}?done={event['id']}"
    after = browser.get(resp.headers["location"]).text
    assert '<span class="state-word">canceled</span>' in after
    assert f"job {job.id} canceled: ping.yml" in after and "cancel-job" not in after
    # A finished job cannot be canceled again: a 409 page, nothing changed.
    resp = browser.post(f"/ui/jobs/{job.id}/cancel", data={"csrf": _csrf(page)})
    assert resp.status_code == 409 and "already finished" in resp.text


def test_cancel_a_running_job_asks_its_controller(api: TestClient) -> None:
    job = _place(api, status=JobStatus.RUNNING)  # run by another controller ("ctl-test")
    browser = _signed_in(api)
    page = browser.get(f"/ui/jobs/{job.id}")
    resp = browser.post(f"/ui/jobs/{job.id}/cancel", data={"csrf": _csrf(page)})
    assert resp.status_code == 200  # followed to the job's page
    assert "Cancel asked: the run stops within a few seconds" in resp.text
    # The same call as the API's: the request is stored for the controller running it.
    assert _runner(api).jobs.cancel_requests(controller="ctl-test") == {job.id}


@pytest.mark.parametrize("csrf", [None, "", "0" * 64], ids=["missing", "empty", "wrong"])
def test_a_cancel_without_the_csrf_token_is_refused_and_does_nothing(
    api: TestClient, csrf: str | None
) -> None:
    job = _place(api, status=JobStatus.PENDING)
    browser = _signed_in(api)
    resp = browser.post(f"/ui/jobs/{job.id}/cancel", data={} if csrf is None else {"csrf": csrf})
    assert resp.status_code == 403 and "CSRF" in resp.text
    assert _status(api, job.id) == "pending"


# --- the Run form --------------------------------------------------------------------------
def _lab(root: Path, playbooks: dict[str, str] | None = None) -> dict[str, Path]:
    """A playbook dir with the checkout's ping.yml, and an inventory of localhost."""
    book_dir = root / "playbooks"
    book_dir.mkdir()
    shutil.copy(ROOT / "playbooks" / "ping.yml", book_dir / "ping.yml")
    for name, text in (playbooks or {}).items():
        (book_dir / name).write_text(text)
    inventory = root / "hosts.ini"
    inventory.write_text(
        f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n"
    )
    return {"playbook_dir": book_dir, "inventory": inventory}


def _run(browser: TestClient, csrf: str | None, **fields: str) -> httpx.Response:
    data = dict(fields) if csrf is None else {"csrf": csrf, **fields}
    return browser.post("/ui/jobs", data=data, follow_redirects=False)


def test_the_run_form_refuses_bad_fields_with_a_page_naming_them(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    api = make_client(run_reconciler=False, **_lab(tmp_path))
    browser = _signed_in(api)
    csrf = _csrf(browser.get("/ui/jobs"))
    cases = [
        ({}, "playbook: choose the playbook"),
        ({"playbook": ""}, "playbook: choose the playbook"),
        ({"playbook": "../etc/passwd.yml"}, "playbook: &#39;../etc/passwd.yml&#39; must not"),
        ({"playbook": "missing.yml"}, "playbook: no playbook &#39;missing.yml&#39;"),
        ({"playbook": "ping.txt"}, "playbook: &#39;ping.txt&#39; is not a .yml"),
        ({"playbook": "ping.yml", "limit": "web; rm -rf /"}, "limit: &#39;web; rm -rf /&#39;"),
        ({"playbook": "ping.yml", "limit": "@hosts.txt"}, "limit: &#39;@hosts.txt&#39;"),
    ]
    for fields, named in cases:
        resp = _run(browser, csrf, **fields)
        assert resp.status_code == 422, (fields, resp.text)
        assert "No job was queued." in resp.text and named in resp.text, (fields, resp.text)
        assert 'href="/ui/jobs"' in resp.text
    # The API refuses the same input the same way.
    resp = api.post("/v1/jobs", json={"playbook": "ping.yml", "limit": "web; rm -rf /"})
    assert resp.status_code == 422 and resp.json()["detail"][0]["loc"][-1] == "limit"
    assert api.get("/v1/jobs").json() == []


def test_the_run_form_needs_its_csrf_token(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    api = make_client(run_reconciler=False, **_lab(tmp_path))
    browser = _signed_in(api)
    for csrf in (None, "0" * 64):
        resp = _run(browser, csrf, playbook="ping.yml")
        assert resp.status_code == 403
    assert api.get("/v1/jobs").json() == []


def test_the_run_form_says_when_the_controller_has_no_inventory(api: TestClient) -> None:
    browser = _signed_in(api)
    resp = _run(browser, _csrf(browser.get("/ui/jobs")), playbook="ping.yml")
    assert resp.status_code == 409  # the API's answer
    assert "no inventory" in resp.text and "No job was queued." in resp.text
    assert api.get("/v1/jobs").json() == []


def test_the_run_form_says_when_the_queue_is_full(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    full = make_client(run_reconciler=False, max_pending_jobs=1, **_lab(tmp_path))
    _place(full, status=JobStatus.PENDING)
    browser = _signed_in(full)
    resp = _run(browser, _csrf(browser.get("/ui/jobs")), playbook="ping.yml")
    assert resp.status_code == 429 and resp.headers["retry-after"] == "5"
    assert "already wait to run" in resp.text
    assert len(full.get("/v1/jobs").json()) == 1


@pytest.mark.integration
@pytest.mark.beside
def test_ping_run_from_the_form_shows_its_output_and_recap(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    require_binary("ansible-playbook")
    api = make_client(run_reconciler=False, **_lab(tmp_path))
    browser = _signed_in(api)
    page = browser.get("/ui/jobs")
    resp = _run(browser, _csrf(page), playbook="ping.yml", limit=" localhost ")
    assert resp.status_code == 303, resp.text
    job_id = resp.headers["location"].rsplit("/", 1)[1]
    assert resp.headers["location"] == f"/ui/jobs/{job_id}"
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["reason"] == "requested from the status page"
    assert job["limit"] == "localhost" and job["extra_vars"] == {}
    # Followed live from the first version, as the page's script does, to its end.
    live = f"/ui/live/jobs/{job_id}"
    version, output = "0-0", list[str]()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        resp = browser.get(live, params={"v": version})
        assert resp.status_code == 200, resp.text
        output += _output(resp.text)
        version = resp.headers[pages.VERSION_HEADER]
        if pages.LIVE_END_HEADER in resp.headers:
            break
    else:
        raise AssertionError(f"the job did not finish: {output}")
    assert '<span class="state-word">successful</span>' in resp.text
    text = "\n".join(output)
    assert "TASK [Ping the host]" in text and "ok: [localhost]" in text
    assert re.search(r"PLAY RECAP \**\nlocalhost\s+: ok=1 ", text), text
    # The page, once finished: the same output whole, the recap's row, no poll.
    text = browser.get(f"/ui/jobs/{job_id}").text
    assert _output(text) == output
    assert re.search(r'<th scope="row">localhost</th>\s*<td class="num">1</td>', text)
    assert "data-live" not in text
