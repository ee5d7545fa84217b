"""The OIDC provider's authorization code flow (Vault's ``identity/oidc/provider/<name>/...``):

- ``authorize`` (a token holder with an entity, GET or POST): checks the client, its
  ``redirect_uri``, the provider, the scopes, the entity's assignment and PKCE, then answers
  ``{"code", "state"}`` as JSON (Vault's UI does the redirect; a client calling the API
  redirects itself);
- ``token`` (no token; the client authenticates with ``client_secret_basic`` or
  ``client_secret_post``, a public client with PKCE): the code for an ID token and an access
  token;
- ``userinfo`` (the access token as ``Authorization: Bearer``): the entity's claims from the
  scopes the code was granted;
- ``.well-known/openid-configuration`` and ``.well-known/keys`` (no token).

Errors are OAuth's (``{"error", "error_description"}``) with Vault's codes, texts and statuses.

**The code is the grant, sealed.** Vault keeps a code in the memory of the node that made it
for five minutes, so behind a load balancer the exchange fails whenever it reaches another
node. Here the code is the grant itself (provider, client, entity, redirect URI, nonce,
scopes, PKCE challenge, expiry) sealed under the server's keyring (authenticated encryption,
``plugin.sealing``), so ``authorize`` stores nothing and every node or worker redeems it. A
code is redeemed once: the exchange records ``identity/provider-code/used/<expiry>-<id>``
with put-if-absent before it checks the rest, so of two exchanges of one code (on any
node) one gets tokens, and a code presented with a wrong ``redirect_uri`` or verifier is
used up as in Vault. Nothing is written for a code that does not open.

**The access token** is a batch token of no policy (not even ``default``) whose entity's
groups grant it none either; it carries the provider, the client and the scopes, signed, and
serves only this provider's ``userinfo``, which checks it itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import structlog

from plugin.errors import InvalidRequest, NotFound
from plugin.framework import Operation, PathSpec, Request, Response
from plugin.oidc_state import record_once, sweep_used, used_name
from plugin.schema import Field, FieldSet, FieldType
from plugin.sealing import PREFIX as SEALED_PREFIX
from plugin.sealing import SealError
from server.acl.templating import IdentityView
from server.identity.oidc import NAME_RE
from server.identity.oidc_keys import ALGORITHMS, NamedKey, allows_client
from server.identity.provider import Client
from server.tokens.entry import TokenEntry

if TYPE_CHECKING:
    from server.identity.backend import IdentityBackend

log = structlog.get_logger("authmount.identity")

__all__ = ["CODE_TTL", "USED_CODE_PREFIX", "hash_claim", "paths", "redirect_allowed"]

#: Vault's: an authorization code lives five minutes.
CODE_TTL = 300
_CODE_CONTEXT = "identity/oidc/provider/code"
#: Redeemed codes, by expiry then id (swept as the OIDC login's used states are).
USED_CODE_PREFIX = "identity/provider-code/used/"
#: The longest code accepted (a code authmount made is far shorter), and the longest nonce
#: a code carries.
_MAX_CODE, _MAX_NONCE = 8192, 1024
_SWEEP_PER_REDEMPTION = 16
_LOOPBACK = ("localhost", "127.0.0.1", "::1")
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_DIGESTS = {"256": hashlib.sha256, "384": hashlib.sha384, "512": hashlib.sha512}

_S = FieldType.STRING
_NAME = {"name": Field(FieldType.NAME, "Name of the provider.")}
AUTHORIZE_FIELDS = FieldSet({
    **_NAME,
    "client_id": Field(_S, "The client's ID.", default=""),
    "scope": Field(_S, "Space-separated scopes; openid is required.", default=""),
    "redirect_uri": Field(_S, "Where the code goes: one of the client's redirect_uris.", default=""),
    "response_type": Field(_S, "code (the only flow served).", default=""),
    "state": Field(_S, "Returned as sent.", default=""),
    "nonce": Field(_S, "Put into the ID token as sent.", default=""),
    "max_age": Field(FieldType.INT, "Seconds since the calling token was made, at most (else "
                                    "max_age_violation); the ID token then carries auth_time."),
    "code_challenge": Field(_S, "PKCE: the challenge (43 to 128 characters)."),
    "code_challenge_method": Field(_S, "PKCE: S256 or plain.", default="plain"),
    "request": Field(_S, "Not supported (refused)."),
    "request_uri": Field(_S, "Not supported (refused)."),
})
TOKEN_FIELDS = FieldSet({
    **_NAME,
    "grant_type": Field(_S, "authorization_code, or client_credentials (OpenBao's, for a client that allows it).",
                        default=""),
    "scope": Field(_S, "client_credentials: space-separated scopes; openid is required.", default=""),
    "code": Field(_S, "The code authorize gave.", default=""),
    "redirect_uri": Field(_S, "The redirect_uri sent to authorize.", default=""),
    "code_verifier": Field(_S, "PKCE: the verifier of the code_challenge sent to authorize.", default=""),
    "client_id": Field(_S, "The client's ID (client_secret_post; else in the Basic authorization).", default=""),
    "client_secret": Field(_S, "The client's secret (client_secret_post).", default="", sensitive=True),
})
USERINFO_FIELDS = FieldSet(dict(_NAME))


def hash_claim(value: str, alg: str) -> str:
    """``at_hash`` / ``c_hash``: the left half of the digest the signing algorithm uses
    (SHA-512 for EdDSA, as Vault), base64url without padding."""
    digest = _DIGESTS.get(alg[-3:], hashlib.sha512)(value.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode("ascii")


def redirect_allowed(uri: str, allowed: list[str]) -> bool:
    """Vault's rule (RFC 8252 7.3): an exact match, except that on a loopback host the port
    is not compared."""
    try:
        parts = urlsplit(uri)
        host = parts.hostname
    except ValueError:
        return False
    if host not in _LOOPBACK:
        return uri in allowed
    wanted = _without_port(uri)
    return wanted is not None and any(_without_port(a) == wanted for a in allowed)


def _without_port(uri: str) -> str | None:
    try:
        parts = urlsplit(uri)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return None
    if host is None:
        return None
    netloc = f"[{host}]" if ":" in host else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _oauth(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    resp = Response(raw_body=orjson.dumps(body, option=orjson.OPT_SORT_KEYS), content_type="application/json",
                    status=status)
    resp.headers.update(headers or {})
    return resp


def _basic(authorization: str) -> tuple[str, str] | None:
    """The ``client_secret_basic`` credentials of an ``Authorization`` header, as Go's
    ``BasicAuth`` reads them, or None."""
    if authorization[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(authorization[6:], validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    client_id, colon, secret = decoded.partition(":")
    return (client_id, secret) if colon else None


def _scopes(text: str, provider: dict[str, Any]) -> list[str] | None:
    """The scopes asked for that the provider offers (sorted, ``openid`` left out), or None
    when ``openid`` is not among them (OpenBao's ``validateScopes``)."""
    requested = sorted({s for s in text.split(" ") if s})
    if "openid" not in requested:
        return None
    return [s for s in requested if s != "openid" and s in provider.get("scopes_supported", [])]


def _serves(provider: dict[str, Any], client_id: str) -> bool:
    return allows_client(provider.get("allowed_client_ids", []), client_id)


def paths(b: IdentityBackend) -> list[PathSpec]:
    """The OIDC provider's flow paths."""
    objects, keys = b.provider_objects, b.oidc_keys

    async def provider_of(values: dict[str, Any]) -> dict[str, Any] | None:
        return await objects.provider(values["name"])

    async def entity(entity_id: str) -> IdentityView | None:
        return await b.store.template_view(entity_id) if entity_id else None

    # -- authorize -------------------------------------------------------------------------
    async def authorize(req: Request, values: dict[str, Any]) -> Response:
        state = values.get("state", "")

        def fail(error: str, description: str, *, status: int = 400, with_state: bool = True) -> Response:
            return _oauth(status, {"error": error, "error_description": description,
                                   "state": state if with_state else ""})

        client_id = values.get("client_id", "")
        if not client_id:
            return fail("invalid_client_id", "client_id parameter is required")
        client = await objects.client_by_id(client_id)
        if client is None:
            return fail("invalid_client_id", "client with client_id not found")
        redirect_uri = values.get("redirect_uri", "")
        if not redirect_uri:
            return fail("invalid_request", "redirect_uri parameter is required")
        if not redirect_allowed(redirect_uri, client.redirect_uris):
            return fail("invalid_redirect_uri", "redirect_uri is not allowed for the client")
        provider = await provider_of(values)
        if provider is None:
            return fail("invalid_request", "provider not found")
        if not _serves(provider, client_id):
            return fail("unauthorized_client", "client is not authorized to use the provider")
        if "request" in values:
            return fail("request_not_supported", "request parameter is not supported", with_state=False)
        if "request_uri" in values:
            return fail("request_uri_not_supported", "request_uri parameter is not supported", with_state=False)
        scopes = _scopes(values.get("scope", ""), provider)
        if scopes is None:
            return fail("invalid_request", 'scope parameter must contain the "openid" value')
        response_type = values.get("response_type", "")
        if not response_type:
            return fail("invalid_request", "response_type parameter is required")
        if response_type != "code":
            return fail("unsupported_response_type", "unsupported response_type value")
        entry: TokenEntry | None = (req.token or {}).get("entry")
        if entry is None or not entry.entity_id:
            return fail("access_denied", "identity entity must be associated with the request")
        who = await entity(entry.entity_id)
        if who is None:
            return fail("access_denied", "identity entity associated with the request not found")
        try:
            admitted = await objects.admits(client, who)
        except InvalidRequest as exc:
            return fail("server_error", str(exc), status=500)
        if not admitted:
            return fail("access_denied", "identity entity not authorized by client assignment")
        challenge = values.get("code_challenge")
        method = values.get("code_challenge_method") or "plain"
        if challenge is None:
            if client.client_type == "public":
                return fail("invalid_request", "PKCE is required for public clients")
        else:
            if method not in ("plain", "S256"):
                return fail("invalid_request", "invalid code_challenge_method")
            if not 43 <= len(challenge) <= 128:
                return fail("invalid_request", "invalid code_challenge")
        nonce = values.get("nonce", "")
        if len(nonce) > _MAX_NONCE:
            return fail("invalid_request", f"nonce parameter is longer than {_MAX_NONCE} characters")
        now = int(time.time())
        auth_time = None
        if "max_age" in values:
            if values["max_age"] < 1:
                return fail("invalid_request", "max_age must be greater than zero")
            if now - entry.creation_time > values["max_age"]:
                return fail("max_age_violation", "active re-authentication is required by max_age")
            auth_time = entry.creation_time
        grant = {"i": secrets.token_urlsafe(12), "p": values["name"], "c": client_id, "e": who.id,
                 "r": redirect_uri, "n": nonce, "s": scopes, "t": auth_time, "x": challenge, "m": method,
                 "exp": now + CODE_TTL}
        code = b.sealer().seal(orjson.dumps(grant), _CODE_CONTEXT).removeprefix(SEALED_PREFIX)
        return _oauth(200, {"code": code, "state": state})

    # -- token -----------------------------------------------------------------------------
    def token_error(error: str, description: str, status: int = 400) -> Response:
        headers = dict(_NO_STORE)
        if error == "invalid_client":
            status = 401
            headers["WWW-Authenticate"] = "Basic"
        return _oauth(status, {"error": error, "error_description": description}, headers)

    def opened(code: str, now: float) -> dict[str, Any] | None:
        if not code or len(code) > _MAX_CODE:
            return None
        try:
            grant = orjson.loads(b.sealer().unseal(SEALED_PREFIX + code, _CODE_CONTEXT))
        except (SealError, orjson.JSONDecodeError, ValueError):
            return None
        if not isinstance(grant, dict) or not isinstance(grant.get("exp"), int) or grant["exp"] <= now:
            return None
        return grant

    async def redeemed(grant: dict[str, Any], now: float) -> bool:
        """Record the code used; False when it already was (on any node)."""
        storage = b.store.storage
        if not await record_once(storage, USED_CODE_PREFIX + used_name(grant["exp"], grant["i"]),
                                 {"expires_at": grant["exp"]}):
            return False
        await sweep_used(storage, now, limit=_SWEEP_PER_REDEMPTION, prefix=USED_CODE_PREFIX)
        return True

    async def token(req: Request, values: dict[str, Any]) -> Response:
        provider = await provider_of(values)
        if provider is None:
            return token_error("invalid_request", "provider not found")
        basic = _basic((req.token or {}).get("authorization", ""))
        client_id, secret = basic if basic is not None else (values.get("client_id", ""), values.get("client_secret", ""))
        if basic is None and not client_id:
            return token_error("invalid_request", "client_id parameter is required")
        client = await objects.client_by_id(client_id) if client_id else None
        if client is None or not client.authenticates(secret):
            return token_error("invalid_client", "client failed to authenticate")
        if not _serves(provider, client_id):
            return token_error("invalid_client", "client is not authorized to use the provider")
        now = time.time()
        key = await keys.fresh(client.key, now)
        if key is None:
            return token_error("server_error", f'client key "{client.key}" not found', 500)
        if not key.allows(client_id):
            return token_error("invalid_client", "client is not authorized to use the key")
        grant_type = values.get("grant_type", "")
        if grant_type not in ("authorization_code", "client_credentials"):
            return token_error("unsupported_grant_type", "unsupported grant_type or parameter is empty value")
        if grant_type not in client.grants or grant_type == "client_credentials" and client.client_type == "public":
            return token_error("invalid_grant", "client is not authorized to use given credentials flow")
        if grant_type == "client_credentials":
            return await client_credentials(provider, values, client, key, now)
        code = values.get("code", "")
        if not code:
            return token_error("invalid_request", "code parameter is required")
        grant = opened(code, now)
        if grant is None or not await redeemed(grant, now):
            return token_error("invalid_grant", "authorization grant is invalid or expired")
        if grant["c"] != client_id:
            return token_error("invalid_grant", "authorization code was not issued to the client")
        if grant["p"] != values["name"]:
            return token_error("invalid_grant", "authorization code was not issued by the provider")
        redirect_uri = values.get("redirect_uri", "")
        if not redirect_uri:
            return token_error("invalid_request", "redirect_uri parameter is required")
        if redirect_uri != grant["r"]:
            return token_error("invalid_grant", "redirect_uri does not match the redirect_uri used in the "
                                                "authorization request")
        who = await entity(grant["e"])
        if who is None:
            return token_error("invalid_request", "identity entity associated with the request not found")
        try:
            if not await objects.admits(client, who):
                return token_error("invalid_request", "identity entity not authorized by client assignment")
        except InvalidRequest as exc:
            return token_error("server_error", str(exc), 500)
        problem = _pkce_problem(grant, client, values.get("code_verifier", ""))
        if problem:
            return token_error(*problem)
        issued = int(now)
        try:
            scope_claims = await objects.claims(grant["s"], who, issued)
        except InvalidRequest as exc:
            return token_error("invalid_request", str(exc))
        access_token, access_ttl = await access(values["name"], client, who.id, grant["s"], issued)
        claims: dict[str, Any] = {"iss": objects.issuer_of(provider, values["name"]), "namespace": "root",
                                  "sub": who.id, "aud": client_id, "iat": issued, "exp": issued + client.id_token_ttl,
                                  "at_hash": hash_claim(access_token, key.algorithm),
                                  "c_hash": hash_claim(code, key.algorithm)}
        if grant["n"]:
            claims["nonce"] = grant["n"]
        if grant["t"] is not None:
            claims["auth_time"] = grant["t"]
        claims.update({k: v for k, v in scope_claims.items() if k not in claims})
        return _oauth(200, {"access_token": access_token, "expires_in": access_ttl,
                            "id_token": keys.sign(client.key, key, claims), "token_type": "Bearer"}, dict(_NO_STORE))

    async def client_credentials(provider: dict[str, Any], values: dict[str, Any], client: Client, key: NamedKey,
                                 now: float) -> Response:
        """OpenBao's client credentials grant: the client itself (no user) gets an access token
        signed by its key: ``sub`` and ``aud`` its client_id, the ID token's lifetime, and the
        claims of the scopes asked for that need no entity."""
        scopes = _scopes(values.get("scope", ""), provider)
        if scopes is None:
            return token_error("invalid_request", 'scope parameter must contain the "openid" value')
        issued = int(now)
        try:
            scope_claims = await objects.claims(scopes, None, issued)
        except InvalidRequest as exc:
            return token_error("invalid_request", str(exc))
        claims: dict[str, Any] = {"iss": objects.issuer_of(provider, values["name"]), "namespace": "root",
                                  "sub": client.client_id, "aud": client.client_id, "iat": issued,
                                  "exp": issued + client.id_token_ttl, "jti": str(uuid.uuid4())}
        claims.update({k: v for k, v in scope_claims.items() if k not in claims})
        return _oauth(200, {"token_type": "Bearer", "access_token": keys.sign(client.key, key, claims),
                            "expires_in": client.id_token_ttl}, dict(_NO_STORE))

    async def access(provider: str, client: Client, entity_id: str, scopes: list[str], now: int) -> tuple[str, int]:
        """A new access token: a batch token of no policy for ``userinfo``; and its TTL."""
        tokens = b.tokens()
        ttl = min(client.access_token_ttl, tokens.max_lease_ttl)
        entry = TokenEntry(id_hash="", accessor="", policies=[], meta={"oidc_token_type": "access token"},
                           display_name="oidc-provider-" + provider, path=f"identity/oidc/provider/{provider}/token",
                           creation_time=now, ttl=ttl, expire_time=now + ttl, type="batch", renewable=False,
                           entity_id=entity_id,
                           internal_data={"oidc_provider": provider, "oidc_client_id": client.client_id,
                                          "oidc_scopes": " ".join(scopes), "no_identity_policies": True})
        return await tokens.mint(entry), ttl

    # -- userinfo --------------------------------------------------------------------------
    def userinfo_error(status: int, error: str, description: str) -> Response:
        headers = {}
        if status in (400, 401):
            headers["WWW-Authenticate"] = f'Bearer error="{error}",error_description="{description}"'
        return _oauth(status, {"error": error, "error_description": description}, headers)

    async def userinfo(req: Request, values: dict[str, Any]) -> Response:
        provider = await provider_of(values)
        if provider is None:
            return userinfo_error(400, "invalid_request", "provider not found")
        authorization = (req.token or {}).get("authorization", "")
        if authorization[:7].lower() != "bearer ":
            return userinfo_error(401, "invalid_token", "access token must be sent as a Bearer token")
        entry = await b.tokens().lookup(authorization[7:].strip())
        if entry is None:
            return userinfo_error(401, "invalid_token", "access token is expired")
        meta = entry.internal_data
        if entry.type != "batch" or meta.get("oidc_provider") != values["name"] or not meta.get("oidc_client_id"):
            return userinfo_error(401, "invalid_token", "access token is malformed or invalid")
        client = await objects.client_by_id(meta["oidc_client_id"])
        if client is None:
            return userinfo_error(403, "access_denied", "client not found")
        who = await entity(entry.entity_id)
        if who is None:
            return userinfo_error(403, "access_denied", "identity entity associated with the request not found")
        try:
            if not await objects.admits(client, who):
                return userinfo_error(403, "access_denied", "identity entity not authorized by client assignment")
        except InvalidRequest as exc:
            return userinfo_error(500, "server_error", str(exc))
        if not _serves(provider, client.client_id):
            return userinfo_error(403, "access_denied", "client is not authorized to use the provider")
        supported = provider.get("scopes_supported", [])
        scopes = [s for s in str(meta.get("oidc_scopes", "")).split(" ") if s in supported]
        try:
            claims = await objects.claims(scopes, who, int(time.time()))
        except InvalidRequest as exc:
            return userinfo_error(400, "invalid_request", str(exc))
        return _oauth(200, {**{k: v for k, v in claims.items() if k != "sub"}, "sub": who.id})

    # -- discovery -------------------------------------------------------------------------
    async def discovery(req: Request, values: dict[str, Any]) -> Response:
        provider = await provider_of(values)
        if provider is None:
            raise NotFound()
        issuer = objects.issuer_of(provider, values["name"])
        body = {
            "issuer": issuer,
            "jwks_uri": issuer + "/.well-known/keys",
            "authorization_endpoint": issuer.replace("/v1/", "/ui/vault/", 1) + "/authorize",
            "token_endpoint": issuer + "/token",
            "userinfo_endpoint": issuer + "/userinfo",
            "request_parameter_supported": False,
            "request_uri_parameter_supported": False,
            "id_token_signing_alg_values_supported": list(ALGORITHMS),
            "response_types_supported": ["code"],
            "scopes_supported": [*provider.get("scopes_supported", []), "openid"],
            "claims_supported": [],
            "subject_types_supported": ["public"],
            "grant_types_supported": ["authorization_code"],
            "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        }
        resp = Response(raw_body=orjson.dumps(body), content_type="application/json")
        resp.headers["Cache-Control"] = "max-age=3600"
        return resp

    async def well_known_keys(req: Request, values: dict[str, Any]) -> Response:
        name = values["name"]
        provider = await provider_of(values)
        if provider is None:
            raise NotFound()

        async def key_names() -> list[str]:
            clients = await objects.clients()
            allowed = provider.get("allowed_client_ids", [])
            chosen = list(clients.values()) if "*" in allowed else [c for c in clients.values()
                                                                    if c["client_id"] in allowed]
            return [str(c.get("key", "")) for c in chosen]

        now = time.time()
        built = await keys.key_set("provider/" + name, key_names, now)
        resp = Response(raw_body=built.body, content_type="application/json")
        if built.body != b'{"keys":[]}':
            resp.headers["Cache-Control"] = f"max-age={max(0, int(built.valid_until - now))}"
        return resp

    prefix = f"oidc/provider/(?P<name>{NAME_RE})"
    return [
        PathSpec(prefix + "/authorize", AUTHORIZE_FIELDS, {Operation.READ: authorize, Operation.UPDATE: authorize},
                 "Authorize a client for the calling token's entity: a code for the token endpoint."),
        PathSpec(prefix + "/token", TOKEN_FIELDS, {Operation.UPDATE: token},
                 "A code for an ID token and an access token (the client authenticates; no token needed).",
                 unauthenticated=True, login_like=True),
        PathSpec(prefix + "/userinfo", USERINFO_FIELDS, {Operation.READ: userinfo, Operation.UPDATE: userinfo},
                 "The claims of an access token's entity (the access token as Authorization: Bearer).",
                 unauthenticated=True, login_like=True),
        PathSpec(prefix + r"/\.well-known/openid-configuration", USERINFO_FIELDS, {Operation.READ: discovery},
                 "The provider's discovery document (needs no token).", unauthenticated=True),
        PathSpec(prefix + r"/\.well-known/keys", USERINFO_FIELDS, {Operation.READ: well_known_keys},
                 "The public keys that verify the provider's ID tokens (needs no token).", unauthenticated=True),
    ]


def _pkce_problem(grant: dict[str, Any], client: Client, verifier: str) -> tuple[str, str] | None:
    """What is wrong with the exchange's PKCE (Vault's checks and texts), or None."""
    challenge = grant["x"]
    if challenge is None:
        if client.client_type == "public":
            return "invalid_request", "PKCE is required for public clients"
        if verifier:
            return "invalid_request", "unexpected code_verifier for token exchange"
        return None
    if not verifier:
        return "invalid_request", "expected code_verifier for token exchange"
    if grant["m"] == "S256":
        computed = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("utf-8")).digest()).rstrip(b"=").decode()
    else:
        computed = verifier
    if not hmac.compare_digest(computed.encode("utf-8"), challenge.encode("utf-8")):
        return "invalid_grant", "invalid code_verifier for token exchange"
    return None
