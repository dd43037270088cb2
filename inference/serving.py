"""Chat completions: validate a request against the model, queue it, and shape the answer.

HTTP concerns (routes, auth, body limits) live in app.py; the model is reached only through the
EngineClient interface (engine_client.py), and tensors live in the backends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from inference.admission import PreparationBusy, PreparationPool
from inference.backends import DeviceFailure, PreparedPrompt, PromptError, SamplingError, SamplingParams
from inference.conversation import build_conversation
from inference.engine_client import EngineClient, EngineState, EngineUnavailable, Finished, Job, QueueFull, TextPiece
from inference.errors import APIError, error_body, invalid_request
from inference.images import ImagePolicy, load_image
from inference.metrics import Metrics
from inference.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    Usage,
    new_completion_id,
    now,
)
from inference.settings import Settings
from inference.stops import StopMatcher

log = logging.getLogger(__name__)

# A token never spans more characters than this, so a longer text cannot fit the context; checked
# before tokenizing, which costs seconds for a huge prompt.
_MAX_CHARS_PER_TOKEN = 32


class ChatService:
    def __init__(self, settings: Settings, engine: EngineClient, metrics: Metrics) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = metrics
        self.model_name = settings.served_model_name
        self.image_policy = ImagePolicy(
            max_pixels=settings.max_image_pixels,
            max_bytes=settings.max_request_bytes,
            allow_remote=settings.allow_remote_images,
            remote_timeout_s=settings.remote_image_timeout_s,
            local_dir=settings.local_image_dir,
        )
        self.preparation = PreparationPool(settings.prepare_workers, settings.max_preparing)

    def require_ready(self) -> None:
        if self.engine.state.accepts_requests:
            return
        if self.engine.state is EngineState.LOADING:
            raise APIError(
                503,
                "the model is still loading; retry shortly",
                code="model_loading",
                headers={"Retry-After": str(self.settings.retry_after_s)},
            )
        raise APIError(503, "the model is not available", code="model_unavailable")

    async def create(self, body: ChatCompletionRequest, request: Request):
        started = time.monotonic()
        if body.model != self.model_name:
            raise APIError(
                404,
                f"the model {body.model!r} does not exist; this server serves {self.model_name!r}",
                code="model_not_found",
                param="model",
            )
        self.require_ready()
        requested = body.requested_max_tokens
        if requested is not None and requested > self.settings.max_tokens_cap:
            raise invalid_request(
                f"max_tokens {requested} is over this server's limit of {self.settings.max_tokens_cap}",
                param="max_tokens",
            )
        conversation = build_conversation(body.messages)
        context = self.engine.context_length
        if conversation.text_length > context * _MAX_CHARS_PER_TOKEN:
            raise _context_exceeded(context, None)
        deadline = started + self.settings.request_timeout_s
        try:
            prompt = await asyncio.wait_for(self._prepare(conversation), deadline - time.monotonic())
        except asyncio.TimeoutError:
            raise self._timed_out() from None
        params = self._sampling(body, prompt, context)
        try:
            job = self.engine.submit(prompt, params)
        except QueueFull:
            raise self._busy("too many requests are waiting", "queue_full") from None
        except EngineUnavailable:
            raise APIError(503, "the model is not available", code="model_unavailable") from None
        run = _Run(
            self.engine,
            job,
            StopMatcher(body.stop),
            self.metrics,
            started,
            prompt.prompt_tokens,
            deadline,
            self._timed_out,
        )
        completion_id, created = new_completion_id(), now()
        if body.stream:
            return StreamingResponse(
                self._stream(run, completion_id, created, body.include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return await self._complete(run, completion_id, created, request)

    async def _prepare(self, conversation) -> PreparedPrompt:
        """Fetch and decode the image and tokenize the conversation, in the bounded preparation pool."""
        try:
            image = None
            if conversation.image_url is not None:
                image = await self.preparation.run(load_image, conversation.image_url.url, self.image_policy)
            return await self.preparation.run(self.engine.prepare, conversation.messages, image)
        except PreparationBusy:
            raise self._busy("too many requests are being prepared", "preparation_full") from None
        except PromptError as exc:
            raise invalid_request(str(exc), code="invalid_conversation", param="messages") from None

    def _busy(self, why: str, code: str) -> APIError:
        return APIError(
            429,
            f"the server is busy: {why}; retry shortly",
            code=code,
            headers={"Retry-After": str(self.settings.retry_after_s)},
        )

    def _timed_out(self) -> APIError:
        return APIError(
            504,
            f"the request ran past this server's limit of {self.settings.request_timeout_s:g} s and was cancelled",
            code="request_timeout",
        )

    def _sampling(self, body: ChatCompletionRequest, prompt: PreparedPrompt, context: int) -> SamplingParams:
        room = context - prompt.prompt_tokens
        if room < 1:
            raise _context_exceeded(context, prompt.prompt_tokens)
        requested = body.requested_max_tokens
        if requested is not None and requested > room:
            raise invalid_request(
                f"this model's context is {context} tokens; the prompt has {prompt.prompt_tokens}, "
                f"so max_tokens can be at most {room} (asked for {requested})",
                code="context_length_exceeded",
                param="max_tokens",
            )
        settings = self.settings
        return SamplingParams(
            max_new_tokens=min(requested or settings.default_max_tokens, room),
            temperature=settings.default_temperature if body.temperature is None else body.temperature,
            top_p=settings.default_top_p if body.top_p is None else body.top_p,
            min_p=settings.default_min_p if body.min_p is None else body.min_p,
            seed=body.seed,
            min_new_tokens=min(body.min_tokens, requested or settings.default_max_tokens, room),
        )

    async def _complete(self, run: _Run, completion_id: str, created: int, request: Request) -> JSONResponse:
        watcher = asyncio.create_task(_cancel_on_disconnect(request, run))
        try:
            pieces = [piece async for piece in run.texts()]
        finally:
            watcher.cancel()
            run.abandon()
        completion = ChatCompletion(
            id=completion_id,
            created=created,
            model=self.model_name,
            choices=[Choice(message=AssistantMessage(content="".join(pieces)), finish_reason=run.finish_reason)],
            usage=run.usage,
        )
        return JSONResponse(completion.model_dump())

    async def _stream(self, run: _Run, completion_id: str, created: int, include_usage: bool) -> AsyncIterator[str]:
        def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> str:
            payload = ChatCompletionChunk(
                id=completion_id, created=created, model=self.model_name, choices=choices, usage=usage
            ).model_dump()
            if not include_usage:
                payload.pop("usage")
            return f"data: {json.dumps(payload)}\n\n"

        try:
            yield chunk([ChunkChoice(delta=Delta(role="assistant", content=""))])
            async for text in run.texts():
                yield chunk([ChunkChoice(delta=Delta(content=text))])
            yield chunk([ChunkChoice(delta=Delta(), finish_reason=run.finish_reason)])
            if include_usage:
                yield chunk([], usage=run.usage)
        except APIError as exc:  # the status line is gone already: the error travels as an event
            yield f"data: {json.dumps(error_body(exc.status, exc.message, exc.code))}\n\n"
        finally:
            run.abandon()
        yield "data: [DONE]\n\n"


class _Run:
    """One queued generation as the HTTP side sees it: text pieces, then a finish reason and usage."""

    def __init__(
        self,
        engine: EngineClient,
        job: Job,
        stops: StopMatcher,
        metrics: Metrics,
        started: float,
        prompt_tokens: int,
        deadline: float,
        timed_out: Callable[[], APIError],
    ) -> None:
        self.engine = engine
        self.job = job
        self.deadline = deadline
        self.timed_out = timed_out
        self.stops = stops
        self.metrics = metrics
        self.started = started
        self.prompt_tokens = prompt_tokens
        self.finish_reason = "stop"
        self.completion_tokens = 0
        self._done = False

    @property
    def usage(self) -> Usage:
        return Usage.of(self.prompt_tokens, self.completion_tokens)

    async def texts(self) -> AsyncIterator[str]:
        first = True
        while True:
            try:
                event = await asyncio.wait_for(self.job.events.get(), self.deadline - time.monotonic())
            except asyncio.TimeoutError:
                self.abandon()
                raise self.timed_out() from None
            if isinstance(event, TextPiece):
                text = self.stops.feed(event.text)
                if self.stops.stopped:
                    self.engine.cancel(self.job)
                if text:
                    if first:
                        self.metrics.observe_ttft(time.monotonic() - self.started)
                        first = False
                    yield text
                continue
            self._finish(event)
            if tail := self.stops.flush():
                yield tail
            return

    def _finish(self, event: Finished) -> None:
        self._done = True
        if event.error is not None:
            raise _failure(event.error)
        if event.result is None:
            raise APIError(503, "the request was cancelled before it ran", code="cancelled")
        self.completion_tokens = event.result.completion_tokens
        self.finish_reason = "stop" if self.stops.stopped else event.result.finish_reason
        elapsed = time.monotonic() - self.started
        self.metrics.observe_latency(elapsed)
        log.info(
            "chat completion: %d prompt + %d completion tokens in %.2f s (%s)",
            self.prompt_tokens,
            self.completion_tokens,
            elapsed,
            self.finish_reason,
        )

    def abandon(self) -> None:
        if not self._done:
            self._done = True
            self.engine.cancel(self.job)


async def _cancel_on_disconnect(request: Request, run: _Run) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            log.info("client disconnected: cancelling its generation")
            run.abandon()
            return


def _failure(error: BaseException) -> APIError:
    """What the client is told when its generation failed (the log has the details)."""
    if isinstance(error, PromptError):
        return invalid_request(str(error), code="context_length_exceeded", param="messages")
    if isinstance(error, SamplingError):
        return APIError(
            500,
            "sampling failed: the model's next-token probabilities were not finite; "
            "a lower temperature or top_p may avoid it",
            code="sampling_failed",
        )
    if isinstance(error, DeviceFailure):
        return APIError(
            503, "the server's accelerator failed; the server is restarting, retry shortly", code="device_failed"
        )
    return APIError(500, "generation failed on the server", code="generation_failed")


def _context_exceeded(context: int, prompt_tokens: int | None) -> APIError:
    size = f"{prompt_tokens} tokens" if prompt_tokens is not None else "far more tokens than that"
    return invalid_request(
        f"this model's context is {context} tokens; the prompt has {size}",
        code="context_length_exceeded",
        param="messages",
    )
