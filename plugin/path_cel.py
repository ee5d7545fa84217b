"""CEL roles (OpenBao's shapes): ``cel/role/`` (LIST), ``cel/role/<name>`` (CRUD),
``cel/login`` and the privileged ``cel/role/<name>/explain``.

A CEL role's program (``plugin.cel``) is compiled once, when the role is written (a compile
error is a 400 there), and again only when this process first reads a role another node
wrote. A login runs the JWT checks of ``path_login.CHECKS`` that a CEL role has (parse,
algorithm, signature, issuer, the role's ``bound_audiences``, times with its leeways) and
then ``CEL_PROGRAM``, a check of the same pipeline whose name, ``cel_program``, is its
reason code. The program returns ``pb.Auth{...}`` to log the caller in, ``false`` or a
string to refuse (the role's ``message``, when set, is the refusal's text for ``false``);
anything else is refused too (docs/vault-differences.md row 32).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from plugin import claims as cl
from plugin.cel import (
    AliasMessage,
    AuthMessage,
    CelProgram,
    CompiledProgram,
    LeaseOptionsMessage,
    compile_program,
    to_python,
)
from plugin.cidrutil import parse_cidrs
from plugin.errors import InvalidRequest, PluginError
from plugin.framework import Alias, Auth, Operation, PathSpec, Request, Response
from plugin.paging import PAGE_FIELDS, list_response
from plugin.path_login import (
    CHECKS,
    Check,
    LoginContext,
    Skipped,
    load_role,
    refused,
    remote_addr,
    run_checks,
)
from plugin.path_role import ROLE_NAME, ROLE_NAME_RE, Role
from plugin.policy_templates import POLICY_NAME_RE
from plugin.policyutil import refuse_root
from plugin.schema import Field, FieldSet, FieldType

if TYPE_CHECKING:
    from plugin.backend import JWTAuthBackend

__all__ = [
    "CEL_CHECKS",
    "CEL_PROGRAM",
    "CEL_ROLE_FIELDS",
    "CEL_ROLE_PREFIX",
    "CEL_LOGIN_FIELDS",
    "CelRole",
    "cel_auth",
    "paths",
]

CEL_ROLE_PREFIX = "cel/role/"
_NS = 1_000_000_000
_TOKEN_TYPES = {0: "default", 1: "service", 2: "batch", 3: "default-service", 4: "default-batch"}


def _program_object(raw: Any) -> dict[str, Any]:
    """``cel_program`` as sent: an object, read into a program by the write (a PATCH's first
    merged over the stored program's)."""
    if not isinstance(raw, dict):
        raise InvalidRequest("failed to decode 'cel_program': expected an object")
    return raw


CEL_ROLE_FIELDS = FieldSet({
    "name": ROLE_NAME,
    "cel_program": Field(
        FieldType.MAP, "The CEL program: {'variables': [{'name', 'expression'}...], 'expression'}. Each variable "
        "is evaluated in order and read by name by later ones and by the expression, which returns "
        "pb.Auth{...} to log in, or false or a string to refuse. Reads 'claims' (the token's claims), 'now' "
        "(a timestamp) and 'operation'. Compiled when written: syntax errors, undeclared names and unknown "
        "functions or pb.Auth fields are refused. At most 32 variables of 4096 characters each; a login's "
        "program may take 10000 evaluation steps and 50 ms of CPU, and build no value past 65536 elements.",
        required=True, parse=_program_object,
    ),
    "message": Field(FieldType.STRING, "The refusal's message when the program returns false.", default=""),
    "expiration_leeway": Field(
        FieldType.SIGNED_DURATION, "Leeway in seconds when validating the expiration of a token; -1 disables it.",
        default=150,
    ),
    "not_before_leeway": Field(
        FieldType.SIGNED_DURATION, "Leeway in seconds when validating the not-before time of a token; -1 "
        "disables it.", default=150,
    ),
    "clock_skew_leeway": Field(
        FieldType.SIGNED_DURATION, "Leeway in seconds for clock skew when validating all times; -1 disables it.",
        default=60,
    ),
    "bound_audiences": Field(
        FieldType.COMMA_STRING_SLICE, "Comma-separated list of 'aud' claims that are valid for login; any match "
        "is sufficient. A token with 'aud' is refused by a role without bound audiences.",
    ),
})

CEL_LOGIN_FIELDS = FieldSet({
    "role": Field(FieldType.LOWER_STRING, "The CEL role to log in against (else the config's default_role).",
                  default=""),
    "jwt": Field(FieldType.STRING, "The signed JWT to validate.", default="", sensitive=True),
})

CEL_EXPLAIN_FIELDS = FieldSet({
    "name": ROLE_NAME,
    "jwt": Field(FieldType.STRING, "The JWT to evaluate (nothing is issued).", default="", sensitive=True),
})


@dataclass(slots=True)
class CelRole:
    """A stored CEL role (OpenBao's ``celRoleEntry``)."""

    name: str
    cel_program: CelProgram
    message: str = ""
    expiration_leeway: int = 150
    not_before_leeway: int = 150
    clock_skew_leeway: int = 60
    bound_audiences: list[str] = field(default_factory=list)

    def to_storage(self) -> dict[str, Any]:
        return {
            "name": self.name, "cel_program": self.cel_program.to_json(), "message": self.message,
            "expiration_leeway": self.expiration_leeway, "not_before_leeway": self.not_before_leeway,
            "clock_skew_leeway": self.clock_skew_leeway, "bound_audiences": list(self.bound_audiences),
        }

    @classmethod
    def from_storage(cls, raw: dict[str, Any]) -> CelRole:
        return cls(
            name=str(raw["name"]), cel_program=CelProgram.from_raw(raw["cel_program"]),
            message=str(raw.get("message", "")), expiration_leeway=int(raw.get("expiration_leeway", 150)),
            not_before_leeway=int(raw.get("not_before_leeway", 150)),
            clock_skew_leeway=int(raw.get("clock_skew_leeway", 60)),
            bound_audiences=list(raw.get("bound_audiences") or []),
        )

    def public(self) -> dict[str, Any]:
        """GET (OpenBao's ``ToResponseData``)."""
        return self.to_storage()

    def as_role(self) -> Role:
        """The JWT role the shared checks read: this role's audiences and leeways."""
        return Role(
            role_type="jwt", bound_audiences=list(self.bound_audiences), expiration_leeway=self.expiration_leeway,
            not_before_leeway=self.not_before_leeway, clock_skew_leeway=self.clock_skew_leeway,
        )


# ---------------------------------------------------------------------------
# The program's answer as an Auth


def _role(name: str, values: dict[str, Any], base: CelRole | None = None) -> CelRole:
    """The role a write stores (``base`` None: a field it leaves out takes its default) or a
    patch (``base``, the stored role: a field it leaves out keeps its value)."""
    was = base or CelRole(name=name, cel_program=values["cel_program"])
    return CelRole(
        name=name, cel_program=values.get("cel_program", was.cel_program), message=values.get("message", was.message),
        expiration_leeway=values.get("expiration_leeway", was.expiration_leeway),
        not_before_leeway=values.get("not_before_leeway", was.not_before_leeway),
        clock_skew_leeway=values.get("clock_skew_leeway", was.clock_skew_leeway),
        bound_audiences=copy.deepcopy(values.get("bound_audiences", was.bound_audiences)),
    )


def _seconds(name: str, value: Any) -> int:
    """A duration field: a CEL ``duration`` or, as OpenBao's protobuf ``int64``, nanoseconds."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"pb.Auth.{name} must be a duration or an integer of nanoseconds")
    if value < 0 or value % _NS:
        raise InvalidRequest(
            f"pb.Auth.{name} is in nanoseconds (OpenBao's pb.Auth): write duration('1h') or a whole number of "
            f"seconds times 1000000000, not {value}"
        )
    return value // _NS


def _strings(name: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"pb.Auth.{name} must be a list of strings")
    return list(value)


def _string_map(name: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise InvalidRequest(f"{name} must be a map of strings to strings")
    return dict(value)


def _alias(name: str, value: Any) -> Alias:
    if not isinstance(value, AliasMessage):
        raise InvalidRequest(f"pb.Auth.{name} must be logical.Alias{{name: ...}}")
    data = _plain(value)
    alias_name = data.get("name")
    if not isinstance(alias_name, str) or not alias_name:
        raise InvalidRequest(f"pb.Auth.{name}: logical.Alias needs a non-empty name")
    return Alias(name=alias_name, metadata=_string_map(f"pb.Auth.{name}.metadata", data.get("metadata", {})))


def _plain(message: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in message.items():
        if isinstance(value, (AliasMessage, LeaseOptionsMessage)):
            out[str(key)] = value
        elif isinstance(value, list):
            out[str(key)] = [v if isinstance(v, AliasMessage) else to_python(v) for v in value]
        elif type(value).__name__ == "DurationType":
            out[str(key)] = int(value.total_seconds()) * _NS
        else:
            out[str(key)] = to_python(value)
    return out


def cel_auth(role: CelRole, value: Any) -> Auth:
    """The Auth of a program's answer, or the refusal it stands for.

    :raises InvalidRequest: ``false`` or a string (the program refused), any other answer,
        or a ``pb.Auth`` field of the wrong shape, a policy name outside ``[A-Za-z0-9_.-]``,
        or root.
    """
    prefix = f"CEL role '{role.name}'"
    if isinstance(value, bool) or type(value).__name__ == "BoolType":
        if not value:
            raise InvalidRequest(f"{prefix} blocked authorization: {role.message}" if role.message
                                 else f"{prefix} blocked authorization with boolean false return")
        raise InvalidRequest(f"{prefix} returned true: return pb.Auth{{...}} to log in")
    if isinstance(value, str):
        raise InvalidRequest(f"{prefix} blocked authorization with message: {str(value)[:500]}")
    if not isinstance(value, AuthMessage):
        raise InvalidRequest(f"{prefix} returned unexpected type: {type(value).__name__}")
    data = _plain(value)
    policies = _strings("policies", data.get("policies", [])) + _strings("token_policies", data.get("token_policies", []))
    for policy in policies:
        if len(policy) > 128 or not POLICY_NAME_RE.fullmatch(policy):
            raise InvalidRequest(f"{prefix} returned the policy {cl.show(policy)}, which is not a policy name "
                                 "(A-Z a-z 0-9 _ . - only, at most 128 characters)")
    metadata = _string_map("pb.Auth.metadata", data.get("metadata", {}))
    metadata["role"] = role.name
    alias = _alias("alias", data["alias"]) if "alias" in data else None
    groups = [_alias("group_aliases", g).name for g in data.get("group_aliases", [])]
    lease = _plain(data["lease_options"]) if isinstance(data.get("lease_options"), LeaseOptionsMessage) else {}
    token_type = data.get("token_type", 0)
    if isinstance(token_type, int) and not isinstance(token_type, bool):
        token_type = _TOKEN_TYPES.get(token_type, "")
    if token_type not in _TOKEN_TYPES.values():
        raise InvalidRequest(f"pb.Auth.token_type: unknown token type {cl.show(data.get('token_type'))}")
    num_uses = data.get("num_uses", 0)
    if isinstance(num_uses, bool) or not isinstance(num_uses, int) or num_uses < 0:
        raise InvalidRequest("pb.Auth.num_uses must be a non-negative integer")
    display = data.get("display_name", "")
    if not isinstance(display, str):
        raise InvalidRequest("pb.Auth.display_name must be a string")
    return Auth(
        display_name=display or (alias.name if alias else ""),
        policies=refuse_root(policies),
        metadata=metadata,
        alias=alias,
        group_aliases=groups,
        internal_data={"role": role.name, "role_type": "cel"},
        ttl=_seconds("lease_options.TTL", lease.get("TTL", 0)),
        max_ttl=_seconds("lease_options.MaxTTL", lease.get("MaxTTL", 0)),
        explicit_max_ttl=_seconds("explicit_max_ttl", data.get("explicit_max_ttl", 0)),
        period=_seconds("period", data.get("period", 0)),
        num_uses=num_uses,
        bound_cidrs=parse_cidrs(_strings("bound_cidrs", data.get("bound_cidrs", []))),
        token_type="default" if token_type in ("default-service", "default-batch") else str(token_type),
        no_default_policy=bool(data.get("no_default_policy", False)),
        renewable=bool(lease.get("renewable", True)),
    )


# ---------------------------------------------------------------------------
# The pipeline


@dataclass(slots=True)
class CelContext:
    """What ``CEL_PROGRAM`` reads and fills, attached to a LoginContext."""

    role: CelRole
    program: CompiledProgram
    result: Any = None
    auth: Auth | None = None


def _validate_cel_program(ctx: LoginContext) -> str | Skipped:
    cel = ctx.cel
    if cel is None:
        return Skipped("not a CEL role")
    claims = ctx.token_claims()
    value = cel.program.evaluate(claims, ctx.req.system.now(), "update")
    cel.result = to_python(value)
    cel.auth = cel_auth(cel.role, value)
    return f"pb.Auth with policies {cl.show(cel.auth.policies)}"


#: The CEL role's program as a login check; its name is the reason code.
CEL_PROGRAM = Check("cel_program", _validate_cel_program)
#: What a CEL login runs: the JWT checks a CEL role has, then its program.
CEL_CHECKS: tuple[Check, ...] = (
    *(c for c in CHECKS if c.name in ("parse", "algorithm", "signature", "issuer", "audience", "time")),
    CEL_PROGRAM,
)


async def _load(backend: JWTAuthBackend, req: Request, role_name: str) -> tuple[Any, CelRole, CompiledProgram]:
    config, _, found = await load_role(backend, req, role_name, backend.cel_role)
    return config, found[0], found[1]


def paths(backend: JWTAuthBackend) -> list[PathSpec]:
    """The CEL role, login and explain PathSpecs."""

    async def list_roles(req: Request, values: dict[str, Any]) -> Response:
        return await list_response(req.require_storage(), CEL_ROLE_PREFIX, values)

    async def read(req: Request, values: dict[str, Any]) -> Response | None:
        found = await backend.cel_role(req.require_storage(), values["name"])
        return None if found is None else Response(data=found[0].public())

    async def write(req: Request, values: dict[str, Any]) -> Response:
        if "cel_program" not in values:
            raise InvalidRequest("missing required field 'cel_program'")
        program = CelProgram.from_raw(values["cel_program"])
        return await store(req, _role(values["name"], {**values, "cel_program": program}))

    async def patch(req: Request, values: dict[str, Any]) -> Response:
        """OpenBao's PATCH: the fields sent replace the stored role's; a ``cel_program`` sent
        is laid over the stored program (``variables`` or ``expression`` alone keeps the
        other, as OpenBao's decoding into the stored program does)."""
        found = await backend.cel_role(req.require_storage(), values["name"])
        if found is None:
            raise InvalidRequest("Unable to fetch cel role entry to patch")
        old = found[0]
        if "cel_program" in values:
            program = CelProgram.from_raw({**old.cel_program.to_json(), **values["cel_program"]})
            values = {**values, "cel_program": program}
        return await store(req, _role(values["name"], values, old))

    async def store(req: Request, role: CelRole) -> Response:
        program = compile_program(role.cel_program)
        await req.require_storage().put(CEL_ROLE_PREFIX + role.name, role.to_storage())
        backend.install_cel_role(role.name, role, program)
        return Response(data=role.public())

    async def delete(req: Request, values: dict[str, Any]) -> None:
        await req.require_storage().delete(CEL_ROLE_PREFIX + values["name"])
        backend.invalidate(CEL_ROLE_PREFIX + values["name"])

    async def login(req: Request, values: dict[str, Any]) -> Response:
        role_name = values.get("role", "")
        known = ""
        ctx: LoginContext | None = None
        try:
            config, role, program = await _load(backend, req, role_name)
            role_name = known = role.name
            token = values.get("jwt", "")
            if not token:
                raise InvalidRequest("missing token")
            ctx = LoginContext(backend, req, config, role.as_role(), token=token, remote_addr=remote_addr(req))
            ctx.cel = CelContext(role, program)
            await run_checks(ctx, CEL_CHECKS)
            auth = ctx.cel.auth
            assert auth is not None  # the program's check passed
        except PluginError as exc:
            # The same facts as a JWT login's refusal: the role (when it exists), iss and sub.
            refused(req, exc, "login_failed", known_role=known, claims=ctx.claims if ctx else None,
                    role=role_name, role_type="cel")
            raise
        return Response(auth=auth)

    async def explain(req: Request, values: dict[str, Any]) -> Response:
        config, role, program = await _load(backend, req, values["name"])
        token = values.get("jwt", "")
        if not token:
            raise InvalidRequest("missing token")
        ctx = LoginContext(backend, req, config, role.as_role(), token=token, check_cidrs=False)
        cel = ctx.cel = CelContext(role, program)
        outcomes = await run_checks(ctx, CEL_CHECKS, explain=True)
        data: dict[str, Any] = {
            "would_succeed": all(o.ok for o in outcomes),
            "role": role.name,
            "checks": [o.as_dict() for o in outcomes],
            "claims": ctx.claims,
            "result": cel.result,
        }
        if cel.auth is not None:
            data["auth"] = _auth_view(cel.auth)
        return Response(data=data)

    return [
        PathSpec("cel/role/?", PAGE_FIELDS, {Operation.LIST: list_roles}, "List the CEL roles."),
        PathSpec(
            f"cel/role/(?P<name>{ROLE_NAME_RE})/explain", CEL_EXPLAIN_FIELDS, {Operation.UPDATE: explain},
            "Explain how a login with this CEL role and JWT would go, without issuing a token.",
            "Runs the JWT checks and the role's program and returns each outcome and the program's result.",
        ),
        PathSpec(
            f"cel/role/(?P<name>{ROLE_NAME_RE})", CEL_ROLE_FIELDS,
            {Operation.READ: read, Operation.UPDATE: write, Operation.PATCH: patch, Operation.DELETE: delete},
            "Manage a CEL role.", "A CEL role validates a JWT with a CEL program that decides the token's policies.",
        ),
        PathSpec(
            "cel/login", CEL_LOGIN_FIELDS, {Operation.UPDATE: login},
            "Authenticates with a JWT (or OIDC) token against a CEL role.",
            "Validates the JWT against the mount's key source and the role's audiences and leeways, runs the "
            "role's CEL program, and issues a token from the pb.Auth it returns.",
            unauthenticated=True,
        ),
    ]


def _auth_view(auth: Auth) -> dict[str, Any]:
    out = dataclasses.asdict(auth)
    out.pop("internal_data", None)
    return out
