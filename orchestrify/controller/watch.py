"""Agents' long-polls, each woken only when its own node's assignments change.

A thousand agents long-poll their assignments. Waiting on the feed's ``spec`` version,
every change of what must run (a service created or scaled, a replica placed) woke all
of them, and each one read the new view and compared its own node's assignments, found
most of them unchanged and waited again: a thousand task wake-ups per change, on the one
event loop that also answers the heartbeats.

``AssignmentWatch`` does that comparison once per change, for the nodes whose agents
wait: one task follows the ``spec`` version, reads every node's assignments once per
version (``ReadViews.assignments``, shared), and resolves the waiters of the nodes whose
assignments differ from those their agent was answered. The others sleep on.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from orchestrify.controller.feed import RESYNC_S, ChangeFeed
from orchestrify.controller.views import NodeAssignments, ReadViews
from orchestrify.errors import OrchestrifyError

__all__ = ["AssignmentWatch"]

log = logging.getLogger(__name__)

RETRY_S = 1.0
"""Seconds before the watch reads again after the store could not answer (the waiting
agents meanwhile time out and poll again, or are woken by the next read)."""


@dataclass(eq=False)
class _Waiter:
    future: asyncio.Future[bool]
    baseline: NodeAssignments | None
    """What its agent was answered (None: not by this controller)."""
    as_of: int
    """The ``spec`` version of ``baseline``: only a later version can wake it."""


def _same(a: NodeAssignments | None, b: NodeAssignments | None) -> bool:
    return a is b or a == b


class AssignmentWatch:
    """Every node's assignments as of the latest ``spec`` version read (``version``,
    ``view``), and the long-polls waiting for their node's to change."""

    def __init__(self, feed: ChangeFeed, views: ReadViews) -> None:
        self.feed = feed
        self.views = views
        self.version: int | None = None
        self.view: dict[str, NodeAssignments] = {}
        self._waiters: dict[str, list[_Waiter]] = {}
        self._moved = asyncio.Event()  # set (and replaced) each time ``version`` moves
        self.woken = 0  # waiters woken by a change of their node's assignments (for tests)

    @property
    def waiting(self) -> int:
        return sum(len(w) for w in self._waiters.values())

    async def run_forever(self) -> None:
        """Follow the ``spec`` version until cancelled (on every controller: each one
        answers its own agents' long-polls); answer every waiter when the feed closes."""
        since: int | None = None
        while True:
            current = await self.feed.wait("spec", since, RESYNC_S)
            if self.feed.closed:
                self._wake_all()
                self._moved.set()
                return
            if current == since:
                continue
            try:
                view = await self.views.assignments(current)
            except OrchestrifyError as exc:
                log.warning(
                    "assignments not read; the long-polls wait on", extra={"error": str(exc)}
                )
                await asyncio.sleep(RETRY_S)
                continue
            self.version, self.view = current, view
            self._moved.set()
            self._moved = asyncio.Event()
            self._dispatch(current)
            since = current

    async def caught_up(self, version: int, *, timeout: float) -> bool:
        """Wait until ``view`` is as of ``spec`` version ``version`` or later (True), for
        at most ``timeout`` seconds (False: it is not, e.g. the store does not answer)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.version is None or self.version < version:
            left = deadline - loop.time()
            if self.feed.closed or left <= 0:
                return False
            try:
                await asyncio.wait_for(self._moved.wait(), left)
            except TimeoutError:
                return False
        return True

    def _dispatch(self, version: int) -> None:
        for node_id, waiters in list(self._waiters.items()):
            now = self.view.get(node_id)
            for waiter in waiters:
                if version > waiter.as_of and not _same(now, waiter.baseline):
                    self._resolve(waiter, True)

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for waiter in waiters:
                self._resolve(waiter, False)

    def _resolve(self, waiter: _Waiter, changed: bool) -> None:
        if not waiter.future.done():
            waiter.future.set_result(changed)
            self.woken += changed

    async def wait(
        self, node_id: str, *, baseline: NodeAssignments | None, as_of: int, timeout: float
    ) -> bool:
        """Wait until node ``node_id``'s assignments, at a ``spec`` version later than
        ``as_of``, differ from ``baseline`` (True: they are ``view[node_id]`` at
        ``version``), or for ``timeout`` seconds or the feed's closing (False)."""
        if self.feed.closed:
            return False
        if (
            self.version is not None
            and self.version > as_of
            and not _same(self.view.get(node_id), baseline)
        ):
            return True  # changed before it came to wait
        loop = asyncio.get_running_loop()
        waiter = _Waiter(future=loop.create_future(), baseline=baseline, as_of=as_of)
        self._waiters.setdefault(node_id, []).append(waiter)
        try:
            done, _ = await asyncio.wait({waiter.future}, timeout=max(0.0, timeout))
            return bool(done) and waiter.future.result()
        finally:
            waiters = self._waiters.get(node_id, [])
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self._waiters.pop(node_id, None)
