"""The model's one worker thread: loads the backend, then decodes queued jobs in the backend's slots.

The serving layer talks to it through EngineClient (engine_client.py): it submits jobs and reads their
events from an asyncio queue; the worker pushes text pieces into it from its own thread. One loop serves
every backend: it begins waiting jobs in free slots, then advances the running ones a token at a time
(a backend of one slot runs one job at a time; one of several batches them). A bounded wait list gives
back-pressure (QueueFull -> 429); `cancel` frees a waiting job's place at once and stops a running one
at the next token.

Health: the worker beats once per token. READY turns STUCK while a job runs without a beat for
`stuck_after_s`, and FAILING after `max_consecutive_failures` failed generations in a row (both clear
by themselves). A DeviceFailure from the backend is DEAD: every job fails and the worker ends, since
only a new process gets a working accelerator.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import queue
import threading
import time
from collections.abc import Callable

from PIL import Image

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
from inference.engine_client import EngineState, EngineUnavailable, Finished, Job, QueueFull, TextPiece

log = logging.getLogger(__name__)


class Engine:
    """The EngineClient the serving layer talks to (engine_client.py), over one backend (backends/base.py)."""

    def __init__(
        self,
        load: Callable[[], Backend],
        max_queue: int,
        stuck_after_s: float = 300.0,
        max_consecutive_failures: int = 5,
    ) -> None:
        self._load = load
        self._max_queue = max_queue
        self._stuck_after_s = stuck_after_s
        self._max_consecutive_failures = max_consecutive_failures
        self._failures_in_a_row = 0
        self._last_beat = time.monotonic()
        self._listeners: list[Callable[[Engine], None]] = []
        self._result_listeners: list[Callable[[Job, GenerationResult], None]] = []
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._waiting = 0
        self._active: set[Job] = set()
        self._thread = threading.Thread(target=self._work, name="vlmkit-engine", daemon=True)
        self._state = EngineState.LOADING
        self.load_error: BaseException | None = None  # why the model could not be loaded
        self.device_error: DeviceFailure | None = None  # why the engine is DEAD
        self._backend: Backend | None = None  # set by the worker once loaded

    @property
    def state(self) -> EngineState:
        if self._state is EngineState.READY:
            if self._active and time.monotonic() - self._last_beat > self._stuck_after_s:
                return EngineState.STUCK
            if self._failures_in_a_row >= self._max_consecutive_failures:
                return EngineState.FAILING
        return self._state

    def _set_state(self, state: EngineState) -> None:
        self._state = state
        self._notify()

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def running(self) -> int:
        return len(self._active)

    @property
    def context_length(self) -> int:
        return self._loaded().context_length

    def prepare(self, messages: list[dict], image: Image.Image | None) -> PreparedPrompt:
        return self._loaded().prepare(messages, image)

    def gpu_memory(self) -> list[GpuMemory]:
        backend = self._backend
        return backend.gpu_memory() if backend is not None else []

    def prompt_work(self) -> PromptWork:
        backend = self._backend
        return backend.prompt_work() if backend is not None else PromptWork()

    def _loaded(self) -> Backend:
        backend = self._backend
        if backend is None:
            raise EngineUnavailable
        return backend

    def subscribe(self, listener: Callable[[Engine], None]) -> None:
        """Call `listener(engine)` whenever the state, the wait list or the running job changes."""
        self._listeners.append(listener)

    def on_result(self, listener: Callable[[Job, GenerationResult], None]) -> None:
        """Call `listener(job, result)` after each generation, finished or cancelled."""
        self._result_listeners.append(listener)

    def _notify(self) -> None:
        for listener in self._listeners:
            listener(self)

    def start(self) -> None:
        self._thread.start()

    def submit(self, prompt: PreparedPrompt, params: SamplingParams) -> Job:
        job = Job(prompt=prompt, params=params, loop=asyncio.get_running_loop())
        with self._lock:  # checked and queued in one step: _die empties the queue after taking the lock
            if not self._state.accepts_requests:
                raise EngineUnavailable
            if self._waiting >= self._max_queue:
                raise QueueFull
            self._waiting += 1
            self._jobs.put(job)
        self._notify()
        return job

    def cancel(self, job: Job) -> None:
        """Stop a job: one still waiting leaves the wait list now (its place is free at once), one running
        stops at its next token. Safe to call more than once, and after the job has finished."""
        job.cancelled.set()
        if self._leave_wait_list(job):
            job.send(Finished(result=None))
            self._notify()

    def _leave_wait_list(self, job: Job) -> bool:
        """True for the one caller that takes the job out of the wait list (cancel or the worker)."""
        with self._lock:
            if not job.waiting:
                return False
            job.waiting = False
            self._waiting -= 1
            return True

    def _next_job(self, block: bool = True) -> Job | None:
        """The next job to run, skipping those cancelled while they waited; None when the engine stops.
        Raises queue.Empty when not blocking and nothing waits."""
        while True:
            job = self._jobs.get(block=block)
            if job is None or self._leave_wait_list(job):
                return job

    def _beat(self) -> None:
        self._last_beat = time.monotonic()

    def _should_stop(self, job: Job) -> Callable[[], bool]:
        """The backend calls this once per token: it is the worker's heartbeat, too."""

        def should_stop() -> bool:
            self._last_beat = time.monotonic()
            return job.cancelled.is_set()

        return should_stop

    def _count(self, job: Job, result: GenerationResult | None, error: BaseException | None) -> None:
        """Send the job its end and keep the tally of failures in a row (a client's mistake is none).
        The engine's state is settled before the job hears of its end."""
        self._active.discard(job)
        if error is None:
            self._failures_in_a_row = 0
        elif not isinstance(error, PromptError):
            self._failures_in_a_row += 1
        job.send(Finished(result=result, error=error))
        if error is None:
            for listener in self._result_listeners:
                listener(job, result)

    def _die(self, error: DeviceFailure, running: list[Job]) -> None:
        """The accelerator is gone: fail what runs and what waits, and end the worker (the process exits)."""
        log.critical("the accelerator failed; this process cannot use it any more: %s", error)
        self.device_error = error
        with self._lock:
            self._state = EngineState.DEAD
        for job in running:
            job.send(Finished(result=None, error=error))
        self._active.clear()
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None and self._leave_wait_list(job):
                job.send(Finished(result=None, error=error))
        self._notify()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel what is queued and running, and wait for the worker to end."""
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self.cancel(job)
        for job in list(self._active):
            self.cancel(job)
        self._jobs.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._state is not EngineState.DEAD:
            self._set_state(EngineState.STOPPED)

    def _work(self) -> None:
        try:
            self._backend = self._load()
        except BaseException as exc:  # noqa: BLE001 - any failure to load is reported, not raised in a thread
            log.error("the model could not be loaded: %s", exc)
            self.load_error = exc
            self._set_state(EngineState.FAILED)
            return
        # The loaded model, tokenizer and processor are hundreds of thousands of Python objects that live as long
        # as the process. Left to the collector, every full collection walks them all (~180 ms for the tiny
        # model's process on a CI machine), pausing whichever request is being served; frozen, it skips them.
        gc.collect()
        gc.freeze()
        self._beat()
        self._set_state(EngineState.READY)
        try:
            self._decode(self._backend)
        except BaseException as exc:  # a broken loop must show as not ready, not hang requests
            log.exception("the decoding loop stopped")
            self.load_error = exc
            for job in list(self._active):
                job.send(Finished(result=None, error=exc))
            self._set_state(EngineState.FAILED)

    def _decode(self, backend: Backend) -> None:
        """Begin waiting jobs in free slots, then advance every running request by a token; until stopped."""
        free = list(range(backend.slots))
        running: dict[int, tuple[Job, Decoding]] = {}
        stopping = False
        while running or not stopping:
            while free and not stopping:
                try:
                    job = self._next_job(block=not running)
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                if job.cancelled.is_set():
                    job.send(Finished(result=None))
                    continue
                slot = backend.choose_slot(job.prompt, free)
                free.remove(slot)
                try:
                    running[slot] = (job, self._begin(backend, job, slot))
                except DeviceFailure as exc:
                    self._die(exc, [job] + [other for other, _ in running.values()])
                    return
                except Exception as exc:  # noqa: BLE001 - one request that cannot begin must not end the worker
                    log.warning("a request could not begin: %s", exc, exc_info=not isinstance(exc, PromptError))
                    self._count(job, None, exc)
                    free.append(slot)
                    self._notify()
            self._retire(running, free)
            if not running:
                continue
            try:
                backend.advance([request for _, request in running.values()])
            except DeviceFailure as exc:
                self._die(exc, [job for job, _ in running.values()])
                return
            except Exception as exc:  # noqa: BLE001 - the shared step failed: the whole batch with it
                log.exception("a decoding step failed")
                for slot, (job, _) in list(running.items()):
                    self._count(job, None, exc)
                    free.append(slot)
                running.clear()
                self._notify()
            self._retire(running, free)

    def _begin(self, backend: Backend, job: Job, slot: int) -> Decoding:
        """The job runs from here on: it counts as running (and for STUCK) while its prompt is read."""
        self._active.add(job)
        self._beat()
        self._notify()
        return backend.begin(
            job.prompt,
            job.params,
            slot,
            on_text=lambda text: job.send(TextPiece(text)),
            should_stop=self._should_stop(job),
        )

    def _retire(self, running: dict[int, tuple[Job, Decoding]], free: list[int]) -> None:
        for slot, (job, request) in list(running.items()):
            if not request.finished:
                continue
            if request.error is not None:
                log.error("a request failed on its own: %s", request.error)
            self._count(job, request.result, request.error)
            del running[slot]
            free.append(slot)
            self._notify()
