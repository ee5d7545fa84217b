"""``identity/entity``, ``identity/entity/id|name/<...>``, ``identity/entity-alias``,
``identity/entity-alias/id/<id>``, their LISTs, and ``identity/lookup/entity|group``.

A login makes an entity for its alias name and mount when no operator's entity alias names
them (its id derived from the two). An operator may also make entities ahead of any login
(``identity/entity`` with a new name: the Terraform provider's ``vault_identity_entity``) and
give them entity aliases (``identity/entity-alias``: ``vault_identity_entity_alias``): the
logins through the alias's mount with its name then get that entity, so one person's logins
through several mounts share one entity. An entity alias written for a name and mount a login
has already used is that login's alias moved to the given entity, as in Vault. Every entity
may be given ``policies`` (granted to its tokens at each use, as a group's are), ``metadata``
and ``disabled`` (its tokens and logins refused), and deleted (with the operator's aliases of
it; a login-made one is made again by its next login, without what was set on it)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from plugin.errors import InvalidRequest, NotFound
from plugin.framework import Handler, Operation, PathSpec, Request, Response
from plugin.policyutil import fold_case
from plugin.schema import Field, FieldSet, FieldType
from server.identity.groups import WINNER_PAUSES, group_data
from server.identity.metadata import checked_custom_metadata, checked_metadata
from server.identity.store import (
    Entity,
    EntityAlias,
    EntityAttrs,
    EntityNameInUse,
    Group,
    IdentityStore,
    group_policies,
    login_made_alias,
    new_id,
)

if TYPE_CHECKING:
    from server.identity.backend import IdentityBackend

__all__ = ["paths", "entity_data", "LOOKUP_FIELDS"]

_S = FieldType.STRING
_KEY = r"[^/\s]{1,256}"

LOOKUP_FIELDS = FieldSet({
    "id": Field(_S, "ID of the entity or group to look up.", default=""),
    "name": Field(_S, "Name of the entity or group to look up.", default=""),
    "alias_id": Field(_S, "ID of the alias of the entity or group to look up.", default=""),
    "alias_name": Field(_S, "Name of the alias (with alias_mount_accessor).", default=""),
    "alias_mount_accessor": Field(_S, "Mount accessor of the alias (with alias_name).", default=""),
})


def _alias(store: IdentityStore, alias: EntityAlias, *, listing: bool = False) -> dict[str, Any]:
    mount = store.mounts(alias.mount_accessor)
    out: dict[str, Any] = {
        "id": alias.id,
        "mount_accessor": alias.mount_accessor,
        "mount_path": mount.path if mount else "",
        "mount_type": mount.type if mount else "",
        "name": alias.name,
    }
    if listing:
        return out
    out.update({
        "canonical_id": alias.canonical_id, "creation_time": alias.creation_time,
        "custom_metadata": dict(alias.custom_metadata) if alias.custom_metadata is not None else None,
        "last_update_time": alias.last_update_time,
        "local": False, "merged_from_canonical_ids": list(alias.merged_from_canonical_ids) or None,
        "metadata": dict(alias.metadata) or None,
    })
    return out


def entity_alias_data(store: IdentityStore, alias: EntityAlias) -> dict[str, Any]:
    """``identity/entity-alias/id/<id>``."""
    out = _alias(store, alias)
    out["namespace_id"] = "root"
    return out


#: What an entity write takes (``identity/entity``, ``identity/entity/id|name/<...>``).
ENTITY_FIELDS = FieldSet({
    "id": Field(_S, "ID of the entity to update (none: the entity with this name, or a new one).", default=""),
    "name": Field(_S, "Name of the entity (unique, case-insensitively; a new entity without one is named "
                      "entity_<16 hex digits of its id>). The name of an entity a login made cannot be changed.",
                  default=""),
    "policies": Field(FieldType.COMMA_STRING_SLICE, "Policies granted to the entity's tokens, in addition to "
                      "their own and their groups', at each use of the tokens. 'root' is refused."),
    "metadata": Field(FieldType.KV_PAIRS, "Metadata attached to the entity: at most 64 pairs; keys of 1 to 128 "
                      "bytes of letters, digits and = / + _ -, not starting with 'vault-'; values of at most 512 "
                      "bytes."),
    "disabled": Field(FieldType.BOOL, "Refuse every use of the entity's tokens, and its logins, until set false "
                      "again (nothing is revoked).", default=False),
})


def entity_data(store: IdentityStore, entity: Entity) -> dict[str, Any]:
    """An entity as Vault reads it."""
    groups = store.entity_groups(entity, entity.id)
    inherited = store.inherited_groups(groups)
    attrs = store.entity_attrs.get(entity.id) or EntityAttrs()
    return {
        "aliases": [_alias(store, a) for a in store.entity_alias_list(entity)],
        "creation_time": entity.creation_time,
        "direct_group_ids": groups,
        "disabled": attrs.disabled,
        "group_ids": groups + inherited,
        "id": entity.id,
        "inherited_group_ids": inherited,
        "last_update_time": max(entity.last_update_time, attrs.last_update_time),
        "merged_entity_ids": list(attrs.merged_entity_ids) or None,
        "metadata": dict(attrs.metadata) or None,
        "name": entity.name,
        "namespace_id": "root",
        "policies": list(attrs.policies),
    }


def _attrs_change(values: dict[str, Any]) -> Any:
    """What an entity write changes (a function of the stored attributes).

    :raises InvalidRequest: ``policies cannot contain root`` (Vault's message).
    """
    policies = group_policies(values["policies"]) if "policies" in values else None
    metadata = checked_metadata("entity", values["metadata"]) if "metadata" in values else None

    def change(attrs: EntityAttrs) -> None:
        if policies is not None:
            attrs.policies = policies
        if metadata is not None:
            attrs.metadata = dict(metadata)
        if "disabled" in values:
            attrs.disabled = bool(values["disabled"])

    return change


def _one_way(values: dict[str, Any]) -> str:
    """Which key a lookup gives: exactly one of id, name, alias_id, alias_name + accessor."""
    given = [k for k in ("id", "name", "alias_id") if values.get(k)]
    if values.get("alias_name") or values.get("alias_mount_accessor"):
        if not (values.get("alias_name") and values.get("alias_mount_accessor")):
            raise InvalidRequest("both 'alias_name' and 'alias_mount_accessor' need to be set")
        given.append("alias_name")
    if len(given) != 1:
        raise InvalidRequest("exactly one of 'id', 'name', 'alias_id', or the pair 'alias_name' and "
                             "'alias_mount_accessor' must be given")
    return given[0]


#: What an entity alias write takes (``identity/entity-alias``, ``identity/entity-alias/id/<id>``).
ENTITY_ALIAS_FIELDS = FieldSet({
    "id": Field(_S, "ID of the entity alias to update (none: the alias of this name and mount, or a new one).",
                default=""),
    "name": Field(_S, "The alias name logins through the mount give (the role's user_claim value, matched "
                      "exactly).", default=""),
    "mount_accessor": Field(_S, "Accessor of the auth mount whose logins the alias matches.", default=""),
    "canonical_id": Field(_S, "ID of the entity the alias stands for (none, on create: a new entity).", default=""),
    "custom_metadata": Field(FieldType.KV_PAIRS, "Metadata (string keys and values) an operator keeps on the "
                             "alias: at most 64 keys; keys of 1 to 128 bytes and values of 1 to 512, printable."),
})
_MAX_ALIAS_NAME = 1024


#: ``identity/entity/merge``.
MERGE_FIELDS = FieldSet({
    "from_entity_ids": Field(FieldType.COMMA_STRING_SLICE, "IDs of the entities to merge into to_entity_id (they "
                             "are deleted; their aliases, group memberships and tokens go to it)."),
    "to_entity_id": Field(_S, "ID of the entity the others are merged into.", default=""),
    "conflicting_alias_ids_to_keep": Field(FieldType.COMMA_STRING_SLICE, "Where to_entity_id and the one entity "
                                           "merged from have aliases on one mount: the alias ids to keep (the "
                                           "other alias of each such pair is deleted)."),
    "force": Field(FieldType.BOOL, "Vault's choice for clashing MFA secrets; authmount keeps none, so it changes "
                   "nothing.", default=False),
})
#: ``identity/entity/batch-delete``.
BATCH_DELETE_FIELDS = FieldSet({
    "entity_ids": Field(FieldType.COMMA_STRING_SLICE, "IDs of the entities to delete (unknown ids are skipped)."),
})
MAX_BATCH = 10_000


class MergeClash(InvalidRequest):
    """Vault's refusal of a merge whose entities have aliases on one mount: the message,
    and ``data`` listing both aliases of each clash (the Vault UI shows them)."""

    def __init__(self, message: str, clashes: list[dict[str, str]]) -> None:
        super().__init__(message)
        self.data = clashes


def _clash_message(lines: list[str]) -> str:
    """Vault's text of several errors (hashicorp/go-multierror's format)."""
    points = "\n\t".join(f"* {line}" for line in lines)
    return f"{len(lines)} errors occurred:\n\t{points}\n\n"


def paths(b: IdentityBackend) -> list[PathSpec]:
    """Entity, entity alias and lookup paths."""

    async def entity_by_id(values: dict[str, Any]) -> Entity:
        entity = await b.store.entity(values["id"])
        if entity is None:
            raise NotFound()
        return entity

    async def entity_by_name(values: dict[str, Any]) -> Entity:
        entity = await b.store.entity_by_name(values["name"])
        if entity is None:
            raise NotFound()
        return entity

    async def list_ids(req: Request, values: dict[str, Any]) -> Response:
        store = b.store
        keys = await store.entity_ids()
        if not keys:
            raise NotFound()
        info: dict[str, Any] = {}
        for eid in keys:
            entity = await store.entity(eid)
            if entity is not None:
                info[eid] = {"aliases": [_alias(store, a, listing=True) for a in store.entity_alias_list(entity)],
                             "name": entity.name}
        return Response(data={"keys": keys, "key_info": info})

    async def list_names(req: Request, values: dict[str, Any]) -> Response:
        store = b.store
        names = []
        for eid in await store.entity_ids():
            entity = await store.entity(eid)
            if entity is not None:
                names.append(entity.name)
        if not names:
            raise NotFound()
        return Response(data={"keys": sorted(names)})

    async def read_id(req: Request, values: dict[str, Any]) -> Response:
        return Response(data=entity_data(b.store, await entity_by_id(values)))

    async def read_name(req: Request, values: dict[str, Any]) -> Response:
        return Response(data=entity_data(b.store, await entity_by_name(values)))

    async def delete_id(req: Request, values: dict[str, Any]) -> None:
        entity = await b.store.entity(values["id"])
        if entity is not None:
            await b.store.delete_entity(entity)

    async def delete_name(req: Request, values: dict[str, Any]) -> None:
        entity = await b.store.entity_by_name(values["name"])
        if entity is not None:
            await b.store.delete_entity(entity)

    async def write(entity: Entity | None, values: dict[str, Any]) -> Response | None:
        """Vault's ``handleEntityUpdateCommon``: update ``entity`` (renamed to ``name`` if
        given), or make a new entity (200 with its id and name)."""
        store, name = b.store, values.get("name", "")
        change = _attrs_change(values)
        if entity is None:
            try:
                made = await store.create_entity(name, change)
                return Response(data={"aliases": None, "id": made.id, "name": made.name})
            except EntityNameInUse:  # made by a request at the same moment: update it (Vault's one lock)
                for pause in WINNER_PAUSES:  # the winner claims the name before it writes its entity
                    await asyncio.sleep(pause)
                    entity = await store.entity_by_name(name)
                    if entity is not None:
                        break
                else:
                    raise

        if name and name != entity.name and (not entity.alias_id or fold_case(name) != fold_case(entity.name)):
            entity = await store.rename_entity(entity, name)
        await store.write_entity_attrs(entity.id, change)
        return None

    async def write_id(req: Request, values: dict[str, Any]) -> Response | None:
        entity = await b.store.entity(values["id"])
        if entity is None:
            raise InvalidRequest("entity not found from id")
        return await write(entity, values)

    async def write_name(req: Request, values: dict[str, Any]) -> Response | None:
        """``identity/entity/name/<name>``: the entity of that name (not renamed: the path's
        name is lower-cased), made if there is none; with an ``id``, the entity of that id,
        renamed to the path's name unless another entity has it (Vault's order and texts)."""
        store = b.store
        entity = await store.entity_by_name(values["name"])
        if values.get("id"):
            by_id = await store.entity(values["id"])
            if by_id is None:
                raise InvalidRequest("entity not found from id")
            if entity is None:
                return await write(by_id, values)
            if entity.id != by_id.id:
                raise InvalidRequest("entity name is already in use")
        return await write(entity, {k: v for k, v in values.items() if k != "name"} if entity else values)

    async def write_entity(req: Request, values: dict[str, Any]) -> Response | None:
        """``identity/entity``: the entity ``id`` names, else the one ``name`` names, else a
        new one (Vault's order: an ``id`` and a ``name`` of two entities is a clash)."""
        store = b.store
        entity = None
        if values.get("id"):
            entity = await store.entity(values["id"])
            if entity is None:
                raise InvalidRequest("entity not found from id")
        if values.get("name"):
            named = await store.entity_by_name(values["name"])
            if named is not None and entity is None:
                entity = named
            elif named is not None and entity is not None and named.id != entity.id:
                raise InvalidRequest("entity name is already in use")
        return await write(entity, values)

    async def batch_delete(req: Request, values: dict[str, Any]) -> None:
        """Vault's ``entity/batch-delete``: each id as ``entity/id/<id>`` DELETE (an unknown one
        is skipped)."""
        ids = values.get("entity_ids") or []
        if not ids:
            raise InvalidRequest("missing entity ids to delete")
        if len(ids) > MAX_BATCH:
            raise InvalidRequest(f"at most {MAX_BATCH} entity ids at once (given {len(ids)})")
        for eid in dict.fromkeys(ids):
            entity = await b.store.entity(eid)
            if entity is not None:
                await b.store.delete_entity(entity)

    def _clash(entity: Entity, alias: EntityAlias) -> dict[str, str]:
        mount = b.store.mounts(alias.mount_accessor)
        return {"alias": alias.name, "entity": entity.name, "entity_id": entity.id,
                "mount": mount.type if mount else "", "mount_path": mount.path if mount else ""}

    async def merge(req: Request, values: dict[str, Any]) -> None:
        """Vault's ``entity/merge``: its checks, texts and order, and one more: two entities
        merged from may never bring aliases on one mount (Vault lets them when the entity
        merged into has no alias, which leaves it with two on that mount)."""
        store = b.store
        to_id = values.get("to_entity_id", "")
        if not to_id:
            raise InvalidRequest("missing entity id to merge to")
        from_ids = values.get("from_entity_ids") or []
        if not from_ids:
            raise InvalidRequest("missing entity ids to merge from")
        keep = set(values.get("conflicting_alias_ids_to_keep") or [])
        into = await store.entity(to_id)
        if into is None:
            raise InvalidRequest("entity id to merge to is invalid")
        if len(from_ids) > 1 and len(keep) > 1:
            raise InvalidRequest("aliases conflicts cannot be resolved with multiple from entity ids - merge one "
                                 "entity at a time")
        into_aliases = store.entity_alias_list(into)
        by_mount = {a.mount_accessor: a for a in into_aliases}
        sources: list[tuple[Entity, list[EntityAlias]]] = []  # each with its aliases
        brought: dict[str, str] = {}  # mount accessor -> the entity merged from whose alias it is
        lines: list[str] = []
        clashes: list[dict[str, str]] = []
        for fid in dict.fromkeys(from_ids):
            if fid == into.id:
                raise InvalidRequest("to_entity_id should not be present in from_entity_ids")
            source = await store.entity(fid)
            if source is None:
                raise InvalidRequest("entity id to merge from is invalid")
            sources.append((source, store.entity_alias_list(source)))
            for alias in sources[-1][1]:
                if brought.setdefault(alias.mount_accessor, fid) != fid:
                    raise InvalidRequest(f"mount accessor {alias.mount_accessor} found in multiple fromEntities, "
                                         "merge should be done with one fromEntity at a time")
                theirs = by_mount.get(alias.mount_accessor)
                if theirs is not None and not keep:
                    lines.append(f"mountAccessor: {alias.mount_accessor}, toEntity ID: {into.id}, fromEntity ID: "
                                 f"{fid}, conflicting toEntity alias ID: {theirs.id}, conflicting fromEntity alias "
                                 f"ID: {alias.id}")
                    clashes += [_clash(into, theirs), _clash(source, alias)]
        if lines:
            raise MergeClash(_clash_message([
                "toEntity and at least one fromEntity have aliases with the same mount accessor, repeat the merge "
                "request specifying exactly one fromEntity, clashes: ", *lines]), clashes)
        plans: list[tuple[Entity, list[EntityAlias], list[EntityAlias]]] = []
        for source, source_aliases in sources:
            moves: list[EntityAlias] = []
            drops: list[EntityAlias] = []
            for alias in source_aliases:
                theirs = by_mount.get(alias.mount_accessor)
                if theirs is None:
                    moves.append(alias)
                elif theirs.id in keep:
                    if alias.id in store.entity_aliases:  # a login's alias goes with its entity
                        drops.append(alias)
                elif alias.id in keep:
                    if theirs.id not in store.entity_aliases:
                        raise InvalidRequest(
                            f"alias {theirs.id} is the one a login made entity {into.id} with, and goes only with "
                            f"it: keep it, or merge the other way (to_entity_id {source.id})")
                    drops.append(theirs)
                    moves.append(alias)
                else:
                    raise InvalidRequest("conflicting mount accessors in following alias IDs and neither were "
                                         f"present in conflicting_alias_ids_to_keep: {alias.id}, {theirs.id}")
            plans.append((source, moves, drops))
        for source, moves, drops in plans:
            await store.merge_entity(into, source, moves, drops)

    # -- entity aliases ----------------------------------------------------------------------
    async def alias_by_id(alias_id: str) -> tuple[EntityAlias, bool] | None:
        """The alias with ``alias_id`` and whether it is an operator's (else a login's)."""
        store = b.store
        written = await store.find_entity_alias(alias_id)
        if written is not None:
            return written, True
        entity = await store.entity_by_alias_id(alias_id)
        if entity is not None and entity.alias_id == alias_id:
            return login_made_alias(entity), False
        return None

    async def create_alias(values: dict[str, Any], name: str, accessor: str) -> Response:
        store = b.store
        canonical = values.get("canonical_id", "")
        custom = checked_custom_metadata(values.get("custom_metadata", {}))
        made = None
        if not canonical:  # Vault makes the entity too
            made = await store.create_entity("", lambda attrs: None)
            canonical = made.id
        alias = EntityAlias(id=new_id(), name=name, mount_accessor=accessor, canonical_id=canonical,
                            custom_metadata=custom)
        try:
            written = await store.write_entity_alias(alias, created=True)
        except Exception:
            if made is not None:  # not left behind without its alias
                await store.delete_entity(made)
            raise
        return Response(data={"canonical_id": written.canonical_id, "id": written.id})

    async def _check_alias(name: str, accessor: str) -> None:
        if len(name) > _MAX_ALIAS_NAME or any(not c.isprintable() for c in name):
            raise InvalidRequest("invalid alias name")
        if b.store.mounts(accessor) is None:
            raise InvalidRequest(f'invalid mount accessor "{accessor}"')

    async def update_alias(current: EntityAlias, values: dict[str, Any]) -> Response | None:
        """Vault's ``handleAliasUpdate``: a change of name, mount, custom metadata or entity
        (a login's alias changed becomes an operator's, with its id)."""
        store = b.store
        name = values.get("name") or current.name
        accessor = values.get("mount_accessor") or current.mount_accessor
        canonical = values.get("canonical_id") or current.canonical_id
        custom = checked_custom_metadata(values["custom_metadata"]) if "custom_metadata" in values else current.custom_metadata
        if (name, accessor, canonical, custom) == (current.name, current.mount_accessor, current.canonical_id,
                                                   current.custom_metadata):
            return None  # nothing to change: idempotent, as in Vault
        await _check_alias(name, accessor)
        if canonical != current.canonical_id and await store.entity(canonical) is None:
            raise InvalidRequest("given 'canonical_id' is not associated with an entity")
        alias = EntityAlias(id=current.id, name=name, mount_accessor=accessor, canonical_id=canonical,
                            custom_metadata=custom, metadata=dict(current.metadata),
                            creation_time=current.creation_time)
        written = await store.write_entity_alias(alias, created=False, moved=canonical != current.canonical_id)
        return Response(data={"canonical_id": written.canonical_id, "id": written.id})

    async def register_alias(req: Request, values: dict[str, Any]) -> Response | None:
        """``identity/entity-alias``: the alias ``id`` names, else the one of ``name`` on
        ``mount_accessor`` (an operator's, or a login's), else a new one."""
        if values.get("id"):
            found = await alias_by_id(values["id"])
            if found is None:
                raise InvalidRequest("invalid alias ID provided")
            return await update_alias(found[0], values)
        name, accessor = values.get("name", ""), values.get("mount_accessor", "")
        if not name or not accessor:
            raise InvalidRequest("'id' or 'mount_accessor' and 'name' must be provided")
        await _check_alias(name, accessor)
        written = b.store.login_alias(accessor, name)
        if written is not None:
            return await update_alias(written, values)
        entity_id, alias_id = b.derived(accessor, name)
        entity = await b.store.entity(entity_id)
        if entity is not None and entity.alias_id == alias_id:  # a login has used it: that alias moves
            return await update_alias(login_made_alias(entity), values)
        return await create_alias(values, name, accessor)

    async def list_aliases(req: Request, values: dict[str, Any]) -> Response:
        store = b.store
        info: dict[str, Any] = {}
        for eid in await store.entity_ids():
            entity = await store.entity(eid)
            if entity is not None:
                for alias in store.entity_alias_list(entity):
                    data = _alias(store, alias)
                    info[alias.id] = {k: data[k] for k in (
                        "canonical_id", "custom_metadata", "local", "metadata", "mount_accessor", "mount_path",
                        "mount_type", "name")}
        if not info:
            raise NotFound()
        return Response(data={"keys": sorted(info), "key_info": info})

    async def read_alias(req: Request, values: dict[str, Any]) -> Response:
        found = await alias_by_id(values["id"])
        if found is None:
            raise NotFound()
        return Response(data=entity_alias_data(b.store, found[0]))

    async def write_alias(req: Request, values: dict[str, Any]) -> Response | None:
        found = await alias_by_id(values["id"])
        if found is None:
            raise InvalidRequest("invalid alias ID provided")
        return await update_alias(found[0], values)

    async def delete_alias(req: Request, values: dict[str, Any]) -> None:
        found = await alias_by_id(values["id"])
        if found is None:
            return
        alias, operator = found
        if not operator:
            raise InvalidRequest("the alias a login made goes with its entity: delete the entity "
                                 f"(identity/entity/id/{alias.canonical_id}), or move the alias to another "
                                 "entity (canonical_id)")
        await b.store.delete_entity_alias(alias)

    async def lookup_entity(req: Request, values: dict[str, Any]) -> Response | None:
        store, way = b.store, _one_way(values)
        entity: Entity | None
        if way == "id":
            entity = await store.entity(values["id"])
        elif way == "name":
            entity = await store.entity_by_name(values["name"])
        elif way == "alias_id":
            entity = await store.entity_by_alias_id(values["alias_id"])
        else:
            entity = await store.entity(b.entity_of(values["alias_mount_accessor"], values["alias_name"])[0])
        return Response(data=entity_data(store, entity)) if entity is not None else None

    async def lookup_group(req: Request, values: dict[str, Any]) -> Response | None:
        store, way = b.store, _one_way(values)
        group: Group | None
        if way == "id":
            group = await store.find_group(gid=values["id"])
        elif way == "name":
            group = await store.find_group(name=values["name"])
        elif way == "alias_id":
            alias = await store.find_alias(values["alias_id"])
            group = store.groups.get(alias.canonical_id) if alias is not None else None
        else:
            alias = store.alias_by_name(values["alias_mount_accessor"], values["alias_name"])
            group = store.groups.get(alias.canonical_id) if alias is not None else None
        return Response(data=await group_data(store, group)) if group is not None else None

    by_id = FieldSet({**ENTITY_FIELDS.fields, "id": Field(FieldType.NAME, "ID of the entity.")})
    by_name = FieldSet({**ENTITY_FIELDS.fields, "name": Field(FieldType.NAME, "Name of the entity (lower-cased "
                                                              "before the ACL check).", canonical=fold_case)})
    alias_by = FieldSet({**ENTITY_ALIAS_FIELDS.fields, "id": Field(FieldType.NAME, "ID of the entity alias.")})
    by_id_ops: dict[Operation, Handler] = {Operation.READ: read_id, Operation.UPDATE: write_id, Operation.DELETE: delete_id}
    by_name_ops: dict[Operation, Handler] = {Operation.READ: read_name, Operation.UPDATE: write_name,
                                             Operation.DELETE: delete_name}
    alias_ops: dict[Operation, Handler] = {Operation.READ: read_alias, Operation.UPDATE: write_alias,
                                           Operation.DELETE: delete_alias}
    return [
        PathSpec("entity", ENTITY_FIELDS, {Operation.UPDATE: write_entity},
                 "Create an entity, or update one (by id, or by name): policies, metadata, disabled, name."),
        PathSpec("entity/merge/?", MERGE_FIELDS, {Operation.UPDATE: merge},
                 "Merge entities into one: their aliases, group memberships and tokens go to it."),
        PathSpec("entity/batch-delete", BATCH_DELETE_FIELDS, {Operation.UPDATE: batch_delete},
                 "Delete several entities at once."),
        PathSpec("entity/id/?", FieldSet({}), {Operation.LIST: list_ids}, "List entities by id."),
        PathSpec(f"entity/id/(?P<id>{_KEY})", by_id, by_id_ops,
                 "Read, update (policies, metadata, disabled, name) or delete an entity by id."),
        PathSpec("entity/name/?", FieldSet({}), {Operation.LIST: list_names}, "List entities by name."),
        PathSpec(f"entity/name/(?P<name>{_KEY})", by_name, by_name_ops,
                 "Read, create or update (policies, metadata, disabled) or delete an entity by name."),
        PathSpec("entity-alias", ENTITY_ALIAS_FIELDS, {Operation.UPDATE: register_alias},
                 "Create an entity alias (or update the one with this id, or this name and mount)."),
        PathSpec("entity-alias/id/?", FieldSet({}), {Operation.LIST: list_aliases}, "List entity aliases by id."),
        PathSpec(f"entity-alias/id/(?P<id>{_KEY})", alias_by, alias_ops,
                 "Read, update (name, mount, entity, custom metadata) or delete an entity alias by id."),
        PathSpec("lookup/entity", LOOKUP_FIELDS, {Operation.UPDATE: lookup_entity},
                 "Look an entity up by id, name, alias id, or alias name and mount accessor."),
        PathSpec("lookup/group", LOOKUP_FIELDS, {Operation.UPDATE: lookup_group},
                 "Look a group up by id, name, alias id, or alias name and mount accessor."),
    ]
