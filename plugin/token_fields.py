"""The shared ``token_*`` fields every auth method role carries (Vault ``tokenutil``).

``TOKEN_FIELDS`` declares the fields once (with the deprecated legacy names as aliases),
``TokenParams`` is the stored form, ``apply_token_fields`` runs Vault's validation and
legacy-upgrade rules on a write, and ``to_auth`` fills a ``plugin.framework.Auth``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from plugin.cidrutil import parse_cidrs, peer_ip
from plugin.errors import InvalidRequest
from plugin.framework import Alias, Auth
from plugin.policyutil import refuse_root, sanitize_policies
from plugin.schema import Field, FieldType, format_duration

__all__ = [
    "TOKEN_FIELDS",
    "LEGACY_PAIRS",
    "TokenParams",
    "apply_token_fields",
    "upgrade_legacy",
    "check_token_limits",
    "to_auth",
]

TOKEN_FIELDS: dict[str, Field] = {
    "token_bound_cidrs": Field(
        FieldType.COMMA_STRING_SLICE,
        "Comma separated string or JSON list of CIDR blocks. If set, specifies the blocks of "
        "IP addresses which are allowed to log in and to use the generated token.",
        default=[],
    ),
    "token_explicit_max_ttl": Field(
        FieldType.DURATION,
        "If set, tokens created via this role carry an explicit maximum TTL. During renewal, "
        "the current maximum TTL values of the role and the mount are not checked for changes, "
        "and any updates to these values will have no effect on the token being renewed.",
        default=0,
    ),
    "token_max_ttl": Field(FieldType.DURATION, "The maximum lifetime of the generated token.", default=0),
    "token_no_default_policy": Field(
        FieldType.BOOL,
        "If true, the 'default' policy will not automatically be added to generated tokens.",
        default=False,
    ),
    "token_period": Field(
        FieldType.DURATION,
        "If set, tokens created via this role will have no max lifetime; instead, their renewal "
        "period will be fixed to this value.",
        default=0,
    ),
    "token_policies": Field(
        FieldType.COMMA_STRING_SLICE,
        "Comma-separated list of policies. A 'root' policy is refused at login.",
        default=[],
    ),
    "token_type": Field(
        FieldType.STRING,
        "The type of token to generate: 'default', 'service' or 'batch'.",
        default="default",
    ),
    "token_ttl": Field(FieldType.DURATION, "The initial ttl of the token to generate.", default=0),
    "token_num_uses": Field(
        FieldType.INT,
        "The maximum number of times a token may be used, a value of zero means unlimited.",
        default=0,
    ),
    "token_strictly_bind_ip": Field(
        FieldType.BOOL,
        "If true, CIDRs for the token will be strictly bound to the source IP address of the "
        "login request. Cannot be set together with 'token_bound_cidrs'.",
        default=False,
    ),
    "alias_metadata": Field(
        FieldType.KV_PAIRS,
        "Metadata to attach to the entity alias (accepted for compatibility; login metadata "
        "comes from claim mappings).",
        default={},
    ),
    # Deprecated names: written values are copied to the token_* field (see upgrade_legacy).
    "policies": Field(
        FieldType.COMMA_STRING_SLICE,
        "Use 'token_policies' instead. If this and 'token_policies' are both specified, only "
        "'token_policies' will be used.",
        default=[],
        deprecated=True,
        alias_of="token_policies",
    ),
    "ttl": Field(FieldType.DURATION, "Use 'token_ttl' instead.", default=0, deprecated=True, alias_of="token_ttl"),
    "max_ttl": Field(
        FieldType.DURATION, "Use 'token_max_ttl' instead.", default=0, deprecated=True, alias_of="token_max_ttl"
    ),
    "period": Field(
        FieldType.DURATION, "Use 'token_period' instead.", default=0, deprecated=True, alias_of="token_period"
    ),
    "num_uses": Field(
        FieldType.INT, "Use 'token_num_uses' instead.", default=0, deprecated=True, alias_of="token_num_uses"
    ),
    "bound_cidrs": Field(
        FieldType.COMMA_STRING_SLICE,
        "Use 'token_bound_cidrs' instead.",
        default=[],
        deprecated=True,
        alias_of="token_bound_cidrs",
    ),
}

#: (legacy name, new name) in Vault's upgrade order.
LEGACY_PAIRS: tuple[tuple[str, str], ...] = (
    ("policies", "token_policies"),
    ("bound_cidrs", "token_bound_cidrs"),
    ("num_uses", "token_num_uses"),
    ("ttl", "token_ttl"),
    ("max_ttl", "token_max_ttl"),
    ("period", "token_period"),
)

_TOKEN_TYPES = {"": "default", "default": "default", "service": "service", "batch": "batch"}


@dataclass(slots=True)
class TokenParams:
    """Token parameters stored with a role (plus the legacy copies Vault keeps)."""

    token_bound_cidrs: list[str] = field(default_factory=list)
    token_explicit_max_ttl: int = 0
    token_max_ttl: int = 0
    token_no_default_policy: bool = False
    token_period: int = 0
    token_policies: list[str] = field(default_factory=list)
    token_type: str = "default"
    token_ttl: int = 0
    token_num_uses: int = 0
    token_strictly_bind_ip: bool = False
    alias_metadata: dict[str, str] = field(default_factory=dict)
    policies: list[str] = field(default_factory=list)
    ttl: int = 0
    max_ttl: int = 0
    period: int = 0
    num_uses: int = 0
    bound_cidrs: list[str] = field(default_factory=list)


def apply_token_fields(params: TokenParams, values: dict[str, Any]) -> None:
    """Apply the ``token_*`` values present in ``values`` (Vault ``ParseTokenFields``).

    :raises InvalidRequest: with Vault's messages (docs/reference/vault-api.md 3.2 step 2).
    """
    if "token_bound_cidrs" in values:
        params.token_bound_cidrs = parse_cidrs(values["token_bound_cidrs"])
    if "token_explicit_max_ttl" in values:
        params.token_explicit_max_ttl = values["token_explicit_max_ttl"]
    if "token_max_ttl" in values:
        if values["token_max_ttl"] < 0:
            raise InvalidRequest("'token_max_ttl' cannot be negative")
        params.token_max_ttl = values["token_max_ttl"]
    if "token_no_default_policy" in values:
        params.token_no_default_policy = values["token_no_default_policy"]
    if "token_period" in values:
        if values["token_period"] < 0:
            raise InvalidRequest("'token_period' cannot be negative")
        params.token_period = values["token_period"]
    if "token_policies" in values:
        params.token_policies = list(values["token_policies"])
    if "token_type" in values:
        kind = _TOKEN_TYPES.get(values["token_type"])
        if kind is None:
            raise InvalidRequest(f'invalid \'token_type\' value "{values["token_type"]}"')
        params.token_type = kind
    if "token_num_uses" in values:
        if values["token_num_uses"] < 0:
            raise InvalidRequest("'token_num_uses' cannot be negative")
        params.token_num_uses = values["token_num_uses"]
    if params.token_type == "batch":
        if params.token_period != 0:
            raise InvalidRequest(
                "'token_type' cannot be 'batch' or 'default_batch' when set to generate periodic tokens"
            )
        if params.token_num_uses != 0:
            raise InvalidRequest(
                "'token_type' cannot be 'batch' or 'default_batch' when set to generate tokens "
                "with limited use count"
            )
    if "token_ttl" in values:
        if values["token_ttl"] < 0:
            raise InvalidRequest("'token_ttl' cannot be negative")
        params.token_ttl = values["token_ttl"]
    if params.token_ttl > 0 and params.token_max_ttl > 0 and params.token_ttl > params.token_max_ttl:
        raise InvalidRequest("'token_ttl' cannot be greater than 'token_max_ttl'")
    if "token_strictly_bind_ip" in values:
        params.token_strictly_bind_ip = values["token_strictly_bind_ip"]
    _check_strict_binding(params)
    if "alias_metadata" in values:
        params.alias_metadata = dict(values["alias_metadata"])


def upgrade_legacy(params: TokenParams, values: dict[str, Any]) -> None:
    """Vault ``tokenutil.UpgradeValue`` for each legacy/new pair present in ``values``.

    Only the old name sent: stored in both. New name sent: the old copy follows it when the
    old name was sent too, otherwise it is cleared.

    :raises InvalidRequest: for a bad legacy ``bound_cidrs`` entry.
    """
    for old, new in LEGACY_PAIRS:
        if new not in values:
            if old in values:
                raw = values[old]
                if old == "policies":
                    raw = sanitize_policies(raw)
                    raw = ["root"] if "root" in raw else raw  # Vault: root alone
                elif old == "bound_cidrs":
                    raw = parse_cidrs(raw)
                setattr(params, old, raw)
                setattr(params, new, list(raw) if isinstance(raw, list) else raw)
        elif old in values:
            current = getattr(params, new)
            setattr(params, old, list(current) if isinstance(current, list) else current)
        else:
            setattr(params, old, [] if isinstance(getattr(params, old), list) else 0)
    _check_strict_binding(params)  # the legacy bound_cidrs too


def _check_strict_binding(params: TokenParams) -> None:
    """:raises InvalidRequest: ``token_strictly_bind_ip`` beside bound CIDRs (OpenBao's text)."""
    if params.token_strictly_bind_ip and params.token_bound_cidrs:
        raise InvalidRequest("'token_strictly_bind_ip' conflicts with 'token_bound_cidrs'; set only one")


def check_token_limits(params: TokenParams, *, max_lease_ttl: int) -> list[str]:
    """Checks against the mount's maximum lease TTL (docs/reference/vault-api.md 3.2 step 4); returns warnings.

    :raises InvalidRequest: ``token_period`` above the mount maximum.
    """
    if params.token_period > max_lease_ttl > 0:
        raise InvalidRequest(
            f"'period' of '\"{format_duration(params.token_period)}\"' is greater than the "
            f"backend's maximum lease TTL of '\"{format_duration(max_lease_ttl)}\"'"
        )
    if params.token_max_ttl > max_lease_ttl > 0:
        return [
            "token max ttl is greater than the system or backend mount's maximum TTL value; "
            "issued tokens' max TTL value will be truncated"
        ]
    return []


def to_auth(
    params: TokenParams,
    *,
    display_name: str,
    alias: Alias,
    metadata: dict[str, str],
    group_aliases: list[str],
    internal_data: dict[str, Any],
    policies: list[str] | None = None,
    source: str | None = None,
) -> Auth:
    """Build the Auth a successful login hands to the server (``policies``: the login's own,
    e.g. rendered from templates, instead of ``params.token_policies``; ``source``: the
    address of the caller who receives the token, its only bound CIDR when the role sets
    ``token_strictly_bind_ip``).

    :raises InvalidRequest: ``auth methods cannot create root tokens`` when the policies
        contain ``root`` in any spelling (`` root``, ``Root`` ...; CVE-2025-5999); a role
        that binds its tokens to the source address when the address is not known.
    """
    policies = refuse_root(params.token_policies if policies is None else policies)
    bound_cidrs = list(params.token_bound_cidrs)
    if params.token_strictly_bind_ip:
        bound_cidrs = [_source_address(source)]
    return Auth(
        display_name=display_name,
        policies=policies,
        metadata=dict(metadata),
        alias=alias,
        group_aliases=list(group_aliases),
        internal_data=dict(internal_data),
        ttl=params.token_ttl,
        max_ttl=params.token_max_ttl,
        explicit_max_ttl=params.token_explicit_max_ttl,
        period=params.token_period,
        num_uses=params.token_num_uses,
        bound_cidrs=bound_cidrs,
        token_type=params.token_type,
        no_default_policy=params.token_no_default_policy,
        # As Vault: the token store, which knows the final type, makes batch tokens non-renewable
        # (a mount tuned to "service" turns a batch role's login into a renewable service token).
        renewable=True,
    )


def _source_address(source: str | None) -> str:
    """The login's source address as a token's bound CIDR: a single address, as Vault shows
    it (an IPv4-mapped IPv6 address as its IPv4 address, an IPv6 zone dropped).

    :raises InvalidRequest: no address, or one that is not an IP address.
    """
    ip = peer_ip(source or "")  # as the CIDR rule reads the address on every use of the token
    if ip is None:
        raise InvalidRequest("token_strictly_bind_ip is set on the role, but the login's source address is not known")
    return str(ip)
