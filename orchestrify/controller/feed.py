"""The change feed behind long-polls: agents, edges and event followers wait here for a
new version.

Versions are opaque integers. On SQLite (one controller) they start from the clock at
every controller start, so a watcher that presents a version from before a restart
always gets a fresh answer. On PostgreSQL they are the database's commit sequence
(``orchestrify.store.listen``), the same on every controller: a watcher that fails over
presents a version the next controller understands. Its own writes ``advance`` the feed
after they commit, the change listener those of the other controllers.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable

from orchestrify.store import Store
from orchestrify.store.listen import ChangeListener

# How often the change listener reads the commit sequence whatever it was told: the
# safety net for a lost notification (watchers also resync on their own).
RESYNC_S = 30.0


class ChangeFeed:
    """Four counters: ``spec`` (what nodes must run), ``nodes`` (the fleet's membership
    and node states: a registration wakes the scheduler, not every agent's long-poll),
    ``state`` (anything observed) and ``events`` (the audit trail).

    ``bump`` and ``advance`` may be called from any thread (store writes run in a thread
    pool, the change listener in its own); waiters live on the event loop given to
    ``bind``.
    """

    def __init__(self, *, start: int | None = None) -> None:
        """``start``: the first version of every kind (None: the clock in milliseconds)."""
        if start is None:
            start = time.time_ns() // 1_000_000
        self._versions = {"spec": start, "nodes": start, "state": start, "events": start}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Per kind, a future resolved (and replaced by a fresh one) at every change of
        # that kind: the thousand long-polls waiting on ``spec`` sleep through the reports
        # (``state``) and events written meanwhile, and none queues for a lock (an
        # asyncio.Condition hands its lock from one waiter to the next, one loop turn
        # each). Waiters never cancel it: ``asyncio.wait`` leaves it alone on timeout.
        self._changed: dict[str, asyncio.Future[None]] = {}
        self._event_watchers: list[Callable[[], None]] = []
        self.closed = False
        self.wakeups = 0  # times a waiter woke before its deadline (for tests)

    def on_events(self, watcher: Callable[[], None]) -> None:
        """Call ``watcher`` (from any thread; it must not block) whenever the ``events``
        version moves: the leader's alert loop looks for alerts another controller
        stored at once, not at its next poll."""
        self._event_watchers.append(watcher)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._changed = {kind: loop.create_future() for kind in self._versions}

    def version(self, kind: str) -> int:
        return self._versions[kind]

    def bump(self, kinds: set[str]) -> None:
        with self._lock:
            for kind in kinds:
                self._versions[kind] += 1
            # A change of what must run, or of the nodes, is also a change of state.
            implied = [self._versions[k] for k in ("spec", "nodes") if k in kinds]
            if implied:
                self._versions["state"] = max(self._versions["state"], *implied) + 1
        self._wake(frozenset(kinds) | ({"state"} if implied else set()))

    def advance(self, kinds: set[str], version: int) -> None:
        """Each of ``kinds`` is at ``version`` now, unless it is there already: versions
        shared by every controller (the commit sequence), told in any order, by this
        controller's writes and by its change listener alike."""
        changed = set()
        with self._lock:
            for kind in kinds:
                if kind in self._versions and self._versions[kind] < version:
                    self._versions[kind] = version
                    changed.add(kind)
        if changed:
            self._wake(frozenset(changed))
            if "events" in kinds:
                for watcher in self._event_watchers:
                    watcher()

    def _wake(self, kinds: frozenset[str]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            # The loop may close between the check and the call (a shutdown).
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._notify, kinds)

    async def close(self) -> None:
        """Answer every waiting long-poll now: the server is shutting down."""
        self.closed = True
        self._notify(frozenset(self._versions))

    def _notify(self, kinds: frozenset[str]) -> None:
        """On the loop: wake the waiters of ``kinds`` (each one checks its versions
        again)."""
        loop = self._loop
        for kind in kinds:
            changed = self._changed.get(kind)
            if changed is not None and loop is not None:
                self._changed[kind] = loop.create_future()
                changed.set_result(None)

    async def wait(self, kind: str, since: int | None, timeout: float) -> int:
        """Return the current version at once if it differs from ``since``, else wait."""
        return (await self.wait_any((kind,), None if since is None else (since,), timeout))[0]

    def versions(self, kinds: tuple[str, ...]) -> tuple[int, ...]:
        return tuple(self._versions[k] for k in kinds)

    async def wait_any(
        self, kinds: tuple[str, ...], since: tuple[int, ...] | None, timeout: float
    ) -> tuple[int, ...]:
        """The versions of ``kinds`` now, at once if any differs from ``since``, else
        when one moves or after ``timeout`` seconds."""
        if since is None or self.versions(kinds) != since or not self._changed or self.closed:
            return self.versions(kinds)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.versions(kinds) == since and not self.closed:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            # Taken with the check above in one step of the loop: ``_notify`` (which runs
            # on the loop) resolves these very futures for any change made after it.
            changed = {self._changed[kind] for kind in kinds}
            done, _ = await asyncio.wait(
                changed, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            if done:
                self.wakeups += 1
        return self.versions(kinds)


def connect_feed(
    store: Store, *, resync_s: float = RESYNC_S
) -> tuple[ChangeFeed, ChangeListener | None]:
    """The feed told of every change committed to ``store``: by its own writes (after
    they commit) and, on PostgreSQL, by the returned change listener (to start with the
    app, stop before the store closes) for those of the other controllers."""
    if not store.shares_changes:
        feed = ChangeFeed()
        store.on_change(feed.bump)
        store.on_event(lambda _event: feed.bump({"events"}))
        return feed, None
    feed = ChangeFeed(start=store.change_sequence())
    store.on_commit(feed.advance)
    return feed, store.change_listener(feed.advance, resync_s=resync_s)
