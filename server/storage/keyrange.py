"""Key-range helpers of the durable engines: a prefix as a key range, and the children of a
prefix read from a range scan in key order (SQLite and PostgreSQL ``list``/``list_page``)."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["collect_children", "list_children", "prefix_end"]


def prefix_end(prefix: str) -> str | None:
    """The smallest string above every string that starts with ``prefix`` (None: no bound).

    SQLite compares TEXT by its UTF-8 bytes, and PostgreSQL's ``COLLATE "C"`` too, which
    orders like Python compares code points, so ``prefix <= key < prefix_end(prefix)``
    selects exactly the keys with that prefix.
    """
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < 0x10FFFF:
            following = last + 1
            if 0xD800 <= following <= 0xDFFF:  # surrogates cannot occur in stored keys
                following = 0xE000
            return "".join(chars) + chr(following)
    return None


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


def list_children(keys: Iterable[str], prefix: str) -> list[str]:
    """Vault-style listing: the immediate children of ``prefix`` among ``keys`` (any order)."""
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
