"""``sys/audit`` (list), ``sys/audit/<path>`` (enable, disable), ``sys/audit-hash/<path>`` and
``sys/config/auditing/request-headers[/<name>]``: Vault's audit device API.

Listing, enabling and disabling devices and choosing the audited headers need ``sudo``, as
in Vault; ``audit-hash`` needs ``update`` on its path. The device path is made canonical
(``normalize_path`` without the trailing slash) before the ACL check.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from plugin.errors import InvalidRequest
from plugin.framework import Operation, Request, Response
from plugin.schema import Field, FieldSet, FieldType
from server.mounts import normalize_path
from server.sys.core import SysPath

if TYPE_CHECKING:
    from server.sys.backend import SysBackend

__all__ = ["paths", "ENABLE_FIELDS"]


def _device_name(raw: str) -> str:
    return normalize_path(raw)[:-1]


DEVICE_PATH = Field(FieldType.NAME, "Path of the audit device (leading and trailing slashes dropped).",
                    canonical=_device_name)


def _as_given(raw: Any) -> Any:
    """The broker checks these itself (messages naming the option)."""
    return raw


#: ``POST sys/audit/<path>``: enable an audit device.
ENABLE_FIELDS = FieldSet({
    "path": DEVICE_PATH,
    "type": Field(FieldType.STRING, "The device type: 'file' or 'socket'.", default="", parse=_as_given),
    "description": Field(FieldType.STRING, "Human-friendly description of the device.", default="",
                         parse=_as_given),
    "options": Field(FieldType.MAP, "Device options (strings): file_path and mode for 'file'; address, "
                     "socket_type and write_timeout for 'socket'; hmac_accessor, log_raw, elide_list_responses, "
                     "prefix, format for both.", default={}, parse=_as_given),
    "local": Field(FieldType.BOOL, "Stored and reported; authmount has no replication.", default=False),
})

HASH_FIELDS = FieldSet({
    "path": DEVICE_PATH,
    "input": Field(FieldType.STRING, "The value to hash with the device's salt.", default=""),
})


def _header_name(raw: str) -> str:
    name = raw.strip().lower()
    if not name or any(c.isspace() or not c.isprintable() or c in ":/" for c in name):
        raise InvalidRequest(f"invalid header name {raw[:64]!r}")
    return name


HEADER_FIELDS = FieldSet({
    "header": Field(FieldType.NAME, "A request header name (case-insensitive).", canonical=_header_name),
    "hmac": Field(FieldType.BOOL, "Write the header's values hashed (always for credentials: X-Vault-Token, "
                  "Authorization, Cookie, Proxy-Authorization).", default=False),
})


def paths(b: SysBackend) -> list[SysPath]:
    core = b.core

    async def list_devices(req: Request, values: dict[str, Any]) -> Response:
        return Response(data=core.audit.listing())

    async def enable(req: Request, values: dict[str, Any]) -> None:
        await core.audit.enable(
            values["path"], values.get("type") or "", description=values.get("description", ""),
            options=values.get("options"), local=values.get("local", False),
        )

    async def disable(req: Request, values: dict[str, Any]) -> None:
        await core.audit.disable(values["path"])

    async def audit_hash(req: Request, values: dict[str, Any]) -> Response:
        return Response(data={"hash": core.audit.hash(values["path"], values.get("input", ""))})

    async def list_headers(req: Request, values: dict[str, Any]) -> Response:
        return Response(data={"headers": {name: {"hmac": hashed} for name, hashed in core.audit.headers.items()}})

    async def read_header(req: Request, values: dict[str, Any]) -> Response | None:
        name = values["header"]
        hashed = core.audit.headers.get(name)
        return None if hashed is None else Response(data={name: {"hmac": hashed}})

    async def write_header(req: Request, values: dict[str, Any]) -> None:
        await core.audit.set_header(values["header"], values.get("hmac", False))

    async def delete_header(req: Request, values: dict[str, Any]) -> None:
        await core.audit.delete_header(values["header"])

    return [
        SysPath("audit", FieldSet({}), {Operation.READ: list_devices, Operation.LIST: list_devices},
                "List the enabled audit devices.", sudo=True, copy_top=True),
        SysPath(r"audit/(?P<path>[\s\S]+)", ENABLE_FIELDS, {Operation.UPDATE: enable, Operation.DELETE: disable},
                "Enable or disable the audit device at path.", sudo=True),
        SysPath(r"audit-hash/(?P<path>[\s\S]+)", HASH_FIELDS, {Operation.UPDATE: audit_hash},
                "Hash a value as the audit device at path writes it (find its requests in the log).",
                copy_top=True),
        SysPath("config/auditing/request-headers", FieldSet({}),
                {Operation.READ: list_headers, Operation.LIST: list_headers},
                "List the request headers written to the audit log.", sudo=True, copy_top=True),
        SysPath(r"config/auditing/request-headers/(?P<header>[^/]+)", HEADER_FIELDS,
                {Operation.READ: read_header, Operation.UPDATE: write_header, Operation.DELETE: delete_header},
                "Read, add or remove an audited request header.", sudo=True, copy_top=True),
    ]
