"""The built-in token/ mount, called through ``handle_request`` as the server does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from types import SimpleNamespace
from typing import Any

import pytest

from plugin.errors import InvalidRequest, PermissionDenied, UnsupportedPath
from plugin.framework import Alias, Auth, Backend, Operation, Request, Response, StaticSystemView
from plugin.storage import InMemoryStorage
from server.acl.policies import PolicyStore
from server.tokens.backend import TokenBackend, mount_table_lookup
from server.tokens.entry import MountInfo, TokenEntry
from server.tokens.store import TokenStore

T0 = 1_800_000_000.0
SYSTEM = StaticSystemView(default_lease_ttl=3600, max_lease_ttl=7200, mount_path="auth/token/", mount_accessor="auth_token_00000001")
JWT = MountInfo("auth/jwt/", "auth_jwt_1a2b3c4d", 3600, 7200)
HVAC_CREATE = {"no_parent": False, "no_default_policy": False, "renewable": True, "ttl": "1h", "display_name": "token", "num_uses": 0}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Env:
    """A token store, policy store and token backend, plus a root token."""

    def __init__(self, store: TokenStore, policies: PolicyStore, backend: TokenBackend, root: str, clock: Clock) -> None:
        self.store, self.policies, self.backend, self.root, self.clock = store, policies, backend, root, clock
        self.mount_storage = InMemoryStorage()  # the token mount's own storage (its roles)

    async def call(self, raw: str, path: str, data: dict[str, Any] | None = None, op: Operation = Operation.UPDATE) -> Response | None:
        entry = await self.store.authenticate(raw, "127.0.0.1")
        req = Request(operation=op, path=path, data=data or {}, system=SYSTEM, storage=self.mount_storage,
                      token={"entry": entry, "raw": raw})
        try:
            return await self.backend.handle_request(req)
        finally:
            await self.store.release(entry)

    async def token(self, raw: str | None = None, **data: Any) -> dict[str, Any]:
        resp = await self.call(raw or self.root, "create", data)
        assert resp is not None and resp.auth_block is not None
        return resp.auth_block


@asynccontextmanager
async def token_env(policies: dict[str, str]) -> AsyncIterator[Env]:
    """A token store on memory storage with these policies written, its backend and a root token."""
    clock = Clock()
    store = TokenStore(InMemoryStorage(), clock=clock)
    await store.start(sweep=False)
    policy_store = PolicyStore(store.storage)
    for name, text in policies.items():
        await policy_store.put(name, text)
    try:
        yield Env(store, policy_store, TokenBackend(store, policies=policy_store), await store.create_root(), clock)
    finally:
        await store.close()


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    async with token_env({
        "dev": 'path "secret/*" { capabilities = ["read"] }',
        "ops": 'path "ops/*" { capabilities = ["read"] }',
        "tokenadmin": 'path "auth/token/*" { capabilities = ["create", "update", "sudo"] }',
    }) as made:
        yield made


async def test_hvac_create_as_root(env: Env) -> None:
    resp = await env.call(env.root, "create", {"policies": ["dev"], **HVAC_CREATE})
    assert resp is not None and resp.data is None and resp.auth is None and resp.warnings == []
    block = resp.auth_block
    assert block is not None
    assert block["client_token"].startswith("hvs.") and block["policies"] == ["default", "dev"]
    assert block["lease_duration"] == 3600 and block["renewable"] is True and block["orphan"] is False
    data = await env.call(block["client_token"], "lookup-self", op=Operation.READ)
    assert data is not None and data.data is not None
    assert data.data["display_name"] == "token-token" and data.data["path"] == "auth/token/create"
    assert data.data["id"] == block["client_token"] and data.data["policies"] == ["default", "dev"]


async def test_create_inherits_caller_policies(env: Env) -> None:
    parent = await env.token(policies=["dev", "ops"])
    child = await env.token(parent["client_token"])
    assert child["policies"] == ["default", "dev", "ops"]


@pytest.mark.parametrize(
    ("caller_policies", "data", "expected"),
    [
        (["dev", "ops"], {"policies": ["dev"]}, nullcontext(["default", "dev"])),
        (["dev"], {"policies": ["dev", "default"]}, nullcontext(["default", "dev"])),
        (["dev"], {"policies": ["DEV "]}, nullcontext(["default", "dev"])),
        # A string is split on commas, as every policies field (docs/vault-differences.md row 52).
        (["dev", "ops"], {"policies": "dev, ops"}, nullcontext(["default", "dev", "ops"])),
        (["dev"], {"policies": ["ops"]}, pytest.raises(InvalidRequest, match="^child policies must be subset of parent$")),
        (["dev"], {"policies": ["root"]}, pytest.raises(InvalidRequest, match="^child policies must be subset of parent$")),
        (["dev", "tokenadmin"], {"policies": ["ops"]}, nullcontext(["default", "ops"])),
        (["dev", "tokenadmin"], {"policies": [" Root"]}, pytest.raises(InvalidRequest, match="^root tokens may not be created without parent token being root$")),
        (["dev"], {"no_parent": True}, pytest.raises(InvalidRequest, match="^root or sudo privileges required to create orphan token$")),
        (["dev"], {"period": "1h"}, pytest.raises(InvalidRequest, match="^root or sudo privileges required to create periodic token$")),
        (["dev"], {"num_uses": -1}, pytest.raises(InvalidRequest, match="^number of uses cannot be negative$")),
        (["dev"], {"type": "weird"}, pytest.raises(InvalidRequest, match="^invalid 'token_type' value$")),
        # Case matters, as in OpenBao (it was lower-cased before).
        (["dev"], {"type": "BATCH"}, pytest.raises(InvalidRequest, match="^invalid 'token_type' value$")),
        (["dev"], {"id": "my-token"}, pytest.raises(InvalidRequest, match="^custom token IDs are not supported$")),
        (["dev"], {"policies": ["response-wrapping"], "no_default_policy": True}, pytest.raises(InvalidRequest)),
        (["dev"], {"bound_cidrs": "10.0.0.0/99"}, pytest.raises(InvalidRequest, match='error parsing address "10.0.0.0/99"')),
    ],
    ids=["subset", "default-always-allowed", "normalised", "comma-string", "not-subset", "root-not-subset", "sudo-any",
         "sudo-not-root", "orphan-needs-sudo", "period-needs-sudo", "negative-uses", "bad-type", "type-case",
         "custom-id", "not-assignable", "bad-cidr"],
)
async def test_create_rules(env: Env, caller_policies: list[str], data: dict[str, Any], expected: Any) -> None:
    caller = await env.token(policies=caller_policies)
    with expected as want:
        block = await env.token(caller["client_token"], **data)
        assert block["policies"] == want


#: (caller's create body, the child's create body, the child's policies): the default policy
#: and the subset rule at their edges (OpenBao's ``resolveTokenPolicies``).
DEFAULT_CASES: list[tuple[dict[str, Any], dict[str, Any], list[str]]] = [
    ({"policies": ["dev"], "no_default_policy": True}, {}, ["dev"]),  # the caller's own, no default added
    ({"policies": ["dev"], "no_default_policy": True}, {"policies": ["dev"]}, ["dev"]),  # nor to a subset
    ({"policies": ["dev"], "no_default_policy": True}, {"policies": ["default"]}, ["default"]),  # always allowed
    ({"policies": ["dev"]}, {"policies": ["dev"]}, ["default", "dev"]),
    ({"policies": ["dev"]}, {"policies": ["dev", "default"], "no_default_policy": True}, ["dev"]),
]


@pytest.mark.parametrize(("caller", "body", "policies"), DEFAULT_CASES)
async def test_the_default_policy_of_a_child(
    env: Env, caller: dict[str, Any], body: dict[str, Any], policies: list[str]
) -> None:
    made = await env.token(**caller)
    assert (await env.token(made["client_token"], **body))["policies"] == policies


async def test_root_stands_alone_and_unknown_policies_are_named(env: Env) -> None:
    resp = await env.call(env.root, "create", {"policies": ["root", "dev"]})
    assert resp is not None and resp.auth_block is not None and resp.auth_block["policies"] == ["root"]
    resp = await env.call(env.root, "create", {"policies": ["dev", "nope"], "ttl": "1h"})
    assert resp is not None and resp.warnings == ['Policy "nope" does not exist']
    resp = await env.call(env.root, "create", {"policies": ["default", "dev"], "no_default_policy": True})
    assert resp is not None and resp.auth_block is not None and resp.auth_block["policies"] == ["dev"]


@pytest.mark.parametrize(("body", "message"), [
    ({"type": "batch", "policies": ["dev"], "explicit_max_ttl": "1h"}, 'batch tokens cannot have "explicit_max_ttl" set'),
    ({"type": "batch", "policies": ["dev"], "num_uses": 2}, 'batch tokens cannot have "num_uses" set'),
    ({"type": "batch", "policies": ["dev"], "period": "1h"}, 'batch tokens cannot have "period" set'),
    ({"type": "batch", "policies": ["root"]}, "batch tokens cannot be root tokens"),
])
async def test_what_a_batch_token_cannot_have(env: Env, body: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        await env.call(env.root, "create", body)
    assert exc.value.messages == [message]


async def test_a_batch_token_is_never_renewable(env: Env) -> None:
    bodies: list[dict[str, Any]] = [{}, {"renewable": True}]
    for body in bodies:
        assert (await env.token(None, type="batch", policies=["dev"], ttl="1h", **body))["renewable"] is False


@pytest.mark.parametrize(("data", "ttl"), [
    ({"lease": "20m"}, 1200),  # the deprecated name of ttl
    ({"lease": "20m", "ttl": "30m"}, 1800),  # ttl wins
    ({"ttl": "1h", "explicit_max_ttl": "2h"}, 3600),  # a cap above the TTL changes nothing
    ({"policies": ["root"], "explicit_max_ttl": 1}, 1),  # a root token bound by a 1 s cap
])
async def test_create_ttl_edges(env: Env, data: dict[str, Any], ttl: int) -> None:
    resp = await env.call(env.root, "create", {"policies": ["dev"], **data})
    assert resp is not None and resp.auth_block is not None and resp.auth_block["lease_duration"] == ttl


async def test_a_token_that_never_expires(env: Env) -> None:
    """Not renewable, not CIDR-bound (Vault), named ``token`` when no name is given."""
    block = await env.token(bound_cidrs=["10.0.0.0/8"])
    assert block["lease_duration"] == 0 and block["renewable"] is False
    entry = await env.store.lookup(block["client_token"])
    assert entry is not None and entry.bound_cidrs == [] and entry.display_name == "token"


async def test_sudo_caller_orphan_and_period(env: Env) -> None:
    caller = await env.token(policies=["tokenadmin"])
    orphan = await env.token(caller["client_token"], no_parent=True)
    assert orphan["orphan"] is True
    periodic = await env.token(caller["client_token"], period="10m", ttl="1h")
    assert periodic["lease_duration"] == 600


async def test_create_orphan_needs_no_sudo(env: Env) -> None:
    caller = await env.token(policies=["dev"])
    resp = await env.call(caller["client_token"], "create-orphan", {"policies": ["dev"]})
    assert resp is not None and resp.auth_block is not None and resp.auth_block["orphan"] is True


@pytest.mark.parametrize(
    ("data", "ttl", "renewable", "warn"),
    [
        ({"policies": ["dev"]}, 3600, True, False),
        ({}, 0, False, False),  # inherits root: non-expiring
        ({"ttl": "90s"}, 90, True, False),
        ({"ttl": "5h"}, 7200, True, True),
        ({"ttl": "1h", "explicit_max_ttl": "10m"}, 600, True, True),
        ({"policies": ["root"]}, 0, False, False),
        ({"policies": ["root"], "explicit_max_ttl": "1m"}, 60, True, False),
        ({"ttl": "1h", "renewable": False}, 3600, False, False),
    ],
    ids=["default", "inherit-root", "ttl", "capped", "explicit-cap", "root-non-expiring", "root-explicit", "not-renewable"],
)
async def test_create_ttl(env: Env, data: dict[str, Any], ttl: int, renewable: bool, warn: bool) -> None:
    resp = await env.call(env.root, "create", data)
    assert resp is not None and resp.auth_block is not None
    assert resp.auth_block["lease_duration"] == ttl and resp.auth_block["renewable"] is renewable
    assert bool(resp.warnings) is warn
    if warn:
        assert "TTL value is capped accordingly" in resp.warnings[0]


async def test_expiring_root_cannot_create_non_expiring_root(env: Env) -> None:
    expiring_root = await env.token(policies=["root"], ttl="1h")
    with pytest.raises(InvalidRequest, match="^expiring root tokens cannot create non-expiring root tokens$"):
        await env.token(expiring_root["client_token"], policies=["root"])


async def test_display_name_sanitised(env: Env) -> None:
    block = await env.token(display_name="my app!")
    entry = await env.store.lookup(block["client_token"])
    assert entry is not None and entry.display_name == "token-my-app"


async def test_batch_tokens_via_create(env: Env) -> None:
    with pytest.raises(InvalidRequest, match="^batch tokens cannot be root tokens$"):
        await env.token(type="batch")
    batch = await env.token(type="batch", policies=["dev"])
    assert batch["client_token"].startswith("hvb.") and batch["token_type"] == "batch" and batch["accessor"] == ""
    for path in ("create", "create-orphan"):  # not even an orphan, which would outlive it (OpenBao 2.7.2)
        with pytest.raises(InvalidRequest, match="^batch tokens cannot create more tokens$"):
            await env.call(batch["client_token"], path, {"policies": ["dev"]})
    with pytest.raises(InvalidRequest, match="^batch tokens cannot be renewed$"):
        await env.call(batch["client_token"], "renew-self")
    with pytest.raises(InvalidRequest, match="^batch tokens cannot be revoked$"):
        await env.call(batch["client_token"], "revoke-self")
    looked = await env.call(batch["client_token"], "lookup-self", op=Operation.READ)
    assert looked is not None and looked.data is not None and looked.data["type"] == "batch"


async def test_batch_child_stops_with_parent(env: Env) -> None:
    parent = await env.token(policies=["dev"])
    batch = await env.token(parent["client_token"], type="batch")
    await env.store.authenticate(batch["client_token"], "127.0.0.1")
    await env.call(parent["client_token"], "revoke-self")
    with pytest.raises(PermissionDenied):
        await env.store.authenticate(batch["client_token"], "127.0.0.1")


async def test_revoke_self_takes_children(env: Env) -> None:
    parent = await env.token(policies=["dev"])
    child = await env.token(parent["client_token"])
    orphan = await env.call(parent["client_token"], "create-orphan", {})
    assert orphan is not None and orphan.auth_block is not None
    assert await env.call(parent["client_token"], "revoke-self") is None
    for b in (parent, child):
        with pytest.raises(PermissionDenied):
            await env.store.authenticate(b["client_token"], "127.0.0.1")
    await env.store.authenticate(orphan.auth_block["client_token"], "127.0.0.1")


async def test_lookup_variants(env: Env) -> None:
    block = await env.token(policies=["dev"], meta={"team": "a"})
    other = await env.call(env.root, "lookup", {"token": block["client_token"]})
    assert other is not None and other.data is not None
    assert other.data["id"] == block["client_token"] and other.data["meta"] == {"team": "a"}
    by_acc = await env.call(env.root, "lookup-accessor", {"accessor": block["accessor"]})
    assert by_acc is not None and by_acc.data is not None
    assert by_acc.data["id"] == "" and by_acc.data["accessor"] == block["accessor"]
    self_ = await env.call(block["client_token"], "lookup", {})
    assert self_ is not None and self_.data is not None and self_.data["id"] == block["client_token"]
    with pytest.raises(PermissionDenied, match="^bad token$"):
        await env.call(env.root, "lookup", {"token": "hvs.doesnotexist0000000000"})
    for malformed in ("hvb.a.b", "hvb..", "hvb.", "hvb.e30.AAAA"):  # row 10: OpenBao 2.7.2 answers 400 (a request: 500)
        with pytest.raises(PermissionDenied, match="^bad token$"):
            await env.call(env.root, "lookup", {"token": malformed})
    with pytest.raises(InvalidRequest, match="^invalid accessor$"):
        await env.call(env.root, "lookup-accessor", {"accessor": "nope"})
    with pytest.raises(InvalidRequest, match="^missing accessor$"):
        await env.call(env.root, "lookup-accessor", {})


async def test_lookup_does_not_consume_uses(env: Env) -> None:
    block = await env.token(policies=["dev"], num_uses=2)
    for _ in range(3):
        await env.call(env.root, "lookup", {"token": block["client_token"]})
    resp = await env.call(block["client_token"], "lookup-self", op=Operation.READ)
    assert resp is not None and resp.data is not None and resp.data["num_uses"] == 1


async def test_renew_self_token_created(env: Env) -> None:
    block = await env.token(policies=["dev"], ttl="10m")
    env.clock.now += 300
    resp = await env.call(block["client_token"], "renew-self", {"increment": "20m"})
    assert resp is not None and resp.auth_block is not None
    assert resp.auth_block["lease_duration"] == 1200 and resp.auth_block["client_token"] == block["client_token"]
    resp = await env.call(env.root, "renew", {"token": block["client_token"]})
    assert resp is not None and resp.auth_block is not None and resp.auth_block["lease_duration"] == 600
    with pytest.raises(InvalidRequest, match="^token not found$"):
        await env.call(env.root, "renew", {"token": "hvs.doesnotexist0000000000"})


@pytest.mark.parametrize(
    ("uses", "message"),
    [(1, "parent token lookup failed: no parent found"), (2, "restricted use token cannot generate child tokens")],
    ids=["last use", "uses left"],
)
@pytest.mark.parametrize("path", ["create", "create-orphan"])
async def test_a_use_limited_token_creates_no_tokens(env: Env, uses: int, message: str, path: str) -> None:
    """A use-limited token cannot escape its limit by minting an unlimited child (or orphan);
    OpenBao 2.7.2's texts, in its order (a last use is a token pending revocation)."""
    block = await env.token(policies=["root"], num_uses=uses)
    before = await env.store.list_accessors()
    with pytest.raises(InvalidRequest) as exc:
        await env.call(block["client_token"], path, {"policies": ["root"]})
    assert exc.value.messages == [message]
    assert await env.store.list_accessors() == ([a for a in before if a != block["accessor"]] if uses == 1 else before)


@pytest.mark.parametrize("path", ["renew-self", "renew"])
async def test_renewing_a_token_on_its_last_use_finds_no_token(env: Env, path: str) -> None:
    block = await env.token(policies=["dev"], num_uses=1)
    with pytest.raises(InvalidRequest) as exc:  # before the batch or renewable checks, as in Vault
        await env.call(block["client_token"], path, {"token": block["client_token"]})
    assert exc.value.messages == ["token not found"]


async def test_renew_not_renewable(env: Env) -> None:
    block = await env.token(policies=["dev"], renewable=False)
    with pytest.raises(InvalidRequest, match="^lease is not renewable$"):
        await env.call(block["client_token"], "renew-self")


class RenewingBackend(Backend):
    """A fake auth method whose renew hook re-reads a role's TTL."""

    def __init__(self) -> None:
        super().__init__()
        self.role_ttl: int | None = 120
        self.seen: list[Auth] = []
        self.renewed_paths: list[str] = []

    async def renew(self, req: Request, auth: Auth) -> Auth:
        self.seen.append(auth)
        self.renewed_paths.append(req.path)
        if self.role_ttl is None:
            raise InvalidRequest(f"role {auth.internal_data['role']} does not exist during renewal")
        auth.ttl = self.role_ttl
        return auth


def fake_table(backend: Backend) -> Any:
    """A mount table of two mounts, the token's second (found by its accessor, not its place)."""
    other = SimpleNamespace(entry=SimpleNamespace(path="oidc/", accessor="auth_oidc_00000000"), backend=Backend(),
                            storage=InMemoryStorage(), system=SYSTEM)
    entry = SimpleNamespace(path="jwt/", accessor=JWT.accessor)
    mount = SimpleNamespace(entry=entry, backend=backend, storage=InMemoryStorage(), system=SYSTEM)
    return SimpleNamespace(mounts={"oidc/": other, "jwt/": mount},
                           effective_ttls=lambda e: (JWT.default_lease_ttl, JWT.max_lease_ttl))


async def test_renew_login_token_calls_backend(env: Env) -> None:
    method = RenewingBackend()
    env.backend.mount_lookup = mount_table_lookup(lambda: fake_table(method))
    login, _ = await env.store.issue(
        Auth(policies=["dev"], alias=Alias("alice"), internal_data={"role": "r1"}, ttl=600), mount=JWT
    )
    resp = await env.call(login["client_token"], "renew-self")
    assert resp is not None and resp.auth_block is not None and resp.auth_block["lease_duration"] == 120
    assert method.seen[0].internal_data == {"role": "r1"}
    assert method.renewed_paths == ["login"]  # the token's path within its mount, as Vault sends a renewal
    method.role_ttl = None
    with pytest.raises(InvalidRequest, match="^role r1 does not exist during renewal$"):
        await env.call(login["client_token"], "renew-self")


async def test_a_backend_given_the_mount_table_renews_login_tokens(env: Env) -> None:
    """As the server makes it (``mounts``, the table fetched at each renewal)."""
    method = RenewingBackend()
    backend = TokenBackend(env.store, policies=env.policies, mounts=lambda: fake_table(method))
    login, _ = await env.store.issue(Auth(policies=["dev"], alias=Alias("alice"), ttl=600), mount=JWT)
    entry = await env.store.authenticate(login["client_token"], "127.0.0.1")
    req = Request(operation=Operation.UPDATE, path="renew-self", data={}, system=SYSTEM,
                  token={"entry": entry, "raw": login["client_token"]})
    resp = await backend.handle_request(req)
    assert resp is not None and resp.auth_block is not None and resp.auth_block["lease_duration"] == 120


async def test_an_entity_alias_needs_the_token_mounts_accessor(env: Env) -> None:
    """A token mount without an accessor (no mount table) cannot name the alias's entity."""
    await env.call(env.root, "roles/ci", {"allowed_entity_aliases": ["bob"]})
    entry = await env.store.authenticate(env.root, "127.0.0.1")
    req = Request(operation=Operation.UPDATE, path="create/ci", data={"entity_alias": "bob"},
                  system=StaticSystemView(default_lease_ttl=3600, max_lease_ttl=7200, mount_path="auth/token/",
                                           mount_accessor=""),
                  storage=env.mount_storage, token={"entry": entry, "raw": env.root})
    with pytest.raises(InvalidRequest) as exc:
        await env.backend.handle_request(req)
    assert exc.value.messages == ["auth token mount accessor not found"]


async def test_a_backend_without_policies_grants_no_sudo(env: Env) -> None:
    """No policy store to read: only a root token has sudo."""
    backend = TokenBackend(env.store)
    caller = await env.token(policies=["tokenadmin"])
    entry = await env.store.authenticate(caller["client_token"], "127.0.0.1")
    req = Request(operation=Operation.UPDATE, path="create", data={"no_parent": True}, system=SYSTEM,
                  token={"entry": entry, "raw": caller["client_token"]})
    with pytest.raises(InvalidRequest) as exc:
        await backend.handle_request(req)
    assert exc.value.messages == ["root or sudo privileges required to create orphan token"]


async def test_renew_login_token_backend_without_renew(env: Env) -> None:
    env.backend.mount_lookup = mount_table_lookup(lambda: fake_table(Backend()))
    login, _ = await env.store.issue(Auth(policies=["dev"], alias=Alias("alice")), mount=JWT)
    with pytest.raises(InvalidRequest, match="^this auth method does not support renewal$"):
        await env.call(login["client_token"], "renew-self")


async def test_renew_login_token_without_mount_lookup(env: Env) -> None:
    login, _ = await env.store.issue(Auth(policies=["dev"], alias=Alias("alice")), mount=JWT)
    with pytest.raises(InvalidRequest, match="^the auth method that issued this token is not available for renewal$"):
        await env.call(login["client_token"], "renew-self")


async def test_revoke_paths(env: Env) -> None:
    a = await env.token(policies=["dev"])
    b = await env.token(policies=["dev"])
    assert await env.call(env.root, "revoke-accessor", {"accessor": a["accessor"]}) is None
    assert await env.call(env.root, "revoke", {"token": b["client_token"]}) is None
    assert await env.call(env.root, "revoke", {"token": "hvs.unknown0000000000000000"}) is None
    for blk in (a, b):
        with pytest.raises(PermissionDenied):
            await env.store.authenticate(blk["client_token"], "127.0.0.1")
    # Revoking again is no error, as in Vault (`bao token revoke -accessor` of a revoked token):
    again = await env.call(env.root, "revoke-accessor", {"accessor": a["accessor"]})
    assert again is not None and again.warnings == ["No token found with this accessor"]


async def test_revoke_orphan(env: Env) -> None:
    parent = await env.token(policies=["dev"])
    child = await env.token(parent["client_token"])
    with pytest.raises(InvalidRequest, match="^root or sudo privileges required to revoke and orphan$"):
        await env.call(parent["client_token"], "revoke-orphan", {"token": parent["client_token"]})
    await env.call(env.root, "revoke-orphan", {"token": parent["client_token"]})
    entry = await env.store.authenticate(child["client_token"], "127.0.0.1")
    assert entry.orphan is True
    with pytest.raises(PermissionDenied):
        await env.store.authenticate(parent["client_token"], "127.0.0.1")
    with pytest.raises(InvalidRequest) as exc:  # unlike revoke, which succeeds for an unknown token
        await env.call(env.root, "revoke-orphan", {"token": parent["client_token"]})
    assert exc.value.messages == ["token to revoke not found"]


@pytest.mark.parametrize("path", ["renew", "revoke", "revoke-orphan"])
async def test_a_missing_token_is_named_before_privileges(env: Env, path: str) -> None:
    caller = await env.token(policies=["dev"])  # no sudo: revoke-orphan still names the missing token first
    with pytest.raises(InvalidRequest) as exc:
        await env.call(caller["client_token"], path, {})
    assert exc.value.messages == ["missing token ID"]


async def test_unknown_role_and_path(env: Env) -> None:
    with pytest.raises(InvalidRequest, match="^unknown role ci$"):
        await env.call(env.root, "create/ci", {})
    with pytest.raises(UnsupportedPath):
        await env.call(env.root, "roles/a/b", {})


async def test_tidy(env: Env) -> None:
    block = await env.token(policies=["dev"], ttl="1m")
    env.clock.now += 120
    rows = [k for k in await env.store.storage.list("sys/token/id/") if not k.endswith("/")]
    resp = await env.call(env.root, "tidy")
    assert resp is not None and resp.status == 202 and "Tidy operation" in resp.warnings[0]
    assert env.store._tidy is not None
    await env.store._tidy  # it runs in the background, as Vault's
    left = [k for k in await env.store.storage.list("sys/token/id/") if not k.endswith("/")]
    assert len(left) == len(rows) - 1  # the expired token's row went (only its own)
    assert await env.store.lookup_accessor(block["accessor"]) is None


async def test_one_tidy_at_a_time(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """As OpenBao: a tidy asked for while one runs starts nothing and says so (200); the answer
    never waits for the sweep (which took 4 ms a token when many had expired)."""
    release = asyncio.Event()
    sweeps = 0

    async def slow_sweep(*, due_only: bool = False) -> int:
        nonlocal sweeps
        sweeps += 1
        await release.wait()
        return 0

    monkeypatch.setattr(env.store, "sweep", slow_sweep)
    first = await env.call(env.root, "tidy")
    assert first is not None and first.status == 202
    second = await env.call(env.root, "tidy")
    assert second is not None and second.status is None and second.warnings == ["Tidy operation already in progress."]
    release.set()
    assert env.store._tidy is not None
    await env.store._tidy
    third = await env.call(env.root, "tidy")
    assert third is not None and third.status == 202
    assert env.store._tidy is not None
    await env.store._tidy
    assert sweeps == 2


async def test_missing_caller_token_denied(env: Env) -> None:
    req = Request(operation=Operation.READ, path="lookup-self", system=SYSTEM)
    with pytest.raises(PermissionDenied):
        await env.backend.handle_request(req)


async def test_request_token_as_dict_entry(env: Env) -> None:
    entry = await env.store.authenticate(env.root, "127.0.0.1")
    req = Request(operation=Operation.READ, path="lookup-self", system=SYSTEM, token={"entry": entry.to_dict(), "raw": env.root})
    resp = await env.backend.handle_request(req)
    assert resp is not None and resp.data is not None and resp.data["policies"] == ["root"]
    assert isinstance(TokenEntry.from_dict(entry.to_dict()), TokenEntry)


async def test_renew_accessor_and_list_accessors(env: Env) -> None:
    block = await env.token(policies=["dev"], ttl="10m")
    resp = await env.call(env.root, "renew-accessor", {"accessor": block["accessor"], "increment": "30m"})
    assert resp is not None and resp.auth_block is not None
    assert resp.auth_block["lease_duration"] == 1800 and resp.auth_block["client_token"] == ""
    with pytest.raises(InvalidRequest, match="^invalid accessor$"):
        await env.call(env.root, "renew-accessor", {"accessor": "nope"})
    for path in ("lookup-accessor", "renew-accessor", "revoke-accessor"):
        for body in ({}, {"accessor": ""}):
            with pytest.raises(InvalidRequest) as exc:
                await env.call(env.root, path, body)
            assert exc.value.messages == ["missing accessor"], (path, body)
    # Each renewal path with and without an increment (none: the token's own TTL, 10 minutes).
    for raw, path, body, ttl in (
        (block["client_token"], "renew", {"token": block["client_token"], "increment": "5m"}, 300),
        (block["client_token"], "renew", {"token": block["client_token"]}, 600),
        (env.root, "renew", {"token": block["client_token"], "increment": "4m"}, 240),
        (env.root, "renew-accessor", {"accessor": block["accessor"]}, 600),
    ):
        renewed = await env.call(raw, path, body)
        assert renewed is not None and renewed.auth_block is not None, (path, body)
        assert renewed.auth_block["lease_duration"] == ttl, (path, body)
    listed = await env.call(env.root, "accessors/", op=Operation.LIST)
    assert listed is not None and listed.data is not None and block["accessor"] in listed.data["keys"]
    with pytest.raises(PermissionDenied):
        await env.call(block["client_token"], "accessors/", op=Operation.LIST)


async def test_list_accessors_in_pages(env: Env) -> None:
    """``bao list -after=<accessor> -limit=<n> auth/token/accessors``: pages in row order, the
    same accessors as the whole list; a page needs sudo too (hashicorp/vault#10887)."""
    for _ in range(4):
        await env.token(policies=["dev"])
    whole = await env.call(env.root, "accessors/", op=Operation.LIST)
    assert whole is not None and whole.data is not None and len(whole.data["keys"]) == 5  # with the root token
    walked: list[str] = []
    after = ""
    while True:
        page = await env.call(env.root, "accessors/", {"after": after, "limit": "2"}, op=Operation.LIST)
        assert page is not None and page.data is not None and len(page.data["keys"]) <= 2 and not page.warnings
        walked += page.data["keys"]
        if len(page.data["keys"]) < 2:
            break
        after = page.data["keys"][-1]
    assert sorted(walked) == whole.data["keys"]
    first = await env.call(env.root, "accessors/", {"limit": 1}, op=Operation.LIST)  # a page from the start
    assert first is not None and first.data is not None and len(first.data["keys"]) == 1
    with pytest.raises(InvalidRequest, match='error converting input x for field "limit"'):
        await env.call(env.root, "accessors/", {"limit": "x"}, op=Operation.LIST)
    block = await env.token(policies=["dev"])
    with pytest.raises(PermissionDenied):
        await env.call(block["client_token"], "accessors/", {"limit": 1}, op=Operation.LIST)
