"""The bounded pool that prepares prompts: at most `workers` at once, and 429 (PreparationBusy) past the bound."""

from __future__ import annotations

import asyncio
import threading

import pytest

from inference.admission import PreparationBusy, PreparationPool


def test_preparation_past_the_bound_is_refused_at_once_and_the_pool_recovers():
    async def scenario() -> None:
        pool = PreparationPool(workers=1, max_pending=2)
        release = threading.Event()
        first = asyncio.ensure_future(pool.run(release.wait, 30))
        second = asyncio.ensure_future(pool.run(release.wait, 30))
        await asyncio.sleep(0)
        with pytest.raises(PreparationBusy):
            await pool.run(len, "refused")
        release.set()
        assert await first and await second
        assert await pool.run(len, "abc") == 3
        assert pool.pending == 0
        pool.shutdown()

    asyncio.run(scenario())


def test_no_more_than_the_workers_prepare_at_once():
    async def scenario() -> None:
        pool = PreparationPool(workers=2, max_pending=10)
        lock, running, peak = threading.Lock(), [0], [0]
        both_in = threading.Barrier(2, timeout=30)

        def work(index: int) -> int:
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            if index < 2:
                both_in.wait()  # the first two overlap for sure
            with lock:
                running[0] -= 1
            return index

        assert await asyncio.gather(*(pool.run(work, i) for i in range(6))) == list(range(6))
        assert peak[0] == 2
        pool.shutdown()

    asyncio.run(scenario())


def test_a_caller_that_stops_waiting_keeps_its_place_until_its_work_has_stopped():
    async def scenario() -> None:
        pool = PreparationPool(workers=1, max_pending=1)
        started, release = threading.Event(), threading.Event()

        def work() -> None:
            started.set()
            release.wait(30)

        caller = asyncio.ensure_future(pool.run(work))
        await asyncio.to_thread(started.wait, 30)
        caller.cancel()  # the client went away; the thread still decodes
        with pytest.raises(asyncio.CancelledError):
            await caller
        with pytest.raises(PreparationBusy):
            await pool.run(len, "still busy")
        release.set()
        while pool.pending:
            await asyncio.sleep(0.01)
        assert await pool.run(len, "free again") == 10
        pool.shutdown()

    asyncio.run(scenario())
