"""``sys/config/cors``: read, set or remove the CORS settings (Vault's API; ``sudo``, as in
Vault), applied by ``server.http.cors``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from plugin.framework import Operation, Request, Response
from plugin.schema import Field, FieldSet, FieldType
from server.http.cors import STANDARD_HEADERS, CorsConfig, checked_origins
from server.sys.core import SysPath

if TYPE_CHECKING:
    from server.sys.backend import SysBackend

__all__ = ["paths", "CORS_FIELDS"]

CORS_FIELDS = FieldSet({
    "allowed_origins": Field(FieldType.COMMA_STRING_SLICE, "The origins (scheme://host[:port]) allowed to make "
                                                           "cross-origin requests, or '*' alone for every origin.",
                             required=True),
    "allowed_headers": Field(FieldType.COMMA_STRING_SLICE, "Request headers allowed besides Vault's standard ones "
                                                           "(Content-Type, Authorization, X-Vault-Token, ...)."),
    "allow_credentials": Field(FieldType.BOOL, "Answer Access-Control-Allow-Credentials: true (refused with '*').",
                               default=False),
})


def paths(b: SysBackend) -> list[SysPath]:
    core = b.core

    async def read(req: Request, values: dict[str, Any]) -> Response:
        return Response(data=core.cors.config.public())

    async def write(req: Request, values: dict[str, Any]) -> None:
        credentials = bool(values.get("allow_credentials", False))
        origins = checked_origins([o.strip() for o in values.get("allowed_origins") or [] if o.strip()], credentials)
        extra = [h.strip() for h in values.get("allowed_headers") or [] if h.strip()]
        await core.cors.store(CorsConfig(True, origins, (*STANDARD_HEADERS, *extra), credentials))

    async def delete(req: Request, values: dict[str, Any]) -> None:
        await core.cors.store(CorsConfig())

    return [
        SysPath("config/cors", CORS_FIELDS, {Operation.READ: read, Operation.UPDATE: write, Operation.DELETE: delete},
                "Read, set or remove the CORS settings (cross-origin requests from browsers).", sudo=True,
                copy_top=True),
    ]
