"""The storage protocol every backend and the server use, and the in-memory engine.

Keys are non-empty ``/``-separated strings that UTF-8 can encode and PostgreSQL can hold:
no NUL character, no lone surrogate. ``list(prefix)`` follows Vault: it returns the
immediate children under ``prefix`` (which should end with ``/`` or be empty), with a
trailing ``/`` on names that have deeper keys, sorted. ``list_page(prefix, after, limit)``
returns the same children one page at a time (those sorting after ``after``, at most
``limit``), so a scan of a large folder never holds all its keys at once.

Values are stored as JSON, encoded by :func:`encode` in every engine (memory, SQLite,
PostgreSQL), so every engine accepts and refuses the same values and hands back a fresh
copy decoded from what it stored:

======================================  ==================================================
value                                   what the engines do
======================================  ==================================================
dict (str keys), list, str, int, float  stored; read back equal
bool, None                              stored; read back equal (``None`` is stored as a
                                        JSON ``null``: the key exists, ``get`` gives None)
tuple                                   stored as a JSON array: read back as a list
NaN, ``inf``, ``-inf``                  stored as ``null`` (orjson's rule): read back None
dataclass, datetime, UUID, Enum         stored in their JSON form (dict, ISO text, text,
                                        the member's value): read back as such
set, bytes, other objects               refused: ``TypeError``
a dict key that is not a str            refused: ``TypeError``
an int outside [-2**63, 2**64 - 1]      refused: ``TypeError``
a str holding a lone surrogate          refused: ``TypeError``
======================================  ==================================================

(``orjson.JSONEncodeError`` is the ``TypeError`` raised.) A refused value fails its write
and leaves the previous value in place.
"""

from __future__ import annotations

import bisect
import builtins
import heapq
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

import orjson

__all__ = [
    "Storage",
    "InMemoryStorage",
    "PrefixedStorage",
    "Updater",
    "check_key",
    "storable",
    "check_page_args",
    "walk",
    "check_prefix",
    "decode",
    "encode",
    "page_floor",
]

_T = TypeVar("_T")

#: ``update``'s function: the old value (None: missing) → the new one (None deletes).
Updater = Callable[[Any], _T]


def encode(value: object) -> bytes:
    """``value`` as stored by every engine: compact JSON (UTF-8), orjson's rules (see the
    module docstring).

    :raises TypeError: ``value`` is not JSON-serialisable (``orjson.JSONEncodeError``).
    """
    return orjson.dumps(value)


def decode(blob: bytes | str) -> Any:
    """A fresh Python value from what :func:`encode` produced."""
    return orjson.loads(blob)


def storable(text: str) -> bool:
    """True when PostgreSQL and UTF-8 can hold ``text`` (no NUL, no lone surrogate)."""
    if "\x00" in text:
        return False
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return False
    return True


def check_key(key: object) -> None:
    """Refuse a key no engine can hold (every engine calls this for every key it is given).

    :raises TypeError: ``key`` is not a str, or is empty.
    :raises ValueError: ``key`` holds a NUL character or a lone surrogate.
    """
    if not isinstance(key, str) or not key:
        raise TypeError(f"storage key must be a non-empty str, got {key!r}")
    if not (key.isascii() and "\x00" not in key) and not storable(key):  # inlined: every get
        raise ValueError("storage key must be valid UTF-8 without NUL characters")


def check_prefix(prefix: object, name: str = "prefix") -> None:
    """Refuse a key prefix (``list``, ``list_page``, ``delete_prefix``) no key could start with.

    :raises TypeError: ``prefix`` is not a str.
    :raises ValueError: ``prefix`` holds a NUL character or a lone surrogate.
    """
    if not isinstance(prefix, str):
        raise TypeError(f"{name} must be a str, got {prefix!r}")
    if not storable(prefix):
        raise ValueError(f"{name} must be valid UTF-8 without NUL characters")


async def walk(storage: Storage, prefix: str, after: str = "", page: int = 1024) -> AsyncIterator[str]:
    """Every child of ``prefix`` that sorts after ``after``, in key order, fetched ``page`` at a
    time (``list_page``): a scan of a large folder holds one page of names. Each page starts
    after the last name seen, so keys deleted (or added) meanwhile never make the walk skip or
    repeat another key."""
    while True:
        names = await storage.list_page(prefix, after, page)
        for name in names:
            yield name
        if len(names) < page:
            return
        after = names[-1]


def check_page_args(prefix: object, after: object, limit: object) -> None:
    """Refuse bad ``list_page`` arguments (every engine calls this first).

    :raises TypeError: ``prefix`` or ``after`` is not a str, ``limit`` not an int.
    :raises ValueError: ``limit`` is below 1; ``prefix`` or ``after`` holds a NUL
        character or a lone surrogate.
    """
    check_prefix(prefix)
    check_prefix(after, "after")
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


@runtime_checkable
class Storage(Protocol):
    """Key/value storage with JSON values. Every write is atomic and durable when it returns.

    Every method refuses a key or prefix that no engine can hold (:func:`check_key`,
    :func:`check_prefix`), and every write a value that none can store (:func:`encode`).
    """

    async def get(self, key: str) -> Any | None:
        """Return the value at ``key`` or None."""

    async def put(self, key: str, value: object) -> None:
        """Store ``value`` at ``key`` (replacing it).

        :raises TypeError: ``value`` is not JSON-serialisable (see the module docstring).
        """

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
        :raises ValueError: ``limit`` is below 1 (or see :func:`check_prefix`).
        """

    async def update(self, key: str, fn: Updater[_T]) -> _T:
        """Atomically read ``key``, call ``fn(old)`` and store its result (None deletes).

        Returns the new value. ``fn`` must be a pure, fast function: no I/O, no awaits.
        Concurrent updates of one key are serialised (across nodes for shared backends).
        If ``fn`` raises, or its result cannot be stored, the old value stays.
        """

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with ``prefix`` in one transaction; return the count."""


#: Keys created (or deleted) since the last sort that ``list_page`` tolerates on top of
#: 1/8 (1/2) of the sorted keys before it sorts them all again.
RESORT_SLACK = 4096


class InMemoryStorage:
    """The in-memory engine (``storage: {type: memory}``, and the tests' storage): a dict
    of encoded values; everything is lost when the process exits.

    Values are stored encoded (:func:`encode`, as the durable engines do), so a value that
    is not JSON-serialisable fails its write exactly as on SQLite or PostgreSQL, and every
    ``get`` decodes a fresh copy. No await separates the read and the write of ``update``,
    so it is atomic within the event loop. It implements the server's engine extras
    (``server.storage.Engine``): one process owns the data, so nothing is ever announced.

    ``list`` and ``list_page`` seek in a sorted list of the keys (references to the
    dict's own key strings, 8 bytes each), re-sorted only once enough keys were created
    or deleted since: keys created meanwhile are merged in from a shorter list kept sorted
    (a page seeks in both, so its cost does not grow with the keys created since the sort),
    deleted ones skipped.
    """

    #: One process owns the data: a miss is a miss.
    shared = False

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self._closed = False
        self._order: builtins.list[str] | None = []  # the keys at the last sort (None: sort again)
        self._added: builtins.list[str] = []  # keys created since that sort, sorted
        self._dropped = 0  # keys deleted since that sort

    def _check(self) -> None:
        if self._closed:
            raise RuntimeError("storage is closed")

    async def get(self, key: str) -> Any | None:
        """Return the value at ``key`` or None."""
        self._check()
        check_key(key)
        blob = self._data.get(key)
        return decode(blob) if blob is not None else None

    def peek_cached(self, key: str) -> bytes | None:
        """The stored bytes of ``key`` (what ``get`` would decode), or None. A write stores
        a new bytes object, so callers may key what they decode from it on its identity."""
        self._check()
        return self._data.get(key)

    async def put(self, key: str, value: object) -> None:
        """Store ``value`` at ``key``."""
        self._check()
        check_key(key)
        self._store(key, _compact(encode(value)))

    async def put_many(self, items: Sequence[tuple[str, object]]) -> None:
        """``put`` each (key, value) pair; nothing is written if one cannot be stored."""
        self._check()
        encoded = []
        for key, value in items:
            check_key(key)
            encoded.append((key, _compact(encode(value))))
        for key, blob in encoded:
            self._store(key, blob)

    def _store(self, key: str, blob: bytes) -> None:
        if key not in self._data:
            self._created(key)
        self._data[key] = blob

    async def delete(self, key: str) -> None:
        """Delete ``key``; a missing key is fine."""
        self._check()
        check_key(key)
        if self._data.pop(key, None) is not None:
            self._deleted(1)

    async def list(self, prefix: str) -> builtins.list[str]:
        """Immediate children under ``prefix`` (sorted; sub-folders end with ``/``)."""
        self._check()
        check_prefix(prefix)
        return self._page(prefix, "", None)

    async def list_page(self, prefix: str, after: str = "", limit: int = 1000) -> builtins.list[str]:
        """The children ``list`` would return that sort after ``after``, at most ``limit``."""
        self._check()
        check_page_args(prefix, after, limit)
        return self._page(prefix, after, limit)

    def _page(self, prefix: str, after: str, limit: int | None) -> builtins.list[str]:
        floor, inclusive = page_floor(prefix, after)
        cut = len(prefix)
        out: builtins.list[str] = []
        for key in self._keys_from(floor, inclusive):
            if not key.startswith(prefix):
                break  # keys come in order: past the prefix's range
            rest = key[cut:]
            slash = rest.find("/")
            name = rest if slash < 0 else rest[: slash + 1]
            if not name or (out and out[-1] == name):
                continue  # the key equal to the prefix; a sub-folder's keys are contiguous
            out.append(name)
            if len(out) == limit:
                break
        return out

    def _created(self, key: str) -> None:
        if self._order is not None:
            bisect.insort(self._added, key)  # kept sorted: a page seeks in it as in the sorted keys
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
        seek = bisect.bisect_left if inclusive else bisect.bisect_right
        start, added = seek(order, floor), self._added
        data = self._data
        for key in heapq.merge((order[i] for i in range(start, len(order))),
                               (added[i] for i in range(seek(added, floor), len(added)))):
            if key in data:
                yield key

    async def update(self, key: str, fn: Updater[_T]) -> _T:
        """Atomically store ``fn(old)`` (None deletes); return the new value."""
        self._check()
        check_key(key)
        blob = self._data.get(key)
        new = fn(decode(blob) if blob is not None else None)
        if new is None:
            if blob is not None:
                del self._data[key]
                self._deleted(1)
        else:
            self._store(key, _compact(encode(new)))
        return new

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with ``prefix``; return the count."""
        self._check()
        check_prefix(prefix)
        doomed = [k for k in self._data if k.startswith(prefix)]
        for k in doomed:
            del self._data[k]
        self._deleted(len(doomed))
        return len(doomed)

    def set_invalidation_callback(self, cb: Callable[[str], None]) -> None:
        """Accepted for interface parity; one process owns the data, so it is never called."""

    def set_unannounced_prefixes(self, prefixes: Sequence[str]) -> None:
        """Accepted for interface parity; nothing is announced."""

    async def export_rows(self, write: Callable[[str, bytes], None]) -> int:
        """``write(key, stored bytes)`` for every key, in key order, at one instant (no
        await between rows); the number of rows."""
        self._check()
        for key in sorted(self._data):
            write(key, self._data[key])
        return len(self._data)

    def dump(self) -> dict[str, Any]:
        """Every key with a fresh copy of its value, in key order (tests, debugging)."""
        self._check()
        return {key: decode(self._data[key]) for key in sorted(self._data)}

    async def close(self) -> None:
        """Drop the data; later calls raise ``RuntimeError``."""
        self._closed = True
        self._data.clear()
        self._order, self._added = [], []  # drop the key references too


def _compact(blob: bytes) -> bytes:
    """A copy of orjson's output that is only as big as its content: the output object
    keeps orjson's whole working buffer (~8 KiB for a 700-byte token entry)."""
    return bytes(memoryview(blob))


class PrefixedStorage:
    """A view of another Storage limited to keys under ``prefix`` (a mount's own storage)."""

    def __init__(self, inner: Storage, prefix: str) -> None:
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        self.inner = inner
        self.prefix = prefix

    async def get(self, key: str) -> Any | None:
        return await self.inner.get(self.prefix + key)

    async def put(self, key: str, value: object) -> None:
        await self.inner.put(self.prefix + key, value)

    async def delete(self, key: str) -> None:
        await self.inner.delete(self.prefix + key)

    async def list(self, prefix: str) -> builtins.list[str]:
        return await self.inner.list(self.prefix + prefix)

    async def list_page(self, prefix: str, after: str = "", limit: int = 1000) -> builtins.list[str]:
        check_page_args(prefix, after, limit)
        return await self.inner.list_page(self.prefix + prefix, after, limit)

    async def update(self, key: str, fn: Updater[_T]) -> _T:
        return await self.inner.update(self.prefix + key, fn)

    async def delete_prefix(self, prefix: str) -> int:
        return await self.inner.delete_prefix(self.prefix + prefix)
