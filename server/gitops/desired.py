"""The desired state of ``authmount apply`` (and of seeding at start): a settings file's
``mounts``, ``policies``, ``token_roles``, ``groups``, ``entities``, ``identity_token_keys``,
``identity_token_roles``, ``rate_limit_quotas``, ``quota_config``, ``rotate_config``, ``cors`` and the OIDC provider's (``oidc_scopes``, ``oidc_assignments``, ``oidc_clients``, ``oidc_providers``) sections, validated by the same field schemas and checks as the API
writes, before anything is written.

Each object is normalised into the form the server's GET returns (a role as ``Role.public``,
a config as ``JWTConfig.public``, a mount's tune as the ``config`` of ``sys/auth``), so that
comparing it with the live object is a plain field-by-field comparison, and into the body
that writes it whole: a write sends every field (defaults included), so a field removed
from the file is reset on the server instead of staying.

A string value that is exactly ``${env:NAME}`` is replaced by the environment variable
``NAME`` (secrets need not be kept in the file; ``authmount export`` writes such references
for the secrets it cannot read).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from plugin import pathdoc, registry
from plugin.errors import InvalidRequest
from plugin.path_config import CONFIG_FIELDS, PROVIDER_SECRETS, check_offline
from plugin.path_role import ROLE_FIELDS, ROLE_NAME_RE, Role, apply_role_write
from plugin.policyutil import fold_case
from plugin.schema import Field, FieldSet, FieldType, coerce
from server.acl.policies import TEMPLATE_FLAGS, PolicyError, canonical_policy_name, parse_policy
from server.http.cors import STANDARD_HEADERS, checked_origins
from server.identity import oidc, provider
from server.identity.entities import ENTITY_FIELDS
from server.identity.groups import GROUP_FIELDS, changed_group
from server.identity.metadata import checked_metadata
from server.identity.store import DERIVED_NAME, Group, group_policies
from server.identity.token_template import check_template
from server.keyring import RotationConfig
from server.mounts import MOUNT_CONFIG_FIELDS, normalize_path
from server.settings import MountSeed, Settings, SettingsError, is_origin, settings_from_mapping
from server.sys import cors as cors_paths
from server.sys import keys as key_paths
from server.sys import quotas as quota_paths
from server.tokens import roles as token_roles

__all__ = [
    "GitopsError",
    "Desired",
    "DesiredMount",
    "DesiredConfig",
    "DesiredRole",
    "DesiredGroup",
    "DesiredEntity",
    "ENTITY_KEYS",
    "AliasSpec",
    "GROUP_KEYS",
    "load_file",
    "from_sections",
    "from_settings",
    "ID_KEY_KEYS",
    "ID_ROLE_KEYS",
    "OIDC_ASSIGNMENT_KEYS",
    "OIDC_CLIENT_KEYS",
    "OIDC_PROVIDER_KEYS",
    "OIDC_SCOPE_KEYS",
    "QUOTA_KEYS",
    "CORS_KEYS",
    "ROLE_KEYS",
    "CONFIG_KEYS",
    "TUNE_KEYS",
    "TOKEN_ROLE_KEYS",
    "TOKEN_ROLE_DEFAULTS",
    "SENSITIVE",
    "empty",
]

#: The role fields compared and written: every field but the path capture and the legacy names.
ROLE_KEYS = tuple(n for n, f in ROLE_FIELDS.items() if f.alias_of is None and f.type is not FieldType.NAME)
#: The config fields compared (secrets are compared by fingerprint) and written.
CONFIG_KEYS = tuple(n for n, f in CONFIG_FIELDS.items() if not f.sensitive)
SENSITIVE = tuple(n for n, f in CONFIG_FIELDS.items() if f.sensitive)
#: A mount's tune values (its description is a key of the mount).
TUNE_KEYS = tuple(MOUNT_CONFIG_FIELDS)
#: A token role's fields compared and written: all but the name and the deprecated spellings.
TOKEN_ROLE_KEYS = tuple(n for n, f in token_roles.ROLE_FIELDS.items()
                        if f.type is not FieldType.NAME and n not in token_roles.DEPRECATED)
#: A token role's values as a new role has them (the GET leaves out an unset CIDR list and use count).
TOKEN_ROLE_DEFAULTS = {k: token_roles.ROLE_FIELDS[k].default_value() for k in TOKEN_ROLE_KEYS}
#: An identity group's fields compared and written (its name is its key; its alias apart).
GROUP_KEYS = ("type", "policies", "metadata", "member_entity_ids")
_GROUP_FIELDS = FieldSet({**{k: GROUP_FIELDS[k] for k in GROUP_KEYS},
                          "alias": Field(FieldType.MAP, "The group alias of an external group: {mount, name}."),
                          "member_groups": Field(FieldType.COMMA_STRING_SLICE, "Names of the groups nested in an "
                                                 "internal group (the API's member_group_ids, by name).")})
#: An entity's fields compared and written (its name is its key; its aliases apart).
ENTITY_KEYS = ("policies", "metadata", "disabled")
_ENTITY_FIELDS = FieldSet({**{k: ENTITY_FIELDS[k] for k in ENTITY_KEYS},
                           "aliases": Field(FieldType.SLICE, "The entity's aliases: [{mount, name}].")})
#: An identity token key's fields compared and written (its name is its key).
ID_KEY_KEYS = tuple(n for n, f in oidc.KEY_FIELDS.items() if f.type is not FieldType.NAME)
#: An identity token role's fields compared and written (``client_id`` only when declared).
ID_ROLE_KEYS = tuple(n for n, f in oidc.ROLE_FIELDS.items() if f.type is not FieldType.NAME)
#: The OIDC provider's objects: the fields compared and written (their names are their keys).
OIDC_SCOPE_KEYS = tuple(n for n, f in provider.SCOPE_FIELDS.items() if f.type is not FieldType.NAME)
OIDC_ASSIGNMENT_KEYS = ("entity_ids", "group_ids")
OIDC_CLIENT_KEYS = tuple(n for n, f in provider.CLIENT_FIELDS.items() if f.type is not FieldType.NAME)
OIDC_PROVIDER_KEYS = ("issuer", "allowed_client_ids", "scopes_supported")
_CSS = FieldType.COMMA_STRING_SLICE
_ASSIGNMENT_FIELDS = FieldSet({
    **{k: provider.ASSIGNMENT_FIELDS[k] for k in OIDC_ASSIGNMENT_KEYS},
    "groups": Field(_CSS, "Groups by name (of the file's groups, or the server's): written as their ids."),
    "entities": Field(_CSS, "Entities by name (of the file's entities, or the server's): written as their ids."),
})
_PROVIDER_FIELDS = FieldSet({
    **{k: provider.PROVIDER_FIELDS[k] for k in OIDC_PROVIDER_KEYS},
    "allowed_clients": Field(_CSS, "Clients by name (of the file's clients, or the server's): written as their "
                                   "client IDs."),
})
#: A rate limit quota's fields compared and written (its name is its key).
QUOTA_KEYS = tuple(n for n, f in quota_paths.QUOTA_FIELDS.items() if f.type is not FieldType.NAME)
#: The CORS settings compared and written.
CORS_KEYS = ("allowed_origins", "allowed_headers", "allow_credentials")
_ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
_ROLE_NAME = re.compile(ROLE_NAME_RE)


class GitopsError(ValueError):
    """A file that cannot be applied, or a write the server refused. The message names the
    file, the object (where it is in the file, else its address) and the field when the
    reason does not: ``seed.yaml: mounts[0].roles.deploy: Field validation failed: ... for
    field "token_ttl" ...``, ``seed.yaml: mounts[0].tune: unrecognized parameters:
    [default_lease_tll]; default_lease_tll: did you mean default_lease_ttl?``."""

    def __init__(self, message: str, *, source: str = "", address: str = "", where: str = "", field: str = "") -> None:
        self.reason = message
        self.source = source
        self.address = address
        self.where = where
        self.field = field
        super().__init__(self._text())

    def _text(self) -> str:
        location = self.where + (f".{self.field}" if self.field and self.where else self.field)
        parts = [p for p in (self.source, location or self.address) if p]
        return ": ".join([*parts, self.reason])

    def located(self, *, source: str) -> GitopsError:
        """The same error, naming ``source`` (the file) as well."""
        return GitopsError(self.reason, source=source, address=self.address, where=self.where, field=self.field)


def empty(value: Any) -> bool:
    """Whether a value means "not set" when two states are compared (``null``, ``[]`` and
    ``{}`` are the same to the server: Vault returns either for an unset list)."""
    return value is None or value == [] or value == {}


@dataclass(slots=True)
class DesiredConfig:
    """A mount's config: ``public`` compares with GET, ``secrets`` (``{field: value}``, only
    those set) by fingerprint, ``body`` writes it whole."""

    public: dict[str, Any]
    secrets: dict[str, Any]
    body: dict[str, Any]


@dataclass(slots=True)
class DesiredRole:
    """A role: ``public`` compares with GET, ``body`` writes it whole."""

    name: str
    where: str
    public: dict[str, Any]
    body: dict[str, Any]
    #: Objects named in the file whose ids the server makes (``groups``, ``entities``,
    #: ``clients``): resolved when the plan is made, and again when it is written.
    refs: dict[str, list[str]] = field(default_factory=dict)


@dataclass(slots=True)
class DesiredMount:
    """A mount with its tune values, its config (None: not managed) and its roles."""

    path: str
    type: str
    description: str
    tune: dict[str, Any]
    where: str
    config: DesiredConfig | None = None
    roles: dict[str, DesiredRole] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AliasSpec:
    """An external group's alias: the IdP's group name on the mount at ``mount`` (``oidc/``)."""

    mount: str
    name: str


@dataclass(slots=True)
class DesiredGroup:
    """An identity group as its GET shows it (``public``: ``GROUP_KEYS``, empty values as
    empty lists and maps) and its alias."""

    name: str
    where: str
    public: dict[str, Any]
    alias: AliasSpec | None = None
    #: The names of its member groups (``member_group_ids`` by name), as the file spells them.
    member_groups: tuple[str, ...] = ()


@dataclass(slots=True)
class DesiredEntity:
    """An entity an operator makes, by name: ``public`` (``ENTITY_KEYS``) and its aliases."""

    name: str
    where: str
    public: dict[str, Any]
    aliases: tuple[AliasSpec, ...] = ()


@dataclass(slots=True)
class Desired:
    """Everything a file declares, validated. ``source`` names the file in messages."""

    source: str
    mounts: dict[str, DesiredMount] = field(default_factory=dict)
    policies: dict[str, str] = field(default_factory=dict)
    #: Each policy's template flags (``TEMPLATE_FLAGS``: all false unless the file sets one).
    policy_flags: dict[str, dict[str, bool]] = field(default_factory=dict)
    #: Where each policy is in the file (``policies.deploy``).
    policy_where: dict[str, str] = field(default_factory=dict)
    #: Token roles by name (names are case-sensitive, as Vault's).
    token_roles: dict[str, DesiredRole] = field(default_factory=dict)
    #: Identity groups by lower-cased name (names are case-insensitive, as Vault's).
    groups: dict[str, DesiredGroup] = field(default_factory=dict)
    #: Entities by lower-cased name (names are case-insensitive, as Vault's).
    entities: dict[str, DesiredEntity] = field(default_factory=dict)
    #: Identity token keys and roles by name (case-sensitive, as Vault's).
    id_token_keys: dict[str, DesiredRole] = field(default_factory=dict)
    id_token_roles: dict[str, DesiredRole] = field(default_factory=dict)
    #: Rate limit quotas by name (case-sensitive, as Vault's).
    quotas: dict[str, DesiredRole] = field(default_factory=dict)
    #: The CORS settings, or None: not managed.
    cors: DesiredRole | None = None
    #: The quota settings (``sys/quotas/config``), or None: not managed.
    quota_config: DesiredRole | None = None
    #: The automatic key rotation settings (``sys/rotate/config``), or None: not managed.
    rotate_config: DesiredRole | None = None
    #: The OIDC provider's scopes, assignments, clients and providers by name (case-sensitive).
    oidc_scopes: dict[str, DesiredRole] = field(default_factory=dict)
    oidc_assignments: dict[str, DesiredRole] = field(default_factory=dict)
    oidc_clients: dict[str, DesiredRole] = field(default_factory=dict)
    oidc_providers: dict[str, DesiredRole] = field(default_factory=dict)


def load_file(path: str | Path, *, env: Mapping[str, str] | None = None) -> Desired:
    """Read and validate an apply file (the settings file schema: its ``mounts`` and
    ``policies``; other settings are validated and ignored).

    :raises GitopsError: the first problem, naming the file, the object and the field.
    """
    source = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise GitopsError(f"cannot read: {exc.strerror}", source=source) from exc
    except yaml.YAMLError as exc:
        raise GitopsError(f"invalid YAML: {exc}", source=source) from exc
    try:
        settings = settings_from_mapping(raw if raw is not None else {})
    except SettingsError as exc:
        raise GitopsError(str(exc), source=source) from exc
    return from_settings(settings, source=source, env=env)


def from_settings(settings: Settings, *, source: str, env: Mapping[str, str] | None = None) -> Desired:
    """The declared sections of ``settings``, validated (``from_sections``)."""
    return from_sections(settings.mounts, settings.policies, token_roles=settings.token_roles, groups=settings.groups,
                         entities=settings.entities, identity_token_keys=settings.identity_token_keys,
                         identity_token_roles=settings.identity_token_roles, rate_limit_quotas=settings.rate_limit_quotas,
                         cors=settings.cors, quota_config=settings.quota_config,
                         rotate_config=settings.rotate_config, oidc_scopes=settings.oidc_scopes,
                         oidc_assignments=settings.oidc_assignments, oidc_clients=settings.oidc_clients,
                         oidc_providers=settings.oidc_providers, source=source, env=env)


def from_sections(
    mounts: tuple[MountSeed, ...] | list[MountSeed],
    policies: Mapping[str, Any],
    *,
    source: str,
    token_roles: Mapping[str, Mapping[str, Any]] | None = None,
    groups: Mapping[str, Mapping[str, Any]] | None = None,
    entities: Mapping[str, Mapping[str, Any]] | None = None,
    identity_token_keys: Mapping[str, Mapping[str, Any]] | None = None,
    identity_token_roles: Mapping[str, Mapping[str, Any]] | None = None,
    rate_limit_quotas: Mapping[str, Mapping[str, Any]] | None = None,
    cors: Mapping[str, Any] | None = None,
    quota_config: Mapping[str, Any] | None = None,
    rotate_config: Mapping[str, Any] | None = None,
    oidc_scopes: Mapping[str, Mapping[str, Any]] | None = None,
    oidc_assignments: Mapping[str, Mapping[str, Any]] | None = None,
    oidc_clients: Mapping[str, Mapping[str, Any]] | None = None,
    oidc_providers: Mapping[str, Mapping[str, Any]] | None = None,
    env: Mapping[str, str] | None = None,
) -> Desired:
    """Validate parsed ``mounts``, ``policies``, ``token_roles``, ``groups`` and ``entities``
    sections (``Settings``' own).

    :raises GitopsError: the first problem, naming ``source``, the object and the field.
    """
    environ = os.environ if env is None else env
    desired = Desired(source=source)
    try:
        for i, spec in enumerate(mounts):
            mount = _mount(spec, f"mounts[{i}]", environ)
            if mount.path in desired.mounts:
                other = desired.mounts[mount.path].where
                raise GitopsError(f"declared twice (also {other})", address=f"mount {mount.path}", where=mount.where)
            for path, seen in desired.mounts.items():
                if path.startswith(mount.path) or mount.path.startswith(path):
                    raise GitopsError(f"nested in {path} ({seen.where}): mounts cannot nest",
                                      address=f"mount {mount.path}", where=mount.where, field="path")
            desired.mounts[mount.path] = mount
        for name, value in policies.items():
            where = f"policies.{name}"
            text = value["policy"] if isinstance(value, Mapping) else value
            canonical = _policy(name, text, where)
            if canonical in desired.policies:
                raise GitopsError("declared twice (policy names are case-insensitive)",
                                  address=f"policy {canonical}", where=where)
            desired.policies[canonical] = text
            desired.policy_flags[canonical] = {
                k: bool(value.get(k, False)) if isinstance(value, Mapping) else False for k in TEMPLATE_FLAGS}
            desired.policy_where[canonical] = where
        for name, values in (token_roles or {}).items():
            desired.token_roles[name] = _token_role(str(name), dict(values), f"token_roles.{name}", environ)
        for name, values in (groups or {}).items():
            group = _group(str(name), dict(values), f"groups.{name}", environ)
            if (key := fold_case(group.name)) in desired.groups:
                raise GitopsError("declared twice (group names are case-insensitive)",
                                  address=f"group {group.name}", where=group.where)
            desired.groups[key] = group
        used: dict[AliasSpec, str] = {}
        for name, values in (entities or {}).items():
            entity = _entity(str(name), dict(values), f"entities.{name}", environ)
            if fold_case(entity.name) in desired.entities:
                raise GitopsError("declared twice (entity names are case-insensitive)",
                                  address=f"entity {entity.name}", where=entity.where)
            for alias in entity.aliases:
                if alias in used:
                    raise GitopsError(f"alias {alias.name} on {alias.mount} is also {used[alias]}'s",
                                      address=f"entity {entity.name}", where=entity.where, field="aliases")
                used[alias] = entity.name
            desired.entities[fold_case(entity.name)] = entity
        for name, values in (identity_token_keys or {}).items():
            desired.id_token_keys[name] = _id_token_key(str(name), dict(values), f"identity_token_keys.{name}", environ)
        for name, values in (identity_token_roles or {}).items():
            desired.id_token_roles[name] = _id_token_role(str(name), dict(values), f"identity_token_roles.{name}",
                                                          desired.id_token_keys, environ)
        for name, values in (rate_limit_quotas or {}).items():
            desired.quotas[name] = _quota(str(name), dict(values), f"rate_limit_quotas.{name}", environ)
        if cors is not None:
            desired.cors = _cors(dict(cors), environ)
        if quota_config is not None:
            desired.quota_config = _quota_config(dict(quota_config), environ)
        if rotate_config is not None:
            desired.rotate_config = _rotate_config(dict(rotate_config), environ)
        for name, values in (oidc_scopes or {}).items():
            desired.oidc_scopes[name] = _oidc_scope(str(name), dict(values), f"oidc_scopes.{name}", environ)
        for name, values in (oidc_assignments or {}).items():
            desired.oidc_assignments[name] = _oidc_assignment(str(name), dict(values), f"oidc_assignments.{name}",
                                                              environ)
        for name, values in (oidc_clients or {}).items():
            desired.oidc_clients[name] = _oidc_client(str(name), dict(values), f"oidc_clients.{name}",
                                                      desired.id_token_keys, environ)
        for name, values in (oidc_providers or {}).items():
            desired.oidc_providers[name] = _oidc_provider(str(name), dict(values), f"oidc_providers.{name}",
                                                          environ)
    except GitopsError as exc:
        raise exc.located(source=source) from None
    return desired


# -- mounts ------------------------------------------------------------------------------
def _mount(spec: MountSeed, where: str, env: Mapping[str, str]) -> DesiredMount:
    try:
        path = normalize_path(spec.path)
    except InvalidRequest as exc:
        raise GitopsError(str(exc), address=f"mount {spec.path}", where=where, field="path") from None
    address = f"mount {path}"
    if spec.type == "token" or registry.factory_for(spec.type) is None:
        raise GitopsError(
            f"plugin not found in the catalog: {spec.type} (available: {', '.join(registry.registered_types())})",
            address=address, where=where, field="type",
        )
    tune = {n: f.default_value() for n, f in MOUNT_CONFIG_FIELDS.items()}
    if "description" in spec.tune:
        raise GitopsError("set the mount's description with the mount's own 'description' key",
                          address=address, where=where, field="tune.description")
    _check_known(MOUNT_CONFIG_FIELDS, spec.tune, address=address, where=f"{where}.tune")
    for key, value in spec.tune.items():
        coerced = _coerce(MOUNT_CONFIG_FIELDS, key, value, address=address, where=f"{where}.tune")
        tune[key] = 0 if coerced is None else coerced  # an empty TTL: the server's
    dflt, mx = tune["default_lease_ttl"], tune["max_lease_ttl"]
    if dflt and mx and dflt > mx:
        raise GitopsError("given default lease TTL greater than given max lease TTL",
                          address=address, where=where, field="tune.default_lease_ttl")
    mount = DesiredMount(path=path, type=spec.type, description=spec.description, tune=tune, where=where)
    if spec.config is not None:
        mount.config = _config(dict(spec.config), path, f"{where}.config", env)
    for name, values in spec.roles.items():
        role = _role(name, dict(values), path, f"{where}.roles.{name}", mx, env)
        if role.name in mount.roles:
            raise GitopsError("declared twice (role names are case-insensitive)",
                              address=f"role {path}{role.name}", where=role.where)
        mount.roles[role.name] = role
    return mount


def _config(values: dict[str, Any], mount: str, where: str, env: Mapping[str, str]) -> DesiredConfig:
    address = f"config {mount}"
    coerced = _coerce_all(CONFIG_FIELDS, values, address=address, where=where, env=env)
    try:
        config = check_offline(coerced)
    except InvalidRequest as exc:
        raise GitopsError(str(exc), address=address, where=where) from None
    body = config.to_storage()
    secrets = {n: body[n] for n in SENSITIVE if body.get(n)}
    provider = body.get("provider_config") or {}
    for key in PROVIDER_SECRETS.get(str(provider.get("provider", "")), ()):
        if provider.get(key):
            secrets[f"provider_config.{key}"] = provider[key]
    return DesiredConfig(public=config.public(), secrets=secrets, body=body)


def _role(
    name: str, values: dict[str, Any], mount: str, where: str, max_lease_ttl: int, env: Mapping[str, str]
) -> DesiredRole:
    canonical = fold_case(name)
    address = f"role {mount}{canonical}"
    if not _ROLE_NAME.fullmatch(name):
        raise GitopsError(f"invalid role name {name!r}", address=address, where=where)
    coerced = _coerce_all(ROLE_FIELDS, values, address=address, where=where, env=env)
    role = Role()
    try:
        apply_role_write(role, coerced, max_lease_ttl=max_lease_ttl)
    except InvalidRequest as exc:
        raise GitopsError(str(exc), address=address, where=where) from None
    public = role.public()
    body = {k: _written(ROLE_FIELDS[k], public.get(k)) for k in ROLE_KEYS}
    return DesiredRole(name=canonical, where=where, public={k: public.get(k) for k in ROLE_KEYS}, body=body)


def _token_role(name: str, values: dict[str, Any], where: str, env: Mapping[str, str]) -> DesiredRole:
    address = f"token-role {name}"
    if not re.fullmatch(token_roles.ROLE_NAME_RE, name):
        raise GitopsError(f"invalid token role name {name!r}", address=address, where=where)
    coerced = _coerce_all(token_roles.ROLE_FIELDS, values, address=address, where=where, env=env)
    role = token_roles.TokenRole(name=name)
    try:
        token_roles.apply_role_write(role, coerced, max_lease_ttl=0)
    except InvalidRequest as exc:
        raise GitopsError(str(exc), address=address, where=where) from None
    public = {**TOKEN_ROLE_DEFAULTS, **{k: v for k, v in role.public().items() if k in TOKEN_ROLE_KEYS}}
    body = {k: _written(token_roles.ROLE_FIELDS[k], public[k]) for k in TOKEN_ROLE_KEYS}
    return DesiredRole(name=name, where=where, public=public, body=body)


def _named(kind: str, noun: str, pattern: str, name: str, fields: FieldSet, values: dict[str, Any], where: str,
           env: Mapping[str, str], check: Callable[[dict[str, Any]], dict[str, Any]]) -> DesiredRole:
    """An object kept by name (identity token keys and roles, quotas): its name checked, its
    fields coerced, then ``check`` (the API's own checks) gives its GET's fields."""
    address = f"{kind} {name}"
    if not re.fullmatch(pattern, name):
        raise GitopsError(f"invalid {noun} name {name!r}", address=address, where=where)
    coerced = _coerce_all(fields, values, address=address, where=where, env=env)
    try:
        public = check(coerced)
    except InvalidRequest as exc:
        raise GitopsError(str(exc), address=address, where=where) from None
    except GitopsError as exc:
        raise GitopsError(exc.reason, address=address, where=where, field=exc.field) from None
    return DesiredRole(name=name, where=where, public=public, body=dict(public))


def _id_token_key(name: str, values: dict[str, Any], where: str, env: Mapping[str, str]) -> DesiredRole:
    """A named key of identity tokens: the API's own checks (``oidc.changed_key``)."""
    return _named("oidc-key", "key", oidc.NAME_RE, name, oidc.KEY_FIELDS, values, where, env,
                  lambda v: oidc.KEY_FIELDS.public(oidc.changed_key(None, v).to_storage()))


def _id_token_role(name: str, values: dict[str, Any], where: str, keys: Mapping[str, DesiredRole],
                   env: Mapping[str, str]) -> DesiredRole:
    """An identity token role: the API's own checks (``oidc.changed_role``), and its TTL
    against its key's ``verification_ttl`` when the file declares the key. A role without
    ``client_id`` keeps the one the server made up: it is neither compared nor written."""

    def check(coerced: dict[str, Any]) -> dict[str, Any]:
        role = oidc.changed_role(None, coerced)
        key = keys.get(role["key"])
        if key is not None and role["ttl"] > key.public["verification_ttl"]:
            raise GitopsError("a role's token ttl cannot be longer than the verification_ttl of the key it "
                              "references", field="ttl")
        return {k: role[k] for k in ID_ROLE_KEYS if k != "client_id" or role[k]}

    return _named("oidc-role", "role", oidc.NAME_RE, name, oidc.ROLE_FIELDS, values, where, env, check)


def _oidc_scope(name: str, values: dict[str, Any], where: str, env: Mapping[str, str]) -> DesiredRole:
    """An OIDC provider scope: its template checked as the API checks it (and kept decoded, as
    the API keeps it)."""

    def check(coerced: dict[str, Any]) -> dict[str, Any]:
        if name == "openid":
            raise InvalidRequest('the "openid" scope name is reserved')
        out = provider.SCOPE_FIELDS.public(coerced)
        out["template"] = check_template(out["template"])
        return out

    return _named("oidc-scope", "scope", oidc.NAME_RE, name, provider.SCOPE_FIELDS, values, where, env, check)


def _with_refs(obj: DesiredRole, refs: dict[str, list[str]]) -> DesiredRole:
    for key in refs:
        obj.public.pop(key, None)
        obj.body.pop(key, None)
    obj.refs = {k: provider.normalised(v) for k, v in refs.items()}
    return obj


def _oidc_assignment(name: str, values: dict[str, Any], where: str, env: Mapping[str, str]) -> DesiredRole:
    """An OIDC provider assignment: ids as the API keeps them (``provider.normalised``), and the
    groups and entities the file names, written as their ids."""
    refs: dict[str, list[str]] = {}

    def check(coerced: dict[str, Any]) -> dict[str, Any]:
        if name == provider.ALLOW_ALL:
            raise InvalidRequest(f'modification of assignment "{provider.ALLOW_ALL}" not allowed')
        refs.update(groups=coerced.pop("groups", []), entities=coerced.pop("entities", []))
        out = provider.ASSIGNMENT_FIELDS.public(coerced)
        return {k: provider.normalised([provider.stored_id(i) for i in v]) for k, v in out.items()}

    obj = _named("oidc-assignment", "assignment", oidc.NAME_RE, name, _ASSIGNMENT_FIELDS, values, where, env, check)
    return _with_refs(obj, refs)


def _oidc_client(name: str, values: dict[str, Any], where: str, keys: Mapping[str, DesiredRole],
                 env: Mapping[str, str]) -> DesiredRole:
    """An OIDC provider client: its type, and its ``id_token_ttl`` against its key's
    ``verification_ttl`` when the file declares the key. Its ID and secret are the server's."""

    def check(coerced: dict[str, Any]) -> dict[str, Any]:
        out = provider.CLIENT_FIELDS.public(coerced)
        if out["client_type"] not in ("confidential", "public"):
            raise InvalidRequest(f'invalid client_type "{out["client_type"]}"')
        provider.check_grants(out)
        key = keys.get(out["key"])
        if key is not None and out["id_token_ttl"] > key.public["verification_ttl"]:
            raise GitopsError("a client's id_token_ttl cannot be greater than the verification_ttl of the key it "
                              "references", field="id_token_ttl")
        return {**out, "redirect_uris": provider.normalised(out["redirect_uris"]),
                "assignments": provider.normalised(out["assignments"])}

    return _named("oidc-client", "client", oidc.NAME_RE, name, provider.CLIENT_FIELDS, values, where, env, check)


def _oidc_provider(name: str, values: dict[str, Any], where: str, env: Mapping[str, str]) -> DesiredRole:
    """An OIDC provider: its issuer checked as the API checks it, the clients the file names
    written as their client IDs. An empty ``issuer`` (the server's ``api_addr``) is not compared."""
    refs: dict[str, list[str]] = {}

    def check(coerced: dict[str, Any]) -> dict[str, Any]:
        refs.update(clients=coerced.pop("allowed_clients", []))
        out = {k: v for k, v in provider.PROVIDER_FIELDS.public(coerced).items() if k in OIDC_PROVIDER_KEYS}
        if out["issuer"] and not is_origin(out["issuer"]):
            raise InvalidRequest("invalid issuer, which must include only a scheme, host, and optional port "
                                 "(e.g. https://example.com:8200)")
        return {**out, "allowed_client_ids": provider.normalised(out["allowed_client_ids"]),
                "scopes_supported": provider.normalised(out["scopes_supported"])}

    obj = _named("oidc-provider", "provider", oidc.NAME_RE, name, _PROVIDER_FIELDS, values, where, env, check)
    obj = _with_refs(obj, refs)
    if not obj.public["issuer"]:
        del obj.public["issuer"]
    return obj


def _quota(name: str, values: dict[str, Any], where: str, env: Mapping[str, str]) -> DesiredRole:
    """A rate limit quota: its fields coerced and its own checks (``rate``, ``block_interval``);
    whether its ``path`` names a mount is the server's to say when it is written (the mount
    may be one the same run makes). Compared with the quota's GET as Vault reads it, a
    mount's trailing ``/`` left out (the server adds it back)."""

    def check(coerced: dict[str, Any]) -> dict[str, Any]:
        public = {k: v for k, v in quota_paths.checked_quota(name, coerced).public().items() if k in QUOTA_KEYS}
        return {**public, "path": public["path"].rstrip("/")}

    return _named("quota", "quota", quota_paths.NAME_RE, name, quota_paths.QUOTA_FIELDS, values, where, env, check)


def _cors(values: dict[str, Any], env: Mapping[str, str]) -> DesiredRole:
    """The CORS settings: the API's own checks (``checked_origins``); compared with the GET,
    whose ``allowed_headers`` start with Vault's standard ones."""

    def check(coerced: dict[str, Any]) -> dict[str, Any]:
        credentials = bool(coerced.get("allow_credentials", False))
        origins = checked_origins([o.strip() for o in coerced.get("allowed_origins") or [] if o.strip()], credentials)
        extra = [h.strip() for h in coerced.get("allowed_headers") or [] if h.strip()]
        return {"allowed_origins": list(origins), "allowed_headers": [*STANDARD_HEADERS, *extra],
                "allow_credentials": credentials}

    desired = _named("cors", "cors", r"cors", "cors", cors_paths.CORS_FIELDS, values, "cors", env, check)
    desired.body = {**desired.body, "allowed_headers": desired.body["allowed_headers"][len(STANDARD_HEADERS):]}
    return desired


def _quota_config(values: dict[str, Any], env: Mapping[str, str]) -> DesiredRole:
    """The quota settings: the API's own checks (the two switches authmount does not serve
    stay off), the exempt paths as the API keeps them."""

    def check(coerced: dict[str, Any]) -> dict[str, Any]:
        for name in ("enable_rate_limit_audit_logging", "enable_rate_limit_response_headers"):
            if coerced.get(name):
                raise InvalidRequest(f"{name} is not supported: {quota_paths.CONFIG_FIELDS[name].description}")
        exempt = coerced.get("rate_limit_exempt_paths", quota_paths.CONFIG_FIELDS["rate_limit_exempt_paths"].default)
        return {"rate_limit_exempt_paths": [p.strip().lstrip("/") for p in exempt if p.strip()]}

    return _named("quota-config", "quota settings", r"quota-config", "quota-config", quota_paths.CONFIG_FIELDS, values,
                  "quota_config", env, check)


def _rotate_config(values: dict[str, Any], env: Mapping[str, str]) -> DesiredRole:
    """The automatic key rotation settings: the API's own checks; a field the file leaves out
    is Vault's default (the declared settings are the whole of them)."""
    return _named("rotate-config", "rotation settings", r"rotate-config", "rotate-config", key_paths.ROTATE_CONFIG_FIELDS,
                  values, "rotate_config", env,
                  lambda v: key_paths.checked_rotation_config(v, RotationConfig()).to_storage())


def _group(name: str, values: dict[str, Any], where: str, env: Mapping[str, str]) -> DesiredGroup:
    """An identity group: the API's own checks (``changed_group``) on its fields; its type is
    ``external`` when it has an alias and none is given, else ``internal`` (Vault's default)."""
    address = f"group {name}"
    coerced = _coerce_all(_GROUP_FIELDS, values, address=address, where=where, env=env)
    alias = _alias(coerced.pop("alias"), "alias", "the IdP's group name", address, where) if "alias" in coerced \
        else None
    kind = coerced.get("type") or ("external" if alias is not None else "internal")
    if alias is not None and kind != "external":
        raise GitopsError("an alias is for an external group (type: external)", address=address, where=where,
                          field="alias")
    members = tuple({fold_case(m): m for m in coerced.pop("member_groups", []) if m}.values())
    if members and kind == "external":
        raise GitopsError("member groups can't be set for external groups", address=address, where=where,
                          field="member_groups")
    if fold_case(name) in (fold_case(m) for m in members):
        raise GitopsError("a group cannot be its own member group", address=address, where=where,
                          field="member_groups")
    try:
        group = changed_group(Group(id="", name=name, type=kind), {**coerced, "name": name})
    except InvalidRequest as exc:
        raise GitopsError(str(exc), address=address, where=where) from None
    public = {"type": group.type, "policies": list(group.policies), "metadata": dict(group.metadata),
              "member_entity_ids": list(group.member_entity_ids)}
    return DesiredGroup(name=name, where=where, public=public, alias=alias, member_groups=members)


def _alias(raw: Any, key: str, what: str, address: str, where: str) -> AliasSpec:
    """``{mount: <mount path>, name: <what>}``, its mount path normalised.

    :raises GitopsError: another shape, a bad mount path, or a name over 1024 characters or
        with a control character.
    """
    unknown = sorted(set(raw) - {"mount", "name"}) if isinstance(raw, dict) else []
    if not isinstance(raw, dict) or unknown or not isinstance(raw.get("mount"), str) \
            or not isinstance(raw.get("name"), str) or not raw["name"] or not raw["mount"]:
        raise GitopsError(f"{key}: give {{mount: <mount path>, name: <{what}>}}"
                          + (f" (unknown keys: {', '.join(unknown)})" if unknown else ""),
                          address=address, where=where, field=key)
    try:
        alias = AliasSpec(mount=normalize_path(raw["mount"]), name=raw["name"])
    except InvalidRequest as exc:
        raise GitopsError(str(exc), address=address, where=where, field=f"{key}.mount") from None
    if len(alias.name) > 1024 or any(not c.isprintable() for c in alias.name):
        raise GitopsError("invalid alias name", address=address, where=where, field=f"{key}.name")
    return alias


def _entity(name: str, values: dict[str, Any], where: str, env: Mapping[str, str]) -> DesiredEntity:
    """An entity made by name: the API's checks of its fields, its name (not the form
    ``entity_<16 hex digits>``, which names the entity with those digits) and its aliases
    (one per mount, as the API allows)."""
    address = f"entity {name}"
    if name != name.strip() or not name or len(name) > 256 or "/" in name or any(c.isspace() for c in name) \
            or DERIVED_NAME.fullmatch(fold_case(name)):
        raise GitopsError(f"invalid entity name {name!r}", address=address, where=where)
    coerced = _coerce_all(_ENTITY_FIELDS, values, address=address, where=where, env=env)
    aliases = tuple(_alias(raw, f"aliases[{i}]", "the login's alias name", address, where)
                    for i, raw in enumerate(coerced.pop("aliases", None) or []))
    mounts = [a.mount for a in aliases]
    for mount in mounts:
        if mounts.count(mount) > 1:
            raise GitopsError(f"two aliases on {mount}: an entity has one alias per mount", address=address,
                              where=where, field="aliases")
    try:
        policies = group_policies(coerced.get("policies", []))
    except InvalidRequest as exc:
        raise GitopsError(str(exc), address=address, where=where, field="policies") from None
    try:
        metadata = checked_metadata("entity", coerced.get("metadata") or {})
    except InvalidRequest as exc:
        raise GitopsError(str(exc), address=address, where=where, field="metadata") from None
    public = {"policies": policies, "metadata": metadata, "disabled": bool(coerced.get("disabled", False))}
    return DesiredEntity(name=name, where=where, public=public, aliases=aliases)


def _written(spec: Field, value: Any) -> Any:
    """A value as a write sends it: an unset list or map as an empty one (null is no value)."""
    if value is not None:
        return value
    if spec.type in (FieldType.MAP, FieldType.KV_PAIRS):
        return {}
    return []


# -- policies ----------------------------------------------------------------------------
def _policy(name: str, text: str, where: str) -> str:
    try:
        canonical = canonical_policy_name(name)
    except InvalidRequest as exc:
        raise GitopsError(str(exc), address=f"policy {name}", where=where) from None
    address = f"policy {canonical}"
    if canonical == "root":
        raise GitopsError('cannot update "root" policy', address=address, where=where)
    if not text.strip():
        raise GitopsError("'policy' parameter not supplied or empty", address=address, where=where)
    try:
        parse_policy(text)
    except PolicyError as exc:
        raise GitopsError(f"failed to parse policy: {exc}", address=address, where=where) from None
    return canonical


# -- values ------------------------------------------------------------------------------
def _coerce_all(
    fields: FieldSet, values: Mapping[str, Any], *, address: str, where: str, env: Mapping[str, str]
) -> dict[str, Any]:
    """An object's values from the file, as the API's write would take them: unknown keys
    refused, ``${env:NAME}`` references resolved, each value through its field."""
    _check_known(fields, values, address=address, where=where)
    return {key: _coerce(fields, key, _resolve(value, address=address, where=where, field=key, env=env),
                         address=address, where=where) for key, value in values.items()}


def _check_known(fields: FieldSet, values: Mapping[str, Any], *, address: str, where: str) -> None:
    """Refuse keys ``fields`` does not declare, as the API does with
    ``refuse_unknown_parameters``: ``unrecognized parameters: [a b]; a: did you mean x?``."""
    unknown = [str(k) for k in values if k not in fields.fields or fields[k].type is FieldType.NAME]
    if unknown:
        raise GitopsError("; ".join(pathdoc.refusal(unknown, fields).messages), address=address, where=where)


def _coerce(fields: FieldSet, key: str, value: Any, *, address: str, where: str) -> Any:
    """One value through its field (the message names the field)."""
    try:
        return coerce(key, fields[key], value)
    except InvalidRequest as exc:
        raise GitopsError(str(exc), address=address, where=where) from None


def _resolve(value: Any, *, address: str, where: str, field: str, env: Mapping[str, str]) -> Any:
    """``value`` with every string that is exactly ``${env:NAME}`` replaced by the variable."""
    if isinstance(value, str):
        match = _ENV_REF.fullmatch(value)
        if match is None:
            return value
        name = match.group(1)
        if name not in env:
            raise GitopsError(f"environment variable {name} is not set (the value is ${{env:{name}}})",
                              address=address, where=where, field=field)
        return env[name]
    if isinstance(value, list):
        return [_resolve(v, address=address, where=where, field=field, env=env) for v in value]
    if isinstance(value, dict):
        return {k: _resolve(v, address=address, where=where, field=f"{field}.{k}", env=env) for k, v in value.items()}
    return value
