"""RSA key pair and one long-lived RS256 JWT shared by every benchmark case."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwt

AUDIENCE = "bench"
SUBJECT = "bench-user"
KID = "bench-key-1"
# Far enough in the future that no bench run (not even --long) sees it expire.
TEN_YEARS = 10 * 365 * 24 * 3600


@dataclass(frozen=True, slots=True)
class BenchKeys:
    """The signing material for a run: PEMs, the JWT, and a JWKS document."""

    private_pem: str
    public_pem: str
    token: str
    jwks: dict[str, Any]
    unknown_kid_token: str  # same key, a kid the JWKS does not list (forces a refresh)


def _jwk_from_public(public_key: rsa.RSAPublicKey, kid: str) -> dict[str, Any]:
    """Public RSA key as a JWK (n, e base64url)."""
    from jose.utils import long_to_base64

    numbers = public_key.public_numbers()
    return {
        "kty": "RSA",
        "kid": kid,
        "use": "sig",
        "alg": "RS256",
        "n": long_to_base64(numbers.n).decode(),
        "e": long_to_base64(numbers.e).decode(),
    }


def make_keys(bits: int = 2048) -> BenchKeys:
    """Generate a fresh RSA key and sign the benchmark JWT with it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    now = int(time.time())
    claims = {
        "iss": "https://bench.invalid",
        "sub": SUBJECT,
        "aud": AUDIENCE,
        "iat": now - 60,
        "nbf": now - 60,
        "exp": now + TEN_YEARS,
    }
    token = jwt.encode(claims, private_pem, algorithm="RS256", headers={"kid": KID})
    unknown = jwt.encode(claims, private_pem, algorithm="RS256", headers={"kid": "rotated-away"})
    jwks = {"keys": [_jwk_from_public(key.public_key(), KID)]}
    return BenchKeys(private_pem, public_pem, token, jwks, unknown)


def write_keys(keys: BenchKeys, directory: Path) -> dict[str, Path]:
    """Write the PEMs, token and JWKS to files (for the servers and wrk) and return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "public_pem": directory / "public.pem",
        "token": directory / "token.jwt",
        "jwks": directory / "jwks.json",
    }
    paths["public_pem"].write_text(keys.public_pem)
    paths["token"].write_text(keys.token)
    paths["jwks"].write_text(json.dumps(keys.jwks))
    return paths
