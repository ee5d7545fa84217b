"""Token entries: what the store keeps per token, and the rules of what one may carry."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from plugin.errors import InvalidRequest
from plugin.framework import Auth

__all__ = [
    "InlineEntry",
    "MountInfo",
    "TokenEntry",
    "RenewHook",
    "check_assignable",
    "login_display_name",
    "resolve_token_type",
]

_NOT_ASSIGNABLE = ("response-wrapping", "control-group")


@dataclass(slots=True)
class MountInfo:
    """What the token store needs to know about the mount that issued a token."""

    path: str  # e.g. "auth/jwt/" (with the auth/ prefix, trailing slash)
    accessor: str  # e.g. "auth_jwt_1a2b3c4d"
    default_lease_ttl: int  # effective seconds (mount tune, else system default)
    max_lease_ttl: int  # effective seconds (mount tune, else system max)
    #: The mount's tuned token_type: default-service | default-batch | service | batch.
    token_type: str = "default-service"


@dataclass(slots=True)
class TokenEntry:
    """A token as stored (service) or decoded (batch). Never holds the raw token.

    ``id_hash`` names the token's row ``sys/token/id/<id_hash>``: the selector of a minted
    service token, or the HMAC of the token for ids chosen by the caller and for tokens
    stored by versions before selectors. ``verifier`` (selector rows only) is the HMAC of
    the whole token, compared in constant time on lookup.
    """

    id_hash: str
    accessor: str
    policies: list[str]
    meta: dict[str, str] = field(default_factory=dict)
    display_name: str = ""
    path: str = ""
    mount_accessor: str = ""
    creation_time: int = 0
    ttl: int = 0  # creation TTL (seconds); 0 = never expires (root only)
    expire_time: float = 0.0  # unix seconds; 0 = never
    explicit_max_ttl: int = 0
    max_expire_time: float = 0.0  # hard cap from max TTLs at issue; 0 = none (informational)
    period: int = 0
    num_uses: int = 0  # remaining uses; 0 = unlimited; -1 = revocation pending
    bound_cidrs: list[str] = field(default_factory=list)
    parent: str | None = None  # parent id_hash
    orphan: bool = True
    type: str = "service"  # service | batch
    renewable: bool = True
    entity_id: str = ""
    internal_data: dict[str, Any] = field(default_factory=dict)
    last_renewal_time: int = 0
    revoke_pending_at: float = 0.0  # when num_uses reached -1
    verifier: str = ""  # HMAC of the raw token (selector rows); "" for HMAC-keyed rows
    role: str = ""  # the token role it was created against (auth/token/create/<role>)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form (what is stored, and what ``Request.token`` carries)."""
        # Hand-written: dataclasses.asdict's recursive deep copy dominated issue() time.
        out = {name: getattr(self, name) for name in _ENTRY_ORDER}
        out["policies"] = list(self.policies)
        out["meta"] = dict(self.meta)
        out["bound_cidrs"] = list(self.bound_cidrs)
        data = self.internal_data
        if _flat(data):
            out["internal_data"] = dict(data)  # what a JSON round trip of flat scalars gives
        else:
            out["internal_data"] = json.loads(json.dumps(data))
        return out

    def stored(self) -> TokenEntry | dict[str, Any]:
        """What ``Storage.put`` is given for this entry: the entry itself where orjson's
        encoding of it (a dataclass: its fields in order) is the encoding of ``to_dict()``,
        which saves building that dict on every service login; else ``to_dict()``."""
        return self if _flat(self.internal_data) else self.to_dict()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenEntry:
        """Inverse of ``to_dict``; unknown keys are ignored."""
        if _ENTRY_FIELDS.issuperset(data):
            return cls(**data)
        return cls(**{k: v for k, v in data.items() if k in _ENTRY_FIELDS})

    def to_auth(self) -> Auth:
        """The Auth this token stands for, as handed to a backend's ``renew`` hook."""
        return Auth(
            display_name=self.display_name,
            policies=list(self.policies),
            metadata=dict(self.meta),
            internal_data=dict(self.internal_data),
            ttl=self.ttl,
            explicit_max_ttl=self.explicit_max_ttl,
            period=self.period,
            num_uses=self.num_uses,
            bound_cidrs=list(self.bound_cidrs),
            token_type=self.type,
            renewable=self.renewable,
        )

    def is_root(self) -> bool:
        return "root" in self.policies


@dataclass(slots=True)
class InlineEntry(TokenEntry):
    """The token an inline authentication (``X-Vault-Inline-Auth-*`` headers) stands for in
    its one request: made as a login makes its token, but with no id or accessor, written
    nowhere and never shown (``TokenStore.inline``). It ends with the request, so it cannot
    be renewed, revoked or made a parent."""


_FLAT_TYPES = (str, int, bool, type(None))


def _flat(data: dict[str, Any]) -> bool:
    """Whether ``data`` is string keys to flat scalars: JSON gives it back as it is."""
    return all(type(k) is str and type(v) in _FLAT_TYPES for k, v in data.items())


_ENTRY_ORDER = tuple(f.name for f in dataclasses.fields(TokenEntry))
_ENTRY_FIELDS = frozenset(_ENTRY_ORDER)

#: Called on renewal of a token issued by an auth mount; returns the backend's Auth
#: (Vault ``Operation.RENEW``) or None to keep the token's own TTL parameters.
RenewHook = Callable[[TokenEntry], Awaitable[Auth | None]]


def login_display_name(mount_path: str, auth: Auth) -> str:
    """Vault: ``<mount path with "/"→"-">`` + the backend's display name, e.g. ``jwt-alice``."""
    source = mount_path.removeprefix("auth/").replace("/", "-")
    name = auth.display_name or (auth.alias.name if auth.alias else "")
    return (source + name).removesuffix("-")


def resolve_token_type(value: str, mount_type: str = "default-service") -> str:
    """``service`` or ``batch`` from the backend's Auth and the mount's tuned token_type.

    As in Vault, a mount tuned to ``service`` or ``batch`` forces that type; the
    ``default-*`` settings only fill in an Auth that says ``default``.
    """
    mount = (mount_type or "default-service").strip().lower()
    if mount in ("service", "batch"):
        return mount
    v = (value or "default").strip().lower()
    if v in ("", "default", "default-service", "default-batch"):
        return "batch" if mount == "default-batch" else "service"
    if v in ("service", "batch"):
        return v
    raise InvalidRequest(f'invalid token type "{value}"')


def check_assignable(policies: list[str]) -> None:
    """:raises InvalidRequest: ``cannot assign policy "<p>"`` for Vault's internal policies."""
    for p in policies:
        if p in _NOT_ASSIGNABLE:
            raise InvalidRequest(f'cannot assign policy "{p}"')


