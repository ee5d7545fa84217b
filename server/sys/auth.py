"""``sys/auth`` (list), ``sys/auth/<path>`` (enable, read, disable) and
``sys/auth/<path>/tune`` (read, change): the auth mount table, sudo on every path but the
listing (Vault's root path is ``auth/*``: ``vault auth list`` needs only ``read``). Also
``sys/mounts/auth/<path>/tune``, where the Vault CLI's ``auth tune`` sends the same change
(sudo there too, so no path tunes a mount for less), and the read-only ``sys/mounts``.

The mount path is a path field made canonical by ``normalize_path`` before the ACL check,
which then judges ``sys/auth/<canonical>`` (no trailing slash) and
``sys/auth/<canonical>/tune``: every spelling of a mount meets the same rule. The tune fields
are ``server.mounts.TUNE_FIELDS``, the declaration the mount table validates with.
"""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING, Any

from plugin import pathdoc
from plugin.errors import InvalidRequest, PermissionDenied
from plugin.framework import Operation, Request, Response
from plugin.schema import Field, FieldSet, FieldType
from server.acl.policies import ACL
from server.mounts import MOUNT_CONFIG_FIELDS, RUNNING_VERSION, TUNE_FIELDS, normalize_path
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
    """The mount table checks ``type`` itself (``backend type must be specified as a string``)."""
    return raw


def _description(raw: Any) -> str:
    if not isinstance(raw, str):
        raise InvalidRequest("'description' must be a string")
    return raw


def _no_entropy(raw: Any) -> bool:
    if raw not in (False, None, "", "false", "0"):
        raise InvalidRequest("external_entropy_access is not supported")
    return False


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
                    "description; its 'options', which the Vault CLI sends, add to 'options').", default={},
                    parse=_object),
    "local": Field(FieldType.BOOL, "Stored and reported; authmount has no replication.", default=False),
    "external_entropy_access": Field(FieldType.BOOL, "Must be false (the Vault CLI sends it): authmount gives no "
                                     "mount an external entropy source.", default=False, parse=_no_entropy),
    "seal_wrap": Field(FieldType.BOOL, "Stored and reported; authmount has no seal.", default=False),
    "options": Field(FieldType.MAP, "Stored and reported; no auth method reads options.", default={},
                     parse=_object),
})


#: The tune paths: the mount path and the tune fields, and two of Vault's that authmount
#: refuses with Vault's texts rather than ignore (a lockout that seemed on would be worse).
TUNE_PATH_FIELDS = FieldSet({
    "path": MOUNT_PATH, **TUNE_FIELDS.fields,
    "plugin_version": Field(FieldType.STRING, "The running version only (the built-in methods have one: "
                            "sys/plugins/catalog); '' leaves it."),
    "user_lockout_config": Field(FieldType.MAP, "Refused: Vault locks out users of userpass, ldap and approle "
                                 "only, and a jwt or oidc login has no password to guess."),
})


#: ``sys/mounts/sys/tune`` and ``sys/mounts/identity/tune``: every tune field is known (a
#: write of one but ``BUILTIN_TUNABLE`` is refused with OpenBao's text, not ignored).
BUILTIN_TUNE_FIELDS = FieldSet({
    "builtin": Field(FieldType.NAME, "sys or identity."),
    **{k: f for k, f in TUNE_PATH_FIELDS.items() if k != "path"},
})


_SEMVER = re.compile(r"v?(\d+(?:\.\d+)*)((?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?)")


def _semantic(version: str) -> str:
    """A version as Vault's catalog names it (``v1`` is ``v1.0.0``).

    :raises InvalidRequest: not a version (Vault's text).
    """
    found = _SEMVER.fullmatch(version)
    if found is None:
        raise InvalidRequest(f'version "{version}" is not a valid semantic version: malformed version: {version}')
    parts = found.group(1).split(".")
    return "v" + ".".join(parts + ["0"] * (3 - len(parts))) + found.group(2)


#: The built-in backends ``sys/mounts`` lists, as Vault lists them: type, description, the
#: request headers passed through to them, and whether they are seal-wrapped.
_BUILTIN_MOUNTS = {"identity/": ("identity", "identity store", "Authorization", False),
                   "sys/": ("system", "system endpoints used for control, policy and debugging", "Accept", True)}


def _builtin_mounts(cluster_id: str, tuned: dict[str, dict[str, list[str]]]) -> dict[str, dict[str, Any]]:
    """``sys/mounts``: the built-in backends authmount serves besides auth mounts (``identity/``
    and ``sys/``; it has no secrets engines), each with an accessor and uuid stable per cluster,
    and its ``tuned`` audit keys (``MountTable.builtin``) in its config."""
    out = {}
    for path, (kind, description, passthrough, seal_wrap) in _BUILTIN_MOUNTS.items():
        ident = uuid.uuid5(uuid.NAMESPACE_URL, f"authmount:{path.rstrip('/')}:{cluster_id}")
        out[path] = {
            "accessor": f"{kind}_{ident.hex[:8]}",
            "config": {"default_lease_ttl": 0, "force_no_cache": False, "max_lease_ttl": 0,
                       "passthrough_request_headers": [passthrough], **tuned.get(path, {})},
            "description": description, "external_entropy_access": False, "local": False, "options": None,
            "plugin_version": "", "running_plugin_version": RUNNING_VERSION, "running_sha256": "",
            "seal_wrap": seal_wrap, "type": kind, "uuid": str(ident),
        }
    return out


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
            raise InvalidRequest(f"No auth engine at {norm}")
        return Response(data=mount.entry.public())

    async def enable(req: Request, values: dict[str, Any]) -> Response | None:
        config = dict(values.get("config", {}))
        options = {**_object(config.pop("options", None)), **values.get("options", {})}
        unknown = sorted(k for k in config if k not in MOUNT_CONFIG_FIELDS)
        if unknown and req.refuse_unknown:
            raise pathdoc.refusal([f"config.{k}" for k in unknown], [f"config.{k}" for k in MOUNT_CONFIG_FIELDS])
        await core.mounts.enable(
            values["path"] + "/", values.get("type") or values.get("plugin_name") or "",
            description=values.get("description", ""), config=config,
            local=values.get("local", False), seal_wrap=values.get("seal_wrap", False), options=options,
        )
        if not unknown:
            return None
        return Response(warnings=pathdoc.ignored_warnings([f"config.{k}" for k in unknown],
                                                          [f"config.{k}" for k in MOUNT_CONFIG_FIELDS]))

    async def disable(req: Request, values: dict[str, Any]) -> None:
        await core.mounts.disable(values["path"] + "/")

    async def read_tune(req: Request, values: dict[str, Any]) -> Response:
        norm = values["path"] + "/"
        mount = await core.mounts.get_fresh(norm)
        if mount is None:
            raise InvalidRequest(f'cannot fetch sysview for path "auth/{norm}"')
        return Response(data=core.mounts.tune_info(mount))

    async def tune(req: Request, values: dict[str, Any]) -> None:
        norm = values["path"] + "/"
        other_version = values.get("plugin_version") not in (None, "", RUNNING_VERSION)
        if other_version or values.get("user_lockout_config"):
            mount = await core.mounts.get_fresh(norm)  # none: the tune below says so, as Vault does
            if mount is not None and other_version:
                raise InvalidRequest(f"plugin not found in the catalog: {mount.entry.type}, "
                                     f"version={_semantic(values['plugin_version'])}")
            if mount is not None:
                raise InvalidRequest(f'tuning of user lockout configuration for auth type "{mount.entry.type}" '
                                     "not allowed")
        ignored = ("path", "plugin_version", "user_lockout_config")
        await core.mounts.tune(norm, {k: v for k, v in values.items() if k not in ignored})

    async def builtin_tune(req: Request, values: dict[str, Any]) -> Response:
        point = values["builtin"] + "/"
        _, description, passthrough, _ = _BUILTIN_MOUNTS[point]
        settings = core.settings
        return Response(data={"default_lease_ttl": settings.default_lease_ttl, "description": description,
                              "force_no_cache": False, "max_lease_ttl": settings.max_lease_ttl,
                              "passthrough_request_headers": [passthrough], **core.mounts.builtin.get(point, {})})

    async def builtin_retune(req: Request, values: dict[str, Any]) -> None:
        await core.mounts.tune_builtin(values["builtin"] + "/", {k: v for k, v in values.items() if k != "builtin"})

    async def locked_users(req: Request, values: dict[str, Any]) -> Response:
        accessor = values.get("mount_accessor") or ""
        asked = [{"mount_accessor": accessor, "counts": 0, "alias_identifiers": None}] if accessor else []
        return Response(data={"by_namespace": [{"namespace_id": "root", "namespace_path": "", "counts": 0,
                                                "mount_accessors": asked}], "total": 0})

    async def unlock_user(req: Request, values: dict[str, Any]) -> None:
        return None

    def builtin_mounts() -> dict[str, dict[str, Any]]:
        return _builtin_mounts(core.cluster_id, core.mounts.builtin)

    async def secret_mounts(req: Request, values: dict[str, Any]) -> Response:
        return Response(data=builtin_mounts())

    async def caller_acl(req: Request) -> ACL | None:
        """The ACL of the token the caller sent (None: it sent none), as Vault reads it on
        these paths: no use consumed.

        :raises PermissionDenied: an unknown token, or one whose entity is disabled.
        """
        raw = (req.token or {}).get("raw") or ""
        if not raw:
            return None
        entry = await core.tokens.lookup(raw)
        if entry is None or core.tokens.entity_disabled(entry):
            raise PermissionDenied()
        return await core.tokens.acl(entry, core.policies)

    async def ui_mounts(req: Request, values: dict[str, Any]) -> Response:
        """Without a token, the mounts tuned visible to everyone (type, description, options);
        with one, also every mount it may use, each in full (Vault's ``hasMountAccess``)."""
        acl = await caller_acl(req)
        auth: dict[str, Any] = {}
        for path, m in sorted(core.mounts.mounts.items()):
            visible = m.entry.config.get("listing_visibility") == "unauth"
            if acl is not None and (visible or acl.has_mount_access("auth/" + path)):
                auth[path] = m.entry.public()
            elif visible:
                auth[path] = {"type": m.entry.type, "description": m.entry.description, "options": dict(m.entry.options)}
        secret = {} if acl is None else {path: info for path, info in builtin_mounts().items()
                                         if acl.has_mount_access(path)}
        return Response(data={"auth": auth, "secret": secret})

    async def ui_mount(req: Request, values: dict[str, Any]) -> Response:
        """One mount in full, for a token that may use it (Vault's preflight of its UI and CLI)."""
        path = values["path"].strip("/") + "/"
        refused = PermissionDenied(f'preflight capability check returned 403, please ensure client\'s policies grant '
                                   f'access to path "{path}"')
        acl = await caller_acl(req)
        if acl is None:
            raise PermissionDenied()
        builtin = next((p for p in _BUILTIN_MOUNTS if path.startswith(p)), None)
        if builtin is not None:
            info, full = {**builtin_mounts()[builtin], "path": builtin}, builtin
        else:
            found = core.mounts.match(path.removeprefix("auth/")) if path.startswith("auth/") else None
            if found is None:
                raise refused  # no mount: the same answer, so the path cannot list the mounts
            mount = found[0]
            info, full = {**mount.entry.public(), "path": mount.entry.path}, "auth/" + mount.entry.path
        if not acl.has_mount_access(full):
            raise refused
        return Response(data=info)

    return [
        SysPath("auth", FieldSet({}), {Operation.READ: list_mounts, Operation.LIST: list_mounts},
                "List auth mounts.", copy_top=True),  # no sudo, as in Vault (its root path is auth/*)
        SysPath(r"auth/(?P<path>[\s\S]+?)/tune/*", TUNE_PATH_FIELDS,
                {Operation.READ: read_tune, Operation.UPDATE: tune},
                "Read or change a mount's tuning.", sudo=True, copy_top=True),
        SysPath(r"mounts/auth/(?P<path>[\s\S]+?)/tune/*", TUNE_PATH_FIELDS,
                {Operation.READ: read_tune, Operation.UPDATE: tune},
                "Read or change an auth mount's tuning (where the Vault CLI's `auth tune` sends it).",
                sudo=True, copy_top=True),
        SysPath("mounts/(?P<builtin>sys|identity)/tune/*", BUILTIN_TUNE_FIELDS,
                {Operation.READ: builtin_tune, Operation.UPDATE: builtin_retune},
                "Read the tuning of a built-in backend (hvac's read_mount_configuration), or change which "
                "request and response keys the audit log writes in clear for it (OpenBao lets only those change).",
                copy_top=True),
        # Vault locks out users of password methods only: jwt and oidc logins never lock anyone.
        SysPath("locked-users", FieldSet({"mount_accessor": Field(FieldType.STRING, "Only this mount's users.")}),
                {Operation.READ: locked_users}, "The users locked out: none (jwt and oidc lock no one out)."),
        SysPath("locked-users/(?P<mount_accessor>[^/]+)/unlock/(?P<alias_identifier>.+)", FieldSet({
            "mount_accessor": Field(FieldType.NAME, "The mount's accessor."),
            "alias_identifier": Field(FieldType.NAME, "The user's name at the mount."),
        }), {Operation.UPDATE: unlock_user}, "Unlock a user: nothing to do, no one is locked out."),
        SysPath("internal/ui/mounts", FieldSet({}), {Operation.READ: ui_mounts},
                "The auth mounts tuned listing_visibility=unauth (type, description, options): what a sign-in "
                "page offers; needs no token. With a token, also every mount it may use, in full.",
                unauthenticated=True),
        SysPath("internal/ui/mounts/(?P<path>.+)", FieldSet({"path": Field(FieldType.NAME, "A path in the mount.")}),
                {Operation.READ: ui_mount}, "One mount in full, for a token that may use it.", unauthenticated=True),
        SysPath("mounts", FieldSet({}), {Operation.READ: secret_mounts},
                "List the secrets engines: authmount serves only sys/.", copy_top=True),
        SysPath(r"auth/(?P<path>[\s\S]+)", ENABLE_FIELDS,
                {Operation.READ: read_mount, Operation.UPDATE: enable, Operation.DELETE: disable},
                "Enable, read or disable the auth method at path.", sudo=True, copy_top=True),
    ]
