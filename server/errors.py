"""Error responses: PluginError → HTTP status with Vault's ``{"errors": [...]}`` body."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import orjson
import structlog
from aiohttp import web

from plugin.errors import PluginError

__all__ = ["error_response", "error_middleware", "setup_errors", "status_for"]

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


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a JSON error; unexpected ones into a logged, generic 500."""
    try:
        return await handler(request)
    except PluginError as exc:
        return error_response(exc.status, exc.messages, getattr(exc, "headers", None))  # Retry-After on 429
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 413:
            return error_response(413, ["http: request body too large"])
        if exc.status == 404:
            return error_response(404, [])
        if exc.status == 405:
            return error_response(405, ["unsupported operation"])
        return error_response(exc.status, [exc.reason])
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("internal_error", path=request.path, method=request.method)
        return error_response(500, ["internal error"])


def setup_errors(app: web.Application) -> None:
    """Install the error middleware (innermost, right around the handlers)."""
    app.middlewares.append(error_middleware)
