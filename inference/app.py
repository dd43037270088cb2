"""HTTP routes: the OpenAI-compatible API, health, metrics. No tensors here."""

from __future__ import annotations

import contextlib

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference import __version__
from inference.access import LoopbackHostOnly, RequireKey, has_key
from inference.engine_client import EngineClient, EngineState
from inference.errors import error_body, install_error_handlers
from inference.metrics import Metrics
from inference.protocol import ChatCompletionRequest, ModelCard, ModelList, now
from inference.request_limits import RequestLimits, check_request_limits
from inference.serving import ChatService
from inference.settings import Settings


def create_app(settings: Settings, engine: EngineClient, metrics: Metrics) -> FastAPI:
    service = ChatService(settings, engine, metrics)
    started_at = now()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="vlmkit", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    install_error_handlers(app)
    app.add_middleware(_LimitBodySize, max_bytes=settings.max_request_bytes)
    key = settings.api_key.get_secret_value() if settings.api_key else ""
    if key:
        app.add_middleware(RequireKey, key=key)  # outside the body limit: a keyless client learns of its key first
    else:
        app.add_middleware(LoopbackHostOnly)
    app.add_middleware(_CountOutcomes, metrics=metrics)  # outermost: counts the 401s and 413s too
    limits = RequestLimits(
        max_messages=settings.max_messages,
        max_content_parts=settings.max_content_parts,
        max_stop_sequences=settings.max_stop_sequences,
        max_stop_chars=settings.max_stop_chars,
    )
    metrics.watch_gpus(engine.gpu_memory)
    metrics.watch_prompts(engine.prompt_work)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        check_request_limits(body, limits)
        return await service.create(body, request)

    @app.get("/v1/models")
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=service.model_name, created=started_at)])

    @app.get("/health/live")
    async def live() -> dict:
        return {"status": "alive"}

    @app.get("/health/ready")
    async def ready(request: Request) -> JSONResponse:
        """State, model and version for anyone (a balancer, `vlmkit ops`); GPUs and a load error only with the
        key (or on a keyless, loopback-only server)."""
        state = engine.state
        body = {"status": state.value, "model": service.model_name, "version": __version__}
        if not key or has_key(request.headers, key):
            body["gpus"] = engine.gpu_memory()
            if state is EngineState.FAILED:
                body["error"] = str(engine.load_error)
        return JSONResponse(body, status_code=200 if state is EngineState.READY else 503)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


class _LimitBodySize:
    """Refuse bodies over the limit: by Content-Length before reading, else while reading."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._refuse(send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # reaches the error handlers as a 413
                    raise StarletteHTTPException(413, self._too_large_message())
            return message

        await self.app(scope, counting_receive, send)

    def _too_large_message(self) -> str:
        return f"the request body is larger than the {self.max_bytes} bytes allowed"

    async def _refuse(self, send: Send) -> None:
        response = JSONResponse(error_body(413, self._too_large_message(), "request_too_large"), status_code=413)
        await response({"type": "http"}, _never_receive, send)


async def _never_receive() -> Message:
    return {"type": "http.disconnect"}


class _CountOutcomes:
    """requests{outcome} for the chat endpoint, by the status that went out."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
            await self.app(scope, receive, send)
            return
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.metrics.count_request(_outcome(status))


def _outcome(status: int) -> str:
    if status < 400:
        return "ok"
    if status == 429:
        return "rate_limited"
    return "client_error" if status < 500 else "server_error"
