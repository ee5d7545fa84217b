"""A tiny HTTPS discovery + JWKS server (stdlib + trustme) for CA-pinned key source tests."""

from __future__ import annotations

import json
import ssl
import time
from typing import Any

import jwt
import trustme
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.e2e.jsonserver import JSONServer

__all__ = ["TLSDiscoveryServer"]


class TLSDiscoveryServer:
    """Serves ``/.well-known/openid-configuration`` and ``/jwks`` over TLS on 127.0.0.1.

    The certificate comes from ``ca`` (a ``trustme.CA``), for ``names`` (the URL's host by
    default); ``sign`` makes tokens with the published RSA key.
    """

    def __init__(self, ca: trustme.CA, names: tuple[str, ...] = ("127.0.0.1",)) -> None:
        self.ca = ca
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "tls-rs256-1"
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private_key.public_key()))
        public.update(kid=self.kid, alg="RS256", use="sig")
        self.jwks = {"keys": [public]}
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert(*names).configure_cert(server_ctx)
        self._server = JSONServer(self._route, ssl_context=server_ctx)
        self.port = self._server.port

    def _route(self, path: str) -> Any | None:
        if path == "/.well-known/openid-configuration":
            return self.discovery
        if path == "/jwks":
            return self.jwks
        return None

    @property
    def issuer(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": self.issuer + "/jwks",
            "authorization_endpoint": self.issuer + "/auth",
            "token_endpoint": self.issuer + "/token",
            "id_token_signing_alg_values_supported": ["RS256"],
        }

    def sign(self, **claims: Any) -> str:
        """A token from this issuer, valid for 5 minutes, with ``claims`` on top."""
        now = int(time.time())
        body = {"iss": self.issuer, "sub": "tls-svc", "aud": "vault", "iat": now, "exp": now + 300, **claims}
        return jwt.encode(body, self.private_key, algorithm="RS256", headers={"kid": self.kid})

    def __enter__(self) -> TLSDiscoveryServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.close()
