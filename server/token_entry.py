"""Token entries and the pure rules around them: policies, TTLs, CIDRs, batch encoding."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import ipaddress
import json
import os
import string
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson

from plugin.errors import InvalidRequest
from plugin.framework import Auth
from plugin.schema import format_duration

__all__ = [
    "DEFAULT_MAX_TTL",
    "MountInfo",
    "TokenEntry",
    "RenewHook",
    "sanitize_policies",
    "check_assignable",
    "calculate_ttl",
    "rfc3339",
    "random_b62",
    "TOKEN_LEN",
    "ACCESSOR_LEN",
    "SELECTOR_LEN",
    "mint_ids",
    "token_selector",
    "accessor_selector",
    "selector_time",
    "selector_due",
    "due_cutoff",
    "validate_cidrs",
    "cidr_allows",
    "login_display_name",
    "resolve_token_type",
    "encode_batch",
    "decode_batch",
]

DEFAULT_MAX_TTL = 768 * 3600
_B62 = string.digits + string.ascii_letters
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form (what is stored, and what ``Request.token`` carries)."""
        # Hand-written: dataclasses.asdict's recursive deep copy dominated issue() time.
        out = {name: getattr(self, name) for name in _ENTRY_ORDER}
        out["policies"] = list(self.policies)
        out["meta"] = dict(self.meta)
        out["bound_cidrs"] = list(self.bound_cidrs)
        data = self.internal_data
        if all(type(k) is str and type(v) in _FLAT_TYPES for k, v in data.items()):
            out["internal_data"] = dict(data)  # what a JSON round trip of flat scalars gives
        else:
            out["internal_data"] = json.loads(json.dumps(data))
        return out

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


_FLAT_TYPES = (str, int, bool, type(None))
_ENTRY_ORDER = tuple(f.name for f in dataclasses.fields(TokenEntry))
_ENTRY_FIELDS = frozenset(_ENTRY_ORDER)

#: Called on renewal of a token issued by an auth mount; returns the backend's Auth
#: (Vault ``Operation.RENEW``) or None to keep the token's own TTL parameters.
RenewHook = Callable[[TokenEntry], Awaitable[Auth | None]]


def sanitize_policies(policies: list[str], *, add_default: bool) -> list[str]:
    """Trim, lower-case, de-duplicate and sort; add ``default`` unless root is present."""
    out = {p.strip().lower() for p in policies if p and p.strip()}
    if add_default and "root" not in out:
        out.add("default")
    return sorted(out)


def calculate_ttl(
    *,
    now: float,
    default_ttl: int,
    mount_max: int,
    increment: int = 0,
    backend_ttl: int = 0,
    period: int = 0,
    backend_max: int = 0,
    explicit_max: int = 0,
    start: float | None = None,
) -> tuple[int, list[str]]:
    """Vault ``framework.CalculateTTL``: the TTL to grant now, plus capping warnings.

    :raises InvalidRequest: ``past the max TTL, cannot renew`` when nothing is left.
    """
    warnings: list[str] = []
    now_s = int(now)
    start_s = now_s if start is None else int(start)
    max_ttl = mount_max if mount_max > 0 else DEFAULT_MAX_TTL
    if 0 < backend_max < max_ttl:
        max_ttl = backend_max
    if 0 < explicit_max < max_ttl:
        max_ttl = explicit_max
    max_valid: int | None = None
    if period > 0:
        if period > max_ttl:
            warnings.append(
                f'period of "{format_duration(period)}" exceeded the effective max_ttl of '
                f'"{format_duration(max_ttl)}"; period value is capped accordingly'
            )
            period = max_ttl
        ttl = period
        if explicit_max > 0:
            max_valid = start_s + explicit_max
    else:
        ttl = increment if increment > 0 else backend_ttl if backend_ttl > 0 else default_ttl
        max_valid = start_s + max_ttl
    if max_valid is not None:
        left = max_valid - now_s
        if left <= 0:
            # Never let arithmetic that reaches 0 turn into "no expiry" (CVE-2021-32923).
            raise InvalidRequest("past the max TTL, cannot renew")
        if ttl > left:
            warnings.append(
                f'TTL of "{format_duration(ttl)}" exceeded the effective max_ttl of '
                f'"{format_duration(left)}"; TTL value is capped accordingly'
            )
            ttl = left
    if ttl <= 0:
        raise InvalidRequest("token TTL must be positive")
    return ttl, warnings


@lru_cache(maxsize=4096)
def rfc3339(ts: float) -> str:
    """Unix seconds → RFC 3339 in UTC, the way Go marshals ``time.Time``."""
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


# byte -> base62 character; bytes >= 248 (= 4 * 62) are dropped, which keeps it uniform.
_B62_TABLE = bytes(ord(_B62[b % 62]) for b in range(256))
_B62_REJECT = bytes(range(248, 256))


def random_b62(n: int = 24) -> str:
    """``n`` uniformly random base62 characters from the OS CSPRNG (rejection sampling)."""
    out = b""
    while len(out) < n:
        out += random_bytes(n + 8).translate(_B62_TABLE, _B62_REJECT)
    return out[:n].decode("ascii")


# ---------------------------------------------------------------------------------------
# Minted service tokens: "hvs." + selector + secret (the split-token pattern). The selector
# locates the one storage row (time-ordered, so new rows append to the key index instead
# of landing on random pages); the secret is never stored, only an HMAC of the whole token.
# selector = minting time (ms) + first possible expiry (s) + random tail.

#: base62 digits in ASCII order: the text order of two selectors is their time order
#: (SQLite and PostgreSQL's ``COLLATE "C"`` compare keys byte by byte).
_B62_ORDERED = string.digits + string.ascii_uppercase + string.ascii_lowercase
_TIME_LEN = 8  # milliseconds since the epoch; 62**8 ms lasts until the year 8888
#: The expiry the token was minted with, in whole seconds (renewals only extend it), so the
#: sweeper can tell from the key alone that a row cannot have expired yet. 62**6 s lasts
#: until the year 3770; "zzzzzz" means never (non-expiring root tokens).
_DUE_LEN = 6
_DUE_NEVER = 62**_DUE_LEN - 1
_TAIL_LEN = 10  # random (59 bits): unique across processes and nodes minting in one ms
SELECTOR_LEN = _TIME_LEN + _DUE_LEN + _TAIL_LEN
_SECRET_LEN = 22  # 22 base62 characters = 131 bits from the OS CSPRNG
_ACCESSOR_TAIL_LEN = 8
TOKEN_LEN = len("hvs.") + SELECTOR_LEN + _SECRET_LEN
ACCESSOR_LEN = SELECTOR_LEN + _ACCESSOR_TAIL_LEN


def _encode(value: int, width: int) -> str:
    """``value`` in ``width`` ordered base62 digits (clamped to what fits)."""
    value = min(max(0, value), 62**width - 1)
    high, low = divmod(value, 62 * 62)
    # The leading digits change every 3844 ms (or s): cached, the rest is one table lookup.
    prefix = _PREFIXES.get((width, high))
    if prefix is None:
        digits: list[str] = []
        rest = high
        for _ in range(width - 2):
            rest, digit = divmod(rest, 62)
            digits.append(_B62_ORDERED[digit])
        prefix = "".join(reversed(digits))
        if len(_PREFIXES) >= 64:
            _PREFIXES.clear()
        _PREFIXES[(width, high)] = prefix
    return prefix + _PAIRS[low]


_PAIRS = [a + b for a in _B62_ORDERED for b in _B62_ORDERED]  # two digits, in order
_PREFIXES: dict[tuple[int, int], str] = {}


def _decode(text: str) -> int:
    value = 0
    for ch in text:
        value = value * 62 + _B62_ORDERED.index(ch)
    return value


def mint_ids(now: float, expire_time: float = 0.0) -> tuple[str, str, str]:
    """A fresh ``(selector, raw token, accessor)`` for a service token minted at ``now``
    that expires at ``expire_time`` (0: never).

    The accessor is the selector plus its own random part, so it finds the same row.
    """
    rand = random_b62(_TAIL_LEN + _SECRET_LEN + _ACCESSOR_TAIL_LEN)
    due = int(expire_time) if expire_time else _DUE_NEVER  # rounded down: never after the expiry
    selector = _encode(round(now * 1000), _TIME_LEN) + _encode(due, _DUE_LEN) + rand[:_TAIL_LEN]
    secret = rand[_TAIL_LEN : _TAIL_LEN + _SECRET_LEN]
    return selector, "hvs." + selector + secret, selector + rand[_TAIL_LEN + _SECRET_LEN :]


def token_selector(raw: str) -> str | None:
    """The selector of a token shaped like a minted one (``hvs.`` + 40 base62), else None."""
    if len(raw) == TOKEN_LEN and raw.startswith("hvs.") and raw.isascii() and raw[4:].isalnum():
        return raw[4 : 4 + SELECTOR_LEN]
    return None


def accessor_selector(accessor: str) -> str | None:
    """The selector inside an accessor of a minted token (26 base62), else None (legacy)."""
    if len(accessor) == ACCESSOR_LEN and accessor.isascii() and accessor.isalnum():
        return accessor[:SELECTOR_LEN]
    return None


def selector_time(selector: str) -> float:
    """The minting time (unix seconds, millisecond precision) a selector carries."""
    return _decode(selector[:_TIME_LEN]) / 1000


def selector_due(selector: str) -> float:
    """The expiry a token was minted with, rounded down to the second (0: never expires)."""
    due = _decode(selector[_TIME_LEN : _TIME_LEN + _DUE_LEN])
    return 0.0 if due == _DUE_NEVER else float(due)


def due_cutoff(now: float) -> tuple[int, int, str]:
    """``(start, end, cutoff)``: a selector row may have expired by ``now`` only when
    ``selector[start:end] <= cutoff`` (a string comparison, cheap for a full key list)."""
    return _TIME_LEN, _TIME_LEN + _DUE_LEN, _encode(int(now), _DUE_LEN)


_POOL_SIZE = 4096
_pool = b""
_pool_pos = 0
_pool_lock = threading.Lock()


def random_bytes(n: int) -> bytes:
    """``n`` bytes from ``os.urandom``, drawn ``_POOL_SIZE`` bytes at a time.

    Each byte is handed out once; a getrandom(2) call costs ~10 us on a VM, more than the
    rest of minting a token. A forked child never reuses its parent's pool.
    """
    global _pool, _pool_pos
    if n > _POOL_SIZE:
        return os.urandom(n)
    with _pool_lock:  # never the same bytes twice, whichever thread asks
        if _pool_pos + n > len(_pool):
            _pool, _pool_pos = os.urandom(_POOL_SIZE), 0
        start = _pool_pos
        _pool_pos = start + n
        return _pool[start : start + n]


def _drop_pool() -> None:
    global _pool, _pool_pos, _pool_lock
    _pool, _pool_pos, _pool_lock = b"", 0, threading.Lock()


os.register_at_fork(after_in_child=_drop_pool)


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@lru_cache(maxsize=1024)
def _network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(cidr, strict=False)


def validate_cidrs(cidrs: list[str]) -> list[str]:
    """Normalise bound CIDRs (a bare address is a /32 or /128).

    :raises InvalidRequest: naming the first value that is not an address or CIDR.
    """
    out: list[str] = []
    for c in cidrs:
        c = c.strip()
        if not c:
            continue
        try:
            out.append(str(_network(c)))
        except ValueError:
            raise InvalidRequest(f'invalid bound CIDR "{c}"') from None
    return out


def cidr_allows(cidrs: list[str], remote_addr: str | None) -> bool:
    """True when ``remote_addr`` lies in one of ``cidrs`` (an unparsable address never does)."""
    try:
        ip = ipaddress.ip_address(remote_addr or "")
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for c in cidrs:
        try:
            if ip in _network(c):
                return True
        except (ValueError, TypeError):
            continue
    return False


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


# ---------------------------------------------------------------------------------------
# Batch tokens: "hvb." + base64url(JSON payload) + "." + base64url(HMAC-SHA256(key, body)).
# Signed, not encrypted: the holder can read its own policies and metadata (lookup-self
# shows them anyway), so token metadata must never carry secrets.


def encode_batch(entry: TokenEntry, key: bytes) -> str:
    """The raw batch token for ``entry`` (which is not modified)."""
    payload = {
        "v": 1,
        "p": entry.policies,
        "m": entry.meta,
        "c": entry.creation_time,
        "t": entry.ttl,
        "e": entry.expire_time,
        "x": entry.explicit_max_ttl,
        "d": entry.display_name,
        "a": entry.mount_accessor,
        "b": entry.bound_cidrs,
        "i": entry.entity_id,
        "path": entry.path,
        "o": entry.parent,
        "n": random_b62(8),  # two identical logins in one second still differ
    }
    try:
        encoded = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # e.g. a lone surrogate orjson refuses; json escapes it
        encoded = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    body = "hvb." + _b64e(encoded)
    return body + "." + _b64e(_batch_sig(key, body))


def _batch_sig(key: bytes, body: str) -> bytes:
    keyed = _KEYED.get(key)
    if keyed is None:
        if len(_KEYED) >= 8:
            _KEYED.clear()
        keyed = _KEYED[key] = hmac.new(key, digestmod=hashlib.sha256)
    # A copy of a keyed state: hmac.new looks the digest up in OpenSSL on every call.
    mac = keyed.copy()
    mac.update(body.encode())
    return mac.digest()


_KEYED: dict[bytes, Any] = {}  # batch signing key -> keyed HMAC state (one key per store)


def decode_batch(raw: str, key: bytes) -> TokenEntry | None:
    """The entry inside a batch token, or None when malformed or the signature is wrong.

    ``id_hash`` is left empty for the caller to fill in.
    """
    body, dot, sig = raw.rpartition(".")
    if not dot or body.count(".") != 1:
        return None
    try:
        given = _b64d(sig)
    except ValueError:
        return None
    if not hmac.compare_digest(given, _batch_sig(key, body)):
        return None
    try:
        p = json.loads(_b64d(body[4:]))
        return TokenEntry(
            id_hash="",
            accessor="",
            policies=list(p["p"]),
            meta=dict(p["m"]),
            display_name=p["d"],
            path=p["path"],
            mount_accessor=p["a"],
            creation_time=int(p["c"]),
            ttl=int(p["t"]),
            expire_time=float(p["e"]),
            explicit_max_ttl=int(p["x"]),
            bound_cidrs=list(p["b"]),
            parent=p["o"],
            orphan=p["o"] is None,
            type="batch",
            renewable=False,
            entity_id=p["i"],
        )
    except (ValueError, KeyError, TypeError):
        # Only reachable with a valid signature, i.e. a bug on our side, not an attacker.
        return None
