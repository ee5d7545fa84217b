"""Rate limit quotas (``sys/quotas/rate-limit/<name>``, ``sys/quotas/config``): Vault's API for
limiting the requests each client may make under a path, beside the server's own abuse
limits on the paths that need no token (``rate_limit`` in the settings, ``server.http.ratelimit``).

A quota has a ``rate`` (requests per ``interval``, per client IP), a ``path`` (``""`` for every
request, a mount such as ``auth/jwt/``, ``sys/``, ``identity/`` or ``auth/token/``, or a path
under a mount, ``auth/jwt/login``; a ``*`` at its end takes what follows), optionally the
``role`` of a login and a ``block_interval`` (a client over the rate is refused for that long).
A request is judged by the most specific quota that covers it, in Vault's order: the mount
and the login's role, the mount and the exact path, the mount and the longest path glob, the
mount, then the global quota. Refused: ``429 request path "<path>": rate limit quota exceeded``
with ``Retry-After``, Vault's text.

As in Vault, quotas apply to every request, a token or not, before the token is looked at,
except the ``rate_limit_exempt_paths`` of ``sys/quotas/config`` (Vault's defaults: the status
paths). Unlike Vault, ``sys/quotas/*`` is never limited: a quota on ``sys/`` or a global one
cannot lock the operators out of the quota that would undo it (docs/vault-differences.md).

A client is its IP (after trusted-proxy handling; an IPv6 client is its /64), as the abuse
limits count it. With ``--workers`` the buckets live in the workers' shared table, so a
quota means the same whichever worker takes a request; blocking is a bucket driven below
empty for ``block_interval``, kept in the same table. Quotas are stored at
``sys/quotas/rate-limit/<name>`` and held in memory, read again when this node or another
writes one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from server.http.ratelimit import QuotaExceeded, TokenBuckets, client_key
from server.http.ratelimit_shared import SharedTokenBuckets
from server.storage import Engine
from server.storage.refresh import Refresh
from server.telemetry import QUOTA_VIOLATIONS

__all__ = ["CONFIG_KEY", "DEFAULT_EXEMPT", "QUOTA_PREFIX", "NEVER_LIMITED", "Quota", "Quotas", "QuotaConfig"]

QUOTA_PREFIX = "sys/quotas/rate-limit/"
CONFIG_KEY = "sys/quotas/config"
#: Vault's ``DefaultRateLimitExemptPaths``.
DEFAULT_EXEMPT = ("sys/generate-recovery-token/attempt", "sys/generate-recovery-token/update",
                  "sys/generate-root/attempt", "sys/generate-root/update", "sys/health", "sys/seal-status",
                  "sys/unseal")
#: Never limited, whatever the quotas and the exempt paths say (see the module docstring).
NEVER_LIMITED = "sys/quotas/"


@dataclass(frozen=True, slots=True)
class Quota:
    """One rate limit quota as stored. ``mount`` is the mount's API path (``auth/jwt/``,
    ``sys/``) or ``""`` (every request); ``suffix`` the path under it (``login``, ``role/*``)."""

    name: str
    mount: str = ""
    suffix: str = ""
    role: str = ""
    rate: float = 0.0
    interval: int = 1
    block_interval: int = 0
    inheritable: bool = False

    def public(self) -> dict[str, Any]:
        """Vault's read of the quota."""
        return {"block_interval": self.block_interval, "inheritable": self.inheritable, "interval": self.interval,
                "name": self.name, "path": self.mount + self.suffix,
                # Go writes a whole float64 without a fraction: 20, not 20.0 (and 1e+308 as a float)
                "rate": int(self.rate) if self.rate.is_integer() and abs(self.rate) < 2**63 else self.rate,
                "role": self.role,
                "type": "rate-limit"}

    @classmethod
    def from_storage(cls, raw: dict[str, Any]) -> Quota:
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})

    def to_storage(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def tokens(self) -> int:
        """Requests allowed per ``interval`` (the rate rounded half up, as Go's ``math.Round``)."""
        return max(1, math.floor(self.rate + 0.5))


@dataclass(frozen=True, slots=True)
class QuotaConfig:
    """``sys/quotas/config``."""

    rate_limit_exempt_paths: tuple[str, ...] = DEFAULT_EXEMPT
    enable_rate_limit_audit_logging: bool = False
    enable_rate_limit_response_headers: bool = False

    def public(self) -> dict[str, Any]:
        return {"enable_rate_limit_audit_logging": self.enable_rate_limit_audit_logging,
                "enable_rate_limit_response_headers": self.enable_rate_limit_response_headers,
                "rate_limit_exempt_paths": list(self.rate_limit_exempt_paths)}

    def exempt(self, path: str) -> bool:
        for entry in self.rate_limit_exempt_paths:
            if path == entry or (entry.endswith("*") and path.startswith(entry[:-1])):
                return True
        return False


_Buckets = TokenBuckets | SharedTokenBuckets


class Quotas:
    """The quotas of one server process: the table, the buckets, and the check."""

    def __init__(self, storage: Engine, *, shared_fd: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.storage = storage
        self.shared_fd = shared_fd
        self._clock = clock
        self.quotas: dict[str, Quota] = {}
        self.config = QuotaConfig()
        #: Any quota at all: the one test every request pays while there is none.
        self.active = False
        self._buckets: dict[str, _Buckets] = {}
        # The quotas by what ``find`` asks, built at ``install``: a request looks up, never scans.
        self._by_role: dict[tuple[str, str], Quota] = {}  # (mount, role lower-cased)
        #: The mounts some role quota names (a login there without a role takes the default one).
        self.role_mounts: frozenset[str] = frozenset()
        self._by_path: dict[tuple[str, str], Quota] = {}  # (mount, suffix)
        self._globs: dict[str, list[Quota]] = {}  # mount -> its path globs, longest first
        self._whole: dict[str, Quota] = {}  # mount, or "" for the global quota
        self._refresh = Refresh(self.load, "quotas_reload_failed")

    async def load(self) -> None:
        """Read every quota and the config (at start, and after a write here or elsewhere)."""
        found: dict[str, Quota] = {}
        for name in await self.storage.list(QUOTA_PREFIX):
            raw = await self.storage.get(QUOTA_PREFIX + name)
            if isinstance(raw, dict):
                found[name] = Quota.from_storage(raw)
        raw_config = await self.storage.get(CONFIG_KEY)
        config = QuotaConfig()
        if isinstance(raw_config, dict):
            config = QuotaConfig(tuple(raw_config.get("rate_limit_exempt_paths", DEFAULT_EXEMPT)),
                                 bool(raw_config.get("enable_rate_limit_audit_logging", False)),
                                 bool(raw_config.get("enable_rate_limit_response_headers", False)))
        self.install(found, config)

    def install(self, quotas: dict[str, Quota], config: QuotaConfig) -> None:
        """Use these quotas from now on; a quota whose limits are unchanged keeps its buckets."""
        old = self.quotas
        self.quotas, self.config = quotas, config
        self._buckets = {name: bucket for name, bucket in self._buckets.items()
                         if name in quotas and old.get(name) == quotas[name]}
        by_role: dict[tuple[str, str], Quota] = {}
        by_path: dict[tuple[str, str], Quota] = {}
        globs: dict[str, list[Quota]] = {}
        whole: dict[str, Quota] = {}
        for q in quotas.values():
            if q.role:
                if not q.suffix:  # role names are lower-case (a login's role is lowered too)
                    by_role.setdefault((q.mount, q.role.lower()), q)
            elif q.suffix:
                by_path.setdefault((q.mount, q.suffix), q)
                if q.suffix.endswith("*"):
                    globs.setdefault(q.mount, []).append(q)
            else:
                whole.setdefault(q.mount, q)
        for found in globs.values():
            found.sort(key=lambda q: len(q.suffix), reverse=True)
        self._by_role, self._by_path, self._globs, self._whole = by_role, by_path, globs, whole
        self.role_mounts = frozenset(mount for mount, _ in by_role)
        self.active = bool(quotas)

    def invalidate(self, key: str) -> None:
        """Another node (or this one) wrote ``key`` (``""``: anything may have changed)."""
        if not key or key.startswith("sys/quotas/"):
            self._refresh.request()

    async def close(self) -> None:
        self._refresh.cancel()

    def by_factors(self, mount: str, suffix: str, role: str) -> Quota | None:
        """The quota with exactly this mount, path and role (two may not share them)."""
        return next((q for q in self.quotas.values()
                     if (q.mount, q.suffix, q.role.lower()) == (mount, suffix, role.lower())), None)

    def find(self, mount: str, suffix: str, role: str) -> Quota | None:
        """The quota that judges a request under ``mount`` at ``suffix`` (a login's ``role``,
        lower-case, as the login takes it)."""
        if role and (found := self._by_role.get((mount, role))) is not None:
            return found
        if mount:
            if suffix and (found := self._by_path.get((mount, suffix))) is not None:
                return found
            for glob in self._globs.get(mount, ()):
                if suffix.startswith(glob.suffix[:-1]):
                    return glob
            if (found := self._whole.get(mount)) is not None:
                return found
        return self._whole.get("")

    def _buckets_of(self, quota: Quota) -> _Buckets:
        buckets = self._buckets.get(quota.name)
        if buckets is None:
            rate = quota.tokens / max(1, quota.interval)
            block = float(quota.block_interval)
            if self.shared_fd is not None:
                buckets = SharedTokenBuckets(self.shared_fd, rate, quota.tokens, clock=self._clock, block_max=block)
            else:
                buckets = TokenBuckets(rate, quota.tokens, clock=self._clock, block_max=block)
            self._buckets[quota.name] = buckets
        return buckets

    def check(self, path: str, mount: str, role: str, remote: str) -> None:
        """Spend one request of the client under the quota that judges ``path`` (the API path
        without ``/v1/``), if any.

        :raises QuotaExceeded: Vault's 429, ``Retry-After`` the seconds until one is allowed.
        """
        if path.startswith(NEVER_LIMITED) or self.config.exempt(path):
            return
        suffix = path[len(mount):] if mount and path.startswith(mount) else path
        quota = self.find(mount, suffix.rstrip("/"), role)
        if quota is None:
            return
        key = f"quota/{quota.name}/{client_key(remote)}"
        wait = self._buckets_of(quota).take(key, block=float(quota.block_interval))
        if wait:
            QUOTA_VIOLATIONS.labels(quota.name).inc()
            raise QuotaExceeded(path, wait, "quota")
