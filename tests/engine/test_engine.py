"""Engine scheduling against a stand-in backend (no model), in milliseconds: the wait list and its order,
cancel, stop, one request's failure against the batch's, accelerator failure, health.

The stand-in, StandInBackend, implements the declared backend interface (backends/base.py); each request
does what the Script in its prompt says. The real backends are driven end to end in tests/service/.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from inference.backends import (
    Backend,
    Decoding,
    DeviceFailure,
    GenerationResult,
    GpuMemory,
    PreparedPrompt,
    PromptError,
    PromptWork,
    SamplingParams,
)
from inference.engine import Engine
from inference.engine_client import EngineClient, EngineState, EngineUnavailable, Finished, Job, QueueFull

PARAMS = SamplingParams(max_new_tokens=4, temperature=0, top_p=1, min_p=0)


@dataclass
class Script:
    """What one request does in the stand-in backend."""

    name: str = ""
    tokens: int = 1  # its answer's length, a token per step
    release: threading.Event | None = None  # no token until set; it beats meanwhile unless `silent`
    silent: bool = False
    whole: bool = False  # decoded whole in begin, as transformers' generate is
    fail_begin: Exception | None = None  # raised by begin
    fail_alone: Exception | None = None  # its own error, at its first step
    fail_step: Exception | None = None  # raised by the step it shares with the others, once released
    wants_slot: int | None = None  # the slot the backend chooses for it when that one is free
    began: threading.Event = field(default_factory=threading.Event)

    @property
    def released(self) -> bool:
        return self.release is None or self.release.is_set()


class StandInRequest(Decoding):
    def __init__(
        self, slot: int, script: Script, on_text: Callable[[str], None], should_stop: Callable[[], bool]
    ) -> None:
        super().__init__(slot)
        self.script, self.on_text, self.should_stop = script, on_text, should_stop
        self.produced = 0

    def step(self) -> None:
        script = self.script
        if not script.released:
            script.release.wait(0.001)
            if not script.silent and self.should_stop():
                self.result = GenerationResult(finish_reason="stop", completion_tokens=self.produced)
            return
        if script.fail_alone is not None:
            self.error = script.fail_alone
            return
        self.produced += 1
        self.on_text("x")
        if self.should_stop() or self.produced >= script.tokens:
            finish = "length" if self.produced >= script.tokens else "stop"
            self.result = GenerationResult(finish_reason=finish, completion_tokens=self.produced)


class StandInBackend(Backend):
    """A stand-in for a model backend: requests follow their scripts; it records what it was asked."""

    name = "stand-in"

    def __init__(self, slots: int = 1) -> None:
        self._slots = slots
        self.begun: list[str] = []  # the scripts' names, in the order they began
        self.slots_begun: dict[str, int] = {}  # the slot each script began in
        self.batches: list[list[str]] = []  # the names advanced together, step by step

    @property
    def context_length(self) -> int:
        return 100

    @property
    def slots(self) -> int:
        return self._slots

    def prepare(self, messages, image) -> PreparedPrompt:
        return PreparedPrompt(inputs={"script": Script()}, prompt_tokens=1)

    def gpu_memory(self) -> list[GpuMemory]:
        return []

    def prompt_work(self) -> PromptWork:
        return PromptWork()

    def choose_slot(self, prompt, free: list[int]) -> int:
        wanted = prompt.inputs["script"].wants_slot
        return wanted if wanted in free else super().choose_slot(prompt, free)

    def begin(self, prompt, params, slot, on_text, should_stop) -> StandInRequest:
        script: Script = prompt.inputs["script"]
        assert 0 <= slot < self._slots
        self.begun.append(script.name)
        self.slots_begun[script.name] = slot
        script.began.set()
        if script.fail_begin is not None:
            raise script.fail_begin
        request = StandInRequest(slot, script, on_text, should_stop)
        while script.whole and not request.finished:
            request.step()
        return request

    def advance(self, requests: list[StandInRequest]) -> None:
        assert len({request.slot for request in requests}) == len(requests), "two requests in one slot"
        self.batches.append(sorted(request.script.name for request in requests))
        for request in requests:
            if request.script.fail_step is not None and request.script.released:
                raise request.script.fail_step
        for request in requests:
            request.step()


def asked(**script) -> PreparedPrompt:
    return PreparedPrompt(inputs={"script": Script(**script)}, prompt_tokens=1)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.002)


async def finished(job: Job) -> Finished:
    while not isinstance(event := await asyncio.wait_for(job.events.get(), 30), Finished):
        pass
    return event


async def began(prompt: PreparedPrompt) -> None:
    await asyncio.to_thread(prompt.inputs["script"].began.wait, 30)


def started_engine(backend: Backend, **limits) -> Engine:
    engine = Engine(lambda: backend, max_queue=limits.pop("max_queue", 4), **limits)
    engine.start()
    wait_until(lambda: engine.state is EngineState.READY, "the engine is ready")
    return engine


def run(scenario: Callable[[], object]) -> None:
    asyncio.run(scenario())


def test_the_engine_is_what_the_serving_layer_asks_for_and_reaches_the_backend_through_it():
    backend = StandInBackend(slots=3)
    engine = Engine(lambda: backend, max_queue=1)
    assert engine.gpu_memory() == []
    with pytest.raises(EngineUnavailable):
        engine.context_length  # noqa: B018 - before the model is loaded
    engine.start()
    try:
        wait_until(lambda: engine.state is EngineState.READY, "the engine is ready")
        assert isinstance(engine, EngineClient)
        assert engine.context_length == 100
        assert "script" in engine.prepare([{"role": "user", "content": "Hi"}], None).inputs
    finally:
        engine.stop()


def test_what_the_model_loaded_is_frozen_out_of_garbage_collection():
    """A full collection would otherwise walk every object of the loaded model, mid-request."""
    gc.unfreeze()
    loaded: list[object] = []

    def load() -> Backend:
        loaded.extend({"weight": index} for index in range(50_000))
        return StandInBackend()

    engine = Engine(load, max_queue=1)
    engine.start()
    try:
        wait_until(lambda: engine.state is EngineState.READY, "the engine is ready")
        assert gc.get_freeze_count() >= len(loaded)
    finally:
        engine.stop()
        gc.unfreeze()


def test_jobs_begin_in_the_order_they_were_queued():
    async def scenario() -> None:
        backend, release = StandInBackend(), threading.Event()
        engine = started_engine(backend, max_queue=8)
        try:
            first = asked(name="first", release=release)
            jobs = [engine.submit(first, PARAMS)]
            await began(first)
            jobs += [engine.submit(asked(name=name), PARAMS) for name in ("second", "third", "fourth")]
            assert engine.waiting == 3 and engine.running == 1
            release.set()
            for job in jobs:
                assert (await finished(job)).result.completion_tokens == 1
            assert backend.begun == ["first", "second", "third", "fourth"]
        finally:
            release.set()
            engine.stop()

    run(scenario)


def test_requests_in_several_slots_decode_together_and_a_freed_slot_takes_the_next():
    async def scenario() -> None:
        backend = StandInBackend(slots=2)
        engine = started_engine(backend)
        try:
            release = threading.Event()
            long, short = asked(name="long", tokens=6, release=release), asked(name="short", tokens=2, release=release)
            jobs = [engine.submit(long, PARAMS), engine.submit(short, PARAMS)]
            await began(long)
            await began(short)
            late = engine.submit(asked(name="late", tokens=1), PARAMS)
            assert engine.running == 2 and engine.waiting == 1, "a third request ran in two slots"
            release.set()
            results = [(await finished(job)).result for job in [*jobs, late]]
            assert [result.completion_tokens for result in results] == [6, 2, 1]
            assert ["long", "short"] in backend.batches
            assert ["late", "long"] in backend.batches, "the slot freed by the short answer stayed empty"
        finally:
            engine.stop()

    run(scenario)


def test_a_job_begins_in_the_free_slot_the_backend_chooses_else_in_the_one_freed_last():
    async def scenario() -> None:
        backend = StandInBackend(slots=3)
        engine = started_engine(backend)
        try:
            release = threading.Event()
            first = asked(name="first", wants_slot=0, release=release)
            job = engine.submit(first, PARAMS)
            await began(first)
            taken = asked(name="taken", wants_slot=0, release=release)
            jobs = [job, engine.submit(taken, PARAMS)]
            await began(taken)
            release.set()
            for job in jobs:
                await finished(job)
            assert backend.slots_begun == {"first": 0, "taken": 2}, "slot 0 was taken: the default, the last free"
        finally:
            release.set()
            engine.stop()

    run(scenario)


def test_a_request_decoded_whole_in_begin_needs_no_step():
    async def scenario() -> None:
        backend = StandInBackend()
        engine = started_engine(backend)
        try:
            outcome = await finished(engine.submit(asked(name="whole", tokens=3, whole=True), PARAMS))
            assert outcome.result == GenerationResult(finish_reason="length", completion_tokens=3)
            assert backend.batches == []
        finally:
            engine.stop()

    run(scenario)


def test_cancelling_a_waiting_job_frees_its_place_at_once():
    async def scenario() -> None:
        release = threading.Event()
        engine = started_engine(StandInBackend(), max_queue=1)
        try:
            running = asked(release=release)
            first = engine.submit(running, PARAMS)
            await began(running)
            waiting = engine.submit(asked(), PARAMS)
            with pytest.raises(QueueFull):
                engine.submit(asked(), PARAMS)
            engine.cancel(waiting)
            assert engine.waiting == 0, "the cancelled job kept its place until the running one ended"
            assert (await finished(waiting)).result is None
            later = engine.submit(asked(), PARAMS)
            release.set()
            assert (await finished(first)).result is not None
            assert (await finished(later)).result is not None
        finally:
            release.set()
            engine.stop()

    run(scenario)


def test_cancelling_a_running_job_stops_it_at_its_next_token_and_the_others_go_on():
    async def scenario() -> None:
        engine = started_engine(StandInBackend(slots=2))
        try:
            endless = asked(name="endless", release=threading.Event())
            job = engine.submit(endless, PARAMS)
            await began(endless)
            other = engine.submit(asked(name="other", tokens=3), PARAMS)
            engine.cancel(job)
            assert (await finished(job)).result.finish_reason == "stop"
            assert (await finished(other)).result.completion_tokens == 3
            assert engine.running == 0 and engine.state is EngineState.READY
        finally:
            engine.stop()

    run(scenario)


def test_stop_cancels_what_runs_and_what_waits():
    async def scenario() -> None:
        engine = started_engine(StandInBackend())
        running = asked(release=threading.Event())
        first = engine.submit(running, PARAMS)
        await began(running)
        waiting = engine.submit(asked(), PARAMS)
        await asyncio.to_thread(engine.stop)
        assert first.cancelled.is_set()
        assert (await finished(first)).result.finish_reason == "stop"
        assert (await finished(waiting)).result is None
        assert engine.state is EngineState.STOPPED and engine.waiting == 0 and engine.running == 0
        with pytest.raises(EngineUnavailable):
            engine.submit(asked(), PARAMS)

    run(scenario)


def test_a_request_that_cannot_begin_fails_alone_and_a_clients_mistake_is_no_failure():
    async def scenario() -> None:
        engine = started_engine(StandInBackend(), max_consecutive_failures=1)
        try:
            refused = await finished(engine.submit(asked(fail_begin=PromptError("it does not fit")), PARAMS))
            assert isinstance(refused.error, PromptError)
            assert engine.state is EngineState.READY
            assert (await finished(engine.submit(asked(tokens=2), PARAMS))).result.completion_tokens == 2
        finally:
            engine.stop()

    run(scenario)


def test_in_a_batch_one_requests_own_failure_fails_only_that_request():
    async def scenario() -> None:
        backend = StandInBackend(slots=2)
        engine = started_engine(backend)
        try:
            release = threading.Event()
            healthy_prompt = asked(name="healthy", tokens=50, release=release)
            healthy = engine.submit(healthy_prompt, PARAMS)
            await began(healthy_prompt)
            failing = engine.submit(asked(name="failing", fail_alone=RuntimeError("its distribution broke")), PARAMS)
            assert isinstance((await finished(failing)).error, RuntimeError)
            release.set()
            outcome = await finished(healthy)
            assert outcome.error is None and outcome.result.completion_tokens == 50
            assert ["failing", "healthy"] in backend.batches
            assert engine.state is EngineState.READY
        finally:
            engine.stop()

    run(scenario)


def test_a_failed_shared_step_fails_the_whole_batch_and_the_engine_goes_on():
    async def scenario() -> None:
        engine = started_engine(StandInBackend(slots=2))
        try:
            release = threading.Event()
            bystander_prompt = asked(name="bystander", tokens=5, release=release)
            bystander = engine.submit(bystander_prompt, PARAMS)
            await began(bystander_prompt)
            breaking = engine.submit(asked(name="breaking", fail_step=RuntimeError("the step broke")), PARAMS)
            assert isinstance((await finished(breaking)).error, RuntimeError)
            assert isinstance((await finished(bystander)).error, RuntimeError)
            assert engine.running == 0
            assert (await finished(engine.submit(asked(tokens=2), PARAMS))).result.completion_tokens == 2
        finally:
            release.set()
            engine.stop()

    run(scenario)


@pytest.mark.parametrize("where", ["begin", "step"])
def test_a_device_failure_kills_the_engine_and_fails_what_runs_and_what_waits(where):
    async def scenario() -> None:
        engine = started_engine(StandInBackend(slots=2))
        try:
            release = threading.Event()
            running_prompt = asked(name="running", release=release, tokens=5)
            running = engine.submit(running_prompt, PARAMS)
            await began(running_prompt)
            failure = DeviceFailure("CUDA error: device-side assert triggered")
            breaking = engine.submit(asked(name="breaking", **{f"fail_{where}": failure}), PARAMS)
            for job in (running, breaking):
                assert isinstance((await finished(job)).error, DeviceFailure)
            assert engine.state is EngineState.DEAD and not engine.state.accepts_requests
            assert "device-side assert" in str(engine.device_error)
            with pytest.raises(EngineUnavailable):
                engine.submit(asked(), PARAMS)
        finally:
            engine.stop()
        assert engine.state is EngineState.DEAD, "stopping must not hide that the accelerator failed"

    run(scenario)


def test_a_device_failure_fails_the_jobs_still_waiting():
    async def scenario() -> None:
        engine = started_engine(StandInBackend())
        try:
            release = threading.Event()
            breaking_prompt = asked(release=release, fail_step=DeviceFailure("CUDA error: an illegal memory access"))
            breaking = engine.submit(breaking_prompt, PARAMS)
            await began(breaking_prompt)
            waiting = engine.submit(asked(), PARAMS)
            release.set()
            for job in (breaking, waiting):
                assert isinstance((await finished(job)).error, DeviceFailure)
            assert engine.waiting == 0 and engine.state is EngineState.DEAD
        finally:
            engine.stop()

    run(scenario)


def test_failures_in_a_row_make_the_engine_failing_until_one_succeeds():
    async def scenario() -> None:
        engine = started_engine(StandInBackend(), max_consecutive_failures=2)
        broken = RuntimeError("the backend broke")
        try:
            await finished(engine.submit(asked(fail_begin=broken), PARAMS))
            assert engine.state is EngineState.READY
            await finished(engine.submit(asked(fail_begin=PromptError("the prompt does not fit")), PARAMS))
            assert engine.state is EngineState.READY, "a client's mistake counted as a failure"
            await finished(engine.submit(asked(fail_alone=broken), PARAMS))
            assert engine.state is EngineState.FAILING and engine.state.accepts_requests
            await finished(engine.submit(asked(), PARAMS))
            assert engine.state is EngineState.READY
        finally:
            engine.stop()

    run(scenario)


def test_a_generation_without_a_heartbeat_shows_stuck_until_it_moves_again():
    async def scenario() -> None:
        release = threading.Event()
        engine = started_engine(StandInBackend(), stuck_after_s=0.05)
        try:
            silent = asked(release=release, silent=True, tokens=2)
            job = engine.submit(silent, PARAMS)
            await began(silent)
            await asyncio.to_thread(wait_until, lambda: engine.state is EngineState.STUCK, "the engine shows stuck")
            release.set()
            assert (await finished(job)).result is not None
            assert engine.state is EngineState.READY
        finally:
            release.set()
            engine.stop()

    run(scenario)


def test_a_generation_that_beats_is_not_stuck():
    async def scenario() -> None:
        release = threading.Event()
        engine = started_engine(StandInBackend(), stuck_after_s=5)
        try:
            beating = asked(release=release)
            job = engine.submit(beating, PARAMS)
            await began(beating)
            assert engine.state is EngineState.READY
            release.set()
            await finished(job)
        finally:
            release.set()
            engine.stop()

    run(scenario)


def test_a_model_that_cannot_load_leaves_the_engine_failed_and_refusing():
    def load() -> Backend:
        raise OSError("no such checkpoint")

    async def scenario() -> None:
        engine = Engine(load, max_queue=1)
        engine.start()
        await asyncio.to_thread(wait_until, lambda: engine.state is EngineState.FAILED, "the engine shows failed")
        assert "no such checkpoint" in str(engine.load_error)
        with pytest.raises(EngineUnavailable):
            engine.submit(asked(), PARAMS)
        assert engine.gpu_memory() == []
        engine.stop()

    run(scenario)
