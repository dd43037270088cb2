"""Retries with exponential backoff, bounded in count and in time.

An attempt that moved bytes forward is progress: it resets both bounds, so a long download
over a connection that drops now and then keeps going, while an endpoint that stays down
gives up after `attempts` tries or `max_time` seconds, whichever comes first.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from inference.download.errors import TransientError, Unreachable, classify
from inference.download.progress import Cancelled

T = TypeVar("T")


class Retry:
    def __init__(
        self,
        *,
        attempts: int,
        max_time: float,
        repo: str,
        endpoint: str,
        warn: Callable[[str], None],
        base_delay: float = 1.0,
        max_delay: float = 60.0,
    ) -> None:
        self.attempts = max(1, attempts)
        self.max_time = max_time
        self.repo = repo
        self.endpoint = endpoint
        self.warn = warn
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.cancel = threading.Event()  # set to stop waiting between attempts

    def run(self, what: str, fn: Callable[[], T], progress: Callable[[], int] = lambda: 0) -> T:
        """Call `fn` until it succeeds, raising `Unreachable` when the bounds are spent.

        `progress()` reports how far the work has got (bytes on disk); a failed attempt that
        increased it does not count against the bounds.
        """
        failures = 0
        streak_start = 0.0
        while True:
            if self.cancel.is_set():
                raise Cancelled()
            before = progress()
            try:
                return fn()
            except Cancelled:
                raise
            except Exception as exc:  # noqa: BLE001 - classify() decides
                outcome = classify(exc, repo=self.repo, endpoint=self.endpoint)
                if not isinstance(outcome, TransientError):
                    raise outcome from exc
                now = time.monotonic()
                if failures == 0 or progress() > before:
                    failures, streak_start = 0, now
                failures += 1
                spent = now - streak_start
                if failures >= self.attempts or spent >= self.max_time:
                    raise Unreachable(
                        f"{what}: {self.endpoint} still failing after {failures} attempt(s) over "
                        f"{spent:.0f}s: {outcome}"
                    ) from exc
                delay = min(self.max_delay, self.base_delay * 2 ** (failures - 1)) * random.uniform(0.8, 1.2)
                delay = max(delay, min(self.max_delay, _retry_after(exc)))  # a 429/503 may say how long
                delay = max(0.0, min(delay, self.max_time - spent))
                self.warn(f"{what}: {outcome}; attempt {failures + 1} of {self.attempts} in {delay:.1f}s")
                if self.cancel.wait(delay):
                    raise Cancelled() from None


def _retry_after(exc: BaseException) -> float:
    """Seconds from a Retry-After header (the delta form), else 0."""
    response = getattr(exc, "response", None)
    value = response.headers.get("Retry-After", "") if response is not None else ""
    return float(value) if value.strip().isdigit() else 0.0
