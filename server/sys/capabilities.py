"""``sys/capabilities-self``, ``sys/capabilities`` and ``sys/capabilities-accessor``: what a
token's policies allow on given paths (``vault token capabilities``, hvac
``sys.get_capabilities``), computed by the same ACL that authorizes requests; and
``sys/internal/ui/resultant-acl``, the calling token's whole ACL (the default policy grants it).

Each path asked about is first made canonical the way a request to it would be (through
the mount's backend for ``auth/...``, through the sys backend for ``sys/...``), so the answer
for ``auth/jwt/role/ADMIN`` is what a request to that path would really be allowed; the
reply is keyed by the paths as asked (trimmed of spaces, as Vault's comma lists are).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from plugin.errors import InvalidRequest, PluginError
from plugin.framework import Operation, Request, Response
from plugin.schema import Field, FieldSet, FieldType
from server.acl.policies import resultant
from server.sys.core import SysCore, SysPath, acl_path
from server.tokens.backend import entry_by_accessor
from server.tokens.entry import TokenEntry

if TYPE_CHECKING:
    from server.sys.backend import SysBackend

__all__ = ["paths", "MAX_PATHS", "canonical_path"]

#: Paths one request may ask about (each costs one ACL match).
MAX_PATHS = 256


def _path_list(raw: Any) -> list[str] | None:
    """A list of strings, or a comma-separated string as Vault accepts (null: not given)."""
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = raw.split(",") if raw else []  # Vault: "" is no path at all, " " one empty path
    if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
        raise InvalidRequest("paths must be a list of strings or a comma-separated string")
    return raw


def _required(message: str) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        if not isinstance(raw, str) or not raw:
            raise InvalidRequest(message)
        return raw

    return parse


_PATHS = {
    "paths": Field(FieldType.COMMA_STRING_SLICE, "The paths to report on (at most 256).", parse=_path_list),
    "path": Field(FieldType.COMMA_STRING_SLICE, "Use 'paths' instead.", alias_of="paths", deprecated=True,
                  parse=_path_list),
}
_TOKEN = {"token": Field(FieldType.STRING, "The token to report on.", sensitive=True,
                         parse=_required("missing token"))}
#: The Vault CLI sends its own token in the body of ``capabilities-self`` too; the answer is
#: always for the calling token.
_SELF_TOKEN = {"token": Field(FieldType.STRING, "Ignored: the answer is for the calling token (the Vault CLI "
                              "sends it).", sensitive=True)}
_ACCESSOR = {"accessor": Field(FieldType.STRING, "Accessor of the token to report on.", required=True,
                               parse=_required("missing accessor"))}


def _asked(values: dict[str, Any]) -> list[str]:
    """``paths``, else the deprecated single ``path``: each trimmed of spaces, once, as the
    reply's keys (a leading ``/`` kept there, as Vault keeps it; the ACL judges the path
    without it).

    :raises InvalidRequest: none given; one empty (Vault's ``missing path``); too many.
    """
    raw = values.get("paths")
    if not raw:
        raw = values.get("path")
    if not raw:
        raise InvalidRequest("paths must be supplied")
    asked = list(dict.fromkeys(p.strip() for p in raw))
    if len(asked) > MAX_PATHS:
        raise InvalidRequest(f"too many paths: {len(asked)} (at most {MAX_PATHS})")
    if "" in asked:
        raise InvalidRequest("missing path")
    return asked


def canonical_path(b: SysBackend, path: str) -> str:
    """The path the ACL judges for a request to ``path`` (see the module docstring); the
    path unchanged when no mount or sys path serves it, or a name in it has no canonical
    spelling (the request would be refused before any ACL check)."""
    try:
        if path.startswith("auth/"):
            found = b.core.mounts.match(path[5:])
            if found is not None:
                mount, rel = found
                return "auth/" + mount.entry.path + mount.backend.resolve(rel).path
        elif path.startswith("sys/"):
            return acl_path(b.resolve(path[4:]))
    except PluginError:
        pass
    return path


#: Finds the token whose capabilities are asked for: (core, values, caller) -> entry.
_Target = Callable[[SysCore, dict[str, Any], TokenEntry], Awaitable[TokenEntry]]


async def _caller(core: SysCore, values: dict[str, Any], caller: TokenEntry) -> TokenEntry:
    if caller.num_uses < 0:  # on its last use the token is pending revocation: Vault's answer
        raise InvalidRequest("invalid token")
    return caller


async def _by_token(core: SysCore, values: dict[str, Any], caller: TokenEntry) -> TokenEntry:
    raw = values.get("token")
    if raw is None:
        raise InvalidRequest("missing token")
    entry = await core.tokens.lookup(raw)
    if entry is None:
        raise InvalidRequest("invalid token")
    return entry


async def _by_accessor(core: SysCore, values: dict[str, Any], caller: TokenEntry) -> TokenEntry:
    return await entry_by_accessor(core.tokens, values.get("accessor"))


def paths(b: SysBackend) -> list[SysPath]:
    """The three capabilities paths; the caller needs ``update`` on the path itself (the
    default policy grants it on ``sys/capabilities-self``)."""
    core = b.core

    def answer(target: _Target) -> dict[Operation, Any]:
        async def handler(req: Request, values: dict[str, Any]) -> Response:
            asked = _asked(values)
            caller: TokenEntry = (req.token or {})["entry"]
            entry = await target(core, values, caller)
            if core.tokens.entity_disabled(entry):  # OpenBao 2.7.2 answers it as an unknown token
                raise InvalidRequest("invalid token")
            acl = await core.tokens.acl(entry, core.policies)
            reply: dict[str, Any] = {path: acl.capabilities(canonical_path(b, path.lstrip("/"))) for path in asked}
            if len(asked) == 1:  # Vault's older single-path answer, still read by its CLI
                reply["capabilities"] = reply[asked[0]]
            return Response(data=reply)

        return {Operation.UPDATE: handler}

    async def resultant_acl(req: Request, values: dict[str, Any]) -> Response:
        entry: TokenEntry = (req.token or {})["entry"]
        acl = await core.tokens.acl(entry, core.policies)
        return Response(data=resultant(acl))

    return [
        SysPath("capabilities-self", FieldSet({**_PATHS, **_SELF_TOKEN}), answer(_caller),
                "The calling token's capabilities on the given paths.", copy_top=True),
        SysPath("capabilities", FieldSet({**_PATHS, **_TOKEN}), answer(_by_token),
                "Another token's capabilities on the given paths.", copy_top=True),
        SysPath("capabilities-accessor", FieldSet({**_PATHS, **_ACCESSOR}), answer(_by_accessor),
                "The capabilities of the token with this accessor on the given paths.", copy_top=True),
        SysPath("internal/ui/resultant-acl", FieldSet({}), {Operation.READ: resultant_acl},
                "The calling token's ACL: its exact paths and globs with their capabilities."),
    ]
