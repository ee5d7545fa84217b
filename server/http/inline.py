"""Inline authentication (OpenBao 2.4's ``X-Vault-Inline-Auth-*`` headers): a request carries
the login that authenticates it, and the token that login stands for is used for this one
request only, never written and never shown.

This module reads the headers. A request that sends ``X-Vault-Inline-Auth-Path`` to a path
that needs a token gets, in place of a token lookup, a login at that path
(``server.http.handlers.caller``):

- ``X-Vault-Inline-Auth-Path``: the login path, ``auth/<mount>/login`` (any path of an auth
  mount that needs no token and issues one);
- ``X-Vault-Inline-Auth-Parameter-<anything>``: one per login field, each the unpadded
  base64url of a JSON object ``{"key": <field name>, "value": <its value>}``;
- ``X-Vault-Inline-Auth-Operation``: ``update`` (the default), ``create`` or ``read``;
- ``X-Vault-Inline-Auth-Namespace``: empty or ``root`` (the only namespace).

The login runs as a request of its own does: the rate limit quotas and the login limits, its
own pair of audit entries (its own request id), the login metrics. Its token is an
``InlineEntry`` (``TokenStore.inline``): no storage write, no id. Any refusal of this step,
a malformed header as much as a failed login, carries ``X-Vault-Inline-Auth-Failed: true``,
so a client can tell it from a refusal of the request itself.
"""

from __future__ import annotations

from base64 import urlsafe_b64decode
from dataclasses import dataclass
from typing import Any

import orjson

from plugin.errors import InvalidRequest, quoted
from plugin.framework import Operation
from plugin.jsonlimits import MAX_JSON_DEPTH, too_deep
from server.http.errors import foreign_namespace

__all__ = [
    "PATH_HEADER", "PARAMETER_PREFIX", "OPERATION_HEADER", "NAMESPACE_HEADER", "FAILED_HEADER",
    "NOT_LOGIN", "InlineLogin", "read_inline", "refused",
]

PATH_HEADER = "X-Vault-Inline-Auth-Path"
PARAMETER_PREFIX = "X-Vault-Inline-Auth-Parameter-"
OPERATION_HEADER = "X-Vault-Inline-Auth-Operation"
NAMESPACE_HEADER = "X-Vault-Inline-Auth-Namespace"
#: On every refusal of the inline login step (OpenBao sets it on the login's own refusals).
FAILED_HEADER = "X-Vault-Inline-Auth-Failed"
_PARAMETER = PARAMETER_PREFIX.lower()
#: OpenBao's operation names (``logical.ValidateLoginOperation``), case as it reads them.
_OPERATIONS = {"update": Operation.UPDATE, "create": Operation.UPDATE, "read": Operation.READ}
#: The refusal of a path that is no login path (the same whether a mount is there or not).
NOT_LOGIN = (f"permission denied: {PATH_HEADER} does not name a login path of an enabled auth mount "
             "(auth/<mount>/login)")


@dataclass(frozen=True, slots=True)
class InlineLogin:
    """The login a request's inline headers ask for."""

    path: str  # as sent: auth/<mount>/<login path>
    operation: Operation
    data: dict[str, Any]


def refused(message: str) -> InvalidRequest:
    """A refusal of the inline step, worded as OpenBao words its own."""
    return InvalidRequest(f"failed to perform inline authentication: {message}")


def read_inline(headers: Any, limit: int) -> InlineLogin | None:
    """The inline login ``headers`` (a multidict) ask for; None without ``X-Vault-Inline-Auth-Path``.
    The parameters' decoded JSON may take ``limit`` bytes in all (a login body's limit; 0: none).

    :raises InvalidRequest: a header given twice, an operation or a namespace that is not
        one, a parameter that is not the base64url of ``{"key": <string>, "value": <any>}``,
        two parameters for one field, too much data; each names what failed (OpenBao's texts
        where it has one).
    """
    paths = headers.getall(PATH_HEADER, None)
    if paths is None:
        return None
    if len(paths) != 1:
        raise refused(f"expected exactly one value for {PATH_HEADER}")
    operation = Operation.UPDATE
    ops = headers.getall(OPERATION_HEADER, None)
    if ops is not None:
        if len(ops) != 1:
            raise refused(f"expected exactly one value for {OPERATION_HEADER}")
        found = _OPERATIONS.get(ops[0])
        if found is None:
            raise refused(f"expected a valid login operation in {OPERATION_HEADER} (update, create or read), "
                           f"not {quoted(ops[0])}")
        operation = found
    spaces = headers.getall(NAMESPACE_HEADER, None)
    if spaces is not None:
        if len(spaces) > 1:
            raise refused(f"expected at most one value for {NAMESPACE_HEADER}")
        name = foreign_namespace(spaces[0])
        if name is not None:
            raise refused(f"inline auth namespace {quoted(name)} was not found: authmount serves only the root "
                           "namespace")
    data: dict[str, Any] = {}
    size = 0
    for header, value in headers.items():
        if not header.lower().startswith(_PARAMETER):
            continue
        if len(headers.getall(header)) != 1:
            raise refused(f"expected exactly one value for each auth header parameter ({quoted(header)} has more)")
        raw = _decoded(header, value)
        size += len(raw)
        if 0 < limit < size:
            raise refused(f"the parameters' decoded values exceed {limit} bytes, the limit of a login's body")
        key, field = _parameter(header, raw)
        if key in data:
            raise refused(f"parameter {quoted(key)} is given by more than one {PARAMETER_PREFIX}* header")
        data[key] = field
    return InlineLogin(paths[0], operation, data)


_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _decoded(header: str, value: str) -> bytes:
    """The bytes a parameter header's base64url value stands for (its padding optional: Go's
    client sends none, Python's ``urlsafe_b64encode`` adds it).

    :raises InvalidRequest: not base64url (Python's decoder would skip what is not of the
        alphabet, and so let ``+``, ``/`` and spaces through: they are checked first).
    """
    body = value.rstrip("=")
    if len(value) - len(body) > 2 or len(body) % 4 == 1 or not _ALPHABET.issuperset(body):
        raise refused(f"failed raw url-safe base64 decoding header value of {quoted(header)}")
    return urlsafe_b64decode(body + "=" * (-len(body) % 4))


def _parameter(header: str, raw: bytes) -> tuple[str, Any]:
    """The ``(key, value)`` of a parameter's decoded JSON.

    :raises InvalidRequest: OpenBao's messages for JSON that is not such an object.
    """
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and too_deep(raw.decode("utf-8", "replace")):
        raise refused(f"failed json decoding header value of {quoted(header)}: nested more than {MAX_JSON_DEPTH} "
                       "levels")
    try:
        info = orjson.loads(raw)
    except orjson.JSONDecodeError:
        info = None
    if not isinstance(info, dict):
        raise refused(f"failed json decoding header value of {quoted(header)}")
    if "key" not in info:
        raise refused(f"decoded header lacked `key` field ({quoted(header)})")
    key = info["key"]
    if not isinstance(key, str):
        raise refused(f"decoded header had incorrect type for `key` field ({quoted(header)})")
    if "value" not in info:
        raise refused(f"decoded header lacked `value` field ({quoted(header)})")
    if len(info) != 2:
        raise refused(f"unexpected field in decoded request parameter ({quoted(header)})")
    return key, info["value"]
