"""What every model backend provides: load, prepare a prompt, generate text."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

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


@dataclass(frozen=True)
class GenerationResult:
    finish_reason: Literal["stop", "length"]
    completion_tokens: int


class Backend(abc.ABC):
    """One loaded model. Not thread-safe: the engine calls `generate` from one thread at a time."""

    name: str

    @property
    @abc.abstractmethod
    def context_length(self) -> int: ...

    @abc.abstractmethod
    def prepare(self, messages: list[dict], image: Image.Image | None) -> PreparedPrompt:
        """Apply the chat template and the processor; safe to call from any thread."""

    @abc.abstractmethod
    def generate(
        self,
        prompt: PreparedPrompt,
        params: SamplingParams,
        on_text: Callable[[str], None],
        should_stop: Callable[[], bool],
    ) -> GenerationResult:
        """Generate, calling `on_text` with each new piece of answer text; stop early when `should_stop()`.

        `should_stop` is called once per token (the engine's heartbeat). Raises PromptError when the request
        cannot fit, SamplingError when its distribution breaks, DeviceFailure when the accelerator fails."""
