"""Abuse limits on the unauthenticated paths: per-client-IP token buckets and a login slot cap.

Every mount's ``login``, ``oidc/auth_url`` and ``oidc/callback`` need no token, so anyone
can make the server verify signatures, fetch keys or call the IdP (docs/reference/security.md 3.9;
``oidc/auth_url`` writes no storage, its state travels sealed with the flow). The OIDC
provider's ``token`` and ``userinfo`` (``PathSpec.login_like``) run under the same limits.
Two limits guard them, both answered with Vault's quota error (429, ``Retry-After``):

- a token bucket per client IP (after trusted-proxy ``X-Forwarded-For`` handling; IPv6
  clients are grouped by /64, which one host typically owns), shared by all mounts;
- a global cap on unauthenticated requests running at once (``Slots``); a request over
  the cap waits up to ``QUEUE_WAIT`` seconds for a slot.

The bucket table is an LRU of at most ``MAX_TRACKED_IPS`` entries; a bucket idle long enough
to be full again is dropped, since forgetting a full bucket changes nothing. With
``--workers`` the buckets live in a table the workers share (``ratelimit_shared``): a
client's logins are counted once whichever worker takes them. The concurrency cap stays
per worker process: it bounds the work one event loop takes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from aiohttp import web

from plugin.errors import RateLimited
from plugin.framework import Backend, Request, Response
from server.appkeys import MOUNT, SETTINGS
from server.http.ratelimit_shared import SharedTokenBuckets, inherited_table
from server.settings import RateLimitSettings

__all__ = [
    "LIMITER",
    "MAX_TRACKED_IPS",
    "QUEUE_WAIT",
    "LoginLimiter",
    "QuotaExceeded",
    "Slots",
    "TokenBuckets",
    "client_key",
    "limited",
    "setup_ratelimit",
]

#: Most client IPs with a bucket at once (least recently seen are forgotten first).
MAX_TRACKED_IPS = 100_000
#: Seconds a request over ``max_concurrent_logins`` waits for a slot before its 429.
QUEUE_WAIT = 1.0
#: Idle buckets dropped per new client: enough to keep the table at the active set.
_IDLE_DROPS = 2


class QuotaExceeded(RateLimited):
    """Vault's 429 ``request path "<path>": rate limit quota exceeded``, with ``Retry-After``."""

    def __init__(self, path: str, retry_after: float, limit: str = "per_ip") -> None:
        super().__init__(f'request path "{path}": rate limit quota exceeded')
        #: Sent as response headers by server/errors.py.
        self.headers = {"Retry-After": str(max(1, math.ceil(retry_after)))}
        #: Which limit refused it (the ``authmount_rate_limited`` label): ``per_ip`` or ``concurrency``.
        self.limit = limit


class TokenBuckets:
    """Token buckets by key: ``rate`` tokens per second, at most ``burst`` saved up."""

    def __init__(
        self, rate: float, burst: int, *, max_keys: int = MAX_TRACKED_IPS, clock: Callable[[], float] = time.monotonic,
        block_max: float = 0.0,
    ) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate must be > 0, burst and max_keys >= 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_keys = max_keys
        self._clock = clock
        # An empty bucket (or one blocked for ``block_max``) is full again after this long: an
        # older one need not be kept.
        self._refill_time = self.burst / self.rate + block_max
        #: key -> [tokens left, time of the last request]; least recently used first.
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, block: float = 0.0) -> float:
        """Spend one token of ``key``: 0.0 when allowed, else the seconds until one is there.
        ``block``: a refusal empties the bucket so far below that the next token comes only
        ``block`` seconds later (a rate limit quota's ``block_interval``)."""
        now = self._clock()
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            self._make_room(now)
            buckets[key] = [self.burst - 1.0, now]
            return 0.0
        buckets.move_to_end(key)
        tokens = bucket[0] + (now - bucket[1]) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        if block:
            tokens = min(tokens, 1.0 - block * self.rate)
        bucket[0] = tokens
        return (1.0 - tokens) / self.rate

    def _make_room(self, now: float) -> None:
        buckets = self._buckets
        for _ in range(_IDLE_DROPS):
            if not buckets:
                break
            key, bucket = next(iter(buckets.items()))
            if now - bucket[1] < self._refill_time:
                break
            del buckets[key]
        while len(buckets) >= self.max_keys:
            buckets.popitem(last=False)


def client_key(addr: str) -> str:
    """The bucket key of a client address: the IP itself, or the /64 of an IPv6 address."""
    if ":" not in addr:
        return addr
    try:
        ip = ipaddress.IPv6Address(addr)
    except ValueError:
        return addr
    mapped = ip.ipv4_mapped
    if mapped is not None:
        return str(mapped)
    return ip.packed[:8].hex() + "::/64"


class Slots:
    """A counting semaphore whose uncontended acquire is a plain decrement (no await).

    A released slot goes straight to the longest waiter, so a newcomer cannot overtake it.
    """

    def __init__(self, count: int) -> None:
        self.free = count
        self._waiters: deque[asyncio.Future[None]] = deque()

    def try_acquire(self) -> bool:
        """Take a free slot now, if there is one and nobody is waiting for it."""
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return True
        return False

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds to be handed a slot; False when none came."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        got = False
        try:
            async with asyncio.timeout(timeout):
                await waiter
            got = True
        except TimeoutError:
            pass
        finally:
            if not got:
                if waiter.done() and not waiter.cancelled():
                    self.release()  # handed a slot just as the wait ended: pass it on
                else:
                    waiter.cancel()
                    with contextlib.suppress(ValueError):  # a release may have popped it already
                        self._waiters.remove(waiter)
        return got

    def release(self) -> None:
        """Give the slot to the longest waiter, else back to the pool."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


class LoginLimiter:
    """Both limits of one server; built from ``RateLimitSettings`` (0 disables a limit)."""

    def __init__(
        self,
        settings: RateLimitSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        queue_wait: float = QUEUE_WAIT,
        max_keys: int = MAX_TRACKED_IPS,
        shared_fd: int | None = None,
    ) -> None:
        self._clock = clock
        self._max_keys = max_keys
        #: The workers' shared bucket table (``ratelimit_shared``), or None: this process's own.
        self.shared_fd = shared_fd
        self.queue_wait = queue_wait
        self.buckets: TokenBuckets | SharedTokenBuckets | None = None
        self.slots: Slots | None = None
        self._applied = False  # no limits applied yet (a new worker keeps the others' buckets)
        self.reconfigure(settings)

    def reconfigure(self, settings: RateLimitSettings) -> None:
        """Apply new limits (SIGHUP): buckets start full again; requests holding a slot
        of the old cap finish and release it there."""
        rate, burst = settings.login_per_ip_per_second, settings.login_burst
        if rate <= 0 or burst <= 0:
            self.buckets = None
        elif self.shared_fd is not None:
            shared = SharedTokenBuckets(self.shared_fd, rate, burst, clock=self._clock)
            if self._applied:
                shared.clear()  # new limits (SIGHUP): every bucket full again, on every worker
            self.buckets = shared
        else:
            self.buckets = TokenBuckets(rate, burst, max_keys=self._max_keys, clock=self._clock)
        slots = settings.max_concurrent_logins
        self.slots = Slots(slots) if slots > 0 else None
        self._applied = True

    def check(self, path: str, remote: str) -> None:
        """Spend one token of the client's bucket.

        :raises QuotaExceeded: the bucket is empty.
        """
        if self.buckets is not None:
            wait = self.buckets.take(client_key(remote))
            if wait:
                raise QuotaExceeded(path, wait)

    async def run(self, path: str, remote: str, backend: Backend, req: Request) -> Response | None:
        """``backend.handle_request(req)`` within both limits.

        :raises QuotaExceeded: the client's bucket is empty, or no slot freed up in time.
        """
        self.check(path, remote)
        slots = self.slots
        if slots is None:
            return await backend.handle_request(req)
        if not slots.try_acquire() and not await slots.wait(self.queue_wait):
            raise QuotaExceeded(path, 1, "concurrency")
        try:
            return await backend.handle_request(req)
        finally:
            slots.release()


LIMITER: web.AppKey[LoginLimiter] = web.AppKey("login_limiter")


def setup_ratelimit(app: web.Application) -> None:
    """Attach the limiter described by ``app[SETTINGS].rate_limit``."""
    app[LIMITER] = LoginLimiter(app[SETTINGS].rate_limit, shared_fd=inherited_table())


async def limited(request: web.Request, backend: Backend, req: Request, path: str | None = None) -> Response | None:
    """Run an unauthenticated backend request (login, OIDC) under the server's limits;
    ``path``: its full path (default: ``auth/`` + the request's mount + ``req.path``).

    :raises QuotaExceeded: 429 in Vault's shape.
    """
    limiter = request.app.get(LIMITER)
    if limiter is None:
        return await backend.handle_request(req)
    remote = req.connection.remote_addr if req.connection is not None else (request.remote or "")
    if path is None:
        path = "auth/" + (request.get(MOUNT) or "") + req.path
    return await limiter.run(path, remote, backend, req)
