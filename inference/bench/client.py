"""One streamed chat request, timed as the client sees it, through the official `openai` async client.

Times are `time.perf_counter()` seconds. TTFT runs from just before the request is sent to the first
chunk that carries content text (the role-only first chunk of many servers does not count); every
later content chunk is stamped too, so the gaps between them are the inter-token latencies. Token
counts are the server's own (`usage`, asked for with `stream_options.include_usage`): a chunk can
carry more than one token, so chunks are counted only to be compared with the usage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import httpx
import openai

from inference.bench.workload import BenchRequest


@dataclass(frozen=True)
class RequestOptions:
    model: str
    max_tokens: int
    fixed_output: bool  # send min_tokens = max_tokens (vLLM's extension): every answer is max_tokens long
    temperature: float | None = None
    seed: int | None = None  # request i is sent with seed + i


@dataclass
class RequestResult:
    index: int
    image: str
    prompt: str
    sent_at: float  # seconds after the level started
    ok: bool = False
    error_kind: str | None = None  # "HTTP 401", "timeout", "connection", "stream error", "no usage", ...
    error: str | None = None
    ttft: float | None = None
    e2e: float | None = None  # request sent -> stream closed
    chunk_times: list[float] = field(default_factory=list)  # content chunks, seconds after sending
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None

    @property
    def chunks(self) -> int:
        return len(self.chunk_times)

    @property
    def itl(self) -> list[float]:
        """Gaps between consecutive content chunks."""
        return [later - earlier for earlier, later in zip(self.chunk_times, self.chunk_times[1:])]

    @property
    def decode_tok_per_s(self) -> float | None:
        """(completion_tokens - 1) / (last content chunk - first): tokens after the first, per second."""
        if not self.ok or not self.completion_tokens or self.completion_tokens < 2 or self.chunks < 2:
            return None
        span = self.chunk_times[-1] - self.chunk_times[0]
        return (self.completion_tokens - 1) / span if span > 0 else None

    @property
    def chunks_match_usage(self) -> bool | None:
        """One content chunk per counted token. A stop token is counted by most servers but has no
        text, so an answer that ended on one may stream one chunk fewer."""
        if not self.ok or self.completion_tokens is None:
            return None
        allowed = {self.completion_tokens}
        if self.finish_reason == "stop":
            allowed.add(self.completion_tokens - 1)
        return self.chunks in allowed


def make_client(url: str, api_key: str, timeout: float, concurrency: int) -> openai.AsyncOpenAI:
    """No retries (a retried request would time two attempts as one); a pool that fits every client."""
    limits = httpx.Limits(max_connections=max(concurrency, 1) + 4, max_keepalive_connections=max(concurrency, 1) + 4)
    return openai.AsyncOpenAI(
        base_url=url,
        api_key=api_key,
        max_retries=0,
        timeout=timeout,
        http_client=openai.DefaultAsyncHttpxClient(limits=limits, timeout=timeout),
    )


async def served_model(client: openai.AsyncOpenAI) -> str:
    """The id of the server's model; with several, the first listed."""
    models = await client.models.list()
    if not models.data:
        raise LookupError("the server lists no models; name one with --model")
    return models.data[0].id


async def send(
    client: openai.AsyncOpenAI, request: BenchRequest, options: RequestOptions, level_start: float
) -> RequestResult:
    extra: dict = {}
    if options.temperature is not None:
        extra["temperature"] = options.temperature
    if options.seed is not None:
        extra["seed"] = options.seed + request.index
    extra_body = {"min_tokens": options.max_tokens} if options.fixed_output else None
    sent = time.perf_counter()
    result = RequestResult(request.index, request.image.name, request.prompt, sent_at=sent - level_start)
    usage = None
    try:
        stream = await client.chat.completions.create(
            model=options.model,
            messages=request.messages(),
            max_tokens=options.max_tokens,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=extra_body,
            **extra,
        )
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.choices:
                choice = chunk.choices[0]
                if choice.delta is not None and choice.delta.content:
                    result.chunk_times.append(now - sent)
                if choice.finish_reason:
                    result.finish_reason = choice.finish_reason
            if chunk.usage is not None:
                usage = chunk.usage
        result.e2e = time.perf_counter() - sent
    except Exception as exc:  # noqa: BLE001 - every failure is a result to count, never a crash of the run
        result.error_kind, result.error = classify(exc)
        return result
    if usage is None:
        result.error_kind = "no usage"
        result.error = "the stream ended without a usage chunk (stream_options.include_usage)"
        return result
    result.prompt_tokens, result.completion_tokens = usage.prompt_tokens, usage.completion_tokens
    result.ttft = result.chunk_times[0] if result.chunk_times else None
    result.ok = True
    return result


def classify(exc: BaseException) -> tuple[str, str]:
    """A short kind to count errors by, and the message."""
    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        error = body.get("error") if isinstance(body.get("error"), dict) else body
        return f"HTTP {exc.status_code}", str(error.get("message") or exc.message)
    if isinstance(exc, openai.APITimeoutError):
        return "timeout", "no complete answer within --timeout"
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        return "connection", f"{type(cause).__name__}: {cause}"
    if isinstance(exc, openai.APIError):  # an error event inside a stream that had started
        body = exc.body if isinstance(exc.body, dict) else {}
        code = body.get("code")
        return ("stream error" + (f" {code}" if code else "")), exc.message
    return type(exc).__name__, str(exc)
