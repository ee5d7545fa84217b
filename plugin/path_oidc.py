"""The OIDC browser flow: ``oidc/auth_url`` and ``oidc/callback`` (docs/reference/vault-api.md section 6).

State (nonce, PKCE verifier, role, redirect URI) lives in the mount's storage under
``oidc/state/<state>`` for 10 minutes, so any node of a cluster can finish a flow that
another node started (docs/vault-differences.md row 7); the callback takes it with one atomic update, so a
state is used exactly once. The ID token checks follow cap/go-oidc (docs/reference/vault-api.md 6.3); the
role's checks (bound CIDRs, subject, user claim, claim mappings, groups, bound claims) are
the JWT login's own validators (``path_login.OIDC_REQUEST_CHECKS``/``OIDC_CLAIM_CHECKS``),
with the same reason codes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import ipaddress
import json
import re
import secrets
import string
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from plugin import oidc_flow as support
from plugin.errors import InvalidRequest, PluginError, UnsupportedOperation, UpstreamError
from plugin.framework import Handler, Operation, PathSpec, Request, Response
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
from plugin.schema import Field, FieldSet, FieldType

if TYPE_CHECKING:
    from plugin.backend import JWTAuthBackend

__all__ = ["paths", "valid_redirect", "parse_mount", "STATE_PREFIX", "STATE_TTL"]

STATE_PREFIX = "oidc/state/"
STATE_TTL = 600  # Vault's oidcRequestTimeout
_BASE62 = string.ascii_letters + string.digits
_STATE_RE = re.compile(r"st_[A-Za-z0-9]{20}")
_SWEEP_INTERVAL = 60.0
_SWEEP_MAX = 500
_FAILED = "Vault login failed."


def _rand62(n: int) -> str:
    return "".join(secrets.choice(_BASE62) for _ in range(n))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# ---------------------------------------------------------------------------
# Redirect URIs


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def valid_redirect(uri: str, allowed: list[str]) -> bool:
    """Vault's ``validRedirect``: loopback hosts ignore the port, others need a
    case-insensitive full match. An unparseable URI is never valid."""
    try:
        parsed = urlsplit(uri)
        host = parsed.hostname or ""
        parsed.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    if not _is_loopback(host):
        low = uri.lower()
        return any(low == a.lower() for a in allowed)
    want = (parsed.scheme, host, parsed.path, parsed.query)
    for candidate in allowed:
        try:
            c = urlsplit(candidate)
            if (c.scheme, c.hostname or "", c.path, c.query) == want:
                return True
        except ValueError:
            continue
    return False


def parse_mount(redirect_uri: str) -> str:
    """The mount named in ``.../v1/auth/<mount>/...`` (first segment), or ``""``."""
    try:
        path = urlsplit(redirect_uri).path
    except ValueError:
        return ""
    parts = path.split("/")
    for i in range(len(parts) - 2):
        if parts[i] == "v1" and parts[i + 1] == "auth" and parts[i + 2]:
            return parts[i + 2]
    return ""


def _split_namespace(uri: str) -> tuple[str, str]:
    """Remove a ``namespace`` query parameter from ``uri``; return (uri, namespace)."""
    parts = urlsplit(uri)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ns = [v for k, v in query if k == "namespace"]
    if not ns:
        return uri, ""
    rest = urlencode([(k, v) for k, v in query if k != "namespace"])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, rest, parts.fragment)), ns[0]


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
                redirect_uri, namespace = _split_namespace(redirect_uri)
            except ValueError:
                raise InvalidRequest(f"redirect_uri {json.dumps(redirect_uri[:512])} could not be parsed") from None
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

        state_id = "st_" + _rand62(20)
        nonce = "n_" + _rand62(20)
        implicit = "id_token" in config.oidc_response_types
        scopes = ["openid"] + [s for s in role.oidc_scopes or [] if s and s != "openid"]
        params: dict[str, str] = {
            "client_id": config.oidc_client_id,
            "nonce": nonce,
            "redirect_uri": redirect_uri,
            "response_type": "id_token" if implicit else "code",
            "scope": " ".join(scopes),
            "state": state_id + (f",ns={namespace}" if namespace else ""),
        }
        verifier = ""
        if implicit:
            params["response_mode"] = "form_post"
        else:
            verifier = _rand62(43)
            params["code_challenge"] = _b64url(hashlib.sha256(verifier.encode()).digest())
            params["code_challenge_method"] = "S256"
            if response_mode == "form_post":
                params["response_mode"] = "form_post"
        max_age = role.max_age
        if max_age > 0:
            params["max_age"] = str(max_age)

        now = req.system.now()
        backend.oidc_states.admit(state_id, now)  # 429 beyond the per-mount cap
        await storage.put(
            STATE_PREFIX + state_id,
            {
                "role": role_name,
                "redirect_uri": redirect_uri,
                "nonce": nonce,
                "code_verifier": verifier,
                "client_nonce": values.get("client_nonce") or "",
                "namespace": namespace,
                "max_age": max_age,
                "expires_at": now + STATE_TTL,
                "code": "",
                "id_token_claims": None,
            },
        )
        req.system.events.oidc_flow("started")
        await _maybe_sweep(backend, req, now)
        # client_id first (hvac checks "?client_id="), then Go's sorted order.
        ordered = [("client_id", params.pop("client_id"))] + sorted(params.items())
        sep = "&" if "?" in endpoint else "?"
        return Response(data={"auth_url": endpoint + sep + urlencode(ordered)})

    return handler


async def _maybe_sweep(backend: JWTAuthBackend, req: Request, now: float) -> None:
    """Delete expired states now and then, so abandoned flows do not pile up in storage."""
    if now - backend.oidc_last_sweep < _SWEEP_INTERVAL:
        return
    backend.oidc_last_sweep = now
    storage = req.require_storage()
    names = await storage.list(STATE_PREFIX)

    dropped: list[bool] = []

    def drop_expired(old: Any) -> Any:
        dropped.clear()  # a retried transaction calls this again: the last call counts
        if isinstance(old, dict) and float(old.get("expires_at", 0)) > now:
            return old
        dropped.append(old is not None)
        return None

    async def drop(key: str) -> None:
        await storage.update(key, drop_expired)  # re-checked atomically
        if dropped and dropped[0]:
            req.system.events.oidc_flow("expired")

    for state_id in backend.oidc_states.take_expired():  # ours: no listing needed
        await drop(STATE_PREFIX + state_id)
    for name in names[:_SWEEP_MAX]:
        if name.endswith("/"):
            continue
        value = await storage.get(STATE_PREFIX + name)
        if isinstance(value, dict) and float(value.get("expires_at", 0)) > now:
            continue  # pending: no write
        await drop(STATE_PREFIX + name)


# ---------------------------------------------------------------------------
# State


def _state_id(raw: str) -> str | None:
    """The storage id inside a callback ``state`` (``st_x`` or ``st_x,ns=y``), or None."""
    base = raw.split(",", 1)[0]
    return base if _STATE_RE.fullmatch(base) else None


async def _take_state(req: Request, raw: str) -> dict[str, Any] | None:
    """Atomically remove the state and return it, if it existed and had not expired.

    Exactly one concurrent caller receives the value: the removal happens inside
    ``storage.update``, which serialises updates of one key.
    """
    state_id = _state_id(raw)
    if state_id is None:
        return None
    box: dict[str, Any] = {}

    def take(old: Any) -> None:
        box["old"] = old  # a retried transaction calls this again; the last call counts
        return None

    await req.require_storage().update(STATE_PREFIX + state_id, take)
    old = box.get("old")
    if not isinstance(old, dict) or float(old.get("expires_at", 0)) <= req.system.now():
        return None
    return old


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
            req.system.events.oidc_flow("failed")
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
    state = await _take_state(req, values.get("state") or "")
    backend.oidc_states.discard(_state_id(values.get("state") or ""))
    if state is None:
        raise InvalidRequest(f"{_FAILED} Expired or missing OAuth state.")
    expected_nonce = state.get("client_nonce") or ""
    if expected_nonce:
        got = values.get("client_nonce") or ""
        if not hmac.compare_digest(expected_nonce.encode(), got.encode()):
            raise InvalidRequest("invalid client_nonce")
    role_name = state["role"]
    role = await backend.role(storage, role_name)
    if role is None:
        raise InvalidRequest(f"{_FAILED} Role could not be found")
    seen["role"] = role_name
    ctx = LoginContext(backend, req, config, role, remote_addr=remote_addr(req))
    await run_checks(ctx, OIDC_REQUEST_CHECKS)  # before the IdP is asked anything
    if not config.is_oidc_flow:
        raise InvalidRequest(f"{_FAILED} OIDC login is not configured for this mount")

    code = values.get("code") or ""
    if code == "no_code":
        code = state.get("code") or ""
    stored_claims = state.get("id_token_claims")
    warnings: list[str] = []
    if code:
        claims = await _code_flow(backend, req, config, role, state, code, warnings)
    elif isinstance(stored_claims, dict):
        claims = stored_claims
    else:
        raise InvalidRequest(f"{_FAILED} No code or id_token received.")

    ctx.claims = seen["claims"] = claims
    await run_checks(ctx, OIDC_CLAIM_CHECKS)
    identity = ctx.identity
    assert identity is not None  # every identity check passed
    resp = Response(auth=login_auth(role, role_name, identity))
    for w in warnings:
        resp.add_warning(w)
    return resp


async def _code_flow(
    backend: JWTAuthBackend,
    req: Request,
    config: JWTConfig,
    role: Role,
    state: dict[str, Any],
    code: str,
    warnings: list[str],
) -> dict[str, Any]:
    """Exchange ``code`` at the token endpoint, verify the ID token, merge userinfo."""
    try:
        discovery = await support.discovery(backend, req, config)
        tokens = await support.exchange_code(req, config, discovery, code, state)
        raw_id_token = tokens.get("id_token")
        if not isinstance(raw_id_token, str) or not raw_id_token:
            raise InvalidRequest("no id_token found in token response")
        access_token = tokens.get("access_token") if isinstance(tokens.get("access_token"), str) else None
        claims = await support.verify_id_token(
            backend, req, config, discovery, raw_id_token,
            nonce=state["nonce"],
            audiences=list(role.bound_audiences or []),
            max_age=int(state.get("max_age") or 0),
            access_token=access_token,
        )
    except PluginError as exc:
        raise InvalidRequest(f'{_FAILED} Error exchanging oidc code: "{"; ".join(exc.messages)}".') from None
    claims.pop("nonce", None)
    if access_token and isinstance(discovery.get("userinfo_endpoint"), str):
        await support.merge_userinfo(req, config, discovery, access_token, claims, warnings)
    return claims


def _make_callback_post(backend: JWTAuthBackend) -> Handler:
    async def handler(req: Request, values: dict[str, Any]) -> Response:
        storage = req.require_storage()
        config = await backend.config(req)
        if config is None or config.oidc_response_mode != "form_post":
            raise UnsupportedOperation("OIDC form_post is not configured for this mount")
        state_id = _state_id(values.get("state") or "")
        now = req.system.now()
        pending = await storage.get(STATE_PREFIX + state_id) if state_id else None
        if not state_id or not isinstance(pending, dict) or float(pending.get("expires_at", 0)) <= now:
            return _html(400, f"{_FAILED}", "Expired or missing OAuth state.")
        update: dict[str, Any] = {}
        if values.get("code"):
            update["code"] = values["code"]
        if values.get("id_token"):
            # Verify now and keep only the verified claims: raw JWTs are never stored.
            role = await backend.role(storage, pending["role"])
            try:
                discovery = await support.discovery(backend, req, config)
                claims = await support.verify_id_token(
                    backend, req, config, discovery, values["id_token"],
                    nonce=pending["nonce"],
                    audiences=list(role.bound_audiences or []) if role else [],
                    max_age=int(pending.get("max_age") or 0),
                    access_token=None,
                )
            except PluginError as exc:
                return _html(400, "Token verification failed.", "; ".join(exc.messages))
            claims.pop("nonce", None)
            update["id_token_claims"] = claims

        def stash(old: Any) -> Any:
            if not isinstance(old, dict) or float(old.get("expires_at", 0)) <= now:
                return old  # taken or expired meanwhile: leave it alone
            return {**old, **update, "expires_at": now + STATE_TTL}

        await storage.update(STATE_PREFIX + state_id, stash)
        mount = parse_mount(pending.get("redirect_uri", ""))
        if not mount:
            return _html(400, f"{_FAILED}", "Invalid redirect path.")
        message = {"source": "oidc-callback", "path": mount, "code": "no_code", "state": values.get("state", "")}
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
            "role": Field(FieldType.LOWER_STRING, "The role to log in with (default: default_role)."),
            "redirect_uri": Field(FieldType.STRING, "Where the IdP sends the browser back to.", required=True),
            "client_nonce": Field(FieldType.STRING, "Optional client-chosen value the callback must repeat."),
        }
    )
    callback_fields = FieldSet(
        {
            "state": Field(FieldType.STRING, "The state from the authorization response."),
            "code": Field(FieldType.STRING, "The authorization code."),
            "id_token": Field(FieldType.STRING, "The ID token (implicit flow, form_post).", sensitive=True),
            "client_nonce": Field(FieldType.STRING, "The client_nonce given to auth_url."),
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
        ),
    ]
