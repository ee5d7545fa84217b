"""``sys/internal/specs/openapi`` (and its alias ``sys/openapi``): an OpenAPI 3 document built
from the PathSpecs of the sys backend and of every mount, the declarations the requests are
validated with."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from plugin.framework import Operation, Request, Response
from plugin.pathdoc import openapi_document
from plugin.schema import FieldSet
from server.sys.core import SysPath, raw_json

if TYPE_CHECKING:
    from server.sys.backend import SysBackend

__all__ = ["paths", "document"]

_DOC_PATH = "internal/specs/openapi"


def document(b: SysBackend) -> dict[str, Any]:
    """The OpenAPI document: the sys paths, then each mount's, by mount path."""
    paths: dict[str, Any] = b.openapi_paths("sys")
    for prefix, backend in sorted(b.documented.items()):
        paths.update(backend.openapi_paths(prefix))
    for path, mount in sorted(b.core.mounts.mounts.items()):
        try:
            paths.update(mount.backend.openapi_paths("auth/" + path))
        except Exception:  # one broken backend must not hide the others
            continue
    # ``servers`` is relative to the document's own address, so a generated client or Swagger
    # UI calls ``/v1/<route>`` without being told the prefix. (A help document has none: its
    # routes are relative to the mount, as Vault's.)
    return {**openapi_document(paths), "servers": [{"url": "/v1"}], "x-generated-at": datetime.now(UTC).isoformat()}


def paths(b: SysBackend) -> list[SysPath]:
    """The document's path and its alias, both judged by the ACL as ``sys/internal/specs/openapi``."""

    async def read(req: Request, values: dict[str, Any]) -> Response:
        return raw_json(document(b))

    ops = {Operation.READ: read, Operation.LIST: read}
    summary = "OpenAPI 3 document of the sys paths and every mounted auth method."
    return [
        SysPath(_DOC_PATH, FieldSet({}), dict(ops), summary),
        SysPath("openapi", FieldSet({}), dict(ops), summary, acl_path="sys/" + _DOC_PATH),
    ]
