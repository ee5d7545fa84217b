"""How authmount authenticates itself to the IdP: client secrets, signed client assertions
(``private_key_jwt``, RFC 7523 section 2.2 and OIDC Core section 9) and a TLS client
certificate (mTLS).

``authenticate`` adds the client's credentials to one request for the token endpoint or
the device authorization endpoint. With ``oidc_client_private_key`` the request carries a
fresh JWT signed with that key (``iss`` = ``sub`` = the client id, ``aud`` = the token
endpoint, a random ``jti``, valid for 60 seconds) instead of the secret, so no long-lived
secret is shared with the IdP. The assertion is signed here with ``cryptography``
(python-jose stays behind ``plugin/jose_verify.py``, which only verifies).
"""

from __future__ import annotations

import base64
import functools
import json
import secrets
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from plugin.errors import InvalidRequest
from plugin.framework import ClientCert

__all__ = [
    "ASSERTION_TYPE",
    "ASSERTION_TTL",
    "ClientConfig",
    "PrivateKey",
    "authenticate",
    "check_client_credentials",
    "check_client_tls",
    "client_cert",
    "server_names",
    "load_private_key",
    "sign_assertion",
]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: Seconds a client assertion is valid (it is used at once, for one request).
ASSERTION_TTL = 60
MIN_RSA_BITS = 2048

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class ClientConfig(Protocol):
    """The config fields this module reads (``plugin.path_config.JWTConfig`` has them)."""

    oidc_client_id: str
    oidc_client_secret: str
    oidc_client_private_key: str
    oidc_client_assertion_alg: str
    oidc_client_assertion_kid: str
    client_tls_cert: str
    client_tls_key: str
    override_allowed_server_names: list[str]


_HASH: dict[str, type[hashes.HashAlgorithm]] = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
_RSA_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_CURVE_ALG = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# ---------------------------------------------------------------------------
# Keys


@functools.lru_cache(maxsize=16)  # parsing checks an RSA key (~1 ms): once per config, not per login
def load_private_key(pem: str) -> PrivateKey:
    """The private key in ``pem`` (PKCS#8, PKCS#1 or SEC1; not encrypted).

    :raises ValueError: naming what is wrong (not a key, encrypted, type, size).
    """
    try:
        key = serialization.load_pem_private_key(pem.strip().encode("utf-8"), password=None)
    except TypeError:
        raise ValueError("the private key is encrypted: give it without a passphrase") from None
    except (ValueError, UnicodeEncodeError):
        raise ValueError("not a PEM private key") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"the RSA key is {key.key_size} bits, at least {MIN_RSA_BITS} are required")
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name not in _CURVE_ALG:
            raise ValueError(f"EC curve {key.curve.name} is not supported (P-256, P-384, P-521)")
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise ValueError(f"unsupported key type {type(key).__name__} (RSA, EC or Ed25519)")


def _alg_for(key: PrivateKey, alg: str) -> str:
    """The assertion's algorithm: ``alg`` when it fits the key, else the key's default.

    :raises ValueError: ``alg`` cannot be used with this key.
    """
    if isinstance(key, rsa.RSAPrivateKey):
        if alg and alg not in _RSA_ALGS:
            raise ValueError(f"{alg} cannot be used with an RSA key ({', '.join(_RSA_ALGS)})")
        return alg or "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        curve_alg = _CURVE_ALG[key.curve.name]
        if alg and alg != curve_alg:
            raise ValueError(f"{alg} cannot be used with this EC key ({curve_alg})")
        return curve_alg
    if alg and alg != "EdDSA":
        raise ValueError(f"{alg} cannot be used with an Ed25519 key (EdDSA)")
    return "EdDSA"


def sign_assertion(key: PrivateKey, alg: str, claims: Mapping[str, Any], kid: str = "") -> str:
    """A compact JWS of ``claims`` signed with ``key`` (``alg`` as ``_alg_for`` chose it)."""
    header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if kid:
        header["kid"] = kid
    signing_input = (
        _b64(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + _b64(json.dumps(dict(claims), separators=(",", ":")).encode())
    ).encode("ascii")
    if isinstance(key, rsa.RSAPrivateKey):
        digest = _HASH[alg[2:]]()
        pad: padding.AsymmetricPadding = (
            padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
            if alg.startswith("PS")
            else padding.PKCS1v15()
        )
        signature = key.sign(signing_input, pad, digest)
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(_HASH[alg[2:]]())))
        size = (key.curve.key_size + 7) // 8
        signature = r.to_bytes(size, "big") + s.to_bytes(size, "big")  # RFC 7518 3.4
    else:
        signature = key.sign(signing_input)
    return signing_input.decode("ascii") + "." + _b64(signature)


# ---------------------------------------------------------------------------
# Config checks (no network)


def check_client_credentials(config: ClientConfig) -> None:
    """The config's client credentials: at most one of the secret and the private key,
    each with a client id; the private key loads and fits ``oidc_client_assertion_alg``.

    :raises InvalidRequest: naming the field.
    """
    secret, key = config.oidc_client_secret, config.oidc_client_private_key
    if secret and key:
        raise InvalidRequest("only one of 'oidc_client_secret' and 'oidc_client_private_key' may be set")
    if key and not config.oidc_client_id:
        raise InvalidRequest("'oidc_client_id' must be set with 'oidc_client_private_key'")
    if not key:
        if config.oidc_client_assertion_alg or config.oidc_client_assertion_kid:
            raise InvalidRequest(
                "'oidc_client_assertion_alg' and 'oidc_client_assertion_kid' need 'oidc_client_private_key'"
            )
        return
    try:
        _alg_for(load_private_key(key), config.oidc_client_assertion_alg)
    except ValueError as exc:
        raise InvalidRequest(f"invalid oidc_client_private_key: {exc}") from None


def check_client_tls(cert_pem: str, key_pem: str) -> None:
    """``client_tls_cert`` and ``client_tls_key``: both or neither, and the key is the
    certificate's.

    :raises InvalidRequest: naming the field.
    """
    if not cert_pem and not key_pem:
        return
    if not cert_pem or not key_pem:
        raise InvalidRequest("'client_tls_cert' and 'client_tls_key' must be set together")
    try:
        certs = x509.load_pem_x509_certificates(cert_pem.strip().encode("utf-8"))
    except (ValueError, UnicodeEncodeError):
        certs = []
    if not certs:
        raise InvalidRequest("invalid client_tls_cert: not a PEM certificate")
    try:
        key = load_private_key(key_pem)
    except ValueError as exc:
        raise InvalidRequest(f"invalid client_tls_key: {exc}") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if certs[0].public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise InvalidRequest("invalid client_tls_key: it is not the key of the first certificate in 'client_tls_cert'")


def client_cert(config: ClientConfig) -> ClientCert | None:
    """The TLS client certificate outbound calls of this config present, or None."""
    if config.client_tls_cert and config.client_tls_key:
        return (config.client_tls_cert, config.client_tls_key)
    return None


def server_names(config: ClientConfig) -> tuple[str, ...]:
    """The hosts the IdP's TLS certificate may name instead of the URL's host
    (``override_allowed_server_names``; empty: the URL's host)."""
    return tuple(config.override_allowed_server_names)


# ---------------------------------------------------------------------------
# Requests


def _basic_auth(client_id: str, secret: str) -> str:
    # RFC 6749 2.3.1: form-urlencode both parts before base64.
    pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


def authenticate(
    config: ClientConfig, doc: Mapping[str, Any], form: dict[str, str], headers: dict[str, str], *, now: float
) -> None:
    """Add the client's credentials to a request for the token or device endpoint.

    With ``oidc_client_private_key``: ``client_id``, ``client_assertion_type`` and a fresh
    ``client_assertion`` in the form. Else the secret: HTTP Basic (``client_secret_basic``),
    or in the form when the discovery document offers only ``client_secret_post``.

    :raises InvalidRequest: the private key no longer loads (a config from elsewhere).
    """
    client_id = config.oidc_client_id
    if config.oidc_client_private_key:
        try:
            key = load_private_key(config.oidc_client_private_key)
            alg = _alg_for(key, config.oidc_client_assertion_alg)
        except ValueError as exc:
            raise InvalidRequest(f"invalid oidc_client_private_key: {exc}") from None
        issued = int(now)
        claims = {
            "iss": client_id,
            "sub": client_id,
            "aud": str(doc.get("token_endpoint") or doc.get("issuer") or ""),
            "jti": secrets.token_urlsafe(24),
            "iat": issued,
            "exp": issued + ASSERTION_TTL,
        }
        form.update(
            client_id=client_id,
            client_assertion_type=ASSERTION_TYPE,
            client_assertion=sign_assertion(key, alg, claims, config.oidc_client_assertion_kid),
        )
        return
    secret = config.oidc_client_secret
    methods = doc.get("token_endpoint_auth_methods_supported")
    if isinstance(methods, list) and "client_secret_basic" not in methods and "client_secret_post" in methods:
        form.update(client_id=client_id, client_secret=secret)
    else:
        headers["Authorization"] = _basic_auth(client_id, secret)
