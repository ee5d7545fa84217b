"""Errors raised by auth method backends, mapped to HTTP status codes by the server.

The tree::

    PluginError                   (never raised itself)
    ├── InvalidRequest            400: the caller sent something we refuse (bad field, failed login check)
    ├── PermissionDenied          403: no/invalid token, ACL denial, bound CIDR mismatch
    ├── NotFound                  404: the object does not exist ({"errors": []} when message is empty)
    ├── UnsupportedPath           404: no path of the backend matches ("unsupported path")
    ├── UnsupportedOperation      405: the path exists but not for this operation
    ├── RateLimited               429: a quota was exceeded
    └── UpstreamError             502: an identity provider could not be reached or answered badly
                                   (raised only where no caller-visible 400 fits)

Anything else escaping a backend is a bug: the server logs it and answers 500 with a
generic message.

A refused login carries two more things (``plugin.path_login``): ``check``, the name of
the failed check (a stable reason code), and ``expected``, what the role or config is bound
to. ``messages`` never hold the expected values: they go to anonymous callers. ``detail``
(messages + expected) is for privileged readers: explain and the server log.
"""

from __future__ import annotations

__all__ = [
    "PluginError",
    "InvalidRequest",
    "PermissionDenied",
    "NotFound",
    "UnsupportedPath",
    "UnsupportedOperation",
    "UnsupportedMediaType",
    "RateLimited",
    "UpstreamError",
    "quoted",
]


class PluginError(Exception):
    """Base class: every error a backend raises on purpose. ``messages`` go to ``errors``."""

    status: int = 500
    default_message: str = ""

    def __init__(self, message: str | None = None, *, messages: list[str] | None = None, expected: str = "") -> None:
        if messages is None:
            msg = self.default_message if message is None else message
            messages = [msg] if msg else []
        self.messages = messages
        #: What the role or config expected, written to follow the message (``", role expects
        #: [...]"``); never in ``messages``, which anonymous callers see.
        self.expected = expected
        #: The failed login check's name, a stable reason code (docs/troubleshooting.md);
        #: the login pipeline sets it, other errors leave it empty.
        self.check = ""
        #: Set on every refused login (``plugin.path_login.refused``): what the audit log and the
        #: login metrics record of it: ``role`` (a role that exists), ``iss`` and ``sub`` (the
        #: token's, when it parsed; the server hashes them). None for other errors.
        self.login: dict[str, str] | None = None
        #: What the error body carries beside ``errors`` as ``data`` (Vault's entity merge
        #: lists the clashing aliases there); None for nearly every error.
        self.data: object = None
        super().__init__("; ".join(messages))

    @property
    def detail(self) -> str:
        """The message with what was expected: for explain and the server log only."""
        return "; ".join(self.messages) + self.expected


class InvalidRequest(PluginError):
    """The request is malformed or a login check failed. HTTP 400."""

    status = 400


class PermissionDenied(PluginError):
    """Missing, invalid or under-privileged token, or a bound CIDR mismatch. HTTP 403."""

    status = 403
    default_message = "permission denied"


class NotFound(PluginError):
    """The object asked for does not exist. HTTP 404, usually with ``{"errors": []}``."""

    status = 404


class UnsupportedPath(PluginError):
    """No path of the backend matches the request path. HTTP 404."""

    status = 404
    default_message = "unsupported path"


class UnsupportedOperation(PluginError):
    """The path exists but does not support the operation. HTTP 405."""

    status = 405
    default_message = "unsupported operation"


class UnsupportedMediaType(PluginError):
    """The body's ``Content-Type`` is not one the operation reads (a ``PATCH`` that is not a
    JSON merge patch). HTTP 415."""

    status = 415


class RateLimited(PluginError):
    """A rate-limit quota was exceeded. HTTP 429."""

    status = 429


class UpstreamError(PluginError):
    """An upstream identity provider failed in a way that is not the caller's fault. HTTP 502."""

    status = 502


def quoted(text: str) -> str:
    """``text`` in double quotes for a refusal's message: at most 64 characters, control
    characters and quotes escaped (what a caller sent is never echoed raw)."""
    return '"' + text[:64].encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'
