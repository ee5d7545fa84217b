"""Strict JWT parsing and signature verification: the only module that imports python-jose."""

from __future__ import annotations

import binascii
import json
import math
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import jose.backends
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.utils import CryptographyDeprecationWarning
from jose import jwk, jws
from jose.backends.cryptography_backend import (
    CryptographyECKey,
    CryptographyHMACKey,
    CryptographyRSAKey,
)

from plugin.errors import InvalidRequest
from plugin.jsonlimits import MAX_JSON_DEPTH, too_deep

__all__ = [
    "SUPPORTED_ALGS",
    "HMAC_ALGS",
    "MAX_KID_LENGTH",
    "MAX_KEYS_PER_TOKEN",
    "MIN_RSA_BITS",
    "MAX_RSA_BITS",
    "MIN_HMAC_BYTES",
    "VerifyKey",
    "ParsedToken",
    "parse_token",
    "keys_from_pems",
    "keys_from_jwks",
    "keys_from_hmac_secrets",
    "verify_signature",
    "assert_safe_backends",
]

SUPPORTED_ALGS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA")
HMAC_ALGS = ("HS256", "HS384", "HS512")

MAX_KID_LENGTH = 1024
MAX_KEYS_PER_TOKEN = 20
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 16384  # bounds the work a single verification can cost
MIN_HMAC_BYTES = 32

_RSA_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_CURVE_ALG = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_JWK_CURVES: dict[str, tuple[ec.EllipticCurve, str, int]] = {
    "P-256": (ec.SECP256R1(), "ES256", 32),
    "P-384": (ec.SECP384R1(), "ES384", 48),
    "P-521": (ec.SECP521R1(), "ES512", 66),
}
_PSS_HASH: dict[str, Callable[[], hashes.HashAlgorithm]] = {"PS256": hashes.SHA256, "PS384": hashes.SHA384, "PS512": hashes.SHA512}
_REGISTERED_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "nbf", "iat", "jti"})
#: Each registered claim under its case-folded name (its own: they are lower-case ASCII).
_REGISTERED_FOLDED = {name.casefold(): name for name in _REGISTERED_CLAIMS}
_PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_ASCII_WS = " \t\r\n\f\v"
_PART_NAMES = ("header", "payload", "signature")


@dataclass(frozen=True, slots=True)
class VerifyKey:
    """One public (or HMAC) key bound to exactly one algorithm; built once at load time."""

    alg: str
    kid: str | None
    #: jose ``Key`` for RS*/ES*/HS*, a cryptography public key for PS*/EdDSA.
    _impl: Any = field(repr=False, compare=False)
    kty: str = ""


@dataclass(frozen=True, slots=True)
class ParsedToken:
    """A compact JWS that passed strict structural checks; the signature is NOT yet verified."""

    raw: str
    header: dict[str, Any]
    claims: dict[str, Any]
    alg: str
    kid: str | None


def _fail(reason: str) -> InvalidRequest:
    return InvalidRequest(f"error validating token: {reason}")


# -- strict decoding -------------------------------------------------------------------


_TO_STD = bytes.maketrans(b"-_", b"+/")


_B64URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]+")
#: The last character of a part of 4n+2 characters carries 4 unused low bits, of 4n+3
#: characters 2; a canonical encoder leaves them zero (else one value has several encodings).
_CANONICAL_LAST = {
    2: frozenset(c for i, c in enumerate(_B64URL_ALPHABET) if i & 0b1111 == 0),
    3: frozenset(c for i, c in enumerate(_B64URL_ALPHABET) if i & 0b11 == 0),
}


def _b64url_canonical(part: str) -> bool:
    """Whether ``part`` is canonical unpadded base64url: only the URL alphabet, no padding,
    no length of 4n+1, zero unused bits in the last character. Exactly the strings that
    decode and re-encode to themselves, checked without decoding (the signature is only
    checked here; python-jose decodes it itself)."""
    rem = len(part) % 4
    if rem == 1 or _B64URL_RE.fullmatch(part) is None:
        return False
    last = _CANONICAL_LAST.get(rem)
    return last is None or part[-1] in last


def _b64url_strict(part: str) -> bytes | None:
    """Decode canonical unpadded base64url, or None if ``part`` is not exactly that."""
    return _b64decode(part) if _b64url_canonical(part) else None


def _b64decode(part: str) -> bytes:
    """Decode a part ``_b64url_canonical`` accepted."""
    return binascii.a2b_base64(part.encode("ascii").translate(_TO_STD) + b"=" * (-len(part) % 4))


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {json.dumps(key)}")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


# Built once: ``json.loads`` with hooks constructs a new decoder (and scanner) per call.
_STRICT_DECODER = json.JSONDecoder(
    object_pairs_hook=_reject_duplicates,
    parse_constant=_reject_constant,
    parse_float=_finite_float,
)


def _strict_json_object(data: bytes, what: str) -> dict[str, Any]:
    """Parse ``data`` as a UTF-8 JSON object, refusing everything lenient parsers allow."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _fail(f"token {what} is not valid UTF-8") from None
    if too_deep(text):
        raise _fail(f"token {what} is nested too deeply (more than {MAX_JSON_DEPTH} levels)")
    try:
        obj = _STRICT_DECODER.decode(text)
        # Lone surrogates from "\ud800" escapes would break storage and logging later.
        # Decoded UTF-8 holds none, so only a \u escape can bring one in.
        if "\\u" in text:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except RecursionError:  # a safety net: too_deep refuses such documents first
        raise _fail(f"token {what} is nested too deeply (more than {MAX_JSON_DEPTH} levels)") from None
    except UnicodeEncodeError:
        raise _fail(f"token {what} contains an invalid unicode escape (lone surrogate)") from None
    except ValueError as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise _fail(f"token {what} is not valid JSON: {reason[:100]}") from None
    if not isinstance(obj, dict):
        raise _fail(f"token {what} must be a JSON object")
    return obj


# -- parsing ---------------------------------------------------------------------------


def parse_token(token: object, *, max_length: int = 16384) -> ParsedToken:
    """Structurally validate a compact JWS and decode its header and claims.

    Nothing here trusts the token: no key is looked up and no signature is checked.

    :raises InvalidRequest: ``error validating token: <reason>`` naming the failed check.
    """
    if not isinstance(token, str):
        raise _fail("token must be a string")
    if len(token) > max_length:
        raise _fail(f"token is longer than the maximum of {max_length} characters")
    raw = token.strip(_ASCII_WS)
    if not raw:
        raise _fail("token is empty")
    if not raw.isascii():
        raise _fail("token contains non-ASCII characters")
    parts = raw.split(".")
    if len(parts) == 5:
        raise _fail("encrypted tokens (JWE) are not supported")
    if len(parts) != 3:
        raise _fail(f"token must have 3 dot-separated parts, found {len(parts)}")
    known = _VERIFIED_HEADERS.get(parts[0])
    first = 0 if known is None else 1  # a remembered header passed every check when first seen
    for name, part in zip(_PART_NAMES[first:], parts[first:], strict=True):
        if not part:
            raise _fail(f"token {name} is empty")
        if not _b64url_canonical(part):
            raise _fail(f"token {name} is not canonical unpadded base64url")
    if known is not None:
        claims = _strict_json_object(_b64decode(parts[1]), "payload")
        _check_claim_names(claims)
        return ParsedToken(raw=raw, header=known[0], claims=claims, alg=known[1], kid=known[2])
    header = _strict_json_object(_b64decode(parts[0]), "header")
    claims = _strict_json_object(_b64decode(parts[1]), "payload")

    alg = header.get("alg")
    if "alg" not in header or alg is None or alg == "":
        raise _fail("missing algorithm (alg) header parameter")
    if not isinstance(alg, str):
        raise _fail("algorithm (alg) header parameter must be a string")
    for name in ("crit", "b64"):
        if name in header:
            raise _fail(f"unsupported header parameter ({name}): no JWS extensions are supported")
    kid = header.get("kid")
    if "kid" in header:
        if not isinstance(kid, str):
            raise _fail("key ID (kid) header parameter must be a string")
        if len(kid) > MAX_KID_LENGTH:
            raise _fail(f"key ID (kid) header parameter is longer than {MAX_KID_LENGTH} characters")
    _check_claim_names(claims)
    return ParsedToken(raw=raw, header=header, claims=claims, alg=alg, kid=kid)


def _check_claim_names(claims: dict[str, Any]) -> None:
    """Refuse a claim whose name is a registered claim's under case folding ("EXP")."""
    for key in claims:
        if key in _REGISTERED_CLAIMS:
            continue
        registered = _REGISTERED_FOLDED.get(key.casefold())
        if registered is not None:
            raise _fail(
                f"ambiguous claim: key {json.dumps(key)} collides with registered claim "
                f'"{registered}" under case folding'
            )


#: The header parts of tokens whose signature verified, with what ``parse_token`` made of
#: them (header, alg, kid): an issuer signs its tokens with one header, so ``parse_token``
#: decodes and checks it once, not per login. Only a verified token adds one, so an
#: anonymous caller cannot fill it; bounded, cleared when full. The header dicts are shared
#: between parsed tokens: nothing may change them.
_VERIFIED_HEADERS: dict[str, tuple[dict[str, Any], str, str | None]] = {}
_MAX_VERIFIED_HEADERS = 64


def _remember_header(token: ParsedToken) -> None:
    part = token.raw[: token.raw.index(".")]
    if part not in _VERIFIED_HEADERS:
        if len(_VERIFIED_HEADERS) >= _MAX_VERIFIED_HEADERS:
            _VERIFIED_HEADERS.clear()
        _VERIFIED_HEADERS[part] = (token.header, token.alg, token.kid)


# -- key construction ------------------------------------------------------------------


def _keys_for_public_key(pub: Any, kid: str | None, *, pinned_alg: str | None = None) -> list[VerifyKey]:
    """Bind a cryptography public key to its algorithm(s).

    :raises ValueError: naming the problem (type, size, curve, alg mismatch).
    """
    if isinstance(pub, rsa.RSAPublicKey):
        if pub.key_size < MIN_RSA_BITS:
            raise ValueError(f"RSA key is {pub.key_size} bits, at least {MIN_RSA_BITS} are required")
        if pub.key_size > MAX_RSA_BITS:
            raise ValueError(f"RSA key is {pub.key_size} bits, at most {MAX_RSA_BITS} are supported")
        if pinned_alg is not None and pinned_alg not in _RSA_ALGS:
            raise ValueError(f"alg {pinned_alg} cannot be used with an RSA key")
        algs = (pinned_alg,) if pinned_alg else _RSA_ALGS
        return [
            VerifyKey(alg, kid, pub if alg in _PSS_HASH else jwk.construct(pub, alg), "RSA")
            for alg in algs
        ]
    if isinstance(pub, ec.EllipticCurvePublicKey):
        alg = _CURVE_ALG.get(pub.curve.name)
        if alg is None:
            raise ValueError(f"EC curve {pub.curve.name} is not supported")
        if pinned_alg is not None and pinned_alg != alg:
            raise ValueError(f"alg {pinned_alg} does not match the key's curve ({alg})")
        return [VerifyKey(alg, kid, jwk.construct(pub, alg), "EC")]
    if isinstance(pub, ed25519.Ed25519PublicKey):
        if pinned_alg is not None and pinned_alg not in ("EdDSA", "Ed25519"):
            raise ValueError(f"alg {pinned_alg} cannot be used with an Ed25519 key")
        return [VerifyKey("EdDSA", kid, pub, "OKP")]
    raise ValueError(f"unsupported key type {type(pub).__name__}")


def _load_pem(pem: str) -> Any:
    data = pem.strip().encode("utf-8")
    if b"PRIVATE KEY-----" in data and b"-----BEGIN CERTIFICATE-----" not in data:
        raise ValueError("data is a private key, a public key or certificate is required")
    end = data.find(b"-----END ")
    close = data.find(b"-----", end + 9) if end >= 0 else -1
    if close >= 0 and data[close + 5:].strip():
        # OpenBao's refusal and text: a second key pasted into the same entry would be
        # silently left out (cryptography reads the first block only).
        raise ValueError("unexpected trailing data after parsed PEM block")
    # cryptography >= 51 warns when it loads a DSA key. The key type is refused right
    # after with its own message; the warning would only be noise on stderr (or, where
    # warnings are errors, replace that message).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        if b"-----BEGIN CERTIFICATE-----" in data:
            return x509.load_pem_x509_certificate(data).public_key()
        return serialization.load_pem_public_key(data)


def keys_from_pems(pems: list[str]) -> list[VerifyKey]:
    """Build verification keys from PEM public keys or certificates (``jwt_validation_pubkeys``).

    RSA keys (>= 2048 bits) verify RS256/384/512 and PS256/384/512, EC keys the ES alg of
    their curve, Ed25519 keys EdDSA.

    :raises InvalidRequest: ``error parsing public key: <reason>``.
    """
    out: list[VerifyKey] = []
    for index, pem in enumerate(pems):
        if not isinstance(pem, str):
            raise InvalidRequest(f"error parsing public key: entry {index} is not a string")
        try:
            out.extend(_keys_for_public_key(_load_pem(pem), None))
        except Exception as exc:  # cryptography raises ValueError/TypeError/UnsupportedAlgorithm
            reason = str(exc) or type(exc).__name__
            raise InvalidRequest(f"error parsing public key: {reason}") from None
    return out


def _jwk_int(value: object) -> int:
    if not isinstance(value, str) or not value:
        raise ValueError("member is not a base64url string")
    data = _b64url_lenient(value)
    return int.from_bytes(data, "big")


def _b64url_lenient(value: str) -> bytes:
    # The JWKS comes from the admin-configured IdP; tolerate padding and the standard alphabet.
    text = value.rstrip("=").replace("+", "-").replace("/", "_")
    data = _b64url_strict(text)
    if data is None:
        raise ValueError("member is not valid base64url")
    return data


_SIGNATURE_OPS = frozenset({"verify", "sign"})
_ENCRYPTION_OPS = frozenset({"encrypt", "decrypt", "wrapKey", "unwrapKey", "deriveKey", "deriveBits"})


def _jwk_to_keys(obj: object) -> list[VerifyKey]:
    """Turn one JWK into verification keys, or raise ValueError saying why it is unusable."""
    if not isinstance(obj, dict):
        raise ValueError("key is not a JSON object")
    kty = obj.get("kty")
    if not isinstance(kty, str):
        raise ValueError("missing kty")
    if "use" in obj and obj["use"] != "sig":
        raise ValueError("use is not sig")
    if "key_ops" in obj:
        # RFC 7517 4.3. go-jose (Vault) ignores key_ops; a public key published with its
        # private half's ["sign"] (node-oidc-provider does) still verifies. Encryption keys
        # never verify anything.
        ops = obj["key_ops"]
        if not isinstance(ops, list) or not all(isinstance(op, str) for op in ops):
            raise ValueError("key_ops is not a list of strings")
        if not _SIGNATURE_OPS.intersection(ops) or _ENCRYPTION_OPS.intersection(ops):
            raise ValueError("key_ops does not allow verify or sign")
    if any(name in obj for name in _PRIVATE_JWK_MEMBERS):
        raise ValueError("private or symmetric key material")
    kid = obj.get("kid")
    if kid is not None and (not isinstance(kid, str) or len(kid) > MAX_KID_LENGTH):
        raise ValueError("kid is not a string")
    alg = obj.get("alg")
    if alg is not None and not isinstance(alg, str):
        raise ValueError("alg is not a string")
    if kty == "RSA":
        pub: Any = rsa.RSAPublicNumbers(_jwk_int(obj.get("e")), _jwk_int(obj.get("n"))).public_key()
    elif kty == "EC":
        crv = obj.get("crv")
        if not isinstance(crv, str) or crv not in _JWK_CURVES:
            raise ValueError("unsupported curve")
        curve, _, size = _JWK_CURVES[crv]
        xs, ys = obj.get("x"), obj.get("y")
        if not isinstance(xs, str) or not isinstance(ys, str):
            raise ValueError("missing x or y")
        xb, yb = _b64url_lenient(xs), _b64url_lenient(ys)
        if len(xb) != size or len(yb) != size:
            raise ValueError("coordinate has the wrong length")
        pub = ec.EllipticCurvePublicNumbers(
            int.from_bytes(xb, "big"), int.from_bytes(yb, "big"), curve
        ).public_key()
    elif kty == "OKP":
        if obj.get("crv") != "Ed25519" or not isinstance(obj.get("x"), str):
            raise ValueError("unsupported OKP curve")
        pub = ed25519.Ed25519PublicKey.from_public_bytes(_b64url_lenient(obj["x"]))
    else:
        raise ValueError(f"unsupported kty {kty}")
    return _keys_for_public_key(pub, kid, pinned_alg=alg)


def keys_from_jwks(doc: object, *, max_keys: int = 100) -> list[VerifyKey]:
    """Build verification keys from a JWK set, silently dropping unusable keys.

    Dropped: ``oct`` and unknown ``kty``, ``use`` != ``sig``, ``key_ops`` without ``verify``
    or ``sign`` or with an encryption operation,
    private members, RSA < 2048 bits or bad exponents, off-curve points, ``alg`` not matching
    the key. Only the first ``max_keys`` entries are considered.

    :raises ValueError: if ``doc`` is not ``{"keys": [...]}``.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError('JWK set must be a JSON object with a "keys" list')
    out: list[VerifyKey] = []
    for obj in doc["keys"][:max_keys]:
        try:
            out.extend(_jwk_to_keys(obj))
        except Exception:  # any construction failure just drops that key
            continue
    return out


def keys_from_hmac_secrets(secrets: list[str]) -> list[VerifyKey]:
    """Build HS256/HS384/HS512 keys from shared secrets of at least 32 UTF-8 bytes.

    :raises InvalidRequest: ``error parsing HMAC secret: <reason>`` (never echoing the secret).
    """
    out: list[VerifyKey] = []
    for index, secret in enumerate(secrets):
        if not isinstance(secret, str):
            raise InvalidRequest(f"error parsing HMAC secret: entry {index} is not a string")
        data = _utf8(secret, index)
        if len(data) < MIN_HMAC_BYTES:
            raise InvalidRequest(
                f"error parsing HMAC secret: entry {index} is {len(data)} bytes, "
                f"at least {MIN_HMAC_BYTES} are required"
            )
        try:
            out.extend(VerifyKey(alg, None, jwk.construct(data, alg), "oct") for alg in HMAC_ALGS)
        except Exception:  # jose refuses secrets that look like public keys
            raise InvalidRequest(
                f"error parsing HMAC secret: entry {index} looks like a public key or certificate"
            ) from None
    return out


def _utf8(secret: str, index: int) -> bytes:
    try:
        return secret.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(f"error parsing HMAC secret: entry {index} is not valid UTF-8") from None


# -- verification ----------------------------------------------------------------------


def _verify_one(token: ParsedToken, key: VerifyKey) -> bool:
    if key.alg in _PSS_HASH or key.alg == "EdDSA":
        signing_input, _, sig_part = token.raw.rpartition(".")
        signature = _b64url_strict(sig_part)
        if signature is None:
            return False
        try:
            if key.alg == "EdDSA":
                key._impl.verify(signature, signing_input.encode("ascii"))
            else:
                digest = _PSS_HASH[key.alg]()
                pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
                key._impl.verify(signature, signing_input.encode("ascii"), pss, digest)
        except InvalidSignature:
            return False
        return True
    # The allow-list is exactly the key's own alg: a jose Key verifies with its own hash.
    jws.verify(token.raw, key._impl, algorithms=[key.alg])
    return True


def verify_signature(
    token: ParsedToken, keys: Iterable[VerifyKey], *, max_tries: int = MAX_KEYS_PER_TOKEN
) -> bool:
    """True if one of ``keys`` bound to ``token.alg`` verifies the token; never raises.

    At most ``max_tries`` keys are tried, so a huge key set cannot multiply the work.
    """
    tries = 0
    for key in keys:
        if key.alg != token.alg:
            continue
        if tries >= max_tries:
            return False
        tries += 1
        try:
            if _verify_one(token, key):
                _remember_header(token)
                return True
        except Exception:  # JOSEError, ValueError from malformed signatures: just "no"
            continue
    return False


def assert_safe_backends() -> None:
    """Refuse to run if python-jose fell back to its pure-Python RSA/EC/HMAC backends.

    :raises RuntimeError: when ``cryptography`` is not the backend.
    """
    if (
        jose.backends.RSAKey is not CryptographyRSAKey
        or jose.backends.ECKey is not CryptographyECKey
        or jose.backends.HMACKey is not CryptographyHMACKey
    ):
        raise RuntimeError("python-jose is not using the cryptography backend; refusing to start")


assert_safe_backends()
