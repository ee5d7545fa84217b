"""``sys/wrapping/wrap``, ``lookup``, ``unwrap`` and ``rewrap``: the wrapping tokens that
``X-Vault-Wrap-TTL`` on a login, a token creation or ``sys/wrapping/wrap`` returns
(``server.tokens.wrapping``).

The wrapping token is the ``token`` parameter, or the calling token itself (``vault unwrap``
without an argument). ``lookup`` needs no token (Vault's rule): it uses nothing up. ``unwrap``
and ``rewrap`` use the wrapping token up: given as ``token``, it is revoked here; given as
the calling token, its one use was this request and the server revokes it after.
``wrap`` answers the data it is sent, which the server wraps (Vault Agent's sinks with
``wrap_ttl`` hand their token over so); it wraps at most ``MAX_WRAPPED_BYTES`` of JSON: a
wrapping token hands a token or a credential over, it is no store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from plugin.errors import InvalidRequest, PermissionDenied
from plugin.framework import Operation, Request, Response
from plugin.schema import Field, FieldSet, FieldType
from server.sys.core import SysPath, raw_json
from server.tokens.entry import TokenEntry
from server.tokens.wrapping import INVALID, Wrapping, is_wrapping, wrap_envelope

if TYPE_CHECKING:
    from server.sys.backend import SysBackend

__all__ = ["MAX_WRAPPED_BYTES", "paths", "WRAPPING_FIELDS"]

#: The most JSON ``sys/wrapping/wrap`` wraps (Vault Agent's sink wraps a token: ~150 bytes).
MAX_WRAPPED_BYTES = 16384

WRAPPING_FIELDS = FieldSet({
    "token": Field(FieldType.STRING, "The wrapping token; defaults to the calling token.", default="",
                   sensitive=True),
})


def _caller(req: Request) -> tuple[TokenEntry | None, str]:
    """The calling token (entry and raw) as the handler sees it."""
    tok = req.token or {}
    entry = tok.get("entry")
    return (entry if isinstance(entry, TokenEntry) else None), str(tok.get("raw") or "")


def paths(b: SysBackend) -> list[SysPath]:
    """The four paths; ``lookup`` needs no token."""
    core = b.core

    def wrapping() -> Wrapping:
        return Wrapping(core.tokens, core.keyring)

    async def target(req: Request, values: dict[str, Any]) -> tuple[TokenEntry, bool]:
        """(the wrapping token, whether this handler revokes it)."""
        caller, raw_caller = _caller(req)
        raw = values.get("token") or ""
        if not raw or raw == raw_caller:
            if not is_wrapping(caller):
                raise InvalidRequest(INVALID)
            assert caller is not None
            return caller, False  # used up by this request: the server revokes it after
        return await wrapping().entry(raw), True

    async def lookup(req: Request, values: dict[str, Any]) -> Response:
        raw = values.get("token") or _caller(req)[1]
        if not raw:  # OpenBao 2.7.2's answer to a lookup of nothing
            raise PermissionDenied("error validating wrapping token: token is empty")
        w = wrapping()
        return Response(data=await w.lookup(await w.entry(raw)))

    async def unwrap(req: Request, values: dict[str, Any]) -> Response:
        entry, revoke = await target(req, values)
        body = await wrapping().unwrap(entry, revoke=revoke)
        return Response(raw_body=body, content_type="application/json")

    async def rewrap(req: Request, values: dict[str, Any]) -> Response:
        entry, revoke = await target(req, values)
        info = await wrapping().rewrap(entry, revoke=revoke)
        return raw_json(wrap_envelope(info))

    async def wrap(req: Request, values: dict[str, Any]) -> Response:
        # The server wraps what this answers, and refuses the request when no wrap TTL is asked
        # (a free-form path: ``server.http.handlers.builtin_handler``).
        size = len(orjson.dumps(req.data))
        if size > MAX_WRAPPED_BYTES:
            raise InvalidRequest(f"the data to wrap is {size} bytes of JSON: at most {MAX_WRAPPED_BYTES} are wrapped "
                                 "(a wrapping token hands a token or a credential over; it is no store)")
        return Response(data=dict(req.data))

    u = Operation.UPDATE
    return [
        SysPath("wrapping/wrap", FieldSet({}), {u: wrap},
                "Wrap the data sent (any JSON object) behind a new wrapping token; needs X-Vault-Wrap-TTL.",
                issues_token=True, free_form=True),
        SysPath("wrapping/lookup", WRAPPING_FIELDS, {Operation.READ: lookup, u: lookup},
                "Look up a wrapping token's creation path, time and TTL.", unauthenticated=True),
        SysPath("wrapping/unwrap", WRAPPING_FIELDS, {u: unwrap},
                "Unwrap: return the wrapped response, once; the wrapping token is used up."),
        SysPath("wrapping/rewrap", WRAPPING_FIELDS, {u: rewrap},
                "Move a wrapped response behind a new wrapping token with the same TTL."),
    ]

