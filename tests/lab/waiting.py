"""wait_until: the one way the lab and the suites poll for something until a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition did not hold before the deadline (an AssertionError, so a test reads it as a failure)."""


def wait_until(
    condition: Callable[[], T],
    timeout: float,
    what: str | Callable[[], str],
    interval: float = 0.2,
    give_up: Callable[[], str | None] | None = None,
) -> T:
    """Call `condition` until it returns something truthy and return that; WaitTimeout after `timeout` s.

    `what` names what was awaited (or builds the message, e.g. with a log tail, when it is a callable).
    `give_up` is asked before each try: a non-empty answer (e.g. "the server exited") ends the wait at once.
    OSError from `condition` counts as "not yet" (a port that is not listening yet).
    """
    deadline = time.monotonic() + timeout
    while True:
        stop_reason = give_up() if give_up is not None else None
        if stop_reason:
            raise WaitTimeout(f"{_describe(what)}: {stop_reason}")
        try:
            value = condition()
        except OSError:
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"{_describe(what)}: not within {timeout:g} s")
        time.sleep(interval)


def _describe(what: str | Callable[[], str]) -> str:
    return what() if callable(what) else what
