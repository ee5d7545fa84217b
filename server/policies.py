"""Vault ACL policies: HCL or JSON text, path globs, capabilities, deny wins.

INTERFACE STUB — owned by the tokens/policies work; signatures are the contract.
"""

from __future__ import annotations

from plugin.storage import Storage

CAPABILITIES = ("create", "read", "update", "delete", "list", "sudo", "deny")


class ACL:
    """The merged rules of a token's policies."""

    def allows(self, path: str, capability: str) -> bool:
        """``path`` is the request path without ``/v1/`` (e.g. ``auth/jwt/role/x``).
        ``capability`` is one of create/read/update/delete/list/sudo."""
        raise NotImplementedError


class PolicyStore:
    """Policies stored at ``sys/policy/<name>``; ``root`` and ``default`` are built in."""

    def __init__(self, storage: Storage) -> None:
        raise NotImplementedError

    async def acl_for(self, policies: list[str]) -> ACL:
        """Build (and cache until a policy write) the ACL for these policy names."""
        raise NotImplementedError
