"""``identity/entity/id|name/<...>``, ``identity/entity-alias/id/<id>``, their LISTs, and
``identity/lookup/entity|group``: entities are made by logins (one per alias name and mount)
and read here; an operator may give one ``policies`` (granted to its tokens at each use, as a
group's are), ``metadata`` and ``disabled`` (its tokens and logins refused), and may delete
one (its next login makes it again, without what was set on it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from plugin.errors import InvalidRequest, NotFound
from plugin.framework import Handler, Operation, PathSpec, Request, Response
from plugin.schema import Field, FieldSet, FieldType
from server.identity.groups import group_data
from server.identity.store import Entity, EntityAttrs, Group, IdentityStore, group_policies

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


def _alias(store: IdentityStore, entity: Entity, *, listing: bool = False) -> dict[str, Any]:
    mount = store.mounts(entity.mount_accessor)
    out: dict[str, Any] = {
        "id": entity.alias_id,
        "mount_accessor": entity.mount_accessor,
        "mount_path": mount.path if mount else "",
        "mount_type": mount.type if mount else "",
        "name": entity.alias_name,
    }
    if listing:
        return out
    out.update({
        "canonical_id": entity.id, "creation_time": entity.creation_time, "custom_metadata": None,
        "last_update_time": entity.last_update_time, "local": False, "merged_from_canonical_ids": None,
        "metadata": dict(entity.alias_metadata) or None,
    })
    return out


def entity_alias_data(store: IdentityStore, entity: Entity) -> dict[str, Any]:
    """``identity/entity-alias/id/<id>``."""
    out = _alias(store, entity)
    out["namespace_id"] = "root"
    return out


#: What an entity write takes (``identity/entity``, ``identity/entity/id|name/<...>``).
ENTITY_FIELDS = FieldSet({
    "id": Field(_S, "ID of the entity to update (entities are made by their first login).", default=""),
    "name": Field(_S, "Name of the entity to update (its name is made from its id: entity_<16 hex digits>; "
                      "it cannot be changed).", default=""),
    "policies": Field(FieldType.COMMA_STRING_SLICE, "Policies granted to the entity's tokens, in addition to "
                      "their own and their groups', at each use of the tokens. 'root' is refused."),
    "metadata": Field(FieldType.KV_PAIRS, "Metadata (string keys and values) attached to the entity."),
    "disabled": Field(FieldType.BOOL, "Refuse every use of the entity's tokens, and its logins, until set false "
                      "again (nothing is revoked).", default=False),
})


def entity_data(store: IdentityStore, entity: Entity) -> dict[str, Any]:
    """An entity as Vault reads it."""
    groups = store.entity_groups(entity, entity.id)
    attrs = store.entity_attrs.get(entity.id) or EntityAttrs()
    return {
        "aliases": [_alias(store, entity)],
        "creation_time": entity.creation_time,
        "direct_group_ids": groups,
        "disabled": attrs.disabled,
        "group_ids": groups,
        "id": entity.id,
        "inherited_group_ids": [],
        "last_update_time": max(entity.last_update_time, attrs.last_update_time),
        "merged_entity_ids": None,
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

    def change(attrs: EntityAttrs) -> None:
        if policies is not None:
            attrs.policies = policies
        if "metadata" in values:
            attrs.metadata = dict(values["metadata"])
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
                info[eid] = {"aliases": [_alias(store, entity, listing=True)], "name": entity.name}
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

    async def write(entity: Entity | None, values: dict[str, Any], missing: str) -> None:
        if entity is None:
            # Vault would make a new entity here; authmount's are made by their first login (one
            # per alias name and mount, its id derived from them), so none can be made ahead.
            raise InvalidRequest(f"{missing}: entities are made by their first login here (look one up with "
                                 "identity/lookup/entity and alias_name + alias_mount_accessor)")
        if values.get("name") and values["name"] != entity.name:
            raise InvalidRequest(f"an entity's name cannot be changed here (it is {entity.name}, made from its id)")
        await b.store.write_entity_attrs(entity.id, _attrs_change(values))

    async def write_id(req: Request, values: dict[str, Any]) -> None:
        await write(await b.store.entity(values["id"]), values, "entity not found from id")

    async def write_name(req: Request, values: dict[str, Any]) -> None:
        await write(await b.store.entity_by_name(values["name"]), values, "entity not found from name")

    async def write_entity(req: Request, values: dict[str, Any]) -> None:
        """``identity/entity``: an update of the entity ``id`` (else ``name``) names."""
        if values.get("id"):
            await write_id(req, values)
        elif values.get("name"):
            await write_name(req, values)
        else:
            await write(None, values, "entity not found")

    async def list_aliases(req: Request, values: dict[str, Any]) -> Response:
        store = b.store
        info: dict[str, Any] = {}
        for eid in await store.entity_ids():
            entity = await store.entity(eid)
            if entity is not None:
                data = _alias(store, entity)
                info[entity.alias_id] = {k: data[k] for k in (
                    "canonical_id", "custom_metadata", "local", "metadata", "mount_accessor", "mount_path",
                    "mount_type", "name")}
        if not info:
            raise NotFound()
        return Response(data={"keys": sorted(info), "key_info": info})

    async def read_alias(req: Request, values: dict[str, Any]) -> Response:
        entity = await b.store.entity_by_alias_id(values["id"])
        if entity is None:
            raise NotFound()
        return Response(data=entity_alias_data(b.store, entity))

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
            entity = await store.entity(b.entity_id(values["alias_mount_accessor"], values["alias_name"]))
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
                                                              "before the ACL check).", canonical=str.lower)})
    by_id_ops: dict[Operation, Handler] = {Operation.READ: read_id, Operation.UPDATE: write_id, Operation.DELETE: delete_id}
    by_name_ops: dict[Operation, Handler] = {Operation.READ: read_name, Operation.UPDATE: write_name,
                                             Operation.DELETE: delete_name}
    return [
        PathSpec("entity", ENTITY_FIELDS, {Operation.UPDATE: write_entity},
                 "Update an entity's policies, metadata or disabled flag (by id, or by name)."),
        PathSpec("entity/id/?", FieldSet({}), {Operation.LIST: list_ids}, "List entities by id."),
        PathSpec(f"entity/id/(?P<id>{_KEY})", by_id, by_id_ops,
                 "Read, update (policies, metadata, disabled) or delete an entity by id."),
        PathSpec("entity/name/?", FieldSet({}), {Operation.LIST: list_names}, "List entities by name."),
        PathSpec(f"entity/name/(?P<name>{_KEY})", by_name, by_name_ops,
                 "Read, update (policies, metadata, disabled) or delete an entity by name."),
        PathSpec("entity-alias/id/?", FieldSet({}), {Operation.LIST: list_aliases}, "List entity aliases by id."),
        PathSpec(f"entity-alias/id/(?P<id>{_KEY})", FieldSet({"id": Field(FieldType.NAME, "ID of the alias.")}),
                 {Operation.READ: read_alias}, "Read an entity alias by id."),
        PathSpec("lookup/entity", LOOKUP_FIELDS, {Operation.UPDATE: lookup_entity},
                 "Look an entity up by id, name, alias id, or alias name and mount accessor."),
        PathSpec("lookup/group", LOOKUP_FIELDS, {Operation.UPDATE: lookup_group},
                 "Look a group up by id, name, alias id, or alias name and mount accessor."),
    ]
