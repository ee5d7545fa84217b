"""OIDC login from a terminal with no browser on its machine: the role's ``callback_mode``
``device`` and ``direct`` and the ``oidc/poll`` path, with OpenBao's API, so `bao login
-method=oidc callbackmode=device|direct` works unmodified.

- ``device``: ``oidc/auth_url`` asks the IdP for a device authorization (RFC 8628) and
  answers its ``verification_uri_complete`` (or ``verification_uri`` and ``user_code``),
  the ``state`` (the IdP's ``device_code`` sealed in it: nothing is stored) and
  ``poll_interval``. ``oidc/poll`` asks the token endpoint each time: 400
  ``authorization_pending`` or ``slow_down`` until the user is done, then the login, once.
- ``direct``: the IdP redirects the user's browser to authmount's own ``oidc/callback``.
  That page asks the user to confirm first (unless the role sets
  ``oidc_disable_confirmation``), showing the address and role that started the login, so
  a user who follows someone else's link does not hand that person a token (OpenBao's
  CVE for this mode). Once confirmed, the callback exchanges the code, runs the role's
  checks and stores the verified result (or, after a successful exchange, the failure)
  with the used-state record; ``oidc/poll`` answers ``authorization_pending`` until then,
  and then takes the result, once. Every value a page shows is escaped
  (``plugin/oidc_pages.py``).

``oidc/poll`` needs the ``client_nonce`` given to ``oidc/auth_url`` (required in these
modes): the state alone, which travels in URLs, is not enough to collect the token. The
role's ``token_bound_cidrs`` are checked against the poller, who receives the token.

A refusal is recorded once (``path_login.refused``: the log line, the audit log's reason
code, the login metrics; ``Events.oidc_flow``): by the callback page when the flow ends
there (the IdP's error, a code the IdP did not take, a used state), by ``oidc/poll`` when
the page stored it for the poller (a check the verified login failed: the stored record
keeps the reason code and the token's ``iss``/``sub``). ``authorization_pending`` and
``slow_down`` are no refusal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from plugin import oidc_flow as support
from plugin.errors import InvalidRequest, PluginError, UpstreamError
from plugin.framework import Handler, Request, Response
from plugin.oidc_login import (
    EXPIRED,
    FAILED,
    Seen,
    exchange,
    expired,
    finish,
    flow_context,
    flow_step,
    redeem_state,
    refusal_page,
    result_from_record,
    stored_result,
    verify_tokens,
)
from plugin.oidc_pages import confirm_page, error_page, success_page
from plugin.oidc_state import MAX_WIRE_BYTES, STATE_TTL, FlowState, has_result, take_result
from plugin.path_config import JWTConfig
from plugin.path_login import LoginContext, refused, remote_addr
from plugin.path_role import Role

if TYPE_CHECKING:
    from plugin.backend import JWTAuthBackend

__all__ = ["DEFAULT_POLL_INTERVAL", "PENDING", "SLOW_DOWN", "device_auth_url", "direct_auth_fields", "direct_callback", "make_poll"]

#: Seconds between polls when neither the role nor the IdP says (OpenBao's default).
DEFAULT_POLL_INTERVAL = 5
PENDING = "authorization_pending"
SLOW_DOWN = "slow_down"
#: What ``oidc/poll`` answers while the user has not finished: 400 with exactly this text
#: (the CLI matches the end of the error), logged by no one.
_WAITING = ([PENDING], [SLOW_DOWN])
NO_CODE = "no_code"


# ---------------------------------------------------------------------------
# oidc/auth_url


async def device_auth_url(
    backend: JWTAuthBackend, req: Request, config: JWTConfig, role: Role, role_name: str, client_nonce: str
) -> Response:
    """``oidc/auth_url`` of a ``device`` role: start a device authorization at the IdP.

    :raises InvalidRequest: the IdP has no device endpoint or refused.
    :raises UpstreamError: the IdP's answer is unusable.
    """
    doc = await support.discovery(backend, req, config)
    scopes = ["openid"] + [s for s in role.oidc_scopes or [] if s and s != "openid"]
    device = await support.authorize_device(req, config, doc, scopes)
    state = FlowState.new(
        role=role_name,
        redirect_uri="",
        client_nonce=client_nonce,
        max_age=0,
        now=req.system.now(),
        mode="device",
        device_code=device.device_code,
        ttl=device.expires_in or STATE_TTL,
    )
    wire = state.seal(req.system.sealer)
    if len(wire.encode("utf-8")) > MAX_WIRE_BYTES:
        raise UpstreamError("the IdP's device_code is too long to travel in the state")
    interval = role.poll_interval or device.interval or DEFAULT_POLL_INTERVAL
    data: dict[str, Any] = {
        "auth_url": device.verification_uri_complete or device.verification_uri,
        "state": wire,
        "poll_interval": str(interval),  # a string, as OpenBao's CLI reads it
    }
    if not device.verification_uri_complete:
        data["user_code"] = device.user_code
    return Response(data=data)


def direct_auth_fields(role: Role, wire_state: str) -> dict[str, str]:
    """What ``oidc/auth_url`` of a ``direct`` role answers besides ``auth_url``."""
    return {"state": wire_state, "poll_interval": str(role.poll_interval or DEFAULT_POLL_INTERVAL)}


# ---------------------------------------------------------------------------
# The direct mode's callback page


def _detail(exc: PluginError) -> str:
    return "; ".join(exc.messages).removeprefix(FAILED).strip() or "permission denied"


async def direct_callback(
    backend: JWTAuthBackend, req: Request, state: FlowState, raw_state: str, values: dict[str, Any]
) -> Response:
    """The ``oidc/callback`` page of a ``direct`` login (GET, or a form_post's POST): always
    an HTML page for the user's browser, never the token (the poller gets it)."""
    storage = req.require_storage()
    config = await backend.config(req)
    role = await backend.role(storage, state.role)
    seen = Seen()

    def refusal(detail: str, exc: PluginError | None = None) -> Response:
        """The flow ends on this page: ``exc`` (else ``detail`` as the error) recorded."""
        exc = exc or InvalidRequest(f"{FAILED} {detail}")
        return refusal_page(req, exc, seen, error_page(400, FAILED, detail))

    if config is None or not config.is_oidc_flow:
        return refusal("OIDC login is not configured for this mount.")
    if role is None:
        return refusal("Role could not be found.")
    seen.role = state.role
    if await storage.get(state.used_key) is not None:
        return refusal(EXPIRED, expired())
    error, description = values.get("error") or "", values.get("error_description") or ""
    if error or description:
        detail = "The identity provider returned an error" + "".join(f": {v}" for v in (error, description) if v)
        return refusal(detail + ".")
    code = values.get("code") or ""
    if not code or code == NO_CODE:
        return refusal("No code or id_token received.")
    if not role.oidc_disable_confirmation and not values.get("confirmation"):
        return confirm_page(state.requester, state.role, {"state": raw_state, "code": code})
    try:
        tokens = await exchange(backend, req, config, state, code)
    except PluginError as exc:  # nothing is written: the code was no real login
        return refusal(_detail(exc), exc)
    # The code was real: from here on the outcome is recorded for the poller, either way
    # (logged here too; the poll's refusal is the one the audit log and the metrics count).
    # The checks as the poll will run them (its caller receives the token, bound to its address).
    ctx = seen.ctx = LoginContext(backend, req, config, role, remote_addr=remote_addr(req), check_cidrs=False)
    failure: PluginError | None = None
    try:
        result = await verify_tokens(backend, req, config, role, tokens, nonce=state.nonce, max_age=state.max_age)
        await finish(ctx, state.role, result)
        record = stored_result(req, role, state, result)  # the claims as the checks resolved them
    except PluginError as exc:
        refused(req, exc, "oidc_callback_failed", **seen.facts())
        failure = exc
        record = {"error": "; ".join(exc.messages), "check": exc.check or ""}
        record.update((k, v) for k, v in (exc.login or {}).items() if k in ("iss", "sub"))
    try:
        await redeem_state(req, state, record)
    except InvalidRequest:
        return refusal(EXPIRED, expired())
    if failure is not None:
        return error_page(400, FAILED, _detail(failure))
    return success_page()


# ---------------------------------------------------------------------------
# oidc/poll


def make_poll(backend: JWTAuthBackend) -> Handler:
    """The ``oidc/poll`` handler."""

    async def handler(req: Request, values: dict[str, Any]) -> Response:
        seen = Seen()
        return await flow_step(req, "oidc_poll_failed", seen, _poll(backend, req, values, seen), waiting=_WAITING)

    return handler


async def _poll(backend: JWTAuthBackend, req: Request, values: dict[str, Any], seen: Seen) -> Response:
    storage = req.require_storage()
    config = await backend.config(req)
    if config is None:
        raise InvalidRequest(f"{FAILED} Could not load configuration")
    state = FlowState.open(req.system.sealer, values.get("state") or "", req.system.now())
    if state is None:
        raise expired()
    if state.mode not in ("direct", "device"):
        raise InvalidRequest(f"{FAILED} This login is not polled: its callback finishes it (callback_mode client).")
    if not state.client_nonce_hash or not state.client_nonce_matches(values.get("client_nonce") or ""):
        raise InvalidRequest("invalid client_nonce")
    ctx = await flow_context(backend, req, config, state, seen)  # the poller receives the token
    role = ctx.role
    if not config.is_oidc_flow:
        raise InvalidRequest(f"{FAILED} OIDC login is not configured for this mount")
    record = await storage.get(state.used_key)
    if state.mode == "device":
        if record is not None:
            raise expired()
        return await _poll_device(backend, req, config, role, state, ctx)
    if record is None:
        raise InvalidRequest(PENDING)
    if not has_result(record):
        raise expired()
    taken = await take_result(storage, state)
    if taken is None:
        raise expired()
    if "error" in taken:
        refusal = InvalidRequest(f"{FAILED} {taken.get('error')}")
        refusal.check = str(taken.get("check") or "")
        seen.claims = {k: v for k, v in taken.items() if k in ("iss", "sub") and isinstance(v, str)}
        raise refusal
    return await finish(ctx, state.role, result_from_record(req, state, taken), log_claims=False)


async def _poll_device(
    backend: JWTAuthBackend, req: Request, config: JWTConfig, role: Role, state: FlowState, ctx: LoginContext
) -> Response:
    doc = await support.discovery(backend, req, config)
    try:
        tokens = await support.poll_device(req, config, doc, state.device_code)
    except InvalidRequest as exc:
        if exc.messages in _WAITING:
            raise
        raise InvalidRequest(f"{FAILED} {'; '.join(exc.messages)}") from None
    result = await verify_tokens(backend, req, config, role, tokens, nonce=None, max_age=role.max_age)
    await redeem_state(req, state)
    return await finish(ctx, state.role, result)
