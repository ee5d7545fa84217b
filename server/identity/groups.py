"""``identity/group``, ``identity/group/id/<id>``, ``identity/group/name/<name>`` and their
LISTs: groups that carry policies (Vault's shapes; hvac ``secrets.identity.*group*``, the
Terraform provider's ``vault_identity_group`` and ``vault_identity_group_policies``).

A write to ``identity/group`` with the name of an existing group (or its ``id``) updates it,
as in Vault: the creating write answers ``{"id", "name"}``, an update answers 204.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from plugin.errors import InvalidRequest, NotFound
from plugin.framework import Operation, PathSpec, Request, Response
from plugin.policyutil import fold_case
from plugin.schema import Field, FieldSet, FieldType
from server.identity.metadata import checked_metadata
from server.identity.store import GROUP_TYPES, Group, IdentityStore, NameInUse, group_policies, new_id

if TYPE_CHECKING:
    from server.identity.backend import IdentityBackend

__all__ = ["GROUP_FIELDS", "WINNER_PAUSES", "changed_group", "paths", "group_data"]

_S, _CSS = FieldType.STRING, FieldType.COMMA_STRING_SLICE
#: A group's id or name in a path (ids are UUIDs; names are matched case-insensitively).
_KEY = r"[^/\s]{1,256}"


def _group_type(raw: Any) -> str:
    """``internal``, ``external``, or ``""`` (a new group: internal), spelt exactly (OpenBao
    2.7.2 refuses ``INTERNAL`` too)."""
    if raw not in ("", *GROUP_TYPES):
        raise InvalidRequest(f'invalid group type "{raw}"')
    return str(raw)


GROUP_FIELDS = FieldSet({
    "id": Field(_S, "ID of the group (set by the server when created; given, it names the group to update).",
                default=""),
    "name": Field(_S, "Name of the group (unique, case-insensitively). Defaults to group_<random> when created.",
                  default=""),
    "type": Field(_S, "'internal' (members listed by id) or 'external' (members come from logins through "
                      "its group alias). Defaults to 'internal'; cannot be changed.", default="",
                  parse=_group_type),
    "metadata": Field(FieldType.KV_PAIRS, "Metadata attached to the group: at most 64 pairs; keys of 1 to 128 "
                      "bytes of letters, digits and = / + _ -, not starting with 'vault-'; values of at most 512 "
                      "bytes."),
    "policies": Field(_CSS, "Policies granted to the group's members, in addition to their tokens' own, at "
                            "each use of their tokens. 'root' is refused."),
    "member_entity_ids": Field(_CSS, "Entity IDs that are members of an internal group (refused for "
                                     "external groups)."),
    "member_group_ids": Field(_CSS, "Group IDs whose members get this group's policies too (nested groups; "
                                    "refused for external groups, which may be members of internal ones)."),
})
_BY_ID = FieldSet({**GROUP_FIELDS.fields, "id": Field(FieldType.NAME, "ID of the group.")})
#: Group names are case-insensitive: the path's name is lower-cased before the ACL check, so a
#: policy on ``identity/group/name/admins`` also governs ``.../ADMINS`` (docs/vault-differences.md row 19).
_BY_NAME = FieldSet({**GROUP_FIELDS.fields, "name": Field(FieldType.NAME, "Name of the group (lower-cased before "
                                                                          "the ACL check).", canonical=fold_case)})


async def group_data(store: IdentityStore, group: Group) -> dict[str, Any]:
    """A group as Vault reads it (``identity/group/id/<id>``, lookups)."""
    alias = store.group_alias_of(group)
    alias_data: dict[str, Any] = {}
    if alias is not None:
        mount = store.mounts(alias.mount_accessor)
        alias_data = {
            "canonical_id": alias.canonical_id, "creation_time": alias.creation_time, "id": alias.id,
            "last_update_time": alias.last_update_time, "merged_from_canonical_ids": None, "metadata": None,
            "mount_accessor": alias.mount_accessor, "mount_path": mount.path if mount else "",
            "mount_type": mount.type if mount else "", "name": alias.name,
        }
    members = await store.members(group)
    return {
        "alias": alias_data,
        "creation_time": group.creation_time,
        "id": group.id,
        "last_update_time": group.last_update_time,
        "member_entity_ids": sorted(members) or None,
        "member_group_ids": sorted(g for g in group.member_group_ids if g in store.groups) or None,
        "metadata": dict(group.metadata) or None,
        "modify_index": group.modify_index,
        "name": group.name,
        "namespace_id": "root",
        "parent_group_ids": store.parent_groups(group.id) or None,
        "policies": list(group.policies) or None,
        "type": group.type,
    }


async def _apply(store: IdentityStore, group: Group | None, values: dict[str, Any]) -> Response | None:
    """Create (``group`` None) or update a group from a write's ``values``."""
    if values.get("name") == "":  # sent empty (Vault refuses it); left out, a name is made up
        raise InvalidRequest("empty group name")
    if group is None:
        gid = new_id()
        fresh = Group(id=gid, name=values.get("name") or "group_" + gid.replace("-", "")[:16])
        fresh.type = values.get("type") or "internal"
        created = changed_group(fresh, {k: v for k, v in values.items() if k != "type"})
        _check_member_groups(store, "", values.get("member_group_ids") or [])
        await store.write_group(created)
        return Response(data={"id": created.id, "name": created.name})
    changed = changed_group(group, values)
    _check_member_groups(store, group.id, values.get("member_group_ids") or [])
    await store.write_group(changed, change=lambda stored: changed_group(stored, values))
    return None


#: Seconds between the looks for the group that won a name (its write takes a commit or two).
WINNER_PAUSES = (0.0, 0.01, 0.02, 0.05, 0.1)


async def _upsert(store: IdentityStore, existing: Group | None, values: dict[str, Any]) -> Response | None:
    """Update ``existing``, or create a group named as ``values`` say. A create that lost its
    name to another request of a moment ago (on this node, or on another one before this node
    heard of it) updates the group that request made: with Vault's one lock, the later of two
    registers of a name finds the first's group and updates it."""
    try:
        return await _apply(store, existing, values)
    except NameInUse:
        if existing is not None or not values.get("name"):
            raise
        for pause in WINNER_PAUSES:  # the winner claims the name before it writes its group
            await asyncio.sleep(pause)
            winner = await store.find_group(name=values["name"])
            if winner is not None:
                return await _apply(store, winner, values)
        raise


def _check_member_groups(store: IdentityStore, group_id: str, wanted: list[str]) -> None:
    """OpenBao's checks of nested groups against the groups there are, after the write's own
    (``changed_group``), in its order, as 400s (OpenBao answers the first two with a 500).

    :raises InvalidRequest: an unknown group, the group itself, or a cycle.
    """
    for member in dict.fromkeys(m for m in wanted if m):
        if member not in store.groups:
            raise InvalidRequest(f'invalid member group ID "{member}"')
        if member == group_id:
            raise InvalidRequest(f'member group ID "{group_id}" is same as the ID of the group')
        if group_id and group_id in store.below(member):
            raise InvalidRequest(f'cyclic relationship detected for member group ID "{member}"')


def changed_group(group: Group, values: dict[str, Any]) -> Group:
    """A copy of ``group`` with a write's ``values`` (a pure function: the storage update of
    ``IdentityStore.write_group`` runs it again on the stored group).

    :raises InvalidRequest: Vault's messages for a value the group cannot take.
    """
    group = Group.from_storage(group.to_storage())
    if "type" in values and values["type"] != group.type:  # "" too, as OpenBao
        raise InvalidRequest("group type cannot be changed")
    if values.get("name"):
        group.name = values["name"]
    if "policies" in values:
        group.policies = group_policies(values["policies"])
    if "metadata" in values:
        group.metadata = checked_metadata("group", values["metadata"])
    if "member_group_ids" in values:
        wanted = sorted({m for m in values["member_group_ids"] if m})
        if wanted and group.type == "external":
            raise InvalidRequest("member groups can't be set for external groups")
        group.member_group_ids = wanted
    if "member_entity_ids" in values:
        members = sorted({m for m in values["member_entity_ids"] if m})
        if members and group.type == "external":
            raise InvalidRequest("member entities can't be set manually for external groups")
        group.member_entity_ids = members
    if group.name != group.name.strip() or not group.name or len(group.name) > 256 or "/" in group.name:
        raise InvalidRequest(f'invalid group name "{group.name}"')
    return group


def paths(b: IdentityBackend) -> list[PathSpec]:
    """The group paths; LISTs first (``group/id/`` is the list, ``group/id/<id>`` a group)."""

    async def by_id(values: dict[str, Any]) -> Group:
        group = await b.store.find_group(gid=values["id"])
        if group is None:
            raise NotFound()
        return group

    async def by_name(values: dict[str, Any]) -> Group:
        group = await b.store.find_group(name=values["name"])
        if group is None:
            raise NotFound()
        return group

    async def register(req: Request, values: dict[str, Any]) -> Response | None:
        store = b.store
        if "id" in values and not values["id"]:
            raise InvalidRequest("empty group ID")  # OpenBao's answer: a given id names a group
        existing = await store.find_group(gid=values["id"]) if values.get("id") else None
        if values.get("id") and existing is None:
            raise InvalidRequest("invalid group ID")
        if existing is None and values.get("name"):
            existing = await store.find_group(name=values["name"])
        return await _upsert(store, existing, values)

    async def list_ids(req: Request, values: dict[str, Any]) -> Response:
        store = b.store
        keys = sorted(store.groups)
        if not keys:
            raise NotFound()
        info: dict[str, Any] = {}
        for gid in keys:
            g = store.groups[gid]
            info[gid] = {"name": g.name, "num_member_entities": len(await store.members(g)), "num_parent_groups": 0}
        return Response(data={"keys": keys, "key_info": info})

    async def list_names(req: Request, values: dict[str, Any]) -> Response:
        keys = sorted(g.name for g in b.store.groups.values())
        if not keys:
            raise NotFound()
        return Response(data={"keys": keys})

    async def read_id(req: Request, values: dict[str, Any]) -> Response:
        return Response(data=await group_data(b.store, await by_id(values)))

    async def read_name(req: Request, values: dict[str, Any]) -> Response:
        return Response(data=await group_data(b.store, await by_name(values)))

    async def update_id(req: Request, values: dict[str, Any]) -> Response | None:
        return await _apply(b.store, await by_id(values), values)

    async def write_name(req: Request, values: dict[str, Any]) -> Response | None:
        existing = await b.store.find_group(name=values["name"])
        return await _upsert(b.store, existing, values)

    async def delete_id(req: Request, values: dict[str, Any]) -> None:
        group = await b.store.find_group(gid=values["id"])
        if group is not None:
            await b.store.delete_group(group)

    async def delete_name(req: Request, values: dict[str, Any]) -> None:
        group = await b.store.find_group(name=values["name"])
        if group is not None:
            await b.store.delete_group(group)

    return [
        PathSpec("group", GROUP_FIELDS, {Operation.UPDATE: register}, "Create a group, or update the one with this "
                 "name or id."),
        PathSpec("group/id/?", FieldSet({}), {Operation.LIST: list_ids}, "List groups by id."),
        PathSpec(f"group/id/(?P<id>{_KEY})", _BY_ID,
                 {Operation.READ: read_id, Operation.UPDATE: update_id, Operation.DELETE: delete_id},
                 "Read, update or delete a group by id."),
        PathSpec("group/name/?", FieldSet({}), {Operation.LIST: list_names}, "List groups by name."),
        PathSpec(f"group/name/(?P<name>{_KEY})", _BY_NAME,
                 {Operation.READ: read_name, Operation.UPDATE: write_name, Operation.DELETE: delete_name},
                 "Read, create or update, or delete a group by name."),
    ]
