"""Error responses: PluginError → HTTP status with Vault's ``{"errors": [...]}`` body."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
import structlog
from aiohttp import web

from plugin.errors import PluginError

__all__ = ["error_response", "error_middleware", "response_for", "setup_errors", "status_for"]

log = structlog.get_logger("authmount.errors")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def status_for(exc: PluginError) -> int:
    """The HTTP status of a plugin error (its class attribute; 500 for the bare base)."""
    return exc.status


def error_response(status: int, messages: list[str], headers: dict[str, str] | None = None) -> web.Response:
    """A Vault error body. ``Content-Type`` is exactly ``application/json`` (hvac needs it)."""
    return web.Response(
        status=status,
        body=orjson.dumps({"errors": messages}),
        content_type="application/json",
        headers=headers,
    )


def response_for(request: web.Request, exc: Exception) -> web.Response | None:
    """The JSON error reply for ``exc`` raised by a handler; None: re-raise it.

    Call it inside the ``except`` block (an unexpected error is logged with its traceback).
    """
    if isinstance(exc, PluginError):
        return error_response(exc.status, exc.messages, getattr(exc, "headers", None))  # Retry-After on 429
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            return None
        if exc.status == 413:
            return error_response(413, ["http: request body too large"])
        if exc.status == 404:
            return error_response(404, [])
        if exc.status == 405:
            return error_response(405, ["unsupported operation"])
        return error_response(exc.status, [exc.reason])
    if isinstance(exc, ConnectionResetError):
        return None
    log.exception("internal_error", path=request.path, method=request.method)
    return error_response(500, ["internal error"])


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a JSON error; unexpected ones into a logged, generic 500."""
    try:
        return await handler(request)
    except Exception as exc:  # CancelledError is a BaseException: it passes through
        resp = response_for(request, exc)
        if resp is None:
            raise
        return resp


def setup_errors(app: web.Application) -> None:
    """Install the error middleware (innermost, right around the handlers)."""
    app.middlewares.append(error_middleware)
