"""The change feed behind long-polls: agents and edges wait here for a new version.

Versions are opaque integers that start from the clock at every controller start, so a
watcher that presents a version from before a restart always gets a fresh answer.
"""

from __future__ import annotations

import asyncio
import threading
import time


class ChangeFeed:
    """Two counters: ``spec`` (what nodes must run) and ``state`` (anything observed).

    ``bump`` may be called from any thread (store writes run in a thread pool); waiters
    live on the event loop given to ``bind``.
    """

    def __init__(self) -> None:
        start = time.time_ns() // 1_000_000
        self._versions = {"spec": start, "state": start}
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
        loop = self._loop
        if loop is not None and not loop.is_closed():
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
