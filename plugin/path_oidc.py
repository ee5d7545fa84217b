"""The OIDC flow's paths: ``oidc/auth_url``, ``oidc/callback`` and ``oidc/poll``
(docs/reference/vault-api.md section 6; the poll is OpenBao's).

``oidc/auth_url`` needs no token and stores nothing: the flow's state (role, redirect URI,
expiry, the secret its nonce and PKCE verifier derive from, the callback mode, a device
grant's device_code) is sealed into the ``state`` parameter itself
(``plugin/oidc_state.py``), so any node of a cluster can finish a flow that another node
started (docs/vault-differences.md row 7). A callback records the state as used, once,
after the code exchange and the ID token checks have passed. The ID token checks follow
cap/go-oidc (docs/reference/vault-api.md 6.3); the role's checks (bound CIDRs, subject,
distributed claims, user claim, claim mappings, groups, bound claims) are the JWT login's
own validators (``path_login.OIDC_REQUEST_CHECKS``/``OIDC_CLAIM_CHECKS``), with the same
reason codes; a refusal names the role and the token's ``iss``/``sub`` for the audit log
(``path_login.refused``, also for the refusals the callback answers with a page), and each
flow's stages are reported to the mount's ``Events`` (metrics). The role's ``callback_mode`` picks where the IdP's answer goes: the caller's
redirect URI (``client``, this module), authmount's own callback page or the device grant
(``direct``, ``device``: ``plugin/oidc_poll.py``). Every value an anonymous caller sends has
a byte limit (``LIMITS``), checked when the fields are parsed, before anything else.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import structlog

from plugin import oidc_flow as support
from plugin.errors import InvalidRequest, PluginError, UnsupportedOperation, UpstreamError
from plugin.framework import Handler, Operation, PathSpec, Request, Response
from plugin.oidc_login import (
    EXPIRED,
    FAILED,
    FlowResult,
    Seen,
    TokenVerificationFailed,
    code_flow,
    expired,
    finish,
    flow_context,
    flow_step,
    implicit_flow,
    redeem_state,
    refusal_page,
    result_from_record,
    stored_result,
)
from plugin.oidc_pages import error_page, relay_page
from plugin.oidc_poll import NO_CODE, device_auth_url, direct_auth_fields, direct_callback, make_poll
from plugin.oidc_redirect import parse_mount, split_namespace, valid_redirect
from plugin.oidc_state import MAX_WIRE_BYTES, FlowState, take_result
from plugin.path_config import JWTConfig
from plugin.path_login import remote_addr
from plugin.schema import Field, FieldSet, FieldType, coerce

if TYPE_CHECKING:
    from plugin.backend import JWTAuthBackend

__all__ = ["paths", "valid_redirect", "parse_mount", "LIMITS", "NO_CODE"]

log = structlog.get_logger("plugin.path_oidc")

#: Byte limits (UTF-8) of the values anonymous callers send to ``oidc/auth_url``,
#: ``oidc/callback`` and ``oidc/poll``: a longer value is refused with 400 before any other
#: work. ``namespace`` is the ``namespace`` query parameter split from ``redirect_uri``; a
#: ``state`` is at most what ``auth_url`` issues (``redirect_uri`` or a device_code
#: sealed, plus ``,ns=``).
LIMITS: dict[str, int] = {
    "role": 512,
    "redirect_uri": 2048,
    "client_nonce": 256,
    "namespace": 256,
    "state": MAX_WIRE_BYTES,
    "code": 4096,
    "id_token": 16384,  # jose_verify.parse_token's own limit
    "error": 256,
    "error_description": 2048,
    "error_uri": 2048,
    "confirmation": 16,
}


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
        role = await backend.role(storage, role_name)
        if role is None:
            if not redirect_uri:
                raise InvalidRequest("missing redirect_uri")
            raise InvalidRequest(f'role "{role_name}" could not be found')
        mode = role.callback_mode
        client_nonce = values.get("client_nonce") or ""
        if mode in ("direct", "device") and not client_nonce:
            raise InvalidRequest("missing client_nonce")
        if mode == "device":  # no redirect: the user types a code at the IdP
            resp = await device_auth_url(backend, req, config, role, role_name, client_nonce)
            req.system.events.oidc_flow("started")
            return resp
        if not redirect_uri:
            raise InvalidRequest("missing redirect_uri")

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
        direct = mode == "direct"
        state = FlowState.new(
            role=role_name,
            redirect_uri=redirect_uri,
            client_nonce=client_nonce,
            max_age=max_age,
            now=req.system.now(),
            mode="direct" if direct else "",
            requester=(remote_addr(req) or "") if direct else "",
        )
        sealed = state.seal(req.system.sealer)
        wire_state = sealed + (f",ns={namespace}" if namespace else "")
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
        data: dict[str, Any] = {"auth_url": endpoint + sep + urlencode(ordered)}
        if direct:  # the client polls with the state (OpenBao: without the namespace suffix)
            data.update(direct_auth_fields(role, sealed))
        req.system.events.oidc_flow("started")
        return Response(data=data)

    return handler


# ---------------------------------------------------------------------------
# oidc/callback


def _make_callback_get(backend: JWTAuthBackend) -> Handler:
    async def handler(req: Request, values: dict[str, Any]) -> Response:
        raw_state = values.get("state") or ""
        state = FlowState.open(req.system.sealer, raw_state, req.system.now())
        if state is not None and state.mode == "direct":
            return await direct_callback(backend, req, state, raw_state, values)  # an HTML page
        seen = Seen()
        return await flow_step(req, "oidc_callback_failed", seen, _callback(backend, req, state, values, seen))

    return handler


async def _callback(
    backend: JWTAuthBackend, req: Request, state: FlowState | None, values: dict[str, Any], seen: Seen
) -> Response:
    """GET oidc/callback (docs/reference/vault-api.md 6.2), first failure wins. ``seen`` gets
    the role (once found) and the checks' context (its claims), for a refusal's record."""
    storage = req.require_storage()
    config = await backend.config(req)
    if config is None:
        raise InvalidRequest(f"{FAILED} Could not load configuration")
    if state is None:
        raise expired()
    if state.mode == "device":
        raise InvalidRequest(f"{FAILED} This login has no callback: poll oidc/poll (callback_mode device).")
    if not state.client_nonce_matches(values.get("client_nonce") or ""):
        raise InvalidRequest("invalid client_nonce")
    ctx = await flow_context(backend, req, config, state, seen)
    role = ctx.role
    if not config.is_oidc_flow:
        raise InvalidRequest(f"{FAILED} OIDC login is not configured for this mount")

    record = await storage.get(state.used_key)
    if record is not None:
        # Redeemed already: by a form_post callback that left its verified result for
        # this GET (which takes it, once), or by an earlier login. Only a result left to
        # take costs a write (an anonymous replay of a used state costs a read).
        if not isinstance(record, dict) or "claims" not in record:
            raise expired()
        taken = await take_result(storage, state)
        if taken is None:
            raise expired()
        result = result_from_record(req, state, taken)
    else:
        if values.get("error") or values.get("error_description"):
            raise InvalidRequest(f"{FAILED} The identity provider returned an error.")
        code = values.get("code") or ""
        if not code or code == NO_CODE:
            raise InvalidRequest(f"{FAILED} No code or id_token received.")
        result = await code_flow(backend, req, config, role, state, code)
        await redeem_state(req, state)
    return await finish(ctx, state.role, result)


async def _form_post(
    backend: JWTAuthBackend, req: Request, config: JWTConfig, state: FlowState, values: dict[str, Any], seen: Seen
) -> None:
    """Verify what the IdP posted (exchange the code, or check the id_token) and, when it
    passes, redeem the state with the verified claims for the GET that follows (``seen``
    gets the role once found, for a refusal's record)."""
    code, id_token = values.get("code") or "", values.get("id_token") or ""
    if values.get("error") or values.get("error_description"):
        raise InvalidRequest(f"{FAILED} The identity provider returned an error.")
    if not code and not id_token:
        return  # nothing to verify; the GET will say "No code or id_token received."
    storage = req.require_storage()
    if await storage.get(state.used_key) is not None:
        raise expired()
    role = (await flow_context(backend, req, config, state, seen)).role
    result: FlowResult
    if code:
        result = await code_flow(backend, req, config, role, state, code)
    else:
        result = await implicit_flow(backend, req, config, role, state, id_token)
    await redeem_state(req, state, stored_result(req, role, state, result))


def _make_callback_post(backend: JWTAuthBackend) -> Handler:
    async def handler(req: Request, values: dict[str, Any]) -> Response:
        config = await backend.config(req)
        if config is None or config.oidc_response_mode != "form_post":
            raise UnsupportedOperation("OIDC form_post is not configured for this mount")
        raw_state = values.get("state") or ""
        state = FlowState.open(req.system.sealer, raw_state, req.system.now())
        if state is None:
            return refusal_page(req, expired(), Seen(), error_page(400, FAILED, EXPIRED))
        if state.mode == "direct":
            return await direct_callback(backend, req, state, raw_state, values)
        seen = Seen()
        try:
            await _form_post(backend, req, config, state, values, seen)
        except TokenVerificationFailed as exc:
            page = error_page(400, "Token verification failed.", "; ".join(exc.messages))
            return refusal_page(req, exc, seen, page)
        except PluginError as exc:
            detail = "; ".join(exc.messages).removeprefix(FAILED).strip()
            page = error_page(exc.status if 400 <= exc.status < 500 else 400, FAILED, detail)
            return refusal_page(req, exc, seen, page)
        mount = parse_mount(state.redirect_uri)
        if not mount:
            return error_page(400, FAILED, "Invalid redirect path.")
        return relay_page({"source": "oidc-callback", "path": mount, "code": NO_CODE, "state": raw_state})

    return handler


# ---------------------------------------------------------------------------
# Path table


def paths(backend: JWTAuthBackend) -> list[PathSpec]:
    """The ``oidc/auth_url``, ``oidc/callback`` and ``oidc/poll`` paths for ``backend``."""
    auth_url_fields = FieldSet(
        {
            "role": _bounded("role", FieldType.LOWER_STRING, "The role to log in with (default: default_role)."),
            "redirect_uri": _bounded(
                "redirect_uri", FieldType.STRING,
                "Where the IdP sends the browser back to (not used by roles with callback_mode device).",
            ),
            "client_nonce": _bounded(
                "client_nonce", FieldType.STRING,
                "A client-chosen value the callback (or, with callback_mode direct or device, oidc/poll) must "
                "repeat; required with callback_mode direct and device.",
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
            "error": _bounded(
                "error", FieldType.STRING,
                "The IdP's error code (OAuth 2.0 error response): the login fails.",
            ),
            "error_description": _bounded(
                "error_description",
                FieldType.STRING,
                "The IdP's error text (OAuth 2.0 error response): the login fails; the text is not echoed, "
                "except escaped on the callback page of callback_mode direct.",
            ),
            "error_uri": _bounded("error_uri", FieldType.STRING, "The IdP's error page (ignored)."),
            "confirmation": _bounded(
                "confirmation", FieldType.STRING,
                "Set by the confirmation page of callback_mode direct when the user confirms the login.",
            ),
        }
    )
    poll_fields = FieldSet(
        {
            "state": _bounded("state", FieldType.STRING, "The state oidc/auth_url answered."),
            "client_nonce": _bounded("client_nonce", FieldType.STRING, "The client_nonce given to oidc/auth_url."),
        }
    )
    return [
        PathSpec(
            pattern=r"oidc/auth_url",
            fields=auth_url_fields,
            operations={Operation.UPDATE: _make_auth_url(backend)},
            summary="Start an OIDC login: get the IdP authorization URL (or, callback_mode device, "
            "the device verification URL).",
            unauthenticated=True,
        ),
        PathSpec(
            pattern=r"oidc/callback",
            fields=callback_fields,
            operations={
                Operation.READ: _make_callback_get(backend),
                Operation.UPDATE: _make_callback_post(backend),
            },
            summary="Finish an OIDC login: exchange the code and issue a token (callback_mode direct: "
            "the user's page; the token goes to oidc/poll).",
            unauthenticated=True,
            issues_token=True,
        ),
        PathSpec(
            pattern=r"oidc/poll",
            fields=poll_fields,
            operations={Operation.UPDATE: make_poll(backend)},
            summary="Finish an OIDC login of callback_mode direct or device: 400 authorization_pending "
            "(or slow_down) until the user is done, then the login, once.",
            unauthenticated=True,
            issues_token=True,
        ),
    ]
