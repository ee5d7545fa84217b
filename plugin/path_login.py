"""JWT ``login`` (vault-api.md 4.1/4.2) and the privileged ``role/<name>/explain`` call.

Both run the same ordered checks through ``evaluate``: login stops at the first failure
and raises it; explain records every check it can run and issues nothing
(decisions.md item 13). ``login_auth`` turns validated claims into the ``Auth`` handed to
the server; the OIDC callback uses it together with ``claims.validate_role_claims``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from plugin import claims as cl
from plugin.cidrutil import cidr_allows
from plugin.errors import InvalidRequest, PermissionDenied, PluginError
from plugin.framework import Alias, Auth, Operation, PathSpec, Request, Response
from plugin.jose_verify import ParsedToken, parse_token
from plugin.path_config import JWTConfig, allowed_algs
from plugin.path_role import ROLE_NAME, ROLE_NAME_RE, Role
from plugin.schema import Field, FieldSet, FieldType
from plugin.token_fields import to_auth

if TYPE_CHECKING:
    from plugin.backend import JWTAuthBackend

__all__ = [
    "Check",
    "Evaluation",
    "LOGIN_FIELDS",
    "check_time_claims",
    "effective_leeway",
    "evaluate",
    "login_auth",
    "path_login",
    "path_explain",
]

log = structlog.get_logger("plugin.login")

DEFAULT_EXPIRATION_LEEWAY = 150
DEFAULT_NOT_BEFORE_LEEWAY = 150
DEFAULT_CLOCK_SKEW_LEEWAY = 60
#: NumericDate upper bound (9999-12-31T23:59:59Z): larger values are refused, not wrapped.
MAX_NUMERIC_DATE = 253402300799
_ROLE_NAME = re.compile(ROLE_NAME_RE)

LOGIN_FIELDS = FieldSet(
    {
        "role": Field(FieldType.LOWER_STRING, "The role to log in against (else the config's default_role).", default=""),
        "jwt": Field(FieldType.STRING, "The signed JWT to validate.", default="", sensitive=True),
        "distributed_claim_access_token": Field(
            FieldType.STRING, "An access token for fetching distributed claims (Azure; accepted, unused).", default=""
        ),
    }
)

EXPLAIN_FIELDS = FieldSet(
    {
        "name": ROLE_NAME,
        "jwt": Field(FieldType.STRING, "The JWT to evaluate (nothing is issued).", default="", sensitive=True),
        "remote_addr": Field(
            FieldType.STRING, "Evaluate the role's bound CIDRs against this address (else skipped).", default=""
        ),
    }
)


@dataclass(slots=True)
class Check:
    """One check's outcome, as explain reports it."""

    check: str
    ok: bool
    detail: str = ""
    skipped: bool = False

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"check": self.check, "ok": self.ok, "detail": self.detail}
        if self.skipped:
            out["skipped"] = True
        return out


@dataclass(slots=True)
class Evaluation:
    """What ``evaluate`` found: the checks, the parsed token and the identity (if resolved)."""

    checks: list[Check] = field(default_factory=list)
    token: ParsedToken | None = None
    identity: cl.Identity | None = None
    strict: bool = True

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def passed(self, name: str, detail: str = "") -> None:
        """Record a passed check (login, being strict, records only failures' effects)."""
        if not self.strict:
            self.checks.append(Check(name, True, detail))

    def failed(self, name: str, error: PluginError) -> None:
        """Record a failure; in strict (login) mode raise it at once."""
        self.checks.append(Check(name, False, "; ".join(error.messages) or "permission denied"))
        if self.strict:
            raise error


# ---------------------------------------------------------------------------
# Pure checks


def effective_leeway(value: int, default: int) -> int:
    """Vault leeway rule: 0 means the default, a negative value disables the leeway."""
    if value == 0:
        return default
    return max(value, 0)


def _numeric_date(claims: dict[str, Any], name: str) -> int | None:
    if name not in claims:
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f'error validating token: claim "{name}" must be a JSON number, got {cl.show(value)}')
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequest(f'error validating token: claim "{name}" must be a finite number')
    if not 0 <= value <= MAX_NUMERIC_DATE:
        raise InvalidRequest(f'error validating token: claim "{name}" is out of range')
    return int(value)  # floats are truncated to whole seconds, as Vault does


def check_time_claims(claims: dict[str, Any], now: float, role: Role) -> str:
    """Validate ``iat``/``nbf``/``exp`` with the role's leeways (4.2 steps 6-8).

    Returns a short description for explain.

    :raises InvalidRequest: ``error validating token: <Vault reason> (<details>)``.
    """
    iat = _numeric_date(claims, "iat")
    nbf = _numeric_date(claims, "nbf")
    exp = _numeric_date(claims, "exp")
    if iat is None and nbf is None and exp is None:
        raise InvalidRequest(
            "error validating token: no issued at (iat), not before (nbf), or expiration time (exp) claims in token"
        )
    el = effective_leeway(role.expiration_leeway, DEFAULT_EXPIRATION_LEEWAY)
    nl = effective_leeway(role.not_before_leeway, DEFAULT_NOT_BEFORE_LEEWAY)
    cs = effective_leeway(role.clock_skew_leeway, DEFAULT_CLOCK_SKEW_LEEWAY)
    eff_exp = exp if exp is not None else max(t for t in (iat, nbf) if t is not None) + el
    eff_nbf = nbf if nbf is not None else (iat if iat is not None else eff_exp - nl)
    now_i = int(now)
    if now_i + cs < eff_nbf:
        raise InvalidRequest(
            "error validating token: invalid not before (nbf) claim: token not yet valid "
            f"(valid from {eff_nbf}, now {now_i}, clock skew leeway {cs}s)"
        )
    if now_i - cs > eff_exp:
        raise InvalidRequest(
            "error validating token: invalid expiration time (exp) claim: token is expired "
            f"(valid until {eff_exp}, now {now_i}, clock skew leeway {cs}s)"
        )
    if iat is not None and now_i + cs < iat:
        raise InvalidRequest(
            "error validating token: invalid issued at (iat) claim: token issued in the future "
            f"(iat {iat}, now {now_i}, clock skew leeway {cs}s)"
        )
    if role.max_token_age > 0:
        if iat is None:
            raise InvalidRequest(
                "error validating token: the role's max_token_age requires an issued at (iat) claim"
            )
        age = now_i - iat
        if age - cs > role.max_token_age:
            raise InvalidRequest(
                f"error validating token: token is too old: issued {age}s ago, role max_token_age "
                f"is {role.max_token_age}s (clock skew leeway {cs}s)"
            )
    return f"valid from {eff_nbf} until {eff_exp}, now {now_i}"


def _issuer_error(config: JWTConfig, claims: dict[str, Any]) -> str | None:
    if not config.bound_issuer:
        return None
    iss = claims.get("iss")
    if iss == config.bound_issuer and isinstance(iss, str):
        return None
    return (
        f"error validating token: invalid issuer (iss) claim: token has {cl.show(iss)}, "
        f"expected {cl.show(config.bound_issuer)}"
    )


def _subject_error(role: Role, claims: dict[str, Any]) -> str | None:
    if not role.bound_subject:
        return None
    sub = claims.get("sub")
    if isinstance(sub, str):
        if role.bound_claims_type == "glob" and cl.glob_match(role.bound_subject, sub):
            return None
        if sub == role.bound_subject:
            return None
    return (
        f"error validating token: invalid subject (sub) claim: token has {cl.show(sub)}, "
        f"role expects {cl.show(role.bound_subject)}"
    )


# ---------------------------------------------------------------------------
# The shared pipeline


async def evaluate(
    backend: JWTAuthBackend,
    req: Request,
    config: JWTConfig,
    role: Role,
    token: str,
    *,
    strict: bool,
    remote_addr: str | None,
    check_cidrs: bool = True,
) -> Evaluation:
    """Run the login checks of 4.1/4.2 in order.

    ``strict`` (login) raises the first failure; otherwise (explain) every check that can
    run is recorded and evaluation continues past failures.
    """
    ev = Evaluation(strict=strict)
    if role.role_type != "jwt":
        ev.failed("role_type", InvalidRequest("role with oidc role_type is not allowed"))
    else:
        ev.passed("role_type", "jwt")
    if role.token_bound_cidrs:
        if not check_cidrs:
            ev.checks.append(Check("bound_cidrs", True, "not evaluated: no remote_addr given", skipped=True))
        elif cidr_allows(role.token_bound_cidrs, remote_addr):
            if not strict:
                ev.passed("bound_cidrs", f"{remote_addr} is in {cl.show(role.token_bound_cidrs)}")
        else:
            if strict:
                ev.failed("bound_cidrs", PermissionDenied())
            ev.checks.append(
                Check("bound_cidrs", False, f"{remote_addr} is not in {cl.show(role.token_bound_cidrs)}")
            )
    try:
        parsed = parse_token(token)
    except InvalidRequest as exc:
        ev.failed("parse", exc)
        return ev
    ev.token = parsed
    claims = parsed.claims
    wrong = [n for n in ("iss", "sub", "jti") if n in claims and not isinstance(claims[n], str)]
    if wrong:
        # RFC 7519: these are StringOrURI/strings; go-jose refuses other JSON types at decoding.
        ev.failed(
            "parse",
            InvalidRequest(
                f'error validating token: claim "{wrong[0]}" must be a string, got {cl.show(claims[wrong[0]])}'
            ),
        )
    elif not strict:  # the detail strings are for explain only
        ev.passed("parse", f"alg {parsed.alg}" + (f", kid {cl.show(parsed.kid)}" if parsed.kid else ""))

    algs = allowed_algs(config)
    if parsed.alg not in algs:
        ev.failed(
            "algorithm",
            InvalidRequest(
                "error validating token: invalid algorithm (alg) header parameter: token signed with "
                f"unexpected algorithm {cl.show(parsed.alg)}, allowed: {cl.show(algs)}"
            ),
        )
    else:
        ev.passed("algorithm", f"{parsed.alg} is allowed")
        try:
            source = await backend.key_source(config, req.system)
            await source.verify(parsed, algs)
        except InvalidRequest as exc:
            ev.failed("signature", exc)
        else:
            ev.passed("signature", "verified")

    for name, error in (
        ("issuer", _issuer_error(config, claims)),
        ("subject", _subject_error(role, claims)),
    ):
        if error is None:
            ev.passed(name)
        else:
            ev.failed(name, InvalidRequest(error))
    aud_error = cl.audience_error(role.bound_audiences, claims.get("aud"), glob=role.bound_claims_type == "glob")
    if aud_error is None:
        ev.passed("audience")
    elif aud_error.startswith("audience claim found"):
        ev.failed("audience", InvalidRequest(aud_error))
    else:
        ev.failed("audience", InvalidRequest("error validating token: " + aud_error))
    try:
        detail = check_time_claims(claims, req.system.now(), role)
    except InvalidRequest as exc:
        ev.failed("time", exc)
    else:
        ev.passed("time", detail)

    identity_ok = True
    try:
        name = cl.get_user_claim(claims, role.user_claim, role.user_claim_json_pointer)
        if not strict:
            ev.passed("user_claim", f"alias name {cl.show(name)}")
    except InvalidRequest as exc:
        name, identity_ok = "", False
        ev.failed("user_claim", exc)
    metadata: dict[str, str] = {}
    try:
        metadata = cl.extract_metadata(claims, role.claim_mappings)
        metadata.update(cl.extract_list_metadata(claims, role.list_claim_mappings))
        ev.passed("claim_mappings", f"{len(metadata)} metadata keys")
    except InvalidRequest as exc:
        identity_ok = False
        ev.failed("claim_mappings", exc)
    groups: list[str] = []
    if role.groups_claim:
        try:
            groups = cl.get_groups(claims, role.groups_claim)
            ev.passed("groups", f"{len(groups)} groups")
        except InvalidRequest as exc:
            identity_ok = False
            ev.failed("groups", exc)
    if identity_ok:
        ev.identity = cl.Identity(alias_name=name, metadata=metadata, groups=groups)

    glob = role.bound_claims_type == "glob"
    for claim_name, expected in (role.bound_claims or {}).items():
        error = cl.bound_claim_error(claims, claim_name, expected, glob=glob)
        if error is None:
            if not strict:
                ev.passed("bound_claim", f"claim {cl.show(claim_name)} matches")
        else:
            ev.failed("bound_claim", InvalidRequest(f"error validating claims: {error}"))
    return ev


def login_auth(role: Role, role_name: str, identity: cl.Identity) -> Auth:
    """The Auth for a validated identity: alias, metadata (+ ``role``), groups, token params.

    :raises InvalidRequest: ``auth methods cannot create root tokens``.
    """
    metadata = dict(identity.metadata)
    metadata["role"] = role_name
    return to_auth(
        role,
        display_name=identity.alias_name,
        alias=Alias(name=identity.alias_name, metadata=dict(metadata)),
        metadata=metadata,
        group_aliases=list(identity.groups),
        internal_data={"role": role_name},
    )


def _remote(req: Request) -> str | None:
    return req.connection.remote_addr if req.connection is not None else None


def _log_failure(req: Request, role: str, exc: PluginError) -> None:
    log.info(
        "login_failed",
        mount=getattr(req.system, "mount_path", ""),
        role=role,
        reason="; ".join(exc.messages) or "permission denied",
        remote_addr=_remote(req),
    )


async def _load(backend: JWTAuthBackend, req: Request, role_name: str) -> tuple[JWTConfig, str, Role]:
    storage = req.require_storage()
    config = await backend.config(storage)
    if config is None:
        raise InvalidRequest("could not load configuration")
    role_name = role_name or config.default_role
    if not role_name:
        raise InvalidRequest("missing role")
    # A name no role path could have written (e.g. "../x") is simply not found.
    role = await backend.role(storage, role_name) if _ROLE_NAME.fullmatch(role_name) else None
    if role is None:
        raise InvalidRequest(f'role "{role_name}" could not be found')
    return config, role_name, role


def path_login(backend: JWTAuthBackend) -> PathSpec:
    """The unauthenticated ``login`` PathSpec."""

    async def login(req: Request, values: dict[str, Any]) -> Response:
        role_name = values.get("role", "")
        try:
            config, role_name, role = await _load(backend, req, role_name)
            if role.role_type != "jwt":
                raise InvalidRequest("role with oidc role_type is not allowed")
            token = values.get("jwt", "")
            if not token:
                raise InvalidRequest("missing token")
            ev = await evaluate(backend, req, config, role, token, strict=True, remote_addr=_remote(req))
            assert ev.identity is not None  # strict mode raised otherwise
            auth = login_auth(role, role_name, ev.identity)
        except PluginError as exc:
            _log_failure(req, role_name, exc)
            raise
        return Response(auth=auth)

    return PathSpec(
        pattern="login",
        fields=LOGIN_FIELDS,
        operations={Operation.UPDATE: login},
        summary="Authenticates to Vault using a JWT (or OIDC) token.",
        description="Validates the JWT against the role and the mount's key source and issues a token.",
        unauthenticated=True,
    )


def path_explain(backend: JWTAuthBackend) -> PathSpec:
    """The privileged ``role/<name>/explain`` PathSpec: a dry-run login that reports every check."""

    async def explain(req: Request, values: dict[str, Any]) -> Response:
        config, role_name, role = await _load(backend, req, values["name"])
        token = values.get("jwt", "")
        if not token:
            raise InvalidRequest("missing token")
        addr = values.get("remote_addr") or None
        ev = await evaluate(
            backend, req, config, role, token, strict=False, remote_addr=addr, check_cidrs=addr is not None
        )
        data: dict[str, Any] = {
            "would_succeed": ev.ok,
            "role": role_name,
            "checks": [c.as_dict() for c in ev.checks],
            "claims": ev.token.claims if ev.token is not None else None,
        }
        if ev.identity is not None:
            data["identity"] = {
                "alias_name": ev.identity.alias_name,
                "metadata": {**ev.identity.metadata, "role": role_name},
                "groups": ev.identity.groups,
            }
        return Response(data=data)

    return PathSpec(
        pattern=f"role/(?P<name>{ROLE_NAME_RE})/explain",
        fields=EXPLAIN_FIELDS,
        operations={Operation.UPDATE: explain},
        summary="Explain how a login with this role and JWT would go, without issuing a token.",
        description="Runs every login check for the given JWT and returns each outcome.",
    )
