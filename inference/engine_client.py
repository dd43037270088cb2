"""What the serving layer may ask of the engine (EngineClient), and the types the two share.

The serving layer (serving.py, app.py) prepares prompts, reads the context length, readiness and GPU memory,
and submits and cancels jobs through this interface alone; the backend behind the engine stays out of its
reach. A job's events arrive on an asyncio queue: TextPiece after TextPiece, then one Finished.
"""

from __future__ import annotations

import asyncio
import enum
import threading
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from PIL import Image

from inference.backends.base import GenerationResult, GpuMemory, PreparedPrompt, PromptWork, SamplingParams


class QueueFull(Exception):
    """More requests are waiting than the configured maximum."""


class EngineUnavailable(Exception):
    """The engine takes no more jobs: it is stopped, or its model failed to load or its accelerator failed."""


class EngineState(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    STUCK = "stuck"  # a generation has not produced a token for stuck_after_s
    FAILING = "failing"  # the last max_consecutive_failures generations failed
    FAILED = "failed"  # the model could not be loaded
    DEAD = "dead"  # the accelerator failed; the process must be restarted
    STOPPED = "stopped"

    @property
    def accepts_requests(self) -> bool:
        return self in (EngineState.READY, EngineState.STUCK, EngineState.FAILING)


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
    waiting: bool = True  # in the wait list, counted in Engine.waiting; changed under the engine's lock

    def send(self, event: TextPiece | Finished) -> None:
        """Hand the job's reader an event, from any thread."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is gone: nobody is listening any more
            self.cancelled.set()


@runtime_checkable
class EngineClient(Protocol):
    """A Protocol rather than a base class: the serving layer names what it uses, and anything with these
    members (the Engine, a test's stand-in) serves, without inheriting an implementation."""

    @property
    def state(self) -> EngineState: ...

    load_error: BaseException | None  # why the model could not be loaded (state FAILED)

    @property
    def context_length(self) -> int:
        """The most prompt + answer tokens one request may have. Raises EngineUnavailable before the model loads."""

    def prepare(self, messages: list[dict], image: Image.Image | None) -> PreparedPrompt:
        """The model's prompt for a conversation; safe from any thread. Raises PromptError for a client's
        mistake, EngineUnavailable before the model loads."""

    def gpu_memory(self) -> list[GpuMemory]:
        """The memory of each GPU the model is on; empty on the CPU and before the model loads."""

    def prompt_work(self) -> PromptWork:
        """The model's images encoded and reused, and prompt tokens reused; zeros before it loads. Safe from any
        thread."""

    def submit(self, prompt: PreparedPrompt, params: SamplingParams) -> Job:
        """Queue a generation. Raises QueueFull when the wait list is full, EngineUnavailable when the engine
        takes no jobs. Call from the event loop that reads the job's events."""

    def cancel(self, job: Job) -> None:
        """Stop a job: a waiting one leaves the wait list at once, a running one stops at its next token."""

    def start(self) -> None:
        """Load the model and start serving, in the background."""

    def stop(self) -> None:
        """Cancel what waits and runs, and wait for the engine to end."""
