"""The storage protocol every backend and the server use, and an in-memory implementation.

Values are JSON-compatible Python objects (dict/list/str/int/float/bool/None). Keys are
``/``-separated strings. ``list(prefix)`` follows Vault: it returns the immediate children
under ``prefix`` (which should end with ``/`` or be empty), with a trailing ``/`` on names
that have deeper keys, sorted. ``list_page(prefix, after, limit)`` returns the same children
one page at a time (those sorting after ``after``, at most ``limit``), so a scan of a large
folder never holds all its keys at once.
"""

from __future__ import annotations

import asyncio
import builtins
import copy
from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "Storage",
    "InMemoryStorage",
    "PrefixedStorage",
    "check_page_args",
    "collect_children",
    "list_children",
    "page_children",
    "page_floor",
]

Updater = Callable[[Any | None], Any | None]


@runtime_checkable
class Storage(Protocol):
    """Key/value storage with JSON values. Every write is atomic and durable when it returns."""

    async def get(self, key: str) -> Any | None:
        """Return the value at ``key`` or None."""

    async def put(self, key: str, value: Any) -> None:
        """Store ``value`` at ``key`` (replacing it)."""

    async def delete(self, key: str) -> None:
        """Delete ``key``; deleting a missing key is not an error."""

    async def list(self, prefix: str) -> list[str]:
        """Immediate children under ``prefix`` (sorted; sub-folders end with ``/``)."""

    async def list_page(self, prefix: str, after: str = "", limit: int = 1000) -> builtins.list[str]:
        """The children ``list(prefix)`` would return that sort strictly after ``after``,
        at most ``limit`` of them (sorted; sub-folders end with ``/``).

        Page through a folder with ``after`` = the last name of the previous page: keys
        deleted or added meanwhile never make the walk skip or repeat another key.

        :raises TypeError: ``prefix`` or ``after`` is not a str, ``limit`` not an int.
        :raises ValueError: ``limit`` is below 1.
        """

    async def update(self, key: str, fn: Updater) -> Any | None:
        """Atomically read ``key``, call ``fn(old)`` and store its result (None deletes).

        Returns the new value. ``fn`` must be a pure, fast function: no I/O, no awaits.
        Concurrent updates of one key are serialised (across nodes for shared backends).
        """

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with ``prefix`` in one transaction; return the count."""


def list_children(keys: list[str] | Any, prefix: str) -> list[str]:
    """Vault-style listing: immediate children of ``prefix`` among ``keys``."""
    out: set[str] = set()
    plen = len(prefix)
    for key in keys:
        if not key.startswith(prefix):
            continue
        rest = key[plen:]
        slash = rest.find("/")
        out.add(rest if slash < 0 else rest[: slash + 1])
    out.discard("")
    return sorted(out)


def check_page_args(prefix: Any, after: Any, limit: Any) -> None:
    """Refuse bad ``list_page`` arguments (every engine calls this first).

    :raises TypeError: ``prefix`` or ``after`` is not a str, ``limit`` not an int.
    :raises ValueError: ``limit`` is below 1.
    """
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {prefix!r}")
    if not isinstance(after, str):
        raise TypeError(f"after must be a str, got {after!r}")
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be an int, got {limit!r}")
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")


def page_floor(prefix: str, after: str) -> tuple[str, bool]:
    """The lowest key whose child of ``prefix`` sorts after ``after``: (key, inclusive).

    Children sort in the order of their keys, so a page is a key range from here. After
    a leaf name every greater key qualifies (strictly greater); after a name holding a
    ``/`` the whole sub-folder it names is passed: the range starts at the first key
    above that folder (``"0"`` follows ``"/"``), inclusive.
    """
    slash = after.find("/")
    if slash < 0:
        return prefix + after, False
    return prefix + after[:slash] + "0", True


def collect_children(keys: Iterable[str], prefix: str, out: list[str]) -> str | None:
    """Append to ``out`` the children of ``prefix`` that ``keys`` (one range scan, in key
    order) name, up to the first key inside a sub-folder, which is named once. Return the
    key that seeks past that sub-folder (``"0"`` follows ``"/"``), or None when the keys
    held no sub-folder. The key equal to ``prefix`` is not a child."""
    cut = len(prefix)
    for key in keys:
        rest = key[cut:]
        slash = rest.find("/")
        if slash < 0:
            if rest:
                out.append(rest)
            continue
        out.append(rest[: slash + 1])
        return prefix + rest[:slash] + "0"
    return None


def page_children(keys: list[str] | Any, prefix: str, after: str, limit: int) -> list[str]:
    """``list_page`` over an iterable of keys: one pass, at most ~2 * ``limit`` names held."""
    found: set[str] = set()
    ceiling: str | None = None  # names above it cannot make the page any more
    plen = len(prefix)
    for key in keys:
        if not key.startswith(prefix):
            continue
        rest = key[plen:]
        slash = rest.find("/")
        name = rest if slash < 0 else rest[: slash + 1]
        if not name or name <= after or (ceiling is not None and name > ceiling):
            continue
        found.add(name)
        if len(found) >= 2 * limit:
            kept = sorted(found)[:limit]
            found, ceiling = set(kept), kept[-1]
    return sorted(found)[:limit]


class InMemoryStorage:
    """A dict-backed Storage for tests and the ``--dev`` server. Values are deep-copied."""

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}
        self._lock = asyncio.Lock()

    async def get(self, key: str) -> Any | None:
        value = self._data.get(key)
        return copy.deepcopy(value) if value is not None else None

    async def put(self, key: str, value: Any) -> None:
        self._data[key] = copy.deepcopy(value)

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)

    async def list(self, prefix: str) -> list[str]:
        return list_children(self._data.keys(), prefix)

    async def list_page(self, prefix: str, after: str = "", limit: int = 1000) -> builtins.list[str]:
        check_page_args(prefix, after, limit)
        return page_children(self._data.keys(), prefix, after, limit)

    async def update(self, key: str, fn: Updater) -> Any | None:
        # No await between read and write: atomic within the event loop.
        new = fn(copy.deepcopy(self._data.get(key)))
        if new is None:
            self._data.pop(key, None)
        else:
            self._data[key] = copy.deepcopy(new)
        return new

    async def delete_prefix(self, prefix: str) -> int:
        doomed = [k for k in self._data if k.startswith(prefix)]
        for k in doomed:
            del self._data[k]
        return len(doomed)

    async def close(self) -> None:
        """Nothing to release."""


class PrefixedStorage:
    """A view of another Storage limited to keys under ``prefix`` (a mount's own storage)."""

    def __init__(self, inner: Storage, prefix: str) -> None:
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        self.inner = inner
        self.prefix = prefix

    async def get(self, key: str) -> Any | None:
        return await self.inner.get(self.prefix + key)

    async def put(self, key: str, value: Any) -> None:
        await self.inner.put(self.prefix + key, value)

    async def delete(self, key: str) -> None:
        await self.inner.delete(self.prefix + key)

    async def list(self, prefix: str) -> list[str]:
        return await self.inner.list(self.prefix + prefix)

    async def list_page(self, prefix: str, after: str = "", limit: int = 1000) -> builtins.list[str]:
        check_page_args(prefix, after, limit)
        return await self.inner.list_page(self.prefix + prefix, after, limit)

    async def update(self, key: str, fn: Updater) -> Any | None:
        return await self.inner.update(self.prefix + key, fn)

    async def delete_prefix(self, prefix: str) -> int:
        return await self.inner.delete_prefix(self.prefix + prefix)
