"""Audit entries in Vault's JSON format, and the hashing of their values.

One request gives two entries, each one JSON object on one line::

    {"time": "...Z", "type": "request",  "auth": {...}, "request": {...}[, "error": "..."]}
    {"time": "...Z", "type": "response", "auth": {...}, "request": {...}, "response": {...}[, "error": "..."]}

``auth`` is the caller's token, ``request`` what was asked, ``response`` what was answered
(``response.auth`` is the token a login or ``token/create`` issued). What is hashed, as Vault
does (``hmac-sha256:<hex of HMAC-SHA256(device salt, value)>``):

- every string in ``request.data`` and ``response.data`` (nested maps and lists too), except
  under a key in the mount's ``audit_non_hmac_request_keys`` / ``audit_non_hmac_response_keys``;
- ``client_token`` and ``accessor`` wherever they appear (``auth``, ``response.auth``,
  ``request.client_token``, ``request.client_token_accessor``); accessors stay clear with the
  device option ``hmac_accessor=false``;
- header values the operator asked to hash (``sys/config/auditing/request-headers``);
- beyond Vault, on a refused login (``response.login_failure``): the token's ``iss`` and ``sub``;
- beyond Vault, the IdP tokens a role's ``oauth2_metadata`` puts in a login response
  (``response.auth.metadata.oauth2_*``): hashed always, ``log_raw`` too (third-party
  credentials: an audit log never holds them in the clear).

The identity of a verified token (``display_name``, ``policies``, ``metadata``, ``entity_id``)
stays readable, as in Vault, so the log answers "who". ``log_raw=true`` hashes nothing.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from server.tokens.entry import TokenEntry
from server.tokens.ttl import rfc3339

__all__ = [
    "Record", "Format", "Hasher", "hash_data", "stamp", "request_line", "response_line", "request_entry",
    "response_entry", "probe_record",
]

PREFIX = "hmac-sha256:"
_BLOCK = 64  # SHA-256's block size
NAMESPACE = {"id": "root"}
Hash = Callable[[str], str]


class Hasher:
    """HMAC-SHA256 under one device's salt, in Vault's ``hmac-sha256:<hex>`` form."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, salt: bytes) -> None:
        # HMAC (RFC 2104) from the two padded-key states, computed once: each value then costs
        # two hash-state copies, ~40 % less than hmac.digest (which keys OpenSSL every call).
        key = salt if len(salt) <= _BLOCK else hashlib.sha256(salt).digest()
        key = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def __call__(self, value: str) -> str:
        inner = self._inner.copy()
        inner.update(value.encode("utf-8", "surrogatepass"))
        outer = self._outer.copy()
        outer.update(inner.digest())
        return PREFIX + outer.hexdigest()


def _clear(value: str) -> str:
    return value


def hash_data(value: Any, fn: Hash, keep: frozenset[str] = frozenset()) -> Any:
    """``value`` with every string hashed by ``fn``, except strings (and lists of strings)
    held under a map key in ``keep``, at any depth (Vault's non-HMAC keys). Numbers,
    booleans and null stay as they are."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if k in keep and (isinstance(v, str) or (isinstance(v, list) and all(isinstance(i, str) for i in v))):
                out[k] = v
            else:
                out[k] = hash_data(v, fn, keep)
        return out
    if isinstance(value, (list, tuple)):
        return [hash_data(v, fn, keep) for v in value]
    return value


class Format:
    """How one device writes entries: its hash function and Vault's options ``hmac_accessor``,
    ``log_raw``, ``elide_list_responses`` and ``prefix``."""

    __slots__ = ("hash", "hmac", "accessor", "raw", "elide", "prefix")

    def __init__(
        self, hasher: Hash, *, hmac_accessor: bool = True, log_raw: bool = False, elide_list_responses: bool = False,
        prefix: str = "",
    ) -> None:
        self.raw = log_raw
        #: The device's HMAC whatever ``log_raw`` says (the IdP tokens of a login response).
        self.hmac: Hash = hasher
        self.hash: Hash = _clear if log_raw else hasher
        self.accessor: Hash = self.hash if hmac_accessor else _clear
        self.elide = elide_list_responses
        self.prefix = prefix.encode("utf-8")


class Record:
    """One request as the audit log sees it, filled by the HTTP edge (``server.http.audited``).

    Raw values (the caller's token, the request data, the issued token) stay here and are
    hashed per device when an entry is written; nothing of a Record is stored.
    """

    # Defaults are class attributes: a request sets only what it has (a Record is made per
    # audited request, so each attribute initialised costs every request).
    request_id = ""
    operation = ""
    path = ""
    mount_point = ""
    mount_type = ""
    mount_accessor = ""
    mount_class = ""
    remote_address = ""
    remote_port: int | None = None
    data: dict[str, Any] | None = None
    client_token = ""
    token: TokenEntry | None = None
    #: ``{lower-case name: ([values], hash it)}``
    headers: dict[str, tuple[list[str], bool]] | None = None
    non_hmac_request: frozenset[str] = frozenset()
    non_hmac_response: frozenset[str] = frozenset()
    allowed = True
    #: The request failed: the message (top-level ``error`` of the response entry) ...
    error = ""
    #: Whether ``error`` is also the entry's top-level ``error`` (Vault: every error but a
    #: 400, whose message is only in ``response.data.error``, hashed).
    error_top = False
    #: ... and of the request entry, when the request failed before it ran (403).
    request_error = ""
    response_data: dict[str, Any] | None = None
    #: The issued token: (``TokenStore.auth_block``, display name).
    response_auth: tuple[dict[str, Any], str] | None = None
    #: The IdP tokens the login response adds to ``auth.metadata`` (``Auth.response_metadata``):
    #: written hashed, always.
    response_secrets: dict[str, str] | None = None
    warnings: list[str] | None = None
    #: A refused login: ``{"reason": code, "role": name, "iss": ..., "sub": ...}``.
    login_failure: dict[str, str] | None = None
    is_list = False

    def __init__(self) -> None:
        # "auth" and "request" blocks per Format: serialized once, shared by both entries.
        self._blocks: dict[int, bytes] = {}

    # -- blocks ----------------------------------------------------------------------------
    def blocks(self, fmt: Format) -> bytes:
        """``"auth":{...},"request":{...}`` as ``fmt`` writes them: serialized once per Format,
        shared by the request and the response entry."""
        key = id(fmt)
        found = self._blocks.get(key)
        if found is None:
            auth = orjson.dumps(self._auth(fmt), default=str)
            request = orjson.dumps(self._request(fmt), default=str)
            found = self._blocks[key] = b'"auth":' + auth + b',"request":' + request
        return found

    def _auth(self, fmt: Format) -> dict[str, Any]:
        token = self.token
        if token is None:
            out: dict[str, Any] = {"token_type": "default"}
            if self.allowed and not self.client_token and self.mount_point:  # a login
                out["policy_results"] = {"allowed": True}
            return out
        # An inline authentication's token has no id: the entry shows what it granted.
        out = {"client_token": fmt.hash(self.client_token)} if self.client_token else {}
        if token.accessor:
            out["accessor"] = fmt.accessor(token.accessor)
        out["display_name"] = token.display_name
        out["policies"] = list(token.policies)
        out["token_policies"] = list(token.policies)
        out["policy_results"] = {"allowed": self.allowed}
        if token.meta:
            out["metadata"] = dict(token.meta)
        if token.entity_id:
            out["entity_id"] = token.entity_id
        out["token_type"] = token.type
        if token.ttl:
            out["token_ttl"] = token.ttl
        out["token_issue_time"] = rfc3339(token.creation_time)
        if token.num_uses:
            out["remaining_uses"] = max(token.num_uses, 0)
        return out

    def _mount_fields(self, out: dict[str, Any]) -> None:
        """The mount's fields, as Vault writes them in both the request and the response block."""
        if self.mount_point:
            out["mount_point"] = self.mount_point
            out["mount_type"] = self.mount_type
            if self.mount_accessor:
                out["mount_accessor"] = self.mount_accessor
            out["mount_class"] = self.mount_class

    def _request(self, fmt: Format) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.request_id, "operation": self.operation}
        self._mount_fields(out)
        if self.client_token:
            out["client_token"] = fmt.hash(self.client_token)
            if self.token is not None and self.token.accessor:
                out["client_token_accessor"] = fmt.accessor(self.token.accessor)
        out["namespace"] = NAMESPACE
        out["path"] = self.path
        if self.data:
            out["data"] = self.data if fmt.raw else hash_data(self.data, fmt.hash, self.non_hmac_request)
        if self.remote_address:
            out["remote_address"] = self.remote_address
        if self.remote_port is not None:
            out["remote_port"] = self.remote_port
        if self.headers:
            out["headers"] = {
                name: [fmt.hash(v) for v in values] if hashed else list(values)
                for name, (values, hashed) in self.headers.items()
            }
        return out

    def response_block(self, fmt: Format) -> dict[str, Any]:
        """The ``response`` block as ``fmt`` writes it."""
        out: dict[str, Any] = {}
        self._mount_fields(out)
        issued = self.response_auth
        if issued is not None:
            out["auth"] = auth = _issued(issued[0], issued[1], fmt)
            if self.response_secrets:
                meta = auth.setdefault("metadata", {})
                meta.update((k, fmt.hmac(v)) for k, v in self.response_secrets.items())
        data = self.response_data
        if self.error:
            data = {"error": self.error}
        if data:
            if fmt.elide and self.is_list:
                data = _elided(data)
            out["data"] = data if fmt.raw else hash_data(data, fmt.hash, self.non_hmac_response)
        if self.warnings:
            out["warnings"] = list(self.warnings)
        failure = self.login_failure
        if failure is not None:
            out["login_failure"] = {
                k: (fmt.hash(v) if k in ("iss", "sub") else v) for k, v in failure.items()
            }
        return out


def _issued(block: Mapping[str, Any], display_name: str, fmt: Format) -> dict[str, Any]:
    """``response.auth``: the token a request issued (a ``TokenStore.auth_block``)."""
    out: dict[str, Any] = {"client_token": fmt.hash(block["client_token"])} if block.get("client_token") else {}
    if block.get("accessor"):
        out["accessor"] = fmt.accessor(block["accessor"])
    if display_name:
        out["display_name"] = display_name
    out["policies"] = list(block.get("policies") or ())
    out["token_policies"] = list(block.get("token_policies") or ())
    if block.get("metadata"):
        out["metadata"] = dict(block["metadata"])
    if block.get("entity_id"):
        out["entity_id"] = block["entity_id"]
    out["token_type"] = block.get("token_type", "service")
    if block.get("lease_duration"):
        out["token_ttl"] = block["lease_duration"]
    if block.get("num_uses"):
        out["num_uses"] = block["num_uses"]
    return out


def _elided(data: dict[str, Any]) -> dict[str, Any]:
    """Vault's ``elide_list_responses``: ``keys`` and ``key_info`` of a LIST become counts."""
    out = dict(data)
    for key in ("keys", "key_info"):
        value = out.get(key)
        if isinstance(value, (list, dict)):
            out[key] = len(value)
    return out


_stamp_second = -1
_stamp_prefix = ""


def stamp() -> str:
    """Now in RFC 3339 with microseconds and ``Z`` (the seconds part formatted once a second)."""
    global _stamp_second, _stamp_prefix
    now = time.time()
    second = int(now)
    if second != _stamp_second:
        _stamp_second = second
        _stamp_prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{_stamp_prefix}.{int((now - second) * 1_000_000):06d}Z"


def request_line(rec: Record, fmt: Format, when: str) -> bytes:
    """The ``"type": "request"`` entry of ``rec``: one JSON line (with ``fmt``'s prefix)."""
    tail = b',"error":' + orjson.dumps(rec.request_error) if rec.request_error else b""
    return b"".join((fmt.prefix, b'{"time":"', when.encode(), b'","type":"request",', rec.blocks(fmt), tail, b"}\n"))


def response_line(rec: Record, fmt: Format, when: str) -> bytes:
    """The ``"type": "response"`` entry of ``rec``: one JSON line (with ``fmt``'s prefix)."""
    tail = b',"error":' + orjson.dumps(rec.error) if rec.error and rec.error_top else b""
    response = orjson.dumps(rec.response_block(fmt), default=str)
    return b"".join((fmt.prefix, b'{"time":"', when.encode(), b'","type":"response",', rec.blocks(fmt),
                     b',"response":', response, tail, b"}\n"))


def request_entry(rec: Record, fmt: Format, when: str) -> dict[str, Any]:
    """The request entry of ``rec`` as a dict (what ``request_line`` writes)."""
    return dict(orjson.loads(request_line(rec, fmt, when)[len(fmt.prefix):]))


def response_entry(rec: Record, fmt: Format, when: str) -> dict[str, Any]:
    """The response entry of ``rec`` as a dict (what ``response_line`` writes)."""
    return dict(orjson.loads(response_line(rec, fmt, when)[len(fmt.prefix):]))


def probe_record() -> Record:
    """What a device writes when it is enabled, and when readiness probes a failing device
    (Vault writes the same ``sys/audit/test`` request)."""
    rec = Record()
    rec.operation = "update"
    rec.path = "sys/audit/test"
    rec.remote_address = ""
    return rec

