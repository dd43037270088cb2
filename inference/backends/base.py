"""What the engine asks of a model backend: prepare a prompt, and decode requests in slots (begin, advance)."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from PIL import Image


class PromptError(ValueError):
    """The conversation cannot be turned into a prompt for this model (a client error)."""


class BackendUnavailable(RuntimeError):
    """The backend cannot run on this host (missing package, no GPU); the message says what to change."""


class SamplingError(RuntimeError):
    """The model's next-token distribution held NaN or infinite values: this request cannot go on."""


class DeviceFailure(RuntimeError):
    """The accelerator failed (device-side assert, illegal memory access, ECC error): every later call on it
    would fail too, so the process must end and start again."""


# Below this, dividing the logits by the temperature can overflow to inf/NaN; such a request decodes greedily,
# which is what a temperature this close to 0 means anyway.
GREEDY_BELOW_TEMPERATURE = 1e-4


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float
    top_p: float
    min_p: float
    seed: int | None = None
    min_new_tokens: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW_TEMPERATURE


@dataclass
class PreparedPrompt:
    inputs: dict[str, Any]  # tensors on the CPU, as the processor returned them
    prompt_tokens: int
    image_key: str | None = None  # the image's digest (recent_images.py), when the backend keeps recent images


@dataclass(frozen=True)
class PromptWork:
    """What a backend did, and was spared, reading its prompts since it loaded."""

    images_encoded: int = 0  # images it ran through the vision encoder
    images_reused: int = 0  # images whose encoder output it had kept from an earlier prompt, not encoded again
    tokens_reused: int = 0  # prompt tokens whose keys and values a slot still held from the conversation's last turn


@dataclass(frozen=True)
class GenerationResult:
    finish_reason: Literal["stop", "length"]
    completion_tokens: int


class GpuMemory(TypedDict):
    index: int
    name: str
    memory_allocated_bytes: int
    memory_total_bytes: int


class Decoding:
    """One request in a decoding slot, as the engine sees it: finished once the backend has set `result`
    (its answer ended) or `error` (it failed on its own; the other requests in the batch decode on)."""

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.result: GenerationResult | None = None
        self.error: Exception | None = None

    @property
    def finished(self) -> bool:
        return self.result is not None or self.error is not None


class Backend(abc.ABC):
    """One loaded model that decodes up to `slots` requests together.

    The engine calls `begin` and `advance` from its one worker thread; `prepare`, `gpu_memory` and
    `prompt_work` are safe from any thread. A failure of the accelerator is raised as DeviceFailure from any
    of them."""

    name: str

    @property
    @abc.abstractmethod
    def context_length(self) -> int:
        """The most prompt + answer tokens one request may have; `begin` refuses more."""

    @property
    @abc.abstractmethod
    def slots(self) -> int:
        """How many requests decode together, in slots numbered from 0."""

    @abc.abstractmethod
    def prepare(self, messages: list[dict], image: Image.Image | None) -> PreparedPrompt:
        """Apply the chat template and the processor. Raises PromptError for a conversation it cannot take."""

    @abc.abstractmethod
    def gpu_memory(self) -> list[GpuMemory]:
        """For each GPU the model is on, its memory in use and its total; empty on the CPU."""

    @abc.abstractmethod
    def prompt_work(self) -> PromptWork:
        """How many images it has encoded and reused, and how many prompt tokens it did not read again."""

    def choose_slot(self, prompt: PreparedPrompt, free: list[int]) -> int:
        """Which of the `free` slots (never empty; the last one freed last) `begin` is to get this prompt in. The
        engine asks before each `begin`; this default takes the slot freed last."""
        return free[-1]

    @abc.abstractmethod
    def begin(
        self,
        prompt: PreparedPrompt,
        params: SamplingParams,
        slot: int,
        on_text: Callable[[str], None],
        should_stop: Callable[[], bool],
    ) -> Decoding:
        """Start a request in the free `slot`: read its prompt and pick its first token, or leave that to the
        next calls of `advance` (a backend that reads a new request's prompt alongside the others' steps).

        `on_text` receives each new piece of answer text; `should_stop` is called once per token (the
        engine's heartbeat) and ends the request when true. The request may come back finished. Raises
        PromptError when the request cannot fit, SamplingError when its distribution breaks."""

    @abc.abstractmethod
    def advance(self, requests: list[Decoding]) -> None:
        """One more token for each of these unfinished requests (begun here, each in its own slot); a request
        whose prompt `begin` left unread gets its first tokens once its prompt is read, and none before.

        A request's own failure sets its `error` and ends it alone; a failure of the step they share
        is raised, and fails them all."""

    def generate(
        self,
        prompt: PreparedPrompt,
        params: SamplingParams,
        on_text: Callable[[str], None],
        should_stop: Callable[[], bool],
    ) -> GenerationResult:
        """One request alone in slot 0, to its end: for tests and measuring scripts. The engine schedules
        `begin` and `advance` itself; it never calls this."""
        request = self.begin(prompt, params, 0, on_text, should_stop)
        while not request.finished:
            self.advance([request])
        if request.error is not None:
            raise request.error
        return request.result
