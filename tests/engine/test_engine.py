"""Engine scheduling against a stand-in backend (no model): wait list, cancel, failures, health.

The stand-in, ScriptedBackend, runs each generation as a test scripts it: block until released, raise a
given error, or produce tokens. The real backends are driven end to end in tests/service/.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from inference.backends import (
    Backend,
    DeviceFailure,
    GenerationResult,
    PreparedPrompt,
    PromptError,
    SamplingParams,
)
from inference.engine import Engine, EngineState, EngineUnavailable, Finished, QueueFull

PARAMS = SamplingParams(max_new_tokens=4, temperature=0, top_p=1, min_p=0)


class ScriptedBackend(Backend):
    """A stand-in for a model: generation `n` does what `script(n, should_stop)` does."""

    name = "scripted"

    def __init__(self, script: Callable[[int, Callable[[], bool]], GenerationResult]) -> None:
        self.script = script
        self.calls = 0

    @property
    def context_length(self) -> int:
        return 100

    def prepare(self, messages, image) -> PreparedPrompt:
        return PreparedPrompt(inputs={}, prompt_tokens=1)

    def generate(self, prompt, params, on_text, should_stop) -> GenerationResult:
        self.calls += 1
        return self.script(self.calls, should_stop)


def done(*_) -> GenerationResult:
    return GenerationResult(finish_reason="stop", completion_tokens=1)


def prompt() -> PreparedPrompt:
    return PreparedPrompt(inputs={}, prompt_tokens=1)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.005)


async def finished(job) -> Finished:
    while not isinstance(event := await asyncio.wait_for(job.events.get(), 30), Finished):
        pass
    return event


def started_engine(backend: Backend, **limits) -> Engine:
    engine = Engine(lambda: backend, max_queue=limits.pop("max_queue", 4), **limits)
    engine.start()
    wait_until(lambda: engine.state is EngineState.READY, "the engine is ready")
    return engine


def blocking_script(release: threading.Event, running: threading.Event | None = None):
    def script(call: int, should_stop) -> GenerationResult:
        if running is not None:
            running.set()
        while not release.wait(0.01) and not should_stop():
            pass
        return done()
    return script


def test_cancelling_a_waiting_job_frees_its_place_at_once():
    async def scenario() -> None:
        release, running = threading.Event(), threading.Event()
        engine = started_engine(ScriptedBackend(blocking_script(release, running)), max_queue=1)
        try:
            first = engine.submit(prompt(), PARAMS)
            await asyncio.to_thread(running.wait, 30)
            waiting = engine.submit(prompt(), PARAMS)
            with pytest.raises(QueueFull):
                engine.submit(prompt(), PARAMS)
            engine.cancel(waiting)
            assert engine.waiting == 0, "the cancelled job kept its place until the running one ended"
            assert (await finished(waiting)).result is None
            later = engine.submit(prompt(), PARAMS)
            release.set()
            assert (await finished(first)).result is not None
            assert (await finished(later)).result is not None
        finally:
            release.set()
            engine.stop()
    asyncio.run(scenario())


def test_a_device_failure_kills_the_engine_and_fails_what_runs_and_waits():
    async def scenario() -> None:
        release, running = threading.Event(), threading.Event()

        def script(call: int, should_stop) -> GenerationResult:
            running.set()
            release.wait(30)
            raise DeviceFailure("CUDA error: device-side assert triggered")

        engine = started_engine(ScriptedBackend(script))
        try:
            first = engine.submit(prompt(), PARAMS)
            await asyncio.to_thread(running.wait, 30)
            waiting = engine.submit(prompt(), PARAMS)
            release.set()
            assert isinstance((await finished(first)).error, DeviceFailure)
            assert isinstance((await finished(waiting)).error, DeviceFailure)
            assert engine.state is EngineState.DEAD and not engine.state.accepts_requests
            assert "device-side assert" in str(engine.device_error)
            with pytest.raises(EngineUnavailable):
                engine.submit(prompt(), PARAMS)
        finally:
            engine.stop()
        assert engine.state is EngineState.DEAD, "stopping must not hide that the accelerator failed"
    asyncio.run(scenario())


def test_failures_in_a_row_make_the_engine_failing_until_one_succeeds():
    async def scenario() -> None:
        outcomes = iter(["fail", "client", "fail", "ok"])

        def script(call: int, should_stop) -> GenerationResult:
            outcome = next(outcomes)
            if outcome == "fail":
                raise RuntimeError("the backend broke")
            if outcome == "client":
                raise PromptError("the prompt does not fit")
            return done()

        engine = started_engine(ScriptedBackend(script), max_consecutive_failures=2)
        try:
            await finished(engine.submit(prompt(), PARAMS))
            assert engine.state is EngineState.READY
            await finished(engine.submit(prompt(), PARAMS))
            assert engine.state is EngineState.READY, "a client's mistake counted as a failure"
            await finished(engine.submit(prompt(), PARAMS))
            assert engine.state is EngineState.FAILING and engine.state.accepts_requests
            await finished(engine.submit(prompt(), PARAMS))
            assert engine.state is EngineState.READY
        finally:
            engine.stop()
    asyncio.run(scenario())


def test_a_generation_without_a_heartbeat_shows_stuck_until_it_moves_again():
    async def scenario() -> None:
        release, running = threading.Event(), threading.Event()

        def script(call: int, should_stop) -> GenerationResult:
            running.set()
            release.wait(30)  # no token, so no heartbeat, until released
            should_stop()
            return done()

        engine = started_engine(ScriptedBackend(script), stuck_after_s=0.05)
        try:
            job = engine.submit(prompt(), PARAMS)
            await asyncio.to_thread(running.wait, 30)
            await asyncio.to_thread(wait_until, lambda: engine.state is EngineState.STUCK, "the engine shows stuck")
            release.set()
            assert (await finished(job)).result is not None
            assert engine.state is EngineState.READY
        finally:
            release.set()
            engine.stop()
    asyncio.run(scenario())


def test_a_generation_that_beats_is_not_stuck():
    async def scenario() -> None:
        release, running = threading.Event(), threading.Event()
        engine = started_engine(ScriptedBackend(blocking_script(release, running)), stuck_after_s=5)
        try:
            job = engine.submit(prompt(), PARAMS)
            await asyncio.to_thread(running.wait, 30)
            assert engine.state is EngineState.READY
            release.set()
            await finished(job)
        finally:
            release.set()
            engine.stop()
    asyncio.run(scenario())


def test_stop_cancels_what_runs_and_what_waits():
    async def scenario() -> None:
        running = threading.Event()
        engine = started_engine(ScriptedBackend(blocking_script(threading.Event(), running)))
        first = engine.submit(prompt(), PARAMS)
        await asyncio.to_thread(running.wait, 30)
        waiting = engine.submit(prompt(), PARAMS)
        await asyncio.to_thread(engine.stop)
        assert first.cancelled.is_set()
        assert (await finished(waiting)).result is None
        assert engine.state is EngineState.STOPPED and engine.waiting == 0
        with pytest.raises(EngineUnavailable):
            engine.submit(prompt(), PARAMS)
    asyncio.run(scenario())


class ScriptedBatchBackend(ScriptedBackend):
    """A stand-in for the static decoder's batching: each request takes `max_new_tokens` steps; a request whose
    prompt has 99 tokens fails on its own at its first step, as a request whose sampling breaks does."""

    batch_slots = 2
    batch_at_failure = 0  # how many requests decoded in the step where one failed

    def begin(self, prompt, params, slot, on_text, should_stop):
        return _ScriptedRequest(prompt, params)

    def advance(self, requests) -> None:
        for request in requests:
            if request.prompt.prompt_tokens == 99:
                request.error = RuntimeError("this request's distribution broke")
                self.batch_at_failure = len(requests)
            elif self.batch_at_failure:  # the others make progress only once one has failed beside them
                request.steps += 1
                if request.steps == request.params.max_new_tokens:
                    request.result = GenerationResult(finish_reason="length", completion_tokens=request.steps)


class _ScriptedRequest:
    def __init__(self, prompt, params) -> None:
        self.prompt, self.params, self.steps = prompt, params, 0
        self.result: GenerationResult | None = None
        self.error: Exception | None = None

    @property
    def finished(self) -> bool:
        return self.result is not None or self.error is not None


def test_in_a_batch_one_requests_own_failure_fails_only_that_request():
    async def scenario() -> None:
        backend = ScriptedBatchBackend(done)
        engine = started_engine(backend)
        try:
            healthy = engine.submit(prompt(), SamplingParams(max_new_tokens=50, temperature=0, top_p=1, min_p=0))
            failing = engine.submit(PreparedPrompt(inputs={}, prompt_tokens=99), PARAMS)
            assert isinstance((await finished(failing)).error, RuntimeError)
            outcome = await finished(healthy)
            assert outcome.error is None and outcome.result.completion_tokens == 50
            assert backend.batch_at_failure == 2
            assert engine.state is EngineState.READY
        finally:
            engine.stop()
    asyncio.run(scenario())
