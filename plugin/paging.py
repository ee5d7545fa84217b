"""OpenBao's paginated LIST of a mount's roles (``role/`` and ``cel/role/``): ``after`` (a
name, which need not exist) and ``limit`` (at most that many names; 0 or less: all), as
``bao list -after=<name> -limit=<n>`` sends them. The two fields are declared once here."""

from __future__ import annotations

from typing import Any

from plugin.errors import InvalidRequest, NotFound
from plugin.framework import Response
from plugin.schema import Field, FieldSet, FieldType
from plugin.storage import Storage, check_prefix

__all__ = ["PAGE_FIELDS", "list_response"]

PAGE_FIELDS = FieldSet({
    "after": Field(FieldType.STRING, "Optional entry to list begin listing after, not required to exist.", default=""),
    "limit": Field(FieldType.INT, "Optional number of entries to return; defaults to all entries.", default=0),
})
#: ``limit`` when the caller set none: every name after ``after`` (storage wants a bound).
_ALL = 2**62


async def list_response(storage: Storage, prefix: str, values: dict[str, Any]) -> Response:
    """The names under ``prefix`` that ``values``' ``after`` and ``limit`` ask for, as a LIST
    answers them; none is a 404, as in Vault."""
    after, limit = values.get("after") or "", values.get("limit") or 0
    try:
        check_prefix(after, "after")  # no stored name holds a NUL: storage refuses to seek one
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    if not after and limit <= 0:
        keys = await storage.list(prefix)
    else:
        keys = await storage.list_page(prefix, after, limit if limit > 0 else _ALL)
    if not keys:
        raise NotFound()
    return Response(data={"keys": keys})
