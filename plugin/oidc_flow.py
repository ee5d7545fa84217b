"""Helpers of the OIDC browser flow: discovery, code exchange, ID token checks, userinfo.

``path_oidc`` holds the HTTP-facing handlers; this module talks to the IdP through
``req.system.fetcher``. The role's checks on the verified claims are the JWT login's own
(``path_login.OIDC_CLAIM_CHECKS``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from plugin import jsonlimits
from plugin.claims import show
from plugin.errors import InvalidRequest, PluginError, UpstreamError
from plugin.framework import Request
from plugin.jose_verify import parse_token
from plugin.keys import fetch_discovery
from plugin.path_config import JWTConfig

if TYPE_CHECKING:
    from plugin.backend import JWTAuthBackend

__all__ = [
    "discovery",
    "exchange_code",
    "verify_id_token",
    "check_id_token_claims",
    "check_at_hash",
    "merge_userinfo",
]

DEFAULT_FLOW_ALGS = ("RS256",)
NBF_LEEWAY = 300  # go-oidc: 5 minutes for nbf
IAT_FUTURE = 60  # cap: iat at most 1 minute ahead
AUTH_TIME_LEEWAY = 60
_DISCOVERY_TTL = 300.0
_SAFE_ERROR = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_HASHES = {"256": hashlib.sha256, "384": hashlib.sha384, "512": hashlib.sha512}


# ---------------------------------------------------------------------------
# Discovery and keys


async def discovery(backend: JWTAuthBackend, req: Request, config: JWTConfig) -> dict[str, Any]:
    """The discovery document for the config (cached per backend for a few minutes).

    :raises InvalidRequest: ``error checking oidc discovery URL: <reason>``.
    """
    url = config.oidc_discovery_url
    ca = config.oidc_discovery_ca_pem or None
    cache = backend.oidc_discovery
    now = time.monotonic()
    hit = cache.get((url, ca))
    if hit is not None and hit[0] > now:
        return hit[1]
    doc = await fetch_discovery(url, ca, req.system.fetcher)
    cache.clear()  # one config per mount: keep only the current document
    cache[(url, ca)] = (now + _DISCOVERY_TTL, doc)
    return doc


# ---------------------------------------------------------------------------
# Code exchange


def _basic_auth(client_id: str, secret: str) -> str:
    # RFC 6749 2.3.1: form-urlencode both parts before base64.
    pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


async def exchange_code(
    req: Request, config: JWTConfig, doc: Mapping[str, Any], code: str, *, redirect_uri: str, code_verifier: str
) -> dict[str, Any]:
    """POST the code (with the PKCE verifier, unless empty) to the token endpoint; return its JSON.

    :raises InvalidRequest: ``cannot fetch token: ...`` (status and the IdP's error code only).
    """
    endpoint = doc.get("token_endpoint")
    if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
        raise InvalidRequest("discovery document has no usable token_endpoint")
    client_id = config.oidc_client_id
    secret = config.oidc_client_secret
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    if code_verifier:
        form["code_verifier"] = code_verifier
    headers = {"Accept": "application/json"}
    methods = doc.get("token_endpoint_auth_methods_supported")
    if isinstance(methods, list) and "client_secret_basic" not in methods and "client_secret_post" in methods:
        form.update(client_id=client_id, client_secret=secret)
    else:
        headers["Authorization"] = _basic_auth(client_id, secret)
    try:
        result = await req.system.fetcher.fetch(
            "POST", endpoint, ca_pem=config.oidc_discovery_ca_pem or None, form=form, headers=headers
        )
    except UpstreamError as exc:
        raise InvalidRequest(f"cannot fetch token: {'; '.join(exc.messages) or 'request failed'}") from None
    body: Any = None
    try:
        body = jsonlimits.loads(result.body.decode("utf-8"))
    except (ValueError, RecursionError):
        body = None
    if result.status != 200:
        detail = f"cannot fetch token: HTTP {result.status}"
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, str) and _SAFE_ERROR.fullmatch(err):
            detail += f" ({err})"
        raise InvalidRequest(detail)
    if not isinstance(body, dict):
        raise InvalidRequest("cannot fetch token: token response is not a JSON object")
    return body


# ---------------------------------------------------------------------------
# ID token


def _as_list(aud: Any) -> list[Any]:
    if aud is None:
        return []
    return list(aud) if isinstance(aud, list) else [aud]


def _num(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"invalid {name} claim: not a number")
    return float(value)


def check_id_token_claims(
    claims: Mapping[str, Any],
    *,
    now: float,
    issuer: str,
    client_id: str,
    nonce: str,
    audiences: list[str],
    max_age: int = 0,
) -> None:
    """The claim checks of cap's ``VerifyIDToken`` (docs/reference/vault-api.md 6.3), first failure wins.

    :raises InvalidRequest: naming the failed check.
    """
    if claims.get("iss") != issuer:
        raise InvalidRequest(f"invalid issuer (iss) claim: expected {json.dumps(issuer)}")
    exp = _num(claims, "exp")
    if exp is None:
        raise InvalidRequest("missing expiration time (exp) claim")
    if now > exp:
        raise InvalidRequest("invalid expiration time (exp) claim: token is expired")
    nbf = _num(claims, "nbf")
    if nbf is not None and now + NBF_LEEWAY < nbf:
        raise InvalidRequest("invalid not before (nbf) claim: token not yet valid")
    iat = _num(claims, "iat")
    if iat is not None and iat > now + IAT_FUTURE:
        raise InvalidRequest("invalid issued at (iat) claim: token issued in the future")
    got_nonce = claims.get("nonce")
    if not isinstance(got_nonce, str) or not hmac.compare_digest(got_nonce.encode(), nonce.encode()):
        raise InvalidRequest("invalid id_token nonce: invalid nonce")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise InvalidRequest("invalid subject (sub) claim: missing")
    aud = _as_list(claims.get("aud"))
    if not aud or not all(isinstance(a, str) for a in aud):
        raise InvalidRequest("invalid audience (aud) claim: missing or not strings")
    if audiences and not any(a in aud for a in audiences):
        raise InvalidRequest("invalid audience (aud) claim: audience claim does not match any expected audience")
    azp = claims.get("azp")
    if len(aud) > 1 and client_id not in aud:
        raise InvalidRequest(f"invalid audience (aud) claim: {json.dumps(client_id)} is not among the audiences")
    if azp is not None and azp != client_id:
        raise InvalidRequest("invalid authorized party (azp) claim: it is not equal to the client_id")
    if (len(aud) > 1 or aud[0] != client_id) and azp != client_id:
        raise InvalidRequest("invalid authorized party (azp) claim: missing while the audience is not the client_id")
    if max_age > 0:
        auth_time = _num(claims, "auth_time")
        if auth_time is None:
            raise InvalidRequest("missing auth_time claim: required when max_age is set")
        if auth_time + AUTH_TIME_LEEWAY <= now - max_age:
            raise InvalidRequest("invalid auth_time claim: authentication is older than max_age")


def check_at_hash(alg: str, at_hash: Any, access_token: str) -> None:
    """Check the ``at_hash`` claim (left half of the alg's hash of the access token).

    :raises InvalidRequest: when it does not match.
    """
    hasher = hashlib.sha512 if alg == "EdDSA" else _HASHES.get(alg[-3:])
    if hasher is None:
        raise InvalidRequest(f"invalid at_hash claim: unsupported alg {alg}")
    digest = hasher(access_token.encode("ascii", "replace")).digest()
    expected = base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode("ascii")
    if not isinstance(at_hash, str) or not hmac.compare_digest(expected.encode(), at_hash.encode()):
        raise InvalidRequest("invalid access token hash (at_hash) claim")


async def verify_id_token(
    backend: JWTAuthBackend,
    req: Request,
    config: JWTConfig,
    doc: Mapping[str, Any],
    raw: str,
    *,
    nonce: str,
    audiences: list[str],
    max_age: int,
    access_token: str | None,
) -> dict[str, Any]:
    """Verify signature (discovery JWKS; default RS256 only) and claims; return the claims.

    :raises InvalidRequest: naming the failed check.
    """
    parsed = parse_token(raw)
    algs = list(config.jwt_supported_algs) or list(DEFAULT_FLOW_ALGS)
    if parsed.alg not in algs:
        raise InvalidRequest(
            "error validating token: invalid algorithm (alg) header parameter: token signed with "
            f"unexpected algorithm {show(parsed.alg)}, allowed: {show(algs)}"
        )
    await (await backend.key_source(config, req.system)).verify(parsed, algs)
    claims = dict(parsed.claims)
    check_id_token_claims(
        claims,
        now=req.system.now(),
        issuer=str(doc.get("issuer")),
        client_id=config.oidc_client_id,
        nonce=nonce,
        audiences=audiences,
        max_age=max_age,
    )
    if access_token and "at_hash" in claims:
        check_at_hash(parsed.alg, claims["at_hash"], access_token)
    return claims


# ---------------------------------------------------------------------------
# UserInfo


async def merge_userinfo(
    req: Request,
    config: JWTConfig,
    doc: Mapping[str, Any],
    access_token: str,
    claims: dict[str, Any],
    warnings: list[str],
) -> None:
    """Merge the userinfo JSON into ``claims`` (replacing same-named keys), as Vault does.

    Failures only add a warning; a userinfo ``sub`` different from the ID token's is
    never merged.
    """
    url = doc["userinfo_endpoint"]
    try:
        result = await req.system.fetcher.fetch(
            "GET",
            url,
            ca_pem=config.oidc_discovery_ca_pem or None,
            headers={"Authorization": f"Bearer {access_token}", "Accept": "application/json"},
        )
    except PluginError as exc:
        warnings.append(f"userinfo could not be fetched: {'; '.join(exc.messages)}")
        return
    if result.status != 200:
        warnings.append(f"userinfo could not be fetched: HTTP {result.status}")
        return
    try:
        info = jsonlimits.loads(result.body.decode("utf-8"))
    except (ValueError, RecursionError):
        warnings.append("userinfo response is not JSON; ignored")
        return
    if not isinstance(info, dict):
        warnings.append("userinfo response is not a JSON object; ignored")
        return
    if info.get("sub") != claims.get("sub"):
        warnings.append("userinfo sub does not match the ID token sub; userinfo ignored")
        return
    claims.update(info)
