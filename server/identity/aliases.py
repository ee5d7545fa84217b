"""``identity/group-alias``, ``identity/group-alias/id/<id>`` and its LIST: the name an auth
mount's logins give an external group (an IdP group name, from the role's ``groups_claim``)
on one mount (its accessor). hvac ``secrets.identity.*group_alias*``, the Terraform
provider's ``vault_identity_group_alias``.

An alias matches the group names of logins through its own mount only, and exactly (the
name is unique on its mount case-insensitively, as in Vault: docs/vault-differences.md row 30).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from plugin.errors import InvalidRequest, NotFound
from plugin.framework import Operation, PathSpec, Request, Response
from plugin.schema import Field, FieldSet, FieldType
from server.identity.store import GroupAlias, IdentityStore, new_id

if TYPE_CHECKING:
    from server.identity.backend import IdentityBackend

__all__ = ["ALIAS_FIELDS", "paths", "alias_data"]

_S = FieldType.STRING

ALIAS_FIELDS = FieldSet({
    "id": Field(_S, "ID of the group alias (set by the server when created; given, it names the alias to "
                    "update).", default=""),
    "name": Field(_S, "The group's name in the auth method: an IdP group name as the role's groups_claim "
                      "gives it (matched exactly at login; unique on its mount case-insensitively).", default=""),
    "mount_accessor": Field(_S, "Accessor of the auth mount whose logins this alias matches.", default=""),
    "canonical_id": Field(_S, "ID of the external group the alias stands for (required).", default=""),
})
_BY_ID = FieldSet({**ALIAS_FIELDS.fields, "id": Field(FieldType.NAME, "ID of the group alias.")})
_MAX_NAME = 1024


def alias_data(store: IdentityStore, alias: GroupAlias, *, listing: bool = False) -> dict[str, Any]:
    """A group alias as Vault reads it (``listing``: the ``key_info`` entry of a LIST)."""
    mount = store.mounts(alias.mount_accessor)
    out: dict[str, Any] = {
        "canonical_id": alias.canonical_id,
        "custom_metadata": None,
        "local": False,
        "metadata": None,
        "mount_accessor": alias.mount_accessor,
        "mount_path": mount.path if mount else "",
        "mount_type": mount.type if mount else "",
        "name": alias.name,
    }
    if not listing:
        out.update({
            "creation_time": alias.creation_time, "id": alias.id, "last_update_time": alias.last_update_time,
            "merged_from_canonical_ids": None, "namespace_id": "root",
        })
    return out


async def _apply(store: IdentityStore, alias: GroupAlias | None, values: dict[str, Any]) -> Response:
    created = alias is None
    if alias is None:
        alias = GroupAlias(id=new_id(), name="", mount_accessor="", canonical_id="")
    else:
        alias = GroupAlias.from_storage(alias.to_storage())
    for name in ("name", "mount_accessor", "canonical_id"):
        if values.get(name):
            setattr(alias, name, values[name])
    if not alias.name:
        raise InvalidRequest("missing alias name")
    if len(alias.name) > _MAX_NAME or any(not c.isprintable() for c in alias.name):
        raise InvalidRequest("invalid alias name")
    if not alias.mount_accessor:
        raise InvalidRequest("missing mount_accessor")
    if not alias.canonical_id:
        # Vault creates a new external group here; authmount asks for the group.
        raise InvalidRequest("missing canonical_id: the ID of the external group the alias stands for")
    await store.write_alias(alias, created=created)
    return Response(data={"canonical_id": alias.canonical_id, "id": alias.id})


def paths(b: IdentityBackend) -> list[PathSpec]:
    """The group alias paths."""

    async def by_id(values: dict[str, Any]) -> GroupAlias:
        alias = await b.store.find_alias(values["id"])
        if alias is None:
            raise NotFound()
        return alias

    async def register(req: Request, values: dict[str, Any]) -> Response:
        existing = None
        if values.get("id"):
            existing = await b.store.find_alias(values["id"])
            if existing is None:
                raise InvalidRequest("invalid group alias ID")
        return await _apply(b.store, existing, values)

    async def list_ids(req: Request, values: dict[str, Any]) -> Response:
        store = b.store
        keys = sorted(store.aliases)
        if not keys:
            raise NotFound()
        info = {aid: alias_data(store, store.aliases[aid], listing=True) for aid in keys}
        return Response(data={"keys": keys, "key_info": info})

    async def read(req: Request, values: dict[str, Any]) -> Response:
        return Response(data=alias_data(b.store, await by_id(values)))

    async def update(req: Request, values: dict[str, Any]) -> Response:
        return await _apply(b.store, await by_id(values), values)

    async def delete(req: Request, values: dict[str, Any]) -> None:
        alias = await b.store.find_alias(values["id"])
        if alias is not None:
            await b.store.delete_alias(alias)

    return [
        PathSpec("group-alias", ALIAS_FIELDS, {Operation.UPDATE: register}, "Create a group alias (or update the "
                 "one with this id)."),
        PathSpec("group-alias/id/?", FieldSet({}), {Operation.LIST: list_ids}, "List group aliases by id."),
        PathSpec(r"group-alias/id/(?P<id>[^/\s]{1,256})", _BY_ID,
                 {Operation.READ: read, Operation.UPDATE: update, Operation.DELETE: delete},
                 "Read, update or delete a group alias by id."),
    ]
