"""Group commit: writes that arrive while one is being made go to the store together.

A thousand agents' replica reports were a thousand write transactions, each waiting for
the store's one write lock in a thread of its own: the threads queued, and, holding
Python's lock between queries, slowed the event loop that answers everyone else. Here
the first write starts at once; those that arrive meanwhile wait for it to end and then
go as one transaction. An idle controller adds no delay; a busy one makes few writes.
Each caller still waits until its own write is committed (a report is answered 204 only
once it is stored), and gets its own outcome.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class GroupCommit(Generic[_T]):
    """Items written in batches by ``write_many`` (in a worker thread): one batch at a
    time, each holding what arrived while the one before was written (at most
    ``max_batch``).

    ``write_many(items)`` returns one outcome per item: None, or the error that item
    alone gets (a node the store does not know). If it raises instead, the batch as a
    whole failed (nothing written): each item is then written alone (``write_many`` of
    one item), so one bad item fails only its own caller."""

    def __init__(
        self, write_many: Callable[[list[_T]], Sequence[Exception | None]], *, max_batch: int = 500
    ) -> None:
        self._write_many = write_many
        self.max_batch = max_batch
        self._pending: list[tuple[_T, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0  # transactions made (for tests and the curious)

    async def submit(self, item: _T) -> None:
        """Write ``item`` (with those that arrive meanwhile); return once committed, or
        raise its own error."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending(), name="group-commit")
        # Shielded: a caller that goes away (its client hung up) does not cancel the
        # write of the others; its own item is written all the same.
        await asyncio.shield(future)

    async def _write_pending(self) -> None:
        while self._pending:
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            try:
                outcomes = await self._write(batch)
            except BaseException:  # cancelled (a shutdown): nobody waits forever
                for _, future in batch:
                    future.cancel()
                raise
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if outcome is None:
                    future.set_result(None)
                else:
                    future.set_exception(outcome)
                    future.exception()  # retrieved: no warning if its caller went away

    async def _write(self, batch: list[tuple[_T, asyncio.Future[None]]]) -> list[Exception | None]:
        items = [item for item, _ in batch]
        try:
            outcomes = list(await asyncio.to_thread(self._write_many, items))
            self.batches += 1
            return outcomes
        except Exception as exc:
            if len(items) == 1:
                return [exc]
            log.warning(
                "a batch of writes failed; writing them one by one",
                extra={"items": len(items), "error": str(exc)},
            )
        alone: list[Exception | None] = []
        for item in items:
            try:
                alone.extend(await asyncio.to_thread(self._write_many, [item]))
                self.batches += 1
            except Exception as exc:
                alone.append(exc)
        return alone
