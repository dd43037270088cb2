"""What a test hands a backend directly (no server): prompts, fixed-length greedy parameters, a request
decoded alone in one slot."""

from __future__ import annotations

from PIL import Image

from inference.backends import Backend, PreparedPrompt, SamplingParams
from inference.conversation import build_conversation
from inference.protocol import Message


def fixed_greedy(tokens: int) -> SamplingParams:
    """Greedy, and exactly `tokens` long (the end of the turn held back), so answers compare token for token."""
    return SamplingParams(max_new_tokens=tokens, temperature=0, top_p=1, min_p=0, min_new_tokens=tokens)


def prompt_for(backend: Backend, messages: list[dict], image: Image.Image | None = None) -> PreparedPrompt:
    """OpenAI-style messages through the service's conversation rules and the backend's template."""
    conversation = build_conversation([Message.model_validate(message) for message in messages])
    return backend.prepare(conversation.messages, image)


def decode_alone(backend: Backend, prompt: PreparedPrompt, params: SamplingParams, slot: int = 0) -> str:
    """The answer of one request begun in `slot` and advanced until it finishes, with no other request."""
    pieces: list[str] = []
    request = backend.begin(prompt, params, slot, on_text=pieces.append, should_stop=lambda: False)
    while not request.finished:
        backend.advance([request])
    return "".join(pieces)
