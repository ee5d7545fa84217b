"""Test doubles for the OIDC flow: an in-process IdP speaking through the Fetcher protocol."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import time
import weakref
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from plugin.backend import JWTAuthBackend
from plugin.errors import UpstreamError
from plugin.framework import Connection, FetchResult, Operation, Request, StaticSystemView
from plugin.sealing import EphemeralSealer, Sealer
from plugin.storage import InMemoryStorage
from tests.plugin.keyfactory import KeyPair, jwks, make_token, rsa_key

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
class Device:
    """One device authorization at the fake IdP (RFC 8628)."""

    user_code: str
    status: str = "pending"  # pending | approved | denied | slow_down | used
    sub: str = ""
    claims: dict[str, Any] = field(default_factory=dict)


@dataclass
class FakeIdP:
    """Discovery, JWKS, token, userinfo and device endpoints; ``authorize`` plays the browser
    login, ``approve``/``deny`` the user's side of a device login.

    ``id_token_overrides`` / ``userinfo`` shape the answers; ``device_overrides`` the device
    authorization response (None values removed); ``down`` makes every call fail like a
    refused connection; ``reusable_codes`` makes the token endpoint accept a code more than
    once (a sloppy IdP: authmount's own single use must hold without its help). With
    ``client_key`` (a public key) the client authenticates with private_key_jwt only, its
    assertions checked as node-oidc-provider does (iss = sub = client id, aud = the token
    endpoint, jti once, exp). Every call yields to the event loop once, as a real request
    would, so concurrent callbacks interleave.
    """

    key: KeyPair = field(default_factory=lambda: rsa_key(kid="idp-1"))
    issuer: str = ISSUER
    userinfo: dict[str, Any] = field(default_factory=dict)
    id_token_overrides: dict[str, Any] = field(default_factory=dict)
    down: bool = False
    reusable_codes: bool = False
    grants: dict[str, Grant] = field(default_factory=dict)
    access: dict[str, str] = field(default_factory=dict)
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    clock: Any = time.time
    devices: dict[str, Device] = field(default_factory=dict)
    device_overrides: dict[str, Any] = field(default_factory=dict)
    device_endpoint: bool = True
    client_key: Any = None
    seen_jti: set[str] = field(default_factory=set)

    @property
    def discovery(self) -> dict[str, Any]:
        doc = {
            "issuer": self.issuer,
            "authorization_endpoint": self.issuer + "/authorize",
            "token_endpoint": self.issuer + "/token",
            "userinfo_endpoint": self.issuer + "/userinfo",
            "jwks_uri": self.issuer + "/jwks",
        }
        if self.device_endpoint:
            doc["device_authorization_endpoint"] = self.issuer + "/device"
        return doc

    def approve(self, user_code: str, sub: str = "bob", **claims: Any) -> None:
        """The user confirms the device login with ``user_code`` at the IdP."""
        device = next(d for d in self.devices.values() if d.user_code == user_code)
        device.status, device.sub, device.claims = "approved", sub, claims

    def deny(self, user_code: str, status: str = "denied") -> None:
        next(d for d in self.devices.values() if d.user_code == user_code).status = status

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
        client_cert: tuple[str, str] | None = None,
        server_names: tuple[str, ...] = (),
    ) -> FetchResult:
        self.calls.append((method, url, {"form": form, "headers": headers, "client_cert": client_cert,
                                         "server_names": server_names}))
        await asyncio.sleep(0)
        if self.down:
            raise UpstreamError("connection refused")
        if url == self.issuer + "/.well-known/openid-configuration":
            return _json(200, self.discovery)
        if url == self.issuer + "/jwks":
            return _json(200, jwks(self.key))
        if url == self.issuer + "/token" and method == "POST":
            return self._token(dict(form or {}), headers or {})
        if url == self.issuer + "/device" and method == "POST" and self.device_endpoint:
            return self._device(dict(form or {}), headers or {})
        if url == self.issuer + "/userinfo":
            auth = (headers or {}).get("Authorization", "")
            sub = self.access.get(auth.removeprefix("Bearer "))
            if sub is None:
                return _json(401, {"error": "invalid_token"})
            return _json(200, {"sub": sub, **self.userinfo})
        return FetchResult(404, {}, b"not found")

    def _client_ok(self, form: dict[str, str], headers: dict[str, str]) -> bool:
        if self.client_key is not None:
            import jwt as pyjwt  # the tests' own JOSE library, independent of authmount's

            if form.get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
                return False
            try:
                claims = pyjwt.decode(
                    form.get("client_assertion", ""), self.client_key,
                    algorithms=["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"],
                    audience=self.issuer + "/token", options={"require": ["exp", "iat", "jti", "iss", "sub"]},
                )
            except (pyjwt.PyJWTError, TypeError, ValueError):  # a key of another type: refused too
                return False
            if claims["iss"] != CLIENT_ID or claims["sub"] != CLIENT_ID or claims["jti"] in self.seen_jti:
                return False
            self.seen_jti.add(claims["jti"])
            return form.get("client_id") == CLIENT_ID and "Authorization" not in headers
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        return headers.get("Authorization") == expected

    def _device(self, form: dict[str, str], headers: dict[str, str]) -> FetchResult:
        if not self._client_ok(form, headers):
            return _json(401, {"error": "invalid_client"})
        device_code = "dc_" + secrets.token_hex(16)
        user_code = f"{secrets.token_hex(2).upper()}-{secrets.token_hex(2).upper()}"
        self.devices[device_code] = Device(user_code)
        body: dict[str, Any] = {
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": self.issuer + "/device",
            "verification_uri_complete": f"{self.issuer}/device?user_code={user_code}",
            "expires_in": 600,
            "interval": 7,
        }
        body.update(self.device_overrides)
        return _json(200, {k: v for k, v in body.items() if v is not None})

    def _device_token(self, form: dict[str, str]) -> FetchResult:
        device = self.devices.get(form.get("device_code", ""))
        if device is None or device.status == "used":
            return _json(400, {"error": "invalid_grant"})
        if device.status == "pending":
            return _json(400, {"error": "authorization_pending", "error_description": "<b>wait</b>"})
        if device.status == "slow_down":
            return _json(400, {"error": "slow_down"})
        if device.status == "denied":
            return _json(400, {"error": "access_denied", "error_description": "<script>x</script>"})
        device.status = "used"
        grant = Grant({}, device.sub, device.claims)
        access_token = "at_" + secrets.token_hex(8)
        self.access[access_token] = grant.sub
        return _json(200, {
            "access_token": access_token, "token_type": "Bearer", "refresh_token": "rt_" + secrets.token_hex(8),
            "id_token": self.id_token(grant, access_token, nonce=None),
        })

    def _token(self, form: dict[str, str], headers: dict[str, str]) -> FetchResult:
        if not self._client_ok(form, headers):
            return _json(401, {"error": "invalid_client"})
        if form.get("grant_type") == "urn:ietf:params:oauth:grant-type:device_code":
            return self._device_token(form)
        code = form.get("code", "")
        grant = self.grants.get(code) if self.reusable_codes else self.grants.pop(code, None)
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
            {"access_token": access_token, "token_type": "Bearer", "id_token": self.id_token(grant, access_token),
             "refresh_token": "rt_" + secrets.token_hex(8)},
        )


REDIRECT = "https://vault.example.com/ui/vault/auth/oidc/oidc/callback"
CLI_REDIRECT = "http://localhost:8250/oidc/callback"


class Clock:
    """A settable clock shared by the system view and the fake IdP."""

    def __init__(self) -> None:
        import time

        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


#: One sealer per storage: nodes that share a storage share its keyring (server/keyring.py).
_SEALERS: weakref.WeakKeyDictionary[InMemoryStorage, Sealer] = weakref.WeakKeyDictionary()


class Harness:
    """One mount on one node: backend, storage, fake IdP; helpers that speak the plugin API.

    Harnesses built on the same ``storage`` are nodes of one cluster: they share its sealer,
    as nodes share the keyring through storage.
    """

    def __init__(self, storage: InMemoryStorage | None = None, idp: FakeIdP | None = None) -> None:
        self.clock = Clock()
        self.idp = idp or FakeIdP(clock=self.clock)
        self.storage = storage or InMemoryStorage()
        sealer = _SEALERS.setdefault(self.storage, EphemeralSealer())
        self.system = StaticSystemView(fetcher=self.idp, clock=self.clock, mount_path="auth/oidc/", sealer=sealer)
        self.backend = JWTAuthBackend()
        self.remote = "127.0.0.1"

    async def call(self, op: Operation, path: str, data: dict[str, Any] | None = None) -> Any:
        req = Request(
            operation=op,
            path=path,
            data=dict(data or {}),
            storage=self.storage,
            system=self.system,
            connection=Connection(self.remote),
        )
        return await self.backend.handle_request(req)

    async def configure(self, **extra: Any) -> None:
        data = {
            "oidc_discovery_url": self.idp.issuer,
            "oidc_client_id": CLIENT_ID,
            "oidc_client_secret": CLIENT_SECRET,
            "default_role": "test",
        }
        data.update(extra)
        await self.call(Operation.UPDATE, "config", data)

    async def role(self, name: str = "test", **extra: Any) -> None:
        data: dict[str, Any] = {
            "role_type": "oidc",
            "user_claim": "email",
            "allowed_redirect_uris": [REDIRECT, CLI_REDIRECT],
            "groups_claim": "groups",
            "claim_mappings": {"COLOR": "color", "size": "size"},
            "token_ttl": "3m",
            "token_max_ttl": "5m",
            "token_num_uses": 10,
        }
        data.update(extra)
        await self.call(Operation.UPDATE, f"role/{name}", data)

    async def auth_url(self, **data: Any) -> str:
        return str((await self.start(**data))["auth_url"])

    async def start(self, **data: Any) -> dict[str, Any]:
        """``oidc/auth_url``'s whole answer (``auth_url``, and ``state``/``poll_interval`` in
        the direct and device modes)."""
        data.setdefault("redirect_uri", REDIRECT)
        resp = await self.call(Operation.UPDATE, "oidc/auth_url", data)
        return dict(resp.data)

    async def poll(self, **data: Any) -> Any:
        return await self.call(Operation.UPDATE, "oidc/poll", data)

    async def callback(self, **data: Any) -> Any:
        return await self.call(Operation.READ, "oidc/callback", data)

    async def login(self, *, auth: dict[str, Any] | None = None, cb: dict[str, Any] | None = None, **claims: Any) -> Any:
        """auth_url -> IdP authorize -> callback; returns the callback Response."""
        url = await self.auth_url(**(auth or {}))
        state = query(url)["state"]
        code = self.idp.authorize(url, **claims)
        return await self.callback(state=state, code=code, **(cb or {}))


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


BOB: dict[str, Any] = {"email": "bob@example.com", "groups": ["a", "b"], "COLOR": "green"}
