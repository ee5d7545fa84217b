"""In-memory storage engine for ``--dev`` and tests, with the same JSON semantics as the others."""

from __future__ import annotations

import bisect
import builtins
import heapq
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from plugin.storage import Updater, check_page_args, list_children, page_floor

__all__ = ["MemoryStorage"]

#: Keys created (or deleted) since the last sort that ``list_page`` tolerates on top of
#: 1/8 (1/2) of the sorted keys before it sorts them all again.
RESORT_SLACK = 4096


class MemoryStorage:
    """A dict of JSON-encoded values; everything is lost when the process exits.

    Values are stored encoded (as the durable engines do), so a value that is not
    JSON-serialisable fails its write exactly like it would on SQLite or PostgreSQL, and
    callers never share mutable objects with the store. No await separates the read and
    the write of ``update``, so it is atomic within the event loop.

    ``list_page`` seeks in a sorted list of the keys (references to the dict's own key
    strings, 8 bytes each), re-sorted only once enough keys were created or deleted
    since: keys created meanwhile are merged in from a short unsorted list, deleted ones
    skipped.
    """

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self._closed = False
        self._order: list[str] | None = []  # the keys at the last sort (None: sort again)
        self._added: list[str] = []  # keys created since that sort, unsorted
        self._dropped = 0  # keys deleted since that sort

    def _check(self) -> None:
        if self._closed:
            raise RuntimeError("storage is closed")

    def set_invalidation_callback(self, cb: Callable[[str], None]) -> None:
        """Accepted for interface parity; a single-process store never calls it."""

    async def get(self, key: str) -> Any | None:
        """Return the value at ``key`` or None."""
        self._check()
        blob = self._data.get(key)
        return orjson.loads(blob) if blob is not None else None

    async def put(self, key: str, value: Any) -> None:
        """Store ``value`` at ``key``."""
        self._check()
        if not isinstance(key, str) or not key:
            raise TypeError(f"storage key must be a non-empty str, got {key!r}")
        blob = orjson.dumps(value)
        if key not in self._data:
            self._created(key)
        self._data[key] = blob

    async def delete(self, key: str) -> None:
        """Delete ``key``; a missing key is fine."""
        self._check()
        if self._data.pop(key, None) is not None:
            self._deleted(1)

    async def list(self, prefix: str) -> list[str]:
        """Immediate children under ``prefix`` (sorted; sub-folders end with ``/``)."""
        self._check()
        return list_children(self._data.keys(), prefix)

    async def list_page(self, prefix: str, after: str = "", limit: int = 1000) -> builtins.list[str]:
        """The children ``list`` would return that sort after ``after``, at most ``limit``."""
        self._check()
        check_page_args(prefix, after, limit)
        floor, inclusive = page_floor(prefix, after)
        cut = len(prefix)
        out: list[str] = []
        for key in self._keys_from(floor, inclusive):
            if not key.startswith(prefix):
                break  # keys come in order: past the prefix's range
            rest = key[cut:]
            slash = rest.find("/")
            name = rest if slash < 0 else rest[: slash + 1]
            if out and out[-1] == name:
                continue  # a sub-folder's keys are contiguous
            out.append(name)
            if len(out) == limit:
                break
        return out

    def _created(self, key: str) -> None:
        if self._order is not None:
            self._added.append(key)
            if len(self._added) > RESORT_SLACK + len(self._order) // 8:
                self._order, self._added = None, []  # cheaper to sort again

    def _deleted(self, count: int) -> None:
        if self._order is not None:
            self._dropped += count
            if self._dropped > RESORT_SLACK + len(self._order) // 2:
                self._order, self._added = None, []  # mostly dead keys: sort again

    def _keys_from(self, floor: str, inclusive: bool) -> Iterator[str]:
        """Live keys from ``floor`` on, in order (a key re-created after a delete may come
        twice, next to itself). Consumed without an await: nothing changes meanwhile."""
        order = self._order
        if order is None:
            order = self._order = sorted(self._data)
            self._dropped = 0
        start = (bisect.bisect_left if inclusive else bisect.bisect_right)(order, floor)
        added = sorted(k for k in self._added if k > floor or (inclusive and k == floor))
        data = self._data
        for key in heapq.merge((order[i] for i in range(start, len(order))), added):
            if key in data:
                yield key

    async def update(self, key: str, fn: Updater) -> Any | None:
        """Atomically store ``fn(old)`` (None deletes); return the new value."""
        self._check()
        if not isinstance(key, str) or not key:
            raise TypeError(f"storage key must be a non-empty str, got {key!r}")
        blob = self._data.get(key)
        new = fn(orjson.loads(blob) if blob is not None else None)
        if new is None:
            if self._data.pop(key, None) is not None:
                self._deleted(1)
        else:
            encoded = orjson.dumps(new)
            if blob is None:
                self._created(key)
            self._data[key] = encoded
        return new

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with ``prefix``; return the count."""
        self._check()
        doomed = [k for k in self._data if k.startswith(prefix)]
        for k in doomed:
            del self._data[k]
        self._deleted(len(doomed))
        return len(doomed)

    async def close(self) -> None:
        """Drop the data."""
        self._closed = True
        self._data.clear()
        self._order, self._added = [], []  # drop the key references too
