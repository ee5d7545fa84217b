"""A per-mount cap on pending OIDC logins: ``oidc/auth_url`` needs no token but stores a state.

Each node counts the states it created that are neither used nor expired, in memory (an
ordered map, oldest first: the state TTL is fixed, so insertion order is expiry order).
At ``MAX_PENDING_STATES`` a new ``auth_url`` is refused with 429 until the oldest state
expires or a callback uses one. The ids of states that expired unused are kept (bounded)
for the state sweep, which deletes them from storage without listing every state. The
tracker lives on the mount's backend (``JWTAuthBackend.oidc_states``).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque

from plugin.errors import RateLimited

__all__ = ["MAX_PENDING_STATES", "SWEEP_BATCH", "PendingStates", "TooManyPendingStates"]

#: Pending OIDC logins one node accepts per mount (10 minutes each, unless used earlier).
MAX_PENDING_STATES = 10_000
#: Expired state ids handed to one sweep: twice what the cap lets in per minute, so the
#: once-a-minute sweep keeps up with a flood.
SWEEP_BATCH = 2000


class TooManyPendingStates(RateLimited):
    """429: the mount has ``MAX_PENDING_STATES`` unfinished OIDC logins on this node."""

    def __init__(self, cap: int, retry_after: float) -> None:
        super().__init__(
            f"too many pending OIDC logins on this mount ({cap} started in the last 10 minutes "
            "and not finished); try again later"
        )
        #: Sent as response headers by the server.
        self.headers = {"Retry-After": str(max(1, math.ceil(retry_after)))}


class PendingStates:
    """The live OIDC states of one mount on this node, with their expiry times."""

    def __init__(self, cap: int, ttl: float) -> None:
        self.cap = cap
        self.ttl = ttl
        self._live: OrderedDict[str, float] = OrderedDict()
        #: Expired unused states for the sweep to delete; at most ``cap`` are remembered.
        self._expired: deque[str] = deque(maxlen=cap)

    def __len__(self) -> int:
        return len(self._live)

    def admit(self, state_id: str, now: float) -> None:
        """Count a new state created at ``now``.

        :raises TooManyPendingStates: ``cap`` states are pending.
        """
        live = self._live
        while live:
            oldest, expires = next(iter(live.items()))
            if expires > now:
                break
            del live[oldest]
            self._expired.append(oldest)
        if len(live) >= self.cap:
            raise TooManyPendingStates(self.cap, next(iter(live.values())) - now)
        live[state_id] = now + self.ttl

    def discard(self, state_id: str | None) -> None:
        """A callback used (or tried) the state: it no longer counts."""
        if state_id is not None:
            self._live.pop(state_id, None)

    def take_expired(self, limit: int = SWEEP_BATCH) -> list[str]:
        """Up to ``limit`` ids of states that expired unused, oldest first (each handed out once)."""
        expired = self._expired
        return [expired.popleft() for _ in range(min(limit, len(expired)))]
