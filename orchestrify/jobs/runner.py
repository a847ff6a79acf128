"""Run playbooks with ansible-runner, one private data dir per job, never two jobs at
once on the same host.

The adapter border: ansible-runner and its errors stop here. A run's outcome (status,
rc, per-host stats) is a result recorded on the job, not an exception.

Serialization: every job holds a set of hosts (resolved from its limit against the
inventory, or every host when unknown). One dispatcher thread starts queued jobs in
submission order; a job starts only when its hosts overlap neither a running job nor
an older job still waiting, so jobs on one host run in the order they were submitted
and a stream of small jobs cannot starve a job on ``all``. Jobs on disjoint hosts run in
parallel, each in its own thread, at most ``max_running`` at once (a burst of jobs on
many hosts must not start an ansible-playbook process each and starve the controller).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import stat
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from orchestrify.errors import Busy, Conflict, OrchestrifyError
from orchestrify.jobs.handoff import job_environment, write_extra_vars
from orchestrify.jobs.hosts import EVERY_HOST, Inventory, overlaps, read_inventory
from orchestrify.jobs.models import HostStats, Job, JobEvent, JobStatus
from orchestrify.jobs.validation import check_extra_vars, check_limit, resolve_playbook
from orchestrify.store import Store
from orchestrify.store.files import ensure_private_dir
from orchestrify.store.jobs import JobStore

__all__ = ["JobRunner", "private_data_dir", "remove_private_data_dirs"]

log = logging.getLogger(__name__)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_RUNNER_STATUS = {
    "successful": JobStatus.SUCCESSFUL,
    "canceled": JobStatus.CANCELED,
}
INTERRUPTED = "the controller stopped while the job ran; its outcome is unknown"


@dataclass
class _Queued:
    job_id: str
    limit: str | None
    hosts: frozenset[str] | None = None


@dataclass
class _Running:
    job_id: str
    hosts: frozenset[str]
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


class JobRunner:
    """Accepts jobs, keeps them durable, and runs them when their hosts are free.

    Thread-safe. ``submit`` never blocks on Ansible: inventory reads happen on the
    dispatcher thread, so an async caller (the alert webhook) can call it directly.
    """

    def __init__(
        self,
        store: Store,
        *,
        playbook_dir: Path | None,
        inventory: Path | None,
        jobs_dir: Path,
        job_timeout_s: float = 3600.0,
        max_running: int = 4,
        max_pending: int = 100,
    ) -> None:
        self.jobs = JobStore(store)
        self.playbook_dir = playbook_dir
        self.inventory = inventory
        self.jobs_dir = jobs_dir
        self.job_timeout_s = job_timeout_s
        self.max_running = max_running  # ansible-playbook processes at once
        self.max_pending = max_pending  # queued jobs; more is Busy (429)
        self._lock = threading.Condition()
        self._queue: list[_Queued] = []
        self._running: dict[str, _Running] = {}
        self._stopping = False
        self._dispatcher: threading.Thread | None = None

    # --- life cycle ----------------------------------------------------------------
    def start(self) -> None:
        """Fail jobs a previous controller left running, requeue pending ones, dispatch."""
        ensure_ansible_on_path()
        # Jobs' private data dirs hold their extra vars and output: the controller's only.
        # A jobs dir that cannot be made fails each job with the reason, not the start.
        try:
            if ensure_private_dir(self.jobs_dir):
                log.warning("tightened the jobs dir to 0700", extra={"path": str(self.jobs_dir)})
        except OSError as exc:
            log.warning(
                "cannot prepare the jobs dir", extra={"path": str(self.jobs_dir), "error": str(exc)}
            )
        failed, pending = self.jobs.interrupted(reason=INTERRUPTED)
        for job in failed:
            log.warning("job interrupted by a restart", extra={"job": job.id})
        with self._lock:
            self._queue.extend(_Queued(j.id, j.limit) for j in pending)
        self._dispatcher = threading.Thread(
            target=self._dispatch_forever, name="job-dispatcher", daemon=True
        )
        self._dispatcher.start()

    def close(self, *, timeout_s: float = 15.0) -> None:
        """Stop dispatching and cancel running jobs (they end as ``canceled``)."""
        with self._lock:
            self._stopping = True
            running = list(self._running.values())
            self._lock.notify_all()
        for run in running:
            run.cancel.set()
        for run in running:
            if run.thread is not None:
                run.thread.join(timeout_s)
        if self._dispatcher is not None:
            self._dispatcher.join(timeout_s)

    # --- the Python API ------------------------------------------------------------
    def submit(
        self,
        *,
        playbook: str,
        limit: str | None = None,
        extra_vars: dict[str, Any] | None = None,
        reason: str | None = None,
    ) -> Job:
        """Validate and queue a playbook run; returns the job (``pending``).

        Raises InvalidSpec (naming the field) for a bad playbook, limit or extra var,
        Conflict when the controller has no playbook directory or inventory, and Busy
        when ``max_pending`` jobs already wait.
        """
        with self._lock:
            if len(self._queue) >= self.max_pending:
                raise Busy(
                    f"{len(self._queue)} jobs already wait to run (max_pending_jobs); "
                    "submit again once some have run"
                )
        playbook_dir, _ = self._configured()
        resolve_playbook(playbook_dir, playbook)
        limit = check_limit(limit)
        extra = check_extra_vars(dict(extra_vars or {}))
        job = self.jobs.create(
            job_id=secrets.token_hex(6),
            playbook=str(PurePosixPath(playbook)),
            limit=limit,
            extra_vars=extra,
            reason=reason,
        )
        with self._lock:
            if self._stopping:
                raise Conflict("the controller is shutting down; the job stays pending")
            self._queue.append(_Queued(job.id, limit))
            self._lock.notify_all()
        log.info("job queued", extra={"job": job.id, "playbook": job.playbook, "limit": limit})
        return job

    def cancel(self, job_id: str) -> Job:
        """Cancel a pending job now, or ask a running one to stop (it ends ``canceled``)."""
        job = self.jobs.get(job_id)
        with self._lock:
            queued = next((q for q in self._queue if q.job_id == job_id), None)
            if queued is not None:
                self._queue.remove(queued)
                self._lock.notify_all()
                return self.jobs.finish(
                    job_id, status=JobStatus.CANCELED, rc=None, error="canceled before it started"
                )
            run = self._running.get(job_id)
            if run is not None:
                run.cancel.set()
                return self.jobs.get(job_id)
        if job.status.finished:
            raise Conflict(f"job {job_id} already finished ({job.status.value})")
        return job

    def get(self, job_id: str) -> Job:
        return self.jobs.get(job_id)

    def list_jobs(self, *, status: JobStatus | None = None, limit: int = 100) -> list[Job]:
        return self.jobs.list_jobs(status=status, limit=limit)

    def events(self, job_id: str, *, after: int = 0, limit: int = 1000) -> list[JobEvent]:
        return self.jobs.events(job_id, after=after, limit=limit)

    # --- dispatching ---------------------------------------------------------------
    def _configured(self) -> tuple[Path, Path]:
        if self.playbook_dir is None or not self.playbook_dir.is_dir():
            raise Conflict(
                "the controller has no playbook directory; start it with --playbook-dir "
                "(or ORCHESTRIFY_PLAYBOOK_DIR)"
            )
        if self.inventory is None or not self.inventory.exists():
            raise Conflict(
                "the controller has no inventory; start it with --inventory "
                "(or ORCHESTRIFY_INVENTORY)"
            )
        return self.playbook_dir, self.inventory

    def _dispatch_forever(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self._startable_or_unresolved():
                    self._lock.wait(5.0)
                if self._stopping:
                    return
                unresolved = [q for q in self._queue if q.hosts is None]
            try:
                if unresolved:
                    self._resolve_hosts(unresolved)
                with self._lock:
                    if self._stopping:
                        return
                    self._start_eligible()
            except Exception:  # the dispatcher must outlive any one bad round
                log.exception("job dispatch failed; retrying")
                time.sleep(1.0)

    def _startable_or_unresolved(self) -> bool:
        if len(self._running) >= self.max_running and all(q.hosts is not None for q in self._queue):
            return False
        busy = [r.hosts for r in self._running.values()]
        for queued in self._queue:
            if queued.hosts is None:
                return True
            if not any(overlaps(queued.hosts, other) for other in busy):
                return True
            busy.append(queued.hosts)
        return False

    def _resolve_hosts(self, unresolved: list[_Queued]) -> None:
        inventory: Inventory | None = None
        if any(q.limit is not None for q in unresolved):
            try:
                inventory = read_inventory(self._configured()[1])
            except OrchestrifyError as exc:
                log.warning("cannot resolve job hosts; jobs wait for all others", exc_info=exc)
        for queued in unresolved:
            hosts = (
                inventory.resolve(queued.limit)
                if inventory is not None
                else frozenset({EVERY_HOST})
            )
            self.jobs.set_hosts(queued.job_id, hosts)
            queued.hosts = hosts

    def _start_eligible(self) -> None:
        """Start, in order, each queued job whose hosts nothing earlier holds."""
        busy = [r.hosts for r in self._running.values()]
        for queued in list(self._queue):
            if len(self._running) >= self.max_running:
                break  # a job ending wakes the dispatcher again
            if queued.hosts is None:
                break  # resolved in order: keep the order of submission
            if any(overlaps(queued.hosts, other) for other in busy):
                busy.append(queued.hosts)  # it keeps its place ahead of later jobs
                continue
            self._queue.remove(queued)
            busy.append(queued.hosts)
            run = _Running(queued.job_id, queued.hosts)
            self._running[queued.job_id] = run
            run.thread = threading.Thread(
                target=self._run_job, args=(run,), name=f"job-{queued.job_id}", daemon=True
            )
            run.thread.start()

    def _job_done(self, run: _Running) -> None:
        with self._lock:
            self._running.pop(run.job_id, None)
            self._lock.notify_all()

    # --- one run -------------------------------------------------------------------
    def _run_job(self, run: _Running) -> None:
        status: JobStatus
        rc: int | None
        error: str | None
        stats: dict[str, HostStats] | None
        try:
            job = self.jobs.mark_running(run.job_id)
        except Conflict as exc:  # started (or ended) elsewhere already: not this run's
            log.warning("job not started", extra={"job": run.job_id, "error": str(exc)})
            self._job_done(run)
            return
        except Exception as exc:  # a job's failure must never kill the dispatcher
            log.exception("job crashed", extra={"job": run.job_id})
            status, rc, error, stats = JobStatus.FAILED, None, f"could not run: {exc}", None
        else:
            try:
                log.info("job started", extra={"job": job.id, "playbook": job.playbook})
                status, rc, error, stats = self._run_playbook(job, run.cancel)
            except Exception as exc:  # a job's failure must never kill the dispatcher
                log.exception("job crashed", extra={"job": run.job_id})
                status, rc, error, stats = JobStatus.FAILED, None, f"could not run: {exc}", None
        try:
            job = self.jobs.finish(run.job_id, status=status, rc=rc, error=error, stats=stats)
            log.info("job finished", extra={"job": job.id, "status": status.value, "rc": rc})
        finally:
            self._job_done(run)

    def _run_playbook(
        self, job: Job, cancel: threading.Event
    ) -> tuple[JobStatus, int | None, str | None, dict[str, HostStats] | None]:
        from ansible_runner.interface import init_runner

        playbook_dir, inventory = self._configured()
        try:
            playbook = resolve_playbook(playbook_dir, job.playbook)
        except OrchestrifyError as exc:
            return JobStatus.FAILED, None, str(exc), None
        private = private_data_dir(self.jobs_dir, job.id)
        # env/ and artifacts/<ident>/ are per job. The project and the inventory are
        # used where they are rather than copied into project/ and inventory/: roles
        # and group_vars sit beside them, and Ansible finds those relative to the
        # paths it is given (a copy or a symlink would lose them).
        ensure_private_dir(private)
        ensure_private_dir(private / "env")
        # Extra vars go in env/extravars, every string tagged !unsafe (never templated);
        # ansible-runner passes the file as -e @env/extravars. Not as its extravars
        # argument: that one is written as plain JSON, which Ansible templates.
        write_extra_vars(private / "env" / "extravars", job.extra_vars)
        recorder = _EventRecorder(self.jobs, job.id)
        roles = [
            str(d) for d in (playbook_dir / "roles", playbook_dir.parent / "roles") if d.is_dir()
        ]
        runner = init_runner(
            private_data_dir=str(private),
            ident=job.id,
            project_dir=str(playbook_dir),
            playbook=str(playbook.relative_to(playbook_dir.resolve())),
            inventory=str(inventory.resolve()),
            limit=job.limit,
            roles_path=roles or None,
            envvars=_ansible_env(),
            settings={"suppress_ansible_output": True},
            timeout=int(self.job_timeout_s),
            quiet=True,
            event_handler=recorder.handle,
            cancel_callback=cancel.is_set,
        )
        # ansible-runner seeds the run's environment with the controller's whole one
        # (tokens included) and writes it to artifacts/<job>/command: cut it down before
        # the run starts. ansible_runner.run() is init_runner() then run(), so this is
        # the same run with a smaller environment.
        runner.config.env = job_environment(runner.config.env)
        runner.run()
        status = _RUNNER_STATUS.get(runner.status, JobStatus.FAILED)
        rc = runner.rc
        error: str | None = None
        if runner.status == "timeout":
            error = f"timed out after {self.job_timeout_s:g}s"
        elif status == JobStatus.CANCELED:
            error = "canceled"
        elif status == JobStatus.FAILED:
            error = recorder.first_failure or f"ansible-playbook exited with rc {rc}"
        return status, rc, error, _host_stats(runner.stats)


def private_data_dir(jobs_dir: Path, job_id: str) -> Path:
    """A job's ansible-runner private data dir: always a direct child of ``jobs_dir``."""
    if job_id in ("", ".", "..") or "/" in job_id or "\0" in job_id or os.sep in job_id:
        raise ValueError(f"not a job id: {job_id!r}")
    return jobs_dir / job_id


def remove_private_data_dirs(jobs_dir: Path, job_ids: Iterable[str]) -> int:
    """Delete the private data dirs of jobs the store has forgotten; returns how many.

    Only a real directory that is a direct child of ``jobs_dir`` and named after the
    job is removed: a symlink there is left alone, never followed (and ``rmtree`` does
    not follow symlinks inside the tree either). A dir that cannot be removed is logged
    and left; it no longer belongs to any job.
    """
    removed = 0
    for job_id in job_ids:
        try:
            path = private_data_dir(jobs_dir, job_id)
        except ValueError:
            log.warning("not removing the dir of a job with an odd id", extra={"job": job_id})
            continue
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            continue  # canceled before it started, or removed by hand
        except OSError as exc:
            log.warning("cannot inspect a job dir", extra={"path": str(path), "error": str(exc)})
            continue
        if not stat.S_ISDIR(mode):
            log.warning(
                "not removing a job dir that is not a plain directory", extra={"path": str(path)}
            )
            continue
        try:
            shutil.rmtree(path)
        except OSError as exc:
            log.warning("cannot remove a job dir", extra={"path": str(path), "error": str(exc)})
            continue
        removed += 1
    return removed


class _EventRecorder:
    """ansible-runner's event_handler: trim each event and store it as it comes."""

    def __init__(self, jobs: JobStore, job_id: str) -> None:
        self.jobs = jobs
        self.job_id = job_id
        self.first_failure: str | None = None

    def handle(self, event: dict[str, Any]) -> bool:
        try:
            trimmed = trim_event(event)
            if trimmed is not None:
                self.jobs.add_events(self.job_id, [trimmed])
                failed = trimmed.event in ("runner_on_failed", "runner_on_unreachable")
                ignored = bool((event.get("event_data") or {}).get("ignore_errors"))
                if failed and not ignored and self.first_failure is None:
                    self.first_failure = _failure_summary(event)
        except Exception:  # losing one event line must not abort the playbook
            log.exception("cannot record a job event", extra={"job": self.job_id})
        return True  # keep ansible-runner's own artifact too (job_events/ for debugging)


def trim_event(event: dict[str, Any]) -> JobEvent | None:
    """The fields of an ansible-runner event that a person reads."""
    counter = event.get("counter")
    name = event.get("event")
    if not isinstance(counter, int) or not isinstance(name, str):
        return None
    data = event.get("event_data") or {}
    res = data.get("res")
    changed = res.get("changed") if isinstance(res, dict) else None
    created = event.get("created")
    return JobEvent(
        counter=counter,
        event=name,
        host=data.get("host") or data.get("remote_addr"),
        task=data.get("task") or None,
        play=data.get("play") or None,
        changed=changed if isinstance(changed, bool) else None,
        stdout=_ANSI.sub("", str(event.get("stdout") or "")).replace("\r\n", "\n").strip("\n"),
        created=datetime.fromisoformat(created) if isinstance(created, str) else None,
    )


def _failure_summary(event: dict[str, Any]) -> str:
    data = event.get("event_data") or {}
    raw = data.get("res")
    res: dict[str, Any] = raw if isinstance(raw, dict) else {}
    msg = str(res.get("msg") or res.get("stderr") or "").strip().splitlines()
    what = "unreachable" if event.get("event") == "runner_on_unreachable" else "failed"
    detail = f": {msg[0][:300]}" if msg else ""
    return f"task {data.get('task')!r} {what} on {data.get('host')}{detail}"


def _host_stats(stats: dict[str, dict[str, int]] | None) -> dict[str, HostStats] | None:
    if not stats:
        return None
    names = {
        "ok": "ok",
        "changed": "changed",
        "failures": "failures",
        "dark": "unreachable",
        "skipped": "skipped",
        "rescued": "rescued",
        "ignored": "ignored",
    }
    hosts = sorted({h for key in [*names, "processed"] for h in (stats.get(key) or {})})
    return {
        host: HostStats(
            **{ours: int((stats.get(theirs) or {}).get(host, 0)) for theirs, ours in names.items()}
        )
        for host in hosts
    }


def _ansible_env() -> dict[str, str]:
    """Plain output for the event stream; no retry files beside the playbooks."""
    return {"ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_RETRY_FILES_ENABLED": "0"}


def ensure_ansible_on_path() -> bool:
    """ansible-runner finds ansible-playbook and ansible-inventory on PATH only. When the
    controller runs from a virtualenv that is not on PATH, add the virtualenv's bin."""
    if shutil.which("ansible-playbook"):
        return True
    here = Path(sys.executable).parent
    if (here / "ansible-playbook").exists():
        os.environ["PATH"] = f"{here}{os.pathsep}{os.environ.get('PATH', '')}"
        log.info("added %s to PATH for ansible-runner", here)
        return True
    log.warning("ansible-playbook is not on PATH: every job will fail until it is installed")
    return False
