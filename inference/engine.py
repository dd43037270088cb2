"""The model's one worker thread: loads the backend, then runs queued generations one at a time.

The HTTP side submits jobs and reads their events from an asyncio queue; the worker pushes text
pieces into it from its own thread. A bounded wait list gives back-pressure (QueueFull -> 429), and a
job's cancel flag stops its generation at the next token.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from inference.backends import Backend, GenerationResult, PreparedPrompt, SamplingParams

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More requests are waiting than the configured maximum."""


class EngineState(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True)
class TextPiece:
    text: str


@dataclass(frozen=True)
class Finished:
    result: GenerationResult | None  # None when cancelled before it started
    error: BaseException | None = None


@dataclass(eq=False)  # compared and hashed by identity: the engine keeps sets of running jobs
class Job:
    prompt: PreparedPrompt
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()

    def _send(self, event: TextPiece | Finished) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is gone: nobody is listening any more
            self.cancelled.set()


class Engine:
    def __init__(self, load: Callable[[], Backend], max_queue: int) -> None:
        self._load = load
        self._max_queue = max_queue
        self._listeners: list[Callable[[Engine], None]] = []
        self._result_listeners: list[Callable[[Job, GenerationResult], None]] = []
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._waiting = 0
        self._active: set[Job] = set()
        self._thread = threading.Thread(target=self._work, name="vlmkit-engine", daemon=True)
        self.state = EngineState.LOADING
        self.load_error: BaseException | None = None
        self.backend: Backend | None = None

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def running(self) -> int:
        return len(self._active)

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
        with self._lock:
            if self._waiting >= self._max_queue:
                raise QueueFull
            self._waiting += 1
        self._jobs.put(job)
        self._notify()
        return job

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel what is queued and running, and wait for the worker to end."""
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancel()
                self._finish_waiting(job)
        for job in list(self._active):
            job.cancel()
        self._jobs.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.state = EngineState.STOPPED
        self._notify()

    def _finish_waiting(self, job: Job) -> None:
        with self._lock:
            self._waiting -= 1
        job._send(Finished(result=None))

    def _work(self) -> None:
        try:
            self.backend = self._load()
        except BaseException as exc:  # noqa: BLE001 - any failure to load is reported, not raised in a thread
            log.error("the model could not be loaded: %s", exc)
            self.load_error = exc
            self.state = EngineState.FAILED
            self._notify()
            return
        self.state = EngineState.READY
        self._notify()
        if getattr(self.backend, "batch_slots", 1) > 1:
            try:
                self._work_batched()
            except BaseException as exc:  # a broken batch loop must show as not ready, not hang requests
                log.exception("the batched decoding loop stopped")
                self.load_error = exc
                self.state = EngineState.FAILED
                for job in list(self._active):
                    job._send(Finished(result=None, error=exc))
                self._notify()
            return
        while (job := self._jobs.get()) is not None:
            with self._lock:
                self._waiting -= 1
            if job.cancelled.is_set():
                job._send(Finished(result=None))
                continue
            self._active.add(job)
            self._notify()
            try:
                result = self.backend.generate(
                    job.prompt, job.params, on_text=lambda text, job=job: job._send(TextPiece(text)),
                    should_stop=job.cancelled.is_set,
                )
                job._send(Finished(result=result))
                for listener in self._result_listeners:
                    listener(job, result)
            except Exception as exc:  # noqa: BLE001 - one failed generation must not end the worker
                log.exception("generation failed")
                job._send(Finished(result=None, error=exc))
            finally:
                self._active.discard(job)
                self._notify()

    def _work_batched(self) -> None:
        """Continuous batching: admit queued jobs into free slots, then decode one token for all of them."""
        free = list(range(self.backend.batch_slots))
        active: dict[int, tuple[Job, object]] = {}
        stopping = False
        while active or not stopping:
            while free and not stopping:
                try:
                    job = self._jobs.get(block=not active)
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                with self._lock:
                    self._waiting -= 1
                if job.cancelled.is_set():
                    job._send(Finished(result=None))
                    continue
                slot = free.pop()
                try:
                    request = self.backend.begin(job.prompt, job.params, slot,
                                                 on_text=lambda text, job=job: job._send(TextPiece(text)),
                                                 should_stop=job.cancelled.is_set)
                except Exception as exc:  # noqa: BLE001 - one failed prefill must not end the worker
                    log.exception("prefill failed")
                    job._send(Finished(result=None, error=exc))
                    free.append(slot)
                    continue
                active[slot] = (job, request)
                self._active.add(job)
                self._notify()
            self._retire(active, free)
            if not active:
                continue
            try:
                self.backend.advance([request for _, request in active.values()])
            except Exception as exc:  # noqa: BLE001
                log.exception("a batched decoding step failed")
                for slot, (job, _) in list(active.items()):
                    job._send(Finished(result=None, error=exc))
                    self._active.discard(job)
                    free.append(slot)
                active.clear()
                self._notify()
            self._retire(active, free)

    def _retire(self, active: dict, free: list[int]) -> None:
        for slot, (job, request) in list(active.items()):
            if request.result is None:
                continue
            job._send(Finished(result=request.result))
            for listener in self._result_listeners:
                listener(job, request.result)
            del active[slot]
            free.append(slot)
            self._active.discard(job)
            self._notify()
