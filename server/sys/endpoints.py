"""``/v1/sys/...``: health, auth mounts (+ tune), ACL policies, and the OpenAPI document."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import orjson
from aiohttp import web

from plugin.errors import InvalidRequest, NotFound, UnsupportedOperation
from plugin.framework import Operation
from server.acl.policies import canonical_policy_name
from server.appkeys import CLUSTER_ID, MOUNTS, POLICIES, SETTINGS
from server.http.errors import error_response
from server.http.handlers import authorize, envelope, json_response, no_route, read_body, read_operation, release
from server.mounts import normalize_path

__all__ = ["health", "seal_status", "init_status", "leader", "auth_list", "auth_path", "policies_acl", "policy_legacy", "openapi", "VERSION"]

try:  # the installed distribution's version (pyproject.toml), the one source of truth
    VERSION = metadata.version("authmount")
except metadata.PackageNotFoundError:  # a source tree on sys.path without an install
    VERSION = "0.0.0+unknown"
_SUDO_CAP = {
    Operation.READ: "read", Operation.LIST: "list", Operation.UPDATE: "update",
    Operation.CREATE: "create", Operation.DELETE: "delete",
}


async def health(request: web.Request) -> web.Response:
    """``GET/HEAD sys/health``: always initialized, unsealed and active (unauthenticated)."""
    if request.method == "HEAD":
        return web.Response(status=200, content_type="application/json")
    return json_response({
        "initialized": True,
        "sealed": False,
        "standby": False,
        "performance_standby": False,
        "replication_performance_mode": "disabled",
        "replication_dr_mode": "disabled",
        "server_time_utc": int(time.time()),
        "version": VERSION,
        "cluster_name": request.app[SETTINGS].cluster_name,
        "cluster_id": request.app[CLUSTER_ID],
    })


#: What ``sys/seal-status`` reports as ``storage_type`` for each engine (Vault says "inmem").
_STORAGE_TYPE = {"memory": "inmem", "sqlite": "sqlite", "postgres": "postgresql"}


def _get_only(request: web.Request) -> None:
    if request.method not in ("GET", "HEAD"):
        raise _unsupported()


async def seal_status(request: web.Request) -> web.Response:
    """``GET sys/seal-status`` (unauthenticated; ``vault status``, hvac ``sys.is_sealed``):
    authmount has no seal, so it is always initialized and unsealed."""
    _get_only(request)
    settings = request.app[SETTINGS]
    return json_response({
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
        "cluster_id": request.app[CLUSTER_ID],
        "recovery_seal": False,
        "storage_type": _STORAGE_TYPE.get(settings.storage.type, settings.storage.type),
    })


async def init_status(request: web.Request) -> web.Response:
    """``GET sys/init`` (unauthenticated; hvac ``sys.is_initialized``): always initialized,
    since the first start creates the root token. ``PUT sys/init`` is refused (405)."""
    _get_only(request)
    return json_response({"initialized": True})


async def leader(request: web.Request) -> web.Response:
    """``GET sys/leader`` (unauthenticated): no leader election, every node serves every
    request, so it answers as a Vault without HA does."""
    _get_only(request)
    return json_response({
        "ha_enabled": False,
        "is_self": False,
        "active_time": "0001-01-01T00:00:00Z",
        "leader_address": "",
        "leader_cluster_address": "",
        "performance_standby": False,
        "performance_standby_last_remote_wal": 0,
    })


async def _sudo(request: web.Request, path: str, op: Operation) -> None:
    entry = await authorize(request, path, (_SUDO_CAP[op], "sudo"))
    await release(request, entry)


# -- sys/auth ------------------------------------------------------------------------------
async def auth_list(request: web.Request) -> web.Response:
    """``GET sys/auth``: every mount, in ``data`` and copied to the top level."""
    op, _ = await read_operation(request)
    if op not in (Operation.READ, Operation.LIST):
        raise _unsupported()
    await _sudo(request, "sys/auth", Operation.READ)
    data = {path: m.entry.public() for path, m in sorted(request.app[MOUNTS].mounts.items())}
    return envelope(request, data, copy_top=True)


async def auth_path(request: web.Request) -> web.StreamResponse:
    """``sys/auth/<path>`` enable/read/disable and ``sys/auth/<path>/tune`` read/write.

    The mount path is made canonical (``normalize_path``) before the ACL check, which then
    judges ``sys/auth/<canonical>`` (no trailing slash) and ``sys/auth/<canonical>/tune``:
    every spelling of a mount meets the same rule.
    """
    raw = request.match_info["path"]
    op, data = await read_operation(request)
    table = request.app[MOUNTS]
    trimmed = raw.rstrip("/")
    tune = trimmed == "tune" or trimmed.endswith("/tune")
    norm = normalize_path(trimmed[: -len("tune")] if tune else raw)
    acl_path = "sys/auth/" + norm.rstrip("/") + ("/tune" if tune else "")
    await _sudo(request, acl_path, op)
    if tune:
        if op is Operation.READ:
            mount = await table.get_fresh(norm)
            if mount is None:
                raise InvalidRequest(f"cannot fetch sysview for path \"auth/{norm}\"")
            return envelope(request, table.tune_info(mount), copy_top=True)
        if op is Operation.UPDATE:
            await table.tune(norm, data)
            return web.Response(status=204)
        raise _unsupported()
    if op is Operation.READ:
        mount = await table.get_fresh(norm)
        if mount is None:
            raise InvalidRequest(f"No auth engine at auth/{norm}")
        return envelope(request, mount.entry.public(), copy_top=True)
    if op is Operation.UPDATE:
        config = data.get("config") or {}
        options = data.get("options") or {}
        if not isinstance(config, dict) or not isinstance(options, dict):
            raise InvalidRequest("'config' and 'options' must be objects")
        description = data.get("description", "")
        if not isinstance(description, str):
            raise InvalidRequest("'description' must be a string")
        await table.enable(
            norm, data.get("type") or data.get("plugin_name") or "", description=description,
            config=config, local=bool(data.get("local", False)),
            seal_wrap=bool(data.get("seal_wrap", False)), options=options,
        )
        return web.Response(status=204)
    if op is Operation.DELETE:
        await table.disable(norm)
        return web.Response(status=204)
    raise _unsupported()


def _unsupported() -> Exception:
    return UnsupportedOperation()


# -- policies ------------------------------------------------------------------------------
async def _policy_text(request: web.Request) -> str:
    data = await read_body(request)
    text = data.get("policy", data.get("rules"))
    if isinstance(text, dict):
        text = orjson.dumps(text).decode()
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest("'policy' parameter not supplied or empty")
    return text


async def policies_acl(request: web.Request) -> web.StreamResponse:
    """``sys/policies/acl`` (LIST) and ``sys/policies/acl/<name>`` (GET/PUT/POST/DELETE)."""
    return await _policy_endpoint(request, "sys/policies/acl", legacy=False)


async def policy_legacy(request: web.Request) -> web.StreamResponse:
    """``sys/policy`` (GET lists) and ``sys/policy/<name>`` (GET/PUT/POST/DELETE)."""
    return await _policy_endpoint(request, "sys/policy", legacy=True)


async def _policy_endpoint(request: web.Request, base: str, *, legacy: bool) -> web.StreamResponse:
    name = request.match_info.get("name", "").strip("/")
    store = request.app[POLICIES]
    data: dict[str, Any]
    if request.method in ("POST", "PUT"):
        op, data = Operation.UPDATE, {}
    else:
        op, data = await read_operation(request)
    if not name:
        if op is Operation.LIST or (legacy and op is Operation.READ):
            await _sudo(request, base, Operation.LIST if op is Operation.LIST else Operation.READ)
            names = sorted(await store.list())
            if legacy:
                return envelope(request, {"keys": names, "policies": names}, copy_top=True)
            return envelope(request, {"keys": names})
        raise _unsupported()
    name = canonical_policy_name(name)  # before the ACL check: it judges the stored name
    await _sudo(request, f"{base}/{name}", op)
    if op is Operation.READ:
        text = await store.get(name)
        if text is None:
            if legacy:
                return error_response(404, [])
            raise NotFound()
        if legacy:
            return envelope(request, {"name": name, "rules": text}, copy_top=True)
        return envelope(request, {"name": name, "policy": text})
    if op is Operation.UPDATE:
        await store.put(name, await _policy_text(request))
        return web.Response(status=204)
    if op is Operation.DELETE:
        await store.delete(name)
        return web.Response(status=204)
    raise _unsupported()


# -- openapi -------------------------------------------------------------------------------
async def openapi(request: web.Request) -> web.Response:
    """An OpenAPI 3 document built from every mount's ``openapi_paths``."""
    await _sudo_free(request, "sys/internal/specs/openapi")
    paths: dict[str, Any] = dict(_SYS_OPENAPI)
    for path, mount in sorted(request.app[MOUNTS].mounts.items()):
        try:
            paths.update(mount.backend.openapi_paths("auth/" + path))
        except Exception:  # one broken backend must not hide the others
            continue
    return json_response({
        "openapi": "3.0.2",
        "info": {
            "title": "authmount",
            "description": "HTTP API of authmount, a Vault-compatible JWT/OIDC auth server",
            "version": VERSION,
            "license": {"name": "MPL-2.0"},
        },
        "paths": paths,
        "x-generated-at": datetime.now(UTC).isoformat(),
    })


def _op(summary: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"summary": summary}
    if body is not None:
        entry["requestBody"] = {"content": {"application/json": {"schema": {"type": "object", "properties": body}}}}
    return entry


_STR = {"type": "string"}
_SYS_OPENAPI: dict[str, Any] = {
    "/sys/health": {"get": _op("Health status (unauthenticated)."), "head": _op("Health status, no body.")},
    "/sys/auth": {"get": _op("List auth mounts (sudo).")},
    "/sys/auth/{path}": {
        "get": _op("Read one auth mount (sudo)."),
        "post": _op("Enable an auth method at path (sudo).",
                    {"type": _STR, "description": _STR, "config": {"type": "object"}, "local": {"type": "boolean"}}),
        "delete": _op("Disable the auth method at path (sudo)."),
    },
    "/sys/auth/{path}/tune": {
        "get": _op("Read the mount's tuning (sudo)."),
        "post": _op("Tune the mount (sudo).", {"default_lease_ttl": _STR, "max_lease_ttl": _STR,
                                              "description": _STR, "token_type": _STR}),
    },
    "/sys/policies/acl/{name}": {
        "get": _op("Read an ACL policy (sudo)."),
        "post": _op("Write an ACL policy in HCL or JSON (sudo).", {"policy": _STR}),
        "delete": _op("Delete an ACL policy (sudo)."),
    },
    "/sys/policy/{name}": {
        "get": _op("Read a policy (sudo)."),
        "post": _op("Write a policy in HCL or JSON (sudo).", {"policy": _STR}),
        "delete": _op("Delete a policy (sudo)."),
    },
}


async def _sudo_free(request: web.Request, path: str) -> None:
    entry = await authorize(request, path, ("read",))
    await release(request, entry)


async def sys_fallback(request: web.Request) -> web.Response:
    """Any other ``/v1/...`` path: Vault's "no handler for route" 404."""
    raise no_route(request.match_info.get("tail", ""))
