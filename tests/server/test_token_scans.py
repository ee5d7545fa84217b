"""The token store's scans over every row: the lease listing (``sys/leases/lookup``), the
revocation by path (``sys/leases/revoke-prefix``), the accessor pages and the background
work that logs what it did. Whole segments, the expiry's edge, a last use, and walks that
cross the storage's pages."""

from __future__ import annotations

import asyncio

import pytest
import structlog

from server.tokens import store as store_module
from server.tokens.store import TokenStore
from tests.server.test_token_selectors import login
from tests.server.tokenkit import JWT, Clock


@pytest.mark.parametrize("prefix", ["auth/jwt", "auth/jwt/"])
async def test_a_prefix_is_whole_segments_with_or_without_its_slash(store: TokenStore, prefix: str) -> None:
    await store.issue(login(), mount=JWT)
    assert await store.lease_ids(prefix) == ["login/"]
    assert await store.lease_ids("auth/jw") == []
    assert await store.revoke_prefix(prefix) == 1
    assert await store.lease_ids("auth/jwt/") == []


async def test_a_token_expires_from_the_listing_at_its_expiry(store: TokenStore, clock: Clock) -> None:
    block, _ = await store.issue(login(ttl=60), mount=JWT)
    assert await store.lease_ids("auth/jwt/login/") != []
    clock.now += 60  # exactly its expiry: gone
    assert await store.lease_ids("auth/jwt/login/") == []
    assert block["lease_duration"] == 60


async def test_a_token_on_its_last_use_is_not_listed(store: TokenStore) -> None:
    block, _ = await store.issue(login(num_uses=1), mount=JWT)
    entry = await store.authenticate(block["client_token"], "127.0.0.1")  # pending revocation now
    assert entry.num_uses == -1
    assert await store.lease_ids("auth/jwt/login/") == []
    assert await store.accessors_page("", 10) == [] and await store.list_accessors() == []
    await store.release(entry)


async def test_accessor_pages_cross_the_storage_pages(store: TokenStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """With storage pages of 3 rows, a page of accessors reads on past each storage page, and
    a walk lists every token once; the row count too."""
    monkeypatch.setattr(store_module, "SCAN_PAGE", 3)
    accessors = sorted([(await store.issue(login(), mount=JWT))[0]["accessor"] for _ in range(7)])
    assert await store.accessors_page("", 5) == accessors[:5]
    assert await store.accessors_page(accessors[4], 0) == accessors[5:]
    assert await store.accessors_page("", 0) == accessors
    assert await store.count_rows() == 7


async def test_revocations_and_sweeps_count_every_token(store: TokenStore, clock: Clock,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Revoked in batches of 2 (each batch's deletes share the storage's commits), every token
    counts; a sweep counts each expired token once."""
    monkeypatch.setattr(store_module, "REVOKE_BATCH", 2)
    for _ in range(5):
        await store.issue(login(), mount=JWT)
    assert await store.revoke_prefix("auth/jwt") == 5
    for _ in range(3):
        await store.issue(login(ttl=5), mount=JWT)
    await store.issue(login(ttl=3600), mount=JWT)
    clock.now += 10
    assert await store.sweep() == 3 and await store.count_rows() == 1


async def test_background_work_is_logged(store: TokenStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a tidy and a revocation by prefix did, or why they failed, is in the log: the
    caller had its answer before they ran."""
    await store.issue(login(), mount=JWT)
    with structlog.testing.capture_logs() as logs:
        store.revoke_prefix_later("auth/jwt")
        assert store.tidy_later()
        await asyncio_settle(store)
    assert sorted((e["event"], e.get("revoked", e.get("removed"))) for e in logs) == [
        ("token_tidy_done", 0), ("tokens_revoked_by_prefix", 1)]

    async def broken(*args: object, **kw: object) -> int:
        raise RuntimeError("storage gone")

    monkeypatch.setattr(store, "sweep", broken)
    monkeypatch.setattr(store, "revoke_prefix", broken)
    with structlog.testing.capture_logs() as logs:
        store.revoke_prefix_later("auth/jwt")
        assert store.tidy_later()
        await asyncio_settle(store)
    assert sorted((e["event"], e.get("prefix", ""), e["log_level"]) for e in logs) == [
        ("revoke_prefix_failed", "auth/jwt", "error"), ("token_tidy_failed", "", "error")]


async def asyncio_settle(store: TokenStore) -> None:
    """Until the store's background tasks are done."""
    while store._background:
        await asyncio.gather(*store._background, return_exceptions=True)
