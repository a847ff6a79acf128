"""Jobs with several controllers on one store: the queue in the store, one leader runs
the jobs, a start is a compare-and-set, a new leader marks a dead leader's jobs lost.

Every test runs on both engines (``store_url``). Two ``JobRunner``s on two ``Store``s of
one database stand for two controllers; their playbook run is a fake (the real one is
in tests/controller/test_jobs_api.py) that holds the job until the test lets it go.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrify.errors import Busy, Conflict, Fenced
from orchestrify.jobs.hosts import Inventory
from orchestrify.jobs.models import HostStats, Job, JobStatus
from orchestrify.jobs.runner import JobRunner
from orchestrify.store import Store
from orchestrify.store.jobs import JobStore

WAIT_S = 30.0  # generous: the machine is shared; no test asserts a duration


class FakeRunner(JobRunner):
    """A JobRunner whose playbook run records the job and waits for ``release`` (or a
    cancel) instead of starting ansible-playbook."""

    def __init__(self, store: Store, lab: Path, **kwargs: Any) -> None:
        super().__init__(
            store,
            playbook_dir=lab / "playbooks",
            inventory=lab / "hosts.ini",
            jobs_dir=lab / f"jobs-{kwargs.get('controller_id')}",
            poll_s=0.1,
            **kwargs,
        )
        self.ran: list[str] = []
        self.release = threading.Event()

    def _run_playbook(
        self, job: Job, cancel: threading.Event
    ) -> tuple[JobStatus, int | None, str | None, dict[str, HostStats] | None]:
        self.ran.append(job.id)
        while not self.release.is_set():
            if cancel.wait(0.05):
                return JobStatus.CANCELED, None, "canceled", None
        return JobStatus.SUCCESSFUL, 0, None, None


def wait_until(what: Callable[[], bool], *, label: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not what():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {label}")
        time.sleep(0.05)


def status(runner: JobRunner, job_id: str) -> JobStatus:
    return runner.get(job_id).status


@pytest.fixture(autouse=True)
def inventory_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lab's inventory without an ansible-inventory process (seconds each here)."""
    inventory = Inventory({"web": ["a", "b"]}, ["a", "b"])
    monkeypatch.setattr("orchestrify.jobs.runner.read_inventory", lambda _path: inventory)


@pytest.fixture
def lab(tmp_path: Path) -> Path:
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "site.yml").write_text("- hosts: all\n  tasks: []\n")
    (tmp_path / "hosts.ini").write_text("[web]\na\nb\n")
    return tmp_path


@pytest.fixture
def two_stores(store_url: str) -> Iterator[tuple[Store, Store]]:
    """Two controllers' stores on one database."""
    a, b = Store(store_url), Store(store_url)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.fixture
def runners(two_stores: tuple[Store, Store], lab: Path) -> Iterator[tuple[FakeRunner, FakeRunner]]:
    """Controller A (not leading unless a test says so) and controller B."""
    a = FakeRunner(two_stores[0], lab, controller_id="ctl-a")
    b = FakeRunner(two_stores[1], lab, controller_id="ctl-b")
    try:
        yield a, b
    finally:
        for r in (a, b):
            r.release.set()
            r.close()


PENDING = "(pending)"


def _job(store: Store, job_id: str, *, running_on: str | None = PENDING) -> None:
    """A stored job: pending, or running on a controller (None: on one not recorded)."""
    jobs = JobStore(store)
    jobs.create(job_id=job_id, playbook="site.yml", limit="a", extra_vars={}, reason="test")
    if running_on != PENDING:
        jobs.mark_running(job_id, controller=running_on)


# --- the store -------------------------------------------------------------------
def test_a_start_is_a_compare_and_set_that_names_the_controller(
    two_stores: tuple[Store, Store],
) -> None:
    a, b = two_stores
    _job(a, "j1")
    started = JobStore(a).mark_running("j1", controller="ctl-a")
    assert started.status == JobStatus.RUNNING and started.controller == "ctl-a"
    with pytest.raises(Conflict):
        JobStore(b).mark_running("j1", controller="ctl-b")
    assert JobStore(b).get("j1").controller == "ctl-a"


def test_a_new_leader_marks_another_controllers_running_jobs_lost(
    two_stores: tuple[Store, Store],
) -> None:
    a, b = two_stores
    _job(a, "dead1", running_on="ctl-a")
    _job(a, "mine1", running_on="ctl-b")  # a previous run of the new leader itself
    _job(a, "old1", running_on=None)  # started by a build that recorded no controller
    _job(a, "kept1", running_on="ctl-b")  # still running in the new leader's process
    _job(a, "wait1")

    lost, failed = JobStore(b).take_over(controller="ctl-b", keep={"kept1"}, interrupted="gone")

    assert [j.id for j in lost] == ["dead1"]
    dead = JobStore(b).get("dead1")
    assert dead.status == JobStatus.LOST and dead.status.finished
    assert dead.controller == "ctl-a"
    assert dead.error is not None
    assert "ctl-a" in dead.error and "not re-run" in dead.error
    assert dead.finished_at is not None
    assert {j.id for j in failed} == {"mine1", "old1"}
    assert JobStore(b).get("mine1").error == "gone"
    assert JobStore(b).get("kept1").status == JobStatus.RUNNING
    assert JobStore(b).get("wait1").status == JobStatus.PENDING
    trail = [e for e in b.list_events() if e.action == "job_finish" and e.data["job"] == "dead1"]
    assert len(trail) == 1 and trail[0].data["status"] == "lost"


def test_a_deposed_leader_cannot_overwrite_lost_with_its_outcome(
    two_stores: tuple[Store, Store],
) -> None:
    a, b = two_stores
    _job(a, "j1", running_on="ctl-a")
    JobStore(b).take_over(controller="ctl-b", interrupted="gone")
    with pytest.raises(Conflict):
        JobStore(a).finish("j1", status=JobStatus.SUCCESSFUL, rc=0, error=None, controller="ctl-a")
    assert JobStore(a).get("j1").status == JobStatus.LOST


# --- two runners on one store ------------------------------------------------------
def test_a_job_submitted_to_a_follower_is_run_by_the_leader(
    runners: tuple[FakeRunner, FakeRunner],
) -> None:
    a, b = runners
    b.lead()
    job = a.submit(playbook="site.yml", limit="a")  # A does not lead: it only stores it
    assert job.status == JobStatus.PENDING
    wait_until(lambda: job.id in b.ran, label="the leader runs the job")
    assert a.get(job.id).controller == "ctl-b"
    b.release.set()
    wait_until(lambda: status(a, job.id) == JobStatus.SUCCESSFUL, label="the job succeeds")
    assert a.ran == []


def test_jobs_on_one_host_still_run_one_after_the_other_across_controllers(
    runners: tuple[FakeRunner, FakeRunner],
) -> None:
    a, b = runners
    b.lead()
    first = a.submit(playbook="site.yml", limit="a")
    wait_until(lambda: first.id in b.ran, label="the first job runs")
    second = b.submit(playbook="site.yml", limit="a")
    other = a.submit(playbook="site.yml", limit="b")
    wait_until(lambda: other.id in b.ran, label="a job on another host runs at once")
    assert status(b, second.id) == JobStatus.PENDING  # its host is still held
    b.release.set()
    wait_until(lambda: status(b, second.id) == JobStatus.SUCCESSFUL, label="the second one runs")


def test_max_pending_counts_pending_jobs_of_every_controller(
    two_stores: tuple[Store, Store], lab: Path
) -> None:
    a = FakeRunner(two_stores[0], lab, controller_id="ctl-a", max_pending=2)
    b = FakeRunner(two_stores[1], lab, controller_id="ctl-b", max_pending=2)
    a.submit(playbook="site.yml")
    b.submit(playbook="site.yml")
    with pytest.raises(Busy):
        a.submit(playbook="site.yml")
    assert len(a.list_jobs(status=JobStatus.PENDING)) == 2


def test_a_new_leader_marks_the_dead_leaders_job_lost_and_does_not_rerun_it(
    runners: tuple[FakeRunner, FakeRunner],
) -> None:
    a, b = runners
    a.lead()
    job = a.submit(playbook="site.yml", limit="a")
    wait_until(lambda: job.id in a.ran, label="leader A runs the job")
    # A "dies": it never steps down; B is elected.
    b.lead()
    lost = b.get(job.id)
    assert lost.status == JobStatus.LOST
    assert lost.controller == "ctl-a"
    assert lost.error is not None and "ctl-a" in lost.error
    later = b.submit(playbook="site.yml", limit="a")  # the lost job holds no host now
    wait_until(lambda: later.id in b.ran, label="the new leader runs new jobs")
    assert job.id not in b.ran
    # A wakes up late and its run ends: the outcome is refused, the job stays lost.
    a.release.set()
    wait_until(lambda: not a._running, label="A's run ends")
    assert status(b, job.id) == JobStatus.LOST


def test_step_down_stops_dispatching_and_cancels_running_jobs(
    runners: tuple[FakeRunner, FakeRunner],
) -> None:
    a, _b = runners
    a.lead()
    job = a.submit(playbook="site.yml", limit="a")
    wait_until(lambda: job.id in a.ran, label="the job runs")
    dispatcher = a._dispatcher
    a.step_down()
    assert not a.leading
    wait_until(lambda: status(a, job.id) == JobStatus.CANCELED, label="the job is canceled")
    done = a.get(job.id)
    assert done.error is not None and "ctl-a stopped leading" in done.error
    assert dispatcher is not None
    dispatcher.join(WAIT_S)
    assert not dispatcher.is_alive()
    queued = a.submit(playbook="site.yml", limit="b")  # accepted, but nobody here runs it
    assert status(a, queued.id) == JobStatus.PENDING and queued.id not in a.ran
    a.lead()  # leading again picks it up
    wait_until(lambda: queued.id in a.ran, label="the pending job runs once A leads again")


def test_cancel_asked_of_a_follower_stops_the_job_on_the_leader(
    runners: tuple[FakeRunner, FakeRunner],
) -> None:
    a, b = runners
    b.lead()
    running = a.submit(playbook="site.yml", limit="a")
    wait_until(lambda: running.id in b.ran, label="the leader runs the job")
    waiting = a.submit(playbook="site.yml", limit="a")
    assert a.cancel(waiting.id).status == JobStatus.CANCELED  # pending: canceled at once
    a.cancel(running.id)  # running on B: asked through the store
    wait_until(lambda: status(a, running.id) == JobStatus.CANCELED, label="B stops the job")
    assert waiting.id not in b.ran


def test_a_fenced_leader_starts_nothing(runners: tuple[FakeRunner, FakeRunner]) -> None:
    _a, b = runners
    refusals: list[int] = []

    @contextlib.contextmanager
    def deposed() -> Iterator[None]:
        refusals.append(1)
        raise Fenced("the lease was lost at epoch 3")
        yield  # pragma: no cover

    job = b.submit(playbook="site.yml", limit="a")
    b.lead(fence=deposed)
    wait_until(lambda: len(refusals) >= 3, label="the dispatcher tried a few times")
    assert status(b, job.id) == JobStatus.PENDING
    assert b.ran == []
