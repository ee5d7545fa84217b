"""Token TTL arithmetic (Vault ``framework.CalculateTTL``) and timestamps as Go prints them."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from functools import lru_cache

from plugin.errors import InvalidRequest
from plugin.schema import format_duration

__all__ = ["DEFAULT_MAX_TTL", "calculate_ttl", "human_duration", "remaining_ttl", "rfc3339"]

DEFAULT_MAX_TTL = 768 * 3600


def human_duration(seconds: int) -> str:
    """A duration as Vault's capping warnings print it (``humanDuration``): Go's form without
    zero parts, ``1h`` for ``1h0m0s``, ``768h1s`` for ``768h0m1s``, ``10m`` for ``10m0s``."""
    text = format_duration(seconds)
    if text.endswith("m0s"):
        text = text[:-2]
    at = text.find("h0m")
    if at > 0:
        text = text[: at + 1] + text[at + 3 :]
    return text


def calculate_ttl(
    *,
    now: float,
    default_ttl: int,
    mount_max: int,
    increment: int = 0,
    backend_ttl: int = 0,
    period: int = 0,
    backend_max: int = 0,
    explicit_max: int = 0,
    start: float | None = None,
) -> tuple[int, list[str]]:
    """Vault ``framework.CalculateTTL``: the TTL to grant now, plus capping warnings.

    :raises InvalidRequest: ``past the max TTL, cannot renew`` when nothing is left.
    """
    warnings: list[str] = []
    now_s = int(now)
    start_s = now_s if start is None else int(start)
    max_ttl = mount_max if mount_max > 0 else DEFAULT_MAX_TTL
    if 0 < backend_max < max_ttl:
        max_ttl = backend_max
    if 0 < explicit_max < max_ttl:
        max_ttl = explicit_max
    max_valid: int | None = None
    if period > 0:
        if period > max_ttl:
            warnings.append(
                f'period of "{human_duration(period)}" exceeded the effective max_ttl of '
                f'"{human_duration(max_ttl)}"; period value is capped accordingly'
            )
            period = max_ttl
        ttl = period
        if explicit_max > 0:
            max_valid = start_s + explicit_max
    else:
        ttl = increment if increment > 0 else backend_ttl if backend_ttl > 0 else default_ttl
        max_valid = start_s + max_ttl
    if max_valid is not None:
        left = max_valid - now_s
        if left <= 0:
            # Never let arithmetic that reaches 0 turn into "no expiry" (CVE-2021-32923).
            raise InvalidRequest("past the max TTL, cannot renew")
        if ttl > left:
            warnings.append(
                f'TTL of "{human_duration(ttl)}" exceeded the effective max_ttl of '
                f'"{human_duration(left)}"; TTL value is capped accordingly'
            )
            ttl = left
    if ttl <= 0:
        raise InvalidRequest("token TTL must be positive")
    return ttl, warnings


def remaining_ttl(expire_time: float, now: float) -> int:
    """Seconds left until ``expire_time`` as Vault's ``leaseEntry.ttl`` counts them: from now
    rounded to the second, so a token looked up in the second it was made shows its whole
    TTL (3600, not 3599); 0 for a token that never expires."""
    return max(0, int(expire_time - math.floor(now + 0.5))) if expire_time else 0


@lru_cache(maxsize=4096)
def rfc3339(ts: float) -> str:
    """Unix seconds → RFC 3339 in UTC, the way Go marshals ``time.Time``; a time past the
    year 9999 (which no TTL reaches: durations end at 292 years) is shown as its last second."""
    return datetime.fromtimestamp(min(ts, _LAST_SECOND), UTC).isoformat().replace("+00:00", "Z")


_LAST_SECOND = 253402300799.0  # 9999-12-31T23:59:59Z


