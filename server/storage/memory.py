"""In-memory storage engine for ``--dev`` and tests, with the same JSON semantics as the others."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from plugin.storage import Updater, check_page_args, list_children, page_children

__all__ = ["MemoryStorage"]


class MemoryStorage:
    """A dict of JSON-encoded values; everything is lost when the process exits.

    Values are stored encoded (as the durable engines do), so a value that is not
    JSON-serialisable fails its write exactly like it would on SQLite or PostgreSQL, and
    callers never share mutable objects with the store. No await separates the read and
    the write of ``update``, so it is atomic within the event loop.
    """

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self._closed = False

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
        self._data[key] = orjson.dumps(value)

    async def delete(self, key: str) -> None:
        """Delete ``key``; a missing key is fine."""
        self._check()
        self._data.pop(key, None)

    async def list(self, prefix: str) -> list[str]:
        """Immediate children under ``prefix`` (sorted; sub-folders end with ``/``)."""
        self._check()
        return list_children(self._data.keys(), prefix)

    async def list_page(self, prefix: str, after: str = "", limit: int = 1000) -> list[str]:
        """The children ``list`` would return sorting after ``after``, at most ``limit``.

        One pass over every key per page (the dict is not ordered by key): a walk of a
        large folder costs keys x pages. Fine for ``--dev`` and tests; the durable
        engines seek in their key index instead.
        """
        self._check()
        check_page_args(prefix, after, limit)
        return page_children(self._data.keys(), prefix, after, limit)

    async def update(self, key: str, fn: Updater) -> Any | None:
        """Atomically store ``fn(old)`` (None deletes); return the new value."""
        self._check()
        if not isinstance(key, str) or not key:
            raise TypeError(f"storage key must be a non-empty str, got {key!r}")
        blob = self._data.get(key)
        new = fn(orjson.loads(blob) if blob is not None else None)
        if new is None:
            self._data.pop(key, None)
        else:
            self._data[key] = orjson.dumps(new)
        return new

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with ``prefix``; return the count."""
        self._check()
        doomed = [k for k in self._data if k.startswith(prefix)]
        for k in doomed:
            del self._data[k]
        return len(doomed)

    async def close(self) -> None:
        """Drop the data."""
        self._closed = True
        self._data.clear()
