"""OpenAI Chat Completions request and response models (the subset this service speaks)."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class _Request(BaseModel):
    # Fields this service does not know (user, metadata, store, ...) are ignored; the OpenAI fields that would
    # change the answer's meaning are declared on ChatCompletionRequest and refused there. NaN and Infinity are
    # refused everywhere.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class ImageURL(_Request):
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] = "auto"


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ImagePart(_Request):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]

    def texts(self) -> list[str]:
        if isinstance(self.content, str):
            return [self.content]
        return [part.text for part in self.content if isinstance(part, TextPart)]

    def images(self) -> list[ImageURL]:
        if isinstance(self.content, str):
            return []
        return [part.image_url for part in self.content if isinstance(part, ImagePart)]


class StreamOptions(_Request):
    include_usage: bool = False


class ChatCompletionRequest(_Request):
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    min_p: float | None = Field(None, ge=0, le=1)
    min_tokens: int = Field(0, ge=0, description="vLLM's extension: generate at least this many tokens.")
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, description="Only one choice per request is supported.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Declared only to be refused (see _refuse_unsupported): accepting them silently would change what the
    # answer means without the client knowing.
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    functions: list[Any] | None = None
    function_call: str | dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, Any] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        """JSON may carry lone surrogates (\\ud800): text no tokenizer or response can encode."""
        bad = _first_invalid_text(data, ())
        if bad is not None:
            path = ".".join(str(part) for part in bad)
            raise PydanticCustomError(
                "invalid_unicode",
                "{param}: the text holds a lone surrogate (invalid Unicode); send valid UTF-8",
                {"param": path or None},
            )
        return data

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else value
        if any(not stop for stop in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

    @model_validator(mode="after")
    def _refuse_unsupported(self) -> ChatCompletionRequest:
        for param, unsupported in (
            ("n", self.n > 1 and "only one choice per request is supported"),
            (
                "response_format",
                self.response_format is not None
                and self.response_format.get("type") != "text"
                and "only {'type': 'text'} is supported: answers cannot be constrained to JSON or a schema",
            ),
            (
                "tools",
                self.tools
                and self.tool_choice != "none"
                and "tool calling is not supported (tools are accepted only with tool_choice: 'none')",
            ),
            (
                "tool_choice",
                self.tool_choice not in (None, "none", "auto") and not self.tools and "tool calling is not supported",
            ),
            ("functions", self.functions and self.function_call != "none" and "function calling is not supported"),
            ("function_call", self.function_call not in (None, "none", "auto") and "function calling is not supported"),
            ("logprobs", self.logprobs and "log probabilities are not returned by this server"),
            ("top_logprobs", self.top_logprobs and "log probabilities are not returned by this server"),
            ("logit_bias", self.logit_bias and "logit_bias is not supported"),
            ("frequency_penalty", self.frequency_penalty and "frequency_penalty is not supported (only 0)"),
            ("presence_penalty", self.presence_penalty and "presence_penalty is not supported (only 0)"),
            (
                "modalities",
                self.modalities is not None and set(self.modalities) - {"text"} and "only text answers are supported",
            ),
            ("audio", self.audio is not None and "audio answers are not supported"),
            ("prediction", self.prediction is not None and "predicted outputs are not supported"),
            ("web_search_options", self.web_search_options is not None and "web search is not supported"),
        ):
            if unsupported:
                raise PydanticCustomError(
                    "unsupported_parameter", "{param}: {reason}", {"param": param, "reason": unsupported}
                )
        return self

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


FinishReason = Literal["stop", "length"]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "vlmkit"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def _first_invalid_text(value: Any, path: tuple) -> tuple | None:
    """The path to the first string (or key) that is not encodable Unicode, or None. Iterative: JSON may nest
    as deep as the parser allows."""
    pending = [(value, path)]
    while pending:
        value, path = pending.pop()
        if isinstance(value, str):
            if not _encodable(value):
                return path
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and not _encodable(key):
                    return path
                pending.append((item, (*path, key)))
        elif isinstance(value, list):
            pending.extend((item, (*path, index)) for index, item in enumerate(value))
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())
