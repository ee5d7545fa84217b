"""Connection limits: no client can hold the server's sockets (or its file descriptors).

Three rules, applied by the connection protocol (``server.http.listverb``):

- a connection must send a complete request header within ``http_read_header_timeout``
  of being accepted (and of the first byte of each later request), else it is closed;
  an idle keep-alive connection is closed after ``http_idle_timeout``;
- one client IP holds at most ``max_connections_per_ip`` connections (peers in
  ``trusted_proxies`` are exempt: a load balancer speaks for many clients); more are
  closed at once;
- all connections together stay below the process's file-descriptor limit minus a
  reserve for storage, outbound IdP requests and the log, so ``accept()`` never fails with
  ``EMFILE`` (asyncio then stops accepting for a second at a time). At that bound the
  oldest idle connection (accepted, no request running) is closed to make room; if none
  is idle, the new connection is closed.
"""

from __future__ import annotations

import ipaddress
import resource
from collections.abc import Sequence
from typing import Protocol

import structlog

__all__ = ["ConnectionGuard", "Guarded", "descriptor_budget", "raise_descriptor_limit"]

log = structlog.get_logger("authmount.connections")

#: Descriptors kept free for everything that is not a client connection.
DESCRIPTOR_RESERVE_MIN = 64


class Guarded(Protocol):
    """What the guard needs of a connection: whether it is idle, and how to close it."""

    def is_idle(self) -> bool: ...

    def drop(self) -> None: ...


_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConnectionGuard:
    """Counts open connections per client IP and in total; admits or refuses new ones."""

    def __init__(self, *, per_ip: int, max_total: int, exempt: Sequence[_Network] = ()) -> None:
        self.per_ip = per_ip
        self.max_total = max_total
        self.exempt = tuple(exempt)
        self._by_ip: dict[str, int] = {}
        #: Open connections in the order they were accepted (oldest first).
        self._open: dict[Guarded, str] = {}
        self.refused = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._open)

    def count(self, ip: str) -> int:
        return self._by_ip.get(ip, 0)

    def admit(self, conn: Guarded, ip: str) -> bool:
        """Account for a new connection from ``ip``; False means close it now."""
        if self.per_ip > 0 and self._by_ip.get(ip, 0) >= self.per_ip and not self._is_exempt(ip):
            self._refuse("per_ip", ip)
            return False
        if self.max_total > 0 and len(self._open) >= self.max_total and not self._evict_idle():
            self._refuse("total", ip)
            return False
        self._open[conn] = ip
        self._by_ip[ip] = self._by_ip.get(ip, 0) + 1
        return True

    def release(self, conn: Guarded) -> None:
        """The connection closed (idempotent)."""
        ip = self._open.pop(conn, None)
        if ip is None:
            return
        left = self._by_ip[ip] - 1
        if left:
            self._by_ip[ip] = left
        else:
            del self._by_ip[ip]

    def _evict_idle(self) -> bool:
        for conn in self._open:  # oldest first
            if conn.is_idle():
                self.release(conn)
                conn.drop()
                self.evicted += 1
                if self.evicted == 1 or self.evicted % 1000 == 0:
                    log.warning("connection_evicted", open=len(self._open), evicted=self.evicted)
                return True
        return False

    def _refuse(self, why: str, ip: str) -> None:
        self.refused += 1
        if self.refused == 1 or self.refused % 1000 == 0:  # a flood must not flood the log
            log.warning("connection_refused", reason=why, client=ip, refused=self.refused, open=len(self._open))

    def _is_exempt(self, ip: str) -> bool:
        if not self.exempt:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.exempt)


def raise_descriptor_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (as Go's runtime does) and return
    the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def descriptor_budget(soft_limit: int, configured: int = 0) -> int:
    """Client connections one process may hold: ``configured`` when set (0: no setting),
    never more than the descriptor limit minus the reserve (an eighth, at least 64)."""
    reserve = max(DESCRIPTOR_RESERVE_MIN, soft_limit // 8)
    budget = max(1, soft_limit - reserve)
    return min(configured, budget) if configured > 0 else budget
