"""``Leadership`` on both engines: one of two controllers leads, a frozen leader is
replaced with the next epoch and its writes are fenced, it steps down when it finds out,
a stopped leader hands over at once, a restart alone on its store leads at once, and a
leader that cannot reach the database steps down by its own deadline."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from orchestrify.controller.leadership import Leadership
from orchestrify.errors import Fenced, StoreUnavailable
from orchestrify.store import Store
from orchestrify.store.engine import Fence
from orchestrify.store.leases import LeaseStore, LeaseTerm

TIMEOUT_S = 30.0  # only guards a hang: the machine is busy


async def until(check: Callable[[], bool], *, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


class Terms:
    """The hooks' record: which fences were started and stopped."""

    def __init__(self) -> None:
        self.elected: list[Fence] = []
        self.deposed: list[Fence] = []

    def hooks(self) -> dict[str, Callable[[Fence], Awaitable[None]]]:
        async def elected(fence: Fence) -> None:
            self.elected.append(fence)

        async def deposed(fence: Fence) -> None:
            self.deposed.append(fence)

        return {"on_elected": elected, "on_deposed": deposed}


def leadership(store: Store, name: str, terms: Terms, **kw: object) -> Leadership:
    return Leadership(
        store,
        controller_id=name,
        url=f"http://{name}",
        lease_s=kw.pop("lease_s", 0.9),
        **terms.hooks(),
        **kw,  # type: ignore[arg-type]
    )


def test_a_frozen_leader_is_replaced_and_fenced_and_steps_down_when_it_wakes(
    store_url: str,
) -> None:
    async def scenario() -> None:
        stores = [Store(store_url), Store(store_url)]  # two controllers, two processes
        ta, tb = Terms(), Terms()
        # 3 s: renewals every second ride out a busy machine's stalls.
        a = leadership(stores[0], "a", ta, lease_s=3.0)
        b = leadership(stores[1], "b", tb, lease_s=3.0)
        try:
            await a.start()
            await b.start()
            assert (a.is_leader, b.is_leader) == (True, False)
            assert (
                a.epoch == 1 and ta.elected == [Fence("a", 1)] and a.current_fence == Fence("a", 1)
            )
            await until(lambda: a.renewals >= 2, what="a to renew twice")
            assert (a.is_leader, b.is_leader) == (True, False)
            await a.pause()  # a freezes: no more renewals
            await until(lambda: b.is_leader, what="b to take the lease")
            assert b.epoch == 2 and tb.elected == [Fence("b", 2)]
            # a still believes it leads; what its loops write is refused.
            assert a.is_leader
            with a.fence(), pytest.raises(Fenced):
                stores[0].record_event("a late decision", kind="decision")
            assert not [e for e in stores[1].list_events() if e.message == "a late decision"]
            a.resume()  # a wakes up: its renewal is refused, it steps down
            await until(lambda: not a.is_leader, what="a to step down")
            assert ta.deposed == [Fence("a", 1)] and a.epoch is None
            with pytest.raises(Fenced), a.fence():
                pass
            await asyncio.sleep(b.lease_s)
            assert (a.is_leader, b.is_leader) == (False, True)
        finally:
            await a.stop()
            await b.stop()
            for s in stores:
                s.close()

    asyncio.run(scenario())


def test_a_stopped_leader_hands_over_without_waiting_for_its_lease(store_url: str) -> None:
    async def scenario() -> None:
        stores = [Store(store_url), Store(store_url)]
        ta, tb = Terms(), Terms()
        # A lease far longer than the test: only the release lets b lead.
        a = leadership(stores[0], "a", ta, lease_s=600.0)
        # b's own lease_s only sets how often it tries: every 0.2 s.
        b_fast = leadership(stores[1], "b", tb, lease_s=0.6)
        try:
            await a.start()
            await b_fast.start()
            assert a.is_leader and not b_fast.is_leader
            await a.stop()
            assert ta.deposed == [Fence("a", 1)]
            await until(lambda: b_fast.is_leader, what="b to lead once a released the lease")
            assert b_fast.epoch == 2
        finally:
            await a.stop()
            await b_fast.stop()
            for s in stores:
                s.close()

    asyncio.run(scenario())


def test_a_restart_leads_at_once(store_url: str) -> None:
    """A controller alone on its store leads as soon as ``start`` returns: over a lease
    its own previous run left (its id), and with ``take_over_at_start`` (SQLite: one
    host, one controller) over any lease at all."""

    async def scenario() -> None:
        store = Store(store_url)
        leases = LeaseStore(store)
        try:
            leases.acquire("me", lease_s=600, url=None, version="old")  # a crash left it
            again = leadership(store, "me", Terms(), lease_s=600.0)
            await again.start()
            assert again.is_leader and again.epoch == 2
            await again.pause()  # crashes: the lease stays held
            other = leadership(store, "other", Terms(), lease_s=600.0)
            await other.start()
            assert not other.is_leader  # another controller's lease is waited out
            await other.stop()
            alone = leadership(store, "other", Terms(), lease_s=600.0, take_over_at_start=True)
            await alone.start()
            assert alone.is_leader and alone.epoch == 3
            await alone.stop()
            await again.stop()
        finally:
            store.close()

    asyncio.run(scenario())


class HangingLeases:
    """A lease store whose renewals hang (the database unreachable) once ``hang`` is set."""

    def __init__(self) -> None:
        self.hang = threading.Event()
        self.answer = threading.Event()
        self.renewals = 0

    def announce(self, controller_id: str, **_: object) -> None:
        pass

    def acquire(self, controller_id: str, **_: object) -> LeaseTerm | None:
        now = datetime.now(UTC)
        return LeaseTerm(controller_id, 7, now, now + timedelta(seconds=1))

    def renew(self, controller_id: str, **_: object) -> datetime | None:
        self.renewals += 1
        if self.hang.is_set():
            self.answer.wait(TIMEOUT_S)
            raise StoreUnavailable("the database did not answer")
        return datetime.now(UTC) + timedelta(seconds=1)

    def release(self, controller_id: str, **_: object) -> bool:
        return False


def test_a_leader_that_cannot_reach_the_database_steps_down_by_its_deadline(
    tmp_path: Path,
) -> None:
    """It does not wait for the database to answer (a partition can hold a connection
    for long): once its lease would have ended, it stops leading."""

    async def scenario() -> None:
        store = Store(f"sqlite:///{tmp_path / 'unused.db'}")
        terms = Terms()
        leader = leadership(store, "a", terms, lease_s=0.9)
        fake = HangingLeases()
        leader.leases = fake  # type: ignore[assignment]
        try:
            await leader.start()
            assert leader.is_leader
            await until(lambda: fake.renewals >= 2, what="two renewals")
            assert leader.is_leader
            fake.hang.set()
            await until(lambda: not leader.is_leader, what="the leader to step down")
            assert not fake.answer.is_set()  # the renewal it sent is still unanswered
            assert terms.deposed == [Fence("a", 7)]
        finally:
            fake.answer.set()
            await leader.stop()
            store.close()

    asyncio.run(scenario())
