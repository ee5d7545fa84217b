"""The storage protocol every backend and the server use, and an in-memory implementation.

Values are JSON-compatible Python objects (dict/list/str/int/float/bool/None). Keys are
``/``-separated strings. ``list(prefix)`` follows Vault: it returns the immediate children
under ``prefix`` (which should end with ``/`` or be empty), with a trailing ``/`` on names
that have deeper keys, sorted.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

__all__ = ["Storage", "InMemoryStorage", "PrefixedStorage", "list_children"]

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

    async def update(self, key: str, fn: Updater) -> Any | None:
        return await self.inner.update(self.prefix + key, fn)

    async def delete_prefix(self, prefix: str) -> int:
        return await self.inner.delete_prefix(self.prefix + prefix)
