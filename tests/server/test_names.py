"""``server.identity.names``: the claim row of a unique name decides between writers."""

from __future__ import annotations

import time

import pytest

from plugin.storage import InMemoryStorage
from server.identity.names import CLAIM_GRACE, Held, NameClaims, name_key

KEY = name_key("names/", "ops")


async def _holds(result: bool) -> bool:
    return result


#: A claim's ``at`` as seconds before the test runs (parametrize runs at collection, minutes
#: before the test in a whole suite: absolute times would have aged by then).
YOUNG, OLD = 0.0, CLAIM_GRACE + 1


@pytest.mark.parametrize(("stored", "holder_holds", "outcome"), [
    (None, False, "new"),  # free
    ({"id": "me", "at": 1.0}, False, "mine"),  # already this owner's: not new
    ({"id": "other", "age": YOUNG}, True, "held"),
    ({"id": "other", "age": YOUNG}, False, "held"),  # young: a write may be on its way
    ({"id": "other", "age": OLD}, True, "held"),  # old, and the holder has the name
    ({"id": "other", "age": OLD}, False, "new"),  # old and stale: replaced
    ({"id": "other"}, False, "new"),  # no time: as old as can be
    ("garbage", False, "new"),  # not a claim
], ids=["free", "mine", "held", "young-stale", "old-held", "old-stale", "no-time", "garbage"])
async def test_claim(stored: object, holder_holds: bool, outcome: str) -> None:
    storage = InMemoryStorage()
    if isinstance(stored, dict) and "age" in stored:
        stored = {"id": stored["id"], "at": time.time() - stored["age"]}
    if stored is not None:
        await storage.put(KEY, stored)
    asked: list[str] = []

    async def holds(holder: str) -> bool:
        asked.append(holder)
        return holder_holds

    claims = NameClaims(storage)
    if outcome == "held":
        with pytest.raises(Held) as info:
            await claims.claim(KEY, "me", holds)
        assert info.value.holder == "other"
        assert await storage.get(KEY) == stored  # unchanged
        return
    assert await claims.claim(KEY, "me", holds) is (outcome == "new")
    claim = await storage.get(KEY)
    assert isinstance(claim, dict) and claim["id"] == "me"


async def test_release_drops_only_the_owners_claim() -> None:
    storage = InMemoryStorage()
    claims = NameClaims(storage)
    assert await claims.claim(KEY, "me", lambda holder: _holds(True)) is True
    await claims.release(KEY, "someone-else")
    assert (await storage.get(KEY))["id"] == "me"  # type: ignore[index]
    await claims.release(KEY, "me")
    assert await storage.get(KEY) is None
    await claims.release(KEY, "me")  # nothing to release: fine
