"""Test doubles for the OIDC flow: an in-process IdP speaking through the Fetcher protocol."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from keyfactory import KeyPair, jwks, make_token, rsa_key

from plugin.errors import UpstreamError
from plugin.framework import FetchResult

ISSUER = "https://idp.test"
CLIENT_ID = "abc"
CLIENT_SECRET = "def"


def _json(status: int, body: Any) -> FetchResult:
    return FetchResult(status, {"content-type": "application/json"}, json.dumps(body).encode())


def at_hash(token: str) -> str:
    digest = hashlib.sha256(token.encode()).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()


@dataclass
class Grant:
    """What the fake IdP remembers about one authorization request."""

    params: dict[str, str]
    sub: str
    claims: dict[str, Any]


@dataclass
class FakeIdP:
    """Discovery, JWKS, token and userinfo endpoints; ``authorize`` plays the browser login.

    ``id_token_overrides`` / ``userinfo`` shape the answers; ``down`` makes every call fail
    like a refused connection.
    """

    key: KeyPair = field(default_factory=lambda: rsa_key(kid="idp-1"))
    issuer: str = ISSUER
    userinfo: dict[str, Any] = field(default_factory=dict)
    id_token_overrides: dict[str, Any] = field(default_factory=dict)
    down: bool = False
    grants: dict[str, Grant] = field(default_factory=dict)
    access: dict[str, str] = field(default_factory=dict)
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    clock: Any = time.time

    @property
    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": self.issuer + "/authorize",
            "token_endpoint": self.issuer + "/token",
            "userinfo_endpoint": self.issuer + "/userinfo",
            "jwks_uri": self.issuer + "/jwks",
        }

    def authorize(self, auth_url: str, sub: str = "bob", **claims: Any) -> str:
        """Accept the authorization request and return the code the browser would carry."""
        query = {k: v[0] for k, v in parse_qs(urlsplit(auth_url).query).items()}
        code = "code_" + secrets.token_hex(8)
        self.grants[code] = Grant(query, sub, claims)
        return code

    def id_token(self, grant: Grant, access_token: str | None = None, **overrides: Any) -> str:
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": grant.sub,
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 300,
            "nonce": grant.params.get("nonce"),
            "auth_time": now,
        }
        if access_token:
            claims["at_hash"] = at_hash(access_token)
        claims.update(grant.claims)
        claims.update(self.id_token_overrides)
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return make_token(claims, key=self.key)

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
    ) -> FetchResult:
        self.calls.append((method, url, {"form": form, "headers": headers}))
        if self.down:
            raise UpstreamError("connection refused")
        if url == self.issuer + "/.well-known/openid-configuration":
            return _json(200, self.discovery)
        if url == self.issuer + "/jwks":
            return _json(200, jwks(self.key))
        if url == self.issuer + "/token" and method == "POST":
            return self._token(form or {}, headers or {})
        if url == self.issuer + "/userinfo":
            auth = (headers or {}).get("Authorization", "")
            sub = self.access.get(auth.removeprefix("Bearer "))
            if sub is None:
                return _json(401, {"error": "invalid_token"})
            return _json(200, {"sub": sub, **self.userinfo})
        return FetchResult(404, {}, b"not found")

    def _token(self, form: dict[str, str], headers: dict[str, str]) -> FetchResult:
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if headers.get("Authorization") != expected:
            return _json(401, {"error": "invalid_client"})
        grant = self.grants.pop(form.get("code", ""), None)
        if grant is None or form.get("grant_type") != "authorization_code":
            return _json(400, {"error": "invalid_grant", "error_description": "<b>bad</b> code"})
        if form.get("redirect_uri") != grant.params.get("redirect_uri"):
            return _json(400, {"error": "invalid_grant"})
        challenge = grant.params.get("code_challenge")
        if challenge:
            verifier = form.get("code_verifier", "")
            got = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            if got != challenge:
                return _json(400, {"error": "invalid_grant"})
        access_token = "at_" + secrets.token_hex(8)
        self.access[access_token] = grant.sub
        return _json(
            200,
            {"access_token": access_token, "token_type": "Bearer", "id_token": self.id_token(grant, access_token)},
        )
