"""``sys/rotate`` and ``sys/key-status``: the keys that seal the server's secrets at rest.

``POST sys/rotate`` (sudo, as in Vault) adds a data-key term to the keyring, seals every
stored secret again under it (``server.keyring.reseal``), and gives batch tokens a new
signing key (the old one verifies until the tokens it signed have expired). ``GET
sys/key-status`` (sudo) shows the active term, when it was installed, how many terms the
keyring holds and the fingerprint of the storage key that seals the keyring.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from plugin.framework import Operation, Request, Response
from plugin.schema import FieldSet
from server.keyring import reseal
from server.sys.core import SysPath

if TYPE_CHECKING:
    from server.sys.backend import SysBackend

__all__ = ["paths"]

log = structlog.get_logger("authmount.keyring")


def paths(b: SysBackend) -> list[SysPath]:
    core = b.core

    async def rotate(req: Request, values: dict[str, Any]) -> None:
        term = await core.keyring.rotate(core.storage)
        count = await reseal(core.storage, core.keyring)
        await core.tokens.rotate_batch_key()
        log.info("keyring_rotated", term=term, resealed=count)

    async def status(req: Request, values: dict[str, Any]) -> Response:
        return Response(data=core.keyring.status())

    return [
        SysPath("rotate", FieldSet({}), {Operation.UPDATE: rotate},
                "Rotate the data key that seals stored secrets, and the batch-token signing key.", sudo=True),
        SysPath("key-status", FieldSet({}), {Operation.READ: status},
                "The active data-key term and the storage key's fingerprint.", sudo=True, copy_top=True),
    ]
