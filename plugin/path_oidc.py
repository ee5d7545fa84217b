"""The OIDC browser flow: ``oidc/auth_url`` and ``oidc/callback`` (docs/reference/vault-api.md section 6).

``oidc/auth_url`` needs no token and stores nothing: the flow's state (role, redirect URI,
expiry, the secret its nonce and PKCE verifier derive from) is sealed into the ``state``
parameter itself (``plugin/oidc_state.py``), so any node of a cluster can finish a flow
that another node started (docs/vault-differences.md row 7). A callback records the state
as used, once, after the code exchange and the ID token checks have passed. The ID token
checks follow cap/go-oidc (docs/reference/vault-api.md 6.3); the role's checks (bound
CIDRs, subject, user claim, claim mappings, groups, bound claims) are the JWT login's own
validators (``path_login.OIDC_REQUEST_CHECKS``/``OIDC_CLAIM_CHECKS``), with the same reason
codes. Every value an anonymous caller sends has a byte limit (``LIMITS``), checked when
the fields are parsed, before anything else.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import structlog

from plugin import oidc_flow as support
from plugin.errors import InvalidRequest, PluginError, UnsupportedOperation, UpstreamError
from plugin.framework import Handler, Operation, PathSpec, Request, Response
from plugin.oidc_redirect import parse_mount, split_namespace, valid_redirect
from plugin.oidc_state import FlowState, redeem, sweep_used, take_result
from plugin.path_config import JWTConfig
from plugin.path_login import (
    OIDC_CLAIM_CHECKS,
    OIDC_REQUEST_CHECKS,
    LoginContext,
    login_auth,
    refused,
    remote_addr,
    run_checks,
)
from plugin.path_role import Role
from plugin.schema import Field, FieldSet, FieldType, coerce

if TYPE_CHECKING:
    from plugin.backend import JWTAuthBackend

__all__ = ["paths", "valid_redirect", "parse_mount", "LIMITS", "NO_CODE"]

log = structlog.get_logger("plugin.path_oidc")

#: Byte limits (UTF-8) of the values anonymous callers send to ``oidc/auth_url`` and
#: ``oidc/callback``: a longer value is refused with 400 before any other work.
#: ``namespace`` is the ``namespace`` query parameter split from ``redirect_uri``; a
#: ``state`` is at most what ``auth_url`` issues (``redirect_uri`` sealed, plus ``,ns=``).
LIMITS: dict[str, int] = {
    "role": 512,
    "redirect_uri": 2048,
    "client_nonce": 256,
    "namespace": 256,
    "state": 4096,
    "code": 4096,
    "id_token": 16384,  # jose_verify.parse_token's own limit
    "error_description": 2048,
}
NO_CODE = "no_code"  # the form_post page's code: "use what the POST verified"
#: Expired used-state records each redemption deletes: more than it adds, so the records
#: never outnumber the logins of the last state lifetime (plus the sweep's grace).
_SWEEP_PER_REDEMPTION = 2
_FAILED = "Vault login failed."
_EXPIRED = "Expired or missing OAuth state."


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# ---------------------------------------------------------------------------
# Limits


def _check_size(name: str, value: str) -> None:
    """Refuse ``value`` when it is longer than ``LIMITS[name]`` bytes (or not UTF-8 text).

    :raises InvalidRequest: naming the field and the limit.
    """
    limit = LIMITS[name]
    if len(value) > limit:  # a character is at least a byte: no need to encode
        raise InvalidRequest(f"{name} is too long: the limit is {limit} bytes")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate (JSON "\ud800")
        raise InvalidRequest(f"{name} is not valid UTF-8 text") from None
    if size > limit:
        raise InvalidRequest(f"{name} is too long: the limit is {limit} bytes")


def _bounded(name: str, ftype: FieldType, description: str, **kwargs: Any) -> Field:
    """A string field of ``LIMITS[name]`` bytes at most, checked before its coercion."""
    plain = Field(ftype, description, **kwargs)

    def parse(raw: Any) -> str:
        if isinstance(raw, str):
            _check_size(name, raw)
        value: str = coerce(name, plain, raw)
        _check_size(name, value)
        return value

    return Field(ftype, f"{description} At most {LIMITS[name]} bytes.", parse=parse, **kwargs)


# ---------------------------------------------------------------------------
# oidc/auth_url


def _make_auth_url(backend: JWTAuthBackend) -> Handler:
    async def handler(req: Request, values: dict[str, Any]) -> Response:
        storage = req.require_storage()
        config = await backend.config(req)
        if config is None:
            raise InvalidRequest("could not load configuration")
        if not config.is_oidc_flow:
            raise InvalidRequest("OIDC login is not configured for this mount")
        role_name = (values.get("role") or config.default_role).lower()
        if not role_name:
            raise InvalidRequest("missing role")
        redirect_uri = values.get("redirect_uri") or ""
        if not redirect_uri:
            raise InvalidRequest("missing redirect_uri")
        role = await backend.role(storage, role_name)
        if role is None:
            raise InvalidRequest(f'role "{role_name}" could not be found')

        namespace = ""
        if config.namespace_in_state:
            try:
                redirect_uri, namespace = split_namespace(redirect_uri)
            except ValueError:
                raise InvalidRequest(f"redirect_uri {json.dumps(redirect_uri[:512])} could not be parsed") from None
            _check_size("namespace", namespace)
        if not valid_redirect(redirect_uri, role.allowed_redirect_uris or []):
            # The allowed list is not echoed: this path needs no token.
            raise InvalidRequest(f'redirect_uri {json.dumps(redirect_uri[:512])} is not allowed for role "{role_name}"')
        response_mode = config.oidc_response_mode
        if response_mode == "form_post":
            redirect_uri = redirect_uri.replace("ui/vault", "v1", 1)

        discovery = await support.discovery(backend, req, config)
        endpoint = discovery.get("authorization_endpoint")
        if not isinstance(endpoint, str) or not endpoint:
            raise UpstreamError("OIDC discovery document has no authorization_endpoint")

        max_age = role.max_age
        state = FlowState.new(
            role=role_name,
            redirect_uri=redirect_uri,
            client_nonce=values.get("client_nonce") or "",
            max_age=max_age,
            now=req.system.now(),
        )
        wire_state = state.seal(req.system.sealer) + (f",ns={namespace}" if namespace else "")
        if len(wire_state.encode("utf-8")) > LIMITS["state"]:  # only an odd allowed URI gets here
            raise InvalidRequest(f"redirect_uri is too long: its state would exceed {LIMITS['state']} bytes")
        implicit = "id_token" in config.oidc_response_types
        scopes = ["openid"] + [s for s in role.oidc_scopes or [] if s and s != "openid"]
        params: dict[str, str] = {
            "client_id": config.oidc_client_id,
            "nonce": state.nonce,
            "redirect_uri": redirect_uri,
            "response_type": "id_token" if implicit else "code",
            "scope": " ".join(scopes),
            "state": wire_state,
        }
        if implicit:
            params["response_mode"] = "form_post"
        else:
            params["code_challenge"] = _b64url(hashlib.sha256(state.code_verifier.encode()).digest())
            params["code_challenge_method"] = "S256"
            if response_mode == "form_post":
                params["response_mode"] = "form_post"
        if max_age > 0:
            params["max_age"] = str(max_age)
        # client_id first (hvac checks "?client_id="), then Go's sorted order.
        ordered = [("client_id", params.pop("client_id"))] + sorted(params.items())
        sep = "&" if "?" in endpoint else "?"
        req.system.events.oidc_flow("started")
        return Response(data={"auth_url": endpoint + sep + urlencode(ordered)})

    return handler


# ---------------------------------------------------------------------------
# Redeeming a state


def _expired() -> InvalidRequest:
    return InvalidRequest(f"{_FAILED} {_EXPIRED}")


async def _redeem(backend: JWTAuthBackend, req: Request, state: FlowState, result: dict[str, Any] | None = None) -> None:
    """Record ``state`` as used (with a form_post's ``result``); then delete a few records
    of states long expired.

    :raises InvalidRequest: ``Expired or missing OAuth state.``: another callback, on any
        node, redeemed it first.
    """
    storage = req.require_storage()
    if not await redeem(storage, state, result):
        raise _expired()
    try:
        await sweep_used(storage, req.system.now(), limit=_SWEEP_PER_REDEMPTION)
    except Exception:  # the login succeeded; a later redemption sweeps again
        log.warning("oidc_sweep_failed", mount=req.system.mount_path, exc_info=True)


# ---------------------------------------------------------------------------
# oidc/callback


def _make_callback_get(backend: JWTAuthBackend) -> Handler:
    async def handler(req: Request, values: dict[str, Any]) -> Response:
        seen: dict[str, Any] = {}
        try:
            resp = await _callback(backend, req, values, seen)
        except PluginError as exc:
            # never the code, state or tokens
            refused(req, exc, "oidc_callback_failed", known_role=seen.get("role", ""), claims=seen.get("claims"))
            # a state that expired, was forged or was used already; else any other refusal
            req.system.events.oidc_flow("expired" if any(_EXPIRED in m for m in exc.messages) else "failed")
            raise
        req.system.events.oidc_flow("completed")
        return resp

    return handler


async def _callback(backend: JWTAuthBackend, req: Request, values: dict[str, Any], seen: dict[str, Any]) -> Response:
    """GET oidc/callback (docs/reference/vault-api.md 6.2), first failure wins. ``seen`` gets
    the role (once found) and the ID token's claims (once verified), for a refusal's record."""
    storage = req.require_storage()
    config = await backend.config(req)
    if config is None:
        raise InvalidRequest(f"{_FAILED} Could not load configuration")
    state = FlowState.open(req.system.sealer, values.get("state") or "", req.system.now())
    if state is None:
        raise _expired()
    if not state.client_nonce_matches(values.get("client_nonce") or ""):
        raise InvalidRequest("invalid client_nonce")
    role = await backend.role(storage, state.role)
    if role is None:
        raise InvalidRequest(f"{_FAILED} Role could not be found")
    seen["role"] = state.role
    ctx = LoginContext(backend, req, config, role, remote_addr=remote_addr(req))
    await run_checks(ctx, OIDC_REQUEST_CHECKS)  # before the IdP is asked anything
    if not config.is_oidc_flow:
        raise InvalidRequest(f"{_FAILED} OIDC login is not configured for this mount")

    warnings: list[str] = []
    record = await storage.get(state.used_key)
    if record is not None:
        # Redeemed already: by a form_post callback that left its verified result for
        # this GET (which takes it, once), or by an earlier login. Only a result left to
        # take costs a write (an anonymous replay of a used state costs a read).
        if not isinstance(record, dict) or "claims" not in record:
            raise _expired()
        result = await take_result(storage, state)
        if result is None or not isinstance(result.get("claims"), dict):
            raise _expired()
        claims: dict[str, Any] = result["claims"]
        warnings = [w for w in result.get("warnings") or [] if isinstance(w, str)]
    else:
        if values.get("error_description"):
            raise InvalidRequest(f"{_FAILED} The identity provider returned an error.")
        code = values.get("code") or ""
        if not code or code == NO_CODE:
            raise InvalidRequest(f"{_FAILED} No code or id_token received.")
        claims = await _code_flow(backend, req, config, role, state, code, warnings)
        await _redeem(backend, req, state)

    if role.verbose_oidc_logging:
        # Vault logs the ID token without its signature; its payload is these claims, so
        # only they are logged (a raw token is never logged). Before the checks: a refused
        # login shows what the IdP sent.
        log.debug("oidc_provider_response", mount=req.system.mount_path, role=state.role, claims=claims)
    ctx.claims = seen["claims"] = claims
    await run_checks(ctx, OIDC_CLAIM_CHECKS)
    identity = ctx.identity
    assert identity is not None  # every identity check passed
    resp = Response(auth=login_auth(role, state.role, identity, ctx.policies))
    for w in warnings:
        resp.add_warning(w)
    return resp


async def _code_flow(
    backend: JWTAuthBackend,
    req: Request,
    config: JWTConfig,
    role: Role,
    state: FlowState,
    code: str,
    warnings: list[str],
) -> dict[str, Any]:
    """Exchange ``code`` at the token endpoint, verify the ID token, merge userinfo."""
    implicit = "id_token" in config.oidc_response_types  # no PKCE was asked for
    try:
        discovery = await support.discovery(backend, req, config)
        tokens = await support.exchange_code(
            req, config, discovery, code,
            redirect_uri=state.redirect_uri,
            code_verifier="" if implicit else state.code_verifier,
        )
        raw_id_token = tokens.get("id_token")
        if not isinstance(raw_id_token, str) or not raw_id_token:
            raise InvalidRequest("no id_token found in token response")
        access_token = tokens.get("access_token") if isinstance(tokens.get("access_token"), str) else None
        claims = await support.verify_id_token(
            backend, req, config, discovery, raw_id_token,
            nonce=state.nonce,
            audiences=list(role.bound_audiences or []),
            max_age=state.max_age,
            access_token=access_token,
        )
    except PluginError as exc:
        raise InvalidRequest(f'{_FAILED} Error exchanging oidc code: "{"; ".join(exc.messages)}".') from None
    claims.pop("nonce", None)
    if access_token and isinstance(discovery.get("userinfo_endpoint"), str):
        await support.merge_userinfo(req, config, discovery, access_token, claims, warnings)
    return claims


class _TokenVerificationFailed(InvalidRequest):
    """The id_token a form_post carried failed verification (its own page title)."""


async def _implicit_flow(
    backend: JWTAuthBackend, req: Request, config: JWTConfig, role: Role, state: FlowState, id_token: str
) -> dict[str, Any]:
    """Verify the id_token a form_post carried; return its claims (never the raw token)."""
    try:
        discovery = await support.discovery(backend, req, config)
        claims = await support.verify_id_token(
            backend, req, config, discovery, id_token,
            nonce=state.nonce,
            audiences=list(role.bound_audiences or []),
            max_age=state.max_age,
            access_token=None,
        )
    except PluginError as exc:
        raise _TokenVerificationFailed(messages=exc.messages) from None
    claims.pop("nonce", None)
    return claims


async def _form_post(
    backend: JWTAuthBackend, req: Request, config: JWTConfig, state: FlowState, values: dict[str, Any]
) -> None:
    """Verify what the IdP posted (exchange the code, or check the id_token) and, when it
    passes, redeem the state with the verified claims for the GET that follows."""
    code, id_token = values.get("code") or "", values.get("id_token") or ""
    if values.get("error_description"):
        raise InvalidRequest(f"{_FAILED} The identity provider returned an error.")
    if not code and not id_token:
        return  # nothing to verify; the GET will say "No code or id_token received."
    storage = req.require_storage()
    if await storage.get(state.used_key) is not None:
        raise _expired()
    role = await backend.role(storage, state.role)
    if role is None:
        raise InvalidRequest(f"{_FAILED} Role could not be found")
    ctx = LoginContext(backend, req, config, role, remote_addr=remote_addr(req))
    await run_checks(ctx, OIDC_REQUEST_CHECKS)  # before the IdP is asked anything
    warnings: list[str] = []
    if code:
        claims = await _code_flow(backend, req, config, role, state, code, warnings)
    else:
        claims = await _implicit_flow(backend, req, config, role, state, id_token)
    await _redeem(backend, req, state, {"claims": claims, "warnings": warnings})


def _make_callback_post(backend: JWTAuthBackend) -> Handler:
    async def handler(req: Request, values: dict[str, Any]) -> Response:
        config = await backend.config(req)
        if config is None or config.oidc_response_mode != "form_post":
            raise UnsupportedOperation("OIDC form_post is not configured for this mount")
        raw_state = values.get("state") or ""
        state = FlowState.open(req.system.sealer, raw_state, req.system.now())
        if state is None:
            return _html(400, _FAILED, _EXPIRED)
        try:
            await _form_post(backend, req, config, state, values)
        except _TokenVerificationFailed as exc:
            refused(req, exc, "oidc_callback_failed")
            return _html(400, "Token verification failed.", "; ".join(exc.messages))
        except PluginError as exc:
            refused(req, exc, "oidc_callback_failed")
            detail = "; ".join(exc.messages).removeprefix(_FAILED).strip()
            return _html(exc.status if 400 <= exc.status < 500 else 400, _FAILED, detail)
        mount = parse_mount(state.redirect_uri)
        if not mount:
            return _html(400, _FAILED, "Invalid redirect path.")
        message = {"source": "oidc-callback", "path": mount, "code": NO_CODE, "state": raw_state}
        # JSON inside <script>: escape <, > and & so no value can close the script element.
        payload = json.dumps(message).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        script = f"window.opener.postMessage({payload}, window.origin);"
        body = (
            "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>OIDC callback</title></head>"
            f"<body><script>{script}</script></body></html>"
        )
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        return Response(
            status=200,
            content_type="text/html; charset=utf-8",
            raw_body=body.encode(),
            headers=_page_headers(f"default-src 'none'; script-src 'sha256-{digest}'"),
        )

    return handler


def _html(status: int, summary: str, detail: str) -> Response:
    """A small error page; every dynamic value is HTML-escaped (OpenBao CVE-2026-33758)."""
    body = (
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Vault login</title></head><body>"
        f"<h1>{html.escape(summary)}</h1><p>{html.escape(detail)}</p></body></html>"
    )
    return Response(
        status=status,
        content_type="text/html; charset=utf-8",
        raw_body=body.encode(),
        headers=_page_headers("default-src 'none'"),
    )


def _page_headers(csp: str) -> dict[str, str]:
    """Defence in depth for our HTML pages: no caching, no sniffing, a strict CSP."""
    return {
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": csp,
        "Referrer-Policy": "no-referrer",
    }


# ---------------------------------------------------------------------------
# Path table


def paths(backend: JWTAuthBackend) -> list[PathSpec]:
    """The ``oidc/auth_url`` and ``oidc/callback`` paths for ``backend``."""
    auth_url_fields = FieldSet(
        {
            "role": _bounded("role", FieldType.LOWER_STRING, "The role to log in with (default: default_role)."),
            "redirect_uri": _bounded(
                "redirect_uri", FieldType.STRING, "Where the IdP sends the browser back to.", required=True
            ),
            "client_nonce": _bounded(
                "client_nonce", FieldType.STRING, "Optional client-chosen value the callback must repeat."
            ),
        }
    )
    callback_fields = FieldSet(
        {
            "state": _bounded("state", FieldType.STRING, "The state from the authorization response."),
            "code": _bounded("code", FieldType.STRING, "The authorization code."),
            "id_token": _bounded(
                "id_token", FieldType.STRING, "The ID token (implicit flow, form_post).", sensitive=True
            ),
            "client_nonce": _bounded("client_nonce", FieldType.STRING, "The client_nonce given to auth_url."),
            "error_description": _bounded(
                "error_description",
                FieldType.STRING,
                "The IdP's error text (OAuth 2.0 error response): the login fails; the text is not echoed.",
            ),
        }
    )
    return [
        PathSpec(
            pattern=r"oidc/auth_url",
            fields=auth_url_fields,
            operations={Operation.UPDATE: _make_auth_url(backend)},
            summary="Start an OIDC login: get the IdP authorization URL.",
            unauthenticated=True,
        ),
        PathSpec(
            pattern=r"oidc/callback",
            fields=callback_fields,
            operations={
                Operation.READ: _make_callback_get(backend),
                Operation.UPDATE: _make_callback_post(backend),
            },
            summary="Finish an OIDC login: exchange the code and issue a token.",
            unauthenticated=True,
            issues_token=True,
        ),
    ]
