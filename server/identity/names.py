"""Unique names across nodes and workers: the claim of a name is a storage row.

Identity group names (and group alias names on a mount) must be unique case-insensitively.
Each node's in-memory tables refuse a name the node knows is taken, but two nodes (or two
workers) given one new name at the same moment have not heard of each other's object yet.
So the write that creates or renames an object first claims the name: a storage update of
the row ``<prefix><hash of the name>``, ``{"id": <owner>, "at": <unix time>}``. Storage
serialises updates of one key across nodes, so exactly one writer gets it.

A claim is released when its object is deleted or renamed, and by a write that fails after
claiming. Only a node killed between claiming and writing leaves a claim whose holder does
not hold the name; another writer replaces such a claim once it is ``CLAIM_GRACE`` old (a
younger one may be a write still on its way).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from plugin.storage import Storage

__all__ = ["CLAIM_GRACE", "Held", "NameClaims", "name_key"]

#: Seconds before a claim whose holder does not hold the name may be replaced.
CLAIM_GRACE = 60.0


class Held(Exception):
    """The name is claimed by another object (``holder``), ``age`` seconds ago."""

    def __init__(self, holder: str, age: float) -> None:
        super().__init__(holder)
        self.holder, self.age = holder, age


def name_key(prefix: str, *parts: str) -> str:
    """The claim key of a unique name (its parts hashed: names may hold any character)."""
    return prefix + hashlib.sha256("\x00".join(parts).encode()).hexdigest()


class NameClaims:
    """Claims and releases of unique names in ``storage`` (see the module docstring)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def claim(self, key: str, owner: str, holds: Callable[[str], Awaitable[bool]]) -> bool:
        """Make ``owner`` (an object id) the holder of the name whose claim is at ``key``.
        A holder that does not hold the name (``holds(holder)`` false: its row is gone or
        names something else) is replaced once its claim is ``CLAIM_GRACE`` old. Returns
        whether the claim is new: a write that fails after it releases it.

        :raises Held: another object holds the name.
        """
        stale: str | None = None
        for _ in range(4):
            try:
                return await self._claim_once(key, owner, stale)
            except Held as held:
                if held.age < CLAIM_GRACE or await holds(held.holder):
                    raise
                stale = held.holder
        raise Held(stale or "", 0.0)  # the name keeps changing hands: in use

    async def _claim_once(self, key: str, owner: str, stale: str | None) -> bool:
        """One storage update of ``claim`` (``stale``: a holder to replace)."""
        prior: list[object] = []
        now = time.time()

        def take(old: Any) -> Any:
            holder = old.get("id") if isinstance(old, dict) else None
            if holder is not None and holder != owner and holder != stale:
                at = old.get("at")
                raise Held(str(holder), now - (at if isinstance(at, (int, float)) else 0.0))
            prior.append(holder)
            return old if holder == owner else {"id": owner, "at": now}

        await self.storage.update(key, take)
        return prior[-1] != owner

    async def release(self, key: str, owner: str) -> None:
        """Drop ``owner``'s claim at ``key`` (a claim someone else took over stays)."""

        def drop(old: Any) -> Any:
            return None if isinstance(old, dict) and old.get("id") == owner else old

        await self.storage.update(key, drop)
