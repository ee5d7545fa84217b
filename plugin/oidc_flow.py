"""Helpers of the OIDC flow: discovery, code exchange, the device grant (RFC 8628), ID token
checks, userinfo.

``path_oidc`` holds the HTTP-facing handlers; this module talks to the IdP through
``req.system.fetcher``, authenticating as the client with ``plugin.client_auth`` (secret or
private_key_jwt) and presenting the config's TLS client certificate. The role's checks on
the verified claims are the JWT login's own (``path_login.OIDC_CLAIM_CHECKS``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from plugin import jsonlimits
from plugin.claim_sources import merge_userinfo as merge_claims
from plugin.claims import show
from plugin.client_auth import authenticate, client_cert, server_names
from plugin.errors import InvalidRequest, PluginError, UpstreamError
from plugin.framework import Request
from plugin.jose_verify import parse_token
from plugin.keys import FailureStreak, fetch_discovery
from plugin.path_config import JWTConfig

if TYPE_CHECKING:
    from plugin.backend import JWTAuthBackend

__all__ = [
    "DEVICE_GRANT",
    "DeviceAuthorization",
    "discovery",
    "exchange_code",
    "authorize_device",
    "poll_device",
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
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
#: Longest device_code and user_code accepted from the IdP (the device_code is sealed into
#: the state, whose own limit is 4,096 bytes).
MAX_DEVICE_CODE = 1024
MAX_USER_CODE = 128
MAX_VERIFICATION_URI = 2048
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
    streak = backend.discovery_streak
    if streak is None or streak.url != url:
        streak = backend.discovery_streak = FailureStreak(
            "discovery", url, req.system.mount_path, req.system.events
        )
    try:
        doc = await fetch_discovery(url, ca, req.system.fetcher, client_cert(config), server_names(config))
    except InvalidRequest as exc:
        streak.failed(exc.messages[0])
        raise
    streak.succeeded()
    cache.clear()  # one config per mount: keep only the current document
    cache[(url, ca)] = (now + _DISCOVERY_TTL, doc)
    return doc


# ---------------------------------------------------------------------------
# Code exchange


def _endpoint(doc: Mapping[str, Any], name: str) -> str:
    """An endpoint of the discovery document, or raise naming it.

    :raises InvalidRequest: ``discovery document has no usable <name>``.
    """
    endpoint = doc.get(name)
    if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
        raise InvalidRequest(f"discovery document has no usable {name}")
    return endpoint


async def _post(
    req: Request, config: JWTConfig, doc: Mapping[str, Any], endpoint: str, form: dict[str, str], what: str
) -> tuple[int, Any]:
    """POST ``form`` with the client's credentials; return the status and the JSON body
    (None when it is not JSON).

    :raises InvalidRequest: ``cannot <what>: <reason>`` when the request itself failed.
    """
    headers = {"Accept": "application/json"}
    authenticate(config, doc, form, headers, now=req.system.now())
    try:
        result = await req.system.fetcher.fetch(
            "POST", endpoint, ca_pem=config.oidc_discovery_ca_pem or None, form=form, headers=headers,
            client_cert=client_cert(config), server_names=server_names(config),
        )
    except UpstreamError as exc:
        raise InvalidRequest(f"cannot {what}: {'; '.join(exc.messages) or 'request failed'}") from None
    body: Any = None
    try:
        body = jsonlimits.loads(result.body.decode("utf-8"))
    except (ValueError, RecursionError):
        body = None
    return result.status, body


def idp_error(body: Any) -> str:
    """The IdP's OAuth error code when it is a plain token (never its free text), else ""."""
    err = body.get("error") if isinstance(body, dict) else None
    return err if isinstance(err, str) and _SAFE_ERROR.fullmatch(err) else ""


async def exchange_code(
    req: Request, config: JWTConfig, doc: Mapping[str, Any], code: str, *, redirect_uri: str, code_verifier: str
) -> dict[str, Any]:
    """POST the code (with the PKCE verifier, unless empty) to the token endpoint; return its JSON.

    :raises InvalidRequest: ``cannot fetch token: ...`` (status and the IdP's error code only).
    """
    endpoint = _endpoint(doc, "token_endpoint")
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    if code_verifier:
        form["code_verifier"] = code_verifier
    status, body = await _post(req, config, doc, endpoint, form, "fetch token")
    if status != 200:
        detail = f"cannot fetch token: HTTP {status}"
        err = idp_error(body)
        if err:
            detail += f" ({err})"
        raise InvalidRequest(detail)
    if not isinstance(body, dict):
        raise InvalidRequest("cannot fetch token: token response is not a JSON object")
    return body


# ---------------------------------------------------------------------------
# Device authorization (RFC 8628)


@dataclass(frozen=True, slots=True)
class DeviceAuthorization:
    """The IdP's answer to a device authorization request (RFC 8628 3.2)."""

    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str
    interval: int
    expires_in: int


def _bounded_text(body: Mapping[str, Any], name: str, limit: int) -> str:
    value = body.get(name)
    if value is None:
        return ""
    if not isinstance(value, str) or len(value.encode("utf-8", "replace")) > limit:
        raise UpstreamError(f"device authorization response: {name} is not a string of at most {limit} bytes")
    return value


def _uri(body: Mapping[str, Any], *names: str) -> str:
    for name in names:
        value = _bounded_text(body, name, MAX_VERIFICATION_URI)
        if value:
            if not value.startswith(("https://", "http://")) or any(c <= " " for c in value):
                raise UpstreamError(f"device authorization response: {name} is not an http(s) URL")
            return value
    return ""


def _small_int(body: Mapping[str, Any], name: str) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 86400:
        return 0
    return value


async def authorize_device(
    req: Request, config: JWTConfig, doc: Mapping[str, Any], scopes: list[str]
) -> DeviceAuthorization:
    """Ask the IdP's ``device_authorization_endpoint`` for a device and user code.

    :raises InvalidRequest: the IdP has no such endpoint, or refused (status and error code).
    :raises UpstreamError: the IdP's answer is not a usable device authorization.
    """
    if not isinstance(doc.get("device_authorization_endpoint"), str):
        raise InvalidRequest(
            "the IdP's discovery document has no device_authorization_endpoint: "
            "callback_mode=device needs an IdP that supports RFC 8628"
        )
    endpoint = _endpoint(doc, "device_authorization_endpoint")
    status, body = await _post(req, config, doc, endpoint, {"scope": " ".join(scopes)}, "authorize device")
    if status != 200:
        err = idp_error(body)
        raise InvalidRequest(f"cannot authorize device: HTTP {status}" + (f" ({err})" if err else ""))
    if not isinstance(body, dict):
        raise UpstreamError("device authorization response is not a JSON object")
    device_code = _bounded_text(body, "device_code", MAX_DEVICE_CODE)
    if not device_code:
        raise UpstreamError("device authorization response has no device_code")
    # Google and older drafts say verification_url.
    complete = _uri(body, "verification_uri_complete", "verification_url_complete")
    uri = _uri(body, "verification_uri", "verification_url")
    if not complete and not uri:
        raise UpstreamError("device authorization response has no verification_uri")
    return DeviceAuthorization(
        device_code=device_code,
        user_code=_bounded_text(body, "user_code", MAX_USER_CODE),
        verification_uri=uri,
        verification_uri_complete=complete,
        interval=_small_int(body, "interval"),
        expires_in=_small_int(body, "expires_in"),
    )


async def poll_device(req: Request, config: JWTConfig, doc: Mapping[str, Any], device_code: str) -> dict[str, Any]:
    """Ask the token endpoint for the device grant's tokens (RFC 8628 3.4); return its JSON.

    :raises InvalidRequest: ``authorization_pending`` or ``slow_down`` exactly (the client
        polls again), or ``authorization failed: <error>``.
    """
    endpoint = _endpoint(doc, "token_endpoint")
    form = {"grant_type": DEVICE_GRANT, "device_code": device_code}
    status, body = await _post(req, config, doc, endpoint, form, "fetch token")
    if status != 200:
        err = idp_error(body)
        if err in ("authorization_pending", "slow_down"):
            raise InvalidRequest(err)
        raise InvalidRequest(f"authorization failed: {err or f'HTTP {status}'}")
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
    nonce: str | None,
    audiences: list[str],
    max_age: int = 0,
) -> None:
    """The claim checks of cap's ``VerifyIDToken`` (docs/reference/vault-api.md 6.3), first failure wins.
    ``nonce`` None: none was sent (the device grant), so none is checked.

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
    if nonce is not None and (
        not isinstance(got_nonce, str) or not hmac.compare_digest(got_nonce.encode(), nonce.encode())
    ):
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
    nonce: str | None,
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
    precedence: str = "userinfo",
) -> None:
    """Merge the userinfo JSON into ``claims``: replacing same-named keys, as Vault does
    (``precedence`` "userinfo"), or only adding those the ID token lacks ("id_token").

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
            client_cert=client_cert(config), server_names=server_names(config),
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
    merge_claims(claims, info, precedence)
