"""The built-in ``token/`` mount: create, lookup, renew and revoke tokens (Vault paths)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from plugin.cidrutil import narrow_cidrs, parse_cidrs
from plugin.errors import InvalidRequest, PermissionDenied, UnsupportedOperation
from plugin.framework import Backend, Operation, PathSpec, Request, Response
from plugin.policyutil import sanitize_policies
from plugin.schema import Field, FieldSet, FieldType, format_duration
from server.tokens.entry import MountInfo, RenewHook, TokenEntry, check_assignable
from server.tokens.store import TokenStore

__all__ = ["TokenBackend", "MountLookup", "mount_table_lookup", "entry_by_accessor"]

#: Finds the mount that issued a token (by mount accessor): its TTLs and renew hook.
MountLookup = Callable[[str], Awaitable[tuple[MountInfo, RenewHook | None] | None]]

_DISPLAY_SANITIZE = re.compile(r"[^a-zA-Z0-9-]+")
_TIDY_WARNING = (
    "Tidy operation successfully started. Any information from the operation will be "
    "printed to Vault's server logs."
)


def mount_table_lookup(get_table: Callable[[], Any]) -> MountLookup:
    """A ``MountLookup`` over ``server.mounts.MountTable`` (fetched lazily by ``get_table``).

    The hook sends ``Operation.RENEW`` to the issuing backend with ``req.auth`` rebuilt
    from the token entry, as Vault does.
    """

    async def lookup(accessor: str) -> tuple[MountInfo, RenewHook | None] | None:
        table = get_table()
        for mount in list(table.mounts.values()):
            if mount.entry.accessor != accessor:
                continue
            dflt, mx = table.effective_ttls(mount.entry)
            info = MountInfo("auth/" + mount.entry.path, accessor, dflt, mx)

            async def hook(entry: TokenEntry, mount: Any = mount, info: MountInfo = info) -> Any:
                req = Request(
                    operation=Operation.RENEW,
                    path=entry.path.removeprefix(info.path),
                    storage=mount.storage,
                    system=mount.system,
                    auth=entry.to_auth(),
                )
                try:
                    resp = await mount.backend.handle_request(req)
                except UnsupportedOperation as exc:
                    # A 405 would blame the renew-self call itself; it is the method that refuses.
                    raise InvalidRequest(messages=exc.messages) from None
                return resp.auth if resp is not None else None

            return info, hook
        return None

    return lookup


async def entry_by_accessor(store: TokenStore, accessor: Any) -> TokenEntry:
    """The live token with ``accessor`` (``auth/token/*-accessor``, ``sys/capabilities-accessor``).

    :raises InvalidRequest: ``accessor`` is missing or not a string, or no live token has it.
    """
    if not isinstance(accessor, str) or not accessor:
        raise InvalidRequest("missing accessor")
    entry = await store.lookup_accessor(accessor)
    if entry is None:
        raise InvalidRequest("invalid accessor")
    return entry


def _f(ftype: FieldType, description: str, default: Any = None) -> Field:
    return Field(ftype, description, default=default)


_TOKEN = {"token": _f(FieldType.STRING, "The token (defaults to the calling token for lookup).")}
_ACCESSOR = {"accessor": _f(FieldType.STRING, "Accessor of the token.")}
_INCREMENT = {"increment": _f(FieldType.DURATION, "Requested lease extension; 0 means the token's own TTL.", 0)}
_CREATE = {
    "policies": _f(FieldType.COMMA_STRING_SLICE, "Policies of the token; defaults to the caller's."),
    "meta": _f(FieldType.KV_PAIRS, "Metadata attached to the token."),
    "no_parent": _f(FieldType.BOOL, "Create an orphan token (needs root or sudo).", False),
    "no_default_policy": _f(FieldType.BOOL, "Do not add the default policy.", False),
    "renewable": _f(FieldType.BOOL, "Whether the token can be renewed.", True),
    "ttl": _f(FieldType.DURATION, "Initial TTL; defaults to the token mount's default lease TTL.", 0),
    "explicit_max_ttl": _f(FieldType.DURATION, "Hard lifetime cap that renewals cannot pass.", 0),
    "period": _f(FieldType.DURATION, "Make a periodic token renewed by this much (needs root or sudo).", 0),
    "display_name": _f(FieldType.STRING, "Name shown in lookups, prefixed with token-.", ""),
    "num_uses": _f(FieldType.INT, "Maximum number of uses; 0 is unlimited.", 0),
    "type": _f(FieldType.LOWER_STRING, "service (default) or batch.", "service"),
    "bound_cidrs": _f(FieldType.COMMA_STRING_SLICE, "Client CIDRs allowed to use the token."),
    "entity_alias": _f(FieldType.STRING, "Not supported (needs token roles); must be empty.", ""),
    "id": _f(FieldType.STRING, "Not supported: custom token IDs; must be empty.", ""),
}


class TokenBackend(Backend):
    """Vault's ``auth/token/*`` endpoints over a ``TokenStore``.

    ``policies`` (a ``PolicyStore``) decides ``sudo`` for orphan/periodic creation; without
    it only root callers have sudo. ``mounts`` (a zero-argument callable returning the
    ``MountTable``) or ``mount_lookup`` lets renewal call the issuing auth method; without
    either, tokens issued by auth methods cannot be renewed.
    """

    type_name = "token"

    def __init__(
        self,
        store: TokenStore,
        *,
        policies: Any = None,
        mounts: Callable[[], Any] | None = None,
        mount_lookup: MountLookup | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.policies = policies
        self.mount_lookup = mount_lookup or (mount_table_lookup(mounts) if mounts is not None else None)
        u = Operation.UPDATE
        self.paths = [
            PathSpec("create-orphan", FieldSet(dict(_CREATE)), {u: self._create_orphan}, "Create an orphan token.",
                     issues_token=True),
            PathSpec("create", FieldSet(dict(_CREATE)), {u: self._create}, "Create a child token.", issues_token=True),
            PathSpec(
                r"create/(?P<role_name>.+)",
                FieldSet({**_CREATE, "role_name": _f(FieldType.NAME, "Token role.")}),
                {u: self._create_role},
                "Create a token from a token role (not supported).",
                issues_token=True,
            ),
            PathSpec("lookup-self", FieldSet(dict(_TOKEN)), {Operation.READ: self._lookup_self, u: self._lookup_self}, "Look up the calling token."),
            PathSpec("lookup", FieldSet(dict(_TOKEN)), {Operation.READ: self._lookup, u: self._lookup}, "Look up a token."),
            PathSpec("lookup-accessor", FieldSet(dict(_ACCESSOR)), {u: self._lookup_accessor}, "Look up a token by accessor."),
            PathSpec("renew-self", FieldSet({**_TOKEN, **_INCREMENT}), {u: self._renew_self}, "Renew the calling token."),
            PathSpec("renew", FieldSet({**_TOKEN, **_INCREMENT}), {u: self._renew}, "Renew a token."),
            PathSpec("renew-accessor", FieldSet({**_ACCESSOR, **_INCREMENT}), {u: self._renew_accessor}, "Renew a token by accessor."),
            PathSpec("accessors/?", FieldSet({}), {Operation.LIST: self._list_accessors}, "List token accessors (needs sudo)."),
            PathSpec("revoke-self", FieldSet({}), {u: self._revoke_self}, "Revoke the calling token and its children."),
            PathSpec("revoke", FieldSet(dict(_TOKEN)), {u: self._revoke}, "Revoke a token and its children."),
            PathSpec("revoke-accessor", FieldSet(dict(_ACCESSOR)), {u: self._revoke_accessor}, "Revoke a token by accessor."),
            PathSpec("revoke-orphan", FieldSet(dict(_TOKEN)), {u: self._revoke_orphan}, "Revoke a token, orphaning its children."),
            PathSpec("tidy", FieldSet({}), {u: self._tidy}, "Remove expired token entries now."),
        ]

    # -- helpers -------------------------------------------------------------------------
    @staticmethod
    def _caller(req: Request) -> tuple[TokenEntry, str]:
        tok = req.token
        if not tok:
            raise PermissionDenied()
        entry = tok.get("entry")
        if isinstance(entry, dict):
            entry = TokenEntry.from_dict(entry)
        if not isinstance(entry, TokenEntry):
            raise PermissionDenied()
        return entry, str(tok.get("raw") or "")

    def _mount_path(self, req: Request) -> str:
        system = req.system
        return getattr(system, "mount_path", None) or "auth/token/"

    def _token_mount(self, req: Request) -> MountInfo:
        system = req.system
        if system is None:
            return self.store.default_mount
        return MountInfo(
            path=self._mount_path(req),
            accessor=getattr(system, "mount_accessor", ""),
            default_lease_ttl=system.default_lease_ttl or self.store.default_lease_ttl,
            max_lease_ttl=system.max_lease_ttl or self.store.max_lease_ttl,
        )

    async def _has_sudo(self, caller: TokenEntry, req: Request) -> bool:
        if caller.is_root():
            return True
        if self.policies is None:
            return False
        acl = await self.policies.acl_for(await self.store.policies_of(caller))
        return bool(acl.allows(self._mount_path(req) + req.path, "sudo"))

    async def _renew_target(self, entry: TokenEntry, req: Request) -> tuple[MountInfo, RenewHook | None]:
        token_mount = self._token_mount(req)
        if not entry.mount_accessor or entry.mount_accessor == token_mount.accessor or entry.path.startswith("auth/token/"):
            return token_mount, None
        found = await self.mount_lookup(entry.mount_accessor) if self.mount_lookup else None
        if found is None:
            raise InvalidRequest("the auth method that issued this token is not available for renewal")
        return found

    # -- create --------------------------------------------------------------------------
    async def _create_role(self, req: Request, values: dict[str, Any]) -> Response:
        raise InvalidRequest(f"unknown role {values.get('role_name', '')}")

    async def _create_orphan(self, req: Request, values: dict[str, Any]) -> Response:
        return await self._create_common(req, values, orphan=True)

    async def _create(self, req: Request, values: dict[str, Any]) -> Response:
        return await self._create_common(req, values, orphan=False)

    async def _create_common(self, req: Request, values: dict[str, Any], *, orphan: bool) -> Response:
        caller, _ = self._caller(req)
        # Vault's order and texts. A token on its last use is already pending revocation; a
        # use-limited one must not mint tokens without its limit (a one-use token would
        # otherwise hand out an unlimited child, or an orphan that outlives it).
        if caller.num_uses < 0:
            raise InvalidRequest("parent token lookup failed: no parent found")
        if caller.num_uses > 0:
            raise InvalidRequest("restricted use token cannot generate child tokens")
        if values.get("id"):
            raise InvalidRequest("custom token IDs are not supported")
        if values.get("entity_alias"):
            raise InvalidRequest("entity_alias requires a token role, which is not supported")
        token_type = values.get("type") or "service"
        if token_type not in ("service", "batch"):
            raise InvalidRequest(f'invalid token type "{values.get("type")}"')
        sudo = await self._has_sudo(caller, req)
        if values.get("no_parent") and not orphan:
            if not sudo:
                raise InvalidRequest("root or sudo privileges required to create orphan token")
            orphan = True
        if caller.type == "batch" and not orphan:
            raise InvalidRequest("batch tokens cannot create non-orphan tokens")
        num_uses = values.get("num_uses", 0)
        if num_uses < 0:
            raise InvalidRequest("number of uses cannot be negative")
        period = values.get("period", 0)
        if period and not sudo:
            raise InvalidRequest("root or sudo privileges required to create periodic token")

        no_default = bool(values.get("no_default_policy"))
        requested = values.get("policies") or []
        if not requested:
            requested = [p for p in caller.policies if not (no_default and p == "default")]
        policies = sanitize_policies(requested, add_default=not no_default)
        if not sudo:
            want = set(sanitize_policies(requested, add_default=False)) - {"default"}
            have = set(caller.policies) - {"default"}
            if not want <= have:
                raise InvalidRequest("child policies must be subset of parent")
        if "root" in policies and not caller.is_root():
            raise InvalidRequest("root tokens may not be created without parent token being root")
        check_assignable(policies)

        mount = self._token_mount(req)
        ttl, warnings = self._create_ttl(values, policies, mount, caller)
        renewable = bool(values.get("renewable", True)) and ttl != 0
        display = "token"
        if values.get("display_name"):
            display = _DISPLAY_SANITIZE.sub("-", "token-" + values["display_name"]).removesuffix("-")
        now = self.store.clock()
        entry = TokenEntry(
            id_hash="",
            accessor="",
            policies=policies,
            meta=dict(values.get("meta") or {}),
            display_name=display,
            path=self._mount_path(req) + req.path,
            mount_accessor=mount.accessor,
            creation_time=int(now),
            ttl=ttl,
            expire_time=now + ttl if ttl else 0.0,
            explicit_max_ttl=values.get("explicit_max_ttl", 0),
            period=period,
            num_uses=num_uses,
            bound_cidrs=narrow_cidrs(caller.bound_cidrs, parse_cidrs(values.get("bound_cidrs") or [])),
            type=token_type,
            renewable=renewable,
            entity_id=caller.entity_id,
        )
        raw = await self.store.mint(entry, parent=None if orphan else caller)
        return Response(auth_block=self.store.auth_block(entry, raw), warnings=warnings)

    @staticmethod
    def _create_ttl(values: dict[str, Any], policies: list[str], mount: MountInfo, caller: TokenEntry) -> tuple[int, list[str]]:
        """Vault ``handleCreateCommon`` TTL rules (root tokens may be non-expiring)."""
        warnings: list[str] = []
        explicit = values.get("explicit_max_ttl", 0)
        period = values.get("period", 0)
        if period:
            ttl = min(period, explicit) if explicit else period
        else:
            ttl = values.get("ttl", 0)
            if ttl == 0 and "root" not in policies:
                ttl = mount.default_lease_ttl
            max_ttl = mount.max_lease_ttl
            if 0 < explicit < max_ttl:
                max_ttl = explicit
            if max_ttl and ttl > max_ttl:
                warnings.append(
                    f'TTL of "{format_duration(ttl)}" exceeded the effective max_ttl of '
                    f'"{format_duration(max_ttl)}"; TTL value is capped accordingly'
                )
                ttl = max_ttl
        if ttl == 0 and explicit > 0:
            ttl = explicit
        if ttl == 0 and caller.ttl != 0:
            raise InvalidRequest("expiring root tokens cannot create non-expiring root tokens")
        return ttl, warnings

    # -- lookup --------------------------------------------------------------------------
    async def _data(self, entry: TokenEntry, raw: str) -> Response:
        """A lookup's answer, with the identity policies the token has at this moment."""
        identity = await self.store.identity_policies(entry)
        return Response(data=self.store.lookup_data(entry, raw, identity_policies=identity))

    async def _lookup_self(self, req: Request, values: dict[str, Any]) -> Response:
        caller, raw = self._caller(req)
        return await self._data(caller, raw)

    async def _lookup(self, req: Request, values: dict[str, Any]) -> Response:
        caller, raw_caller = self._caller(req)
        raw = values.get("token") or ""
        if not raw or raw == raw_caller:
            return await self._data(caller, raw_caller)
        entry = await self.store.lookup(raw)
        if entry is None:
            raise PermissionDenied("bad token")
        return await self._data(entry, raw)

    async def _lookup_accessor(self, req: Request, values: dict[str, Any]) -> Response:
        self._caller(req)
        entry = await entry_by_accessor(self.store, values.get("accessor"))
        return await self._data(entry, "")

    # -- renew ---------------------------------------------------------------------------
    async def _renew_self(self, req: Request, values: dict[str, Any]) -> Response:
        caller, raw = self._caller(req)
        return await self._renew_entry(req, caller, raw, values.get("increment", 0))

    async def _renew(self, req: Request, values: dict[str, Any]) -> Response:
        caller, raw_caller = self._caller(req)
        raw = values.get("token") or ""
        if not raw:
            raise InvalidRequest("missing token")
        if raw == raw_caller:
            return await self._renew_entry(req, caller, raw, values.get("increment", 0))
        entry = await self.store.lookup(raw)
        if entry is None:
            raise InvalidRequest("token not found")
        return await self._renew_entry(req, entry, raw, values.get("increment", 0))

    async def _renew_accessor(self, req: Request, values: dict[str, Any]) -> Response:
        self._caller(req)
        entry = await entry_by_accessor(self.store, values.get("accessor"))
        return await self._renew_entry(req, entry, "", values.get("increment", 0))

    async def _list_accessors(self, req: Request, values: dict[str, Any]) -> Response:
        caller, _ = self._caller(req)
        if not await self._has_sudo(caller, req):
            raise PermissionDenied()
        return Response(data={"keys": await self.store.list_accessors()})

    async def _renew_entry(self, req: Request, entry: TokenEntry, raw: str, increment: int) -> Response:
        if entry.num_uses < 0:  # the caller's own token on its last use: pending revocation (Vault)
            raise InvalidRequest("token not found")
        if entry.type == "batch":
            raise InvalidRequest("batch tokens cannot be renewed")
        mount, hook = await self._renew_target(entry, req)
        block, warnings = await self.store.renew(entry, increment, mount=mount, renew_hook=hook, raw_token=raw)
        return Response(auth_block=block, warnings=warnings)

    # -- revoke --------------------------------------------------------------------------
    async def _revoke_self(self, req: Request, values: dict[str, Any]) -> None:
        caller, _ = self._caller(req)
        await self.store.revoke(caller)

    async def _revoke(self, req: Request, values: dict[str, Any]) -> None:
        self._caller(req)
        raw = values.get("token") or ""
        if not raw:
            raise InvalidRequest("missing token")
        entry = await self.store.lookup(raw)
        if entry is not None:  # revoking an unknown token is not an error (Vault)
            await self.store.revoke(entry)

    async def _revoke_accessor(self, req: Request, values: dict[str, Any]) -> Response | None:
        self._caller(req)
        accessor = values.get("accessor") or ""
        if not accessor:
            raise InvalidRequest("missing accessor")
        if not await self.store.revoke_accessor(accessor):
            # Vault: revoking is idempotent (`vault token revoke -accessor` twice succeeds).
            return Response(warnings=["No token found with this accessor"])
        return None

    async def _revoke_orphan(self, req: Request, values: dict[str, Any]) -> None:
        caller, _ = self._caller(req)
        if not await self._has_sudo(caller, req):
            raise InvalidRequest("root or sudo privileges required to revoke and orphan")
        raw = values.get("token") or ""
        if not raw:
            raise InvalidRequest("missing token")
        entry = await self.store.lookup(raw)
        if entry is not None:
            await self.store.revoke_orphan(entry)

    async def _tidy(self, req: Request, values: dict[str, Any]) -> Response:
        self._caller(req)
        await self.store.sweep()
        return Response(warnings=[_TIDY_WARNING], status=202)
