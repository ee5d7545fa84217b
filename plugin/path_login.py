"""JWT ``login`` (docs/reference/vault-api.md 4.1/4.2), the privileged ``role/<name>/explain`` call, and
the login checks they share with the OIDC callback.

``CHECKS`` is the one ordered list of login checks, each a small named validator in
pyjwt's ``_validate_<claim>`` style. Login runs it and stops at the first failure;
explain runs it and records every outcome (passed, failed, skipped) without issuing
anything (docs/vault-differences.md row 13); the OIDC callback runs the role's checks of the same
list (``OIDC_REQUEST_CHECKS``, ``OIDC_CLAIM_CHECKS``) on the verified ID token. A check's
name is its reason code: the refusal carries it as ``PluginError.check``, and explain, the
server log line of a refused login and the troubleshooting guide use it.

What a refusal tells whom (docs/vault-differences.md row 2): the message names the check
and says what the token has; what the role or config is bound to (``bound_issuer``,
``bound_subject``, ``bound_audiences``, ``bound_claims``, ``token_bound_cidrs``) is in the
error's ``expected``, which explain and the server log show and anonymous callers see only
when the mount's SystemView has ``verbose_login_errors`` (a development setting).
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from plugin import claim_sources
from plugin import claims as cl
from plugin.cidrutil import cidr_allows
from plugin.client_auth import client_cert, server_names
from plugin.errors import InvalidRequest, PermissionDenied, PluginError
from plugin.framework import Alias, Auth, Operation, PathSpec, Request, Response
from plugin.jose_verify import ParsedToken, parse_token
from plugin.path_config import JWTConfig, allowed_algs
from plugin.path_role import ROLE_NAME, ROLE_NAME_RE, Role
from plugin.policy_templates import render_policies
from plugin.schema import Field, FieldSet, FieldType
from plugin.token_fields import to_auth

if TYPE_CHECKING:
    from plugin.backend import JWTAuthBackend
    from plugin.path_cel import CelContext
    from plugin.storage import Storage

__all__ = [
    "load_role",
    "CHECKS",
    "Check",
    "EXPLAIN_FIELDS",
    "LOGIN_FIELDS",
    "LoginContext",
    "OIDC_CLAIM_CHECKS",
    "OIDC_REQUEST_CHECKS",
    "Outcome",
    "Skipped",
    "effective_leeway",
    "login_auth",
    "path_explain",
    "path_login",
    "refused",
    "remote_addr",
    "run_checks",
]

log = structlog.get_logger("plugin.login")

DEFAULT_EXPIRATION_LEEWAY = 150
DEFAULT_NOT_BEFORE_LEEWAY = 150
DEFAULT_CLOCK_SKEW_LEEWAY = 60
#: NumericDate upper bound (9999-12-31T23:59:59Z): larger values are refused, not wrapped.
MAX_NUMERIC_DATE = 253402300799
_ROLE_NAME = re.compile(ROLE_NAME_RE)
_R = TypeVar("_R")
_UNPARSED = "not evaluated: the token could not be parsed"

LOGIN_FIELDS = FieldSet(
    {
        "role": Field(FieldType.LOWER_STRING, "The role to log in against (else the config's default_role).", default=""),
        "jwt": Field(FieldType.STRING, "The signed JWT to validate.", default="", sensitive=True),
        "distributed_claim_access_token": Field(
            FieldType.STRING, "The access token for distributed claims whose source names none (roles with "
            "resolve_distributed_claims).", default="", sensitive=True,
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
        "distributed_claim_access_token": Field(
            FieldType.STRING, "As the login's: the access token for distributed claims whose source names none "
            "(roles with resolve_distributed_claims; the sources are asked as a login would ask them).",
            default="", sensitive=True,
        ),
    }
)


# ---------------------------------------------------------------------------
# The context the checks read and fill


class Skipped(Exception):
    """A check that does not apply (returned) or cannot run (raised); explain reports it as skipped."""


@dataclass(slots=True)
class LoginContext:
    """One login attempt as the checks see it, and what they found."""

    backend: JWTAuthBackend
    req: Request
    config: JWTConfig
    role: Role
    #: The raw JWT (JWT login, explain); the OIDC callback sets ``claims`` instead.
    token: str = ""
    #: The caller's address for the bound-CIDR check (None: unknown, refused by a bound role).
    remote_addr: str | None = None
    #: False in explain without ``remote_addr``: the bound-CIDR check is skipped.
    check_cidrs: bool = True
    parsed: ParsedToken | None = None
    claims: dict[str, Any] | None = None
    alias_name: str | None = None
    metadata: dict[str, str] | None = None
    groups: list[str] | None = None
    #: The access token distributed claims are fetched with when their source names none
    #: (the OIDC flow's, or the login's ``distributed_claim_access_token``).
    access_token: str = ""
    #: The login's token policies when the role renders them (``token_policies`` check);
    #: None: the role's ``token_policies`` as written.
    policies: list[str] | None = None
    #: A CEL login's role and compiled program, and what the ``cel_program`` check found.
    cel: CelContext | None = None

    def parsed_token(self) -> ParsedToken:
        """The parsed token; a check that needs it is skipped when parsing failed."""
        if self.parsed is None:
            raise Skipped(_UNPARSED)
        return self.parsed

    def token_claims(self) -> dict[str, Any]:
        """The token's claims; a check that needs them is skipped when parsing failed."""
        if self.claims is None:
            raise Skipped(_UNPARSED)
        return self.claims

    @property
    def identity(self) -> cl.Identity | None:
        """The identity, once the user claim, claim mappings and groups checks all passed."""
        if self.alias_name is None or self.metadata is None or self.groups is None:
            return None
        return cl.Identity(alias_name=self.alias_name, metadata=self.metadata, groups=self.groups)


# ---------------------------------------------------------------------------
# The checks, in order. Each returns a short detail for explain (or Skipped when it does
# not apply), or raises a PluginError: its messages for anyone, its ``expected`` for
# privileged readers. Only the signature check awaits (it may fetch keys).


def _validate_role_type(ctx: LoginContext) -> str:
    if ctx.role.role_type != "jwt":
        raise InvalidRequest("role with oidc role_type is not allowed")
    return "jwt"


def _validate_bound_cidrs(ctx: LoginContext) -> str | Skipped:
    cidrs = ctx.role.token_bound_cidrs
    if not cidrs:
        return Skipped("the role has no token_bound_cidrs")
    if not ctx.check_cidrs:
        return Skipped("not evaluated: no remote_addr given")
    if not cidr_allows(cidrs, ctx.remote_addr):
        raise PermissionDenied(expected=f": {ctx.remote_addr} is not in {cl.show(cidrs)}")
    return "the address is in token_bound_cidrs"


def _validate_parse(ctx: LoginContext) -> str:
    parsed = parse_token(ctx.token)
    ctx.parsed, ctx.claims = parsed, parsed.claims  # later checks still run in explain
    wrong = [n for n in ("iss", "sub", "jti") if n in parsed.claims and not isinstance(parsed.claims[n], str)]
    if wrong:
        # RFC 7519: these are StringOrURI/strings; go-jose refuses other JSON types at decoding.
        raise InvalidRequest(
            f'error validating token: claim "{wrong[0]}" must be a string, got {cl.show(parsed.claims[wrong[0]])}'
        )
    return f"alg {parsed.alg}, kid {parsed.kid}" if parsed.kid else f"alg {parsed.alg}"


def _validate_algorithm(ctx: LoginContext) -> str:
    alg = ctx.parsed_token().alg
    algs = allowed_algs(ctx.config)
    if alg not in algs:
        raise InvalidRequest(
            "error validating token: invalid algorithm (alg) header parameter: token signed with "
            f"unexpected algorithm {cl.show(alg)}, allowed: {cl.show(list(algs))}"
        )
    return f"{alg} is allowed"


async def _validate_signature(ctx: LoginContext) -> str | Skipped:
    parsed = ctx.parsed_token()
    algs = allowed_algs(ctx.config)
    if parsed.alg not in algs:
        return Skipped("not evaluated: the algorithm is not allowed")
    source = await ctx.backend.key_source(ctx.config, ctx.req.system)
    await source.verify(parsed, algs)
    return "verified"


def _validate_issuer(ctx: LoginContext) -> str | Skipped:
    bound = ctx.config.bound_issuer
    if not bound:
        return Skipped("the config has no bound_issuer")
    iss = ctx.token_claims().get("iss")
    if iss != bound or not isinstance(iss, str):
        raise InvalidRequest(
            f"error validating token: invalid issuer (iss) claim: token has {cl.show(iss)}",
            expected=f", expected {cl.show(bound)}",
        )
    return "matches bound_issuer"


def _validate_subject(ctx: LoginContext) -> str | Skipped:
    bound = ctx.role.bound_subject
    if not bound:
        return Skipped("the role has no bound_subject")
    sub = ctx.token_claims().get("sub")
    if isinstance(sub, str) and (sub == bound or (ctx.role.bound_claims_type == "glob" and cl.glob_match(bound, sub))):
        return "matches bound_subject"
    raise InvalidRequest(
        f"error validating token: invalid subject (sub) claim: token has {cl.show(sub)}",
        expected=f", role expects {cl.show(bound)}",
    )


def _validate_audience(ctx: LoginContext) -> str:
    role = ctx.role
    cl.check_audience(role.bound_audiences, ctx.token_claims().get("aud"), glob=role.bound_claims_type == "glob")
    return "matches bound_audiences" if role.bound_audiences else "no audience, none bound"


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


def _validate_time(ctx: LoginContext) -> str:
    """``iat``/``nbf``/``exp`` with the role's leeways (docs/reference/vault-api.md 4.2 steps 6-8)."""
    claims, role = ctx.token_claims(), ctx.role
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
    now = int(ctx.req.system.now())
    if now + cs < eff_nbf:
        raise InvalidRequest(
            "error validating token: invalid not before (nbf) claim: token not yet valid "
            f"(valid from {eff_nbf}, now {now}, clock skew leeway {cs}s)"
        )
    if now - cs > eff_exp:
        raise InvalidRequest(
            "error validating token: invalid expiration time (exp) claim: token is expired "
            f"(valid until {eff_exp}, now {now}, clock skew leeway {cs}s)"
        )
    if iat is not None and now + cs < iat:
        raise InvalidRequest(
            "error validating token: invalid issued at (iat) claim: token issued in the future "
            f"(iat {iat}, now {now}, clock skew leeway {cs}s)"
        )
    return f"valid from {eff_nbf} until {eff_exp}, now {now}"


def _validate_max_token_age(ctx: LoginContext) -> str | Skipped:
    role = ctx.role
    if role.max_token_age <= 0:
        return Skipped("the role has no max_token_age")
    iat = _numeric_date(ctx.token_claims(), "iat")
    if iat is None:
        raise InvalidRequest("error validating token: the role's max_token_age requires an issued at (iat) claim")
    cs = effective_leeway(role.clock_skew_leeway, DEFAULT_CLOCK_SKEW_LEEWAY)
    age = int(ctx.req.system.now()) - iat
    if age - cs > role.max_token_age:
        raise InvalidRequest(
            f"error validating token: token is too old: issued {age}s ago, role max_token_age "
            f"is {role.max_token_age}s (clock skew leeway {cs}s)"
        )
    return f"issued {age}s ago"


async def _validate_distributed_claims(ctx: LoginContext) -> str | Skipped:
    """Resolve the distributed and aggregated claims the role reads (plugin/claim_sources.py)."""
    claims, role = ctx.token_claims(), ctx.role
    if not claim_sources.has_claim_sources(claims):
        return Skipped("the token names no distributed or aggregated claims")
    if not role.resolve_distributed_claims:
        return Skipped("the role does not resolve distributed claims (resolve_distributed_claims)")
    wanted = claim_sources.referenced_claims(
        [role.user_claim, role.groups_claim, *(role.claim_mappings or {}), *(role.list_claim_mappings or {}),
         *(role.bound_claims or {})]
    )
    config, system = ctx.config, ctx.req.system

    async def verify_jwt(raw: str) -> dict[str, Any]:
        parsed = parse_token(raw, max_length=claim_sources.MAX_SOURCE_BYTES)
        await (await ctx.backend.key_source(config, system)).verify(parsed, allowed_algs(config))
        exp = _numeric_date(parsed.claims, "exp")
        if exp is not None and exp + DEFAULT_CLOCK_SKEW_LEEWAY < system.now():
            raise InvalidRequest("the claims JWT is expired")
        return dict(parsed.claims)

    ca_pem = config.oidc_discovery_ca_pem or config.jwks_ca_pem or None
    sources = claim_sources.Sources(
        system.fetcher, verify_jwt, ctx.access_token, ca_pem, client_cert(config), server_names(config)
    )
    resolved, failures = await claim_sources.resolve(claims, wanted, sources)
    if failures:
        raise InvalidRequest(f"error resolving distributed claims: {'; '.join(failures)}")
    return f"resolved {cl.show(resolved)}" if resolved else "the role reads none of them"


def _validate_user_claim(ctx: LoginContext) -> str:
    role = ctx.role
    ctx.alias_name = cl.get_user_claim(ctx.token_claims(), role.user_claim, role.user_claim_json_pointer)
    return f'alias name "{ctx.alias_name}"'


def _validate_claim_mappings(ctx: LoginContext) -> str:
    claims, role = ctx.token_claims(), ctx.role
    metadata = cl.extract_metadata(claims, role.claim_mappings)
    metadata.update(cl.extract_list_metadata(claims, role.list_claim_mappings))
    ctx.metadata = metadata
    return f"{len(metadata)} metadata keys"


#: Returned (never raised) by every login of a role without ``groups_claim``: built once.
_NO_GROUPS_CLAIM = Skipped("the role has no groups_claim")


def _validate_groups(ctx: LoginContext) -> str | Skipped:
    claims = ctx.token_claims()
    if not ctx.role.groups_claim:
        ctx.groups = []
        return _NO_GROUPS_CLAIM
    ctx.groups = cl.get_groups(claims, ctx.role.groups_claim)
    return f"{len(ctx.groups)} groups"


def _validate_bound_claims(ctx: LoginContext) -> str | Skipped:
    """Every bound claim must match; the first mismatch is the message, all are in the detail."""
    claims, bound = ctx.token_claims(), ctx.role.bound_claims
    if not bound:
        return Skipped("the role has no bound_claims")
    glob = ctx.role.bound_claims_type == "glob"
    failures: list[InvalidRequest] = []
    for name, expected in bound.items():
        try:
            cl.check_bound_claim(claims, name, expected, glob=glob)
        except InvalidRequest as exc:
            failures.append(exc)
    if failures:
        first, rest = failures[0], failures[1:]
        raise InvalidRequest(first.messages[0], expected=first.expected + "".join(f"; {f.detail}" for f in rest))
    return f"{len(bound)} claims match"


def _validate_token_policies(ctx: LoginContext) -> str | Skipped:
    """``token_policies_template_claims``: render the role's policies over the claims
    (``plugin.policy_templates``)."""
    if not ctx.role.token_policies_template_claims:
        return Skipped("the role's token_policies are not templates")
    ctx.policies = render_policies(ctx.role.token_policies, ctx.token_claims())
    return f"policies {cl.show(ctx.policies)}"


@dataclass(frozen=True, slots=True)
class Check:
    """One login check: its name (the reason code) and its validator.

    ``needed``, when given, says from the role and the config alone whether the check can
    do anything: where it is false the validator would only return ``Skipped`` (a role
    without ``bound_subject`` has no subject to check), so a login leaves the check out
    (``login_plan``); explain still runs it and reports the skip.
    """

    name: str
    validate: Callable[[LoginContext], str | Skipped | Awaitable[str | Skipped]]
    needed: Callable[[Role, JWTConfig], bool] | None = None


#: The login checks in order (4.2). Names are reason codes: keep them stable
#: (docs/troubleshooting.md lists them).
CHECKS: tuple[Check, ...] = (
    Check("role_type", _validate_role_type),
    Check("bound_cidrs", _validate_bound_cidrs, lambda role, config: bool(role.token_bound_cidrs)),
    Check("parse", _validate_parse),
    Check("algorithm", _validate_algorithm),
    Check("signature", _validate_signature),
    Check("issuer", _validate_issuer, lambda role, config: bool(config.bound_issuer)),
    Check("subject", _validate_subject, lambda role, config: bool(role.bound_subject)),
    Check("audience", _validate_audience),
    Check("time", _validate_time),
    Check("max_token_age", _validate_max_token_age, lambda role, config: role.max_token_age > 0),
    Check("distributed_claims", _validate_distributed_claims, lambda role, config: role.resolve_distributed_claims),
    Check("user_claim", _validate_user_claim),
    Check("claim_mappings", _validate_claim_mappings),
    Check("groups", _validate_groups),
    Check("bound_claims", _validate_bound_claims, lambda role, config: bool(role.bound_claims)),
    Check("token_policies", _validate_token_policies, lambda role, config: role.token_policies_template_claims),
)


def _select(*names: str) -> tuple[Check, ...]:
    chosen = tuple(c for c in CHECKS if c.name in names)
    assert len(chosen) == len(names), names
    return chosen


#: The role's checks the OIDC callback runs before it asks the IdP anything.
OIDC_REQUEST_CHECKS = _select("bound_cidrs")
#: The role's checks the OIDC callback runs on the verified ID token's claims (the ID
#: token's issuer, audience, times and nonce are checked by ``oidc_flow``, as cap does).
OIDC_CLAIM_CHECKS = _select(
    "subject", "distributed_claims", "user_claim", "claim_mappings", "groups", "bound_claims", "token_policies"
)


@dataclass(slots=True)
class Outcome:
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


#: (checks, role, config) -> the plan: keyed by the objects' ids, which the entry's own
#: references keep from being reused. Roles and configs are cached objects that a write
#: replaces, so a plan is found again until then; bounded, cleared when full.
_PLANS: dict[tuple[int, int, int], tuple[tuple[Check, ...], Role, JWTConfig, tuple[Check, ...]]] = {}
_MAX_PLANS = 256


def login_plan(checks: tuple[Check, ...], role: Role, config: JWTConfig) -> tuple[Check, ...]:
    """``checks`` without those the role and config make pointless (``Check.needed``): what
    a login runs. Worked out once per role and config object, not per login."""
    key = (id(checks), id(role), id(config))
    hit = _PLANS.get(key)
    if hit is not None and hit[0] is checks and hit[1] is role and hit[2] is config:
        return hit[3]
    plan = tuple(c for c in checks if c.needed is None or c.needed(role, config))
    if len(_PLANS) >= _MAX_PLANS:
        _PLANS.clear()
    _PLANS[key] = (checks, role, config, plan)
    return plan


async def run_checks(ctx: LoginContext, checks: tuple[Check, ...] = CHECKS, *, explain: bool = False) -> list[Outcome]:
    """Run ``checks`` in order.

    A login (``explain`` False) runs only the checks its role and config need
    (``login_plan``), raises the first failure, its ``check`` set to the check's name, and
    returns an empty list. Explain runs them all and records every outcome, a failure with
    its full ``detail`` (what the role expects included), a check that does not apply as
    skipped.
    """
    if not explain:
        checks = login_plan(checks, ctx.role, ctx.config)
    outcomes: list[Outcome] = []
    for check in checks:
        try:
            result = check.validate(ctx)
            if not isinstance(result, (str, Skipped)):
                result = await result  # the checks that fetch (signature, distributed claims)
        except Skipped as skip:
            result = skip
        except PluginError as exc:
            exc.check = check.name
            if not explain:
                raise
            outcomes.append(Outcome(check.name, False, exc.detail))
            continue
        if explain:
            skipped = isinstance(result, Skipped)
            outcomes.append(Outcome(check.name, True, str(result), skipped=skipped))
    return outcomes


def refused(
    req: Request, exc: PluginError, event: str, *, known_role: str = "", claims: dict[str, Any] | None = None,
    **fields: Any,
) -> None:
    """Log a refused login, note it for the audit log, decide what the anonymous caller is told.

    One ``event`` line with ``check`` (the reason code; None for a request error such as an
    unknown role) and ``reason`` (the full detail: what the role expects included), never
    the token. ``exc.login`` gets the role (``known_role``: only a role that exists, so a
    caller cannot fill the metrics with names) and the token's ``iss`` and ``sub`` (from
    ``claims``, verified or not; the audit log hashes them). The caller's message gains the
    expected values only when the mount's SystemView has ``verbose_login_errors``.
    """
    facts = {"role": known_role} if known_role else {}
    for name in ("iss", "sub"):
        value = claims.get(name) if claims else None
        if isinstance(value, str):
            facts[name] = value
    exc.login = facts
    log.info(
        event,
        mount=req.system.mount_path,
        **fields,
        check=exc.check or None,
        reason=exc.detail or "permission denied",
        remote_addr=remote_addr(req),
    )
    if exc.expected and req.system.verbose_login_errors:
        exc.messages, exc.expected = [exc.detail], ""


def remote_addr(req: Request) -> str | None:
    """The caller's address, when the server gave one."""
    return req.connection.remote_addr if req.connection is not None else None


# ---------------------------------------------------------------------------
# Paths


def login_auth(role: Role, role_name: str, identity: cl.Identity, ctx: LoginContext) -> Auth:
    """The Auth for a validated identity: alias, metadata (+ ``role``), groups, token params;
    the policies rendered from the role's templates (``LoginContext.policies``) when it has
    them, recorded with the templates they came from for renewal (``JWTAuthBackend.renew``);
    the token bound to the caller's address when the role sets ``token_strictly_bind_ip``
    (the caller of this request receives the token: the poller, in OIDC's direct mode).

    :raises InvalidRequest: ``auth methods cannot create root tokens``; a strictly bound
        role's login whose source address is not known.
    """
    policies = ctx.policies
    metadata = dict(identity.metadata)
    metadata["role"] = role_name
    internal: dict[str, Any] = {"role": role_name}
    if policies is not None:
        internal["policy_templates"] = list(role.token_policies)
    return to_auth(
        role,
        display_name=identity.alias_name,
        alias=Alias(name=identity.alias_name, metadata=dict(metadata)),
        metadata=metadata,
        group_aliases=list(identity.groups),
        internal_data=internal,
        policies=policies,
        source=ctx.remote_addr,
    )


async def load_role(
    backend: JWTAuthBackend, req: Request, role_name: str, find: Callable[[Storage, str], Awaitable[_R | None]]
) -> tuple[JWTConfig, str, _R]:
    """The mount's config, the role's name (else the config's ``default_role``) and what
    ``find`` reads under it: the one way a login (JWT or CEL) names its role.

    :raises InvalidRequest: no config, no role named, or no such role.
    """
    config = await backend.config(req)
    if config is None:
        raise InvalidRequest("could not load configuration")
    role_name = role_name or config.default_role
    if not role_name:
        raise InvalidRequest("missing role")
    # A name no role path could have written (e.g. "../x") is simply not found.
    found = await find(req.require_storage(), role_name) if _ROLE_NAME.fullmatch(role_name) else None
    if found is None:
        raise InvalidRequest(f'role "{role_name}" could not be found')
    return config, role_name, found


async def _load(backend: JWTAuthBackend, req: Request, role_name: str) -> tuple[JWTConfig, str, Role]:
    return await load_role(backend, req, role_name, backend.role)


def path_login(backend: JWTAuthBackend) -> PathSpec:
    """The unauthenticated ``login`` PathSpec."""

    async def login(req: Request, values: dict[str, Any]) -> Response:
        role_name = values.get("role", "")
        known = ""
        ctx: LoginContext | None = None
        try:
            config, role_name, role = await _load(backend, req, role_name)
            known = role_name
            token = values.get("jwt", "")
            if not token:
                raise InvalidRequest("missing token")
            ctx = LoginContext(
                backend, req, config, role, token=token, remote_addr=remote_addr(req),
                access_token=values.get("distributed_claim_access_token", ""),
            )
            await run_checks(ctx)
            identity = ctx.identity
            assert identity is not None  # every identity check passed
            auth = login_auth(role, role_name, identity, ctx)
        except PluginError as exc:
            refused(req, exc, "login_failed", known_role=known, claims=ctx.claims if ctx else None, role=role_name)
            raise
        return Response(auth=auth)

    return PathSpec(
        pattern="login",
        fields=LOGIN_FIELDS,
        operations={Operation.UPDATE: login},
        summary="Authenticates to Vault using a JWT (or OIDC) token.",
        description="Validates the JWT against the role and the mount's key source and issues a token.",
        unauthenticated=True,
        issues_token=True,
    )


def path_explain(backend: JWTAuthBackend) -> PathSpec:
    """The privileged ``role/<name>/explain`` PathSpec: a dry-run login that reports every check."""

    async def explain(req: Request, values: dict[str, Any]) -> Response:
        config, role_name, role = await _load(backend, req, values["name"])
        token = values.get("jwt", "")
        if not token:
            raise InvalidRequest("missing token")
        addr = values.get("remote_addr") or None
        ctx = LoginContext(backend, req, config, role, token=token, remote_addr=addr, check_cidrs=addr is not None,
                           access_token=values.get("distributed_claim_access_token", ""))
        outcomes = await run_checks(ctx, explain=True)
        data: dict[str, Any] = {
            "would_succeed": all(o.ok for o in outcomes),
            "role": role_name,
            "checks": [o.as_dict() for o in outcomes],
            "claims": ctx.claims,
        }
        if ctx.policies is not None:
            data["policies"] = ctx.policies
        identity = ctx.identity
        if identity is not None:
            data["identity"] = {
                "alias_name": identity.alias_name,
                "metadata": {**identity.metadata, "role": role_name},
                "groups": identity.groups,
            }
        return Response(data=data)

    return PathSpec(
        pattern=f"role/(?P<name>{ROLE_NAME_RE})/explain",
        fields=EXPLAIN_FIELDS,
        operations={Operation.UPDATE: explain},
        summary="Explain how a login with this role and JWT would go, without issuing a token.",
        description="Runs every login check for the given JWT and returns each outcome.",
    )
