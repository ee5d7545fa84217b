"""Batch tokens: stateless, signed, never stored."""

from __future__ import annotations

import base64
import hmac
import json

import orjson

from server.tokens.entry import TokenEntry
from server.tokens.ids import random_b62
from server.tokens.keys import HmacSha256

__all__ = ["CARRIED_INTERNAL", "encode_batch", "decode_batch"]

#: The entries of ``internal_data`` a batch token carries (signed, so the holder reads them
#: but cannot change them): what an OIDC provider's access token is for, and that its
#: entity's groups grant it no policies.
CARRIED_INTERNAL = ("oidc_provider", "oidc_client_id", "oidc_scopes", "no_identity_policies")

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
    if entry.role:
        payload["r"] = entry.role
    carried = {k: entry.internal_data[k] for k in CARRIED_INTERNAL if k in entry.internal_data}
    if carried:
        payload["q"] = carried
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
        keyed = _KEYED[key] = HmacSha256(key)
    # Keyed states built once per key: hmac.new looks the digest up in OpenSSL on every call.
    return keyed.digest(body.encode())


_KEYED: dict[bytes, HmacSha256] = {}  # batch signing key -> keyed HMAC states (one key per store)


def decode_batch(raw: str, keys: tuple[bytes, ...]) -> TokenEntry | None:
    """The entry inside a batch token, or None when malformed or no key's signature matches.

    ``keys`` are tried in order (the signing key first, then keys that still verify after
    a rotation). ``id_hash`` is left empty for the caller to fill in; what the entry claims
    is the caller's to re-check (a valid signature only says one of ``keys`` made it).
    """
    body, dot, sig = raw.rpartition(".")
    if not dot or body.count(".") != 1:
        return None
    try:
        given = _b64d(sig)
    except ValueError:
        return None
    if not any(hmac.compare_digest(given, _batch_sig(key, body)) for key in keys):
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
            role=p.get("r", ""),
            internal_data={k: v for k, v in dict(p.get("q") or {}).items() if k in CARRIED_INTERNAL},
        )
    except (ValueError, KeyError, TypeError):
        # Only reachable with a valid signature, i.e. a bug on our side, not an attacker.
        return None


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
