"""What the token-store tests share: a mount, a start time and a settable clock (the
``clock`` and ``store`` fixtures are in ``conftest.py``); and ``count_reads``, which the
server tests use to see what a step reads from storage."""

from __future__ import annotations

from typing import Any

from plugin.storage import InMemoryStorage
from server.tokens.entry import MountInfo
from server.tokens.store import TokenStore

JWT = MountInfo(path="auth/jwt/", accessor="auth_jwt_1a2b3c4d", default_lease_ttl=3600, max_lease_ttl=7200)
T0 = 1_800_000_000.0


def memory_of(store: TokenStore) -> InMemoryStorage:
    """The in-memory storage under ``store`` (the ``store`` fixture's), to ``dump()`` it."""
    assert isinstance(store.storage, InMemoryStorage), f"not in-memory storage: {store.storage!r}"
    return store.storage


def count_reads(storage: InMemoryStorage) -> list[str]:
    """The keys ``storage.get`` is called with from now on, in order (a list that grows)."""
    reads: list[str] = []
    original = storage.get

    async def counting_get(key: str) -> Any:
        reads.append(key)
        return await original(key)

    storage.get = counting_get  # type: ignore[method-assign]
    return reads


class Clock:
    """A settable clock (``clock.now += 60``)."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
