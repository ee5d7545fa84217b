"""``sys/internal/counters/tokens`` and ``sys/internal/counters/entities`` (OpenBao 2.7.2's
shapes: ``{"counters": {"service_tokens": {"total": n}}}``, ``{"counters": {"entities":
{"total": n}}}``), which monitoring scripts read with ``vault read``.

Both count what OpenBao counts: every service token row (an expired token counts until the
sweep removes it; the ``vault_token_count`` gauge has the live ones) and every entity, from
the keys alone, so a count costs what a list of keys costs. Both read through the ACL like
any sys path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from plugin.framework import Operation, Request, Response
from plugin.schema import FieldSet
from server.sys.core import SysPath

if TYPE_CHECKING:
    from server.sys.backend import SysBackend

__all__ = ["paths"]


def paths(b: SysBackend) -> list[SysPath]:
    async def tokens(req: Request, values: dict[str, Any]) -> Response:
        return Response(data={"counters": {"service_tokens": {"total": await b.core.tokens.count_rows()}}})

    async def entities(req: Request, values: dict[str, Any]) -> Response:
        identity = b.core.tokens.identity
        total = await identity.count_entities() if identity is not None else 0
        return Response(data={"counters": {"entities": {"total": total}}})

    return [
        SysPath("internal/counters/tokens", FieldSet({}), {Operation.READ: tokens},
                "The number of service token rows (an expired token counts until it is swept)."),
        SysPath("internal/counters/entities", FieldSet({}), {Operation.READ: entities},
                "The number of identity entities."),
    ]
