"""Per-IP login buckets shared by the workers of one server (``--workers N``).

Every worker spends from the same bucket of a client IP, so ``login_per_ip_per_second``
and ``login_burst`` mean what they mean on one process, whichever workers the client's
connections land on. The supervisor creates the table (``create_table``): a file in
``/dev/shm`` (or the temporary directory), unlinked at once, whose descriptor every worker
inherits (``TABLE_FD_ENV``) and maps. Nothing outside the server can open it, and it is
gone when the last process holding it exits.

Layout: a 64-byte header (magic, number of sets, a random 16-byte key for the hash) and
``SETS`` sets of ``WAYS`` entries ``(key hash, tokens left, time of the last request)``.
A client's set is chosen by a keyed BLAKE2b of its bucket key (``client_key``), so nobody
can aim their addresses at another client's set. A worker spends a token under a POSIX
record lock on that set's bytes (``lockf``; a lock dies with its process, so a killed
worker cannot leave a set locked). A new client takes an empty entry, else one whose
bucket is full again (forgetting it changes nothing), else the set's least recently used.
Times are ``CLOCK_MONOTONIC``, one clock for every process of the machine.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import secrets
import struct
import tempfile
import time
from collections.abc import Callable

__all__ = ["TABLE_FD_ENV", "SETS", "WAYS", "SharedTokenBuckets", "create_table", "inherited_table"]

#: The table's descriptor, inherited from the supervisor (never set by hand).
TABLE_FD_ENV = "AUTHMOUNT_RATELIMIT_FD"
#: Sets x ways = the clients tracked at once (131,072, as many as one process's LRU holds
#: and more); 3 MiB, allocated by the kernel as sets are first touched.
SETS = 32768
WAYS = 4
_MAGIC = b"amrl0001"
_HEADER = 64
_ENTRY = struct.Struct("<Qdd")  # key hash (0: empty), tokens left, time of the last request
_SET = _ENTRY.size * WAYS
_SIZE = _HEADER + SETS * _SET


def create_table() -> int:
    """Supervisor: a new, empty table; its descriptor (inheritable by ``pass_fds``)."""
    folder = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    fd, path = tempfile.mkstemp(prefix="authmount-ratelimit-", dir=folder)
    os.unlink(path)
    try:
        os.ftruncate(fd, _SIZE)
        header = _MAGIC + struct.pack("<I", SETS) + secrets.token_bytes(16)
        os.pwrite(fd, header, 0)
    except OSError:
        os.close(fd)
        raise
    return fd


def inherited_table() -> int | None:
    """Worker: the supervisor's table descriptor, or None (one process, or none given)."""
    raw = os.environ.get(TABLE_FD_ENV, "")
    return int(raw) if raw.isdigit() else None


class SharedTokenBuckets:
    """``TokenBuckets`` (``rate`` per second, at most ``burst``) kept in the shared table."""

    def __init__(self, fd: int, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic,
                 block_max: float = 0.0) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0, burst >= 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._refill_time = self.burst / self.rate + block_max
        self._fd = fd
        self._map = mmap.mmap(fd, _SIZE)
        if self._map[: len(_MAGIC)] != _MAGIC or struct.unpack_from("<I", self._map, 8)[0] != SETS:
            raise ValueError("not a rate-limit table of this version")
        self._key = bytes(self._map[12:28])

    def _slot(self, key: str) -> tuple[int, int]:
        digest = hashlib.blake2b(key.encode(), digest_size=8, key=self._key).digest()
        h = int.from_bytes(digest, "little") or 1
        return h, _HEADER + (h % SETS) * _SET

    def take(self, key: str, block: float = 0.0) -> float:
        """Spend one token of ``key``: 0.0 when allowed, else the seconds until one is there
        (``block``: as ``TokenBuckets.take``)."""
        h, base = self._slot(key)
        m = self._map
        fcntl.lockf(self._fd, fcntl.LOCK_EX, _SET, base, os.SEEK_SET)
        try:
            now = self._clock()
            victim, victim_last = -1, float("inf")
            for way in range(WAYS):
                at = base + way * _ENTRY.size
                kh: int
                tokens: float
                last: float
                kh, tokens, last = _ENTRY.unpack_from(m, at)
                if kh == h:
                    tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
                    if tokens >= 1.0:
                        _ENTRY.pack_into(m, at, h, tokens - 1.0, now)
                        return 0.0
                    if block:
                        tokens = min(tokens, 1.0 - block * self.rate)
                    _ENTRY.pack_into(m, at, h, tokens, now)
                    return (1.0 - tokens) / self.rate
                if kh == 0 or now - last >= self._refill_time:
                    last = float("-inf")  # empty or full again: the best victim
                if last < victim_last:
                    victim, victim_last = at, last
            _ENTRY.pack_into(m, victim, h, self.burst - 1.0, now)
            return 0.0
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, _SET, base, os.SEEK_SET)

    def clear(self) -> None:
        """Every bucket full again (new limits on SIGHUP)."""
        fcntl.lockf(self._fd, fcntl.LOCK_EX, _SIZE - _HEADER, _HEADER, os.SEEK_SET)
        try:
            self._map[_HEADER:] = bytes(_SIZE - _HEADER)
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, _SIZE - _HEADER, _HEADER, os.SEEK_SET)

    def __len__(self) -> int:
        """Clients tracked (a full scan: tests and diagnostics)."""
        m = self._map
        return sum(1 for at in range(_HEADER, _SIZE, _ENTRY.size) if _ENTRY.unpack_from(m, at)[0] != 0)
