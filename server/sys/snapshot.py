"""``sys/storage/raft/snapshot``: a snapshot of the whole storage (``server.snapshot``),
streamed, what ``vault operator raft snapshot save`` reads, on every engine (``read`` on the
path, as in Vault). A snapshot is restored with every server stopped (``authmount operator
restore``): a write here is refused with that advice, not half-applied under running nodes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import IO, TYPE_CHECKING, Any

from plugin.errors import InvalidRequest, PluginError, RateLimited
from plugin.framework import Operation, Request, Response
from plugin.schema import FieldSet
from server import snapshot, telemetry
from server.sys.core import SysPath
from server.sys.status import REPORTED_VERSION

if TYPE_CHECKING:
    from server.sys.backend import SysBackend

__all__ = ["paths"]

RESTORE_ADVICE = ("a snapshot is restored with every authmount server stopped: authmount operator restore "
                  "--config <settings> <file> (docs/operations.md#backup)")


class SnapshotUnavailable(PluginError):
    """The snapshot could not be built (its temporary file: a full disk)."""

    status = 503
    headers = {"Retry-After": "60"}


def paths(b: SysBackend) -> list[SysPath]:
    taking: list[bool] = []  # one snapshot at a time per process: each copies the whole storage

    async def save(req: Request, values: dict[str, Any]) -> Response:
        core = b.core
        if taking:
            raise RateLimited("a snapshot is being taken on this server; try again when it is done")
        taking.append(True)
        try:
            taken = await snapshot.take(core.storage, core.keyring, cluster_id=core.cluster_id,
                                        version=REPORTED_VERSION, engine=core.settings.storage.type)
        except OSError as exc:  # the temporary file (a storage failure is the engine's own error: 503)
            taking.clear()
            telemetry.SNAPSHOTS.labels("failed").inc()
            raise SnapshotUnavailable(f"snapshot: cannot write its temporary file: {exc.strerror or exc}") from None
        except BaseException:
            taking.clear()
            telemetry.SNAPSHOTS.labels("failed").inc()
            raise
        return Response(stream=sent(taken), content_type="application/gzip")

    async def sent(taken: IO[bytes]) -> AsyncGenerator[bytes, None]:
        """The snapshot's chunks; the next snapshot may start once this one is sent (or left).
        Counted when its last chunk was handed on (``authmount_snapshots_total``)."""
        whole = False
        try:
            async for chunk in snapshot.chunks(taken):
                yield chunk
            whole = True
        finally:
            taking.clear()
            telemetry.SNAPSHOTS.labels("ok" if whole else "cut").inc()
            if whole:
                telemetry.SNAPSHOT_SENT.set(time.time())

    async def restore(req: Request, values: dict[str, Any]) -> Response:
        raise InvalidRequest(RESTORE_ADVICE)

    return [
        SysPath("storage/raft/snapshot", FieldSet({}), {Operation.READ: save, Operation.UPDATE: restore},
                "A snapshot of the whole storage (vault operator raft snapshot save); restored offline.",
                ignores_body=True),
        SysPath("storage/raft/snapshot-force", FieldSet({}), {Operation.UPDATE: restore},
                "Restored offline: authmount operator restore.", ignores_body=True),
    ]
