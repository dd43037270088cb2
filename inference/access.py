"""Who may call the service, decided from the request's headers before its body is read.

With an API key, every /v1/ route needs `Authorization: Bearer <key>` (a keyless client gets a 401,
not a complaint about its JSON). Without one the service is bound to loopback (settings.py insists), and
it then answers only requests addressed to a loopback name: a web page whose name was rebound to
127.0.0.1 (DNS rebinding) sends its own name in Host, and is refused.
"""

from __future__ import annotations

import re
import secrets

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from inference.errors import error_body

_LOOPBACK_HOST = re.compile(r"^(localhost|127\.0\.0\.1|\[::1\])(:\d{1,5})?$", re.IGNORECASE)


def has_key(headers: Headers, key: str) -> bool:
    scheme, _, given = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(given.strip().encode(), key.encode())


class RequireKey:
    """401 for /v1/ requests without the key."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.key = key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/") and not has_key(Headers(scope=scope), self.key):
            await _refuse(
                scope,
                send,
                401,
                "missing or wrong API key: send 'Authorization: Bearer <key>'",
                "invalid_api_key",
                {"WWW-Authenticate": "Bearer"},
            )
            return
        await self.app(scope, receive, send)


class LoopbackHostOnly:
    """403 for requests whose Host is not localhost, 127.0.0.1 or [::1] (any port)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not _LOOPBACK_HOST.match(Headers(scope=scope).get("host", "")):
            await _refuse(
                scope,
                send,
                403,
                "this server has no API key and answers only requests addressed to "
                "localhost, 127.0.0.1 or [::1]; set api_key to serve other names",
                "host_not_allowed",
            )
            return
        await self.app(scope, receive, send)


async def _refuse(
    scope: Scope, send: Send, status: int, message: str, code: str, headers: dict[str, str] | None = None
) -> None:
    response = JSONResponse(error_body(status, message, code), status_code=status, headers=headers)
    await response(scope, _no_body, send)


async def _no_body() -> dict:
    return {"type": "http.disconnect"}
