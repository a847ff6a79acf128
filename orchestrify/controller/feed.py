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

from orchestrify.store import Store
from orchestrify.store.listen import ChangeListener

# How often the change listener reads the commit sequence whatever it was told: the
# safety net for a lost notification (watchers also resync on their own).
RESYNC_S = 30.0


class ChangeFeed:
    """Three counters: ``spec`` (what nodes must run), ``state`` (anything observed) and
    ``events`` (the audit trail).

    ``bump`` and ``advance`` may be called from any thread (store writes run in a thread
    pool, the change listener in its own); waiters live on the event loop given to
    ``bind``.
    """

    def __init__(self, *, start: int | None = None) -> None:
        """``start``: the first version of every kind (None: the clock in milliseconds)."""
        if start is None:
            start = time.time_ns() // 1_000_000
        self._versions = {"spec": start, "state": start, "events": start}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cond: asyncio.Condition | None = None
        self.closed = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._cond = asyncio.Condition()

    def version(self, kind: str) -> int:
        return self._versions[kind]

    def bump(self, kinds: set[str]) -> None:
        with self._lock:
            for kind in kinds:
                self._versions[kind] += 1
            if "spec" in kinds:  # a change of what must run is also a change of state
                self._versions["state"] = max(self._versions["state"], self._versions["spec"]) + 1
        self._wake()

    def advance(self, kinds: set[str], version: int) -> None:
        """Each of ``kinds`` is at ``version`` now, unless it is there already: versions
        shared by every controller (the commit sequence), told in any order, by this
        controller's writes and by its change listener alike."""
        changed = False
        with self._lock:
            for kind in kinds:
                if kind in self._versions and self._versions[kind] < version:
                    self._versions[kind] = version
                    changed = True
        if changed:
            self._wake()

    def _wake(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            # The loop may close between the check and the call (a shutdown).
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._notify()))

    async def close(self) -> None:
        """Answer every waiting long-poll now: the server is shutting down."""
        self.closed = True
        await self._notify()

    async def _notify(self) -> None:
        if self._cond is None:
            return
        async with self._cond:
            self._cond.notify_all()

    async def wait(self, kind: str, since: int | None, timeout: float) -> int:
        """Return the current version at once if it differs from ``since``, else wait."""
        if since is None or self._versions[kind] != since or self._cond is None or self.closed:
            return self._versions[kind]
        deadline = asyncio.get_running_loop().time() + timeout
        async with self._cond:
            while self._versions[kind] == since and not self.closed:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(self._cond.wait(), remaining)
                except TimeoutError:
                    break
        return self._versions[kind]


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
