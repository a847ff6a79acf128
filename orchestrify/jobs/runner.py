"""Run playbooks with ansible-runner, one private data dir per job, never two jobs at
once on the same host.

The adapter border: ansible-runner and its errors stop here. A run's outcome (status,
rc, per-host stats) is a result recorded on the job, not an exception.

The queue is the store: a job submitted to any controller is stored ``pending``, and the
leader's dispatcher (the only one; ``lead``/``step_down``) polls the store for pending
jobs (every ``poll_s``, and at once when this process queued one) and starts each with a
compare-and-set to ``running`` on this controller, so two controllers never run one job.

Serialization: every job holds a set of hosts (resolved from its limit against the
inventory, or every host when unknown). Jobs start in submission order; a job starts
only when its hosts overlap neither a running job nor an older job still waiting, so
jobs on one host run in the order they were submitted and a stream of small jobs cannot
starve a job on ``all``. Jobs on disjoint hosts run in parallel, each in its own thread,
at most ``max_running`` at once (a burst of jobs on many hosts must not start an
ansible-playbook process each and starve the controller).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import stat
import sys
import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from orchestrify.errors import Busy, Conflict, Fenced, OrchestrifyError
from orchestrify.jobs.handoff import job_environment, write_extra_vars
from orchestrify.jobs.hosts import EVERY_HOST, Inventory, overlaps, read_inventory
from orchestrify.jobs.models import HostStats, Job, JobEvent, JobStatus, new_job_id
from orchestrify.jobs.validation import check_extra_vars, check_limit, resolve_playbook
from orchestrify.store import Store
from orchestrify.store.files import ensure_private_dir
from orchestrify.store.jobs import JobStore

__all__ = ["Fence", "JobRunner", "private_data_dir", "remove_private_data_dirs"]

log = logging.getLogger(__name__)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_RUNNER_STATUS = {
    "successful": JobStatus.SUCCESSFUL,
    "canceled": JobStatus.CANCELED,
}
INTERRUPTED = "the controller stopped while the job ran; its outcome is unknown"

# Wraps each write of the leader's dispatcher (start a job, resolve its hosts, settle the
# jobs a previous leader left running): the leader lease's fence, which refuses the
# write (``Fenced``) of a controller that no longer leads at the epoch it was elected.
Fence = Callable[[], AbstractContextManager[None]]


def _unfenced() -> AbstractContextManager[None]:
    return contextlib.nullcontext()


@dataclass
class _Running:
    job_id: str
    hosts: frozenset[str]
    cancel: threading.Event = field(default_factory=threading.Event)
    # Why the run was stopped when it was not a caller's cancel (recorded as the error).
    stopped_because: str | None = None
    thread: threading.Thread | None = None


class JobRunner:
    """Accepts jobs, keeps them durable, and runs them when their hosts are free.

    Thread-safe. ``submit`` never blocks on Ansible: inventory reads happen on the
    dispatcher thread, so an async caller (the alert webhook) can call it directly.
    Every controller accepts jobs; only one that ``lead``s runs them.
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
        controller_id: str | None = None,
        poll_s: float = 1.0,
    ) -> None:
        self.jobs = JobStore(store)
        self.playbook_dir = playbook_dir
        self.inventory = inventory
        self.jobs_dir = jobs_dir
        self.job_timeout_s = job_timeout_s
        self.max_running = max_running  # ansible-playbook processes at once
        self.max_pending = max_pending  # pending jobs in the store; more is Busy (429)
        # Recorded on every job this runner starts (the job's ``controller``).
        self.controller_id = controller_id or socket.gethostname()
        # How often the leader looks in the store for jobs other controllers accepted
        # (and for cancels asked of them): a job waits at most this long to start.
        self.poll_s = poll_s
        self._lock = threading.Condition()
        self._running: dict[str, _Running] = {}
        self._stopping = False
        self._leading = False
        self._term = 0  # bumped by lead/step_down: a dispatcher of an older term ends
        self._settled = False  # take_over done for the current term
        self._fence: Fence = _unfenced
        self._wake = False
        self._dispatcher: threading.Thread | None = None

    # --- life cycle ----------------------------------------------------------------
    @property
    def leading(self) -> bool:
        return self._leading

    def lead(self, *, fence: Fence | None = None) -> None:
        """Start dispatching: this controller now leads. Jobs another controller left
        ``running`` are marked ``lost`` (that controller stopped leading; they are not
        re-run), jobs a previous run of this controller left running fail as
        interrupted, and pending jobs start as their hosts allow. ``fence`` wraps every
        write of the dispatcher (the leader lease's fence). Idempotent while leading.

        Makes one store write before it returns (retried by the dispatcher when the
        store cannot take it now); the dispatching itself runs on its own thread."""
        with self._lock:
            if self._stopping or self._leading:
                return
            self._leading = True
            self._term += 1
            term = self._term
            self._fence = fence or _unfenced
            self._settled = False
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
        try:
            self._settle(term)
        except OrchestrifyError as exc:  # the dispatcher tries again before it starts jobs
            log.warning("cannot settle the jobs left running yet", extra={"error": str(exc)})
        dispatcher = threading.Thread(
            target=self._dispatch_forever, args=(term,), name="job-dispatcher", daemon=True
        )
        with self._lock:
            if self._term != term:
                return  # stepped down meanwhile
            self._dispatcher = dispatcher
        dispatcher.start()
        log.info("job runner leads", extra={"controller": self.controller_id})

    def step_down(self) -> None:
        """Stop dispatching: another controller leads (or will). Nothing new starts
        here, and the jobs running here are canceled: the new leader sees them as
        ``lost`` and may start jobs on the same hosts, so a playbook left running would
        no longer be serialized with them. Each canceled run still records its outcome
        (``canceled``, naming this controller) when the store takes it and the job is
        not marked ``lost`` already (compare-and-set on the job's controller). Returns
        at once; the runs end on their own threads within seconds."""
        with self._lock:
            if not self._leading:
                return
            self._leading = False
            self._term += 1
            running = list(self._running.values())
            for run in running:
                run.stopped_because = (
                    f"canceled: controller {self.controller_id} stopped leading while the "
                    "job ran; it was not re-run"
                )
                run.cancel.set()
            self._lock.notify_all()
        log.log(
            logging.WARNING if running else logging.INFO,  # jobs canceled: worth a warning
            "job runner stepped down",
            extra={"controller": self.controller_id, "canceled_jobs": [r.job_id for r in running]},
        )

    def close(self, *, timeout_s: float = 15.0) -> None:
        """Stop dispatching and cancel running jobs (they end as ``canceled``)."""
        with self._lock:
            self._stopping = True
            self._leading = False
            self._term += 1
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
        """Validate and queue a playbook run; returns the job (``pending``). Any
        controller takes it; the leader runs it.

        Raises InvalidSpec (naming the field) for a bad playbook, limit or extra var,
        Conflict when the controller has no playbook directory or inventory, and Busy
        when ``max_pending`` jobs already wait (counted in the store, over every
        controller; two controllers submitting at the same moment may pass it by one).
        """
        waiting = self.jobs.count(JobStatus.PENDING)
        if waiting >= self.max_pending:
            raise Busy(
                f"{waiting} jobs already wait to run (max_pending_jobs); "
                "submit again once some have run"
            )
        playbook_dir, _ = self._configured()
        resolve_playbook(playbook_dir, playbook)
        limit = check_limit(limit)
        extra = check_extra_vars(dict(extra_vars or {}))
        if self._stopping:
            raise Conflict("the controller is shutting down; submit the job again")
        job = self.jobs.create(
            job_id=new_job_id(),
            playbook=str(PurePosixPath(playbook)),
            limit=limit,
            extra_vars=extra,
            reason=reason,
        )
        self._notify()
        log.info("job queued", extra={"job": job.id, "playbook": job.playbook, "limit": limit})
        return job

    def cancel(self, job_id: str) -> Job:
        """Cancel a pending job now, or ask a running one to stop (it ends ``canceled``):
        here when this controller runs it, else through the store, where the controller
        running it finds the request on its next poll."""
        job = self.jobs.get(job_id)
        if job.status == JobStatus.PENDING:
            canceled = self.jobs.cancel_pending(job_id)
            if canceled is not None:
                self._notify()  # a job it held back may start now
                return canceled
            job = self.jobs.get(job_id)  # it started meanwhile
        with self._lock:
            run = self._running.get(job_id)
            if run is not None:
                run.cancel.set()
                return self.jobs.get(job_id)
        if job.status.finished:
            raise Conflict(f"job {job_id} already finished ({job.status.value})")
        return self.jobs.request_cancel(job_id)

    def get(self, job_id: str) -> Job:
        return self.jobs.get(job_id)

    def list_jobs(self, *, status: JobStatus | None = None, limit: int = 100) -> list[Job]:
        return self.jobs.list_jobs(status=status, limit=limit)

    def events(self, job_id: str, *, after: int = 0, limit: int = 1000) -> list[JobEvent]:
        return self.jobs.events(job_id, after=after, limit=limit)

    def output_tail(self, job_id: str, *, limit: int) -> tuple[list[JobEvent], bool]:
        """The last ``limit`` events with output, and whether earlier ones were cut."""
        return self.jobs.output_tail(job_id, limit=limit)

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

    def _notify(self) -> None:
        with self._lock:
            self._wake = True
            self._lock.notify_all()

    def _current(self, term: int) -> bool:
        return self._term == term and self._leading and not self._stopping

    def _settle(self, term: int) -> None:
        """Mark the jobs other controllers left running ``lost``, fail this one's."""
        with self._lock:
            keep = set(self._running)  # still running here from an earlier term
        with self._fence():
            lost, failed = self.jobs.take_over(
                controller=self.controller_id, keep=keep, interrupted=INTERRUPTED
            )
        for job in lost:
            log.warning("job lost with its controller", extra={"job": job.id, "error": job.error})
        for job in failed:
            log.warning("job interrupted by a restart", extra={"job": job.id})
        with self._lock:
            if self._term == term:
                self._settled = True

    def _dispatch_forever(self, term: int) -> None:
        while True:
            with self._lock:
                if not self._current(term):
                    return
            try:
                if not self._settled:
                    self._settle(term)
                self._dispatch_once(term)
            except Fenced as exc:
                log.warning("job dispatch refused: not the leader", extra={"error": str(exc)})
            except OrchestrifyError as exc:  # the store out of reach: try again next round
                log.warning("job dispatch failed; retrying", extra={"error": str(exc)})
            except Exception:  # the dispatcher must outlive any one bad round
                log.exception("job dispatch failed; retrying")
            with self._lock:
                if not self._wake and self._current(term):
                    self._lock.wait(self.poll_s)
                self._wake = False

    def _dispatch_once(self, term: int) -> None:
        """One round: pass on cancels asked through the store, then start, in order,
        each pending job whose hosts nothing running or older holds."""
        with self._lock:
            local = dict(self._running)
        if local:
            for job_id in self.jobs.cancel_requests(controller=self.controller_id):
                if job_id in local:
                    local[job_id].cancel.set()
        if len(local) >= self.max_running:
            return  # a job ending wakes the dispatcher again
        pending = self.jobs.pending(limit=max(self.max_pending, 1000))
        if not pending:
            return
        unresolved = [j for j in pending if j.hosts is None]
        resolved = self._resolve_hosts(unresolved) if unresolved else {}
        busy = [r.hosts for r in local.values()]
        for job_id, held in self.jobs.running_hosts().items():
            if job_id not in local:  # a run another controller has not settled yet
                busy.append(frozenset(held if held is not None else [EVERY_HOST]))
        for job in pending:
            if len(local) >= self.max_running:
                break
            hosts = resolved.get(job.id)
            if hosts is None:
                hosts = frozenset(job.hosts if job.hosts is not None else [EVERY_HOST])
            if any(overlaps(hosts, other) for other in busy):
                busy.append(hosts)  # it keeps its place ahead of later jobs
                continue
            busy.append(hosts)
            with self._lock:
                if not self._current(term):
                    return
            try:
                with self._fence():
                    started = self.jobs.mark_running(job.id, controller=self.controller_id)
            except Conflict as exc:  # canceled, or started elsewhere: not ours
                if isinstance(exc, Fenced):
                    raise
                log.info("job not started", extra={"job": job.id, "error": str(exc)})
                continue
            run = _Running(job.id, hosts)
            with self._lock:
                self._running[job.id] = run
                local[job.id] = run
                if not self._current(term):  # stepped down while it was being started
                    run.stopped_because = (
                        f"canceled: controller {self.controller_id} stopped leading as the "
                        "job started; it was not re-run"
                    )
                    run.cancel.set()
            run.thread = threading.Thread(
                target=self._run_job, args=(run, started), name=f"job-{job.id}", daemon=True
            )
            run.thread.start()

    def _resolve_hosts(self, unresolved: list[Job]) -> dict[str, frozenset[str]]:
        inventory: Inventory | None = None
        if any(j.limit is not None for j in unresolved):
            try:
                inventory = read_inventory(self._configured()[1])
            except OrchestrifyError as exc:
                log.warning("cannot resolve job hosts; jobs wait for all others", exc_info=exc)
        resolved: dict[str, frozenset[str]] = {}
        for job in unresolved:
            hosts = (
                inventory.resolve(job.limit) if inventory is not None else frozenset({EVERY_HOST})
            )
            with self._fence():
                self.jobs.set_hosts(job.id, hosts)
            resolved[job.id] = hosts
        return resolved

    def _job_done(self, run: _Running) -> None:
        with self._lock:
            self._running.pop(run.job_id, None)
            self._wake = True
            self._lock.notify_all()

    # --- one run -------------------------------------------------------------------
    def _run_job(self, run: _Running, job: Job) -> None:
        """Run a job this controller started and record its outcome, unless another
        controller (the new leader) marked it ``lost`` meanwhile."""
        status: JobStatus
        rc: int | None
        error: str | None
        stats: dict[str, HostStats] | None = None
        try:
            if run.cancel.is_set():
                status, rc, error = JobStatus.CANCELED, None, run.stopped_because or "canceled"
            else:
                log.info("job started", extra={"job": job.id, "playbook": job.playbook})
                status, rc, error, stats = self._run_playbook(job, run.cancel)
                if status == JobStatus.CANCELED and run.stopped_because:
                    error = run.stopped_because
        except Exception as exc:  # a job's failure must never kill the dispatcher
            log.exception("job crashed", extra={"job": run.job_id})
            status, rc, error, stats = JobStatus.FAILED, None, f"could not run: {exc}", None
        try:
            job = self.jobs.finish(
                run.job_id,
                status=status,
                rc=rc,
                error=error,
                stats=stats,
                controller=self.controller_id,
            )
            log.info("job finished", extra={"job": job.id, "status": status.value, "rc": rc})
        except OrchestrifyError as exc:  # lost meanwhile, or the store is out of reach
            log.warning(
                "job outcome not recorded",
                extra={"job": run.job_id, "status": status.value, "error": str(exc)},
            )
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
