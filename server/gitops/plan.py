"""The plan of ``authmount apply``: what to create, update and delete so that a server
matches a file, field by field, and how to apply it.

A plan compares normalised forms (``server.gitops.desired``) with what the server's GETs
return; a secret is compared by its fingerprint (``sys/fingerprint``), so an unchanged
secret is neither shown as a change nor written again. Applying runs the changes in order
(policies, then each mount with its config and roles, then deletions) and stops at the
first one the server refuses: nothing after it is applied, and a mount this run created is
disabled again when its config or a role fails, so that no half-made mount is left.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Awaitable, Callable, Container, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from plugin import registry
from plugin.path_config import CONFIG_FIELDS, FINGERPRINTS
from plugin.path_role import Role
from plugin.policyutil import fold_case
from plugin.schema import parse_duration
from server.gitops.desired import (
    CONFIG_KEYS,
    CORS_KEYS,
    ENTITY_KEYS,
    GROUP_KEYS,
    ID_KEY_KEYS,
    ID_ROLE_KEYS,
    OIDC_ASSIGNMENT_KEYS,
    OIDC_CLIENT_KEYS,
    OIDC_PROVIDER_KEYS,
    OIDC_SCOPE_KEYS,
    QUOTA_KEYS,
    ROLE_KEYS,
    TOKEN_ROLE_DEFAULTS,
    TOKEN_ROLE_KEYS,
    TUNE_KEYS,
    Desired,
    DesiredConfig,
    DesiredEntity,
    DesiredGroup,
    DesiredMount,
    DesiredRole,
    GitopsError,
    empty,
)
from server.gitops.live import LiveMount, LivePolicy, Server, ServerError
from server.mounts import MOUNT_CONFIG_FIELDS, normalize_path

__all__ = ["SENSITIVE", "FieldChange", "Change", "Plan", "Target", "parse_target", "make_plan", "apply_plan", "rotation_in_seconds",
           "made_by_login", "live_identity", "managed_alias", "ALIAS_MOUNT_TYPES"]

#: How a secret's value is shown.
SENSITIVE = "(sensitive)"
_NONE = "(none)"
#: Objects a plan never deletes: built into every server.
_BUILTIN_MOUNTS = ("token/",)
_BUILTIN_POLICIES = ("default", "root")
_SHOWN_MAX = 160


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One field of an object: its value before and after (already formatted)."""

    name: str
    before: str
    after: str


@dataclass(slots=True)
class Change:
    """One object to create, update or delete, and how to do it."""

    action: str  # "create" | "update" | "delete"
    kind: str  # "mount" | "config" | "role" | "policy"
    address: str
    where: str
    run: Callable[[Server], Awaitable[list[str]]]
    fields: list[FieldChange] = field(default_factory=list)
    #: The mount the change belongs to (a config, a role, the mount itself), "" for policies.
    mount: str = ""
    #: Lines of a text diff (policies).
    text_diff: list[str] = field(default_factory=list)

    @property
    def symbol(self) -> str:
        return {"create": "+", "update": "~", "delete": "-"}[self.action]


@dataclass(slots=True)
class Plan:
    """What ``apply`` would do; ``extras`` are objects the file does not declare, listed (or,
    with ``prune``, deleted)."""

    source: str
    server: str
    changes: list[Change] = field(default_factory=list)
    extras: list[str] = field(default_factory=list)
    #: ``--target`` values that matched no object of the file or the server (a typo?).
    unmatched: list[str] = field(default_factory=list)

    @property
    def has_changes(self) -> bool:
        return bool(self.changes)

    def counts(self) -> dict[str, int]:
        out = {"create": 0, "update": 0, "delete": 0}
        for change in self.changes:
            out[change.action] += 1
        return out

    def summary(self) -> str:
        c = self.counts()
        return f"{c['create']} to create, {c['update']} to update, {c['delete']} to delete"

    def render(self) -> str:
        """The plan as ``apply`` prints it."""
        lines = [f"authmount apply: {self.source} against {self.server}", ""]
        for change in self.changes:
            where = f"  ({change.where})" if change.where else ""
            lines.append(f"  {change.symbol} {change.address}{where}")
            for fc in change.fields:
                if change.action == "create":
                    lines.append(f"      {fc.name}: {fc.after}")
                else:
                    lines.append(f"      {fc.name}: {fc.before} -> {fc.after}")
            lines.extend(f"      {line}" for line in change.text_diff)
        if self.extras:
            lines += ["", "  Not in the file (kept; --prune deletes them):"]
            lines.extend(f"    {address}" for address in self.extras)
        if self.unmatched:
            lines += ["", "  Targets that match nothing in the file or on the server: " + ", ".join(self.unmatched)]
        if self.changes:
            lines += ["", f"Plan: {self.summary()}."]
        else:
            if self.extras:
                lines.append("")
            lines.append(f"no changes: {self.server} matches {self.source}")
        return "\n".join(lines)


# -- targets -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Target:
    """``--target kind:name``: ``mount:jwt`` (the mount, its config and its roles),
    ``config:jwt``, ``role:jwt/deploy``, ``policy:deploy``, ``token-role:ci``, ``group:ops``,
    ``entity:alice``, ``oidc-key:ci``, ``oidc-role:deploy``, ``quota:logins``."""

    kind: str
    name: str

    def covers(self, kind: str, name: str) -> bool:
        if self.kind == "mount":
            return kind in ("mount", "config", "role") and (name == self.name or name.startswith(self.name))
        return kind == self.kind and name == self.name


def parse_target(text: str) -> Target:
    """``kind:name`` → Target (mount paths normalised, names lower-cased).

    :raises ValueError: an unknown kind or an empty name.
    """
    kind, sep, name = text.partition(":")
    if not sep or not name.strip("/"):
        raise ValueError(f"invalid target {text!r}: use mount:<path>, config:<path>, role:<path>/<name>, "
                         "policy:<name>, token-role:<name>, group:<name>, entity:<name>, oidc-key:<name>, "
                         "oidc-role:<name>, quota:<name> or cors:cors")
    if kind in ("mount", "config"):
        return Target(kind, normalize_path(name))
    if kind == "role":
        mount, _, role = name.strip("/").rpartition("/")
        if not mount:
            raise ValueError(f"invalid target {text!r}: a role is <mount path>/<role name>")
        return Target(kind, normalize_path(mount) + fold_case(role))
    if kind == "policy":
        return Target(kind, fold_case(name))
    if kind in ("token-role", "oidc-key", "oidc-role", "quota", "quota-config", "rotate-config", "cors", "oidc-scope",
                "oidc-assignment",
                "oidc-client", "oidc-provider"):
        return Target(kind, name)  # these names keep their case, as Vault's
    if kind in ("group", "entity"):
        return Target(kind, fold_case(name))  # names are case-insensitive, as Vault's
    raise ValueError(f"invalid target {text!r}: the kind is one of mount, config, role, policy, token-role, group, "
                     "entity, oidc-key, oidc-role, quota, quota-config, rotate-config, cors, oidc-scope, "
                     "oidc-assignment, "
                     "oidc-client, oidc-provider")


def _selected(targets: Sequence[Target], kind: str, name: str) -> bool:
    return not targets or any(t.covers(kind, name) for t in targets)


# -- values ----------------------------------------------------------------------------------
def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    if len(text) > _SHOWN_MAX:
        return text[: _SHOWN_MAX - 20] + f"… ({len(text)} characters)"
    return text


def _same(a: Any, b: Any) -> bool:
    if empty(a) and empty(b):
        return True
    return bool(a == b)


def _diff(keys: Iterable[str], before: dict[str, Any], after: dict[str, Any]) -> list[FieldChange]:
    """The fields that differ; a field the server does not answer at all (a Vault without
    it) cannot be compared and is left out."""
    return [
        FieldChange(k, _shown(before.get(k)), _shown(after.get(k)))
        for k in keys if k in before and not _same(before.get(k), after.get(k))
    ]


def _created(keys: Iterable[str], values: dict[str, Any], defaults: dict[str, Any]) -> list[FieldChange]:
    return [
        FieldChange(k, "", _shown(values.get(k)))
        for k in keys if not _same(values.get(k), defaults.get(k))
    ]


_TUNE_DEFAULTS = {k: MOUNT_CONFIG_FIELDS[k].default_value() for k in TUNE_KEYS}
_CONFIG_DEFAULTS = {k: CONFIG_FIELDS[k].default_value() for k in CONFIG_KEYS}
_ROLE_DEFAULTS = {k: v for k, v in Role().public().items() if k in ROLE_KEYS}


def _live_tune(live: LiveMount) -> dict[str, Any]:
    return {k: live.config.get(k, _TUNE_DEFAULTS[k]) for k in TUNE_KEYS}


# -- planning --------------------------------------------------------------------------------
async def make_plan(
    desired: Desired, server: Server, *, prune: bool = False, targets: Sequence[Target] = ()
) -> Plan:
    """Compare ``desired`` with ``server``.

    :raises GitopsError: an object that cannot be changed into the declared one (a mount of
        another type), naming the file and the object.
    :raises ServerError: the server could not be read.
    """
    plan = Plan(source=desired.source, server=server.name)
    live_mounts = await server.mounts()

    await _plan_policies(plan, desired, server, prune=prune, targets=targets)
    await _plan_token_roles(plan, desired, server, prune=prune, targets=targets)
    for path, mount in desired.mounts.items():
        await _plan_mount(plan, mount, live_mounts.get(path), server, prune=prune, targets=targets)
    await _plan_groups(plan, desired, server, live_mounts, prune=prune, targets=targets)
    await _plan_entities(plan, desired, server, live_mounts, prune=prune, targets=targets)
    await _plan_id_tokens(plan, desired, server, prune=prune, targets=targets)
    await _plan_oidc_provider(plan, desired, server, prune=prune, targets=targets)
    await _plan_named(plan, server, "quota", "sys/quotas/rate-limit", desired.quotas, QUOTA_KEYS, prune=prune,
                      targets=targets, normalize=_quota_path)
    if _selected(targets, "cors", "cors"):
        await _plan_cors(plan, desired, server, prune=prune)
    if desired.quota_config is not None and _selected(targets, "quota-config", "quota-config"):
        await _plan_settings(plan, desired.quota_config, server, "quota-config", "sys/quotas/config",
                             ("rate_limit_exempt_paths",))
    if desired.rotate_config is not None and _selected(targets, "rotate-config", "rotate-config"):
        await _plan_settings(plan, desired.rotate_config, server, "rotate-config", "sys/rotate/config",
                             ("enabled", "interval", "max_operations"), normalize=rotation_in_seconds)
    for path, live in sorted(live_mounts.items()):
        if path in desired.mounts or path in _BUILTIN_MOUNTS or not _selected(targets, "mount", path):
            continue
        if registry.factory_for(live.type) is None:
            continue  # another kind of auth method (Vault's userpass ...): not apply's to manage
        address = f"mount {path}"
        if prune:
            plan.changes.append(Change("delete", "mount", address, "", _disable(path), mount=path))
        else:
            plan.extras.append(address)
    # Deletions last: roles of kept mounts, token roles, groups and identity token roles, then
    # identity token keys (a key a role uses is not deleted) and mounts, then policies.
    # A provider's scopes and a client's assignments go after the providers and clients that name them.
    last = {("delete", "mount"): 1, ("delete", "oidc-key"): 1, ("delete", "oidc-scope"): 1,
            ("delete", "oidc-assignment"): 1, ("delete", "policy"): 2}
    plan.changes.sort(key=lambda c: last.get((c.action, c.kind), 0))
    known = [("policy", n) for n in desired.policies] + [("mount", p) for p in live_mounts]
    known += [("token-role", n) for n in desired.token_roles] + [("group", n) for n in desired.groups]
    known += [("entity", n) for n in desired.entities]
    known += [("oidc-key", n) for n in desired.id_token_keys] + [("oidc-role", n) for n in desired.id_token_roles]
    known += [("quota", n) for n in desired.quotas] + [("cors", "cors"), ("quota-config", "quota-config")]
    known += [("rotate-config", "rotate-config")]
    known += [("oidc-scope", n) for n in desired.oidc_scopes] + [("oidc-assignment", n) for n in desired.oidc_assignments]
    known += [("oidc-client", n) for n in desired.oidc_clients] + [("oidc-provider", n) for n in desired.oidc_providers]
    for mount in desired.mounts.values():
        known += [("mount", mount.path), *_children(mount)]
    for address in [c.address for c in plan.changes] + plan.extras:
        kind, _, name = address.partition(" ")
        known.append((kind, name))
    plan.unmatched = [
        f"{t.kind}:{t.name}" for t in targets if not any(t.covers(kind, name) for kind, name in known)
    ]
    return plan


async def _plan_policies(
    plan: Plan, desired: Desired, server: Server, *, prune: bool, targets: Sequence[Target]
) -> None:
    live_names: set[str] = set(await server.policies())
    for name, text in desired.policies.items():
        if not _selected(targets, "policy", name):
            continue
        where = desired.policy_where[name]
        flags = desired.policy_flags.get(name) or {}
        current = await server.read_policy(name) if name in live_names or name == "default" else None
        if current is None:
            sent = flags if any(flags.values()) else None
            change = Change("create", "policy", f"policy {name}", where, _write_policy(name, text, sent, None))
            change.text_diff = [f"+ {line}" for line in text.splitlines()]
            change.text_diff += [f"+ {k}: true" for k, v in flags.items() if v]
            plan.changes.append(change)
            continue
        live_text, live_flags = current.text, current.flags
        flag_lines = [f"~ {k}: {str(live_flags.get(k, False)).lower()} -> {str(v).lower()}"
                      for k, v in flags.items() if live_flags.get(k, False) != v]
        if live_text != text or flag_lines:
            sent = flags if any(flags.values()) or any(live_flags.values()) else None
            change = Change("update", "policy", f"policy {name}", where, _write_policy(name, text, sent, current))
            diff = difflib.unified_diff(live_text.splitlines(), text.splitlines(), lineterm="", n=1)
            change.text_diff = [line for line in diff if not line.startswith(("---", "+++"))] + flag_lines
            plan.changes.append(change)
    for name in sorted(live_names - set(desired.policies) - set(_BUILTIN_POLICIES)):
        if not _selected(targets, "policy", name):
            continue
        if prune:
            plan.changes.append(Change("delete", "policy", f"policy {name}", "", _delete_policy(name)))
        else:
            plan.extras.append(f"policy {name}")


async def _plan_token_roles(
    plan: Plan, desired: Desired, server: Server, *, prune: bool, targets: Sequence[Target]
) -> None:
    live_names = set(await server.keys("auth/token/roles"))
    for name, role in desired.token_roles.items():
        if not _selected(targets, "token-role", name):
            continue
        address, path = f"token-role {name}", f"auth/token/roles/{name}"
        current = await server.read(path) if name in live_names else None
        if current is None:
            fields = _created(TOKEN_ROLE_KEYS, role.public, TOKEN_ROLE_DEFAULTS)
            plan.changes.append(Change("create", "token-role", address, role.where, _write(path, role.body), fields))
            continue
        fields = _diff(TOKEN_ROLE_KEYS, {**TOKEN_ROLE_DEFAULTS, **current}, role.public)
        if fields:
            plan.changes.append(Change("update", "token-role", address, role.where, _write(path, role.body), fields))
    for name in sorted(live_names - set(desired.token_roles)):
        if _selected(targets, "token-role", name):
            _undeclared(plan, "token-role", name, f"auth/token/roles/{name}", prune=prune)


async def _plan_named(
    plan: Plan, server: Server, kind: str, path: str, declared: dict[str, DesiredRole], keys: Sequence[str], *,
    prune: bool, targets: Sequence[Target], builtin: Container[str] = (),
    normalize: Callable[[dict[str, Any]], dict[str, Any]] = lambda live: live,
    known: dict[str, set[str]] | None = None,
) -> None:
    """Objects of one ``kind`` kept by name at ``path/<name>`` (identity token keys and roles,
    quotas, the OIDC provider's objects): created or updated field by field where the file
    declares them (a field it leaves out is not compared), the undeclared ones listed or
    pruned, never the ``builtin`` names. ``normalize`` brings a GET's answer to the file's
    spelling. An object that names others by their server-made ids (``DesiredRole.refs``: an
    assignment's groups and entities, a provider's clients) has each name found in ``known``
    (the file's) or on the server; one the server has is compared as its id, one only the
    file has (made by this run) is a change, and every name is looked up again when written."""
    live_names = set(await server.keys(path))
    for name, obj in declared.items():
        if not _selected(targets, kind, name):
            continue
        address, where = f"{kind} {name}", f"{path}/{name}"
        public, pending = obj.public, []
        run = _write(where, obj.body)
        if obj.refs:
            public, missing = await _resolved(server, obj.public, obj.refs)
            for ref_kind, ref in missing:
                if (fold_case(ref) if ref_kind != "clients" else ref) not in (known or {}).get(ref_kind, ()):
                    raise GitopsError(f"no {_REFERENCES[ref_kind][1]} {ref} on the server or in the file",
                                      address=address, where=obj.where, field=ref_kind)
            pending = [FieldChange(ref_kind, _NONE, _shown(sorted(n for k, n in missing if k == ref_kind)))
                       for ref_kind in sorted({k for k, _ in missing})]
            run = _write_referring(where, obj)
        current = await server.read(where) if name in live_names else None
        compared = [k for k in keys if k in public]
        if current is None:
            plan.changes.append(Change("create", kind, address, obj.where, run, _created(compared, public, {})))
            continue
        fields = _diff(compared, normalize(current), public) + pending
        if fields:
            plan.changes.append(Change("update", kind, address, obj.where, run, fields))
    for name in sorted(live_names - set(declared)):
        if _selected(targets, kind, name) and name not in builtin:
            _undeclared(plan, kind, name, f"{path}/{name}", prune=prune)


async def _plan_id_tokens(
    plan: Plan, desired: Desired, server: Server, *, prune: bool, targets: Sequence[Target]
) -> None:
    """Identity token keys, then roles (a role names its key). The ``default`` key is the
    server's (made for the first role that names it, never deleted): declared, it is updated;
    undeclared, it is left alone. A role's ``client_id`` is compared only where declared."""
    await _plan_named(plan, server, "oidc-key", "identity/oidc/key", desired.id_token_keys, ID_KEY_KEYS,
                      prune=prune, targets=targets, builtin=("default",))
    await _plan_named(plan, server, "oidc-role", "identity/oidc/role", desired.id_token_roles, ID_ROLE_KEYS,
                      prune=prune, targets=targets)


async def _plan_oidc_provider(
    plan: Plan, desired: Desired, server: Server, *, prune: bool, targets: Sequence[Target]
) -> None:
    """The OIDC provider's scopes, assignments, clients, then providers (each names the ones
    before). ``allow_all`` and the ``default`` provider are the server's: ``default``
    declared is updated, undeclared left alone. A client's ID and secret are the server's and
    never compared; the names an assignment or a provider gives (``groups``, ``entities``,
    ``allowed_clients``) are compared as the ids they have on the server."""
    await _plan_named(plan, server, "oidc-scope", "identity/oidc/scope", desired.oidc_scopes, OIDC_SCOPE_KEYS,
                      prune=prune, targets=targets)
    known = {"groups": set(desired.groups), "entities": set(desired.entities), "clients": set(desired.oidc_clients)}
    await _plan_named(plan, server, "oidc-assignment", "identity/oidc/assignment", desired.oidc_assignments,
                      OIDC_ASSIGNMENT_KEYS, prune=prune, targets=targets, builtin=("allow_all",), known=known)
    await _plan_named(plan, server, "oidc-client", "identity/oidc/client", desired.oidc_clients, OIDC_CLIENT_KEYS,
                      prune=prune, targets=targets)
    await _plan_named(plan, server, "oidc-provider", "identity/oidc/provider", desired.oidc_providers,
                      OIDC_PROVIDER_KEYS, prune=prune, targets=targets, builtin=("default",), known=known,
                      normalize=_issuer_origin)


#: A reference of the file by name (``DesiredRole.refs``): the field its ids are written to,
#: and what it names.
_REFERENCES = {"groups": ("group_ids", "group"), "entities": ("entity_ids", "entity"),
               "clients": ("allowed_client_ids", "client")}


async def _referred_id(server: Server, kind: str, name: str) -> str | None:
    """The id a server gives the group, entity or OIDC client ``name`` (None: it has none)."""
    if kind == "clients":
        found = await server.read(f"identity/oidc/client/{quote(name, safe='')}")
        value = (found or {}).get("client_id")
    else:
        value = ((await live_identity(server, _REFERENCES[kind][1], name)) or {}).get("id")
    return str(value) if value else None


async def _resolved(server: Server, values: dict[str, Any], refs: dict[str, list[str]]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """``values`` with the ids of the names in ``refs`` added to their fields, and the names the
    server does not have yet, as (kind, name)."""
    out, missing = dict(values), []
    for kind, names in refs.items():
        field_name, ids = _REFERENCES[kind][0], []
        for name in names:
            found = await _referred_id(server, kind, name)
            if found is None:
                missing.append((kind, name))
            else:
                ids.append(found)
        if names or field_name in out:
            out[field_name] = sorted({*out.get(field_name, []), *ids})
    return out, missing


def _issuer_origin(live: dict[str, Any]) -> dict[str, Any]:
    """A provider's GET as the file spells it: its issuer without ``/v1/identity/oidc/provider/<name>``."""
    return {**live, "issuer": _PROVIDER_PATH.sub("", str(live.get("issuer", "")))} if "issuer" in live else live


_PROVIDER_PATH = re.compile(r"/v1/identity/oidc/provider/[^/]*$")


def _write_referring(where: str, obj: DesiredRole) -> Callable[[Server], Awaitable[list[str]]]:
    async def run(server: Server) -> list[str]:
        body, missing = await _resolved(server, obj.body, obj.refs)
        if missing:
            raise ServerError(f"no {_REFERENCES[missing[0][0]][1]} {missing[0][1]}")
        return await server.write(where, body)

    return run


async def _plan_settings(plan: Plan, declared: DesiredRole, server: Server, kind: str, path: str,
                         keys: Sequence[str], *,
                         normalize: Callable[[dict[str, Any]], dict[str, Any]] = lambda live: live) -> None:
    """Settings the server always has (``sys/quotas/config``, ``sys/rotate/config``), when
    declared: written when their ``keys`` differ (not declared, they are not managed).
    ``normalize`` brings the GET's answer to the file's spelling."""
    live = normalize(await server.read(path) or {})
    fields = _diff(keys, live, declared.public)
    if fields:
        plan.changes.append(Change("update", kind, f"{kind} {kind}", declared.where, _write(path, declared.body),
                                   fields))


def rotation_in_seconds(live: dict[str, Any]) -> dict[str, Any]:
    """``sys/rotate/config``'s GET with its ``interval`` in seconds (Vault answers Go's
    duration text, or 0), as a file declares it."""
    return {**live, "interval": parse_duration(live["interval"])} if "interval" in live else live


async def _plan_cors(plan: Plan, desired: Desired, server: Server, *, prune: bool) -> None:
    """The CORS settings: written when declared and different (or off); when not declared and
    on, listed, or turned off with ``prune``."""
    live = await server.read("sys/config/cors") or {}
    declared = desired.cors
    if declared is None:
        if live.get("enabled"):
            _undeclared(plan, "cors", "cors", "sys/config/cors", prune=prune)
        return
    if not live.get("enabled"):
        fields = _created(CORS_KEYS, declared.public, {})
        plan.changes.append(Change("create", "cors", "cors cors", declared.where, _write("sys/config/cors", declared.body),
                                   fields))
        return
    fields = _diff(CORS_KEYS, live, declared.public)
    if fields:
        plan.changes.append(Change("update", "cors", "cors cors", declared.where, _write("sys/config/cors", declared.body),
                                   fields))


def _quota_path(live: dict[str, Any]) -> dict[str, Any]:
    """A quota as the file spells it: its path without the trailing ``/`` a mount has."""
    return {**live, "path": str(live.get("path", "")).rstrip("/")}


async def live_identity(server: Server, kind: str, name: str) -> dict[str, Any] | None:
    """The group or entity named ``name`` (``identity/lookup/<kind>``: any name, also one with a
    space, which no ``identity/<kind>/name/<name>`` path of every server takes)."""
    return await server.lookup(f"identity/lookup/{kind}", {"name": name})


def _live_group(data: dict[str, Any]) -> dict[str, Any]:
    """A group's GET in the desired form (an unset list or map as an empty one)."""
    return {"type": data.get("type") or "internal", "policies": list(data.get("policies") or []),
            "metadata": dict(data.get("metadata") or {}),
            "member_entity_ids": sorted(data.get("member_entity_ids") or [])}


def _alias_shown(mount: str, name: str) -> str:
    return _shown({"mount": mount, "name": name}) if name else _NONE


async def _plan_groups(
    plan: Plan, desired: Desired, server: Server, live_mounts: dict[str, LiveMount], *, prune: bool,
    targets: Sequence[Target],
) -> None:
    """Identity groups, after the mounts their aliases name (a mount this run makes has no
    accessor before it is made: the alias's write looks it up). An alias whose name another
    group of the file takes (two groups may swap theirs) is deleted before the first group is
    written, so that the name is free when it is written again; any other changed alias is
    updated in place (its id kept)."""
    live_names = {fold_case(n): n for n in await server.keys("identity/group/name")}
    first, releases, currents = len(plan.changes), [], {}
    taken = {(g.alias.mount, fold_case(g.alias.name)): key for key, g in desired.groups.items() if g.alias is not None}
    for key, group in desired.groups.items():
        if not _selected(targets, "group", key):
            continue
        address = f"group {group.name}"
        if group.alias is not None and group.alias.mount not in live_mounts and group.alias.mount not in desired.mounts:
            raise GitopsError(f"no mount at {group.alias.mount} on the server or in the file",
                              source=desired.source, address=address, where=group.where, field="alias.mount")
        current = await live_identity(server, "group", live_names[key]) if key in live_names else None
        currents[key] = current
        wanted_alias = _alias_shown(group.alias.mount, group.alias.name) if group.alias else _NONE
        if current is None:
            fields = [FieldChange(k, "", _shown(group.public[k])) for k in GROUP_KEYS
                      if k == "type" or not empty(group.public[k])]
            if group.alias is not None:
                fields.append(FieldChange("alias", "", wanted_alias))
            plan.changes.append(Change("create", "group", address, group.where, _write_group(group), fields))
            continue
        live = _live_group(current)
        if live["type"] != group.public["type"]:
            raise GitopsError(f"its type is {live['type']} on the server and {group.public['type']} in the file: a "
                              "group's type cannot change (delete the group first)", source=desired.source,
                              address=address, where=group.where, field="type")
        fields = _diff(GROUP_KEYS, live, group.public)
        if current.get("name") != group.name:
            fields.insert(0, FieldChange("name", _shown(current.get("name")), _shown(group.name)))
        alias = managed_alias(current.get("alias"))
        live_mount = str(alias.get("mount_path") or "").removeprefix("auth/")
        live_alias = _alias_shown(live_mount, str(alias.get("name") or ""))
        if live_alias != wanted_alias:
            fields.append(FieldChange("alias", live_alias, wanted_alias))
            if alias.get("id") and taken.get((live_mount, str(alias.get("name") or "").lower()), key) != key:
                releases.append(str(alias["id"]))
        if fields:
            plan.changes.append(Change("update", "group", address, group.where, _write_group(group), fields))
    if releases:
        plan.changes[first].run = _releasing(releases, plan.changes[first].run)
    await _plan_member_groups(plan, desired, server, live_names, currents)
    writes = plan.changes[first:]
    del plan.changes[first:]
    await _undeclared_identity(plan, server, "group", live_names, desired.groups, targets, prune=prune)
    # The groups --prune deletes go first: an alias name one of them holds may be one the file
    # gives another group.
    plan.changes.extend(writes)


async def _plan_member_groups(
    plan: Plan, desired: Desired, server: Server, live_names: dict[str, str],
    currents: dict[str, dict[str, Any] | None],
) -> None:
    """Each group's member groups, by name, after every group is written (a member group may
    be one this run makes). A group of the file nests the groups its ``member_groups`` names,
    and only those. ``currents``: the selected groups as ``_plan_groups`` read them."""
    names_of: dict[str, str] = {}  # a live group's id -> its name
    for key, current in currents.items():
        group = desired.groups[key]
        address = f"group {group.name}"
        for member in group.member_groups:
            if (folded := fold_case(member)) not in desired.groups and folded not in live_names:
                raise GitopsError(f"no group {member} on the server or in the file", source=desired.source,
                                  address=address, where=group.where, field="member_groups")
        before = []
        for gid in (current or {}).get("member_group_ids") or []:
            if gid not in names_of:
                found = await server.lookup("identity/lookup/group", {"id": gid})
                names_of[gid] = str((found or {}).get("name") or gid)
            before.append(names_of[gid])
        before.sort(key=str.lower)
        after = sorted(group.member_groups, key=str.lower)
        if [fold_case(m) for m in before] != [fold_case(m) for m in after]:
            field = FieldChange("member_groups", _shown(before) if before else _NONE, _shown(after) if after else _NONE)
            plan.changes.append(Change("update", "group", address, group.where, _write_member_groups(group), [field]))


def _write_member_groups(group: DesiredGroup) -> Callable[[Server], Awaitable[list[str]]]:
    async def run(server: Server) -> list[str]:
        ids = []
        for member in group.member_groups:
            found = await live_identity(server, "group", member)
            if not found or not found.get("id"):
                raise ServerError(f"no group {member}")
            ids.append(str(found["id"]))
        return await server.write("identity/group", {"name": group.name, "member_group_ids": ids})

    return run


def made_by_login(name: str) -> bool:
    """Whether an entity's name is the one it got from its id (``entity_`` and hex digits;
    OpenBao adds its namespace, ``.root``): an entity a login made, not apply's to manage."""
    return re.fullmatch(r"entity_[0-9a-f]+(\.[\w-]+)?", fold_case(name)) is not None


#: The mounts an identity alias in a file may name: those authmount has (``token`` is built
#: in). An alias on another kind (Vault's ``userpass``) is neither compared, written nor
#: deleted by apply, nor exported, as the mounts of other kinds are not.
ALIAS_MOUNT_TYPES = ("jwt", "oidc", "token")


def managed_alias(alias: dict[str, Any] | None) -> dict[str, Any]:
    """A group's alias as read from the server, or ``{}`` when there is none apply manages."""
    return alias if alias and alias.get("mount_type") in ALIAS_MOUNT_TYPES else {}


def _alias_set(aliases: Iterable[dict[str, Any]]) -> list[dict[str, str]]:
    """Aliases read from the server as the file names them, sorted (``{mount, name}``); those
    on mounts apply does not manage are left out."""
    return sorted(({"mount": str(a.get("mount_path") or "").removeprefix("auth/"), "name": str(a.get("name") or "")}
                   for a in aliases if managed_alias(a)), key=lambda a: (a["mount"], a["name"]))


async def _plan_entities(
    plan: Plan, desired: Desired, server: Server, live_mounts: dict[str, LiveMount], *, prune: bool,
    targets: Sequence[Target],
) -> None:
    """Entities an operator makes by name, with their aliases (after the mounts they name).
    The entities logins made (named ``entity_`` and hex digits) are never listed or pruned."""
    live_names = {fold_case(n): n for n in await server.keys("identity/entity/name") if not made_by_login(n)}
    for key, entity in desired.entities.items():
        if not _selected(targets, "entity", key):
            continue
        address = f"entity {entity.name}"
        for alias in entity.aliases:
            if alias.mount not in live_mounts and alias.mount not in desired.mounts:
                raise GitopsError(f"no mount at {alias.mount} on the server or in the file", source=desired.source,
                                  address=address, where=entity.where, field="aliases")
        wanted = sorted(({"mount": a.mount, "name": a.name} for a in entity.aliases),
                        key=lambda a: (a["mount"], a["name"]))
        current = await live_identity(server, "entity", live_names[key]) if key in live_names else None
        if current is None:
            fields = [FieldChange(k, "", _shown(entity.public[k])) for k in ENTITY_KEYS
                      if entity.public[k] and not empty(entity.public[k])]
            if wanted:
                fields.append(FieldChange("aliases", "", _shown(wanted)))
            plan.changes.append(Change("create", "entity", address, entity.where, _write_entity(entity), fields))
            continue
        live = {"policies": list(current.get("policies") or []), "metadata": dict(current.get("metadata") or {}),
                "disabled": bool(current.get("disabled"))}
        fields = _diff(ENTITY_KEYS, live, entity.public)
        if current.get("name") != entity.name:
            fields.insert(0, FieldChange("name", _shown(current.get("name")), _shown(entity.name)))
        have = _alias_set(current.get("aliases") or [])
        if have != wanted:
            fields.append(FieldChange("aliases", _shown(have), _shown(wanted)))
        if fields:
            plan.changes.append(Change("update", "entity", address, entity.where, _write_entity(entity), fields))
    await _undeclared_identity(plan, server, "entity", live_names, desired.entities, targets, prune=prune)


def _write_entity(entity: DesiredEntity) -> Callable[[Server], Awaitable[list[str]]]:
    """Write the entity whole (by name: made if missing), then its aliases: each the file
    names and the entity lacks is written (one a login used, or another entity had, moves
    here), each it has and the file does not name is deleted."""

    async def run(server: Server) -> list[str]:
        warnings = await server.write("identity/entity", {"name": entity.name, **entity.public})
        current = await live_identity(server, "entity", entity.name) or {}
        have = {(a["mount"], a["name"]): str(alias.get("id"))
                for alias in current.get("aliases") or [] for a in _alias_set([alias])}
        wanted = {(a.mount, a.name) for a in entity.aliases}
        for (mount, name), alias_id in sorted(have.items()):
            if (mount, name) not in wanted:
                await server.delete(f"identity/entity-alias/id/{quote(alias_id, safe='')}")
        mounts = await server.mounts() if wanted - set(have) else {}
        for mount, name in sorted(wanted - set(have)):
            found = mounts.get(mount)
            if found is None or not found.accessor:
                raise ServerError(f"no mount at {mount}")
            warnings += await server.write("identity/entity-alias", {
                "name": name, "mount_accessor": found.accessor, "canonical_id": current.get("id")})
        return warnings

    return run


async def _undeclared_identity(
    plan: Plan, server: Server, kind: str, live_names: dict[str, str], declared: Container[str],
    targets: Sequence[Target], *, prune: bool,
) -> None:
    """The groups or entities (``kind``) on the server, by lower-cased name, that the file
    does not declare: listed, or with ``prune`` deleted by id (a name need not fit a path)."""
    for key, name in sorted(live_names.items()):
        if key not in declared and _selected(targets, kind, key):
            found = await live_identity(server, kind, name)
            if found is not None:
                _undeclared(plan, kind, name, f"identity/{kind}/id/{quote(str(found.get('id')), safe='')}",
                            prune=prune)


def _undeclared(plan: Plan, kind: str, name: str, path: str, *, prune: bool) -> None:
    """An object the file does not declare (at API ``path``): deleted with ``prune``, else listed."""
    address = f"{kind} {name}"
    if prune:
        plan.changes.append(Change("delete", kind, address, "", _delete(path)))
    else:
        plan.extras.append(address)


def _releasing(alias_ids: list[str], then: Callable[[Server], Awaitable[list[str]]]) -> Callable[[Server], Awaitable[list[str]]]:
    """``then``, after deleting the group aliases ``alias_ids`` (their groups write them again)."""

    async def run(server: Server) -> list[str]:
        for alias_id in alias_ids:
            await server.delete(f"identity/group-alias/id/{quote(alias_id, safe='')}")
        return await then(server)

    return run


def _write_group(group: DesiredGroup) -> Callable[[Server], Awaitable[list[str]]]:
    """Write the group whole (by name: made if missing), then make its alias what the file
    says (written, moved to the file's mount or name, or deleted)."""

    async def run(server: Server) -> list[str]:
        body = {"name": group.name, **group.public}
        if group.public["type"] == "external":  # Vault refuses the field for one, even empty
            del body["member_entity_ids"]
        warnings = await server.write("identity/group", body)
        current = await live_identity(server, "group", group.name) or {}
        alias = managed_alias(current.get("alias"))
        if group.alias is None:
            if alias.get("id"):
                await server.delete(f"identity/group-alias/id/{quote(str(alias['id']), safe='')}")
            return warnings
        mount = (await server.mounts()).get(group.alias.mount)
        if mount is None or not mount.accessor:
            raise ServerError(f"no mount at {group.alias.mount}")
        body = {"name": group.alias.name, "mount_accessor": mount.accessor, "canonical_id": current.get("id")}
        if not alias.get("id"):
            warnings += await server.write("identity/group-alias", body)
        elif (alias.get("name"), alias.get("mount_accessor")) != (group.alias.name, mount.accessor):
            warnings += await server.write(f"identity/group-alias/id/{quote(str(alias['id']), safe='')}", body)
        return warnings

    return run


async def _plan_mount(
    plan: Plan, mount: DesiredMount, live: LiveMount | None, server: Server, *, prune: bool,
    targets: Sequence[Target],
) -> None:
    path = mount.path
    address = f"mount {path}"
    if live is None:
        if _selected(targets, "mount", path):
            fields = [FieldChange("type", "", _shown(mount.type))]
            if mount.description:
                fields.append(FieldChange("description", "", _shown(mount.description)))
            fields += _created(TUNE_KEYS, mount.tune, _TUNE_DEFAULTS)
            plan.changes.append(Change("create", "mount", address, mount.where, _enable(mount), fields, mount=path))
        elif any(_selected(targets, kind, name) for kind, name in _children(mount)):
            raise GitopsError("the mount does not exist yet: target the mount too", address=address,
                              where=mount.where, source=plan.source)
        else:
            return
        if mount.config is not None and _selected(targets, "config", path):
            plan.changes.append(_config_change("create", mount, mount.config))
        for role in mount.roles.values():
            if _selected(targets, "role", path + role.name):
                plan.changes.append(_role_change("create", mount, role, _ROLE_DEFAULTS))
        return
    if live.type != mount.type:
        raise GitopsError(
            f"{path} is mounted with type {live.type}, the file says {mount.type}: disable the mount first "
            "(it deletes its roles and revokes its tokens), or use another path",
            address=address, where=mount.where, field="type", source=plan.source,
        )
    if _selected(targets, "mount", path):
        before = {"description": live.description, **_live_tune(live)}
        after = {"description": mount.description, **mount.tune}
        fields = _diff(("description", *TUNE_KEYS), before, after)
        if fields:
            plan.changes.append(Change("update", "mount", address, mount.where, _tune(mount), fields, mount=path))
    if mount.config is not None and _selected(targets, "config", path):
        current = await server.read(f"auth/{path}config")
        if current is None:
            plan.changes.append(_config_change("create", mount, mount.config))
        else:
            fps = current.get(FINGERPRINTS)
            live_fps = {str(k): str(v) for k, v in fps.items()} if isinstance(fps, dict) else {}
            fields = _diff(CONFIG_KEYS, current, mount.config.public)
            fields += await _secret_changes(server, f"auth/{path}config", mount.config.secrets, live_fps)
            if fields:
                change = _config_change("update", mount, mount.config)
                change.fields = fields
                plan.changes.append(change)
    live_roles = set(await server.keys(f"auth/{path}role"))
    for role in mount.roles.values():
        if not _selected(targets, "role", path + role.name):
            continue
        current = await server.read(f"auth/{path}role/{role.name}") if role.name in live_roles else None
        if current is None:
            plan.changes.append(_role_change("create", mount, role, _ROLE_DEFAULTS))
        else:
            fields = _diff(ROLE_KEYS, current, role.public)
            if fields:
                change = _role_change("update", mount, role, current)
                change.fields = fields
                plan.changes.append(change)
    for name in sorted(live_roles - set(mount.roles)):
        if not _selected(targets, "role", path + name):
            continue
        role_address = f"role {path}{name}"
        if prune:
            plan.changes.append(Change("delete", "role", role_address, "", _delete(f"auth/{path}role/{name}"),
                                       mount=path))
        else:
            plan.extras.append(role_address)


def _children(mount: DesiredMount) -> list[tuple[str, str]]:
    return [("config", mount.path)] + [("role", mount.path + name) for name in mount.roles]


async def _secret_changes(
    server: Server, path: str, secrets: dict[str, Any], live: dict[str, str]
) -> list[FieldChange]:
    """The secrets that differ: set on one side only, or set on both with other fingerprints."""
    both = {name: value for name, value in secrets.items() if name in live}
    theirs: dict[str, str] = {}
    if both:
        theirs = await server.fingerprints(path, both)
    out = []
    for name in sorted(set(secrets) | set(live)):
        if name not in secrets:
            out.append(FieldChange(name, SENSITIVE, _NONE))
        elif name not in live:
            out.append(FieldChange(name, _NONE, SENSITIVE))
        elif theirs.get(name) != live[name]:
            out.append(FieldChange(name, SENSITIVE, SENSITIVE + " (changed)"))
    return out


def _config_change(action: str, mount: DesiredMount, config: DesiredConfig) -> Change:
    address = f"config {mount.path}"
    change = Change(action, "config", address, f"{mount.where}.config",
                    _write(f"auth/{mount.path}config", config.body), mount=mount.path)
    if action == "create":
        change.fields = _created(CONFIG_KEYS, config.public, _CONFIG_DEFAULTS)
        change.fields += [FieldChange(name, "", SENSITIVE) for name in sorted(config.secrets)]
    return change


def _role_change(action: str, mount: DesiredMount, role: DesiredRole, current: dict[str, Any]) -> Change:
    change = Change(action, "role", f"role {mount.path}{role.name}", role.where,
                    _write(f"auth/{mount.path}role/{role.name}", role.body), mount=mount.path)
    if action == "create":
        change.fields = _created(ROLE_KEYS, role.public, _ROLE_DEFAULTS)
        if not any(fc.name == "role_type" for fc in change.fields):
            change.fields.insert(0, FieldChange("role_type", "", _shown(role.public.get("role_type"))))
    return change


# -- the writes ------------------------------------------------------------------------------
def _enable(mount: DesiredMount) -> Callable[[Server], Awaitable[list[str]]]:
    async def run(server: Server) -> list[str]:
        await server.enable(mount.path, mount.type, mount.description, dict(mount.tune))
        return []

    return run


def _tune(mount: DesiredMount) -> Callable[[Server], Awaitable[list[str]]]:
    async def run(server: Server) -> list[str]:
        await server.tune(mount.path, {**mount.tune, "description": mount.description})
        return []

    return run


def _disable(path: str) -> Callable[[Server], Awaitable[list[str]]]:
    async def run(server: Server) -> list[str]:
        await server.disable(path)
        return []

    return run


def _write(path: str, body: dict[str, Any]) -> Callable[[Server], Awaitable[list[str]]]:
    async def run(server: Server) -> list[str]:
        return await server.write(path, dict(body))

    return run


def _delete(path: str) -> Callable[[Server], Awaitable[list[str]]]:
    async def run(server: Server) -> list[str]:
        await server.delete(path)
        return []

    return run


def _write_policy(name: str, text: str, flags: dict[str, bool] | None,
                  live: LivePolicy | None) -> Callable[[Server], Awaitable[list[str]]]:
    """The write of a policy, a check-and-set on ``live``, the policy as the plan read it
    (None: there was none): a policy changed (or made) since the plan refuses the write."""
    async def run(server: Server) -> list[str]:
        await server.write_policy(name, text, flags, live)
        return []

    return run


def _delete_policy(name: str) -> Callable[[Server], Awaitable[list[str]]]:
    async def run(server: Server) -> list[str]:
        await server.delete_policy(name)
        return []

    return run


# -- applying --------------------------------------------------------------------------------
async def apply_plan(plan: Plan, server: Server, *, report: Callable[[str], None] = lambda _: None) -> int:
    """Run the plan's changes in order; returns how many were applied. ``report`` gets one
    line per applied change (and per warning the server returned).

    :raises GitopsError: the first change the server refused, naming the file, the object,
        the server's reason and how many changes were applied before it; a mount created by
        this run is disabled again first when the refused change was its config or a role.
    """
    done = 0
    created: set[str] = set()
    for change in plan.changes:
        try:
            warnings = await change.run(server)
        except ServerError as exc:
            note = f" (applied {done} of {len(plan.changes)} changes; nothing after this one)"
            if change.mount in created and change.kind != "mount":
                try:
                    await server.disable(change.mount)
                    note += f"; mount {change.mount} created by this run was disabled again"
                except ServerError as undo:
                    note += f"; disabling mount {change.mount} again failed too: {undo}"
            raise GitopsError(f"{exc}{note}", source=plan.source, address=change.address,
                              where=change.where) from exc
        done += 1
        if change.kind == "mount" and change.action == "create":
            created.add(change.mount)
        report(f"{change.symbol} {change.address}: {change.action}d")
        for warning in warnings:
            report(f"  warning ({change.address}): {warning}")
    return done
