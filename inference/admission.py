"""Admission to prompt preparation: image fetch and decode, chat template and tokenizer, on a few threads.

The work before a request can queue for the model costs CPU in proportion to its size. Run on asyncio's
default executor (dozens of threads), a burst of large requests takes every core and Python's lock from
the event loop, and `/health/live` stops answering. Here a fixed pool does that work, and a request that
would wait beyond `max_pending` is refused at once (429) instead of piling up.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class PreparationBusy(Exception):
    """As many requests as allowed are being prepared or waiting for a preparation thread."""


class PreparationPool:
    def __init__(self, workers: int, max_pending: int) -> None:
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="vlmkit-prepare")
        self._max_pending = max_pending
        self._pending = 0
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        return self._pending

    async def run(self, function: Callable[..., T], *args) -> T:
        """`function(*args)` on a pool thread. A caller that stops waiting (a client gone) keeps its place
        until its work has really stopped, so the bound holds for threads, not only for awaiting tasks."""
        with self._lock:
            if self._pending >= self._max_pending:
                raise PreparationBusy
            self._pending += 1
        future = self._executor.submit(function, *args)
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def _release(self, _: Future) -> None:
        with self._lock:
            self._pending -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
