"""``sys/health``, ``sys/seal-status``, ``sys/init``, ``sys/leader``: the unauthenticated status
paths; ``sys/ha-status`` and ``sys/step-down`` beside them. authmount has no seal and no leader election, so it is always initialized, unsealed
and active, and answers as a Vault without HA does.

``sys/health`` takes Vault's status-code parameters (``activecode``, ``standbyok``, ...) and
adds readiness: a node whose storage failed (and a probe write still fails), or whose audit
devices all fail (requests would fail closed), answers ``unreadycode`` (default 503) with
``"ready": false`` and the problems, so a load balancer takes it out until it recovers.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from plugin.errors import InvalidRequest
from plugin.framework import Handler, Operation, Request, Response
from plugin.pathdoc import VERSION
from plugin.schema import Field, FieldSet, FieldType
from server import telemetry
from server.storage import unavailable_reason
from server.sys.core import SysCore, SysPath, raw_json

if TYPE_CHECKING:
    from server.sys.backend import SysBackend

__all__ = ["API_VERSION", "REPORTED_VERSION", "paths", "VERSION"]

#: The OpenBao release whose HTTP API authmount follows (tests/e2e compare the two side by side).
API_VERSION = "2.7.2"
#: The ``version`` of ``sys/health``, ``sys/seal-status`` and ``sys/version-history``: the API
#: level, then authmount's own version as semver build metadata. Clients gate features on this
#: number (Terraform's Vault provider skips a JWT config's ``jwks_pairs`` below Vault 1.16), so
#: it must read as the API served, not as authmount's 0.x (vault-differences row 63).
REPORTED_VERSION = f"{API_VERSION}+authmount.{VERSION}"


#: What ``sys/seal-status`` reports as ``storage_type`` for each engine (Vault says "inmem").
_STORAGE_TYPE = {"memory": "inmem", "sqlite": "sqlite", "postgres": "postgresql"}


#: Written by readiness after a storage failure, to see whether storage works again.
PROBE_KEY = "core/readiness-probe"


async def _probe_storage(core: SysCore) -> str:
    """'' when storage works: nothing failed since the last probe, or a probe write now succeeds."""
    reason = telemetry.storage_failure()
    if not reason:
        return ""
    try:
        async with asyncio.timeout(2.0):
            await core.storage.put(PROBE_KEY, {"at": time.time()})
    except Exception as exc:  # the probe's failure is the answer
        return f"storage: {unavailable_reason(exc) or reason}"
    telemetry.storage_recovered()
    return ""


def _status_code(name: str) -> Any:
    def parse(raw: Any) -> int:
        try:
            code = int(raw)
        except (TypeError, ValueError):
            raise InvalidRequest(f"invalid value for {name}: {str(raw)[:16]!r}") from None
        if not 100 <= code <= 599:
            raise InvalidRequest(f"invalid value for {name}: {code} is not an HTTP status code")
        return code

    return parse


def _code(name: str, default: int, meaning: str) -> Field:
    return Field(FieldType.INT, f"Status code when {meaning} (default {default}).", default=default,
                 parse=_status_code(name))


#: ``sys/health``'s query parameters: Vault's, plus ``unreadycode``. The states authmount is
#: never in (standby, sealed, uninitialized, ...) are accepted and checked, without effect.
HEALTH_FIELDS = FieldSet({
    "standbyok": Field(FieldType.BOOL, "Vault: a standby answers activecode (authmount has no standby).",
                       default=False),
    "perfstandbyok": Field(FieldType.BOOL, "Vault: a performance standby answers activecode.", default=False),
    "activecode": _code("activecode", 200, "the node is active, unsealed and ready"),
    "standbycode": _code("standbycode", 429, "the node is a standby (never)"),
    "drsecondarycode": _code("drsecondarycode", 472, "the node is a DR secondary (never)"),
    "performancestandbycode": _code("performancestandbycode", 473, "the node is a performance standby (never)"),
    "haunhealthycode": _code("haunhealthycode", 474, "the node is unhealthy in an HA cluster (never)"),
    "sealedcode": _code("sealedcode", 503, "the node is sealed (never)"),
    "uninitcode": _code("uninitcode", 501, "the node is not initialized (never)"),
    "removedcode": _code("removedcode", 530, "the node was removed from its cluster (never)"),
    "unreadycode": _code("unreadycode", 503, "the node is not ready: storage failed and a probe write still "
                         "fails, or every audit device fails (authmount)"),
})


def paths(b: SysBackend) -> list[SysPath]:
    """The status paths: bare JSON bodies (no envelope), no token needed, reads only."""
    core = b.core

    async def health(req: Request, values: dict[str, Any]) -> Response:
        problems = []
        storage_problem = await _probe_storage(core)
        if storage_problem:
            problems.append(storage_problem)
        audit_problem = await core.audit.problem()
        if audit_problem:
            problems.append(audit_problem)
        resp = raw_json({
            "initialized": True,
            "sealed": False,
            "standby": False,
            "performance_standby": False,
            "replication_performance_mode": "disabled",
            "replication_dr_mode": "disabled",
            "server_time_utc": int(time.time()),
            "version": REPORTED_VERSION,
            "cluster_name": core.settings.cluster_name,
            "cluster_id": core.cluster_id,
            "ready": not problems,
            **({"problems": problems} if problems else {}),
        })
        resp.status = values.get("unreadycode", 503) if problems else values.get("activecode", 200)
        return resp

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
            "version": REPORTED_VERSION,
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

    async def ha_status(req: Request, values: dict[str, Any]) -> Response:
        return Response(data={"nodes": await core.node.members()})

    async def step_down(req: Request, values: dict[str, Any]) -> None:
        """A Vault without HA answers 204 and does nothing; authmount asks for sudo, as an HA
        Vault does, so only an operator hears that the node stays active."""

    def read(handler: Handler) -> dict[Operation, Handler]:
        return {Operation.READ: handler, Operation.LIST: handler}  # LIST answers as GET

    return [
        SysPath("health", HEALTH_FIELDS, read(health), "Health status: always initialized, unsealed and active; "
                "readiness of storage and audit.", unauthenticated=True),
        SysPath("seal-status", FieldSet({}), read(seal_status),
                "Seal status (vault status): never sealed, authmount has no seal.", unauthenticated=True),
        SysPath("init", FieldSet({}), read(init_status),
                "Initialization status: always initialized (the first start creates the root token).",
                unauthenticated=True),
        SysPath("leader", FieldSet({}), read(leader),
                "HA status: no leader election, every node serves every request.", unauthenticated=True),
        SysPath("ha-status", FieldSet({}), {Operation.READ: ha_status},
                "The nodes serving this storage (each active), with the version each runs.", copy_top=True),
        SysPath("step-down", FieldSet({}), {Operation.UPDATE: step_down},
                "Nothing to give up: every node is active (vault operator step-down succeeds and changes nothing).",
                sudo=True),
    ]
