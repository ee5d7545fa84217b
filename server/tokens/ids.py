"""Token ids: random base62 from the OS CSPRNG, and the selector layout of minted tokens."""

from __future__ import annotations

import os
import string
import threading

__all__ = [
    "TOKEN_LEN",
    "ACCESSOR_LEN",
    "SELECTOR_LEN",
    "random_b62",
    "mint_ids",
    "token_selector",
    "accessor_selector",
    "selector_time",
    "selector_due",
    "due_cutoff",
]

_B62 = string.digits + string.ascii_letters
# byte -> base62 character; bytes >= 248 (= 4 * 62) are dropped, which keeps it uniform.
_B62_TABLE = bytes(ord(_B62[b % 62]) for b in range(256))
_B62_REJECT = bytes(range(248, 256))


#: Random bytes drawn per ``os.urandom`` call for the pool below; ~3,900 base62 characters,
#: about a hundred minted tokens.
_POOL_BYTES = 4096


class _Pool(threading.local):
    """Base62 characters drawn ahead, per thread (two threads never share a slice)."""

    chars: bytes = b""
    pos: int = 0


_pool = _Pool()


def _forget_pool() -> None:
    """In a forked child: draw afresh (parent and child must never hand out the same bytes)."""
    global _pool
    _pool = _Pool()


os.register_at_fork(after_in_child=_forget_pool)


def random_b62(n: int = 24) -> str:
    """``n`` uniformly random base62 characters from the OS CSPRNG (rejection sampling).

    Drawn from a per-thread pool that one ``os.urandom`` call refills every ~3,900
    characters. On the serving process a ``getrandom`` call per token cost 2.3-5 % of a
    service login's CPU (``bench/ab.py login``, three runs; docs/performance.md), where a
    loop of its own had shown 0.2 us. Each character is handed out once; a forked child
    drops the parent's pool.
    """
    pool = _pool
    pos = pool.pos
    end = pos + n
    chars = pool.chars
    if end > len(chars):
        chars = b""
        while len(chars) < n:
            chars += os.urandom(max(_POOL_BYTES, 2 * n)).translate(_B62_TABLE, _B62_REJECT)
        pool.chars, pos, end = chars, 0, n
    pool.pos = end
    return chars[pos:end].decode("ascii")


# ---------------------------------------------------------------------------------------
# Minted service tokens: "hvs." + selector + secret (the split-token pattern). The selector
# locates the one storage row (time-ordered, so new rows append to the key index instead
# of landing on random pages); the secret is never stored, only an HMAC of the whole token.
# selector = minting time (ms) + first possible expiry (s) + random tail.

#: base62 digits in ASCII order: the text order of two selectors is their time order
#: (SQLite and PostgreSQL's ``COLLATE "C"`` compare keys byte by byte).
_B62_ORDERED = string.digits + string.ascii_uppercase + string.ascii_lowercase
_TIME_LEN = 8  # milliseconds since the epoch; 62**8 ms lasts until the year 8888
#: The expiry the token was minted with, in whole seconds (renewals only extend it), so the
#: sweeper can tell from the key alone that a row cannot have expired yet. 62**6 s lasts
#: until the year 3770; "zzzzzz" means never (non-expiring root tokens).
_DUE_LEN = 6
_DUE_NEVER = 62**_DUE_LEN - 1
_TAIL_LEN = 10  # random (59 bits): unique across processes and nodes minting in one ms
SELECTOR_LEN = _TIME_LEN + _DUE_LEN + _TAIL_LEN
_SECRET_LEN = 22  # 22 base62 characters = 131 bits from the OS CSPRNG
_ACCESSOR_TAIL_LEN = 8
TOKEN_LEN = len("hvs.") + SELECTOR_LEN + _SECRET_LEN
ACCESSOR_LEN = SELECTOR_LEN + _ACCESSOR_TAIL_LEN


def _encode(value: int, width: int) -> str:
    """``value`` in ``width`` ordered base62 digits (clamped to what fits)."""
    value = min(max(0, value), 62**width - 1)
    high, low = divmod(value, 62 * 62)
    # The leading digits change every 3844 ms (or s): cached, the rest is one table lookup.
    prefix = _PREFIXES.get((width, high))
    if prefix is None:
        digits: list[str] = []
        rest = high
        for _ in range(width - 2):
            rest, digit = divmod(rest, 62)
            digits.append(_B62_ORDERED[digit])
        prefix = "".join(reversed(digits))
        if len(_PREFIXES) >= 64:
            _PREFIXES.clear()
        _PREFIXES[(width, high)] = prefix
    return prefix + _PAIRS[low]


_PAIRS = [a + b for a in _B62_ORDERED for b in _B62_ORDERED]  # two digits, in order
_PREFIXES: dict[tuple[int, int], str] = {}


def _decode(text: str) -> int:
    value = 0
    for ch in text:
        value = value * 62 + _B62_ORDERED.index(ch)
    return value


def mint_ids(now: float, expire_time: float = 0.0) -> tuple[str, str, str]:
    """A fresh ``(selector, raw token, accessor)`` for a service token minted at ``now``
    that expires at ``expire_time`` (0: never).

    The accessor is the selector plus its own random part, so it finds the same row.
    """
    rand = random_b62(_TAIL_LEN + _SECRET_LEN + _ACCESSOR_TAIL_LEN)
    due = int(expire_time) if expire_time else _DUE_NEVER  # rounded down: never after the expiry
    selector = _encode(round(now * 1000), _TIME_LEN) + _encode(due, _DUE_LEN) + rand[:_TAIL_LEN]
    secret = rand[_TAIL_LEN : _TAIL_LEN + _SECRET_LEN]
    return selector, "hvs." + selector + secret, selector + rand[_TAIL_LEN + _SECRET_LEN :]


def token_selector(raw: str) -> str | None:
    """The selector of a token shaped like a minted one (``hvs.`` + 40 base62), else None."""
    if len(raw) == TOKEN_LEN and raw.startswith("hvs.") and raw.isascii() and raw[4:].isalnum():
        return raw[4 : 4 + SELECTOR_LEN]
    return None


def accessor_selector(accessor: str) -> str | None:
    """The selector inside an accessor of a minted token (26 base62), else None (legacy)."""
    if len(accessor) == ACCESSOR_LEN and accessor.isascii() and accessor.isalnum():
        return accessor[:SELECTOR_LEN]
    return None


def selector_time(selector: str) -> float:
    """The minting time (unix seconds, millisecond precision) a selector carries."""
    return _decode(selector[:_TIME_LEN]) / 1000


def selector_due(selector: str) -> float:
    """The expiry a token was minted with, rounded down to the second (0: never expires)."""
    due = _decode(selector[_TIME_LEN : _TIME_LEN + _DUE_LEN])
    return 0.0 if due == _DUE_NEVER else float(due)


def due_cutoff(now: float) -> tuple[int, int, str]:
    """``(start, end, cutoff)``: a selector row may have expired by ``now`` only when
    ``selector[start:end] <= cutoff`` (a string comparison, cheap for a full key list)."""
    return _TIME_LEN, _TIME_LEN + _DUE_LEN, _encode(int(now), _DUE_LEN)
