"""``sys/capabilities-self``, ``sys/capabilities`` and ``sys/capabilities-accessor``: what a
token's policies allow on given paths (``vault token capabilities``, hvac
``sys.get_capabilities``), computed by the same ACL that authorizes requests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from plugin.errors import InvalidRequest, UnsupportedOperation
from plugin.framework import Operation
from server.appkeys import POLICIES, TOKENS
from server.http.handlers import authorize, envelope, read_operation, release
from server.tokens.backend import entry_by_accessor

__all__ = ["capabilities_self", "capabilities_token", "capabilities_accessor", "MAX_PATHS"]

#: Paths one request may ask about (each costs one ACL match).
MAX_PATHS = 256


def _paths(data: dict[str, Any]) -> list[str]:
    """``paths`` (a list, or a comma-separated string as Vault accepts), else the
    deprecated single ``path``; leading slashes dropped, order and duplicates kept once."""
    raw = data.get("paths")
    if raw is None:
        raw = data.get("path")
    if raw is None:
        raise InvalidRequest("paths must be supplied")
    if isinstance(raw, str):
        raw = raw.split(",")
    if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
        raise InvalidRequest("paths must be a list of strings or a comma-separated string")
    paths = list(dict.fromkeys(p.strip().lstrip("/") for p in raw if p.strip()))
    if not paths:
        raise InvalidRequest("paths must be supplied")
    if len(paths) > MAX_PATHS:
        raise InvalidRequest(f"too many paths: {len(paths)} (at most {MAX_PATHS})")
    return paths


#: Finds the token whose capabilities are asked for: (request, body, caller) -> entry.
_Target = Callable[[web.Request, dict[str, Any], Any], Awaitable[Any]]


async def _capabilities(request: web.Request, acl_path: str, target: _Target) -> web.Response:
    """Check the caller may use ``acl_path`` (``update``), then answer for ``target``'s token."""
    op, data = await read_operation(request)
    if op is not Operation.UPDATE:
        raise UnsupportedOperation()
    caller = await authorize(request, acl_path, ("update",))
    try:
        paths = _paths(data)
        entry = await target(request, data, caller)
        acl = await request.app[POLICIES].acl_for(entry.policies)
        reply: dict[str, Any] = {path: acl.capabilities(path) for path in paths}
        if len(paths) == 1:  # Vault's older single-path answer, still read by its CLI
            reply["capabilities"] = reply[paths[0]]
        return envelope(request, reply, copy_top=True)
    finally:
        await release(request, caller)


async def _caller(_request: web.Request, _data: dict[str, Any], caller: Any) -> Any:
    return caller


async def _by_token(request: web.Request, data: dict[str, Any], _caller: Any) -> Any:
    raw = data.get("token")
    if not isinstance(raw, str) or not raw:
        raise InvalidRequest("missing token")
    entry = await request.app[TOKENS].lookup(raw)
    if entry is None:
        raise InvalidRequest("invalid token")
    return entry


async def _by_accessor(request: web.Request, data: dict[str, Any], _caller: Any) -> Any:
    return await entry_by_accessor(request.app[TOKENS], data.get("accessor"))


async def capabilities_self(request: web.Request) -> web.Response:
    """``POST sys/capabilities-self`` ``{"paths": [...]}``: the calling token's capabilities
    (the default policy grants it)."""
    return await _capabilities(request, "sys/capabilities-self", _caller)


async def capabilities_token(request: web.Request) -> web.Response:
    """``POST sys/capabilities`` ``{"token": ..., "paths": [...]}``: another token's
    capabilities (needs ``update`` on ``sys/capabilities``)."""
    return await _capabilities(request, "sys/capabilities", _by_token)


async def capabilities_accessor(request: web.Request) -> web.Response:
    """``POST sys/capabilities-accessor`` ``{"accessor": ..., "paths": [...]}`` (needs
    ``update`` on ``sys/capabilities-accessor``)."""
    return await _capabilities(request, "sys/capabilities-accessor", _by_accessor)
