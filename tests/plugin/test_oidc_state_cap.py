"""The per-mount cap on pending OIDC states: oidc/auth_url needs no token but writes storage."""

from __future__ import annotations

from pathlib import Path

import pytest

from plugin import oidc_pending, path_oidc
from plugin.errors import InvalidRequest, RateLimited
from plugin.oidc_pending import PendingStates, TooManyPendingStates
from plugin.path_oidc import STATE_PREFIX, STATE_TTL
from tests.plugin.oidc_fakes import BOB, Harness, query

DOCS = Path(__file__).resolve().parents[2] / "docs"
CAP = 3


@pytest.fixture
async def h(monkeypatch: pytest.MonkeyPatch) -> Harness:
    monkeypatch.setattr(oidc_pending, "MAX_PENDING_STATES", CAP)
    harness = Harness()
    await harness.configure()
    await harness.role()
    return harness


async def states(h: Harness) -> list[str]:
    return [n for n in await h.storage.list(STATE_PREFIX) if not n.endswith("/")]


async def test_cap_refuses_with_429_and_retry_after(h: Harness) -> None:
    for _ in range(CAP):
        await h.auth_url()
    h.clock.now += 100
    with pytest.raises(TooManyPendingStates) as info:
        await h.auth_url()
    exc = info.value
    assert isinstance(exc, RateLimited) and exc.status == 429
    assert exc.messages == [
        f"too many pending OIDC logins on this mount ({CAP} started in the last 10 minutes and not finished); "
        "try again later"
    ]
    assert exc.headers == {"Retry-After": str(STATE_TTL - 100)}  # when the oldest state expires
    assert len(await states(h)) == CAP  # the refused call stored nothing


async def test_a_used_state_frees_its_place(h: Harness) -> None:
    url = await h.auth_url()
    for _ in range(CAP - 1):
        await h.auth_url()
    code = h.idp.authorize(url, **BOB)
    resp = await h.callback(state=query(url)["state"], code=code)
    assert resp.auth is not None
    await h.auth_url()  # the callback took one state: room for one more
    with pytest.raises(TooManyPendingStates):
        await h.auth_url()


async def test_a_failed_callback_with_a_bogus_state_changes_nothing(h: Harness) -> None:
    for _ in range(CAP):
        await h.auth_url()
    for bogus in ("", "st_short", "st_" + "A" * 20, "x" * 5000):
        with pytest.raises(InvalidRequest, match="Expired or missing OAuth state"):
            await h.callback(state=bogus, code="c")
    with pytest.raises(TooManyPendingStates):
        await h.auth_url()


async def test_expired_states_free_their_places(h: Harness) -> None:
    for _ in range(CAP):
        await h.auth_url()
    h.clock.now += STATE_TTL + 1
    for _ in range(CAP):
        await h.auth_url()
    with pytest.raises(TooManyPendingStates):
        await h.auth_url()


async def test_cap_is_per_mount(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    for _ in range(CAP):
        await h.auth_url()
    other = Harness()
    await other.configure()
    await other.role()
    assert (await other.auth_url()).startswith(other.idp.issuer)


async def test_sweep_deletes_expired_states_without_listing(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(path_oidc, "_SWEEP_MAX", 0)  # the listing sweep does nothing
    old = [query(await h.auth_url())["state"] for _ in range(CAP)]
    assert sorted(await states(h)) == sorted(old)
    h.clock.now += STATE_TTL + 1  # past the expiry and the sweep interval
    fresh = query(await h.auth_url())["state"]
    assert await states(h) == [fresh]


def test_tracker_bounds_the_expired_backlog() -> None:
    tracker = PendingStates(cap=2, ttl=10)
    now = 0.0
    for i in range(10):
        tracker.admit(f"s{i}", now)
        now += 11  # every earlier state has expired
    assert len(tracker) == 1
    assert tracker.take_expired() == ["s7", "s8"]  # at most ``cap`` remembered, newest kept
    assert tracker.take_expired() == []
    tracker.discard(None)
    tracker.discard("s9")
    assert len(tracker) == 0


def test_message_is_in_troubleshooting() -> None:
    text = (DOCS / "troubleshooting.md").read_text(encoding="utf-8")
    assert "`too many pending OIDC logins on this mount (<cap> started in the last 10 minutes and not finished); " \
           "try again later` | 429 |" in text
