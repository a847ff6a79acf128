"""Leader election among the controllers that share one store, and the fence of the
leader's writes.

Every controller serves the API; one, the leader, runs the loops that decide (the
reconciler with node liveness and rescheduling, alert decisions and scaling, history
pruning, the job runner). ``Leadership`` tries to take the lease (a row in the store,
see :mod:`orchestrify.store.leases`) every ``lease_s / 3`` and, once it holds it, renews
it as often. It stops leading at once when a renewal is refused, and when no renewal
got through before its lease ends: that deadline is measured on this process's
monotonic clock from the moment the renewal was sent, which is never later than the
end the database wrote, so a partitioned leader stops acting no later than the database
thinks its lease expired.

The loops of one term run under that term's ``Fence`` (``Leadership.fence()``): each of
their store writes checks, in its own transaction, that the lease is still held at the
term's epoch, so a deposed leader that wakes up late writes nothing (``Fenced``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from typing import Any

from orchestrify import __version__
from orchestrify.errors import Fenced, OrchestrifyError
from orchestrify.store.engine import Fence, StoreCore, fenced
from orchestrify.store.leases import LeaseStore, LeaseTerm

__all__ = ["Leadership", "TermHook"]

log = logging.getLogger(__name__)
STOPPING = "controller stopping"  # the reason a clean stop steps down with

# Called when this controller is elected (with the term's fence) or stops leading.
TermHook = Callable[[Fence], Awaitable[None]]


class Leadership:
    """This controller's part in the election: ``is_leader``, ``epoch`` (of the current
    term, None while it follows) and the hooks that start and stop the leader's loops.

    ``start()`` makes the first attempt before it returns (so a controller alone on its
    store leads as soon as it serves), then keeps trying or renewing in a task;
    ``stop()`` ends the current term (its loops stopped first) and releases the lease
    so another controller takes over without waiting for it to expire.
    """

    def __init__(
        self,
        store: StoreCore,
        *,
        controller_id: str,
        url: str | None,
        lease_s: float,
        on_elected: TermHook | None = None,
        on_deposed: TermHook | None = None,
        take_over_at_start: bool = False,
        version: str = __version__,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.leases = LeaseStore(store)
        self.controller_id = controller_id
        self.url = url
        self.lease_s = lease_s
        self.on_elected = on_elected
        self.on_deposed = on_deposed
        # SQLite: one host, one controller, so a lease left by whatever ran before is
        # taken at once. Elsewhere only a lease of this controller's own id is (a run of
        # it before a restart); one of another controller is waited out.
        self.take_over_at_start = take_over_at_start
        self.version = version
        self.clock = clock
        self.is_leader = False
        self.epoch: int | None = None
        self.leader_since: float | None = None  # on ``clock``
        self.renewals = 0  # renewals that got through in the current term
        self._term: Fence | None = None
        self._deadline = 0.0  # on ``clock``: when this process stops trusting its lease
        self._abandoned: int | None = None  # a term of ours we stepped down from
        self._first = True
        self._task: asyncio.Task[None] | None = None
        self._attempt: asyncio.Future[LeaseTerm | datetime | None] | None = None
        self._attempt_leading = False  # whether ``_attempt`` is a renewal

    @property
    def renew_interval_s(self) -> float:
        return self.lease_s / 3

    @property
    def current_fence(self) -> Fence | None:
        """The fence of the current term (None while following)."""
        return self._term if self.is_leader else None

    @contextlib.contextmanager
    def fence(self) -> Iterator[Fence]:
        """Make every store write in the block (and in the tasks and threads started
        from it, which copy its context) a write of the current term: refused with
        ``Fenced`` once that term is over. ``Fenced`` at once while following."""
        term = self.current_fence
        if term is None:
            raise Fenced(f"controller {self.controller_id} does not lead")
        with fenced(term):
            yield term

    # --- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        """Say this controller started, make the first attempt, then keep at it."""
        try:
            await asyncio.to_thread(
                self.leases.announce, self.controller_id, url=self.url, version=self.version
            )
            await self._step()
        except OrchestrifyError as exc:  # the store is down: the loop keeps trying
            log.warning("leader election: first attempt failed", extra={"error": str(exc)})
        self._task = asyncio.create_task(self._run(), name="leadership")

    async def stop(self) -> None:
        """Stop trying; end the current term (loops first) and release the lease."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        term = self._term if self.is_leader else None
        await self._step_down(STOPPING)
        if term is not None:
            try:
                await asyncio.to_thread(self.leases.release, self.controller_id, epoch=term.epoch)
            except OrchestrifyError as exc:
                log.warning("could not release the leader lease", extra={"error": str(exc)})

    async def pause(self) -> None:
        """Stop renewing and trying, without stepping down: a controller that froze
        (for drills and tests). It keeps believing it leads and its loops keep running
        until ``resume`` lets it find out; once another controller is elected, every
        write they make is refused (``Fenced``)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def resume(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="leadership")

    # --- the loop ------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            if self.is_leader:
                wait = min(self.renew_interval_s, max(0.0, self._deadline - self.clock()))
            else:
                wait = self.renew_interval_s
            await asyncio.sleep(wait)
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one failed attempt end the election
                log.exception("leader election: attempt failed; trying again")

    async def _step(self) -> None:
        """One attempt: renew while leading (stepping down when refused or late), else
        try to acquire."""
        if self.is_leader and self.clock() >= self._deadline:
            await self._step_down("the lease ended before a renewal got through")
        sent = self.clock()
        if self._attempt is None:  # one still running (a hung database) is waited for
            call = self._renew if self.is_leader else self._acquire
            self._attempt = asyncio.ensure_future(asyncio.to_thread(call))
            # Its error is read in ``_step``, or by no one when the controller stops first.
            self._attempt.add_done_callback(_read_error)
            self._attempt_leading = self.is_leader
        attempt, leading = self._attempt, self._attempt_leading
        timeout = max(0.0, self._deadline - sent) if self.is_leader else None
        done, _ = await asyncio.wait({attempt}, timeout=timeout)
        if not done:  # the database did not answer before our lease ends
            await self._step_down("the database did not answer before the lease ended")
            return
        self._attempt = None
        try:
            result = attempt.result()
        except OrchestrifyError as exc:
            log.warning("leader election: the store refused the attempt", extra={"error": str(exc)})
            if leading and self.clock() >= self._deadline:
                await self._step_down("the lease ended before a renewal got through")
            return
        if leading != self.is_leader:
            # A renewal sent before this controller stepped down (it gave up waiting):
            # whatever it got, that term is over here (``_abandoned`` names it).
            return
        if isinstance(result, LeaseTerm):
            await self._elected(result, sent=sent)
        elif isinstance(result, datetime):  # renewed: trust it lease_s from when we asked
            self._deadline = sent + self.lease_s
            self.renewals += 1
        elif leading:
            await self._step_down("the lease was renewed by no one: another controller leads")

    def _acquire(self) -> LeaseTerm | None:
        # Until the database first answered, a lease of our own id is a previous run's.
        term = self.leases.acquire(
            self.controller_id,
            lease_s=self.lease_s,
            url=self.url,
            version=self.version,
            reclaim_own=self._first,
            reclaim_epoch=self._abandoned,
            force=self._first and self.take_over_at_start,
        )
        self._first = False
        return term

    def _renew(self) -> datetime | None:
        assert self._term is not None
        return self.leases.renew(
            self.controller_id,
            epoch=self._term.epoch,
            lease_s=self.lease_s,
            url=self.url,
            version=self.version,
        )

    async def _elected(self, term: LeaseTerm, *, sent: float) -> None:
        self._term = Fence(holder=self.controller_id, epoch=term.epoch)
        self._deadline = sent + self.lease_s
        self._abandoned = None
        self.is_leader = True
        self.epoch = term.epoch
        self.renewals = 0
        self.leader_since = self.clock()
        log.info(
            "elected leader",
            extra={"controller_id": self.controller_id, "epoch": term.epoch},
        )
        if self.on_elected is not None:
            try:
                await self.on_elected(self._term)
            except Exception:
                log.exception("starting the leader's loops failed; stepping down")
                await self._step_down("the leader's loops could not start")

    async def _step_down(self, why: str) -> None:
        if not self.is_leader:
            return
        term = self._term
        assert term is not None
        self.is_leader = False
        self.epoch = None
        self.leader_since = None
        self._abandoned = term.epoch
        # A clean stop is routine; losing the lease while running is worth a warning.
        log.log(
            logging.INFO if why == STOPPING else logging.WARNING,
            "stepped down as leader",
            extra={"controller_id": self.controller_id, "epoch": term.epoch, "reason": why},
        )
        if self.on_deposed is not None:
            try:
                await self.on_deposed(term)
            except Exception:
                log.exception("stopping the leader's loops failed")


def _read_error(attempt: asyncio.Future[Any]) -> None:
    """Mark an attempt's error as read (asyncio logs an unread one as a bug)."""
    if not attempt.cancelled():
        attempt.exception()
