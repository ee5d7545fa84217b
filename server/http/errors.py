"""Error responses: PluginError → HTTP status with Vault's ``{"errors": [...]}`` body."""

from __future__ import annotations

import orjson
import structlog
from aiohttp import web

from plugin.errors import PluginError
from plugin.sealing import NewerTermError
from server import telemetry
from server.appkeys import KEYRING, STORAGE
from server.http.reply import JSONReply
from server.storage import unavailable_reason

__all__ = ["error_response", "response_for", "reload_keyring", "foreign_namespace", "STORAGE_FAILURES"]

log = structlog.get_logger("authmount.errors")
#: Storage failures answered 503 since start, by reason (logged: the first, then every 100th).
STORAGE_FAILURES: dict[str, int] = {}


def error_response(status: int, messages: list[str], headers: dict[str, str] | None = None,
                   data: object = None) -> web.Response:
    """A Vault error body (with ``data`` beside ``errors`` when given). ``Content-Type`` is
    exactly ``application/json`` (hvac needs it)."""
    body = {"errors": messages} if data is None else {"errors": messages, "data": data}
    reply = JSONReply(orjson.dumps(body), status)
    if headers:
        reply.headers.update(headers)
    return reply


def foreign_namespace(value: str | None) -> str | None:
    """The namespace a namespace header's ``value`` names when it is not the root one (the only
    one authmount has: empty, ``root``, slashes around either), else None."""
    name = value.strip().strip("/") if value is not None else ""
    return None if name in ("", "root") else name


def response_for(request: web.Request, exc: Exception) -> web.Response | None:
    """The JSON error reply for ``exc`` raised by a handler; None: re-raise it.

    Call it inside the ``except`` block (an unexpected error is logged with its traceback).
    """
    if isinstance(exc, PluginError):
        return error_response(exc.status, exc.messages, getattr(exc, "headers", None), exc.data)  # Retry-After on 429
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
    if isinstance(exc, NewerTermError):  # ``reload_keyring`` ran: the client's retry opens it
        log.warning("keyring_newer_term", path=request.path, error=str(exc))
        return error_response(503, ["storage unavailable: the keyring was rotated by another node; retry"],
                              {"Retry-After": "1"})
    reason = unavailable_reason(exc)
    if reason is not None:
        STORAGE_FAILURES[reason] = count = STORAGE_FAILURES.get(reason, 0) + 1
        telemetry.storage_failed(reason)  # authmount_storage_unavailable_total, readiness
        if count == 1 or count % 100 == 0:  # a failing disk must not flood the log
            log.error("storage_unavailable", reason=reason, count=count, error=str(exc)[:200], path=request.path)
        return error_response(503, [f"storage unavailable: {reason}"], {"Retry-After": "1"})
    log.exception("internal_error", path=request.path, method=request.method)
    return error_response(500, ["internal error"])


async def reload_keyring(request: web.Request) -> None:
    """Re-read the keyring after a handler met a value sealed under a newer term (another
    node or worker rotated it, and its announcement has not arrived here yet). Only values
    read from storage get there (an OIDC state, the one sealed value a caller sends, is
    refused as expired instead), so no caller can make a node re-read it at will."""
    try:
        await request.app[KEYRING].reload(request.app[STORAGE])
    except Exception as exc:  # the 503 goes out anyway; the announcement will reload it
        log.warning("keyring_reload_failed", error=str(exc)[:200])
