"""``sys/rotate``, ``sys/rotate/config`` and ``sys/key-status``: the keys that seal the
server's secrets at rest.

``POST sys/rotate`` (sudo, as in Vault; also ``sys/rotate/keyring``) adds a data-key term to
the keyring, seals every stored secret again under it (``server.keyring.reseal``), and gives
batch tokens a new signing key (the old one verifies until the tokens it signed have
expired). ``sys/rotate/config`` (also ``sys/rotate/keyring/config``) is Vault's automatic
rotation: with an ``interval`` (24 hours at least) one process of one node makes the same
rotation once the active term is that old (``auto_rotate``, checked every
``CHECK_PERIOD``). ``GET sys/key-status`` (sudo) shows the active term, when it was
installed, how many terms the keyring holds and the fingerprint of the storage key that
seals the keyring.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import structlog

from plugin.errors import InvalidRequest
from plugin.framework import Operation, Request, Response
from plugin.schema import Field, FieldSet, FieldType, format_duration
from plugin.storage import Storage
from server.keyring import ROTATE_CONFIG_KEY, Keyring, RotationConfig, reseal
from server.sys.core import SysPath

if TYPE_CHECKING:
    from server.sys.backend import SysBackend
    from server.tokens.store import TokenStore

__all__ = ["paths", "ROTATE_CONFIG_FIELDS", "checked_rotation_config", "rotate_keys", "auto_rotate", "CHECK_PERIOD"]

log = structlog.get_logger("authmount.keyring")

#: How often ``auto_rotate`` looks at the active term's age (Vault's ``AutoRotateCheckInterval``).
CHECK_PERIOD = 300.0

ROTATE_CONFIG_FIELDS = FieldSet({
    "enabled": Field(FieldType.BOOL, "Whether automatic rotation is enabled.", default=True),
    "max_operations": Field(FieldType.INT, "Vault's count of encryptions before a rotation, kept and shown: every "
                            "authmount seal derives a key of its own, so no count triggers one.",
                            default=RotationConfig.MAX_OPERATIONS),
    "interval": Field(FieldType.DURATION, "How long after installation of an active key term that the key will be "
                      "automatically rotated (0: never; at least 24h).", default=0),
})


def checked_rotation_config(values: dict[str, Any], old: RotationConfig) -> RotationConfig:
    """``old`` with the fields ``values`` gives, checked as Vault checks them.

    :raises InvalidRequest: Vault's texts.
    """
    new = RotationConfig(enabled=bool(values.get("enabled", old.enabled)),
                         max_operations=int(values.get("max_operations", old.max_operations)),
                         interval=int(values.get("interval", old.interval)))
    if new.interval and new.interval < RotationConfig.MIN_INTERVAL:
        raise InvalidRequest(f"interval must be greater or equal to {format_duration(RotationConfig.MIN_INTERVAL)}")
    if not RotationConfig.MIN_OPERATIONS <= new.max_operations <= RotationConfig.MAX_OPERATIONS:
        raise InvalidRequest(f"max_operations must be in the range [{RotationConfig.MIN_OPERATIONS},"
                             f"{RotationConfig.MAX_OPERATIONS}]")
    return new


async def rotate_keys(storage: Storage, keyring: Keyring, tokens: TokenStore, *, due: int | None = None,
                      reason: str = "requested") -> int | None:
    """Rotate the keyring (only if its active term is ``due`` seconds old, when given), seal
    every stored secret again and rotate the batch-token key; the new term, or None when
    another node rotated first or it was not due."""
    term = await keyring.rotate(storage, due=due)
    if term is None:
        return None
    count = await reseal(storage, keyring)
    await tokens.rotate_batch_key()
    log.info("keyring_rotated", term=term, resealed=count, reason=reason)
    return term


async def auto_rotate(storage: Storage, keyring: Keyring, tokens: TokenStore) -> None:
    """Run until cancelled: every ``CHECK_PERIOD``, rotate when the settings ask for it. A
    failed check is logged and tried again at the next one."""
    while True:
        await asyncio.sleep(CHECK_PERIOD)
        try:
            due = RotationConfig.from_stored(await storage.get(ROTATE_CONFIG_KEY)).due()
            if due is not None and keyring.due(due, time.time()):
                await rotate_keys(storage, keyring, tokens, due=due, reason="rotation interval reached")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the loop outlives a storage outage
            log.error("keyring_auto_rotation_failed", error=str(exc)[:200])


def paths(b: SysBackend) -> list[SysPath]:
    core = b.core

    async def rotate(req: Request, values: dict[str, Any]) -> None:
        await rotate_keys(core.storage, core.keyring, core.tokens)

    async def status(req: Request, values: dict[str, Any]) -> Response:
        return Response(data=core.keyring.status())

    async def read_config(req: Request, values: dict[str, Any]) -> Response:
        config = RotationConfig.from_stored(await core.storage.get(ROTATE_CONFIG_KEY))
        return Response(data={"enabled": config.enabled,  # Vault's order: sorted
                              "interval": format_duration(config.interval) if config.interval else 0,
                              "max_operations": config.max_operations})

    async def write_config(req: Request, values: dict[str, Any]) -> None:
        def change(old: Any) -> Any:
            return checked_rotation_config(values, RotationConfig.from_stored(old)).to_storage()

        await core.storage.update(ROTATE_CONFIG_KEY, change)

    # Vault serves each under two names: "rotate" is "rotate/keyring".
    return [
        *(SysPath(name, FieldSet({}), {Operation.UPDATE: rotate},
                  "Rotate the data key that seals stored secrets, and the batch-token signing key.", sudo=True)
          for name in ("rotate", "rotate/keyring")),
        *(SysPath(name, ROTATE_CONFIG_FIELDS, {Operation.READ: read_config, Operation.UPDATE: write_config},
                  "Read or set the automatic rotation of the data key (an interval of 24h at least, or 0).")
          for name in ("rotate/config", "rotate/keyring/config")),
        SysPath("key-status", FieldSet({}), {Operation.READ: status},
                "The active data-key term and the storage key's fingerprint.", sudo=True, copy_top=True),
    ]
