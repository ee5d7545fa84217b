"""``authmount export``: a server's live state as an apply file (the settings file's
``mounts``, ``policies``, ``token_roles``, ``groups``, ``entities``, ``identity_token_keys``,
``identity_token_roles``, ``rate_limit_quotas``, ``quota_config``, ``rotate_config``, ``cors`` and the OIDC provider's ``oidc_*``), from authmount, Vault or OpenBao (the same API). An identity token
role's ``client_id`` is always written: it is its tokens' audience, which services check.

Only values that differ from a field's default are written, durations as ``20m``/``1h``.
Secrets are never readable: each one that is set is written as ``${env:NAME}``, which
``apply`` replaces by that environment variable, and listed in the notes. Auth methods other
than ``jwt``/``oidc``, fields authmount does not have, and the built-in ``default`` and
``root`` policies are left out (the notes name them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from plugin import registry
from plugin.path_config import CONFIG_FIELDS, FINGERPRINTS, KEY_SOURCES, PROVIDER_SECRETS
from plugin.path_role import ROLE_FIELDS, Role
from plugin.schema import Field, FieldType
from server.gitops.desired import (
    CONFIG_KEYS,
    ID_KEY_KEYS,
    ID_ROLE_KEYS,
    OIDC_ASSIGNMENT_KEYS,
    OIDC_CLIENT_KEYS,
    OIDC_PROVIDER_KEYS,
    OIDC_SCOPE_KEYS,
    ROLE_KEYS,
    TOKEN_ROLE_DEFAULTS,
    TOKEN_ROLE_KEYS,
    TUNE_KEYS,
    empty,
)
from server.gitops.live import Server
from server.gitops.plan import live_identity, made_by_login, managed_alias, rotation_in_seconds
from server.http.cors import STANDARD_HEADERS
from server.identity import oidc, provider
from server.mounts import MOUNT_CONFIG_FIELDS
from server.quotas import DEFAULT_EXEMPT
from server.sys.keys import ROTATE_CONFIG_FIELDS
from server.tokens import roles as token_roles

__all__ = ["Export", "export_state", "dump_yaml", "env_name"]

_ROLE_DEFAULTS = Role().public()
#: Keys a GET answers that are no field to export.
_NOT_FIELDS = {FINGERPRINTS, KEY_SOURCES}
#: Fields of Vault's or OpenBao's jwt method that authmount lacks, at the values that mean
#: "not used" (a config's key ``status``): those are left out without a note; any other
#: value is named in the notes.
_PEER_DEFAULTS = {"status": "valid"}


@dataclass(slots=True)
class Export:
    """The exported document and the notes for the operator (what was left out, which
    environment variables the secrets need)."""

    document: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def env_name(mount: str, name: str) -> str:
    """The variable an exported secret refers to: ``AUTHMOUNT_<MOUNT>_<FIELD>``."""
    return "AUTHMOUNT_" + re.sub(r"[^A-Z0-9]+", "_", f"{mount.strip('/')}_{name}".upper()).strip("_")


def _duration_text(seconds: int) -> Any:
    if seconds <= 0:
        return seconds
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _value(spec: Field, value: Any) -> Any:
    if spec.type in (FieldType.DURATION, FieldType.SIGNED_DURATION) and isinstance(value, int):
        return _duration_text(value)
    return value


def _differs(value: Any, default: Any) -> bool:
    return not (value == default or (empty(value) and empty(default)))


async def export_state(server: Server) -> Export:
    """Read every ``jwt``/``oidc`` mount (tune, config, roles) and every policy.

    :raises ServerError: the server could not be read.
    """
    out = Export(document={})
    mounts: list[dict[str, Any]] = []
    for path, live in sorted((await server.mounts()).items()):
        if live.type == "token":
            continue
        where = f"mounts[{len(mounts)}]"
        if registry.factory_for(live.type) is None:
            out.notes.append(f"not exported: mount {path} of type {live.type} (authmount has jwt and oidc)")
            continue
        entry: dict[str, Any] = {"path": path.rstrip("/"), "type": live.type}
        if live.description:
            entry["description"] = live.description
        tune = {
            k: _value(MOUNT_CONFIG_FIELDS[k], live.config[k]) for k in TUNE_KEYS
            if k in live.config and _differs(live.config[k], MOUNT_CONFIG_FIELDS[k].default_value())
        }
        if tune:
            entry["tune"] = tune
        config = await server.read(f"auth/{path}config")
        if config is not None:
            entry["config"] = _config(config, path, f"{where}.config", out)
        roles = {}
        for name in sorted(await server.keys(f"auth/{path}role")):
            role = await server.read(f"auth/{path}role/{name}")
            if role is not None:
                roles[name] = _role(role, path, f"{where}.roles.{name}", out)
        if roles:
            entry["roles"] = roles
        mounts.append(entry)
    if mounts:
        out.document["mounts"] = mounts
    policies: dict[str, Any] = {}
    for name in sorted(await server.policies()):
        if name in ("root", "default"):
            continue
        found = await server.read_policy(name)
        if found is not None:
            text, flags = found.text, found.flags
            policies[name] = {"policy": text, **{k: v for k, v in flags.items() if v}} if any(flags.values()) else text
    if policies:
        out.document["policies"] = policies
    out.notes.append("not exported: the built-in policies default and root (declare default to manage it)")
    made_by_roles: dict[str, Any] = {}
    for name in sorted(await server.keys("auth/token/roles")):
        data = await server.read(f"auth/token/roles/{name}")
        if data is not None:
            where = f"token_roles.{name}"
            made_by_roles[name] = {
                k: _value(token_roles.ROLE_FIELDS[k], data[k]) for k in TOKEN_ROLE_KEYS
                if k in data and _differs(data[k], TOKEN_ROLE_DEFAULTS[k])
            }
            _unknown({k: v for k, v in data.items() if k != "name"}, token_roles.ROLE_FIELDS.fields, where, out)
    if made_by_roles:
        out.document["token_roles"] = made_by_roles
    groups: dict[str, Any] = {}
    read: dict[str, dict[str, Any]] = {}
    for name in sorted(await server.keys("identity/group/name"), key=str.lower):
        data = await live_identity(server, "group", name)
        if data is not None:
            groups[name], read[name] = _group(data, f"groups.{name}", out), data
    names_of = {str(data.get("id")): name for name, data in read.items()}  # member groups by name
    for name, data in read.items():
        members = sorted((names_of[g] for g in data.get("member_group_ids") or [] if g in names_of), key=str.lower)
        if members:
            groups[name]["member_groups"] = members
    if groups:
        out.document["groups"] = groups
    entities: dict[str, Any] = {}
    for name in sorted(await server.keys("identity/entity/name"), key=str.lower):
        if made_by_login(name):
            continue
        data = await live_identity(server, "entity", name)
        if data is not None:
            entities[name] = _entity(data, f"entities.{name}", out)
    if entities:
        out.document["entities"] = entities
    for section, path, fields, keys in (("identity_token_keys", "identity/oidc/key", oidc.KEY_FIELDS, ID_KEY_KEYS),
                                        ("identity_token_roles", "identity/oidc/role", oidc.ROLE_FIELDS, ID_ROLE_KEYS)):
        declared: dict[str, Any] = {}
        for name in sorted(await server.keys(path)):
            data = await server.read(f"{path}/{name}")
            if data is not None:
                declared[name] = {k: _value(fields[k], data[k]) for k in keys
                                  if k in data and (k == "client_id" or _differs(data[k], fields[k].default_value()))}
                _unknown(data, fields.fields, f"{section}.{name}", out)
        if declared:
            out.document[section] = declared
    entity_names = {str(d.get("id")): n for n in entities if (d := await live_identity(server, "entity", n))}
    await _export_oidc_provider(server, out, names_of, entity_names)
    quotas: dict[str, Any] = {}
    for name in sorted(await server.keys("sys/quotas/rate-limit")):
        data = await server.read(f"sys/quotas/rate-limit/{name}")
        if data is not None:
            quotas[name] = _quota(data)
    if quotas:
        out.document["rate_limit_quotas"] = quotas
    exempt = (await server.read("sys/quotas/config") or {}).get("rate_limit_exempt_paths")
    if isinstance(exempt, list) and sorted(exempt) != sorted(DEFAULT_EXEMPT):
        out.document["quota_config"] = {"rate_limit_exempt_paths": exempt}
    rotation = rotation_in_seconds(await server.read("sys/rotate/config") or {})
    declared_rotation = {k: _value(spec, rotation[k]) for k, spec in ROTATE_CONFIG_FIELDS.fields.items()
                         if k in rotation and _differs(rotation[k], spec.default)}
    if declared_rotation:
        out.document["rotate_config"] = declared_rotation
    cors = await server.read("sys/config/cors") or {}
    if cors.get("enabled"):
        extra = [h for h in cors.get("allowed_headers") or [] if h not in STANDARD_HEADERS]
        out.document["cors"] = {"allowed_origins": cors.get("allowed_origins") or [],
                                **({"allowed_headers": extra} if extra else {}),
                                **({"allow_credentials": True} if cors.get("allow_credentials") else {})}
    return out


async def _export_oidc_provider(server: Server, out: Export, group_names: dict[str, str],
                                entity_names: dict[str, str]) -> None:
    """The OIDC provider's scopes, assignments, clients and providers: what differs from a new
    object's values; the groups, entities and clients the file also declares by name (the
    server receiving the file gives them ids of its own), the rest by id."""
    client_names: dict[str, str] = {}
    default_issuer: str | None = None  # read once, when a provider is exported
    for section, path, fields, keys in (("oidc_scopes", "identity/oidc/scope", provider.SCOPE_FIELDS, OIDC_SCOPE_KEYS),
                                        ("oidc_assignments", "identity/oidc/assignment", provider.ASSIGNMENT_FIELDS,
                                         OIDC_ASSIGNMENT_KEYS),
                                        ("oidc_clients", "identity/oidc/client", provider.CLIENT_FIELDS, OIDC_CLIENT_KEYS),
                                        ("oidc_providers", "identity/oidc/provider", provider.PROVIDER_FIELDS,
                                         OIDC_PROVIDER_KEYS)):
        declared: dict[str, Any] = {}
        for name in sorted(await server.keys(path)):
            data = await server.read(f"{path}/{name}")
            if data is None or (section, name) in (("oidc_assignments", provider.ALLOW_ALL),):
                continue
            if section == "oidc_clients" and data.get("client_id"):
                client_names[str(data["client_id"])] = name
            if section == "oidc_providers":
                if default_issuer is None:
                    default_issuer = await _default_issuer(server)
                issuer = str(data.get("issuer", "")).removesuffix(f"/v1/{path}/{name}")
                data = {**data, "issuer": "" if issuer == default_issuer else issuer}
            entry = {k: _value(fields[k], data[k]) for k in keys
                     if k in data and _differs(data[k], fields[k].default_value())}
            for field_name, ref, known in (("group_ids", "groups", group_names), ("entity_ids", "entities", entity_names),
                                           ("allowed_client_ids", "allowed_clients", client_names)):
                ids = list(entry.pop(field_name, []))
                if named := sorted(known[i] for i in ids if i in known):
                    entry[ref] = named
                if rest := [i for i in ids if i not in known]:
                    entry[field_name] = rest
            if section == "oidc_providers" and name == provider.DEFAULT_PROVIDER and entry == {
                    "allowed_client_ids": ["*"]}:
                continue  # the built-in provider as every server has it
            declared[name] = entry
        if declared:
            out.document[section] = declared
    if client_names:
        out.notes.append("OIDC clients get a new client_id and secret where the file is applied: give the "
                         "applications those of the new server")


async def _default_issuer(server: Server) -> str:
    """What a provider without an ``issuer`` of its own shows as one: the server's ``api_addr``,
    read from the identity tokens' discovery document while their issuer is not set either
    (``""``: it cannot be told, and every provider's issuer is exported)."""
    if (await server.read("identity/oidc/config") or {}).get("issuer"):
        return ""
    found = await server.document("identity/oidc/.well-known/openid-configuration") or {}
    return str(found.get("issuer") or "").removesuffix("/v1/identity/oidc")


def _quota(data: dict[str, Any]) -> dict[str, Any]:
    """A rate limit quota as the file declares it: what differs from a new quota's values."""
    path = str(data.get("path") or "").rstrip("/")
    new = {"path": "", "role": "", "interval": 1, "block_interval": 0, "inheritable": not path}
    entry: dict[str, Any] = {"path": path} if path else {}
    entry["rate"] = data.get("rate")
    for key in ("role", "interval", "block_interval", "inheritable"):
        if key in data and _differs(data[key], new[key]):
            entry[key] = _duration_text(data[key]) if key.endswith("interval") else data[key]
    return entry


def _entity(data: dict[str, Any], where: str, out: Export) -> dict[str, Any]:
    """An entity as the file declares it: what is set, and its aliases by mount path."""
    entry: dict[str, Any] = {k: data[k] for k in ("policies", "metadata") if data.get(k)}
    if data.get("disabled"):
        entry["disabled"] = True
    aliases = [named for alias in data.get("aliases") or [] if (named := _alias_entry(alias, where, out))]
    if aliases:
        entry["aliases"] = sorted(aliases, key=lambda a: (a["mount"], str(a["name"])))
    return entry


def _alias_entry(alias: dict[str, Any], where: str, out: Export) -> dict[str, Any] | None:
    """A group's or an entity's alias as the file names it (``{mount, name}``), or None, named
    on stderr, when it is on a mount apply does not manage (``plan.managed_alias``)."""
    if not managed_alias(alias):
        out.notes.append(f"{where}: alias {alias.get('name')} on {alias.get('mount_path') or 'an unknown mount'} "
                         f"({alias.get('mount_type') or 'unknown type'}), which is not exported")
        return None
    return {"mount": str(alias.get("mount_path") or "").removeprefix("auth/").rstrip("/"), "name": alias.get("name")}


def _group(data: dict[str, Any], where: str, out: Export) -> dict[str, Any]:
    """A group as the file declares it: what is not empty, its type when there is nothing
    to say it, and its alias by mount path (an alias on a mount not exported is named)."""
    entry: dict[str, Any] = {}
    alias = data.get("alias") or {}
    exported = _alias_entry(alias, where, out) if alias.get("name") else None
    if data.get("type") == "external" and exported is None:
        entry["type"] = "external"
    for key in ("policies", "metadata", "member_entity_ids"):
        if data.get(key):
            entry[key] = data[key]
    if exported is not None:
        entry["alias"] = exported
    return entry


def _config(data: dict[str, Any], mount: str, where: str, out: Export) -> dict[str, Any]:
    config = {
        k: _value(CONFIG_FIELDS[k], data[k]) for k in CONFIG_KEYS
        if k in data and _differs(data[k], CONFIG_FIELDS[k].default_value())
    }
    fps = data.get(FINGERPRINTS)
    secret_names = set(fps) if isinstance(fps, dict) else set()
    if fps is None and data.get("oidc_client_id"):
        secret_names.add("oidc_client_secret")  # Vault: a client id is only accepted with its secret
    provider = dict(config.get("provider_config") or {})
    for name in sorted(secret_names):
        ref = "${env:" + env_name(mount, name.replace("provider_config.", "")) + "}"
        head, dot, key = name.partition(".")
        if dot and head == "provider_config":
            provider[key] = ref
        elif head in CONFIG_FIELDS.fields:
            config[name] = ref  # a list of secrets: comma-separated in the variable
        else:
            continue
        out.notes.append(f"secret: {where}.{name} is written as {ref}: set that variable before apply")
    if provider:
        config["provider_config"] = provider
    kind = str(provider.get("provider", ""))
    for key in PROVIDER_SECRETS.get(kind, ()):
        if key not in provider and fps is None:
            out.notes.append(f"secret: {where}.provider_config.{key} cannot be read from this server; add it if set")
    _unknown(data, CONFIG_FIELDS.fields, where, out)
    return config


def _role(data: dict[str, Any], mount: str, where: str, out: Export) -> dict[str, Any]:
    role: dict[str, Any] = {"role_type": data.get("role_type") or "oidc"}
    for key in ROLE_KEYS:
        if key != "role_type" and key in data and _differs(data[key], _ROLE_DEFAULTS.get(key)):
            role[key] = _value(ROLE_FIELDS[key], data[key])
    _unknown(data, ROLE_FIELDS.fields, where, out)
    return role


def _unknown(data: dict[str, Any], fields: dict[str, Field], where: str, out: Export) -> None:
    for key, value in sorted(data.items()):
        if key in fields or key in _NOT_FIELDS or _PEER_DEFAULTS.get(key) == value:
            continue
        if not empty(value) and value not in ("", 0, False):
            out.notes.append(f"not exported: {where}.{key} = {value!r} (authmount has no such field)")


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (PEM keys, policies) as literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str)


def dump_yaml(export: Export, *, header: str = "") -> str:
    """The document as YAML (literal blocks for multi-line strings), after ``header`` lines
    written as comments."""
    comments = "".join(f"# {line}\n" for line in header.splitlines())
    body = yaml.dump(export.document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000) \
        if export.document else "{}\n"
    return comments + body
