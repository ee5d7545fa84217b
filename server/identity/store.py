"""The identity store: entities created at login, groups that carry policies, group aliases
that map an IdP's group names on one mount to external groups (Vault's identity store, the
subset JWT/OIDC logins need).

Storage layout (root storage):

- ``identity/group/<id>`` → a group (name, type, policies, metadata, its alias id, and for
  internal groups ``member_entity_ids``);
- ``identity/group-alias/<id>`` → a group alias (name, mount accessor, canonical id);
- ``identity/entity/<id>`` → an entity: the alias a login made it with (one entity per alias
  name and mount, id ``TokenStore.entity_id(accessor, name)``; none for an entity an operator
  made) and ``group_ids``, its external group memberships, refreshed by each login through
  a mount (Vault's ``refreshExternalGroupMembershipsByEntityID``);
- ``identity/entity-alias/<alias id>`` → ``{"entity_id": ...}``, the alias a login made;
- ``identity/entity-made/<entity id>`` → 1, the entities operators made (their names are
  held in memory), and ``identity/entity-name/<hash>``, the claim of such a name;
- ``identity/entity-alias-op/<alias id>`` → an entity alias an operator wrote (name, mount
  accessor, canonical id, custom metadata, its latest login's metadata): logins through the
  mount with that name get its entity (``TokenStore.entity_of``), and
  ``identity/entity-alias-name/<hash>``, the claim of its (accessor, name);
- ``identity/entity-attrs/<entity id>`` → what an operator set on an entity: its
  ``policies``, ``metadata`` and ``disabled`` (a row apart from the entity's, which logins
  rewrite; few, and all held in memory like the groups);
- ``identity/member/<group id>/<entity id>`` → 1, the members of an external group;
- ``identity/group-name/<hash>`` and ``identity/group-alias-name/<hash>`` → ``{"id", "at"}``,
  the claim of a group name (lower-cased) and of a group alias name on a mount: the one
  writer of a name among nodes and workers (``server.identity.names``).

Groups, group aliases, entity attributes, operators' entity aliases and the names of the
entities operators made are few and written by operators: all of them are held in memory,
re-read after a local write and when another node announces one (``invalidate``). Entities
are many: a bounded cache holds those used lately. A token's identity policies are judged at
each use from these tables (``policies_for``): a group's policy change applies to live tokens
at their next use, as in Vault, and so do an entity's own policies and its ``disabled``
flag (a disabled entity's tokens are refused, and so are its logins). When no group grants a
policy the answer is known without looking at the entity, and otherwise only a cache miss
reads the entity's row.

Group names and group alias names are unique case-insensitively (as Vault's); a login's IdP
group names match aliases exactly (docs/vault-differences.md row 30). The in-memory tables
refuse a name this node knows is taken; a storage update of the name's claim decides between
nodes or workers that create (or rename to) one name at the same moment, before either has
heard of the other's group.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog

from plugin.errors import InvalidRequest, NotFound, PermissionDenied
from plugin.framework import Alias
from plugin.policyutil import fold_case, sanitize_policies
from plugin.storage import walk
from server.acl.templating import AliasView, GroupView, IdentityView
from server.identity.names import Held, NameClaims, name_key
from server.storage import Engine
from server.storage.refresh import Refresh

log = structlog.get_logger("authmount.identity")

_Row = TypeVar("_Row")

__all__ = [
    "ENTITY_PREFIX",
    "GROUP_PREFIX",
    "GROUP_ALIAS_PREFIX",
    "IDENTITY_PREFIX",
    "Entity",
    "EntityAlias",
    "EntityAttrs",
    "EntityNameInUse",
    "DERIVED_NAME",
    "Group",
    "GroupAlias",
    "IdentityStore",
    "MountRef",
    "MountLookup",
    "NameInUse",
    "now_rfc3339",
]


IDENTITY_PREFIX = "identity/"
GROUP_PREFIX = "identity/group/"
GROUP_ALIAS_PREFIX = "identity/group-alias/"
ENTITY_PREFIX = "identity/entity/"
ENTITY_ALIAS_PREFIX = "identity/entity-alias/"
ENTITY_ATTRS_PREFIX = "identity/entity-attrs/"
ENTITY_MADE_PREFIX = "identity/entity-made/"
ENTITY_NAME_PREFIX = "identity/entity-name/"
ENTITY_OP_ALIAS_PREFIX = "identity/entity-alias-op/"
ENTITY_OP_ALIAS_NAME_PREFIX = "identity/entity-alias-name/"
MEMBER_PREFIX = "identity/member/"
GROUP_NAME_PREFIX = "identity/group-name/"
#: Identity tokens' config, keys and roles (``server.identity.oidc``).
OIDC_PREFIX = "identity/oidc/"
ALIAS_NAME_PREFIX = "identity/group-alias-name/"
#: Keys of a folder counted per storage call (``count_entities``).
_COUNT_PAGE = 2048
#: Entities whose memberships are kept in memory (a miss reads the entity's row once).
ENTITY_CACHE_SIZE = 16384
GROUP_TYPES = ("external", "internal")


@dataclass(frozen=True, slots=True)
class MountRef:
    """An auth mount as the identity store shows it: accessor, path (``auth/jwt/``) and type."""

    accessor: str
    path: str
    type: str


#: Finds the mount with an accessor (None: no such mount).
MountLookup = Callable[[str], MountRef | None]


def now_rfc3339() -> str:
    """The current time the way Vault prints identity timestamps (RFC 3339, UTC, ns)."""
    ns = time.time_ns()
    base = datetime.fromtimestamp(ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{ns % 1_000_000_000:09d}Z"


@dataclass(slots=True)
class Group:
    """An identity group: ``external`` (members come from logins through its alias) or
    ``internal`` (members listed by id)."""

    id: str
    name: str
    type: str = "internal"
    policies: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    member_entity_ids: list[str] = field(default_factory=list)
    alias_id: str = ""
    creation_time: str = ""
    last_update_time: str = ""
    modify_index: int = 0
    #: Nested groups (internal groups only): their members get this group's policies too.
    member_group_ids: list[str] = field(default_factory=list)

    def to_storage(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "type": self.type, "policies": list(self.policies),
            "metadata": dict(self.metadata), "member_entity_ids": list(self.member_entity_ids),
            "alias_id": self.alias_id, "creation_time": self.creation_time,
            "last_update_time": self.last_update_time, "modify_index": self.modify_index,
            "member_group_ids": list(self.member_group_ids),
        }

    @classmethod
    def from_storage(cls, raw: dict[str, Any]) -> Group:
        return cls(**{k: v for k, v in raw.items() if k in _GROUP_FIELDS})


@dataclass(slots=True)
class GroupAlias:
    """The name an auth mount gives a group (an IdP group name) and the group it stands for."""

    id: str
    name: str
    mount_accessor: str
    canonical_id: str
    creation_time: str = ""
    last_update_time: str = ""

    def to_storage(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "mount_accessor": self.mount_accessor,
            "canonical_id": self.canonical_id, "creation_time": self.creation_time,
            "last_update_time": self.last_update_time,
        }

    @classmethod
    def from_storage(cls, raw: dict[str, Any]) -> GroupAlias:
        return cls(**{k: v for k, v in raw.items() if k in _ALIAS_FIELDS})


@dataclass(slots=True)
class Entity:
    """An entity created at login: one alias (name + mount accessor) and the external groups
    its latest logins put it in."""

    id: str
    name: str
    alias_id: str
    alias_name: str
    mount_accessor: str
    alias_metadata: dict[str, str] = field(default_factory=dict)
    group_ids: list[str] = field(default_factory=list)
    creation_time: str = ""
    last_update_time: str = ""

    def to_storage(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "alias_id": self.alias_id, "alias_name": self.alias_name,
            "mount_accessor": self.mount_accessor, "alias_metadata": dict(self.alias_metadata),
            "group_ids": list(self.group_ids), "creation_time": self.creation_time,
            "last_update_time": self.last_update_time,
        }

    @classmethod
    def from_storage(cls, raw: dict[str, Any]) -> Entity:
        return cls(**{k: v for k, v in raw.items() if k in _ENTITY_FIELDS})


@dataclass(slots=True)
class EntityAttrs:
    """What an operator set on an entity (``identity/entity/id/<id>``): Vault's entity
    ``policies`` (granted to its tokens at each use), ``metadata`` and ``disabled``."""

    policies: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    disabled: bool = False
    last_update_time: str = ""
    #: The entities merged into this one (``identity/entity/merge``): their tokens get this
    #: entity's policies, groups and ``disabled``.
    merged_entity_ids: list[str] = field(default_factory=list)

    def to_storage(self) -> dict[str, Any]:
        return {"policies": list(self.policies), "metadata": dict(self.metadata), "disabled": self.disabled,
                "last_update_time": self.last_update_time, "merged_entity_ids": list(self.merged_entity_ids)}

    @classmethod
    def from_storage(cls, raw: dict[str, Any]) -> EntityAttrs:
        return cls(**{k: v for k, v in raw.items() if k in _ATTRS_FIELDS})


@dataclass(slots=True)
class EntityAlias:
    """An entity alias an operator wrote (``identity/entity-alias``): the logins through
    ``mount_accessor`` whose alias name is exactly ``name`` get the entity ``canonical_id``
    (one made by an operator, or one a login made: a person's second mount joins the entity
    of the first). ``metadata`` is the alias metadata of its latest login."""

    id: str
    name: str
    mount_accessor: str
    canonical_id: str
    #: None for a login's alias an operator moved without giving it any (Vault shows null there).
    custom_metadata: dict[str, str] | None = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    creation_time: str = ""
    last_update_time: str = ""
    #: The entities the alias belonged to before merges moved it (``identity/entity/merge``).
    merged_from_canonical_ids: list[str] = field(default_factory=list)

    def to_storage(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "mount_accessor": self.mount_accessor, "canonical_id": self.canonical_id,
            "custom_metadata": dict(self.custom_metadata) if self.custom_metadata is not None else None,
            "metadata": dict(self.metadata), "creation_time": self.creation_time,
            "last_update_time": self.last_update_time, "merged_from_canonical_ids": list(self.merged_from_canonical_ids),
        }

    @classmethod
    def from_storage(cls, raw: dict[str, Any]) -> EntityAlias:
        return cls(**{k: v for k, v in raw.items() if k in _OP_ALIAS_FIELDS})


_OP_ALIAS_FIELDS = frozenset(EntityAlias.__dataclass_fields__)
_ATTRS_FIELDS = frozenset(EntityAttrs.__dataclass_fields__)
_GROUP_FIELDS = frozenset(Group.__dataclass_fields__)
_ALIAS_FIELDS = frozenset(GroupAlias.__dataclass_fields__)
_ENTITY_FIELDS = frozenset(Entity.__dataclass_fields__)


def login_made_alias(entity: Entity) -> EntityAlias:
    """The alias a login made ``entity`` with, in the shape of an operator's."""
    return EntityAlias(id=entity.alias_id, name=entity.alias_name, mount_accessor=entity.mount_accessor,
                       canonical_id=entity.id, custom_metadata=None, metadata=dict(entity.alias_metadata),
                       creation_time=entity.creation_time, last_update_time=entity.last_update_time)


def entity_name(entity_id: str) -> str:
    """The name of the entity with ``entity_id`` (``entity_`` + 16 hex digits of the id:
    Vault's 8 collide among tens of thousands of entities)."""
    return "entity_" + entity_id.replace("-", "")[:16]


def group_policies(raw: Iterable[str]) -> list[str]:
    """A group's policies in the one normal form (``plugin.policyutil``).

    :raises InvalidRequest: ``policies cannot contain root`` (Vault's message).
    """
    policies = sanitize_policies(list(raw))
    if "root" in policies:
        raise InvalidRequest("policies cannot contain root")
    return policies


class NameInUse(InvalidRequest):
    """``group name is already in use`` (Vault's message)."""

    def __init__(self) -> None:
        super().__init__("group name is already in use")


class EntityNameInUse(InvalidRequest):
    """``entity name is already in use`` (Vault's message)."""

    def __init__(self) -> None:
        super().__init__("entity name is already in use")


class _EntityGone(Exception):
    """The entity a login refreshes was deleted meanwhile."""


class _Unclaimed(Exception):
    """A group update would write a name this write has not claimed (``name``, lower-cased)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class _AliasUnknown(Exception):
    """The stored group names an alias (``alias_id``) this node has not read yet."""

    def __init__(self, alias_id: str) -> None:
        super().__init__(alias_id)
        self.alias_id = alias_id


def _group_key(lowered: str) -> str:
    return name_key(GROUP_NAME_PREFIX, lowered)


def _alias_key(accessor: str, name: str) -> str:
    return name_key(ALIAS_NAME_PREFIX, accessor, fold_case(name))


def _entity_name_key(lowered: str) -> str:
    return name_key(ENTITY_NAME_PREFIX, lowered)


def _entity_alias_key(accessor: str, name: str) -> str:
    return name_key(ENTITY_OP_ALIAS_NAME_PREFIX, accessor, name)  # exact: entity alias names match exactly


class IdentityStore:
    """Entities, groups and group aliases (see the module docstring for the layout)."""

    def __init__(self, storage: Engine, *, mounts: MountLookup | None = None) -> None:
        self.storage = storage
        self.mounts: MountLookup = mounts or (lambda accessor: None)
        self.groups: dict[str, Group] = {}
        self.aliases: dict[str, GroupAlias] = {}
        self._group_names: dict[str, str] = {}  # lower-cased name -> id
        self._alias_names: dict[tuple[str, str], str] = {}  # (accessor, lower-cased name) -> alias id
        self._alias_groups: dict[tuple[str, str], str] = {}  # (accessor, exact name) -> group id
        self._internal: dict[str, tuple[str, ...]] = {}  # entity id -> internal group ids
        self._parents: dict[str, tuple[str, ...]] = {}  # group id -> the groups it is a member group of
        self._ancestors: dict[str, tuple[str, ...]] = {}  # group id -> every group above it, nearest first
        self._merged: dict[str, str] = {}  # id of an entity merged into another -> that entity's id
        self._granting = False  # does any group or entity grant a policy?
        self.entity_attrs: dict[str, EntityAttrs] = {}
        #: Entity aliases operators wrote, by id; ``_login_aliases`` by (accessor, exact name).
        self.entity_aliases: dict[str, EntityAlias] = {}
        self._login_aliases: dict[tuple[str, str], EntityAlias] = {}
        #: Operator-made entities: lower-cased name -> id.
        self._entity_names: dict[str, str] = {}
        self._entities: dict[str, Entity | None] = {}
        self._lock = asyncio.Lock()
        self._refresh = Refresh(self.load, "identity_reload_failed")
        self._names = NameClaims(storage)
        self._duplicates: dict[str, list[str]] = {}  # group names more than one group has, as last logged
        self.generation = 0
        #: Moved on by every write under ``identity/oidc/`` (here or announced by another node):
        #: the identity tokens' public key set is built again (``server.identity.oidc``).
        self.oidc_generation = 0

    # -- tables ---------------------------------------------------------------------------
    async def load(self) -> None:
        """Read every group, group alias, entity attribute row, operator's entity alias and
        operator-made entity's name into memory (at start, and after another node wrote one)."""
        groups = await self._table(GROUP_PREFIX, Group.from_storage)
        aliases = await self._table(GROUP_ALIAS_PREFIX, GroupAlias.from_storage)
        self.entity_attrs = await self._table(ENTITY_ATTRS_PREFIX, EntityAttrs.from_storage)
        op_aliases = await self._table(ENTITY_OP_ALIAS_PREFIX, EntityAlias.from_storage)
        names: dict[str, str] = {}
        for key in await self.storage.list(ENTITY_MADE_PREFIX):
            raw = await self.storage.get(ENTITY_PREFIX + key) if _plain(key) else None
            if isinstance(raw, dict):
                made = Entity.from_storage(raw)
                names[fold_case(made.name)] = made.id
                self._remember(made.id, made)
        self.entity_aliases, self._entity_names = op_aliases, names
        self._install(groups, aliases)
        self._warn_duplicates()

    async def _table(self, prefix: str, build: Callable[[dict[str, Any]], _Row]) -> dict[str, _Row]:
        """Every row under ``prefix``, built by ``build``, by key (rows that are not objects
        are left out)."""
        out: dict[str, _Row] = {}
        for key in await self.storage.list(prefix):
            raw = await self.storage.get(prefix + key)
            if isinstance(raw, dict):
                out[key] = build(raw)
        return out

    def _warn_duplicates(self) -> None:
        """Log the group names more than one group has (once per change of that set). Two
        nodes could make them before names were claimed in storage; updates of all but one
        of such groups are refused (``group name is already in use``) until they are renamed
        or deleted, and a lookup by name finds only one of them."""
        seen: dict[str, list[str]] = {}
        for g in self.groups.values():
            seen.setdefault(fold_case(g.name), []).append(g.id)
        duplicates = {name: sorted(ids) for name, ids in seen.items() if len(ids) > 1}
        if duplicates and duplicates != self._duplicates:
            log.warning("identity_duplicate_group_names", groups=duplicates,
                        fix="rename or delete all but one group of each name (identity/group/id/<id>)")
        self._duplicates = duplicates

    def _install(self, groups: dict[str, Group], aliases: dict[str, GroupAlias]) -> None:
        self.groups, self.aliases = groups, aliases
        self._group_names = {fold_case(g.name): g.id for g in groups.values()}
        self._alias_names = {(a.mount_accessor, fold_case(a.name)): a.id for a in aliases.values()}
        self._alias_groups = {
            (a.mount_accessor, a.name): a.canonical_id
            for a in aliases.values()
            if (g := groups.get(a.canonical_id)) is not None and g.type == "external" and g.alias_id == a.id
        }
        internal: dict[str, list[str]] = {}
        for g in groups.values():
            if g.type == "internal":
                for member in g.member_entity_ids:
                    internal.setdefault(member, []).append(g.id)
        self._internal = {k: tuple(v) for k, v in internal.items()}
        parents: dict[str, list[str]] = {}
        for g in groups.values():
            for member in g.member_group_ids:
                if member in groups and member != g.id:
                    parents.setdefault(member, []).append(g.id)
        self._parents = {k: tuple(sorted(v)) for k, v in parents.items()}
        self._ancestors = {gid: self._above(gid) for gid in self._parents}
        self._login_aliases = {(a.mount_accessor, a.name): a for a in self.entity_aliases.values()}
        self._merged = {m: eid for eid, attrs in self.entity_attrs.items() for m in attrs.merged_entity_ids}
        self._granting = (any(g.policies for g in groups.values())
                          or any(a.policies for a in self.entity_attrs.values()))
        self.generation += 1

    def _reinstall(self) -> None:
        self._install(dict(self.groups), dict(self.aliases))

    def invalidate(self, key: str) -> None:
        """Another node wrote ``key`` (``""``: anything may have changed)."""
        if not key or key.startswith(OIDC_PREFIX):
            self.oidc_generation += 1
        if key.startswith(ENTITY_PREFIX):
            self._entities.pop(key[len(ENTITY_PREFIX):], None)
            return
        if key and not key.startswith((GROUP_PREFIX, GROUP_ALIAS_PREFIX, ENTITY_ATTRS_PREFIX, ENTITY_OP_ALIAS_PREFIX,
                                       ENTITY_MADE_PREFIX)):
            return
        if not key:
            self._entities.clear()
        self._refresh.request()  # a re-read running now may have read before this change

    async def close(self) -> None:
        self._refresh.cancel()

    # -- lookups ----------------------------------------------------------------------------
    async def find_group(self, *, gid: str | None = None, name: str | None = None) -> Group | None:
        """The group with ``gid`` (or ``name``). On storage shared with other nodes or workers
        a miss re-reads the groups first: the group may be one another node wrote a moment
        ago, before its announcement arrived (what ``MountTable.match_fresh`` does for mounts),
        so a client's read, update or delete after its create never misses it."""
        return await self._refresh.unless(lambda: self._group(gid, name), shared=self.storage.shared)

    async def find_alias(self, aid: str) -> GroupAlias | None:
        """The group alias with ``aid``, re-read on a miss as ``find_group`` does."""
        return await self._refresh.unless(lambda: self.aliases.get(aid), shared=self.storage.shared)

    def _group(self, gid: str | None, name: str | None) -> Group | None:
        return self.groups.get(gid) if gid is not None else self.group_by_name(name or "")

    def group_by_name(self, name: str) -> Group | None:
        gid = self._group_names.get(fold_case(name))
        return self.groups.get(gid) if gid is not None else None

    def alias_by_name(self, accessor: str, name: str) -> GroupAlias | None:
        aid = self._alias_names.get((accessor, fold_case(name)))
        return self.aliases.get(aid) if aid is not None else None

    def group_alias_of(self, group: Group) -> GroupAlias | None:
        return self.aliases.get(group.alias_id) if group.alias_id else None

    async def entity(self, entity_id: str) -> Entity | None:
        """The entity with ``entity_id`` (cached; a miss reads its row). On storage shared with
        other nodes or workers a remembered absence is read again: another node's login may
        have made the entity a moment ago (its announcement still on the way)."""
        if entity_id in self._entities:
            cached = self._entities[entity_id]
            if cached is not None or not self.storage.shared:
                return cached
        raw = await self.storage.get(ENTITY_PREFIX + entity_id) if _plain(entity_id) else None
        found = Entity.from_storage(raw) if isinstance(raw, dict) else None
        self._remember(entity_id, found)
        return found

    def _remember(self, entity_id: str, entity: Entity | None) -> None:
        cache = self._entities
        if len(cache) >= ENTITY_CACHE_SIZE and entity_id not in cache:
            del cache[next(iter(cache))]  # the oldest insertion
        cache[entity_id] = entity

    def login_alias(self, accessor: str, name: str) -> EntityAlias | None:
        """The operator's entity alias for logins through ``accessor`` named ``name``."""
        return self._login_aliases.get((accessor, name))

    def aliases_of(self, entity_id: str) -> list[EntityAlias]:
        """The operators' entity aliases of an entity, by id."""
        return sorted((a for a in self.entity_aliases.values() if a.canonical_id == entity_id), key=lambda a: a.id)

    async def find_entity_alias(self, alias_id: str) -> EntityAlias | None:
        """The operator's entity alias with ``alias_id``. On storage shared with other nodes a
        miss reads the alias's row (one written elsewhere a moment ago; its announcement is
        on the way), not every table: most ids asked for are those of logins' aliases."""
        found = self.entity_aliases.get(alias_id)
        if found is not None or not self.storage.shared or not _plain(alias_id):
            return found
        raw = await self.storage.get(ENTITY_OP_ALIAS_PREFIX + alias_id)
        return EntityAlias.from_storage(raw) if isinstance(raw, dict) else None

    async def entity_by_alias_id(self, alias_id: str) -> Entity | None:
        written = await self.find_entity_alias(alias_id)
        if written is not None:
            return await self.entity(written.canonical_id)
        raw = await self.storage.get(ENTITY_ALIAS_PREFIX + alias_id) if _plain(alias_id) else None
        if not isinstance(raw, dict):
            return None
        return await self.entity(str(raw.get("entity_id", "")))

    async def entity_by_name(self, name: str) -> Entity | None:
        """An operator-made entity's name is in memory; every other entity's is ``entity_`` +
        the id's first 16 hex digits: one range scan."""
        lowered = fold_case(name)
        if not DERIVED_NAME.fullmatch(lowered):  # never a name of that form: one an operator gave
            made = self._entity_names.get(lowered)
            if made is None and self.storage.shared:  # made elsewhere a moment ago? Its name's claim says
                claim = await self.storage.get(_entity_name_key(lowered))
                made = str(claim.get("id")) if isinstance(claim, dict) and claim.get("id") else None
            entity = await self.entity(made) if made is not None else None
            return entity if entity is not None and fold_case(entity.name) == lowered else None
        digits = name.removeprefix("entity_")
        if name == digits or len(digits) != 16 or not all(c in "0123456789abcdef" for c in digits):
            return None
        start = f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}"
        for key in await self.storage.list_page(ENTITY_PREFIX, start, 4):
            if key.startswith(start):
                entity = await self.entity(key)
                if entity is not None and entity.name == name:
                    return entity
        return None

    async def entity_ids(self) -> list[str]:
        return [k for k in await self.storage.list(ENTITY_PREFIX) if not k.endswith("/")]

    async def count_entities(self) -> int:
        """How many entities there are (``sys/internal/counters/entities``): their rows'
        keys counted a page at a time, no entity read."""
        count = 0
        async for key in walk(self.storage, ENTITY_PREFIX, page=_COUNT_PAGE):
            count += not key.endswith("/")
        return count

    async def members(self, group: Group) -> list[str]:
        """The entity ids of a group's members (external: from its membership rows)."""
        if group.type == "internal":
            return list(group.member_entity_ids)
        return [k for k in await self.storage.list(f"{MEMBER_PREFIX}{group.id}/") if not k.endswith("/")]

    def entity_groups(self, entity: Entity | None, entity_id: str) -> list[str]:
        """The ids of the groups ``entity`` is a member of (external and internal)."""
        ids = [g for g in (entity.group_ids if entity is not None else ()) if g in self.groups]
        ids.extend(self._internal.get(entity_id, ()))
        return sorted(set(ids))

    def inherited_groups(self, direct: Iterable[str]) -> list[str]:
        """The groups above ``direct`` through nested groups (``member_group_ids``), without
        ``direct`` itself, nearest first (Vault's walk up from each group): their policies
        apply to the members of ``direct`` too."""
        if not self._ancestors:  # no group nests another
            return []
        direct = list(direct)
        out: dict[str, None] = {}
        for gid in direct:
            out.update(dict.fromkeys(self._ancestors.get(gid, ())))
        return [g for g in out if g not in direct]

    def parent_groups(self, group_id: str) -> list[str]:
        """The groups that have ``group_id`` among their ``member_group_ids``."""
        return list(self._parents.get(group_id, ()))

    def below(self, group_id: str) -> set[str]:
        """Every group under ``group_id`` through ``member_group_ids`` (itself included)."""
        seen: set[str] = set()
        todo = [group_id]
        while todo:
            gid = todo.pop()
            group = self.groups.get(gid)
            if gid in seen or group is None:
                continue
            seen.add(gid)
            todo.extend(group.member_group_ids)
        return seen

    def _above(self, group_id: str) -> tuple[str, ...]:
        """The groups above ``group_id``, depth first from its parents (Vault's order)."""
        seen: dict[str, None] = {group_id: None}
        todo = list(reversed(self._parents.get(group_id, ())))
        while todo:
            gid = todo.pop()
            if gid not in seen:
                seen[gid] = None
                todo.extend(reversed(self._parents.get(gid, ())))
        return tuple(seen)[1:]  # a cycle written by two nodes at once grants nothing more

    def all_groups(self, entity: Entity | None, entity_id: str) -> list[str]:
        """The entity's groups and, after them, those above them through nested groups."""
        direct = self.entity_groups(entity, entity_id)
        return [*direct, *self.inherited_groups(direct)]

    # -- what tokens get ----------------------------------------------------------------------
    async def _token_entity(self, entity_id: str) -> tuple[str, Entity | None]:
        """The entity a token of ``entity_id`` stands for: that one, or the one it was merged
        into (as in Vault), with its id."""
        entity = await self.entity(entity_id)
        if entity is None and entity_id in self._merged:
            entity_id = self._merged[entity_id]
            entity = await self.entity(entity_id)
        return entity_id, entity

    async def policies_for(self, entity_id: str) -> list[str]:
        """The identity policies of a token with ``entity_id``: those of the entity's groups,
        as they are now (empty, without any lookup, when no group grants a policy)."""
        if not self._granting or not entity_id:
            return []
        entity_id, entity = await self._token_entity(entity_id)
        return self._policies_of(entity, entity_id)

    def disabled(self, entity_id: str) -> bool:
        """Whether an operator disabled the entity (its tokens and logins are refused), or the
        entity it was merged into."""
        attrs = self.entity_attrs.get(entity_id)
        if attrs is None and entity_id in self._merged:
            attrs = self.entity_attrs.get(self._merged[entity_id])
        return attrs is not None and attrs.disabled

    def _policies_of(self, entity: Entity | None, entity_id: str) -> list[str]:
        attrs = self.entity_attrs.get(entity_id)
        out: set[str] = set(attrs.policies) if attrs is not None else set()
        for gid in self.all_groups(entity, entity_id):
            out.update(self.groups[gid].policies)
        out.discard("root")  # refused at every group write; never granted whatever is stored
        return sorted(out)

    def entity_alias_list(self, entity: Entity) -> list[EntityAlias]:
        """An entity's aliases: the one a login made it with (unless an operator's alias took
        its id: moved, or rewritten), then the operators'."""
        own = [login_made_alias(entity)] if entity.alias_id and entity.alias_id not in self.entity_aliases else []
        return own + self.aliases_of(entity.id)

    async def template_view(self, entity_id: str) -> IdentityView | None:
        """What a policy's identity templates read of the entity (``server.acl.templating``),
        as it is now; None for no entity (or one deleted)."""
        entity = (await self._token_entity(entity_id))[1]
        if entity is None:
            return None
        attrs = self.entity_attrs.get(entity.id)
        aliases: dict[str, AliasView] = {}
        for a in self.entity_alias_list(entity):
            aliases.setdefault(a.mount_accessor, AliasView(a.id, a.name, IdentityView.items(a.metadata),
                                                           IdentityView.items(a.custom_metadata)))
        groups = tuple(GroupView(g.id, g.name, IdentityView.items(g.metadata))
                       for gid in self.all_groups(entity, entity.id) if (g := self.groups.get(gid)) is not None)
        return IdentityView(entity.id, entity.name, IdentityView.items(attrs.metadata if attrs else None),
                            tuple(sorted(aliases.items())), groups)

    async def login(self, entity_id: str, alias_id: str, accessor: str, alias: Alias, group_names: Iterable[str]) -> list[str]:
        """Create or refresh the entity of a login and its external group memberships through
        the mount with ``accessor`` (``group_names`` are the IdP's group names, the Auth's
        group aliases); return the entity's identity policies. Writes only what changed.

        :raises PermissionDenied: the entity is disabled (Vault refuses its logins too).
        """
        if self.disabled(entity_id):
            raise PermissionDenied()
        now_groups = {gid for n in group_names if (gid := self._alias_groups.get((accessor, n))) is not None}
        written = self._login_aliases.get((accessor, alias.name))  # an operator's alias: its row keeps the metadata
        if written is not None and written.id != alias_id:
            written = None
        if written is not None and written.metadata != alias.metadata:
            await self._alias_metadata(written, dict(alias.metadata))
        entity = await self.entity(entity_id)
        if entity is not None:
            kept = _through_other_mounts(entity.group_ids, accessor, self._alias_mount)
            metadata = None if written is not None else dict(alias.metadata)
            if sorted(kept | now_groups) != entity.group_ids or metadata not in (None, entity.alias_metadata):
                try:
                    entity = await self._refresh_entity(entity_id, accessor, now_groups, metadata)
                except _EntityGone:  # deleted meanwhile: this login makes it again
                    entity = None
        if entity is None:
            stamp = now_rfc3339()
            entity = Entity(
                id=entity_id, name=entity_name(entity_id), alias_id=alias_id, alias_name=alias.name,
                mount_accessor=accessor, alias_metadata=dict(alias.metadata), group_ids=sorted(now_groups),
                creation_time=stamp, last_update_time=stamp,
            )
            if written is not None:  # its operator's alias outlived it (deleted on another node meanwhile)
                entity.alias_id = entity.alias_name = entity.mount_accessor = ""
                entity.alias_metadata = {}
            items: list[tuple[str, object]] = [(ENTITY_PREFIX + entity_id, entity.to_storage())]
            if written is None:
                items.append((ENTITY_ALIAS_PREFIX + alias_id, {"entity_id": entity_id}))
            items.extend((f"{MEMBER_PREFIX}{g}/{entity_id}", 1) for g in entity.group_ids)
            await self.storage.put_many(items)
            self._remember(entity_id, entity)
        return self._policies_of(entity, entity_id) if self._granting else []

    async def _refresh_entity(self, entity_id: str, accessor: str, now_groups: set[str],
                              metadata: dict[str, str] | None) -> Entity:
        """Store a login's changes to an existing entity: its groups through ``accessor`` are
        ``now_groups`` and its alias metadata ``metadata`` (None: kept, the login came through
        an operator's alias, whose row holds it). The change runs on the stored
        entity, so the groups another node's login through another mount gave it a moment
        ago (its announcement still on the way) are kept; then the membership rows follow."""
        mounts = {gid: self._alias_mount(gid) for gid in self.groups}  # read by the storage's writer
        stamp = now_rfc3339()
        before: list[list[str]] = []
        written: list[Entity] = []

        def change(old: Any) -> Any:
            if not isinstance(old, dict):
                raise _EntityGone()
            stored = Entity.from_storage(old)
            kept = _through_other_mounts(stored.group_ids, accessor, lambda g: mounts.get(g, ""))
            fresh = Entity.from_storage(old)
            fresh.group_ids, fresh.last_update_time = sorted(kept | now_groups), stamp
            if metadata is not None:
                fresh.alias_metadata = metadata
            before[:], written[:] = [stored.group_ids], [fresh]
            return fresh.to_storage()

        await self.storage.update(ENTITY_PREFIX + entity_id, change)
        fresh, old_groups = written[0], before[0]
        added = [(f"{MEMBER_PREFIX}{g}/{entity_id}", 1) for g in fresh.group_ids if g not in old_groups]
        if added:
            await self.storage.put_many(added)
        for g in old_groups:
            if g not in fresh.group_ids:
                await self.storage.delete(f"{MEMBER_PREFIX}{g}/{entity_id}")
        self._remember(entity_id, fresh)
        return fresh

    def _alias_mount(self, group_id: str) -> str:
        group = self.groups.get(group_id)
        alias = self.aliases.get(group.alias_id) if group is not None and group.alias_id else None
        return alias.mount_accessor if alias is not None else ""

    # -- unique names -----------------------------------------------------------------------
    async def _holds_group_name(self, gid: str, lowered: str) -> bool:
        raw = await self.storage.get(GROUP_PREFIX + gid) if _plain(gid) else None
        return isinstance(raw, dict) and fold_case(str(raw.get("name", ""))) == lowered

    async def _holds_alias_name(self, aid: str, accessor: str, lowered: str) -> bool:
        raw = await self.storage.get(GROUP_ALIAS_PREFIX + aid) if _plain(aid) else None
        return (
            isinstance(raw, dict) and raw.get("mount_accessor") == accessor
            and fold_case(str(raw.get("name", ""))) == lowered
        )

    async def _taken(self, holder: Callable[[], str | None], owner: str) -> bool:
        """Does the tables' ``holder()`` of a name say another object than ``owner`` has it?
        On shared storage a yes is checked again after a re-read: the other may be gone (or
        renamed) on another node a moment ago. (A no is the storage claim's to confirm.)"""
        other = holder()
        if other is None or other == owner:
            return False
        if self.storage.shared:
            await self._refresh.now()
            other = holder()
        return other is not None and other != owner

    async def _claim_group_name(self, gid: str, lowered: str) -> bool:
        """Claim a group name (lower-cased) for ``gid`` (``NameClaims.claim``).

        :raises NameInUse: another group holds it.
        """
        try:
            return await self._names.claim(
                _group_key(lowered), gid, lambda holder: self._holds_group_name(holder, lowered),
            )
        except Held:
            raise NameInUse() from None

    # -- writes ---------------------------------------------------------------------------------
    async def write_group(self, group: Group, *, change: Callable[[Group], Group] | None = None) -> None:
        """Store ``group`` (names unique case-insensitively), then refresh the tables.

        Without ``change`` it is a new group. An update passes ``change``, the write's changes
        as a function of the group: they are made again to the stored group inside the
        storage update, so another node's change of a moment ago (its announcement still on
        the way: policies, an alias) is kept, not written over with this node's copy.
        ``group`` is that copy changed, for the name check. A new name is claimed first
        (``server.identity.names``) and the old one released after the write.

        :raises InvalidRequest: ``group name is already in use``, or what ``change`` raises.
        :raises NotFound: the group was deleted meanwhile.
        """
        async with self._lock:
            lowered = fold_case(group.name)
            if await self._taken(lambda: self._group_names.get(lowered), group.id):
                raise NameInUse()
            known = self.groups.get(group.id)
            held: set[str] = set()  # the names whose claim this write holds
            fresh: list[str] = []  # those of them it claimed anew: released if the write fails

            async def claim(name: str) -> None:
                if await self._claim_group_name(group.id, name):
                    fresh.append(name)
                held.add(name)

            try:
                if change is None or known is None or fold_case(known.name) != lowered:
                    await claim(lowered)
                try:
                    written, old_name = await self._store_group(group, change, held)
                except _Unclaimed as unclaimed:  # renamed on another node meanwhile
                    await claim(unclaimed.name)
                    written, old_name = await self._store_group(group, change, held)
            except Exception as exc:
                for name in fresh:
                    await self._names.release(_group_key(name), group.id)
                if isinstance(exc, _Unclaimed):
                    raise InvalidRequest("the group was renamed by another request meanwhile: try again") from None
                raise
            if old_name and old_name != fold_case(written.name):
                await self._names.release(_group_key(old_name), group.id)
            self.groups[written.id] = written
            self._reinstall()

    async def _store_group(self, group: Group, change: Callable[[Group], Group] | None, names: set[str]) -> tuple[Group, str]:
        """Write a new group (``change`` None) or run ``change`` on the stored one; return the
        group written and the name it had before (lower-cased; "" for a new group).

        :raises _Unclaimed: the update would write a name not in ``names`` (claimed).
        """
        stamp = now_rfc3339()
        if change is None:
            group.creation_time = group.last_update_time = stamp
            group.modify_index += 1
            await self.storage.put(GROUP_PREFIX + group.id, group.to_storage())
            return group, ""
        written: list[tuple[Group, str]] = []

        def merge(old: Any) -> Any:
            if not isinstance(old, dict):
                raise NotFound()
            before = Group.from_storage(old)
            new = change(before)
            name = fold_case(new.name)
            if name != fold_case(before.name) and name not in names:
                raise _Unclaimed(name)
            new.last_update_time = stamp
            new.modify_index += 1
            written[:] = [(new, fold_case(before.name))]
            return new.to_storage()

        await self.storage.update(GROUP_PREFIX + group.id, merge)
        return written[0]

    async def delete_group(self, group: Group) -> None:
        """Delete a group, its alias, its membership rows and its names' claims. The stored
        group counts as well as this node's copy: its name and alias may be another node's
        change of a moment ago (an alias left behind would hold its name for good)."""
        async with self._lock:
            raw = await self.storage.get(GROUP_PREFIX + group.id)
            stored = Group.from_storage(raw) if isinstance(raw, dict) else group
            for aid in {group.alias_id, stored.alias_id} - {""}:
                await self._drop_alias(aid, await self._alias_versions(aid, self.aliases.get(aid)))
            await self.storage.delete(GROUP_PREFIX + group.id)
            await self.storage.delete_prefix(f"{MEMBER_PREFIX}{group.id}/")
            for name in {fold_case(group.name), fold_case(stored.name)}:
                await self._names.release(_group_key(name), group.id)
            self.groups.pop(group.id, None)
            self._reinstall()

    async def write_alias(self, alias: GroupAlias, *, created: bool) -> None:
        """Store a group alias on its (external) group.

        The alias's name on its mount is claimed first (``server.identity.names``); then the alias row is
        written and the group made to name it in a storage update of the stored group, which
        refuses a group that another node gave another alias a moment ago.

        :raises InvalidRequest: Vault's messages: an unknown mount accessor or group, an
            internal group, a name already used on that mount, a group that already has
            another alias.
        """
        async with self._lock:
            if self.mounts(alias.mount_accessor) is None:
                raise InvalidRequest(f'invalid mount accessor "{alias.mount_accessor}"')
            group = await self.find_group(gid=alias.canonical_id)  # made on another node a moment ago?
            if group is None:
                raise InvalidRequest("invalid group ID given in 'canonical_id'")
            if group.type != "external":
                raise InvalidRequest("alias can't be set on an internal group")
            in_use = InvalidRequest("combination of mount and group alias name is already in use")
            if await self._taken(lambda: self._alias_names.get((alias.mount_accessor, fold_case(alias.name))), alias.id):
                raise in_use
            if group.alias_id and group.alias_id != alias.id and group.alias_id in self.aliases:
                raise InvalidRequest(f'group "{group.name}" already has an alias: update or delete it first')
            previous = self.aliases.get(alias.id)
            key = _alias_key(alias.mount_accessor, alias.name)
            old_key = _alias_key(previous.mount_accessor, previous.name) if previous is not None else key
            lowered = fold_case(alias.name)
            try:
                claimed = key != old_key or created or previous is None
                claimed = claimed and await self._names.claim(
                    key, alias.id, lambda holder: self._holds_alias_name(holder, alias.mount_accessor, lowered),
                )
            except Held:
                raise in_use from None
            stamp = now_rfc3339()
            if created:
                alias.creation_time = stamp
            alias.last_update_time = stamp
            try:
                await self.storage.put(GROUP_ALIAS_PREFIX + alias.id, alias.to_storage())
                group = await self._attach(group, alias.id, stamp)
            except Exception:
                if previous is not None:
                    await self.storage.put(GROUP_ALIAS_PREFIX + alias.id, previous.to_storage())
                else:
                    await self.storage.delete(GROUP_ALIAS_PREFIX + alias.id)
                if claimed:
                    await self._names.release(key, alias.id)
                raise
            self.groups[group.id] = group
            if previous is not None and previous.canonical_id != alias.canonical_id:
                old_group = await self._detach(previous.canonical_id, alias.id, stamp)
                if old_group is not None:
                    self.groups[old_group.id] = old_group
            if key != old_key:
                await self._names.release(old_key, alias.id)
            self.aliases[alias.id] = alias
            self._reinstall()

    async def _attach(self, group: Group, alias_id: str, stamp: str) -> Group:
        """Make the stored ``group`` name the alias ``alias_id``; return the group written.

        :raises InvalidRequest: the group is gone, or has another alias (also one another
            node wrote a moment ago: an alias id this node does not know is re-read first,
            and only one still unknown then is taken for a leftover and replaced).
        """
        try:
            return await self._attach_once(group.id, alias_id, stamp, replace_unknown=False)
        except _AliasUnknown:
            await self._refresh.now()
            return await self._attach_once(group.id, alias_id, stamp, replace_unknown=True)

    async def _attach_once(self, gid: str, alias_id: str, stamp: str, *, replace_unknown: bool) -> Group:
        known = frozenset(self.aliases)
        written: list[Group] = []

        def attach(old: Any) -> Any:
            if not isinstance(old, dict):
                raise InvalidRequest("invalid group ID given in 'canonical_id'")
            g = Group.from_storage(old)
            if g.alias_id != alias_id:
                if g.alias_id and g.alias_id in known:
                    raise InvalidRequest(f'group "{g.name}" already has an alias: update or delete it first')
                if g.alias_id and not replace_unknown:
                    raise _AliasUnknown(g.alias_id)
                g.alias_id = alias_id
                g.last_update_time = stamp
                g.modify_index += 1
            written[:] = [g]
            return g.to_storage()

        await self.storage.update(GROUP_PREFIX + gid, attach)
        return written[0]

    async def _detach(self, gid: str, alias_id: str, stamp: str) -> Group | None:
        """Make the stored group ``gid`` name no alias if it names ``alias_id``; return the
        group written (None: gone, or naming another alias)."""
        written: list[Group] = []

        def detach(old: Any) -> Any:
            if not isinstance(old, dict) or old.get("alias_id") != alias_id:
                return old
            g = Group.from_storage(old)
            g.alias_id = ""
            g.last_update_time = stamp
            g.modify_index += 1
            written[:] = [g]
            return g.to_storage()

        await self.storage.update(GROUP_PREFIX + gid, detach)
        return written[0] if written else None

    async def delete_alias(self, alias: GroupAlias) -> None:
        """Delete a group alias, detach it from its group and free its name. The stored alias
        counts as well as this node's copy (another node may have moved or renamed it)."""
        async with self._lock:
            versions = await self._alias_versions(alias.id, alias)
            stamp = now_rfc3339()
            for gid in {v.canonical_id for v in versions}:
                group = await self._detach(gid, alias.id, stamp)
                if group is not None:
                    self.groups[group.id] = group
            await self._drop_alias(alias.id, versions)
            self._reinstall()

    async def _alias_versions(self, aid: str, known: GroupAlias | None) -> list[GroupAlias]:
        """This node's copy of alias ``aid`` (``known``) and the stored one, those that exist."""
        raw = await self.storage.get(GROUP_ALIAS_PREFIX + aid) if _plain(aid) else None
        stored = GroupAlias.from_storage(raw) if isinstance(raw, dict) else None
        return [v for v in (known, stored) if v is not None]

    async def _drop_alias(self, aid: str, versions: list[GroupAlias]) -> None:
        """Delete alias ``aid``'s row and release the name of each of its ``versions``."""
        await self.storage.delete(GROUP_ALIAS_PREFIX + aid)
        for key in {_alias_key(v.mount_accessor, v.name) for v in versions}:
            await self._names.release(key, aid)
        self.aliases.pop(aid, None)

    async def delete_entity(self, entity: Entity) -> None:
        """Delete an entity, its alias row, the operators' aliases of it, its name's claim and
        its membership rows (a login made it: its next login makes it again; its tokens keep
        their token policies and lose their identity policies). The membership rows of the
        stored entity go too, also those another node's login added."""
        for written in self.aliases_of(entity.id):
            await self.delete_entity_alias(written)
        if await self.storage.get(ENTITY_MADE_PREFIX + entity.id) is not None:
            await self.storage.delete(ENTITY_MADE_PREFIX + entity.id)
            await self._names.release(_entity_name_key(fold_case(entity.name)), entity.id)
            if self._entity_names.get(fold_case(entity.name)) == entity.id:
                del self._entity_names[fold_case(entity.name)]
        stored = await self.storage.get(ENTITY_PREFIX + entity.id)
        groups = set(entity.group_ids) | set(Entity.from_storage(stored).group_ids if isinstance(stored, dict) else ())
        for g in sorted(groups):
            await self.storage.delete(f"{MEMBER_PREFIX}{g}/{entity.id}")
        await self.storage.delete(ENTITY_ALIAS_PREFIX + entity.alias_id)
        await self.storage.delete(ENTITY_PREFIX + entity.id)
        self._remember(entity.id, None)
        if await self.storage.get(ENTITY_ATTRS_PREFIX + entity.id) is not None or entity.id in self.entity_attrs:
            await self.storage.delete(ENTITY_ATTRS_PREFIX + entity.id)
            self.entity_attrs.pop(entity.id, None)
            self._reinstall()

    # -- entities and entity aliases an operator writes ---------------------------------------
    async def _claim_entity_name(self, entity_id: str, name: str) -> bool:
        """Claim an operator-made entity's name (lower-cased) for ``entity_id``.

        :raises InvalidRequest: ``entity name is already in use`` (Vault's message), also for
            the ``entity_<16 hex digits>`` form, which names the entity with those digits.
        """
        lowered = fold_case(name)
        in_use = EntityNameInUse()
        if DERIVED_NAME.fullmatch(lowered) and lowered != entity_name(entity_id):
            raise in_use
        if await self._taken(lambda: self._entity_names.get(lowered), entity_id):
            raise in_use

        async def holds(holder: str) -> bool:
            raw = await self.storage.get(ENTITY_PREFIX + holder) if _plain(holder) else None
            return isinstance(raw, dict) and fold_case(str(raw.get("name", ""))) == lowered

        try:
            return await self._names.claim(_entity_name_key(lowered), entity_id, holds)
        except Held:
            raise in_use from None

    async def create_entity(self, name: str, change: Callable[[EntityAttrs], None]) -> Entity:
        """Make an entity ahead of any login (``identity/entity`` with a new or no name):
        logins reach it through the entity aliases an operator gives it.

        :raises InvalidRequest: ``entity name is already in use``.
        """
        async with self._lock:
            entity_id = new_id()
            name = name or entity_name(entity_id)
            claimed = await self._claim_entity_name(entity_id, name)
            stamp = now_rfc3339()
            entity = Entity(id=entity_id, name=name, alias_id="", alias_name="", mount_accessor="",
                            creation_time=stamp, last_update_time=stamp)
            attrs = EntityAttrs(last_update_time=stamp)
            change(attrs)
            try:
                await self.storage.put_many([
                    (ENTITY_PREFIX + entity_id, entity.to_storage()),
                    (ENTITY_ATTRS_PREFIX + entity_id, attrs.to_storage()),
                    (ENTITY_MADE_PREFIX + entity_id, 1),
                ])
            except Exception:
                if claimed:
                    await self._names.release(_entity_name_key(fold_case(name)), entity_id)
                raise
            self._remember(entity_id, entity)
            self._entity_names[fold_case(name)] = entity_id
            self.entity_attrs[entity_id] = attrs
            self._reinstall()
            return entity

    async def rename_entity(self, entity: Entity, name: str) -> Entity:
        """Give an operator-made entity another name (a login-made one's is made from its id).

        :raises InvalidRequest: a login-made entity, or ``entity name is already in use``.
        """
        if entity.alias_id:
            raise InvalidRequest(f"the name of an entity a login made cannot be changed (it is {entity.name}, "
                                 "made from its id)")
        async with self._lock:
            old, lowered = fold_case(entity.name), fold_case(name)
            claimed = lowered != old and await self._claim_entity_name(entity.id, name)
            stamp = now_rfc3339()
            written: list[Entity] = []

            def rename(raw: Any) -> Any:
                if not isinstance(raw, dict):
                    raise NotFound()
                fresh = Entity.from_storage(raw)
                fresh.name, fresh.last_update_time = name, stamp
                written[:] = [fresh]
                return fresh.to_storage()

            try:
                await self.storage.update(ENTITY_PREFIX + entity.id, rename)
                await self.storage.put(ENTITY_MADE_PREFIX + entity.id, 1)  # other nodes re-read the names
            except Exception:
                if claimed:
                    await self._names.release(_entity_name_key(lowered), entity.id)
                raise
            if lowered != old:
                await self._names.release(_entity_name_key(old), entity.id)
                if self._entity_names.get(old) == entity.id:
                    del self._entity_names[old]
            self._entity_names[lowered] = entity.id
            self._remember(entity.id, written[0])
            return written[0]

    async def write_entity_alias(self, alias: EntityAlias, *, created: bool, moved: bool = False) -> EntityAlias:
        """Store an operator's entity alias (``created``: a new one; ``moved``: an update that
        gives it another entity): from now on the logins through its mount with its name get
        its entity (on every node once it has heard of the write: within the bound of
        docs/operations.md).

        :raises InvalidRequest: Vault's messages (create's or update's): an unknown mount
            accessor or entity, a name another alias has on that mount, an entity that has an
            alias on that mount.
        """
        async with self._lock:
            if self.mounts(alias.mount_accessor) is None:
                raise InvalidRequest(f'invalid mount accessor "{alias.mount_accessor}"')
            entity = await self.entity(alias.canonical_id)
            if entity is None:
                raise InvalidRequest("invalid canonical ID" if created else
                                     "given 'canonical_id' is not associated with an entity")
            key = (alias.mount_accessor, alias.name)
            in_use = InvalidRequest("alias with combination of mount accessor and name already exists")
            if await self._taken(lambda: a.id if (a := self._login_aliases.get(key)) is not None else None, alias.id):
                raise in_use
            own = entity.alias_id and entity.mount_accessor == alias.mount_accessor
            own = own and entity.alias_id != alias.id and entity.alias_id not in self.entity_aliases
            if own or any(a.mount_accessor == alias.mount_accessor and a.id != alias.id
                          for a in self.aliases_of(entity.id)):
                raise InvalidRequest(  # Vault's three texts, trailing spaces included
                    "Alias already exists for requested entity and mount accessor" if created else
                    "Alias cannot be updated as the given entity already has an alias for this mount " if moved else
                    "Alias cannot be updated as the entity already has an alias for the given 'mount_accessor' ")
            previous = self.entity_aliases.get(alias.id)
            claim_key = _entity_alias_key(*key)
            old_key = (_entity_alias_key(previous.mount_accessor, previous.name)
                       if previous is not None else "")

            async def holds(holder: str) -> bool:
                raw = await self.storage.get(ENTITY_OP_ALIAS_PREFIX + holder) if _plain(holder) else None
                return isinstance(raw, dict) and (raw.get("mount_accessor"), raw.get("name")) == key

            try:
                claimed = claim_key != old_key and await self._names.claim(claim_key, alias.id, holds)
            except Held:
                raise in_use from None
            stamp = now_rfc3339()
            alias.creation_time = stamp if created or previous is None else previous.creation_time
            alias.last_update_time = stamp
            try:
                await self.storage.put(ENTITY_OP_ALIAS_PREFIX + alias.id, alias.to_storage())
            except Exception:
                if claimed:
                    await self._names.release(claim_key, alias.id)
                raise
            if old_key and old_key != claim_key:
                await self._names.release(old_key, alias.id)
            self.entity_aliases[alias.id] = alias
            self._reinstall()
            return alias

    async def _alias_metadata(self, alias: EntityAlias, metadata: dict[str, str]) -> None:
        """A login through an operator's alias brought other alias metadata: keep it on the row."""
        written: list[EntityAlias] = []

        def change(raw: Any) -> Any:
            if not isinstance(raw, dict):
                return raw  # deleted meanwhile
            fresh = EntityAlias.from_storage(raw)
            fresh.metadata = metadata
            fresh.custom_metadata = fresh.custom_metadata or None  # as Vault shows it once a login rewrote it
            written[:] = [fresh]
            return fresh.to_storage()

        await self.storage.update(ENTITY_OP_ALIAS_PREFIX + alias.id, change)
        if written and self.entity_aliases.get(alias.id) is alias:
            self.entity_aliases[alias.id] = written[0]
            self._reinstall()

    async def delete_entity_alias(self, alias: EntityAlias) -> None:
        """Delete an operator's entity alias: logins through its mount with its name get the
        entity a login makes for them again."""
        async with self._lock:
            raw = await self.storage.get(ENTITY_OP_ALIAS_PREFIX + alias.id)
            versions = [alias, *([EntityAlias.from_storage(raw)] if isinstance(raw, dict) else [])]
            await self.storage.delete(ENTITY_OP_ALIAS_PREFIX + alias.id)
            for key in {_entity_alias_key(v.mount_accessor, v.name) for v in versions}:
                await self._names.release(key, alias.id)
            self.entity_aliases.pop(alias.id, None)
            self._reinstall()

    async def merge_entity(self, into: Entity, source: Entity, moves: list[EntityAlias],
                           drops: list[EntityAlias]) -> None:
        """Merge ``source`` into ``into`` (``identity/entity/merge``, one source; the caller
        checked the aliases): delete the operators' aliases in ``drops``, give ``into`` the
        aliases in ``moves`` (``source``'s, a login's one included, which becomes an
        operator's with its id), its places in internal groups and the external groups it
        has through the moved aliases' mounts, then record the merge on ``into`` (the tokens
        of ``source`` get ``into``'s policies, groups and ``disabled`` from then on) and delete
        ``source``. Each step is a write of its own, in this order, so a merge cut short
        (a crash, a storage failure) is finished by sending it again."""
        for alias in drops:
            await self.delete_entity_alias(alias)
        for alias in moves:
            await self.write_entity_alias(EntityAlias(
                id=alias.id, name=alias.name, mount_accessor=alias.mount_accessor, canonical_id=into.id,
                custom_metadata=alias.custom_metadata, metadata=dict(alias.metadata),
                merged_from_canonical_ids=[*alias.merged_from_canonical_ids, source.id],
            ), created=False, moved=True)
        for gid in self._internal.get(source.id, ()):
            group = self.groups.get(gid)
            if group is None:
                continue

            def swap(g: Group) -> Group:
                g = Group.from_storage(g.to_storage())
                g.member_entity_ids = sorted({*g.member_entity_ids, into.id} - {source.id})
                return g

            await self.write_group(swap(group), change=swap)
        moved_mounts = {a.mount_accessor for a in moves}
        stored = await self.storage.get(ENTITY_PREFIX + source.id)
        source_groups = Entity.from_storage(stored).group_ids if isinstance(stored, dict) else source.group_ids
        joined = {g for g in source_groups if self._alias_mount(g) in moved_mounts}
        if joined:
            await self._join_groups(into.id, joined)
        merged = [*self.entity_attrs.get(source.id, EntityAttrs()).merged_entity_ids, source.id]

        def record(attrs: EntityAttrs) -> None:
            attrs.merged_entity_ids = [*attrs.merged_entity_ids, *(m for m in merged if m not in attrs.merged_entity_ids)]

        await self.write_entity_attrs(into.id, record)
        await self.delete_entity(source)

    async def _join_groups(self, entity_id: str, group_ids: set[str]) -> None:
        """Add external groups to an entity's row (its next login through their mount judges
        them again) and their membership rows."""
        written: list[Entity] = []

        def join(old: Any) -> Any:
            if not isinstance(old, dict):
                raise NotFound()
            fresh = Entity.from_storage(old)
            fresh.group_ids, fresh.last_update_time = sorted({*fresh.group_ids, *group_ids}), now_rfc3339()
            written[:] = [fresh]
            return fresh.to_storage()

        await self.storage.update(ENTITY_PREFIX + entity_id, join)
        await self.storage.put_many([(f"{MEMBER_PREFIX}{g}/{entity_id}", 1) for g in sorted(group_ids)])
        self._remember(entity_id, written[0])

    async def write_entity_attrs(self, entity_id: str, change: Callable[[EntityAttrs], None]) -> EntityAttrs:
        """Apply ``change`` to what an operator set on the entity (its stored row, so a change
        another node made a moment ago is kept) and hold the result in memory."""
        stamp = now_rfc3339()
        written: list[EntityAttrs] = []

        def apply(old: Any) -> Any:
            attrs = EntityAttrs.from_storage(old) if isinstance(old, dict) else EntityAttrs()
            change(attrs)
            attrs.last_update_time = stamp
            written[:] = [attrs]
            return attrs.to_storage()

        await self.storage.update(ENTITY_ATTRS_PREFIX + entity_id, apply)
        self.entity_attrs[entity_id] = written[0]
        self._reinstall()
        return written[0]


def _through_other_mounts(group_ids: Iterable[str], accessor: str, mount_of: Callable[[str], str]) -> set[str]:
    """The groups of ``group_ids`` whose alias is on a mount other than ``accessor``: a login
    through ``accessor`` keeps those memberships (``mount_of``: a group's alias mount, ""
    for a group that is gone or has no alias)."""
    return {g for g in group_ids if mount_of(g) not in ("", accessor)}


def new_id() -> str:
    """A random identity object id (a UUID, as Vault's)."""
    return str(uuid.uuid4())


#: The form of the names entities get from their ids (``entity_name``): not an operator's to give.
DERIVED_NAME = re.compile(r"entity_[0-9a-f]{16}")


def _plain(value: str) -> bool:
    """An id that can be part of a storage key as it is (ids are UUIDs; anything else
    names nothing)."""
    return 0 < len(value) <= 64 and all(c.isalnum() or c == "-" for c in value) and value.isascii()
