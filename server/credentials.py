"""The request headers that carry a caller's credentials, known in one place: no mount's
backend sees them (``server.http.handlers.BackendHeaders``), and the audit log always hashes
them (``server.audit.broker``), whatever ``sys/config/auditing/request-headers`` says."""

from __future__ import annotations

__all__ = ["INLINE_PREFIX", "carries_credential"]

#: Every inline authentication header (``server.http.inline``) begins so, in lower case.
INLINE_PREFIX = "x-vault-inline-auth-"
_CREDENTIAL_HEADERS = frozenset({"x-vault-token", "authorization", "cookie", "proxy-authorization"})


def carries_credential(name: str) -> bool:
    """Whether the header ``name`` (lower case) carries a credential: a token, a password, a
    cookie, or an inline login's parameters."""
    return name in _CREDENTIAL_HEADERS or name.startswith(INLINE_PREFIX)
