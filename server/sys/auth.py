"""``sys/auth`` (list), ``sys/auth/<path>`` (enable, read, disable) and
``sys/auth/<path>/tune`` (read, change): the auth mount table, sudo on every path.

The mount path is a path field made canonical by ``normalize_path`` before the ACL check,
which then judges ``sys/auth/<canonical>`` (no trailing slash) and
``sys/auth/<canonical>/tune``: every spelling of a mount meets the same rule. The tune fields
are ``server.mounts.TUNE_FIELDS``, the declaration the mount table validates with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from plugin.errors import InvalidRequest
from plugin.framework import Operation, Request, Response
from plugin.schema import Field, FieldSet, FieldType
from server.mounts import TUNE_FIELDS, normalize_path
from server.sys.core import SysPath

if TYPE_CHECKING:
    from server.sys.backend import SysBackend

__all__ = ["paths", "ENABLE_FIELDS", "MOUNT_PATH"]

def _mount_name(raw: str) -> str:
    """The mount path as the ACL names it: ``normalize_path`` without the trailing slash
    (``sys/auth//jwt/`` and ``sys/auth/jwt//tune`` are ``sys/auth/jwt`` and ``sys/auth/jwt/tune``)."""
    return normalize_path(raw)[:-1]


MOUNT_PATH = Field(
    FieldType.NAME,
    "Path of the mount below auth/ (leading and trailing slashes dropped before the ACL check).",
    canonical=_mount_name,
)


def _as_given(raw: Any) -> Any:
    """The mount table checks ``type`` itself (``missing or invalid 'type'``)."""
    return raw


def _description(raw: Any) -> str:
    if not isinstance(raw, str):
        raise InvalidRequest("'description' must be a string")
    return raw


def _object(raw: Any) -> dict[str, Any]:
    value = raw or {}
    if not isinstance(value, dict):
        raise InvalidRequest("'config' and 'options' must be objects")
    return value


#: ``POST sys/auth/<path>``: enable an auth method.
ENABLE_FIELDS = FieldSet({
    "path": MOUNT_PATH,
    "type": Field(FieldType.STRING, "The auth method type: 'jwt' or 'oidc'.", default="", parse=_as_given),
    "plugin_name": Field(FieldType.STRING, "Use 'type' instead.", default="", alias_of="type", deprecated=True,
                         parse=_as_given),
    "description": Field(FieldType.STRING, "Human-friendly description of the mount.", default="",
                         parse=_description),
    "config": Field(FieldType.MAP, "Tune values of the new mount (the fields of sys/auth/<path>/tune but "
                    "description).", default={}, parse=_object),
    "local": Field(FieldType.BOOL, "Stored and reported; authmount has no replication.", default=False),
    "seal_wrap": Field(FieldType.BOOL, "Stored and reported; authmount has no seal.", default=False),
    "options": Field(FieldType.MAP, "Stored and reported; no auth method reads options.", default={},
                     parse=_object),
})


def paths(b: SysBackend) -> list[SysPath]:
    """``sys/auth``, ``sys/auth/<path>/tune`` and ``sys/auth/<path>`` (in that order: a path
    ending in ``/tune`` is the tune of the mount before it, as in Vault)."""
    core = b.core

    async def list_mounts(req: Request, values: dict[str, Any]) -> Response:
        return Response(data={path: m.entry.public() for path, m in sorted(core.mounts.mounts.items())})

    async def read_mount(req: Request, values: dict[str, Any]) -> Response:
        norm = values["path"] + "/"
        mount = await core.mounts.get_fresh(norm)
        if mount is None:
            raise InvalidRequest(f"No auth engine at auth/{norm}")
        return Response(data=mount.entry.public())

    async def enable(req: Request, values: dict[str, Any]) -> None:
        await core.mounts.enable(
            values["path"] + "/", values.get("type") or values.get("plugin_name") or "",
            description=values.get("description", ""), config=values.get("config", {}),
            local=values.get("local", False), seal_wrap=values.get("seal_wrap", False),
            options=values.get("options", {}),
        )

    async def disable(req: Request, values: dict[str, Any]) -> None:
        await core.mounts.disable(values["path"] + "/")

    async def read_tune(req: Request, values: dict[str, Any]) -> Response:
        norm = values["path"] + "/"
        mount = await core.mounts.get_fresh(norm)
        if mount is None:
            raise InvalidRequest(f'cannot fetch sysview for path "auth/{norm}"')
        return Response(data=core.mounts.tune_info(mount))

    async def tune(req: Request, values: dict[str, Any]) -> None:
        await core.mounts.tune(values["path"] + "/", {k: v for k, v in values.items() if k != "path"})

    return [
        SysPath("auth", FieldSet({}), {Operation.READ: list_mounts, Operation.LIST: list_mounts},
                "List auth mounts.", sudo=True, copy_top=True),
        SysPath(r"auth/(?P<path>[\s\S]+?)/tune/*", FieldSet({"path": MOUNT_PATH, **TUNE_FIELDS.fields}),
                {Operation.READ: read_tune, Operation.UPDATE: tune},
                "Read or change a mount's tuning.", sudo=True, copy_top=True),
        SysPath(r"auth/(?P<path>[\s\S]+)", ENABLE_FIELDS,
                {Operation.READ: read_mount, Operation.UPDATE: enable, Operation.DELETE: disable},
                "Enable, read or disable the auth method at path.", sudo=True, copy_top=True),
    ]
