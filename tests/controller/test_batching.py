"""GroupCommit: writes that arrive while one is made go together, each with its own
outcome (orchestrify/controller/batching.py)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from orchestrify.controller.batching import GroupCommit
from orchestrify.errors import NotFound, StoreUnavailable


class _Store:
    """Records each batch; the first write waits for ``release`` (a slow write)."""

    def __init__(self, *, refuse: set[str] = frozenset(), break_on: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        self.refuse = refuse
        self.break_on = break_on

    def write_many(self, items: list[str]) -> list[Exception | None]:
        if not self.batches:
            self.release.wait(10)
        if self.break_on in items:
            raise StoreUnavailable("a row broke the batch")
        self.batches.append(items)
        return [NotFound(item) if item in self.refuse else None for item in items]


async def _started(commit: GroupCommit[str], item: str) -> asyncio.Task[None]:
    task = asyncio.create_task(commit.submit(item))
    await asyncio.sleep(0.01)  # queued before the next one (order only, not timing)
    return task


def test_what_arrives_during_a_write_goes_in_the_next_one() -> None:
    async def main() -> list[list[str]]:
        store = _Store()
        commit = GroupCommit(store.write_many)
        first = await _started(commit, "a")
        rest = [await _started(commit, item) for item in "bcde"]
        store.release.set()
        await asyncio.gather(first, *rest)
        return store.batches

    assert asyncio.run(main()) == [["a"], ["b", "c", "d", "e"]]


def test_each_caller_gets_its_own_outcome() -> None:
    async def main() -> list[BaseException | None]:
        store = _Store(refuse={"c"})
        store.release.set()
        commit = GroupCommit(store.write_many)
        tasks = [await _started(commit, item) for item in "abcd"]
        return list(await asyncio.gather(*tasks, return_exceptions=True))

    outcomes = asyncio.run(main())
    assert [type(o) for o in outcomes] == [type(None), type(None), NotFound, type(None)]


def test_a_batch_that_fails_as_a_whole_is_written_one_by_one() -> None:
    """One item that breaks the transaction fails its own caller only."""

    async def main() -> tuple[list[BaseException | None], list[list[str]]]:
        store = _Store(break_on="c")
        commit = GroupCommit(store.write_many)
        first = await _started(commit, "a")
        rest = [await _started(commit, item) for item in "bcd"]
        store.release.set()
        got = await asyncio.gather(first, *rest, return_exceptions=True)
        return list(got), store.batches

    outcomes, batches = asyncio.run(main())
    assert outcomes[0] is None and outcomes[1] is None and outcomes[3] is None
    assert isinstance(outcomes[2], StoreUnavailable)
    assert batches == [["a"], ["b"], ["d"]]  # c alone raised: nothing of it written


def test_a_caller_that_goes_away_does_not_stop_the_others() -> None:
    async def main() -> list[list[str]]:
        store = _Store()
        commit = GroupCommit(store.write_many)
        first = await _started(commit, "a")
        gone = await _started(commit, "b")
        stays = await _started(commit, "c")
        gone.cancel()
        store.release.set()
        await asyncio.gather(first, stays)
        with pytest.raises(asyncio.CancelledError):
            await gone
        return store.batches

    assert asyncio.run(main()) == [["a"], ["b", "c"]]
