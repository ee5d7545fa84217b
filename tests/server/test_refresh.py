"""``server.storage.refresh.Refresh``: an announcement that arrives while a re-read runs is
never lost (a group alias written on one node right after its group was once never seen by
the other node: the second announcement came while the re-read of the first was running,
after it had read the aliases, and was dropped)."""

from __future__ import annotations

import asyncio

import pytest

from plugin.storage import InMemoryStorage
from server.identity.store import GROUP_ALIAS_PREFIX, GROUP_PREFIX, IdentityStore
from server.storage.refresh import Refresh


async def test_an_announcement_during_a_run_makes_one_more_run() -> None:
    started: list[int] = []
    gate = asyncio.Event()

    async def reload() -> None:
        started.append(len(started))
        if len(started) == 1:
            await gate.wait()  # the first run has read; announcements arrive now

    refresh = Refresh(reload, "test_reload_failed")
    first = refresh.request()
    await asyncio.sleep(0)
    assert started == [0]
    for _ in range(3):  # three announcements during the run: one more run, not three
        assert refresh.request() is first
    gate.set()
    await first
    assert started == [0, 1]
    await refresh.now()  # nothing running: a run of its own
    assert started == [0, 1, 2]


@pytest.mark.parametrize(("present", "shared", "runs", "found"), [
    (True, True, 0, "x"),  # a hit reads nothing
    (False, False, 0, None),  # one node: a miss is a miss
    (False, True, 1, "x"),  # shared storage: a miss re-reads once, then looks again
])
async def test_unless_re_reads_only_on_a_miss_of_shared_storage(present: bool, shared: bool, runs: int, found: str | None) -> None:
    table: dict[str, str] = {"k": "x"} if present else {}
    reads: list[int] = []

    async def reload() -> None:
        reads.append(1)
        table["k"] = "x"  # another node wrote it

    refresh = Refresh(reload, "test_reload_failed")
    assert await refresh.unless(lambda: table.get("k"), shared=shared) == found
    assert len(reads) == runs


async def test_now_raises_what_its_run_raised_and_a_later_run_recovers() -> None:
    fail = [True]

    async def reload() -> None:
        if fail[0]:
            raise OSError("storage down")

    refresh = Refresh(reload, "test_reload_failed")
    with pytest.raises(OSError, match="storage down"):
        await refresh.now()
    fail[0] = False
    await refresh.now()


class _SlowList(InMemoryStorage):
    """Holds ``list`` of group aliases until ``gate`` is set (a re-read in progress)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.listing = asyncio.Event()

    async def list(self, prefix: str) -> list[str]:
        names = await super().list(prefix)
        if prefix == GROUP_ALIAS_PREFIX and not self.gate.is_set():
            self.listing.set()
            await self.gate.wait()
        return names


async def test_identity_sees_an_alias_announced_while_it_re_reads_the_group() -> None:
    storage = _SlowList()
    node_b = IdentityStore(storage)
    await storage.put(GROUP_PREFIX + "g1", {"id": "g1", "name": "readers", "type": "external",
                                            "policies": ["grp-read"], "alias_id": "a1"})
    node_b.invalidate(GROUP_PREFIX + "g1")  # node A wrote the group
    await storage.listing.wait()  # B's re-read has listed the (no) aliases
    await storage.put(GROUP_ALIAS_PREFIX + "a1", {"id": "a1", "name": "idp-readers", "mount_accessor": "acc",
                                                  "canonical_id": "g1"})
    node_b.invalidate(GROUP_ALIAS_PREFIX + "a1")  # node A wrote the alias, mid-re-read
    storage.gate.set()
    await node_b._refresh.now()
    assert "a1" in node_b.aliases and node_b.group_by_name("readers") is not None
    await node_b.close()
