"""The ``role/`` list and ``role/<name>`` CRUD paths (docs/reference/vault-api.md section 3)."""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from plugin.errors import InvalidRequest
from plugin.framework import Operation, PathSpec, Request, Response
from plugin.paging import PAGE_FIELDS, list_response
from plugin.policy_templates import compile_templates
from plugin.policyutil import fold_case
from plugin.schema import Field, FieldSet, FieldType
from plugin.token_fields import (
    LEGACY_PAIRS,
    TOKEN_FIELDS,
    TokenParams,
    apply_token_fields,
    check_token_limits,
    upgrade_legacy,
)

if TYPE_CHECKING:
    from plugin.backend import JWTAuthBackend

__all__ = [
    "ROLE_PREFIX", "ROLE_NAME", "ROLE_NAME_RE", "ROLE_FIELDS", "CALLBACK_MODES", "OAUTH2_METADATA",
    "CLAIMS_PRECEDENCE", "MAX_POLL_INTERVAL", "Role", "path_role", "path_role_list",
]

ROLE_PREFIX = "role/"
#: Vault's role name regex ``\w(([\w-.]+)?\w)?`` with ASCII word characters (Go's ``\w``).
ROLE_NAME_RE = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?"

_S = FieldType.STRING
_CSS = FieldType.COMMA_STRING_SLICE
#: ``callback_mode`` values (OpenBao's): where the IdP's answer goes. ``client``: the
#: caller's redirect URI (the CLI's loopback listener, the UI); ``direct``: authmount's own
#: ``oidc/callback`` page, the client polls ``oidc/poll``; ``device``: no redirect at all,
#: RFC 8628 device authorization, the client polls ``oidc/poll``.
CALLBACK_MODES = ("client", "direct", "device")
#: ``oauth2_metadata`` values (OpenBao's): the IdP tokens a login response may carry.
OAUTH2_METADATA = ("id_token", "access_token", "refresh_token")
#: ``oidc_claims_precedence`` values: which source wins when the ID token and the userinfo
#: response both carry a claim.
CLAIMS_PRECEDENCE = ("userinfo", "id_token")
#: The longest ``poll_interval`` a role may ask of clients (seconds).
MAX_POLL_INTERVAL = 300
_VERBOSE_WARNING = (
    "verbose_oidc_logging has been enabled for this role. This is not recommended in production "
    "since sensitive information may be present in OIDC responses."
)

#: The ``<name>`` of ``role/<name>`` paths: lower-cased, as in Vault, before the request's
#: ACL check, so a policy on ``role/admin`` also governs ``role/ADMIN``.
ROLE_NAME = Field(
    FieldType.NAME, "Name of the role (lower-cased before the ACL check).", canonical=fold_case
)

ROLE_FIELDS = FieldSet(
    {
        "name": ROLE_NAME,
        "role_type": Field(
            _S, "Type of the role, either 'jwt' or 'oidc'. Read on every write: an update that "
            "leaves it out makes the role 'oidc'.", default="oidc",
        ),
        "user_claim": Field(
            _S, "The claim to use for the Identity entity alias name (required).", default=""
        ),
        "user_claim_json_pointer": Field(
            FieldType.BOOL, "If true, 'user_claim' is a JSON pointer when it starts with '/'.",
            default=False,
        ),
        "bound_audiences": Field(
            _CSS, "Comma-separated list of 'aud' claims that are valid for login; any match is "
            "sufficient. A token with 'aud' is refused by a role without bound audiences. With "
            "bound_claims_type=glob the values are globs.",
        ),
        "bound_subject": Field(
            _S, "The 'sub' claim that is valid for login (a glob with bound_claims_type=glob).",
            default="",
        ),
        "bound_claims": Field(
            FieldType.MAP, "Map of claims/values which must match for login. Keys starting with "
            "'/' are JSON pointers; a list value means any of its elements. Values match by type: a "
            "string only a string, a bool only a bool, a number only the same number (1 matches 1 and "
            "1.0, never 1.9 or \"1\").",
        ),
        "bound_claims_type": Field(
            _S, "How to interpret values in 'bound_claims', 'bound_subject' and 'bound_audiences': "
            "'string' (exact match, the default) or 'glob' ('*' matches any run of characters). "
            "An update that leaves it out keeps the role's value.", default="string",
        ),
        "claim_mappings": Field(
            FieldType.KV_PAIRS, "Mappings of claims (key) that will be copied to a metadata "
            "field (value). Numbers and booleans are stringified.",
        ),
        "list_claim_mappings": Field(
            FieldType.KV_PAIRS, "Mappings of list claims (key) that will be copied to a metadata "
            "field (value), elements stringified and joined with ','.",
        ),
        "groups_claim": Field(
            _S, "The claim to use for the Identity group alias names (a string or a list of "
            "strings).", default="",
        ),
        "oidc_scopes": Field(_CSS, "List of OIDC scopes to be used with an OIDC role."),
        "allowed_redirect_uris": Field(
            _CSS, "Comma-separated list of allowed values for redirect_uri (required for 'oidc' roles)."
        ),
        "verbose_oidc_logging": Field(
            FieldType.BOOL, "Log the claims of the ID token (and userinfo) each OIDC callback "
            "receives, at debug level (log_level: debug): the event oidc_provider_response. The "
            "tokens themselves are never logged. Not recommended in production.", default=False,
        ),
        "max_age": Field(
            FieldType.DURATION, "Specifies the allowable elapsed time in seconds since the last "
            "time the user was actively authenticated (OIDC).", default=0,
        ),
        "callback_mode": Field(
            _S, "Where the OIDC login's answer goes: 'client' (the default: the caller's "
            "redirect_uri, the CLI's loopback listener or the UI), 'direct' (authmount's own "
            "oidc/callback page, which asks the user to confirm unless "
            "'oidc_disable_confirmation'; the client polls oidc/poll), or 'device' (RFC 8628 "
            "device authorization at the IdP, no redirect; the client polls oidc/poll). "
            "'direct' and 'device' need a client_nonce. As OpenBao's field, so `bao login "
            "-method=oidc callbackmode=direct|device` works. An update that leaves it out keeps "
            "the role's value.", default="client",
        ),
        "poll_interval": Field(
            FieldType.INT, "Seconds between the client's oidc/poll calls in the 'direct' and "
            f"'device' callback modes (at most {MAX_POLL_INTERVAL}). 0, the default, means the "
            "IdP's interval in device mode, else 5.", default=0,
        ),
        "oidc_disable_confirmation": Field(
            FieldType.BOOL, "In the 'direct' callback mode, release the login to the polling "
            "client without asking the user to confirm on the callback page first. The "
            "confirmation (enabled by default) shows the address and role that started the "
            "login, so a user who follows someone else's link does not log that person in "
            "(RFC 8628 section 5.4).", default=False,
        ),
        "oauth2_metadata": Field(
            _CSS, "The IdP tokens an OIDC login response carries in its auth metadata, as "
            "'oauth2_<name>': any of 'id_token', 'access_token', 'refresh_token' (OpenBao's "
            "field). They are in the login response only: never stored with the token (token "
            "lookup does not show them) and never in the audit log's record of the token.",
        ),
        "oidc_claims_precedence": Field(
            _S, "Which source wins when the ID token and the IdP's userinfo response both carry a "
            "claim (the OIDC flow merges userinfo into the claims that user_claim, groups_claim, "
            "claim_mappings and bound_claims read): 'userinfo' (the default, as Vault) or "
            "'id_token' (userinfo only adds claims the ID token lacks).", default="userinfo",
        ),
        "resolve_distributed_claims": Field(
            FieldType.BOOL, "Resolve distributed and aggregated claims (OIDC Core 5.6.2: "
            "'_claim_names'/'_claim_sources', e.g. Azure's group overage) that this role reads "
            "(user_claim, groups_claim, claim_mappings, list_claim_mappings, bound_claims): an "
            "aggregated claim's JWT must verify with the mount's keys; a distributed claim is "
            "fetched from its endpoint with the source's access token (else the OIDC access "
            "token, else the login's 'distributed_claim_access_token'), at most 4 sources of "
            "256 KiB each within 5 seconds per login. A claim that cannot be resolved refuses "
            "the login. Off by default.", default=False,
        ),
        "max_token_age": Field(
            FieldType.DURATION, "If set, JWT login refuses tokens whose 'iat' is older than this "
            "(tokens must then carry 'iat').", default=0,
        ),
        "expiration_leeway": Field(
            FieldType.SIGNED_DURATION, "Duration in seconds of leeway when validating expiration "
            "of a token to account for clock skew. Defaults to 150 (2.5 minutes) if set to 0 and "
            "can be disabled if set to -1.", default=0,
        ),
        "not_before_leeway": Field(
            FieldType.SIGNED_DURATION, "Duration in seconds of leeway when validating not before "
            "values of a token to account for clock skew. Defaults to 150 (2.5 minutes) if set to "
            "0 and can be disabled if set to -1.", default=0,
        ),
        "clock_skew_leeway": Field(
            FieldType.SIGNED_DURATION, "Duration in seconds of leeway when validating all claims "
            "to account for clock skew. Defaults to 60 (1 minute) if set to 0 and can be disabled "
            "if set to -1.", default=0,
        ),
        "token_policies_template_claims": Field(
            FieldType.BOOL, "If true, token_policies entries are templates over the token's claims, "
            "rendered at login: '{{ .claim }}' or '{{ .claim.nested }}' (e.g. 'project-{{ .project_path }}'). "
            "A missing claim, a value that is not a string, integer or boolean, a result outside "
            "A-Z a-z 0-9 _ . - and 'root' refuse the login; an empty result is dropped (OpenBao).",
            default=False,
        ),
        **TOKEN_FIELDS,
    }
)


@dataclass(slots=True)
class Role(TokenParams):
    """A stored role: every ``ROLE_FIELDS`` entry except the path-captured ``name``."""

    role_type: str = "oidc"
    user_claim: str = ""
    user_claim_json_pointer: bool = False
    bound_audiences: list[str] | None = None
    bound_subject: str = ""
    bound_claims: dict[str, Any] | None = None
    bound_claims_type: str = "string"
    claim_mappings: dict[str, str] | None = None
    list_claim_mappings: dict[str, str] | None = None
    groups_claim: str = ""
    oidc_scopes: list[str] | None = None
    allowed_redirect_uris: list[str] | None = None
    verbose_oidc_logging: bool = False
    max_age: int = 0
    callback_mode: str = "client"
    poll_interval: int = 0
    oidc_disable_confirmation: bool = False
    oauth2_metadata: list[str] | None = None
    oidc_claims_precedence: str = "userinfo"
    resolve_distributed_claims: bool = False
    max_token_age: int = 0
    expiration_leeway: int = 0
    not_before_leeway: int = 0
    clock_skew_leeway: int = 0
    token_policies_template_claims: bool = False

    @classmethod
    def from_storage(cls, raw: dict[str, Any]) -> Role:
        """Build from a stored dict, upgrading legacy entries (3.3); storage is not rewritten."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in raw.items() if k in names}
        for key in ("token_policies", "token_bound_cidrs", "policies", "bound_cidrs", "alias_metadata"):
            if kwargs.get(key) is None:
                kwargs.pop(key, None)
        role = cls(**kwargs)
        if not raw.get("role_type"):
            role.role_type = "jwt"
        if not raw.get("bound_claims_type"):
            role.bound_claims_type = "string"
        for old, new in LEGACY_PAIRS:
            if not getattr(role, new) and getattr(role, old):
                legacy = getattr(role, old)
                setattr(role, new, list(legacy) if isinstance(legacy, list) else legacy)
        return role

    def to_storage(self) -> dict[str, Any]:
        """The dict written to storage."""
        return dataclasses.asdict(self)

    def public(self) -> dict[str, Any]:
        """GET output (3.4): every field, plus legacy keys whose stored value is non-zero."""
        stored = self.to_storage()
        out = ROLE_FIELDS.public(stored)
        for old, _new in LEGACY_PAIRS:
            if stored[old]:
                out[old] = stored[old]
        return out


def _go_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _check_glob_claims(bound_claims: dict[str, Any]) -> None:
    for value in bound_claims.values():
        if isinstance(value, list):
            for item in value:
                if not isinstance(item, str):
                    raise InvalidRequest(f"claim is not a string: {_go_value(item)}")
        elif isinstance(value, (bool, int, float)):
            # JSON numbers reach this message over HTTP in Vault too (docs/reference/vault-api.md 3.2 step 6).
            raise InvalidRequest(f"claim is not a string: {_go_value(value)}")
        elif not isinstance(value, str):
            raise InvalidRequest(f"claim is not a string or list: {_go_value(value)}")


def _check_mapping_targets(role: Role) -> None:
    seen: set[str] = set()
    for mappings in (role.claim_mappings, role.list_claim_mappings):
        for target in (mappings or {}).values():
            if target == "role":
                raise InvalidRequest('metadata key "role" is reserved and may not be a mapping destination')
            if target in seen:
                raise InvalidRequest(f'multiple keys are mapped to metadata key "{target}"')
            seen.add(target)


def _apply_oidc_modes(role: Role, values: dict[str, Any]) -> None:
    """The OIDC flow's mode and output fields, each kept when the write leaves it out.

    :raises InvalidRequest: a value outside the field's set (OpenBao's messages).
    """
    if "callback_mode" in values:
        mode = values["callback_mode"] or "client"
        if mode not in CALLBACK_MODES:
            raise InvalidRequest(f"invalid 'callback_mode': {mode}")
        role.callback_mode = mode
    if "poll_interval" in values:
        interval = values["poll_interval"]
        if not 0 <= interval <= MAX_POLL_INTERVAL:
            raise InvalidRequest(f"invalid 'poll_interval': {interval} (0 to {MAX_POLL_INTERVAL} seconds)")
        role.poll_interval = interval
    if "oidc_disable_confirmation" in values:
        role.oidc_disable_confirmation = values["oidc_disable_confirmation"]
    if "oauth2_metadata" in values:
        names = list(dict.fromkeys(values["oauth2_metadata"]))
        for name in names:
            if name not in OAUTH2_METADATA:
                raise InvalidRequest(f"Unrecognized oauth2 metadata name {name}")
        role.oauth2_metadata = names
    if "oidc_claims_precedence" in values:
        precedence = values["oidc_claims_precedence"] or "userinfo"
        if precedence not in CLAIMS_PRECEDENCE:
            raise InvalidRequest(f"invalid 'oidc_claims_precedence': {precedence} ('userinfo' or 'id_token')")
        role.oidc_claims_precedence = precedence
    if "resolve_distributed_claims" in values:
        role.resolve_distributed_claims = values["resolve_distributed_claims"]
    reserved = {f"oauth2_{name}" for name in role.oauth2_metadata or ()}
    for mappings in (role.claim_mappings, role.list_claim_mappings):
        for target in (mappings or {}).values():
            if target in reserved:
                raise InvalidRequest(f'metadata key "{target}" is reserved by oauth2_metadata and may not be a mapping destination')


def apply_role_write(role: Role, values: dict[str, Any], *, max_lease_ttl: int) -> list[str]:
    """Merge a write into ``role`` and validate it in Vault's order (docs/reference/vault-api.md 3.2); return warnings.

    :raises InvalidRequest: the first failing check, with Vault's message.
    """
    role_type = values.get("role_type") or "oidc"
    if role_type not in ("jwt", "oidc"):
        raise InvalidRequest(f"invalid 'role_type': {role_type}")
    role.role_type = role_type
    apply_token_fields(role, values)
    upgrade_legacy(role, values)
    warnings = check_token_limits(role, max_lease_ttl=max_lease_ttl)
    for name in (
        "bound_audiences", "bound_subject", "user_claim_json_pointer", "max_age", "max_token_age",
        "expiration_leeway", "not_before_leeway", "clock_skew_leeway",
    ):
        if name in values:
            setattr(role, name, copy.deepcopy(values[name]))
    # Vault resets an omitted bound_claims_type to "string", so an update of a glob role
    # that leaves it out turns its globs into exact values (logins then fail); kept here.
    # An empty value sent is no type (OpenBao refuses it too); only a value left out keeps the role's.
    given = values.get("bound_claims_type")
    bound_claims_type = given if given is not None else role.bound_claims_type or "string"
    if bound_claims_type not in ("string", "glob"):
        raise InvalidRequest(f"invalid 'bound_claims_type': {bound_claims_type}")
    role.bound_claims_type = bound_claims_type
    if "bound_claims" in values:
        role.bound_claims = copy.deepcopy(values["bound_claims"])
    if role.bound_claims_type == "glob" and role.bound_claims:
        _check_glob_claims(role.bound_claims)
    for name in ("claim_mappings", "list_claim_mappings"):
        if name in values:
            setattr(role, name, dict(values[name]))
    _check_mapping_targets(role)
    if "user_claim" in values:
        role.user_claim = values["user_claim"]
    if not role.user_claim:
        raise InvalidRequest("a user claim must be defined on the role")
    for name in ("groups_claim", "oidc_scopes", "allowed_redirect_uris", "verbose_oidc_logging",
                 "token_policies_template_claims"):
        if name in values:
            setattr(role, name, copy.deepcopy(values[name]))
    _apply_oidc_modes(role, values)
    if role.token_policies_template_claims:
        compile_templates(role.token_policies)
    if role.verbose_oidc_logging:
        warnings.append(_VERBOSE_WARNING)
    if role.role_type == "oidc" and not role.allowed_redirect_uris:
        raise InvalidRequest("'allowed_redirect_uris' must be set if 'role_type' is 'oidc' or unspecified.")
    if role.role_type == "jwt" and not (
        role.bound_audiences or role.token_bound_cidrs or role.bound_subject or role.bound_claims
    ):
        raise InvalidRequest("must have at least one bound constraint when creating/updating a role")
    if role.token_max_ttl > 0 and role.token_ttl > role.token_max_ttl:
        raise InvalidRequest("ttl should not be greater than max ttl")
    return warnings


def path_role_list(backend: JWTAuthBackend) -> PathSpec:
    """The ``role/`` LIST PathSpec."""

    async def list_roles(req: Request, values: dict[str, Any]) -> Response:
        return await list_response(req.require_storage(), ROLE_PREFIX, values)

    return PathSpec(
        pattern="role/?",
        fields=PAGE_FIELDS,
        operations={Operation.LIST: list_roles},
        summary="Lists all the roles registered with the backend.",
        description="The list will contain the names of the roles.",
    )


def path_role(backend: JWTAuthBackend) -> PathSpec:
    """The ``role/<name>`` PathSpec (GET, POST/PUT, DELETE)."""

    async def read(req: Request, values: dict[str, Any]) -> Response | None:
        role = await backend.role(req.require_storage(), values["name"])
        return None if role is None else Response(data=role.public())

    async def write(req: Request, values: dict[str, Any]) -> Response | None:
        name = values["name"]
        storage = req.require_storage()
        max_lease = int(getattr(req.system, "max_lease_ttl", 0) or 0)
        written: list[tuple[Role, list[str]]] = []

        def merge(old: Any) -> Any:
            # Into the stored role, not this node's cached copy: another node's write a moment
            # ago (its announcement still on the way) is kept, not written over.
            role = Role.from_storage(old) if old is not None else Role()
            warnings = apply_role_write(role, values, max_lease_ttl=max_lease)
            written[:] = [(role, warnings)]
            return role.to_storage()

        await storage.update(ROLE_PREFIX + name, merge)
        role, warnings = written[0]
        backend.install_role(name, role)
        return Response(data=None, warnings=warnings) if warnings else None

    async def delete(req: Request, values: dict[str, Any]) -> None:
        name = values["name"]
        await req.require_storage().delete(ROLE_PREFIX + name)
        backend.invalidate(ROLE_PREFIX + name)

    async def exists(req: Request, values: dict[str, Any]) -> bool:
        return await backend.role(req.require_storage(), values["name"]) is not None

    return PathSpec(
        pattern=f"role/(?P<name>{ROLE_NAME_RE})",
        fields=ROLE_FIELDS,
        operations={
            Operation.READ: read,
            Operation.CREATE: write,
            Operation.UPDATE: write,
            Operation.DELETE: delete,
        },
        summary="Register a role with the backend.",
        description="A role is required to authenticate with this backend. The role binds JWT "
        "token information with token policies and settings. Updates merge into the stored role.",
        existence_check=exists,
    )
