"""``sys/health``, ``sys/seal-status``, ``sys/init``, ``sys/leader``: the unauthenticated status
paths. authmount has no seal and no leader election, so it is always initialized, unsealed
and active, and answers as a Vault without HA does."""

from __future__ import annotations

import time
from importlib import metadata
from typing import TYPE_CHECKING, Any

from plugin.framework import Handler, Operation, Request, Response
from plugin.schema import FieldSet
from server.sys.core import SysPath, raw_json

if TYPE_CHECKING:
    from server.sys.backend import SysBackend

__all__ = ["paths", "VERSION"]

try:  # the installed distribution's version (pyproject.toml), the one source of truth
    VERSION = metadata.version("authmount")
except metadata.PackageNotFoundError:  # a source tree on sys.path without an install
    VERSION = "0.0.0+unknown"

#: What ``sys/seal-status`` reports as ``storage_type`` for each engine (Vault says "inmem").
_STORAGE_TYPE = {"memory": "inmem", "sqlite": "sqlite", "postgres": "postgresql"}


def paths(b: SysBackend) -> list[SysPath]:
    """The status paths: bare JSON bodies (no envelope), no token needed, reads only."""
    core = b.core

    async def health(req: Request, values: dict[str, Any]) -> Response:
        return raw_json({
            "initialized": True,
            "sealed": False,
            "standby": False,
            "performance_standby": False,
            "replication_performance_mode": "disabled",
            "replication_dr_mode": "disabled",
            "server_time_utc": int(time.time()),
            "version": VERSION,
            "cluster_name": core.settings.cluster_name,
            "cluster_id": core.cluster_id,
        })

    async def seal_status(req: Request, values: dict[str, Any]) -> Response:
        settings = core.settings
        return raw_json({
            "type": "shamir",
            "initialized": True,
            "sealed": False,
            "t": 1,
            "n": 1,
            "progress": 0,
            "nonce": "",
            "version": VERSION,
            "migration": False,
            "cluster_name": settings.cluster_name,
            "cluster_id": core.cluster_id,
            "recovery_seal": False,
            "storage_type": _STORAGE_TYPE.get(settings.storage.type, settings.storage.type),
        })

    async def init_status(req: Request, values: dict[str, Any]) -> Response:
        return raw_json({"initialized": True})

    async def leader(req: Request, values: dict[str, Any]) -> Response:
        return raw_json({
            "ha_enabled": False,
            "is_self": False,
            "active_time": "0001-01-01T00:00:00Z",
            "leader_address": "",
            "leader_cluster_address": "",
            "performance_standby": False,
            "performance_standby_last_remote_wal": 0,
        })

    def read(handler: Handler) -> dict[Operation, Handler]:
        return {Operation.READ: handler, Operation.LIST: handler}  # LIST answers as GET

    return [
        SysPath("health", FieldSet({}), read(health), "Health status: always initialized, unsealed and active.",
                unauthenticated=True),
        SysPath("seal-status", FieldSet({}), read(seal_status),
                "Seal status (vault status): never sealed, authmount has no seal.", unauthenticated=True),
        SysPath("init", FieldSet({}), read(init_status),
                "Initialization status: always initialized (the first start creates the root token).",
                unauthenticated=True),
        SysPath("leader", FieldSet({}), read(leader),
                "HA status: no leader election, every node serves every request.", unauthenticated=True),
    ]
