"""The server's bounds on one request's shape, checked before any work is done for it (settings.py)."""

from __future__ import annotations

from dataclasses import dataclass

from inference.errors import invalid_request
from inference.protocol import ChatCompletionRequest


@dataclass(frozen=True)
class RequestLimits:
    max_messages: int
    max_content_parts: int
    max_stop_sequences: int
    max_stop_chars: int


def check_request_limits(request: ChatCompletionRequest, limits: RequestLimits) -> None:
    if len(request.messages) > limits.max_messages:
        raise invalid_request(
            f"the conversation has {len(request.messages)} messages; this server takes at most {limits.max_messages}",
            code="too_many_messages",
            param="messages",
        )
    for index, message in enumerate(request.messages):
        if isinstance(message.content, list) and len(message.content) > limits.max_content_parts:
            raise invalid_request(
                f"message {index} has {len(message.content)} content parts; this server takes at "
                f"most {limits.max_content_parts}",
                code="too_many_content_parts",
                param=f"messages.{index}.content",
            )
    stops = request.stop or []
    if len(stops) > limits.max_stop_sequences:
        raise invalid_request(
            f"at most {limits.max_stop_sequences} stop sequences (got {len(stops)})",
            code="too_many_stop_sequences",
            param="stop",
        )
    if any(len(stop) > limits.max_stop_chars for stop in stops):
        raise invalid_request(
            f"stop sequences may be at most {limits.max_stop_chars} characters long",
            code="stop_sequence_too_long",
            param="stop",
        )
