"""Bursts of changes become one regeneration."""

from __future__ import annotations

import asyncio

import pytest

from orchestrify.edge.debounce import Debouncer, fire_at


def test_fire_at_waits_for_quiet_but_never_past_max() -> None:
    kw = {"min_wait_s": 0.2, "max_wait_s": 2.0, "urgent": None}
    assert fire_at(first=10.0, last=10.0, **kw) == pytest.approx(10.2)
    assert fire_at(first=10.0, last=10.5, **kw) == pytest.approx(
        10.7
    )  # a later change extends the wait
    assert fire_at(first=10.0, last=11.95, **kw) == pytest.approx(12.0)  # ...up to first + max
    urgent = {"min_wait_s": 0.2, "max_wait_s": 2.0}
    assert fire_at(first=10.0, last=11.0, urgent=10.1, **urgent) == pytest.approx(
        10.3
    )  # removals go first


def test_a_burst_gives_one_fire_and_a_later_change_another() -> None:
    async def scenario() -> int:
        debouncer = Debouncer(min_wait_s=0.05, max_wait_s=5.0, leading=False)
        fires = 0

        async def consumer() -> None:
            nonlocal fires
            while True:
                await debouncer.settled()
                fires += 1

        task = asyncio.create_task(consumer())
        for _ in range(20):  # one burst: changes closer together than min_wait
            debouncer.poke()
            await asyncio.sleep(0.001)
        while debouncer.pending:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        debouncer.poke(urgent=True)
        while debouncer.pending:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        task.cancel()
        return fires

    assert asyncio.run(scenario()) == 2


def test_steady_trickle_still_fires_by_max_wait() -> None:
    now = [0.0]
    debouncer = Debouncer(min_wait_s=0.2, max_wait_s=1.0, clock=lambda: now[0], leading=False)

    async def scenario() -> bool:
        for step in range(20):  # a change every 0.1 s "forever"
            now[0] = step * 0.1
            debouncer.poke()
        # At t=1.9 the burst began 1.9 s ago: past max_wait, so settled returns at once.
        await asyncio.wait_for(debouncer.settled(), 1.0)
        return not debouncer.pending

    assert asyncio.run(scenario())


def test_first_change_after_idle_fires_at_once_and_the_rest_of_its_burst_waits() -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        debouncer = Debouncer(min_wait_s=1.0, max_wait_s=5.0)

        async def ticks() -> None:
            for _ in range(3):
                await asyncio.sleep(0)

        debouncer.poke()  # the first change after an idle period
        first = asyncio.create_task(debouncer.settled())
        await ticks()
        led = first.done()  # applied at once: no wait for quiet
        debouncer.poke()  # the same burst goes on
        second = asyncio.create_task(debouncer.settled())
        await ticks()
        batched = not second.done()  # within the window: it waits for quiet
        await asyncio.wait_for(second, 5)
        return led, batched, not debouncer.pending

    assert asyncio.run(scenario()) == (True, True, True)
