"""Token store with Vault semantics (service tokens by HMAC only, batch tokens signed).

INTERFACE STUB — owned by the tokens/policies work; signatures are the contract.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from plugin.framework import Auth
from plugin.storage import Storage


@dataclass(slots=True)
class MountInfo:
    """What the token store needs to know about the mount that issued a token."""

    path: str  # e.g. "auth/jwt/" (with the auth/ prefix, trailing slash)
    accessor: str  # e.g. "auth_jwt_1a2b3c4d"
    default_lease_ttl: int  # effective seconds (mount tune, else system default)
    max_lease_ttl: int  # effective seconds (mount tune, else system max)


@dataclass(slots=True)
class TokenEntry:
    """A token as stored (service) or decoded (batch). Never holds the raw token."""

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
    max_expire_time: float = 0.0  # hard cap from max TTLs; 0 = none
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


class TokenStore:
    """Issue, look up, use, renew and revoke tokens.

    Storage layout (under the server's root storage, not a mount view):
    ``sys/token/id/<hmac>`` → entry, ``sys/token/accessor/<hmac(accessor)>`` → id_hash,
    ``sys/token/parent/<parent hmac>/<child hmac>`` → 1, ``sys/token/salt`` (32 random bytes).
    """

    def __init__(self, storage: Storage, *, clock: Any = None) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        """Load or create the salt and batch signing key; start the expiry sweeper."""

    async def close(self) -> None:
        """Stop the sweeper."""

    async def issue(
        self,
        auth: Auth,
        *,
        mount: MountInfo,
        parent: TokenEntry | None = None,
        remote_addr: str | None = None,
    ) -> tuple[dict[str, Any], list[str]]:
        """Mint a token from a backend's Auth. Returns (Vault ``auth`` block, warnings).

        :raises InvalidRequest: ``auth methods cannot create root tokens`` and friends.
        """
        raise NotImplementedError

    async def create_root(self, token_id: str | None = None) -> str:
        """Create a root token (random or given id) and return the raw token."""
        raise NotImplementedError

    async def authenticate(self, raw_token: str, remote_addr: str) -> TokenEntry:
        """Look up a token for a request: expiry, bound CIDRs, and consume one use.

        :raises PermissionDenied: unknown, expired, exhausted or CIDR-mismatched token.
        """
        raise NotImplementedError

    async def revoke_mount(self, mount_accessor: str) -> int:
        """Revoke every token issued through a mount (when it is disabled)."""
        raise NotImplementedError
