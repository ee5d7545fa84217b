"""Token roles: ``auth/token/roles/<name>`` and what ``auth/token/create/<name>`` takes from
them (OpenBao's ``tsRoleEntry``, ``tokenStoreRoleCreateUpdate`` and the role branch of
``resolveTokenPolicies``, their checks in their order and with their texts; the differential
test against OpenBao runs both servers side by side)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from plugin.cidrutil import parse_cidrs
from plugin.claims import glob_match
from plugin.errors import InvalidRequest, NotFound
from plugin.framework import Operation, PathSpec, Request, Response
from plugin.policyutil import fold_case, sanitize_policies
from plugin.schema import Field, FieldSet, FieldType

__all__ = [
    "TokenRole",
    "ROLE_PREFIX",
    "ROLE_FIELDS",
    "ROLE_NAME_RE",
    "DEPRECATED",
    "apply_role_write",
    "role_paths",
    "load_role",
    "role_policies",
    "role_ttls",
    "check_entity_alias",
]

#: Where a role is stored in the token mount's storage.
ROLE_PREFIX = "role/"
#: Vault's ``framework.GenericNameRegex``: (ASCII, as Go's ``\w``) word characters, and ``-``
#: or ``.`` inside.
ROLE_NAME_RE = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?"
#: A path suffix must contain such a run of three characters or more (Vault searches, it
#: does not anchor: ``v1.0/a`` passes).
_PATH_SUFFIX = re.compile(r"\w[\w.-]+\w", re.ASCII)
_TOKEN_TYPES = {"service": "service", "batch": "batch", "default-service": "default-service",
                "default-batch": "default-batch"}


def _f(ftype: FieldType, description: str, default: Any = None) -> Field:
    return Field(ftype, description, default=default)


#: The role's fields, as Vault declares them (``period``, ``explicit_max_ttl`` and
#: ``bound_cidrs`` are the deprecated spellings of the ``token_`` ones).
ROLE_FIELDS = FieldSet({
    "role_name": _f(FieldType.NAME, "Name of the role."),
    "allowed_policies": _f(FieldType.COMMA_STRING_SLICE,
                           "Tokens may be created with any subset of these policies; with none asked for, "
                           "they get all of them."),
    "disallowed_policies": _f(FieldType.COMMA_STRING_SLICE, "No token of this role may have any of these policies."),
    "allowed_policies_glob": _f(FieldType.COMMA_STRING_SLICE, "As allowed_policies, as glob patterns."),
    "disallowed_policies_glob": _f(FieldType.COMMA_STRING_SLICE, "As disallowed_policies, as glob patterns."),
    "orphan": _f(FieldType.BOOL, "Tokens of this role have no parent.", False),
    "renewable": _f(FieldType.BOOL, "Tokens of this role may be renewed.", True),
    "path_suffix": _f(FieldType.STRING, "Added to the tokens' creation path (for revoke-prefix by role revision); "
                      r"must match \w[\w-.]+\w.", ""),
    "allowed_entity_aliases": _f(FieldType.COMMA_STRING_SLICE, "Stored and shown; creating a token with an "
                                 "entity alias is not supported."),
    "token_type": _f(FieldType.STRING, "service, batch, default-service or default-batch.", "default-service"),
    "token_period": _f(FieldType.DURATION, "Tokens of this role are periodic with this period.", 0),
    "token_explicit_max_ttl": _f(FieldType.DURATION, "Hard lifetime cap of the role's tokens.", 0),
    "token_bound_cidrs": _f(FieldType.COMMA_STRING_SLICE, "Client CIDRs the role's tokens may be used from."),
    "token_no_default_policy": _f(FieldType.BOOL, "Do not add the default policy.", False),
    "token_num_uses": _f(FieldType.INT, "Maximum uses of the role's tokens; 0 is unlimited.", 0),
    "period": Field(FieldType.DURATION, "Use token_period instead.", default=0, deprecated=True),
    "explicit_max_ttl": Field(FieldType.DURATION, "Use token_explicit_max_ttl instead.", default=0, deprecated=True),
    "bound_cidrs": Field(FieldType.COMMA_STRING_SLICE, "Use token_bound_cidrs instead.", deprecated=True),
})


#: The deprecated spellings of ``token_period``, ``token_explicit_max_ttl`` and ``token_bound_cidrs``.
DEPRECATED = ("period", "explicit_max_ttl", "bound_cidrs")


@dataclass
class TokenRole:
    """One stored token role (Vault's ``tsRoleEntry``; durations in seconds)."""

    name: str
    allowed_policies: list[str] = field(default_factory=list)
    disallowed_policies: list[str] = field(default_factory=list)
    allowed_policies_glob: list[str] = field(default_factory=list)
    disallowed_policies_glob: list[str] = field(default_factory=list)
    orphan: bool = False
    renewable: bool = True
    path_suffix: str = ""
    allowed_entity_aliases: list[str] | None = None
    token_type: str = "default-service"
    token_period: int = 0
    token_explicit_max_ttl: int = 0
    token_bound_cidrs: list[str] = field(default_factory=list)
    token_no_default_policy: bool = False
    token_num_uses: int = 0
    #: The deprecated fields as written, shown on read (Vault keeps them for read compatibility).
    period: int = 0
    explicit_max_ttl: int = 0
    bound_cidrs: list[str] = field(default_factory=list)

    @classmethod
    def from_storage(cls, data: dict[str, Any]) -> TokenRole:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def public(self) -> dict[str, Any]:
        """GET output: Vault's keys; the CIDRs and use count only when set."""
        out: dict[str, Any] = {
            "period": self.period, "token_period": self.token_period,
            "explicit_max_ttl": self.explicit_max_ttl, "token_explicit_max_ttl": self.token_explicit_max_ttl,
            "disallowed_policies": list(self.disallowed_policies), "allowed_policies": list(self.allowed_policies),
            "disallowed_policies_glob": list(self.disallowed_policies_glob),
            "allowed_policies_glob": list(self.allowed_policies_glob),
            "name": self.name, "orphan": self.orphan, "path_suffix": self.path_suffix, "renewable": self.renewable,
            "token_type": self.token_type, "allowed_entity_aliases": self.allowed_entity_aliases,
            "token_no_default_policy": self.token_no_default_policy,
        }
        if self.token_bound_cidrs:
            out["token_bound_cidrs"] = list(self.token_bound_cidrs)
        if self.bound_cidrs:
            out["bound_cidrs"] = list(self.bound_cidrs)
        if self.token_num_uses > 0:
            out["token_num_uses"] = self.token_num_uses
        return out


def apply_role_write(role: TokenRole, values: dict[str, Any], *, max_lease_ttl: int) -> list[str]:
    """Apply the given fields to ``role`` (a new role starts from the defaults, so a field not
    given keeps what is stored); returns the warnings.

    :raises InvalidRequest: Vault's texts for a bad path suffix, token type, count or
        combination; nothing is stored then.
    """
    for key in ("orphan", "renewable"):
        if key in values:
            setattr(role, key, bool(values[key]))
    if "path_suffix" in values:
        suffix = values["path_suffix"]
        if suffix and not _PATH_SUFFIX.search(suffix):
            raise InvalidRequest(r"given role path suffix contains invalid characters; must match \w[\w-.]+\w")
        role.path_suffix = suffix
    if ".." in role.path_suffix:
        raise InvalidRequest("error registering path suffix: path cannot contain parent references")
    # Vault's SanitizePolicies and RemoveDuplicates(..., true) give the same normal form:
    # trimmed, lower-cased, without empties, unique, sorted. Stored so, read so.
    for key in ("allowed_policies", "allowed_policies_glob", "disallowed_policies", "disallowed_policies_glob"):
        if key in values:
            setattr(role, key, sanitize_policies(values[key]))
    # Vault parses the token fields with the type set aside (its own values checked after).
    parsing_type = "default" if "token_type" in values else role.token_type
    _parse_token_fields(role, values, parsing_type)
    if "token_type" in values:
        wanted = values["token_type"]
        if wanted not in _TOKEN_TYPES:
            raise InvalidRequest(f'invalid \'token_type\' value "{wanted}"')
        role.token_type = _TOKEN_TYPES[wanted]
    warnings: list[str] = []
    legacy: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
        ("token_period", "period", int),
        ("token_bound_cidrs", "bound_cidrs", _legacy_cidrs),
        ("token_explicit_max_ttl", "explicit_max_ttl", int),
    )
    for new, old, parse in legacy:
        if new not in values:
            if old in values:
                value = parse(values[old])
                setattr(role, old, value)
                setattr(role, new, value)
        else:
            if old in values:
                warnings.append(f"Both '{new}' and deprecated '{old}' value supplied, ignoring the deprecated value")
            setattr(role, old, type(getattr(role, old))())
    explicit = role.token_explicit_max_ttl if "token_explicit_max_ttl" in values else role.explicit_max_ttl
    if explicit and max_lease_ttl and explicit > max_lease_ttl:
        warnings.append(
            f"Given explicit max TTL of {explicit} is greater than system/mount allowed value of {max_lease_ttl} "
            "seconds; until this is fixed attempting to create tokens against this role will result in an error")
    if role.token_type == "batch":
        for bad, reason in (
            (not role.orphan, "non-orphan tokens"),
            (bool(role.period or role.token_period), "periodic tokens"),
            (role.renewable, "renewable tokens"),
            (bool(role.explicit_max_ttl or role.token_explicit_max_ttl), "tokens with an explicit max TTL"),
        ):
            if bad:
                raise InvalidRequest(f"'token_type' cannot be 'batch' when role is set to generate {reason}")
    if "allowed_entity_aliases" in values:
        role.allowed_entity_aliases = sanitize_policies(values["allowed_entity_aliases"])  # the same normal form
    return warnings


def _legacy_cidrs(values: list[str]) -> list[str]:
    try:
        return parse_cidrs(values)
    except InvalidRequest as exc:
        raise InvalidRequest(f"error parsing bound_cidrs: {exc}") from None


def _parse_token_fields(role: TokenRole, values: dict[str, Any], token_type: str) -> None:
    """Vault's ``TokenParams.ParseTokenFields`` for the fields a token role has.

    :raises InvalidRequest: ``error parsing role fields: <why>``.
    """
    try:
        if "token_bound_cidrs" in values:
            role.token_bound_cidrs = parse_cidrs(values["token_bound_cidrs"])
    except InvalidRequest as exc:
        raise InvalidRequest(f"error parsing role fields: {exc}") from None
    if "token_explicit_max_ttl" in values:
        role.token_explicit_max_ttl = values["token_explicit_max_ttl"]
    if "token_no_default_policy" in values:
        role.token_no_default_policy = bool(values["token_no_default_policy"])
    if "token_period" in values:
        role.token_period = values["token_period"]
    if "token_num_uses" in values:
        role.token_num_uses = values["token_num_uses"]
    if role.token_num_uses < 0:
        raise InvalidRequest("error parsing role fields: 'token_num_uses' cannot be negative")
    if token_type in ("batch", "default-batch"):
        if role.token_period:
            raise InvalidRequest("error parsing role fields: 'token_type' cannot be 'batch' or 'default_batch' "
                                 "when set to generate periodic tokens")
        if role.token_num_uses:
            raise InvalidRequest("error parsing role fields: 'token_type' cannot be 'batch' or 'default_batch' "
                                 "when set to generate tokens with limited use count")


async def load_role(req: Request, name: str) -> TokenRole | None:
    """The stored role ``name``, its deprecated fields carried into the ``token_`` ones
    when those are unset (Vault's read-time upgrade)."""
    data = await req.require_storage().get(ROLE_PREFIX + name)
    if data is None:
        return None
    role = TokenRole.from_storage(data)
    if role.token_type == "default":
        role.token_type = "default-service"
    if role.period and not role.token_period:
        role.token_period = role.period
    if role.explicit_max_ttl and not role.token_explicit_max_ttl:
        role.token_explicit_max_ttl = role.explicit_max_ttl
    if role.bound_cidrs and not role.token_bound_cidrs:
        role.token_bound_cidrs = list(role.bound_cidrs)
    return role


def _in_globs(patterns: list[str], name: str) -> bool:
    return any(glob_match(p, name) for p in patterns)


def role_policies(role: TokenRole, requested: list[str], parent: list[str], no_default: bool) -> list[str] | None:
    """The policies of a token created against ``role`` when the role allows or disallows any
    (the role branch of Vault's ``resolveTokenPolicies``), before ``no_default_policy`` and
    the non-assignable check; ``None`` when the role restricts nothing (the plain rules apply).

    :raises InvalidRequest: a policy outside the allowed ones, or a disallowed one.
    """
    if not (role.allowed_policies or role.disallowed_policies or role.allowed_policies_glob
            or role.disallowed_policies_glob):
        return None
    add_default = (not no_default and not role.token_no_default_policy and "default" not in role.disallowed_policies
                   and not _in_globs(role.disallowed_policies_glob, "default"))
    final = sanitize_policies(requested, add_default=add_default) if requested else []
    if role.allowed_policies or role.allowed_policies_glob:
        allowed = sanitize_policies(role.allowed_policies, add_default=add_default)
        if not final:
            final = allowed
        else:
            globs = role.allowed_policies_glob  # stored in normal form
            for name in final:
                if name not in allowed and not _in_globs(globs, name):
                    raise InvalidRequest(
                        f"token policies ({_go_quoted(final)}) must be subset of the role's allowed policies "
                        f"({_go_quoted(allowed)}) or glob policies ({_go_quoted(globs)})")
    elif not final:
        final = sanitize_policies(parent, add_default=add_default)
    if role.disallowed_policies or role.disallowed_policies_glob:
        for name in final:  # the lists are stored in normal form
            if name in role.disallowed_policies or _in_globs(role.disallowed_policies_glob, name):
                raise InvalidRequest(f'token policy "{name}" is disallowed by this role')
    return final


def check_entity_alias(role: TokenRole | None, alias: str) -> str:
    """Vault's checks of ``entity_alias`` on token create: a role must allow the alias (its
    ``allowed_entity_aliases``, globs too, compared in lower case). Returns the alias as given.

    :raises InvalidRequest: without a role, or an alias the role does not allow.
    """
    if role is None:
        raise InvalidRequest("'entity_alias' is only allowed in combination with token role")
    allowed = role.allowed_entity_aliases or []
    name = fold_case(alias)  # as the allowed list was folded (sanitize_policies)
    if name not in allowed and not _in_globs(allowed, name):
        raise InvalidRequest("invalid 'entity_alias' value")
    return alias


def _go_quoted(names: list[str]) -> str:
    """Go's ``%q`` of a string slice: ``["a" "b"]``."""
    return "[" + " ".join(f'"{n}"' for n in names) + "]"


def role_ttls(role: TokenRole, explicit: int, period: int) -> tuple[int, int, list[str]]:
    """The explicit max TTL and period of a (service) token made against ``role``: the lesser
    of the request's and the role's where both are set, with Vault's warning."""
    warnings: list[str] = []
    if role.token_explicit_max_ttl:
        if not explicit:
            explicit = role.token_explicit_max_ttl
        else:
            explicit = min(explicit, role.token_explicit_max_ttl)
            warnings.append("Explicit max TTL specified both during creation call and in role; using the lesser "
                            f"value of {explicit} seconds")
    if role.token_period:
        if not period:
            period = role.token_period
        else:
            period = min(period, role.token_period)
            warnings.append(f"Period specified both during creation call and in role; using the lesser value of "
                            f"{period} seconds")
    return explicit, period, warnings


def role_paths() -> list[PathSpec]:
    """``roles/`` (LIST) and ``roles/<name>`` (GET, POST/PUT, DELETE)."""

    async def list_roles(req: Request, values: dict[str, Any]) -> Response:
        keys = await req.require_storage().list(ROLE_PREFIX)
        if not keys:
            raise NotFound()
        return Response(data={"keys": keys})

    async def read(req: Request, values: dict[str, Any]) -> Response | None:
        role = await load_role(req, values["role_name"])
        return None if role is None else Response(data=role.public())

    async def write(req: Request, values: dict[str, Any]) -> Response | None:
        name = values["role_name"]
        max_lease = int(getattr(req.system, "max_lease_ttl", 0) or 0)
        warnings: list[str] = []

        def merge(old: Any) -> Any:
            # Into the stored role, so a write on another node a moment ago is kept.
            role = TokenRole.from_storage(old) if old is not None else TokenRole(name=name)
            warnings[:] = apply_role_write(role, values, max_lease_ttl=max_lease)
            return asdict(role)

        await req.require_storage().update(ROLE_PREFIX + name, merge)
        return Response(data=None, warnings=warnings) if warnings else None

    async def delete(req: Request, values: dict[str, Any]) -> None:
        await req.require_storage().delete(ROLE_PREFIX + values["role_name"])

    async def exists(req: Request, values: dict[str, Any]) -> bool:
        return await req.require_storage().get(ROLE_PREFIX + values["role_name"]) is not None

    return [
        PathSpec("roles/?", FieldSet({}), {Operation.LIST: list_roles}, "List the token roles."),
        PathSpec(
            f"roles/(?P<role_name>{ROLE_NAME_RE})", ROLE_FIELDS,
            {Operation.READ: read, Operation.CREATE: write, Operation.UPDATE: write, Operation.DELETE: delete},
            "Read, write or delete a token role.",
            "Tokens created by auth/token/create/<name> take their policies, type, TTLs, orphan flag and CIDRs "
            "from the role. Updates merge into the stored role.",
            existence_check=exists,
        ),
    ]
