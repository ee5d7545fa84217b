"""The built-in ``token/`` mount: create, lookup, renew and revoke tokens (Vault paths)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from plugin.cidrutil import narrow_cidrs, parse_cidrs
from plugin.errors import InvalidRequest, PermissionDenied, UnsupportedOperation
from plugin.framework import Alias, Backend, Operation, PathSpec, Request, Response
from plugin.paging import PAGE_FIELDS
from plugin.policyutil import sanitize_policies
from plugin.schema import Field, FieldSet, FieldType
from server.tokens.entry import InlineEntry, MountInfo, RenewHook, TokenEntry, check_assignable
from server.tokens.roles import (
    ROLE_NAME_RE,
    TokenRole,
    check_entity_alias,
    load_role,
    role_paths,
    role_policies,
    role_ttls,
)
from server.tokens.store import TokenStore
from server.tokens.ttl import calculate_ttl

__all__ = ["TokenBackend", "MountLookup", "mount_table_lookup", "entry_by_accessor", "start_tidy"]

#: Finds the mount that issued a token (by mount accessor): its TTLs and renew hook.
MountLookup = Callable[[str], Awaitable[tuple[MountInfo, RenewHook | None] | None]]

#: What the token of an inline authentication (``X-Vault-Inline-Auth-*``) cannot do: it is
#: written nowhere and ends with its request.
INLINE_CREATE = "the token of an inline authentication cannot create tokens: it ends with this request"
INLINE_RENEW = "the token of an inline authentication cannot be renewed: it is never stored and ends with this request"
_DISPLAY_SANITIZE = re.compile(r"[^a-zA-Z0-9-]+")
_TIDY_WARNING = (
    "Tidy operation successfully started. Any information from the operation will be "
    "printed to Vault's server logs."
)


def start_tidy(store: TokenStore) -> Response:
    """``auth/token/tidy`` and ``sys/leases/tidy``: started in the background, answered at once
    (202), as Vault's tidy; one at a time."""
    if not store.tidy_later():
        return Response(warnings=["Tidy operation already in progress."])  # OpenBao's answer (200)
    return Response(warnings=[_TIDY_WARNING], status=202)


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
_ACCESSOR = {"accessor": Field(FieldType.STRING, "Accessor of the token.", required=True)}
_INCREMENT = {"increment": _f(FieldType.DURATION, "Requested lease extension; 0 means the token's own TTL.", 0)}
_CREATE = {
    "policies": _f(FieldType.COMMA_STRING_SLICE, "Policies of the token; defaults to the caller's."),
    "meta": _f(FieldType.KV_PAIRS, "Metadata attached to the token."),
    "no_parent": _f(FieldType.BOOL, "Create an orphan token (needs root or sudo).", False),
    "no_default_policy": _f(FieldType.BOOL, "Do not add the default policy.", False),
    "renewable": _f(FieldType.BOOL, "Whether the token can be renewed.", True),
    "ttl": _f(FieldType.DURATION, "Initial TTL; defaults to the token mount's default lease TTL.", 0),
    "lease": _f(FieldType.DURATION, "Deprecated: the TTL when `ttl` is not given.", 0),
    "explicit_max_ttl": _f(FieldType.DURATION, "Hard lifetime cap that renewals cannot pass.", 0),
    "period": _f(FieldType.DURATION, "Make a periodic token renewed by this much (needs root or sudo).", 0),
    "display_name": _f(FieldType.STRING, "Name shown in lookups, prefixed with token-.", ""),
    "num_uses": _f(FieldType.INT, "Maximum number of uses; 0 is unlimited.", 0),
    "type": _f(FieldType.STRING, "service (default) or batch; case matters, as in Vault.", "service"),
    "bound_cidrs": _f(FieldType.COMMA_STRING_SLICE, "Client CIDRs allowed to use the token."),
    "entity_alias": _f(FieldType.STRING, "An entity alias on the token mount the token's identity comes from "
                       "(with a role that allows it).", ""),
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
                rf"create/(?P<role_name>{ROLE_NAME_RE})",
                FieldSet({**_CREATE, "role_name": _f(FieldType.NAME, "Token role.")}),
                {u: self._create_role},
                "Create a token from a token role.",
                issues_token=True,
            ),
            *role_paths(),
            PathSpec("lookup-self", FieldSet(dict(_TOKEN)), {Operation.READ: self._lookup_self, u: self._lookup_self}, "Look up the calling token."),
            PathSpec("lookup", FieldSet(dict(_TOKEN)), {Operation.READ: self._lookup, u: self._lookup}, "Look up a token."),
            PathSpec("lookup-accessor", FieldSet(dict(_ACCESSOR)), {u: self._lookup_accessor}, "Look up a token by accessor."),
            PathSpec("renew-self", FieldSet({**_TOKEN, **_INCREMENT}), {u: self._renew_self}, "Renew the calling token."),
            PathSpec("renew", FieldSet({**_TOKEN, **_INCREMENT}), {u: self._renew}, "Renew a token."),
            PathSpec("renew-accessor", FieldSet({**_ACCESSOR, **_INCREMENT}), {u: self._renew_accessor}, "Renew a token by accessor."),
            PathSpec("accessors/?", PAGE_FIELDS, {Operation.LIST: self._list_accessors},
                     "List token accessors (needs sudo); after and limit page through them."),
            PathSpec("revoke-self", FieldSet({}), {u: self._revoke_self}, "Revoke the calling token and its children."),
            PathSpec("revoke", FieldSet(dict(_TOKEN)), {u: self._revoke}, "Revoke a token and its children."),
            PathSpec("revoke-accessor", FieldSet(dict(_ACCESSOR)), {u: self._revoke_accessor}, "Revoke a token by accessor."),
            PathSpec("revoke-orphan", FieldSet(dict(_TOKEN)), {u: self._revoke_orphan}, "Revoke a token, orphaning its children."),
            PathSpec("tidy", FieldSet({}), {u: self._tidy}, "Remove expired token entries now.", statuses=(202,)),
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
        path = self._mount_path(req) + req.path
        acl = await self.store.acl(caller, self.policies, path)
        return bool(acl.allows(path, "sudo"))

    async def _renew_target(self, entry: TokenEntry, req: Request) -> tuple[MountInfo, RenewHook | None]:
        token_mount = self._token_mount(req)
        if not entry.mount_accessor or entry.mount_accessor == token_mount.accessor or entry.path.startswith("auth/token/"):
            return token_mount, (self._role_renewal(req) if entry.role else None)
        found = await self.mount_lookup(entry.mount_accessor) if self.mount_lookup else None
        if found is None:
            raise InvalidRequest("the auth method that issued this token is not available for renewal")
        return found

    @staticmethod
    def _role_renewal(req: Request) -> RenewHook:
        """A token made against a role renews with the role's period and explicit max TTL as
        they are now (Vault's ``authRenew``); a deleted role renews nothing."""

        async def hook(entry: TokenEntry) -> Any:
            role = await load_role(req, entry.role)
            if role is None:
                raise InvalidRequest(f'original token role "{entry.role}" could not be found, not renewing')
            auth = entry.to_auth()
            auth.period, auth.explicit_max_ttl = role.token_period, role.token_explicit_max_ttl
            return auth

        return hook

    async def _alias_entity(self, req: Request, name: str) -> str:
        """The entity of the alias ``name`` on the token mount, made at its first use as a
        login makes one (Vault's ``CreateOrFetchEntity``); its groups' policies then apply to
        the tokens that carry it."""
        accessor = self._token_mount(req).accessor
        if not accessor:
            raise InvalidRequest("auth token mount accessor not found")
        entity_id, alias_id = self.store.entity_of(accessor, name)
        if self.store.identity is not None:
            if self.store.identity.disabled(entity_id):
                raise PermissionDenied("entity from given entity alias is disabled")  # OpenBao's text
            await self.store.identity.login(entity_id, alias_id, accessor, Alias(name=name), ())
        return entity_id

    # -- create --------------------------------------------------------------------------
    async def _create_role(self, req: Request, values: dict[str, Any]) -> Response:
        name = values["role_name"]
        role = await load_role(req, name)
        if role is None:
            raise InvalidRequest(f"unknown role {name}")
        return await self._create_common(req, values, orphan=False, role=role)

    async def _create_orphan(self, req: Request, values: dict[str, Any]) -> Response:
        return await self._create_common(req, values, orphan=True)

    async def _create(self, req: Request, values: dict[str, Any]) -> Response:
        return await self._create_common(req, values, orphan=False)

    async def _create_common(
        self, req: Request, values: dict[str, Any], *, orphan: bool, role: TokenRole | None = None
    ) -> Response:
        """OpenBao's ``handleCreateCommon``, its checks in its order and with its texts
        (tests/e2e/test_openbao_differential.py runs both servers side by side)."""
        caller, _ = self._caller(req)
        if caller.num_uses < 0:  # its last use: pending revocation
            raise InvalidRequest("parent token lookup failed: no parent found")
        if caller.type == "batch":  # not even an orphan: it would outlive the batch token
            raise InvalidRequest("batch tokens cannot create more tokens")
        if isinstance(caller, InlineEntry):  # nor the token of an inline authentication
            raise InvalidRequest(INLINE_CREATE)
        if caller.num_uses > 0:  # a child would escape the use limit
            raise InvalidRequest("restricted use token cannot generate child tokens")
        sudo = await self._has_sudo(caller, req)
        token_type = values.get("type", "")
        if role is not None and role.token_type != "default-service":
            # A role's own type wins; default-batch only fills in a request that names none.
            token_type = token_type or "batch" if role.token_type == "default-batch" else role.token_type
        token_type = token_type or "service"
        explicit, num_uses, period = values.get("explicit_max_ttl", 0), values.get("num_uses", 0), values.get("period", 0)
        renewable = bool(values.get("renewable", True))
        if token_type == "batch":
            bad = "explicit_max_ttl" if explicit else "num_uses" if num_uses else "period" if period else ""
            if bad:
                raise InvalidRequest(f'batch tokens cannot have "{bad}" set')
            renewable = False
        elif token_type != "service":
            raise InvalidRequest("invalid 'token_type' value")  # OpenBao's text; "Batch" too: case matters
        if num_uses < 0:
            raise InvalidRequest("number of uses cannot be negative")
        alias_entity = ""
        if values.get("entity_alias"):
            alias_entity = await self._alias_entity(req, check_entity_alias(role, values["entity_alias"]))
        path = self._mount_path(req) + req.path
        if role is not None:
            renewable = renewable and role.renewable
            # A batch token keeps no use count: OpenBao reports the role's and never counts it.
            if role.token_num_uses and token_type != "batch" and (not num_uses or role.token_num_uses < num_uses):
                num_uses = role.token_num_uses
            if role.path_suffix:
                path = f"{path}/{role.path_suffix}"
        if values.get("id"):
            raise InvalidRequest("custom token IDs are not supported")
        policies = self._create_policies(values, caller, sudo, role)
        if "root" in policies:
            if not caller.is_root():
                raise InvalidRequest("root tokens may not be created without parent token being root")
            if token_type == "batch":
                raise InvalidRequest("batch tokens cannot be root tokens")
        requested_cidrs = parse_cidrs(values.get("bound_cidrs") or [])
        if role is not None:
            orphan = role.orphan
            # A role's CIDRs replace the caller's (Vault: roles may widen them on purpose).
            bound = narrow_cidrs(role.token_bound_cidrs, requested_cidrs)
        else:
            if values.get("no_parent"):
                if not sudo:
                    raise InvalidRequest("root or sudo privileges required to create orphan token")
                orphan = True
            bound = narrow_cidrs(caller.bound_cidrs, requested_cidrs)
        if period and not sudo:
            raise InvalidRequest("root or sudo privileges required to create periodic token")
        warnings: list[str] = []
        # The token keeps the request's own explicit max TTL and period; a role's count in the
        # TTL now and at every renewal, as the role is then (Vault).
        max_ttl, every = explicit, period
        if role is not None and token_type != "batch":
            max_ttl, every, warnings = role_ttls(role, explicit, period)
        mount = self._token_mount(req)
        now = self.store.clock()
        ttl = values.get("ttl", 0) or values.get("lease", 0)
        if every or ttl or "root" not in policies:
            ttl, capped = calculate_ttl(
                now=now, default_ttl=mount.default_lease_ttl, mount_max=mount.max_lease_ttl, backend_ttl=ttl,
                period=every, explicit_max=max_ttl, start=int(now),
            )
            warnings += capped
        if ttl == 0 and max_ttl > 0:  # root tokens are bound by their explicit max TTL too
            ttl = max_ttl
        if ttl == 0:
            if caller.ttl != 0:
                raise InvalidRequest("expiring root tokens cannot create non-expiring root tokens")
            renewable = False
            bound = []  # a token that never expires is not CIDR-bound either (Vault)
        display = "token"
        if values.get("display_name"):
            display = _DISPLAY_SANITIZE.sub("-", "token-" + values["display_name"]).removesuffix("-")
        entry = TokenEntry(
            id_hash="",
            accessor="",
            policies=policies,
            meta=dict(values.get("meta") or {}),
            display_name=display,
            path=path,
            mount_accessor=mount.accessor,
            creation_time=int(now),
            ttl=ttl,
            expire_time=now + ttl if ttl else 0.0,
            explicit_max_ttl=explicit,
            period=period,
            num_uses=num_uses,
            bound_cidrs=bound,
            type=token_type,
            renewable=renewable,
            # Vault: an entity alias's entity, else only a child shares its parent's entity
            entity_id=alias_entity or ("" if orphan else caller.entity_id),
            role=role.name if role is not None else "",
        )
        raw = await self.store.mint(entry, parent=None if orphan else caller)
        if self.policies is not None:
            for name in policies:
                if await self.policies.get(name) is None:
                    warnings.append(f'Policy "{name}" does not exist')
        return Response(auth_block=self.store.auth_block(entry, raw), warnings=warnings)

    @staticmethod
    def _create_policies(values: dict[str, Any], caller: TokenEntry, sudo: bool, role: TokenRole | None) -> list[str]:
        """OpenBao's ``resolveTokenPolicies``: a role's allowed and disallowed policies when it
        has any (``role_policies``); else the caller's policies when none are asked for;
        otherwise a subset of them unless the caller has sudo; ``default`` added when the
        caller has it (or has sudo), and removed with ``no_default_policy``."""
        no_default = bool(values.get("no_default_policy"))
        requested = values.get("policies") or []
        by_role = role_policies(role, requested, caller.policies, no_default) if role is not None else None
        if by_role is not None:
            policies, add_default = by_role, False
        elif not requested:
            policies, add_default = list(caller.policies), False
        elif not sudo:
            want = set(sanitize_policies(requested)) - {"default"}
            if not want <= set(sanitize_policies(caller.policies)) - {"default"}:
                raise InvalidRequest("child policies must be subset of parent")
            policies, add_default = requested, not no_default and "default" in caller.policies
        else:
            policies, add_default = requested, not no_default
        final = sanitize_policies(policies, add_default=add_default)
        if "root" in final:  # Vault's SanitizePolicies: root stands alone
            final = ["root"]
        if no_default:
            final = [p for p in final if p != "default"]
        check_assignable(final)
        return final

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
            raise InvalidRequest("missing token ID")
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
        after, limit = values.get("after") or "", values.get("limit") or 0
        if not after and limit <= 0:
            return Response(data={"keys": await self.store.list_accessors()})
        return Response(data={"keys": await self.store.accessors_page(after, limit)})

    async def _renew_entry(self, req: Request, entry: TokenEntry, raw: str, increment: int) -> Response:
        if entry.num_uses < 0:  # the caller's own token on its last use: pending revocation (Vault)
            raise InvalidRequest("token not found")
        if isinstance(entry, InlineEntry):
            raise InvalidRequest(INLINE_RENEW)
        if entry.type == "batch":
            raise InvalidRequest("batch tokens cannot be renewed")
        mount, hook = await self._renew_target(entry, req)
        block, warnings = await self.store.renew(entry, increment, mount=mount, renew_hook=hook, raw_token=raw)
        return Response(auth_block=block, warnings=warnings)

    # -- revoke --------------------------------------------------------------------------
    async def _revoke_self(self, req: Request, values: dict[str, Any]) -> None:
        caller, _ = self._caller(req)
        if isinstance(caller, InlineEntry):  # it ends with this request: nothing to revoke (as OpenBao)
            return
        await self.store.revoke(caller)

    async def _revoke(self, req: Request, values: dict[str, Any]) -> None:
        self._caller(req)
        raw = values.get("token") or ""
        if not raw:
            raise InvalidRequest("missing token ID")
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
        raw = values.get("token") or ""
        if not raw:
            raise InvalidRequest("missing token ID")
        if not await self._has_sudo(caller, req):
            raise InvalidRequest("root or sudo privileges required to revoke and orphan")
        entry = await self.store.lookup(raw)
        if entry is None:  # unlike revoke, which succeeds (Vault's two answers)
            raise InvalidRequest("token to revoke not found")
        await self.store.revoke_orphan(entry)

    async def _tidy(self, req: Request, values: dict[str, Any]) -> Response:
        self._caller(req)
        return start_tidy(self.store)
