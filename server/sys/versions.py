"""``sys/version-history`` (``vault version-history``): the versions that have run on this
storage (``REPORTED_VERSION``: the API level, then authmount's version), each with when it
first started, oldest first (Vault's and OpenBao's shape).

Every server process records its version at start (``record``), once per version: a node
started again, or a second node of the same version, changes nothing; a downgrade keeps the
first time the older version ran, as in Vault. The history tells an operator when an upgrade
reached the storage (docs/operations.md, "Upgrade").
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from plugin.framework import Operation, Request, Response
from plugin.schema import FieldSet
from plugin.storage import Storage
from server.sys.core import SysPath
from server.sys.status import REPORTED_VERSION
from server.tokens.ttl import rfc3339

if TYPE_CHECKING:
    from server.sys.backend import SysBackend

__all__ = ["VERSIONS_KEY", "paths", "record"]

#: One row: each version to when it first started (seconds since the epoch).
VERSIONS_KEY = "core/versions"


async def record(storage: Storage, version: str = REPORTED_VERSION) -> None:
    """Add ``version`` to the history, unless it is there (then nothing is written)."""
    if version in (await storage.get(VERSIONS_KEY) or {}):
        return

    def add(old: Any) -> dict[str, Any]:
        seen = dict(old or {})
        seen.setdefault(version, {"installed": int(time.time())})
        return seen

    await storage.update(VERSIONS_KEY, add)


async def history(storage: Storage) -> Response:
    """The LIST answer: ``keys`` (versions, oldest first) and ``key_info``."""
    seen: dict[str, Any] = await storage.get(VERSIONS_KEY) or {}
    ordered = sorted(seen, key=lambda version: (float(seen[version].get("installed", 0)), version))
    info = {version: {"timestamp_installed": rfc3339(float(seen[version].get("installed", 0))),
                      "previous_version": ordered[i - 1] if i else None, "commit_date": ""}
            for i, version in enumerate(ordered)}
    return Response(data={"keys": ordered, "key_info": info})


def paths(b: SysBackend) -> list[SysPath]:
    async def listed(req: Request, values: dict[str, Any]) -> Response:
        return await history(b.core.storage)

    return [SysPath("version-history/?", FieldSet({}), {Operation.LIST: listed},
                    "The versions that have run on this storage, each with when it first started.")]
