"""Selector tokens: one row per service token, found by a time-ordered selector, verified by HMAC.

Also the tokens stored by the previous layout (``sys/token/id/<hmac>`` + an accessor index
row), which must keep working after an upgrade.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from plugin.errors import InvalidRequest, PermissionDenied
from plugin.framework import Alias, Auth
from plugin.storage import InMemoryStorage
from server.storage import Engine
from server.tokens.entry import MountInfo, TokenEntry
from server.tokens.ids import (
    ACCESSOR_LEN,
    SELECTOR_LEN,
    TOKEN_LEN,
    accessor_selector,
    mint_ids,
    selector_due,
    selector_time,
    token_selector,
)
from server.tokens.store import ACCESSOR_PREFIX, ID_PREFIX, PARENT_PREFIX, TokenStore
from tests.server.httpkit import Client
from tests.server.tokenkit import JWT, T0, Clock, memory_of


def login(**kw: Any) -> Auth:
    kw.setdefault("policies", ["dev"])
    kw.setdefault("alias", Alias(name="alice"))
    return Auth(**kw)


def _sel(raw: str) -> str:
    return raw[4 : 4 + SELECTOR_LEN]


def _swap_char(text: str, index: int) -> str:
    ch = text[index]
    return text[:index] + ("B" if ch != "B" else "C") + text[index + 1 :]


# -- malformed tokens ------------------------------------------------------------------------

TOKEN_MUTATIONS = {
    "truncated by one": lambda raw, other: raw[:-1],
    "selector only": lambda raw, other: raw[: 4 + SELECTOR_LEN],
    "overlong by one": lambda raw, other: raw + "A",
    "overlong by a secret": lambda raw, other: raw + raw[4 + SELECTOR_LEN :],
    "wrong secret, last char": lambda raw, other: _swap_char(raw, -1),
    "wrong secret, first char": lambda raw, other: _swap_char(raw, 4 + SELECTOR_LEN),
    "other token's secret": lambda raw, other: raw[: 4 + SELECTOR_LEN] + other[4 + SELECTOR_LEN :],
    "other token's selector": lambda raw, other: other[: 4 + SELECTOR_LEN] + raw[4 + SELECTOR_LEN :],
    "selector time changed": lambda raw, other: _swap_char(raw, 5),
    "selector tail changed": lambda raw, other: _swap_char(raw, 4 + SELECTOR_LEN - 1),
    "dash inside": lambda raw, other: raw[:10] + "-" + raw[11:],
    "non-ascii letter": lambda raw, other: raw[:10] + "é" + raw[11:],
    "non-ascii digit": lambda raw, other: raw[:10] + "٣" + raw[11:],
    "space inside": lambda raw, other: raw[:10] + " " + raw[11:],
    "batch prefix": lambda raw, other: "hvb." + raw[4:],
    "recovery prefix": lambda raw, other: "hvr." + raw[4:],
    "upper-case prefix": lambda raw, other: "HVS." + raw[4:],
    "legacy prefix": lambda raw, other: "s." + raw[4:],
    "no prefix": lambda raw, other: raw[4:],
    "legacy length": lambda raw, other: raw[:28],
}


@pytest.mark.parametrize("mutate", list(TOKEN_MUTATIONS.values()), ids=list(TOKEN_MUTATIONS))
async def test_malformed_or_wrong_selector_token_denied(
    store: TokenStore, mutate: Callable[[str, str], str]
) -> None:
    block, _ = await store.issue(login(num_uses=3), mount=JWT)
    other, _ = await store.issue(login(), mount=JWT)
    raw = block["client_token"]
    bad = mutate(raw, other["client_token"])
    assert bad != raw
    with pytest.raises(PermissionDenied, match="^permission denied$"):
        await store.authenticate(bad, "127.0.0.1")
    assert await store.lookup(bad) is None
    # The real token is untouched: not revoked, no use consumed.
    entry = await store.lookup(raw)
    assert entry is not None and entry.num_uses == 3


async def test_wrong_secret_of_expired_token_does_not_revoke_it(store: TokenStore, clock: Clock) -> None:
    """Only the real token may trigger the lazy revocation of its row."""
    block, _ = await store.issue(login(ttl=10), mount=JWT)
    raw = block["client_token"]
    clock.now += 11
    with pytest.raises(PermissionDenied):
        await store.authenticate(_swap_char(raw, -1), "127.0.0.1")
    assert await store.storage.get(ID_PREFIX + _sel(raw)) is not None
    assert await store.lookup(raw) is None
    assert await store.storage.get(ID_PREFIX + _sel(raw)) is None


@pytest.mark.parametrize(
    "raw",
    ["hvs." + "0" * (TOKEN_LEN - 4), "hvs." + "z" * (TOKEN_LEN - 4), "hvs." + "A" * (TOKEN_LEN - 4)],
    ids=["zeros", "max", "plausible"],
)
async def test_well_formed_unknown_selector_denied(store: TokenStore, raw: str) -> None:
    assert token_selector(raw) == raw[4 : 4 + SELECTOR_LEN]
    with pytest.raises(PermissionDenied, match="^permission denied$"):
        await store.authenticate(raw, "127.0.0.1")


# -- accessors ---------------------------------------------------------------------------------

ACCESSOR_MUTATIONS = {
    "wrong random part, last char": lambda acc, other: _swap_char(acc, -1),
    "wrong random part, first char": lambda acc, other: _swap_char(acc, SELECTOR_LEN),
    "other accessor's random part": lambda acc, other: acc[:SELECTOR_LEN] + other[SELECTOR_LEN:],
    "other accessor's selector": lambda acc, other: other[:SELECTOR_LEN] + acc[SELECTOR_LEN:],
    "truncated by one": lambda acc, other: acc[:-1],
    "selector only": lambda acc, other: acc[:SELECTOR_LEN],
    "overlong by one": lambda acc, other: acc + "A",
    "non-ascii": lambda acc, other: acc[:-1] + "é",
    "the token instead": lambda acc, other: "TOKEN",
    "empty": lambda acc, other: "",
}


@pytest.mark.parametrize("mutate", list(ACCESSOR_MUTATIONS.values()), ids=list(ACCESSOR_MUTATIONS))
async def test_wrong_accessor_finds_nothing(store: TokenStore, mutate: Callable[[str, str], str]) -> None:
    block, _ = await store.issue(login(), mount=JWT)
    other, _ = await store.issue(login(), mount=JWT)
    bad = mutate(block["accessor"], other["accessor"])
    if bad == "TOKEN":
        bad = block["client_token"]
    assert await store.lookup_accessor(bad) is None
    assert await store.revoke_accessor(bad) is False
    assert await store.lookup(block["client_token"]) is not None
    assert await store.lookup(other["client_token"]) is not None
    assert await store.lookup_accessor(block["accessor"]) is not None


async def test_accessor_reveals_creation_time_and_locator_only(store: TokenStore, clock: Clock) -> None:
    """vault-differences: the accessor carries the token's selector (creation time + locator)."""
    clock.now = T0 + 0.123
    block, _ = await store.issue(login(), mount=JWT)
    raw, accessor = block["client_token"], block["accessor"]
    assert accessor_selector(accessor) == token_selector(raw) == _sel(raw)
    assert selector_time(accessor) == T0 + 0.123
    entry = await store.lookup_accessor(accessor)
    assert entry is not None and store.lookup_data(entry)["creation_time"] == int(T0)
    # ...and nothing of the secret: the accessor plus any guess of the rest is not the token.
    assert raw[4 + SELECTOR_LEN :] not in accessor
    assert await store.lookup("hvs." + accessor + raw[4 + ACCESSOR_LEN :]) is None


# -- selector order and uniqueness ---------------------------------------------------------------


def test_selectors_sort_in_creation_order() -> None:
    # Steps of 1 ms walk the last digit through 9/A and Z/a; larger steps move the upper
    # digits, up to the year 8000.
    times = [T0 + k / 1000 for k in range(200)]
    times += [T0 + 1 + 61**k / 1000 for k in range(1, 8)] + [1.0, 0.0, 2_000_000_000.0, 190_000_000_000.0]
    times.sort()
    selectors = [mint_ids(t)[0] for t in times]
    assert sorted(selectors) == selectors and len(set(selectors)) == len(selectors)
    assert [selector_time(s) for s in selectors] == [round(t * 1000) / 1000 for t in times]


@pytest.mark.parametrize(
    ("value", "width", "expected"),
    [
        (0, 8, "00000000"),
        (61, 8, "0000000z"),
        (62, 8, "00000010"),
        (3843, 8, "000000zz"),
        (3844, 8, "00000100"),
        (62**8 - 1, 8, "zzzzzzzz"),
        (62**8, 8, "zzzzzzzz"),  # clamped, never wraps
        (-1, 6, "000000"),
        (1_800_000_000, 6, "1xocE4"),
    ],
    ids=["zero", "last-digit", "carry", "two-digits", "carry-two", "max", "over-max", "negative", "now-seconds"],
)
def test_selector_digits(value: int, width: int, expected: str) -> None:
    from server.tokens.ids import _decode, _encode

    assert _encode(value, width) == expected
    assert _decode(expected) == min(max(0, value), 62**width - 1)


async def test_stored_rows_list_in_creation_order(store: TokenStore, clock: Clock) -> None:
    raws = []
    for step in (0.001, 0.05, 1, 3600, 0.001, 86400 * 400):
        clock.now += step
        block, _ = await store.issue(login(), mount=JWT)
        raws.append(block["client_token"])
    assert await store.storage.list(ID_PREFIX) == [_sel(raw) for raw in raws]


def test_mint_ids_unique_over_100k_in_one_millisecond() -> None:
    ids = [mint_ids(T0) for _ in range(100_000)]
    for part in range(3):
        assert len({i[part] for i in ids}) == len(ids)
    assert {len(i[0]) for i in ids} == {SELECTOR_LEN}
    assert {len(i[1]) for i in ids} == {TOKEN_LEN}
    assert {len(i[2]) for i in ids} == {ACCESSOR_LEN}
    assert all(i[1].startswith("hvs." + i[0]) and i[2].startswith(i[0]) for i in ids)
    assert all(i[1][4:].isascii() and i[1][4:].isalnum() for i in ids)


async def test_unique_rows_over_many_concurrent_mints(store: TokenStore) -> None:
    blocks = await asyncio.gather(*(store.issue(login(), mount=JWT) for _ in range(2000)))
    assert len(await store.storage.list(ID_PREFIX)) == 2000
    assert len({b[0]["accessor"] for b in blocks}) == 2000


# -- ids the caller chooses ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "token_id",
    ["root", "hvs.my-dev-token", "hvs." + "A" * 24, "hvs." + "A" * (TOKEN_LEN - 3), "x" * TOKEN_LEN],
    ids=["plain", "hvs-with-dash", "legacy-shape", "one-too-long", "no-prefix"],
)
async def test_chosen_root_id_uses_the_hmac_layout(clock: Clock, token_id: str) -> None:
    storage = InMemoryStorage()
    store = TokenStore(storage, clock=clock)
    await store.start(sweep=False)
    assert await store.create_root(token_id) == token_id
    entry = await store.authenticate(token_id, "127.0.0.1")
    assert entry.is_root() and entry.id_hash == store.hash(token_id) and entry.verifier == ""
    assert await storage.list(ACCESSOR_PREFIX) == [store.hash(entry.accessor)]
    again = TokenStore(storage, clock=clock)  # a dev restart with the same id
    await again.start(sweep=False)
    assert await again.create_root(token_id) == token_id
    assert len(await storage.list(ID_PREFIX)) == 1
    assert (await again.lookup_accessor(entry.accessor)) is not None
    assert await again.revoke_accessor(entry.accessor) is True
    assert storage.dump().keys() <= {"sys/token/salt", "sys/token/batch_key"}


async def test_chosen_root_id_shaped_like_a_minted_token_refused(store: TokenStore) -> None:
    raw = mint_ids(T0)[1]
    with pytest.raises(InvalidRequest, match="^invalid root token id$"):
        await store.create_root(raw)


async def test_random_root_token_is_a_selector_token(store: TokenStore) -> None:
    raw = await store.create_root()
    assert token_selector(raw) is not None
    entry = await store.authenticate(raw, "127.0.0.1")
    assert entry.is_root() and entry.ttl == 0 and entry.id_hash == _sel(raw)
    assert await store.storage.list(ID_PREFIX) == [_sel(raw)]
    assert await store.storage.list(ACCESSOR_PREFIX) == []


# -- tokens stored by the previous version -------------------------------------------------------

LEGACY_RAW = "hvs.LegacyTokenAAAAAAAAAAAA"
LEGACY_CHILD = "hvs.LegacyChildBBBBBBBBBBBB"
LEGACY_ACCESSOR = "LegacyAccessorAAAAAAAAAA"
LEGACY_CHILD_ACCESSOR = "LegacyAccessorBBBBBBBBBB"


def _legacy_row(store: TokenStore, raw: str, accessor: str, **kw: Any) -> dict[str, Any]:
    """An entry exactly as the previous version stored it (no ``verifier`` member)."""
    now = store.clock()
    row: dict[str, Any] = {
        "id_hash": store.hash(raw), "accessor": accessor, "policies": ["default", "dev"],
        "meta": {"role": "r1"}, "display_name": "jwt-alice", "path": "auth/jwt/login",
        "mount_accessor": JWT.accessor, "creation_time": int(now), "ttl": 3600,
        "expire_time": now + 3600, "explicit_max_ttl": 0, "max_expire_time": 0.0, "period": 0,
        "num_uses": 0, "bound_cidrs": [], "parent": None, "orphan": True, "type": "service",
        "renewable": True, "entity_id": "", "internal_data": {}, "last_renewal_time": 0,
        "revoke_pending_at": 0.0,
    }  # fmt: skip
    row.update(kw)
    return row


async def _write_legacy(store: TokenStore, raw: str, accessor: str, **kw: Any) -> str:
    row = _legacy_row(store, raw, accessor, **kw)
    await store.storage.put(ID_PREFIX + row["id_hash"], row)
    await store.storage.put(ACCESSOR_PREFIX + store.hash(accessor), {"id_hash": row["id_hash"]})
    if row["parent"]:
        await store.storage.put(f"{PARENT_PREFIX}{row['parent']}/{row['id_hash']}", 1)
    return str(row["id_hash"])


@pytest.fixture
async def legacy(store: TokenStore) -> TokenStore:
    """A store holding a legacy parent and a legacy child token, in the old two-row layout."""
    parent = await _write_legacy(store, LEGACY_RAW, LEGACY_ACCESSOR)
    await _write_legacy(store, LEGACY_CHILD, LEGACY_CHILD_ACCESSOR, parent=parent, orphan=False)
    return store


async def test_legacy_token_lookup_and_accessor(legacy: TokenStore) -> None:
    entry = await legacy.authenticate(LEGACY_RAW, "127.0.0.1")
    assert entry.policies == ["default", "dev"] and entry.id_hash == legacy.hash(LEGACY_RAW)
    by_accessor = await legacy.lookup_accessor(LEGACY_ACCESSOR)
    assert by_accessor is not None and by_accessor.id_hash == entry.id_hash
    assert legacy.lookup_data(entry, LEGACY_RAW)["accessor"] == LEGACY_ACCESSOR
    assert await legacy.lookup_accessor(LEGACY_ACCESSOR[:-1] + "B") is None


async def test_legacy_token_renew(legacy: TokenStore, clock: Clock) -> None:
    clock.now += 3000
    entry = await legacy.authenticate(LEGACY_RAW, "127.0.0.1")
    block, _ = await legacy.renew(entry, 3000, mount=JWT, raw_token=LEGACY_RAW)
    assert block["lease_duration"] == 3000 and block["accessor"] == LEGACY_ACCESSOR
    clock.now += 900  # past the original expiry (3600), within the renewal
    await legacy.authenticate(LEGACY_RAW, "127.0.0.1")


async def test_legacy_revoke_tree_with_a_new_child(legacy: TokenStore) -> None:
    parent = await legacy.authenticate(LEGACY_RAW, "127.0.0.1")
    new_child, _ = await legacy.issue(login(), mount=JWT, parent=parent)
    assert await legacy.revoke(parent) == 3
    for raw in (LEGACY_RAW, LEGACY_CHILD, new_child["client_token"]):
        assert await legacy.lookup(raw) is None
    assert memory_of(legacy).dump().keys() <= {"sys/token/salt", "sys/token/batch_key"}


async def test_legacy_revoke_accessor_and_orphan(legacy: TokenStore) -> None:
    parent = await legacy.authenticate(LEGACY_RAW, "127.0.0.1")
    await legacy.revoke_orphan(parent)
    child = await legacy.authenticate(LEGACY_CHILD, "127.0.0.1")
    assert child.orphan is True and child.parent is None
    assert await legacy.storage.get(ACCESSOR_PREFIX + legacy.hash(LEGACY_ACCESSOR)) is None
    assert await legacy.revoke_accessor(LEGACY_CHILD_ACCESSOR) is True
    assert await legacy.lookup(LEGACY_CHILD) is None
    assert await legacy.storage.list(ACCESSOR_PREFIX) == []


async def test_legacy_sweep_and_list_accessors(legacy: TokenStore, clock: Clock) -> None:
    new, _ = await legacy.issue(login(ttl=7000), mount=JWT)
    assert await legacy.list_accessors() == sorted([LEGACY_ACCESSOR, LEGACY_CHILD_ACCESSOR, new["accessor"]])
    clock.now += 3601
    # 1 or 2: when the parent is met first, its revocation takes the child along
    assert await legacy.sweep() in (1, 2)
    assert await legacy.list_accessors() == [new["accessor"]]
    assert await legacy.storage.list(ID_PREFIX) == [_sel(new["client_token"])]
    assert await legacy.storage.list(ACCESSOR_PREFIX) == []
    assert await legacy.storage.list(PARENT_PREFIX) == []


async def test_legacy_num_uses(store: TokenStore) -> None:
    await _write_legacy(store, LEGACY_RAW, LEGACY_ACCESSOR, num_uses=1)
    last = await store.authenticate(LEGACY_RAW, "127.0.0.1")
    assert last.num_uses == -1
    await store.release(last)
    assert await store.lookup(LEGACY_RAW) is None
    assert await store.storage.list(ACCESSOR_PREFIX) == []


async def test_legacy_and_new_tokens_on_sqlite(tmp_path: Path, clock: Clock) -> None:
    """The same upgrade path on the real engine, with rows written by the old layout."""
    from server.storage import open_storage

    storage = await open_storage({"type": "sqlite", "path": str(tmp_path / "up.db")})
    try:
        s = TokenStore(storage, clock=clock)
        await s.start(sweep=False)
        await _write_legacy(s, LEGACY_RAW, LEGACY_ACCESSOR)
        new, _ = await s.issue(login(), mount=JWT)
        for raw in (LEGACY_RAW, new["client_token"]):
            assert (await s.authenticate(raw, "127.0.0.1")).policies == ["default", "dev"]
        assert await s.list_accessors() == sorted([LEGACY_ACCESSOR, new["accessor"]])
        assert await s.revoke_accessor(LEGACY_ACCESSOR) is True
        assert await s.revoke_accessor(new["accessor"]) is True
        assert await storage.list("sys/token/id/") == [] and await storage.list(ACCESSOR_PREFIX) == []
    finally:
        await storage.close()


def test_entry_round_trip_keeps_verifier() -> None:
    entry = TokenEntry(id_hash="s", accessor="a", policies=["p"], verifier="v" * 64)
    assert TokenEntry.from_dict(entry.to_dict()) == entry
    assert TokenEntry.from_dict({k: v for k, v in entry.to_dict().items() if k != "verifier"}).verifier == ""


# -- the periodic sweep reads only rows that may have expired ------------------------------------


class CountingStorage(InMemoryStorage):
    """Counts the token rows read (the sweeper's cost)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    async def get(self, key: str) -> Any | None:
        if key.startswith(ID_PREFIX):
            self.reads.append(key[len(ID_PREFIX) :])
        return await super().get(key)


def reads_of(store: TokenStore) -> list[str]:
    """The token rows read so far from ``store``'s ``CountingStorage``."""
    assert isinstance(store.storage, CountingStorage)
    return store.storage.reads


@pytest.fixture
async def counting(clock: Clock) -> AsyncIterator[TokenStore]:
    s = TokenStore(CountingStorage(), clock=clock)
    await s.start(sweep=False)
    yield s
    await s.close()


def test_selector_carries_the_minted_expiry() -> None:
    selector, _, accessor = mint_ids(T0 + 0.5, T0 + 3600.9)
    assert selector_due(selector) == selector_due(accessor) == T0 + 3600  # rounded down
    assert selector_due(mint_ids(T0, 0.0)[0]) == 0.0  # never expires
    assert selector_time(selector) == T0 + 0.5


@pytest.mark.parametrize(
    ("advance", "read_ttls", "removed"),
    [
        (5, [], 0),
        (10, [10], 1),  # expire_time == now: expired
        (600, [10], 1),
        (3600, [10, 3600], 2),
        (10**6, [10, 3600], 2),
    ],
    ids=["nothing due", "due at the second", "one due", "both due", "long after"],
)
async def test_due_only_sweep_reads_only_due_rows(
    counting: TokenStore, clock: Clock, advance: int, read_ttls: list[int], removed: int
) -> None:
    selectors = {}
    for ttl in (10, 3600):
        block, _ = await counting.issue(login(ttl=ttl), mount=JWT)
        selectors[ttl] = _sel(block["client_token"])
    root = await counting.create_root()  # never expires: never read
    reads_of(counting).clear()
    clock.now += advance
    assert await counting.sweep(due_only=True) == removed
    swept = [r for r in reads_of(counting) if r in selectors.values()]
    assert sorted(set(swept)) == sorted(selectors[t] for t in read_ttls)
    assert _sel(root) not in reads_of(counting)
    assert len(await counting.storage.list(ID_PREFIX)) == 3 - removed


async def test_due_only_sweep_remembers_renewed_tokens(counting: TokenStore, clock: Clock) -> None:
    block, _ = await counting.issue(login(ttl=600), mount=JWT)
    raw, selector = block["client_token"], _sel(block["client_token"])
    clock.now += 500
    await counting.renew(await counting.authenticate(raw, "127.0.0.1"), 3000, mount=JWT)
    reads = reads_of(counting)
    clock.now += 200  # past the minted expiry, within the renewal
    for _ in range(3):
        reads.clear()
        assert await counting.sweep(due_only=True) == 0
        assert reads.count(selector) == (1 if _ == 0 else 0)  # read once, then remembered
    clock.now += 3000
    assert await counting.sweep(due_only=True) == 1
    assert await counting.lookup(raw) is None


async def test_due_only_sweep_reads_hmac_keyed_rows(counting: TokenStore, clock: Clock) -> None:
    legacy = await _write_legacy(counting, LEGACY_RAW, LEGACY_ACCESSOR)
    await counting.create_root("dev-root")
    reads_of(counting).clear()
    assert await counting.sweep(due_only=True) == 0
    assert sorted(reads_of(counting)) == sorted([legacy, counting.hash("dev-root")])
    clock.now += 3601
    assert await counting.sweep(due_only=True) == 1
    assert await counting.lookup(LEGACY_RAW) is None


async def test_exhausted_unreleased_token_waits_for_expiry_or_tidy(store: TokenStore, clock: Clock) -> None:
    """The due-only sweep leaves a dead (num_uses spent, never released) row until its expiry;
    the full sweep (tidy) removes it after the grace period, as before."""
    block, _ = await store.issue(login(num_uses=1, ttl=3600), mount=JWT)
    raw = block["client_token"]
    assert (await store.authenticate(raw, "127.0.0.1")).num_uses == -1
    clock.now += 60
    with pytest.raises(PermissionDenied):
        await store.authenticate(raw, "127.0.0.1")
    assert await store.sweep(due_only=True) == 0
    assert await store.storage.get(ID_PREFIX + _sel(raw)) is not None
    assert await store.sweep() == 1
    assert await store.storage.list(ID_PREFIX) == []


async def test_sweep_hints_are_bounded(counting: TokenStore, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    import server.tokens.store as tokens_mod

    monkeypatch.setattr(tokens_mod, "_SWEEP_HINTS", 3)
    raws = []
    for _ in range(5):
        block, _ = await counting.issue(login(ttl=60), mount=JWT)
        raws.append(block["client_token"])
    clock.now += 50
    for raw in raws:
        await counting.renew(await counting.authenticate(raw, "127.0.0.1"), 600, mount=JWT)
    clock.now += 20
    assert await counting.sweep(due_only=True) == 0
    assert len(counting._sweep_hints) <= 3
    clock.now += 600
    assert await counting.sweep(due_only=True) == 5


# -- full scans page through the token rows ---------------------------------------------------


class PageSpy:
    """A storage that records the pages read under ``ID_PREFIX`` and refuses to list all of it."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.pages: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def list(self, prefix: str) -> list[str]:
        assert prefix != ID_PREFIX, "a full scan listed every token key at once"
        return await self.inner.list(prefix)

    async def list_page(self, prefix: str, after: str = "", limit: int = 1000) -> builtins.list[str]:
        page = await self.inner.list_page(prefix, after, limit)
        if prefix == ID_PREFIX:
            self.pages.append(len(page))
        return page


def spy_of(store: TokenStore) -> PageSpy:
    """The ``PageSpy`` under ``store`` (the ``paged`` fixture's)."""
    assert isinstance(store.storage, PageSpy)
    return store.storage


@pytest.fixture(params=["memory", "sqlite"])
async def paged(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock,
                monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TokenStore]:
    """A TokenStore over a PageSpy (in-memory, or a real SQLite file), 4 keys per page."""
    import server.tokens.store as tokens_mod
    from server.storage.sqlite import SQLiteStorage

    monkeypatch.setattr(tokens_mod, "SCAN_PAGE", 4)
    inner: Engine = InMemoryStorage() if request.param == "memory" else await SQLiteStorage.open(
        str(tmp_path / "t.db"), synchronous="NORMAL")
    s = TokenStore(PageSpy(inner), clock=clock)
    await s.start(sweep=False)
    yield s
    await s.close()
    if request.param == "sqlite":
        await inner.close()


async def _issue_mixed(store: TokenStore, clock: Clock, n: int) -> tuple[list[str], list[str]]:
    """``n`` tokens minted one second apart (so in key order), alternately short (60 s) and
    long (1 h) lived: the short ones are spread over every page. Returns their selectors."""
    short: list[str] = []
    long_: list[str] = []
    for i in range(n):
        block, _ = await store.issue(login(ttl=60 if i % 2 else 3600), mount=JWT)
        (short if i % 2 else long_).append(_sel(block["client_token"]))
        clock.now += 1
    return short, long_


@pytest.mark.parametrize("due_only", [True, False], ids=["periodic", "tidy"])
async def test_sweep_pages_through_rows_and_keeps_live_ones(paged: TokenStore, clock: Clock,
                                                            due_only: bool) -> None:
    short, long_ = await _issue_mixed(paged, clock, 23)  # 6 pages of 4
    root = await paged.create_root("dev-root")  # an HMAC-keyed row, never expires
    clock.now += 120
    assert await paged.sweep(due_only=due_only) == len(short) == 11
    rows = await spy_of(paged).inner.list(ID_PREFIX)
    assert rows == sorted([*long_, paged.hash(root)])
    pages = spy_of(paged).pages
    assert len(pages) >= 6 and max(pages) <= 4
    assert await paged.sweep(due_only=due_only) == 0  # nothing skipped the first time


async def test_list_accessors_pages_through_rows(paged: TokenStore, clock: Clock) -> None:
    blocks = [(await paged.issue(login(ttl=60 if i % 3 else 3600), mount=JWT))[0] for i in range(14)]
    clock.now += 120
    want = sorted(b["accessor"] for i, b in enumerate(blocks) if i % 3 == 0)
    assert await paged.list_accessors() == want
    assert max(spy_of(paged).pages) <= 4 and len(spy_of(paged).pages) >= 4


async def test_revoke_mount_pages_through_rows(paged: TokenStore, clock: Clock) -> None:
    other = MountInfo("auth/other/", "auth_jwt_ffff0000", 3600, 7200)
    mine = [(await paged.issue(login(), mount=JWT if i % 2 else other))[0] for i in range(13)]
    assert await paged.revoke_mount(JWT.accessor) == 6
    left = await paged.list_accessors()
    assert left == sorted(b["accessor"] for i, b in enumerate(mine) if i % 2 == 0)
    assert max(spy_of(paged).pages) <= 4


# -- the upgrade over HTTP: a server started on storage holding old-layout rows ----------------


async def test_upgrade_over_http_keeps_legacy_tokens_working(aiohttp_client: AiohttpClient) -> None:
    import base64
    import dataclasses

    from server.app import create_app
    from server.http.listverb import make_test_server
    from server.settings import Settings, StorageSettings
    from server.tokens.keys import BATCH_KEY, SALT_KEY

    storage = InMemoryStorage()
    old = TokenStore(storage)  # the previous version's salt, and its rows
    await old.start(sweep=False)
    parent = await _write_legacy(old, LEGACY_RAW, LEGACY_ACCESSOR, mount_accessor="", path="auth/token/create",
                                 policies=["root"], ttl=0, expire_time=0.0, renewable=False)
    await _write_legacy(old, LEGACY_CHILD, LEGACY_CHILD_ACCESSOR, parent=parent, orphan=False, mount_accessor="",
                        path="auth/token/create", expire_time=old.clock() + 3600)
    # The previous version kept the salt and batch key in the clear: the server seals them.
    assert old._salt is not None and old._batch is not None
    await storage.put(SALT_KEY, {"value": base64.b64encode(old._salt).decode()})
    await storage.put(BATCH_KEY, {"value": base64.b64encode(old._batch.signing).decode()})
    settings = dataclasses.replace(Settings(storage=StorageSettings(type="memory", path="")), dev=True)
    client: Client = await aiohttp_client(make_test_server(create_app(settings, storage=storage)))
    root = {"X-Vault-Token": LEGACY_RAW}

    resp = await client.get("/v1/auth/token/lookup-self", headers=root)
    assert resp.status == 200 and (await resp.json())["data"]["accessor"] == LEGACY_ACCESSOR
    resp = await client.post("/v1/auth/token/create", json={"policies": ["default"], "ttl": "1h"}, headers=root)
    new = (await resp.json())["auth"]
    assert resp.status == 200 and len(new["client_token"]) == TOKEN_LEN
    resp = await client.request("LIST", "/v1/auth/token/accessors", headers=root)
    keys = (await resp.json())["data"]["keys"]
    assert {LEGACY_ACCESSOR, LEGACY_CHILD_ACCESSOR, new["accessor"]} <= set(keys)
    for accessor in (LEGACY_CHILD_ACCESSOR, new["accessor"]):
        resp = await client.post("/v1/auth/token/lookup-accessor", json={"accessor": accessor}, headers=root)
        assert resp.status == 200 and (await resp.json())["data"]["accessor"] == accessor
    resp = await client.post("/v1/auth/token/renew-self", json={"increment": "30m"},
                             headers={"X-Vault-Token": LEGACY_CHILD})
    assert resp.status == 200 and (await resp.json())["auth"]["lease_duration"] == 1800
    resp = await client.post("/v1/auth/token/revoke-accessor", json={"accessor": LEGACY_CHILD_ACCESSOR}, headers=root)
    assert resp.status == 204
    resp = await client.get("/v1/auth/token/lookup-self", headers={"X-Vault-Token": LEGACY_CHILD})
    assert resp.status == 403
    resp = await client.post("/v1/auth/token/revoke-self", headers={"X-Vault-Token": LEGACY_RAW})
    assert resp.status == 204
    for raw in (LEGACY_RAW, new["client_token"]):  # the new child went with its legacy parent
        resp = await client.get("/v1/auth/token/lookup-self", headers={"X-Vault-Token": raw})
        assert resp.status == 403
    for key in (SALT_KEY, BATCH_KEY):  # sealed in place by the upgrade
        stored = await storage.get(key)
        assert stored is not None and "value" not in stored and old._salt is not None
        assert base64.b64encode(old._salt).decode() not in str(await storage.get(key))


# -- the accessor list in pages (after, limit) -----------------------------------------------------

async def _walk(store: TokenStore, limit: int, after: str = "") -> list[list[str]]:
    """Every page of ``limit`` accessors from ``after`` on, each next page after the last one."""
    pages: list[list[str]] = []
    while True:
        page = await store.accessors_page(after, limit)
        if page:
            pages.append(page)
        if len(page) < limit or limit <= 0:
            return pages
        after = page[-1]


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 100, 0])
async def test_pages_hold_every_live_accessor_once(legacy: TokenStore, clock: Clock, limit: int) -> None:
    """Selector tokens, the two legacy tokens, an expired and a revoked token: a walk in pages
    of any size lists what the whole list lists, each accessor once, the page sizes bounded."""
    for step in (0.001, 1, 60):
        clock.now += step
        await legacy.issue(login(), mount=JWT)
    short, _ = await legacy.issue(login(ttl=5), mount=JWT)
    gone, _ = await legacy.issue(login(), mount=JWT)
    await legacy.revoke(await legacy.authenticate(gone["client_token"], "127.0.0.1"))
    clock.now += 10  # ``short`` has expired, its row not yet swept
    pages = await _walk(legacy, limit)
    walked = [a for page in pages for a in page]
    assert sorted(walked) == await legacy.list_accessors() and len(walked) == 5
    assert short["accessor"] not in walked and gone["accessor"] not in walked
    assert {LEGACY_ACCESSOR, LEGACY_CHILD_ACCESSOR} <= set(walked)
    assert all(len(page) <= limit for page in pages) if limit > 0 else len(pages) == 1
    assert [a for a in walked if accessor_selector(a)] == sorted(a for a in walked if accessor_selector(a))


async def test_a_page_goes_on_after_a_revoked_token(store: TokenStore) -> None:
    """A selector token's accessor names its row even once the token is gone (OpenBao's
    ``after`` need not exist), so revoking the last token of a page loses no other."""
    blocks = sorted([(await store.issue(login(), mount=JWT))[0] for _ in range(4)], key=lambda b: b["accessor"])
    accessors = [b["accessor"] for b in blocks]  # minted in one millisecond: rows in accessor order
    first = await store.accessors_page("", 2)
    assert first == accessors[:2]
    await store.revoke(await store.authenticate(blocks[1]["client_token"], "127.0.0.1"))
    assert await store.accessors_page(first[-1], 2) == accessors[2:]
    assert await store.accessors_page(first[-1], 0) == accessors[2:]
    assert await store.accessors_page(accessors[-1], 5) == []
    assert await store.accessors_page("z" * ACCESSOR_LEN, 5) == []  # after every row


@pytest.mark.parametrize(("after", "shown"), [
    ("LegacyAccessorCCCCCCCCCC", '"LegacyAccessorCCCCCCCCCC"'), ("x", '"x"'), ("a" * 300, '"' + "a" * 64 + '"'),
    ("has space", '"has space"'), ("\x00", '"\\x00"'), ('q"\n', '"q\\"\\n"'),
])
async def test_a_page_after_an_unknown_legacy_accessor_is_refused(legacy: TokenStore, after: str, shown: str) -> None:
    """The refusal shows what was sent quoted: cut at 64 characters, control characters and
    quotes escaped."""
    with pytest.raises(InvalidRequest) as info:
        await legacy.accessors_page(after, 2)
    assert info.value.messages == [f"cannot list after {shown}: it is not the accessor of a live token "
                                   "(list again without after)"]
