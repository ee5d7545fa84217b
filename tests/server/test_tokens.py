"""TokenStore: issuing, HMAC-only storage, expiry, CIDRs, num_uses, revocation, batch tokens."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest

from plugin.cidrutil import cidr_allows
from plugin.errors import InvalidRequest, PermissionDenied
from plugin.framework import Alias, Auth
from plugin.policyutil import sanitize_policies
from plugin.storage import InMemoryStorage
from server.tokens.entry import MountInfo, TokenEntry, resolve_token_type
from server.tokens.ids import ACCESSOR_LEN, SELECTOR_LEN, TOKEN_LEN
from server.tokens.store import ID_PREFIX, TokenStore
from server.tokens.ttl import calculate_ttl
from tests.server.tokenkit import JWT, T0, Clock, memory_of


def login(**kw: Any) -> Auth:
    kw.setdefault("policies", ["dev"])
    kw.setdefault("alias", Alias(name="alice"))
    kw.setdefault("metadata", {"role": "r1"})
    return Auth(**kw)


AUTH_KEYS = [
    "client_token", "accessor", "policies", "token_policies", "metadata", "lease_duration",
    "renewable", "entity_id", "token_type", "orphan", "mfa_requirement", "num_uses",
]


async def test_issue_auth_block_shape(store: TokenStore) -> None:
    block, warnings = await store.issue(login(), mount=JWT)
    assert list(block) == AUTH_KEYS
    assert block["client_token"].startswith("hvs.") and len(block["client_token"]) == TOKEN_LEN == 50
    assert len(block["accessor"]) == ACCESSOR_LEN == 32
    assert block["accessor"][:SELECTOR_LEN] == block["client_token"][4 : 4 + SELECTOR_LEN]
    assert block["policies"] == ["default", "dev"] == block["token_policies"]
    assert block["metadata"] == {"role": "r1"}
    assert block["lease_duration"] == 3600 and block["renewable"] is True
    assert block["token_type"] == "service" and block["orphan"] is True
    assert block["mfa_requirement"] is None and block["num_uses"] == 0
    assert warnings == []
    entry = await store.authenticate(block["client_token"], "127.0.0.1")
    assert entry.display_name == "jwt-alice" and entry.path == "auth/jwt/login"


@pytest.mark.parametrize("token_type", ["service", "batch"])
async def test_response_metadata_never_reaches_the_store(store: TokenStore, token_type: str) -> None:
    """Issue 12 (``oauth2_metadata``): the IdP's tokens go to the caller only (the HTTP edge
    adds them to the envelope: tests/server/test_app.py), never into storage, a batch token
    or the store's auth block (what the audit log records); token lookup does not show them."""
    secret = "idp-access-token-" + "x" * 40
    block, _ = await store.issue(login(response_metadata={"oauth2_access_token": secret}, token_type=token_type),
                                 mount=JWT)
    assert block["metadata"] == {"role": "r1"}
    assert secret not in json.dumps(memory_of(store).dump())
    assert secret not in block["client_token"]
    entry = await store.authenticate(block["client_token"], "127.0.0.1")
    assert entry.meta == {"role": "r1"}  # a batch token carries its entry's metadata: without the secret


async def test_entity_id_stable_per_mount_and_alias(store: TokenStore) -> None:
    a, _ = await store.issue(login(), mount=JWT)
    b, _ = await store.issue(login(), mount=JWT)
    c, _ = await store.issue(login(alias=Alias(name="bob")), mount=JWT)
    other = MountInfo("auth/jwt2/", "auth_jwt_ffff0000", 3600, 7200)
    d, _ = await store.issue(login(), mount=other)
    assert a["entity_id"] == b["entity_id"]
    assert len({a["entity_id"], c["entity_id"], d["entity_id"]}) == 3


@pytest.mark.parametrize(
    ("policies", "no_default", "expected"),
    [
        ([" Dev ", "dev", "OPS"], False, nullcontext(["default", "dev", "ops"])),
        (["dev"], True, nullcontext(["dev"])),
        ([], False, nullcontext(["default"])),
        ([" root"], False, pytest.raises(InvalidRequest, match="auth methods cannot create root tokens")),
        (["Root "], True, pytest.raises(InvalidRequest, match="auth methods cannot create root tokens")),
        (["response-wrapping"], False, pytest.raises(InvalidRequest, match='cannot assign policy "response-wrapping"')),
        (["control-group"], False, pytest.raises(InvalidRequest, match='cannot assign policy "control-group"')),
    ],
    ids=["normalised", "no-default", "empty", "root-space", "root-case", "response-wrapping", "control-group"],
)
async def test_issue_policies(store: TokenStore, policies: list[str], no_default: bool, expected: Any) -> None:
    with expected as want:
        block, _ = await store.issue(login(policies=policies, no_default_policy=no_default), mount=JWT)
        assert block["policies"] == want


@pytest.mark.parametrize(
    ("kw", "ttl", "warning"),
    [
        ({}, 3600, None),
        ({"ttl": 60}, 60, None),
        ({"ttl": 9000}, 7200, 'TTL of "2h30m" exceeded the effective max_ttl of "2h"; TTL value is capped accordingly'),
        ({"ttl": 900, "max_ttl": 600}, 600, 'TTL of "15m" exceeded the effective max_ttl of "10m"'),
        ({"ttl": 900, "explicit_max_ttl": 300}, 300, "exceeded the effective max_ttl"),
        ({"period": 120}, 120, None),
        ({"period": 10000}, 7200, 'period of "2h46m40s" exceeded the effective max_ttl of "2h"'),
    ],
    ids=["mount-default", "role-ttl", "capped-by-mount-max", "capped-by-role-max", "capped-by-explicit", "period", "period-capped"],
)
async def test_issue_ttl(store: TokenStore, kw: dict[str, int], ttl: int, warning: str | None) -> None:
    block, warnings = await store.issue(login(**kw), mount=JWT)
    assert block["lease_duration"] == ttl
    if warning is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warning in warnings[0]


async def test_storage_holds_no_raw_token(store: TokenStore) -> None:
    raws = [(await store.issue(login(), mount=JWT))[0]["client_token"] for _ in range(3)]
    root = await store.create_root()
    child, _ = await store.issue(login(), mount=JWT, parent=await store.authenticate(root, "10.0.0.1"))
    raws += [root, child["client_token"]]
    dump = json.dumps(memory_of(store).dump())
    for raw in raws:
        secret = raw[4 + SELECTOR_LEN :]
        assert raw not in dump and raw[4:] not in dump and secret not in dump
    keys = list(memory_of(store).dump())
    assert any(k.startswith("sys/token/id/") for k in keys)
    assert not any(k.startswith("sys/token/accessor/") for k in keys)  # one row per token
    assert any(k.startswith("sys/token/parent/") for k in keys)


async def test_one_row_per_service_login(store: TokenStore) -> None:
    before = set(memory_of(store).dump())
    block, _ = await store.issue(login(), mount=JWT)
    raw = block["client_token"]
    selector = raw[4 : 4 + SELECTOR_LEN]
    assert set(memory_of(store).dump()) - before == {ID_PREFIX + selector}
    row = await store.storage.get(ID_PREFIX + selector)
    assert row is not None
    assert row["verifier"] == store.hash(raw) and row["id_hash"] == selector
    assert row["accessor"] == block["accessor"]
    entry = await store.lookup_accessor(block["accessor"])
    assert entry is not None and entry.policies == ["default", "dev"]
    # a child token adds its parent index row, as before
    child, _ = await store.issue(login(), mount=JWT, parent=entry)
    child_selector = child["client_token"][4 : 4 + SELECTOR_LEN]
    added = set(memory_of(store).dump()) - before - {ID_PREFIX + selector}
    assert added == {ID_PREFIX + child_selector, f"sys/token/parent/{selector}/{child_selector}"}


@pytest.mark.parametrize(
    "raw",
    ["", "hvs.nope", "hvb.x", "hvb.a.b", "x" * 10000, "hvs." + "A" * 24],
    ids=["empty", "unknown", "batch-no-sig", "batch-garbage", "huge", "well-formed-unknown"],
)
async def test_authenticate_unknown(store: TokenStore, raw: str) -> None:
    with pytest.raises(PermissionDenied, match="^permission denied$"):
        await store.authenticate(raw, "127.0.0.1")


async def test_expiry_checked_on_use_without_sweeper(store: TokenStore, clock: Clock) -> None:
    block, _ = await store.issue(login(ttl=1), mount=JWT)
    raw = block["client_token"]
    clock.now += 0.5
    await store.authenticate(raw, "127.0.0.1")
    clock.now += 0.6
    with pytest.raises(PermissionDenied):
        await store.authenticate(raw, "127.0.0.1")
    # deleted lazily
    assert await store.storage.get("sys/token/id/" + raw[4 : 4 + SELECTOR_LEN]) is None
    assert await store.lookup_accessor(block["accessor"]) is None


@pytest.mark.parametrize(
    ("cidrs", "remote", "ok"),
    [
        (["10.0.0.0/8"], "10.1.2.3", True),
        (["10.0.0.0/8"], "192.168.0.1", False),
        (["10.0.0.0/8", "192.168.0.0/16"], "192.168.3.4", True),
        (["10.0.0.5"], "10.0.0.5", True),
        (["10.0.0.0/8"], "::ffff:10.0.0.1", True),
        (["2001:db8::/32"], "2001:db8::1", True),
        (["10.0.0.0/8"], "not-an-ip", False),
        (["10.0.0.0/8"], "", False),
    ],
    ids=["in", "out", "second", "bare-address", "v4-mapped", "v6", "garbage-remote", "no-remote"],
)
async def test_bound_cidrs_on_use(store: TokenStore, cidrs: list[str], remote: str, ok: bool) -> None:
    block, _ = await store.issue(login(bound_cidrs=cidrs), mount=JWT)
    assert cidr_allows(cidrs, remote) is ok
    with nullcontext() if ok else pytest.raises(PermissionDenied):
        await store.authenticate(block["client_token"], remote)


async def test_bad_bound_cidr_refused_at_issue(store: TokenStore) -> None:
    with pytest.raises(InvalidRequest, match='error parsing address "10.0.0.0/99"'):
        await store.issue(login(bound_cidrs=["10.0.0.0/99"]), mount=JWT)


async def test_non_expiring_root_exempt_from_cidrs(store: TokenStore) -> None:
    root = await store.create_root()
    entry = await store.authenticate(root, "10.0.0.1")
    entry.bound_cidrs = ["192.168.0.0/16"]
    await store.storage.put("sys/token/id/" + entry.id_hash, entry.to_dict())
    assert (await store.authenticate(root, "10.0.0.1")).is_root()


async def test_num_uses_race_exactly_three(store: TokenStore) -> None:
    block, _ = await store.issue(login(num_uses=3), mount=JWT)
    raw = block["client_token"]
    assert block["num_uses"] == 3

    async def one() -> bool:
        try:
            entry = await store.authenticate(raw, "127.0.0.1")
        except PermissionDenied:
            return False
        await asyncio.sleep(0)
        await store.release(entry)
        return True

    results = await asyncio.gather(*(one() for _ in range(50)))
    assert results.count(True) == 3 and results.count(False) == 47
    assert await store.lookup(raw) is None
    assert await store.storage.list("sys/token/id/") == []


async def test_num_uses_countdown_and_pending(store: TokenStore, clock: Clock) -> None:
    block, _ = await store.issue(login(num_uses=2), mount=JWT)
    raw = block["client_token"]
    assert (await store.authenticate(raw, "1.2.3.4")).num_uses == 1
    last = await store.authenticate(raw, "1.2.3.4")
    assert last.num_uses == -1
    with pytest.raises(PermissionDenied):
        await store.authenticate(raw, "1.2.3.4")
    # release was never called: the sweeper removes it after the grace period
    assert await store.sweep() == 0
    clock.now += 60
    assert await store.sweep() == 1
    assert await store.storage.list("sys/token/id/") == []


async def test_child_revoked_with_parent(store: TokenStore) -> None:
    root = await store.authenticate(await store.create_root(), "127.0.0.1")
    parent_block, _ = await store.issue(login(), mount=JWT, parent=root)
    parent = await store.authenticate(parent_block["client_token"], "127.0.0.1")
    child_block, _ = await store.issue(login(), mount=JWT, parent=parent)
    grandchild_block, _ = await store.issue(login(), mount=JWT, parent=await store.lookup(child_block["client_token"]))
    assert child_block["orphan"] is False
    assert await store.revoke(parent) == 3
    for b in (parent_block, child_block, grandchild_block):
        assert await store.lookup(b["client_token"]) is None
    assert await store.lookup_accessor(child_block["accessor"]) is None
    assert [k for k in memory_of(store).dump() if "parent" in k] == []


async def test_child_dies_when_parent_expires(store: TokenStore, clock: Clock) -> None:
    parent_block, _ = await store.issue(login(ttl=10), mount=JWT)
    parent = await store.authenticate(parent_block["client_token"], "127.0.0.1")
    child_block, _ = await store.issue(login(ttl=3600), mount=JWT, parent=parent)
    clock.now += 11
    with pytest.raises(PermissionDenied):
        await store.authenticate(child_block["client_token"], "127.0.0.1")


async def test_a_sweep_removes_a_backlog_of_expired_trees_in_batches(store: TokenStore, clock: Clock) -> None:
    """More dead tokens than one revocation batch (64), each with a live-TTL child: the sweep
    counts each dead token it finds once and leaves no row behind; a token still in its TTL
    stays."""
    parents = [(await store.issue(login(ttl=60), mount=JWT))[0]["client_token"] for _ in range(150)]
    for raw in parents[:20]:
        parent = await store.authenticate(raw, "127.0.0.1")
        await store.issue(login(ttl=30), mount=JWT, parent=parent)
    keep, _ = await store.issue(login(ttl=7200), mount=JWT)
    clock.now += 120
    removed = await store.sweep()
    assert 150 <= removed <= 170  # a child may be found dead before its parent's tree is gone
    assert await store.storage.list("sys/token/id/") == [keep["client_token"][4:4 + SELECTOR_LEN]]
    assert (await store.authenticate(keep["client_token"], "127.0.0.1")).ttl == 7200


async def test_a_childs_use_decodes_its_parents_row_once_per_version(store: TokenStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every use of a child token checks its parents are alive; each parent's stored row is
    decoded once per stored version, not at every use (it cost lookup-self 13 % of its CPU),
    and a parent revoked or changed in storage is seen at the next use."""
    root = await store.authenticate(await store.create_root(), "127.0.0.1")
    parent_block, _ = await store.issue(login(), mount=JWT, parent=root)
    parent = await store.authenticate(parent_block["client_token"], "127.0.0.1")
    child_block, _ = await store.issue(login(), mount=JWT, parent=parent)
    decoded: list[str] = []
    original = TokenEntry.from_dict

    def counting(data: dict[str, Any]) -> TokenEntry:
        decoded.append(str(data.get("accessor", "")))
        return original(data)

    monkeypatch.setattr(TokenEntry, "from_dict", staticmethod(counting))
    for _ in range(5):
        assert await store.lookup(child_block["client_token"]) is not None
    assert len(decoded) <= 3  # child, parent and root, at most once each
    decoded.clear()
    for _ in range(5):
        assert await store.lookup(child_block["client_token"]) is not None
    assert decoded == []
    memory = memory_of(store)
    rows = {k: await memory.get(k) for k in memory.dump() if k.startswith(ID_PREFIX)}
    (row,) = [k for k, v in rows.items() if isinstance(v, dict) and v["accessor"] == parent.accessor]
    await memory.delete(row)  # the parent's row gone (its children's index rows left in place)
    assert await store.lookup(child_block["client_token"]) is None


async def test_revoke_orphan_keeps_children(store: TokenStore) -> None:
    parent_block, _ = await store.issue(login(), mount=JWT)
    parent = await store.lookup(parent_block["client_token"])
    assert parent is not None
    child_block, _ = await store.issue(login(), mount=JWT, parent=parent)
    await store.revoke_orphan(parent)
    assert await store.lookup(parent_block["client_token"]) is None
    child = await store.authenticate(child_block["client_token"], "127.0.0.1")
    assert child.orphan is True and child.parent is None


async def test_revoke_accessor(store: TokenStore) -> None:
    block, _ = await store.issue(login(), mount=JWT)
    assert await store.revoke_accessor(block["accessor"]) is True
    assert await store.revoke_accessor(block["accessor"]) is False
    with pytest.raises(PermissionDenied):
        await store.authenticate(block["client_token"], "127.0.0.1")


async def test_revoke_mount_kills_service_and_batch(store: TokenStore, clock: Clock) -> None:
    svc, _ = await store.issue(login(), mount=JWT)
    batch, _ = await store.issue(login(token_type="batch"), mount=JWT)
    other_mount = MountInfo("auth/oidc/", "auth_oidc_00000001", 3600, 7200)
    other, _ = await store.issue(login(), mount=other_mount)
    await store.authenticate(batch["client_token"], "127.0.0.1")
    clock.now += 1
    assert await store.revoke_mount(JWT.accessor) == 1
    for b in (svc, batch):
        with pytest.raises(PermissionDenied):
            await store.authenticate(b["client_token"], "127.0.0.1")
    await store.authenticate(other["client_token"], "127.0.0.1")


async def test_batch_token_is_stateless(store: TokenStore) -> None:
    before = dict(memory_of(store).dump())
    block, _ = await store.issue(login(token_type="batch", bound_cidrs=["10.0.0.0/8"]), mount=JWT)
    assert memory_of(store).dump() == before
    raw = block["client_token"]
    assert raw.startswith("hvb.") and block["renewable"] is False and block["accessor"] == ""
    assert block["token_type"] == "batch"
    entry = await store.authenticate(raw, "10.9.9.9")
    assert entry.type == "batch" and entry.policies == ["default", "dev"] and entry.meta == {"role": "r1"}
    with pytest.raises(PermissionDenied):
        await store.authenticate(raw, "192.168.1.1")


def _tamper_payload(raw: str) -> str:
    body, sig = raw[4:].split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload["p"] = ["root"]
    new = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    return "hvb." + new + "." + sig


@pytest.mark.parametrize(
    "mutate",
    [
        _tamper_payload,
        lambda raw: raw[:-2] + ("AA" if raw[-2:] != "AA" else "BB"),
        lambda raw: raw.rsplit(".", 1)[0],
        lambda raw: raw + ".x",
    ],
    ids=["payload-root", "signature", "no-signature", "extra-part"],
)
async def test_batch_token_tamper_denied(store: TokenStore, mutate: Callable[[str], str]) -> None:
    block, _ = await store.issue(login(token_type="batch"), mount=JWT)
    with pytest.raises(PermissionDenied, match="^permission denied$"):
        await store.authenticate(mutate(block["client_token"]), "127.0.0.1")


async def test_batch_token_expires(store: TokenStore, clock: Clock) -> None:
    block, _ = await store.issue(login(token_type="batch", ttl=5), mount=JWT)
    clock.now += 5
    with pytest.raises(PermissionDenied):
        await store.authenticate(block["client_token"], "127.0.0.1")


async def test_a_batch_token_keeps_no_explicit_max_ttl(store: TokenStore) -> None:
    """The role's explicit max caps the batch token's TTL, and the token keeps none of it
    (Vault's batch tokens carry no ExplicitMaxTTL: lookup shows 0, OpenBao 2.7.2 side by side);
    a service token keeps it."""
    for token_type, kept in (("batch", 0), ("service", 600)):
        block, _ = await store.issue(login(token_type=token_type, ttl=3600, explicit_max_ttl=600), mount=JWT)
        entry = await store.lookup(block["client_token"])
        assert entry is not None and (entry.ttl, entry.explicit_max_ttl) == (600, kept)
        assert store.lookup_data(entry, block["client_token"])["explicit_max_ttl"] == kept


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"num_uses": 2}, "batch tokens cannot have a limited number of uses"),
        ({"period": 60}, "batch tokens cannot be periodic"),
    ],
    ids=["num-uses", "period"],
)
async def test_batch_token_refusals(store: TokenStore, kw: dict[str, int], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        await store.issue(login(token_type="batch", **kw), mount=JWT)


async def test_batch_not_renewable_nor_revocable(store: TokenStore) -> None:
    block, _ = await store.issue(login(token_type="batch"), mount=JWT)
    entry = await store.lookup(block["client_token"])
    assert entry is not None
    with pytest.raises(InvalidRequest, match="batch tokens cannot be renewed"):
        await store.renew(entry)
    with pytest.raises(InvalidRequest, match="batch tokens cannot be revoked"):
        await store.revoke(entry)


async def test_salt_and_batch_key_survive_restart(clock: Clock) -> None:
    storage = InMemoryStorage()
    a = TokenStore(storage, clock=clock)
    await a.start(sweep=False)
    svc, _ = await a.issue(login(), mount=JWT)
    batch, _ = await a.issue(login(token_type="batch"), mount=JWT)
    b = TokenStore(storage, clock=clock)
    await b.start(sweep=False)
    await b.authenticate(svc["client_token"], "127.0.0.1")
    await b.authenticate(batch["client_token"], "127.0.0.1")


async def test_root_token(store: TokenStore) -> None:
    raw = await store.create_root("root")
    assert await store.create_root("root") == "root"
    entry = await store.authenticate("root", "127.0.0.1")
    assert entry.policies == ["root"] and entry.ttl == 0 and entry.renewable is False
    data = store.lookup_data(entry, raw)
    assert data["expire_time"] is None and data["ttl"] == 0 and data["path"] == "auth/token/root"
    assert data["id"] == "root" and data["meta"] is None and data["display_name"] == "root"
    with pytest.raises(InvalidRequest, match="lease is not renewable"):
        await store.renew(entry)


async def test_lookup_data_fields(store: TokenStore, clock: Clock) -> None:
    block, _ = await store.issue(login(ttl=600, bound_cidrs=["10.0.0.0/8"], period=0), mount=JWT)
    clock.now += 100
    entry = await store.lookup(block["client_token"])
    assert entry is not None
    data = store.lookup_data(entry, block["client_token"])
    assert data["ttl"] == 500 and data["creation_ttl"] == 600
    assert data["creation_time"] == int(T0)
    assert data["expire_time"].endswith("Z") and data["issue_time"].endswith("Z")
    assert data["bound_cidrs"] == ["10.0.0.0/8"] and "period" not in data
    assert data["accessor"] == block["accessor"] and data["type"] == "service"
    assert store.lookup_data(entry)["id"] == ""


async def test_renew_without_hook(store: TokenStore, clock: Clock) -> None:
    block, _ = await store.issue(login(ttl=600), mount=JWT)
    raw = block["client_token"]
    clock.now += 500
    entry = await store.authenticate(raw, "127.0.0.1")
    renewed, warnings = await store.renew(entry, raw_token=raw, mount=JWT)
    assert renewed["lease_duration"] == 600 and renewed["client_token"] == raw and warnings == []
    clock.now += 550
    entry = await store.authenticate(raw, "127.0.0.1")  # would have expired without renewal
    renewed, warnings = await store.renew(entry, 7200, mount=JWT)
    # max TTL 7200 from issue; 1050 s have passed
    assert renewed["lease_duration"] == 7200 - 1050
    assert "TTL value is capped accordingly" in warnings[0]
    clock.now += 7200 - 1050
    with pytest.raises(PermissionDenied):
        await store.authenticate(raw, "127.0.0.1")


async def test_renew_calls_hook_with_rebuilt_auth(store: TokenStore) -> None:
    block, _ = await store.issue(login(ttl=600, internal_data={"role": "r1"}), mount=JWT)
    seen: list[Auth] = []

    async def hook(entry: TokenEntry) -> Auth:
        auth = entry.to_auth()
        seen.append(auth)
        auth.ttl, auth.period = 60, 0
        return auth

    entry = await store.lookup(block["client_token"])
    assert entry is not None
    renewed, _ = await store.renew(entry, mount=JWT, renew_hook=hook)
    assert renewed["lease_duration"] == 60
    assert seen[0].internal_data == {"role": "r1"} and seen[0].policies == ["default", "dev"]
    assert seen[0].metadata == {"role": "r1"}


async def test_renew_hook_refusal_propagates(store: TokenStore) -> None:
    block, _ = await store.issue(login(), mount=JWT)

    async def hook(entry: TokenEntry) -> Auth:
        raise InvalidRequest("role r1 does not exist during renewal")

    entry = await store.lookup(block["client_token"])
    assert entry is not None
    with pytest.raises(InvalidRequest, match="does not exist during renewal"):
        await store.renew(entry, mount=JWT, renew_hook=hook)


async def test_renew_not_renewable(store: TokenStore) -> None:
    block, _ = await store.issue(login(renewable=False), mount=JWT)
    entry = await store.lookup(block["client_token"])
    assert entry is not None
    with pytest.raises(InvalidRequest, match="lease is not renewable"):
        await store.renew(entry)


async def test_sweep_removes_expired(store: TokenStore, clock: Clock) -> None:
    short, _ = await store.issue(login(ttl=10), mount=JWT)
    long, _ = await store.issue(login(ttl=1000), mount=JWT)
    clock.now += 20
    assert await store.sweep() == 1
    assert await store.lookup(long["client_token"]) is not None
    assert len(await store.storage.list("sys/token/id/")) == 1
    assert await store.lookup_accessor(short["accessor"]) is None


async def test_sweeper_task_starts_and_stops(clock: Clock) -> None:
    s = TokenStore(InMemoryStorage(), clock=clock, sweep_interval=0.01)
    await s.start()
    block, _ = await s.issue(login(ttl=10), mount=JWT)
    clock.now += 20
    for _ in range(200):
        if not await s.storage.list("sys/token/id/"):
            break
        await asyncio.sleep(0.01)
    await s.close()
    assert await s.storage.list("sys/token/id/") == []
    assert block["client_token"]


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"now": T0, "default_ttl": 100, "mount_max": 1000}, (100, 0)),
        ({"now": T0, "default_ttl": 100, "mount_max": 1000, "increment": 50, "backend_ttl": 70}, (50, 0)),
        ({"now": T0 + 950, "default_ttl": 100, "mount_max": 1000, "start": T0}, (50, 1)),
        ({"now": T0, "default_ttl": 100, "mount_max": 1000, "period": 300, "explicit_max": 200}, (200, 1)),
    ],
    ids=["default", "increment-wins", "capped-from-start", "period-vs-explicit"],
)
def test_calculate_ttl(kw: dict[str, Any], expected: tuple[int, int]) -> None:
    ttl, warnings = calculate_ttl(**kw)
    assert (ttl, len(warnings)) == expected


def test_calculate_ttl_past_max() -> None:
    with pytest.raises(InvalidRequest, match="past the max TTL, cannot renew"):
        calculate_ttl(now=T0 + 1000, default_ttl=100, mount_max=1000, start=T0)


def test_sanitize_policies() -> None:
    assert sanitize_policies([" B", "a", "", "b "], add_default=True) == ["a", "b", "default"]
    assert sanitize_policies(["root"], add_default=True) == ["root"]


@pytest.mark.parametrize(
    ("auth_type", "mount_type", "expected"),
    [
        ("default", "default-service", "service"),
        ("default", "default-batch", "batch"),
        ("batch", "default-service", "batch"),
        ("service", "default-batch", "service"),
        ("batch", "service", "service"),
        ("service", "batch", "batch"),
        ("", "", "service"),
    ],
    ids=["default", "default-batch-mount", "role-batch", "role-service", "mount-forces-service",
         "mount-forces-batch", "empty"],
)
def test_resolve_token_type(auth_type: str, mount_type: str, expected: str) -> None:
    assert resolve_token_type(auth_type, mount_type) == expected


def test_resolve_token_type_invalid() -> None:
    with pytest.raises(InvalidRequest, match='invalid token type "weird"'):
        resolve_token_type("weird")


async def test_mount_token_type_applies_at_issue(store: TokenStore) -> None:
    batch_mount = MountInfo("auth/jwt/", JWT.accessor, 3600, 7200, token_type="default-batch")
    block, _ = await store.issue(login(), mount=batch_mount)
    assert block["token_type"] == "batch" and block["client_token"].startswith("hvb.")


@pytest.mark.parametrize(
    ("role_policies", "ok"),
    [(["dev"], True), (["DEV", "default"], True), (["dev", "ops"], False), ([], False)],
    ids=["same", "same-normalised", "grown", "shrunk"],
)
async def test_renew_refused_when_role_policies_changed(store: TokenStore, role_policies: list[str], ok: bool) -> None:
    block, _ = await store.issue(login(), mount=JWT)

    async def hook(entry: TokenEntry) -> Auth:
        auth = entry.to_auth()
        auth.policies = role_policies
        return auth

    entry = await store.lookup(block["client_token"])
    assert entry is not None
    with nullcontext() if ok else pytest.raises(InvalidRequest, match="policies have changed, not renewing"):
        await store.renew(entry, mount=JWT, renew_hook=hook)


async def test_mount_revocation_by_another_node_seen_after_invalidate(clock: Clock) -> None:
    storage = InMemoryStorage()
    node_a, node_b = TokenStore(storage, clock=clock), TokenStore(storage, clock=clock)
    await node_a.start(sweep=False)
    await node_b.start(sweep=False)
    batch, _ = await node_a.issue(login(token_type="batch"), mount=JWT)
    await node_b.authenticate(batch["client_token"], "127.0.0.1")  # caches "no epoch"
    clock.now += 1
    await node_a.revoke_mount(JWT.accessor)
    node_b.invalidate("sys/token/mount-epoch/" + JWT.accessor)
    with pytest.raises(PermissionDenied):
        await node_b.authenticate(batch["client_token"], "127.0.0.1")


async def test_sqlite_num_uses_race_and_no_raw_token_on_disk(tmp_path: Path, clock: Clock) -> None:
    """The same guarantees on the real engine, whose update() crosses a writer thread."""
    from server.storage import open_storage

    path = tmp_path / "tokens.db"
    storage = await open_storage({"type": "sqlite", "path": str(path)})
    try:
        s = TokenStore(storage, clock=clock)
        await s.start(sweep=False)
        block, _ = await s.issue(login(num_uses=3), mount=JWT)
        keep, _ = await s.issue(login(), mount=JWT)
        raw = block["client_token"]

        async def one() -> bool:
            try:
                await s.release(await s.authenticate(raw, "127.0.0.1"))
            except PermissionDenied:
                return False
            return True

        results = await asyncio.gather(*(one() for _ in range(50)))
        assert results.count(True) == 3
        await s.authenticate(keep["client_token"], "127.0.0.1")
    finally:
        await storage.close()
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert keep["client_token"].encode() not in on_disk and raw.encode() not in on_disk
    assert keep["client_token"][4:].encode() not in on_disk
    assert keep["accessor"].encode() in on_disk  # the scan does see stored strings


@pytest.mark.parametrize("token_id", ["", "has space", "hvb.looks-batch", "x" * 300, "tab\t"], ids=["empty", "space", "batch-prefix", "long", "control"])
async def test_create_root_refuses_bad_ids(store: TokenStore, token_id: str) -> None:
    with pytest.raises(InvalidRequest, match="invalid root token id"):
        await store.create_root(token_id)


async def test_oversized_batch_token_refused_at_issue(store: TokenStore) -> None:
    meta = {f"k{i}": "v" * 100 for i in range(100)}
    with pytest.raises(InvalidRequest, match="batch token would be .* bytes"):
        await store.issue(login(token_type="batch", metadata=meta), mount=JWT)


# -- decoded-entry cache on the SQLite engine (keyed on the cached bytes' identity) --------
async def _bump_policies(s: TokenStore, raw: str, entry: TokenEntry) -> None:
    await s.storage.update(ID_PREFIX + entry.id_hash, lambda old: {**old, "policies": ["default", "ops"]})


async def _use_once(s: TokenStore, raw: str, entry: TokenEntry) -> None:
    await s.authenticate(raw, "127.0.0.1")


async def _revoke(s: TokenStore, raw: str, entry: TokenEntry) -> None:
    await s.revoke(entry)


@pytest.mark.parametrize(
    ("write", "num_uses", "check"),
    [
        (_bump_policies, 0, lambda e: e is not None and e.policies == ["default", "ops"]),
        (_use_once, 5, lambda e: e is not None and e.num_uses == 4),
        (_revoke, 0, lambda e: e is None),
    ],
    ids=["policies rewritten", "one use consumed", "revoked"],
)
async def test_sqlite_lookup_sees_every_write(
    tmp_path: Path, clock: Clock, write: Callable[[TokenStore, str, TokenEntry], Awaitable[None]], num_uses: int,
    check: Callable[[TokenEntry | None], bool],
) -> None:
    from server.storage import open_storage

    storage = await open_storage({"type": "sqlite", "path": str(tmp_path / "t.db")})
    try:
        s = TokenStore(storage, clock=clock)
        await s.start(sweep=False)
        block, _ = await s.issue(login(num_uses=num_uses), mount=JWT)
        raw = block["client_token"]
        first = await s.lookup(raw)
        assert first is not None and await s.lookup(raw) is first  # decoded once, then shared
        await write(s, raw, first)
        assert check(await s.lookup(raw))
        assert first.policies == ["default", "dev"] and first.num_uses == num_uses  # never mutated
    finally:
        await storage.close()


async def test_sqlite_decoded_entries_are_bounded(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    import server.tokens.store as tokens_mod
    from server.storage import open_storage

    monkeypatch.setattr(tokens_mod, "DECODED_ENTRIES", 3)
    storage = await open_storage({"type": "sqlite", "path": str(tmp_path / "b.db")})
    try:
        s = TokenStore(storage, clock=clock)
        await s.start(sweep=False)
        raws = [(await s.issue(login(), mount=JWT))[0]["client_token"] for _ in range(5)]
        entries = [await s.lookup(raw) for raw in raws]
        assert all(e is not None for e in entries)
        assert len(s._decoded) == 3
        again = [await s.lookup(raw) for raw in raws]
        assert [a and a.id_hash for a in again] == [e and e.id_hash for e in entries]
    finally:
        await storage.close()
