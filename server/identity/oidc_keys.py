"""Named signing keys of identity tokens (``identity/oidc/key/<name>``): key pairs, their
public JWKs, signing, and rotation (Vault's ``namedKey``).

A named key holds a signing key pair, the *next* pair (published in the JWKS a whole
rotation period before it signs anything, so a verifier's cached key set already holds it when
the rotation comes) and a ring of public keys with the time each stops verifying. A rotation
makes the next pair the signing pair, gives the old signing key's public half
``verification_ttl`` more seconds in the ring, and makes a new next pair. Keys rotate when
they are due, at the first use after ``next_rotation`` (a token signed, the key set read), on
whichever node comes first: the rotation is one storage update that re-checks the time, so
two nodes never both rotate one key.

Private keys are stored sealed (PKCS#8 DER, context ``identity/oidc/key/<name>#private_key``),
so a copy of the storage signs nothing. Signing uses ``cryptography`` directly: authmount
only verifies with python-jose (``plugin/jose_verify.py``).

Stored at ``identity/oidc/key/<name>``::

    {"algorithm": "RS256", "rotation_period": 86400, "verification_ttl": 86400,
     "allowed_client_ids": ["*"], "next_rotation": <unix seconds>,
     "signing": {"kid": ..., "private_key": <sealed>}, "next": {"kid": ..., "private_key": <sealed>},
     "ring": [{"kid": ..., "jwk": {...}, "expire_at": <unix seconds, 0 while in use>}]}
"""

from __future__ import annotations

import base64
import json
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field, fields
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from plugin.sealing import Sealer

__all__ = ["ALGORITHMS", "KEY_PREFIX", "KeyPair", "NamedKey", "Signers", "allows_client", "generate", "sign_jwt"]

KEY_PREFIX = "identity/oidc/key/"
#: Vault's ``SupportedAlgs``, in its order (the discovery document lists them so).
ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "EdDSA")
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512,
}
_CURVES: dict[str, tuple[ec.EllipticCurve, str]] = {
    "ES256": (ec.SECP256R1(), "P-256"), "ES384": (ec.SECP384R1(), "P-384"), "ES512": (ec.SECP521R1(), "P-521"),
}
_PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _int_b64(value: int, size: int | None = None) -> str:
    return _b64(value.to_bytes(size or max(1, (value.bit_length() + 7) // 8), "big"))


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A fresh key pair: its id, the private key as PKCS#8 DER, the public JWK."""

    kid: str
    der: bytes
    jwk: dict[str, Any]


def _public_jwk(private: _PrivateKey, kid: str, alg: str) -> dict[str, Any]:
    if isinstance(private, rsa.RSAPrivateKey):
        numbers = private.public_key().public_numbers()
        return {"use": "sig", "kty": "RSA", "kid": kid, "alg": alg, "n": _int_b64(numbers.n),
                "e": _int_b64(numbers.e)}
    if isinstance(private, ec.EllipticCurvePrivateKey):
        size = (private.curve.key_size + 7) // 8
        point = private.public_key().public_numbers()
        return {"use": "sig", "kty": "EC", "kid": kid, "crv": _CURVES[alg][1], "alg": alg,
                "x": _int_b64(point.x, size), "y": _int_b64(point.y, size)}
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"use": "sig", "kty": "OKP", "kid": kid, "crv": "Ed25519", "alg": alg, "x": _b64(raw)}


def generate(alg: str) -> KeyPair:
    """A new key pair for ``alg`` (RSA 2048 bits, as Vault's; EC on the algorithm's curve;
    Ed25519). Slow for RSA (tens of milliseconds): run it off the event loop."""
    private: _PrivateKey
    if alg.startswith("RS"):
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg in _CURVES:
        private = ec.generate_private_key(_CURVES[alg][0])
    elif alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f'unknown signing algorithm "{alg}"')
    kid = str(uuid.uuid4())
    der = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return KeyPair(kid, der, _public_jwk(private, kid, alg))


def _signature(private: _PrivateKey, alg: str, message: bytes) -> bytes:
    if isinstance(private, rsa.RSAPrivateKey):
        return private.sign(message, padding.PKCS1v15(), _HASHES[alg[2:]]())
    if isinstance(private, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(private.sign(message, ec.ECDSA(_HASHES[alg[2:]]())))
        size = (private.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    return private.sign(message)


def sign_jwt(private: _PrivateKey, alg: str, kid: str, claims: dict[str, Any]) -> str:
    """A compact JWS of ``claims`` signed with ``private`` under ``alg``, its ``kid`` in the header."""
    header = _b64(json.dumps({"alg": alg, "kid": kid}, separators=(",", ":")).encode())
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode("ascii")
    return f"{header}.{payload}.{_b64(_signature(private, alg, signing_input))}"


def allows_client(allowed_client_ids: list[str], client_id: str) -> bool:
    """Whether a list of ``allowed_client_ids`` (a key's, an OIDC provider's) admits
    ``client_id``: ``*`` admits every client."""
    return "*" in allowed_client_ids or client_id in allowed_client_ids


@dataclass(slots=True)
class NamedKey:
    """A named key as stored (see the module docstring)."""

    algorithm: str = "RS256"
    rotation_period: int = 86400
    verification_ttl: int = 86400
    allowed_client_ids: list[str] = field(default_factory=list)
    next_rotation: float = 0.0
    signing: dict[str, str] = field(default_factory=dict)
    next: dict[str, str] = field(default_factory=dict)
    ring: list[dict[str, Any]] = field(default_factory=list)

    def to_storage(self) -> dict[str, Any]:
        return {"algorithm": self.algorithm, "rotation_period": self.rotation_period,
                "verification_ttl": self.verification_ttl, "allowed_client_ids": list(self.allowed_client_ids),
                "next_rotation": self.next_rotation, "signing": dict(self.signing), "next": dict(self.next),
                "ring": [dict(k) for k in self.ring]}

    @classmethod
    def from_storage(cls, raw: dict[str, Any]) -> NamedKey:
        return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})

    def allows(self, client_id: str) -> bool:
        return allows_client(self.allowed_client_ids, client_id)

    def due(self, now: float) -> bool:
        return now >= self.next_rotation

    def _sealed(self, pair: KeyPair, sealer: Sealer, name: str) -> dict[str, str]:
        return {"kid": pair.kid, "private_key": sealer.seal(pair.der, f"{KEY_PREFIX}{name}#private_key")}

    def _retire(self, kid: str, at: float) -> None:
        for entry in self.ring:
            if entry["kid"] == kid and not entry["expire_at"]:
                entry["expire_at"] = at

    def prune(self, now: float) -> None:
        """Drop the public keys whose verification time has passed."""
        self.ring = [k for k in self.ring if not k["expire_at"] or k["expire_at"] > now]

    def install(self, current: KeyPair, upcoming: KeyPair, sealer: Sealer, name: str, now: float) -> None:
        """A new signing and next pair (a new key, or a new algorithm): the pairs they
        replace keep verifying for ``verification_ttl`` (Vault's keep verifying forever)."""
        for old in (self.signing, self.next):
            if old:
                self._retire(old["kid"], now + self.verification_ttl)
        self.signing = self._sealed(current, sealer, name)
        self.next = self._sealed(upcoming, sealer, name)
        self.ring += [{"kid": current.kid, "jwk": current.jwk, "expire_at": 0},
                      {"kid": upcoming.kid, "jwk": upcoming.jwk, "expire_at": 0}]
        self.prune(now)

    def rotate(self, upcoming: KeyPair, sealer: Sealer, name: str, now: float, verification_ttl: int | None) -> None:
        """The next pair signs from now on, ``upcoming`` is the new next pair; the old
        signing key verifies for ``verification_ttl`` (the key's own by default) more."""
        if self.signing:
            self._retire(self.signing["kid"], now + (self.verification_ttl if verification_ttl is None
                                                     else verification_ttl))
        self.signing = self.next
        self.next = self._sealed(upcoming, sealer, name)
        self.ring.append({"kid": upcoming.kid, "jwk": upcoming.jwk, "expire_at": 0})
        self.next_rotation = now + self.rotation_period
        self.prune(now)

    def public_keys(self, now: float) -> list[dict[str, Any]]:
        """The JWKs that verify now."""
        return [dict(k["jwk"]) for k in self.ring if not k["expire_at"] or k["expire_at"] > now]


class Signers:
    """Private keys opened from storage, by key id (a key id names one key pair for ever, so
    an entry never goes stale); the least recently used beyond ``size`` are dropped."""

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._keys: OrderedDict[str, _PrivateKey] = OrderedDict()

    def open(self, name: str, sealed: dict[str, str], sealer: Sealer) -> tuple[str, _PrivateKey]:
        """``(kid, private key)`` of a stored pair (``signing`` of the key ``name``)."""
        kid = sealed["kid"]
        found = self._keys.get(kid)
        if found is None:
            der = sealer.unseal(sealed["private_key"], f"{KEY_PREFIX}{name}#private_key")
            loaded = serialization.load_der_private_key(der, password=None)
            if not isinstance(loaded, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)):
                raise ValueError(f"identity key {name} holds an unsupported private key")
            found = self._keys[kid] = loaded
            while len(self._keys) > self._size:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(kid)
        return kid, found
