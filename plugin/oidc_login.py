"""Finishing an OIDC login, whichever way its answer arrived (the callback, a form_post, the
``direct`` mode's page, the device grant's poll).

``code_flow``/``implicit_flow`` turn the IdP's answer into a ``FlowResult``: the verified
claims (userinfo merged in by the role's ``oidc_claims_precedence``), the raw IdP tokens
and warnings. ``finish`` runs the role's checks on it (``path_login.OIDC_CLAIM_CHECKS``)
and builds the login ``Response``, with the IdP tokens the role's ``oauth2_metadata`` asks
for as response-only metadata. When a result must wait in storage for a second request
(form_post's GET, ``oidc/poll``), ``stored_result`` keeps only what that request needs and
seals the IdP tokens (``kept_tokens``) under the used-state record's context: raw tokens are
never stored in the clear and never logged.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from plugin import oidc_flow as support
from plugin.errors import InvalidRequest, PluginError
from plugin.framework import Request, Response
from plugin.oidc_state import FlowState, redeem, sweep_used
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
from plugin.sealing import NewerTermError, SealError

if TYPE_CHECKING:
    from plugin.backend import JWTAuthBackend

__all__ = [
    "FAILED",
    "EXPIRED",
    "FlowResult",
    "code_flow",
    "expired",
    "flow_context",
    "flow_stage",
    "flow_step",
    "note_refusal",
    "Seen",
    "exchange",
    "finish",
    "implicit_flow",
    "redeem_state",
    "refusal_page",
    "result_from_record",
    "stored_result",
    "verify_tokens",
]

log = structlog.get_logger("plugin.path_oidc")

FAILED = "Vault login failed."
EXPIRED = "Expired or missing OAuth state."
#: Expired used-state records each redemption deletes: more than it adds, so the records
#: never outnumber the logins of the last state lifetime (plus the sweep's grace).
_SWEEP_PER_REDEMPTION = 2
_TOKEN_NAMES = ("id_token", "access_token", "refresh_token")


def expired() -> InvalidRequest:
    """``Vault login failed. Expired or missing OAuth state.``"""
    return InvalidRequest(f"{FAILED} {EXPIRED}")


def flow_stage(exc: PluginError) -> str:
    """The ``Events.oidc_flow`` stage of a refused flow: ``expired`` for a state that
    expired, was forged or was used already; ``failed`` for any other refusal."""
    return "expired" if any(EXPIRED in m for m in exc.messages) else "failed"


@dataclass(slots=True)
class Seen:
    """What a flow's request learned before it was refused, for the refusal's record
    (``path_login.refused``: the audit log and the login metrics): the role, once it is
    known to exist, and the login's checks, once they ran (their claims)."""

    role: str = ""
    ctx: LoginContext | None = None
    #: ``iss``/``sub`` a stored refusal kept (``oidc/poll`` of a direct login).
    claims: dict[str, Any] | None = None

    def facts(self) -> dict[str, Any]:
        """``refused``'s ``known_role`` and ``claims``."""
        claims = self.ctx.claims if self.ctx is not None and self.ctx.claims is not None else self.claims
        return {"known_role": self.role, "claims": claims}


async def flow_context(backend: JWTAuthBackend, req: Request, config: JWTConfig, state: FlowState, seen: Seen) -> LoginContext:
    """The login context of a flow's ``state``: its role (refused when it is gone), noted in
    ``seen`` for a refusal's record, with the role's request checks (bound CIDRs) passed
    before the IdP is asked anything or a token is handed out."""
    role = await backend.role(req.require_storage(), state.role)
    if role is None:
        raise InvalidRequest(f"{FAILED} Role could not be found")
    seen.role = state.role
    ctx = seen.ctx = LoginContext(backend, req, config, role, remote_addr=remote_addr(req))
    await run_checks(ctx, OIDC_REQUEST_CHECKS)
    return ctx


def note_refusal(req: Request, exc: PluginError, event: str, seen: Seen) -> None:
    """A refused OIDC login: one ``event`` line (with what ``seen`` knows of the role and the
    token; never the state, code, nonce or tokens) and the flow counted as failed or expired."""
    refused(req, exc, event, **seen.facts())
    req.system.events.oidc_flow(flow_stage(exc))


async def flow_step(
    req: Request, event: str, seen: Seen, step: Awaitable[Response], *, waiting: Collection[list[str]] = ()
) -> Response:
    """Await ``step``, an OIDC request that finishes a login: its refusal is noted as ``event``
    (unless its messages are one of ``waiting``: a poll that is not done yet), its success
    counts the flow completed."""
    try:
        resp = await step
    except PluginError as exc:
        if exc.messages not in waiting:
            note_refusal(req, exc, event, seen)
        raise
    req.system.events.oidc_flow("completed")
    return resp


def refusal_page(req: Request, exc: PluginError, seen: Seen, page: Response) -> Response:
    """``page`` (an error page of the callback) for the refused login ``exc``: noted as
    ``oidc_callback_failed`` and carried by the page (``Response.refused``) so the audit log
    and the login metrics record its reason code."""
    note_refusal(req, exc, "oidc_callback_failed", seen)
    page.refused = exc
    return page


@dataclass(slots=True)
class FlowResult:
    """What the IdP answered, verified: the claims, the raw tokens (for ``oauth2_metadata``
    and distributed claims only: never stored in the clear, never logged) and warnings."""

    claims: dict[str, Any]
    tokens: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _wrap(exc: PluginError) -> InvalidRequest:
    return InvalidRequest(f'{FAILED} Error exchanging oidc code: "{"; ".join(exc.messages)}".')


async def exchange(
    backend: JWTAuthBackend, req: Request, config: JWTConfig, state: FlowState, code: str
) -> dict[str, Any]:
    """Exchange ``code`` at the token endpoint (with the state's PKCE verifier).

    :raises InvalidRequest: ``Vault login failed. Error exchanging oidc code: "..."``.
    """
    implicit = "id_token" in config.oidc_response_types  # no PKCE was asked for
    try:
        doc = await support.discovery(backend, req, config)
        return await support.exchange_code(
            req, config, doc, code,
            redirect_uri=state.redirect_uri,
            code_verifier="" if implicit else state.code_verifier,
        )
    except PluginError as exc:
        raise _wrap(exc) from None


async def verify_tokens(
    backend: JWTAuthBackend,
    req: Request,
    config: JWTConfig,
    role: Role,
    tokens: dict[str, Any],
    *,
    nonce: str | None,
    max_age: int,
) -> FlowResult:
    """Verify a token response's ID token and merge userinfo (when there is an access token).

    ``nonce`` None: the grant sent none (the device grant).

    :raises InvalidRequest: ``Vault login failed. Error exchanging oidc code: "..."``.
    """
    raw = {name: tokens[name] for name in _TOKEN_NAMES if isinstance(tokens.get(name), str) and tokens[name]}
    try:
        if "id_token" not in raw:
            raise InvalidRequest("no id_token found in token response")
        doc = await support.discovery(backend, req, config)
        claims = await support.verify_id_token(
            backend, req, config, doc, raw["id_token"],
            nonce=nonce,
            audiences=list(role.bound_audiences or []),
            max_age=max_age,
            access_token=raw.get("access_token"),
        )
    except PluginError as exc:
        raise _wrap(exc) from None
    claims.pop("nonce", None)
    result = FlowResult(claims, raw)
    if "access_token" in raw and isinstance(doc.get("userinfo_endpoint"), str):
        await support.merge_userinfo(
            req, config, doc, raw["access_token"], claims, result.warnings, role.oidc_claims_precedence
        )
    return result


async def code_flow(
    backend: JWTAuthBackend, req: Request, config: JWTConfig, role: Role, state: FlowState, code: str
) -> FlowResult:
    """Exchange ``code``, verify the ID token, merge userinfo.

    :raises InvalidRequest: ``Vault login failed. Error exchanging oidc code: "..."``.
    """
    tokens = await exchange(backend, req, config, state, code)
    return await verify_tokens(backend, req, config, role, tokens, nonce=state.nonce, max_age=state.max_age)


class TokenVerificationFailed(InvalidRequest):
    """The id_token a form_post carried failed verification (its own page title)."""


async def implicit_flow(
    backend: JWTAuthBackend, req: Request, config: JWTConfig, role: Role, state: FlowState, id_token: str
) -> FlowResult:
    """Verify the id_token a form_post carried.

    :raises TokenVerificationFailed: naming the failed check.
    """
    try:
        doc = await support.discovery(backend, req, config)
        claims = await support.verify_id_token(
            backend, req, config, doc, id_token,
            nonce=state.nonce,
            audiences=list(role.bound_audiences or []),
            max_age=state.max_age,
            access_token=None,
        )
    except PluginError as exc:
        raise TokenVerificationFailed(messages=exc.messages) from None
    claims.pop("nonce", None)
    return FlowResult(claims, {"id_token": id_token})


# ---------------------------------------------------------------------------
# Results kept for a second request


def kept_tokens(role: Role, tokens: dict[str, str]) -> dict[str, str]:
    """The tokens a stored result needs: those ``oauth2_metadata`` returns, and the access
    token when the role resolves distributed claims."""
    names = set(role.oauth2_metadata or ())
    if role.resolve_distributed_claims:
        names.add("access_token")
    return {name: value for name, value in tokens.items() if name in names}


def _context(state: FlowState) -> str:
    return f"{state.used_key}#oauth2"  # <storage key>#<field>: server.keyring.reseal's rule


def stored_result(req: Request, role: Role, state: FlowState, result: FlowResult) -> dict[str, Any]:
    """``result`` as a used-state record keeps it: claims, warnings, the kept tokens sealed."""
    record: dict[str, Any] = {"claims": result.claims, "warnings": list(result.warnings)}
    tokens = kept_tokens(role, result.tokens)
    if tokens:
        record["oauth2"] = req.system.sealer.seal(json.dumps(tokens).encode("utf-8"), _context(state))
    return record


def result_from_record(req: Request, state: FlowState, record: dict[str, Any]) -> FlowResult:
    """The ``FlowResult`` a stored record holds (its tokens unsealed).

    :raises InvalidRequest: ``Expired or missing OAuth state.`` for a malformed record.
    """
    claims = record.get("claims")
    if not isinstance(claims, dict):
        raise expired()
    warnings = [w for w in record.get("warnings") or [] if isinstance(w, str)]
    tokens: dict[str, str] = {}
    sealed = record.get("oauth2")
    if isinstance(sealed, str):
        try:
            opened = json.loads(req.system.sealer.unseal(sealed, _context(state)))
        except NewerTermError:
            raise
        except (SealError, ValueError):
            raise expired() from None
        tokens = {k: v for k, v in opened.items() if k in _TOKEN_NAMES and isinstance(v, str)}
    return FlowResult(claims, tokens, warnings)


async def redeem_state(req: Request, state: FlowState, result: dict[str, Any] | None = None) -> None:
    """Record ``state`` as used (with ``result`` for a second request to take); then delete
    a few records of states long expired.

    :raises InvalidRequest: ``Expired or missing OAuth state.``: another request, on any
        node, redeemed it first.
    """
    storage = req.require_storage()
    if not await redeem(storage, state, result):
        raise expired()
    try:
        await sweep_used(storage, req.system.now(), limit=_SWEEP_PER_REDEMPTION)
    except Exception:  # the login succeeded; a later redemption sweeps again
        log.warning("oidc_sweep_failed", mount=req.system.mount_path, exc_info=True)


# ---------------------------------------------------------------------------
# The login


async def finish(ctx: LoginContext, role_name: str, result: FlowResult, *, log_claims: bool = True) -> Response:
    """Run the role's claim checks on ``result`` and build the login response.

    :raises PluginError: the first failed check, its reason code set.
    """
    role = ctx.role
    if role.verbose_oidc_logging and log_claims:
        # Vault logs the ID token without its signature; its payload is these claims, so
        # only they are logged (a raw token is never logged). Before the checks: a refused
        # login shows what the IdP sent.
        log.debug("oidc_provider_response", mount=ctx.req.system.mount_path, role=role_name, claims=result.claims)
    ctx.claims = result.claims
    ctx.access_token = result.tokens.get("access_token", "")
    await run_checks(ctx, OIDC_CLAIM_CHECKS)
    identity = ctx.identity
    assert identity is not None  # every identity check passed
    auth = login_auth(role, role_name, identity, ctx)
    auth.response_metadata = {f"oauth2_{name}": result.tokens.get(name, "") for name in role.oauth2_metadata or ()}
    resp = Response(auth=auth)
    for warning in result.warnings:
        resp.add_warning(warning)
    return resp
