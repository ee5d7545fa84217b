"""``sys/quotas/config``, ``sys/quotas/rate-limit`` (LIST) and ``sys/quotas/rate-limit/<name>``:
Vault's rate limit quotas (``vault write sys/quotas/rate-limit/<name>``, the Terraform
provider's ``vault_quota_rate_limit``), enforced by ``server.quotas``. Refusals in Vault's
order and words; lease-count quotas (Vault Enterprise) are not served.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from plugin.errors import InvalidRequest, NotFound
from plugin.framework import Operation, Request, Response
from plugin.schema import Field, FieldSet, FieldType
from server.quotas import CONFIG_KEY, DEFAULT_EXEMPT, QUOTA_PREFIX, Quota
from server.sys.core import SysPath

if TYPE_CHECKING:
    from server.sys.backend import SysBackend

__all__ = ["paths", "QUOTA_FIELDS", "CONFIG_FIELDS", "NAME_RE", "checked_quota"]

#: Vault's ``framework.GenericNameRegex``.
NAME_RE = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?"
_BUILT_IN = ("sys/", "identity/")

QUOTA_FIELDS = FieldSet({
    "name": Field(FieldType.NAME, "Name of the quota."),
    "path": Field(FieldType.STRING, "Where the quota applies: '' (every request), a mount ('auth/jwt/', 'sys/', "
                                    "'identity/', 'auth/token/'), or a path under a mount ('auth/jwt/login'; a "
                                    "trailing '*' takes every path that starts so).", default=""),
    "role": Field(FieldType.STRING, "The login role whose logins the quota limits (path must then be a jwt or oidc "
                                    "mount).", default=""),
    "rate": Field(FieldType.FLOAT, "Requests allowed per interval, per client IP (rounded half up; must be > 0).",
                  required=True),
    "interval": Field(FieldType.DURATION, "The interval the rate counts over (default 1s).", default=0),
    "block_interval": Field(FieldType.DURATION, "A client over the rate is refused for this long (0: until the "
                                                "rate allows it again).", default=0),
    "inheritable": Field(FieldType.BOOL, "Vault's namespace inheritance: authmount has the root namespace only; a "
                                         "global quota reads true.", default=False),
})
CONFIG_FIELDS = FieldSet({
    "rate_limit_exempt_paths": Field(FieldType.COMMA_STRING_SLICE, "Paths no quota limits (a trailing '*': every "
                                     "path that starts so). sys/quotas/* is never limited.",
                                     default=list(DEFAULT_EXEMPT)),
    "enable_rate_limit_audit_logging": Field(FieldType.BOOL, "Not supported (must stay false): a refused request is "
                                             "not audited.", default=False),
    "enable_rate_limit_response_headers": Field(FieldType.BOOL, "Not supported (must stay false): authmount sends "
                                                "Retry-After with every 429, no X-Ratelimit-* headers.",
                                                default=False),
})


def checked_quota(name: str, values: dict[str, Any]) -> Quota:
    """The quota a write of ``values`` makes, its own checks passed; its ``path`` as given
    (``mount``), for the caller to resolve against the mounts.

    :raises InvalidRequest: Vault's texts.
    """
    rate = float(values.get("rate", 0.0))
    if rate <= 0:
        raise InvalidRequest("'rate' is invalid")
    block = values.get("block_interval", 0)
    if block < 0:
        raise InvalidRequest("'block' is invalid")
    path = str(values.get("path", "")).strip().lstrip("/")
    inheritable = bool(values["inheritable"]) if "inheritable" in values else not path
    return Quota(name=name, mount=path, role=str(values.get("role", "")), rate=rate,
                 interval=values.get("interval", 0) or 1, block_interval=block, inheritable=inheritable)


def paths(b: SysBackend) -> list[SysPath]:
    core = b.core

    def mount_of(path: str) -> tuple[str, str, str]:
        """``(mount API path, suffix, mount type)`` of a quota's ``path``.

        :raises InvalidRequest: no mount serves it (Vault's text).
        """
        for builtin in _BUILT_IN:
            if (path + "/").startswith(builtin):  # "sys", "sys/", "sys/mounts"
                return builtin, path[len(builtin):].rstrip("/"), "builtin"
        if path.startswith("auth/"):
            found = core.mounts.match(path.removeprefix("auth/") or "/")
            if found is not None:
                mount, rel = found
                return "auth/" + mount.entry.path, rel.rstrip("/"), mount.entry.type
        raise InvalidRequest(f'invalid mount path "{path}"')

    async def write(req: Request, values: dict[str, Any]) -> None:
        name = values["name"]
        given = checked_quota(name, values)
        mount, suffix, kind = mount_of(given.mount) if given.mount else ("", "", "")
        role = given.role
        if role:
            if suffix:
                raise InvalidRequest("Quotas cannot contain both a path suffix and a role. If a role is provided, path "
                                     "must be a valid auth mount with a concept of roles")
            if not mount.startswith("auth/"):
                raise InvalidRequest(f'Mount path "{mount}" is not a valid auth method and therefore unsuitable for use '
                                     "with role-based quotas")
            if kind not in ("jwt", "oidc"):
                raise InvalidRequest(f'Mount path "{mount}" does not support use with role-based quotas')
        same = core.quotas.by_factors(mount, suffix, role)
        if same is not None and same.name != name:
            raise InvalidRequest(f'quota rule with similar properties exists under the name "{same.name}"')
        quota = dataclasses.replace(given, mount=mount, suffix=suffix)
        await core.storage.put(QUOTA_PREFIX + name, quota.to_storage())
        await core.quotas.load()

    async def read(req: Request, values: dict[str, Any]) -> Response | None:
        quota = core.quotas.quotas.get(values["name"])
        return None if quota is None else Response(data=quota.public())

    async def delete(req: Request, values: dict[str, Any]) -> None:
        await core.storage.delete(QUOTA_PREFIX + values["name"])
        await core.quotas.load()

    async def list_quotas(req: Request, values: dict[str, Any]) -> Response:
        names = sorted(core.quotas.quotas)
        if not names:
            raise NotFound()
        return Response(data={"keys": names})

    async def read_config(req: Request, values: dict[str, Any]) -> Response:
        return Response(data=core.quotas.config.public())

    async def write_config(req: Request, values: dict[str, Any]) -> None:
        for name in ("enable_rate_limit_audit_logging", "enable_rate_limit_response_headers"):
            if values.get(name):
                raise InvalidRequest(f"{name} is not supported: {CONFIG_FIELDS[name].description}")
        exempt = values.get("rate_limit_exempt_paths", CONFIG_FIELDS["rate_limit_exempt_paths"].default_value())
        await core.storage.put(CONFIG_KEY, {"rate_limit_exempt_paths": [p.strip().lstrip("/") for p in exempt if p],
                                            "enable_rate_limit_audit_logging": False,
                                            "enable_rate_limit_response_headers": False})
        await core.quotas.load()

    return [
        SysPath("quotas/config", CONFIG_FIELDS, {Operation.READ: read_config, Operation.UPDATE: write_config},
                "Read or set the paths no quota limits."),
        SysPath("quotas/rate-limit/?", FieldSet({}), {Operation.LIST: list_quotas}, "List the rate limit quotas."),
        SysPath(f"quotas/rate-limit/(?P<name>{NAME_RE})", QUOTA_FIELDS,
                {Operation.READ: read, Operation.UPDATE: write, Operation.DELETE: delete},
                "Create, read, update or delete a rate limit quota."),
    ]
