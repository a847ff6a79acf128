"""The change feed wakes only the waiters of the kind that changed."""

from __future__ import annotations

import asyncio

from orchestrify.controller.feed import ChangeFeed


def test_a_change_wakes_only_the_waiters_of_its_kind() -> None:
    asyncio.run(_a_change_wakes_only_the_waiters_of_its_kind())


async def _a_change_wakes_only_the_waiters_of_its_kind() -> None:
    """A thousand agents wait on ``spec``: the reports (``state``) and events written
    meanwhile must not wake them, each one to find its version unchanged."""
    feed = ChangeFeed(start=1)
    feed.bind(asyncio.get_running_loop())
    spec = feed.version("spec")
    waiters = [asyncio.create_task(feed.wait("spec", spec, 10)) for _ in range(50)]
    await asyncio.sleep(0.01)
    for _ in range(20):
        feed.bump({"events"})
        await asyncio.sleep(0)
        feed.advance({"state"}, feed.version("state") + 1)
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)
    assert feed.wakeups == 0
    assert not any(w.done() for w in waiters)
    feed.bump({"spec"})
    assert set(await asyncio.gather(*waiters)) == {spec + 1}
    assert feed.wakeups == 50


def test_a_waiter_on_several_kinds_wakes_for_any_and_times_out_unchanged() -> None:
    asyncio.run(_a_waiter_on_several_kinds_wakes_for_any_and_times_out_unchanged())


async def _a_waiter_on_several_kinds_wakes_for_any_and_times_out_unchanged() -> None:
    feed = ChangeFeed(start=1)
    feed.bind(asyncio.get_running_loop())
    kinds = ("spec", "nodes")
    since = feed.versions(kinds)
    assert await feed.wait_any(kinds, since, 0.05) == since  # nothing changed: the deadline
    waiting = asyncio.create_task(feed.wait_any(kinds, since, 10))
    await asyncio.sleep(0.01)
    feed.bump({"state"})  # not one of its kinds
    await asyncio.sleep(0.01)
    assert not waiting.done()
    feed.bump({"nodes"})  # implies state, and wakes it at once (not at its deadline)
    assert await asyncio.wait_for(waiting, 2) == (since[0], since[1] + 1)


def test_closing_answers_every_waiter() -> None:
    asyncio.run(_closing_answers_every_waiter())


async def _closing_answers_every_waiter() -> None:
    feed = ChangeFeed(start=1)
    feed.bind(asyncio.get_running_loop())
    waiters = [asyncio.create_task(feed.wait(kind, 1, 10)) for kind in ("spec", "state", "events")]
    await asyncio.sleep(0.01)
    await feed.close()
    assert await asyncio.wait_for(asyncio.gather(*waiters), 2) == [1, 1, 1]
