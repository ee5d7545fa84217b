"""``sys/fingerprint``: the fingerprints of secrets a caller may write, for ``authmount apply``.

A write-only secret (``oidc_client_secret``, ``jwt_validation_hmac_secrets``, a provider
credential) is never returned; GET shows its fingerprint instead
(``sensitive_fingerprints``, ``plugin.path_config.JWTConfig.fingerprints``). To tell whether a
file's secret is the stored one, ``authmount apply`` sends the file's value here and compares
the two fingerprints, so a secret that did not change is never written again and never shows
as a change (docs/configuration.md, "Secrets in apply").

The fingerprint is an HMAC under the server's fingerprint key (``server.keyring``), bound to
the mount and the field: it cannot be computed without the server, and this path computes it
only for a caller who holds ``update`` on the path the secret belongs to (who may replace the
secret anyway), besides ``update`` on ``sys/fingerprint`` itself.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from plugin.errors import InvalidRequest, PermissionDenied, UnsupportedPath
from plugin.framework import Operation, Request, Response
from plugin.schema import Field, FieldSet, FieldType
from server.sys.core import SysPath

if TYPE_CHECKING:
    from server.sys.backend import SysBackend

__all__ = ["paths", "FINGERPRINT_FIELDS", "MAX_VALUES"]

#: Most values one request may ask about.
MAX_VALUES = 64


def _path(raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip("/"):
        raise InvalidRequest("'path' must name the path the secret is written to, e.g. auth/jwt/config")
    return raw.strip("/")


def _values(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict) or not raw:
        raise InvalidRequest("'values' must be an object of {field: value}")
    if len(raw) > MAX_VALUES:
        raise InvalidRequest(f"too many values: {len(raw)} (at most {MAX_VALUES})")
    return raw


FINGERPRINT_FIELDS = FieldSet({
    "path": Field(FieldType.STRING, "The API path the secrets are written to, e.g. auth/jwt/config.", default="",
                  required=True, parse=_path),
    "values": Field(FieldType.MAP, "{field: value}: the secrets to fingerprint (a provider credential as "
                    "provider_config.<key>).", default={}, parse=_values),
})


def paths(b: SysBackend) -> list[SysPath]:
    core = b.core

    async def fingerprint(req: Request, values: dict[str, Any]) -> Response:
        path = values.get("path") or _path(None)
        asked = values.get("values") or _values(None)
        if not path.startswith("auth/"):
            raise InvalidRequest(f'"{path}" is not below auth/: only auth method secrets have fingerprints')
        found = await core.mounts.match_fresh(path[len("auth/"):])
        if found is None:
            raise InvalidRequest(f'no auth mount serves "{path}"')
        mount, rel = found
        try:
            route = mount.backend.resolve(rel)
        except UnsupportedPath:
            raise InvalidRequest(f'unsupported path "{path}"') from None
        full = "auth/" + mount.entry.path + route.path
        entry = (req.token or {}).get("entry")
        if entry is None:
            raise PermissionDenied()
        acl = await core.tokens.acl(entry, core.policies, full)
        if not acl.allows(full, "update"):
            raise PermissionDenied()
        fields = route.spec.fields
        out: dict[str, str] = {}
        for name, value in asked.items():
            head, dot, _ = name.partition(".")
            spec = fields.fields.get(head)
            if spec is None or not (spec.sensitive if not dot else spec.type is FieldType.MAP):
                raise InvalidRequest(f'"{name}" is not a secret field of {full}')
            out[name] = mount.system.sealer.fingerprint(json.dumps(value).encode("utf-8"), f"{route.path}#{name}")
        return Response(data={"fingerprints": out})

    return [
        SysPath("fingerprint", FINGERPRINT_FIELDS, {Operation.UPDATE: fingerprint},
                "The fingerprints of secrets, as GET shows them for the stored ones (needs update on the path)."),
    ]
