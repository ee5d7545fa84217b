"""Test helpers: RSA/EC/Ed25519 keys, JWKs, hand-signed (or forged) JWTs and a fake Fetcher.

Import from tests in ``tests/plugin`` as ``from keyfactory import make_token, rsa_key, ...``.

Tokens are built by hand with ``cryptography`` so a test can forge anything: any header,
raw payload bytes, HMAC with arbitrary bytes, ``alg: none``, DER ECDSA signatures ...

    key = rsa_key(kid="k1")
    tok = make_token({"sub": "alice"}, key=key)                 # RS256, kid k1, exp/iat added
    tok = make_token(claims, key=b"pem-bytes", alg="HS256")     # HMAC with any secret
    tok = make_token(claims, key=key, header_overrides={"crit": ["exp"], "kid": DROP})
    fetcher = FakeFetcher({"https://idp/certs": jwks(key)})
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.utils import CryptographyDeprecationWarning
from typing_extensions import TypeVar

from plugin.errors import UpstreamError
from plugin.framework import FetchResult, NoEvents

__all__ = [
    "DROP",
    "changed",
    "Answer",
    "KeyPair",
    "PrivateKey",
    "PublicKey",
    "Route",
    "rsa_key",
    "ec_key",
    "ed25519_key",
    "b64url",
    "jwks",
    "default_claims",
    "make_token",
    "sign",
    "self_signed_cert_pem",
    "FakeFetcher",
    "RecordingEvents",
    "forge_hs256",
]

#: Use as a value in ``header_overrides`` to remove that header parameter.
DROP = object()


def changed(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` (not changed) with ``changes`` applied; a value of ``DROP`` removes its name."""
    out = dict(base)
    for name, value in changes.items():
        if value is DROP:
            out.pop(name, None)
        else:
            out[name] = value
    return out

_HASHES: dict[str, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    "256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512,
}
_HMAC_HASHES = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
_CURVES = {"P-256": (ec.SECP256R1, "ES256", 32), "P-384": (ec.SECP384R1, "ES384", 48), "P-521": (ec.SECP521R1, "ES512", 66)}


def b64url(data: bytes | str) -> str:
    """Unpadded base64url of ``data`` (str is UTF-8 encoded)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_b64(value: int, length: int | None = None) -> str:
    length = length or max(1, (value.bit_length() + 7) // 8)
    return b64url(value.to_bytes(length, "big"))


#: The private keys a :class:`KeyPair` holds.
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
K = TypeVar("K", bound=PrivateKey, covariant=True, default=PrivateKey)


@dataclass(frozen=True)
class KeyPair(Generic[K]):
    """A private key with its public forms. ``alg`` is the default signing algorithm.

    ``KeyPair[rsa.RSAPrivateKey]`` (what :func:`rsa_key` returns) types ``private`` as an RSA
    key; a plain ``KeyPair`` is any of :data:`PrivateKey`.
    """

    private: K
    alg: str
    kid: str | None = None
    crv: str | None = None

    @property
    def public(self) -> PublicKey:
        return self.private.public_key()

    @property
    def pem(self) -> str:
        """SubjectPublicKeyInfo PEM text (what ``jwt_validation_pubkeys`` takes)."""
        return self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")

    @property
    def pkcs1_pem(self) -> str:
        """``BEGIN RSA PUBLIC KEY`` PEM (RSA only)."""
        assert isinstance(self.public, rsa.RSAPublicKey), "PKCS#1 is for RSA keys"
        return self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
        ).decode("ascii")

    @property
    def der(self) -> bytes:
        return self.public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def private_pem(self) -> str:
        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")

    def with_kid(self, kid: str | None) -> KeyPair[K]:
        """The same key under another ``kid``."""
        return KeyPair(self.private, self.alg, kid, self.crv)

    def jwk(self, **extra: Any) -> dict[str, Any]:
        """Public JWK; ``extra`` members are added (a value of DROP removes a member)."""
        pub = self.public
        out: dict[str, Any]
        if isinstance(pub, rsa.RSAPublicKey):
            rsa_nums = pub.public_numbers()
            out = {"kty": "RSA", "n": _int_b64(rsa_nums.n), "e": _int_b64(rsa_nums.e)}
        elif isinstance(pub, ec.EllipticCurvePublicKey):
            ec_nums = pub.public_numbers()
            size = _CURVES[self.crv or "P-256"][2]
            out = {"kty": "EC", "crv": self.crv, "x": _int_b64(ec_nums.x, size), "y": _int_b64(ec_nums.y, size)}
        else:
            raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            out = {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
        if self.kid is not None:
            out["kid"] = self.kid
        return changed(out, extra)


@functools.cache
def _rsa_private(bits: int, slot: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def rsa_key(
    kid: str | None = None, *, bits: int = 2048, slot: int = 0, alg: str = "RS256"
) -> KeyPair[rsa.RSAPrivateKey]:
    """An RSA key pair (cached per ``(bits, slot)``: use another ``slot`` for a distinct key)."""
    return KeyPair(_rsa_private(bits, slot), alg, kid)


def ec_key(kid: str | None = None, *, crv: str = "P-256") -> KeyPair[ec.EllipticCurvePrivateKey]:
    """A fresh EC key pair on ``crv`` (P-256/P-384/P-521) with the matching ES alg."""
    curve, alg, _ = _CURVES[crv]
    return KeyPair(ec.generate_private_key(curve()), alg, kid, crv)


def ed25519_key(kid: str | None = None) -> KeyPair[ed25519.Ed25519PrivateKey]:
    """A fresh Ed25519 key pair (alg EdDSA)."""
    return KeyPair(ed25519.Ed25519PrivateKey.generate(), "EdDSA", kid, "Ed25519")


def dsa_public_pem(bits: int = 2048) -> str:
    """A DSA public key (PEM), for the tests that it is refused. cryptography >= 51 warns
    that DSA is deprecated: the warning is not what those tests are about."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        from cryptography.hazmat.primitives.asymmetric import dsa

        key = dsa.generate_private_key(bits)
        return key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()


def jwks(*keys: object) -> dict[str, Any]:
    """A JWK set of the public parts of ``keys`` (anything not a KeyPair is included as is)."""
    return {"keys": [k.jwk() if isinstance(k, KeyPair) else k for k in keys]}


def default_claims(now: float | None = None, **overrides: Any) -> dict[str, Any]:
    """Claims that pass a typical role: iss/sub/aud plus iat/nbf/exp around ``now``."""
    now = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": "https://idp.example.com",
        "sub": "alice",
        "aud": "vault",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
    }
    return changed(claims, overrides)


def sign(signing_input: bytes, key: KeyPair | bytes | str, alg: str) -> bytes:
    """Sign ``signing_input`` as JWS ``alg`` would (raw R||S for ECDSA)."""
    if alg in _HMAC_HASHES:
        secret = key.encode("utf-8") if isinstance(key, str) else key
        assert isinstance(secret, bytes), "HMAC needs bytes or str as key"
        return hmac.new(secret, signing_input, _HMAC_HASHES[alg]).digest()
    assert isinstance(key, KeyPair), f"{alg} needs a KeyPair"
    priv = key.private
    if alg == "EdDSA":
        assert isinstance(priv, ed25519.Ed25519PrivateKey), f"{alg} needs an Ed25519 key"
        return priv.sign(signing_input)
    digest = _HASHES[alg[2:]]()
    if alg.startswith("RS"):
        assert isinstance(priv, rsa.RSAPrivateKey), f"{alg} needs an RSA key"
        return priv.sign(signing_input, padding.PKCS1v15(), digest)
    if alg.startswith("PS"):
        assert isinstance(priv, rsa.RSAPrivateKey), f"{alg} needs an RSA key"
        return priv.sign(
            signing_input, padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size), digest
        )
    if alg.startswith("ES"):
        assert isinstance(priv, ec.EllipticCurvePrivateKey), f"{alg} needs an EC key"
        r, s = decode_dss_signature(priv.sign(signing_input, ec.ECDSA(digest)))
        size = (priv.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    raise ValueError(f"cannot sign with {alg}")


def make_token(
    claims: dict[str, Any] | bytes | None = None,
    *,
    key: KeyPair | bytes | str | None = None,
    alg: str | None = None,
    kid: object = None,
    header_overrides: dict[str, Any] | None = None,
    raw_header: bytes | None = None,
    signature: bytes | None = None,
) -> str:
    """Build a compact JWS.

    ``claims`` defaults to :func:`default_claims`; bytes are used verbatim as the payload.
    ``alg`` defaults to the key's alg, ``kid`` to the key's kid (pass ``DROP`` to omit it).
    ``raw_header`` replaces the JSON header bytes entirely. ``signature`` replaces the
    computed signature (``b""`` gives an empty segment); with ``key=None`` and no
    ``signature`` the signature segment is empty (``alg: none`` style).
    """
    if claims is None:
        claims = default_claims()
    payload = claims if isinstance(claims, bytes) else json.dumps(claims).encode("utf-8")
    if alg is None:
        alg = key.alg if isinstance(key, KeyPair) else "none"
    if raw_header is None:
        header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
        if kid is None and isinstance(key, KeyPair) and key.kid is not None:
            kid = key.kid
        if kid is not None and kid is not DROP:
            header["kid"] = kid
        raw_header = json.dumps(changed(header, header_overrides or {})).encode("utf-8")
    signing_input = f"{b64url(raw_header)}.{b64url(payload)}".encode("ascii")
    if signature is None:
        signature = b"" if key is None else sign(signing_input, key, alg)
    return signing_input.decode("ascii") + "." + b64url(signature)


def self_signed_cert_pem(key: KeyPair, cn: str = "test") -> str:
    """A self-signed certificate for ``key`` in PEM (certificates are valid pubkeys too)."""
    import datetime

    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    algo = None if key.alg == "EdDSA" else hashes.SHA256()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key.private, algo)
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


#: What a :class:`FakeFetcher` route answers: JSON, a body, a result, or an exception to raise.
Answer = dict[str, Any] | list[Any] | bytes | str | FetchResult | BaseException
#: An answer, or a zero-argument callable returning one (evaluated per call).
Route = Answer | Callable[[], Answer]


@dataclass
class FakeFetcher:
    """In-process ``plugin.framework.Fetcher``: serves canned answers and counts calls.

    ``routes`` maps URL -> answer: a dict/list (served as JSON 200), bytes/str (200 body),
    a ``FetchResult``, an ``Exception`` instance (raised), or a zero-argument callable
    returning one of these (evaluated per call, so answers can change). ``delay`` seconds
    are awaited before answering; ``gate`` (an ``asyncio.Event``) is awaited if set.
    Unknown URLs give 404. ``max_bytes`` is enforced like the real fetcher.
    """

    routes: dict[str, Route] = field(default_factory=dict)
    delay: float = 0.0
    gate: asyncio.Event | None = None
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def count(self, url: str | None = None) -> int:
        """Number of fetches (of ``url`` if given)."""
        return sum(1 for _, u, _ in self.calls if url is None or u == url)

    async def fetch(
        self,
        method: str,
        url: str,
        *,
        ca_pem: str | None = None,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
        max_bytes: int = 1 << 20,
        client_cert: tuple[str, str] | None = None,
        server_names: tuple[str, ...] = (),
    ) -> FetchResult:
        self.calls.append(
            (method, url, {"ca_pem": ca_pem, "form": form, "timeout": timeout, "headers": headers,
                           "client_cert": client_cert, "server_names": server_names})
        )
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.gate is not None:
            await self.gate.wait()
        answer = self.routes.get(url)
        if callable(answer) and not isinstance(answer, type):
            answer = answer()
        if answer is None:
            return FetchResult(404, {"content-type": "text/plain"}, b"404 page not found")
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(answer, FetchResult):
            result = answer
        elif isinstance(answer, (dict, list)):
            result = FetchResult(200, {"content-type": "application/json"}, json.dumps(answer).encode())
        elif isinstance(answer, str):
            result = FetchResult(200, {"content-type": "text/plain"}, answer.encode("utf-8"))
        elif isinstance(answer, bytes):
            result = FetchResult(200, {"content-type": "application/octet-stream"}, answer)
        else:
            raise TypeError(f"FakeFetcher cannot serve {answer!r}")
        if len(result.body) > max_bytes:
            raise UpstreamError(f"response body exceeds {max_bytes} bytes")
        return result


def forge_hs256(claims: dict[str, Any], secret: bytes | str, **kw: Any) -> str:
    """An HS256 token HMAC'd with ``secret`` (for key-confusion tests)."""
    return make_token(claims, key=secret, alg="HS256", **kw)


class RecordingEvents(NoEvents):
    """``Events`` that keep what a key source reports: each fetch's kind and outcome (the
    ``authmount_key_fetches_total`` labels) and each key set installed."""

    __slots__ = ("fetches", "fetched")

    def __init__(self) -> None:
        self.fetches: list[tuple[str, bool]] = []
        self.fetched: list[tuple[str, float]] = []

    def key_fetch(self, kind: str, ok: bool) -> None:
        self.fetches.append((kind, ok))

    def key_set_fetched(self, url: str, at: float) -> None:
        self.fetched.append((url, at))
