"""``sys/plugins/catalog``: the plugins this server can mount, read as Vault's catalog is read
(``vault plugin list``, ``vault plugin info auth jwt``).

authmount has only its built-in auth methods (``plugin.registry``: ``jwt`` and ``oidc``), each
at the server's own version (``RUNNING_VERSION``, what ``sys/auth`` shows as a mount's
``running_plugin_version``). Registering or removing a plugin is not served (405): there are
no external plugins to run. As in Vault, the catalog as a whole needs ``read`` on
``sys/plugins/catalog``, and each type and plugin ``sudo`` on ``sys/plugins/catalog/*``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from plugin import registry
from plugin.errors import NotFound
from plugin.framework import Operation, Request, Response
from plugin.schema import Field, FieldSet, FieldType
from server.mounts import RUNNING_VERSION
from server.sys.core import SysPath

if TYPE_CHECKING:
    from server.sys.backend import SysBackend

__all__ = ["paths", "PLUGIN_TYPES"]

#: Vault's plugin types (``consts.PluginTypes``); authmount's plugins are all ``auth``.
PLUGIN_TYPES = ("auth", "database", "secret")
_NAME = r"(?P<name>[A-Za-z0-9_.-]+)"
_TYPE = r"(?P<type>auth|database|secret)"


def _names(kind: str) -> list[str]:
    return sorted(registry.registered_types()) if kind == "auth" else []


def _entry(name: str) -> dict[str, Any]:
    return {"builtin": True, "deprecation_status": "supported", "name": name, "type": "auth",
            "version": RUNNING_VERSION}


def paths(b: SysBackend) -> list[SysPath]:
    async def catalog(req: Request, values: dict[str, Any]) -> Response:
        data: dict[str, Any] = {kind: _names(kind) for kind in PLUGIN_TYPES if _names(kind)}
        data["detailed"] = [_entry(name) for name in _names("auth")]
        return Response(data=data)

    async def of_type(req: Request, values: dict[str, Any]) -> Response:
        names = _names(values["type"])
        if not names:
            raise NotFound()
        return Response(data={"keys": names})

    async def plugin(req: Request, values: dict[str, Any]) -> Response | None:
        name, version = values["name"], values.get("version", "")
        if name not in _names(values["type"]) or version not in ("", RUNNING_VERSION):
            return None
        entry = {k: v for k, v in _entry(name).items() if k != "type"}  # Vault's read leaves the type out
        whole = {**entry, "args": None, "command": "", "sha256": "", "oci": False, "declarative": False}
        return Response(data=dict(sorted(whole.items())))  # Vault's order

    kind = Field(FieldType.NAME, "The type of plugin: auth, database or secret.")
    return [
        SysPath("plugins/catalog", FieldSet({}), {Operation.READ: catalog},
                "Every plugin of the catalog: the built-in auth methods jwt and oidc."),
        SysPath(f"plugins/catalog/{_TYPE}/?", FieldSet({"type": kind}), {Operation.LIST: of_type},
                "The plugins of one type.", sudo=True),
        SysPath(f"plugins/catalog/{_TYPE}/{_NAME}", FieldSet({
            "type": kind,
            "name": Field(FieldType.NAME, "The name of the plugin."),
            "version": Field(FieldType.STRING, "The version of the plugin (empty: the one that runs)."),
        }), {Operation.READ: plugin}, "One plugin: a built-in auth method, at the server's version.", sudo=True),
    ]
