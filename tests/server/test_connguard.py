"""ConnectionGuard: per-IP and total connection limits, idle eviction, the descriptor budget."""

from __future__ import annotations

import ipaddress

import pytest

from server.http.connguard import ConnectionGuard, descriptor_budget


class Conn:
    def __init__(self, idle: bool = True) -> None:
        self.idle = idle
        self.dropped = False

    def is_idle(self) -> bool:
        return self.idle

    def drop(self) -> None:
        self.dropped = True


def test_per_ip_cap_and_release() -> None:
    guard = ConnectionGuard(per_ip=2, max_total=0)
    a, b, c = Conn(), Conn(), Conn()
    assert guard.admit(a, "10.0.0.1") and guard.admit(b, "10.0.0.1")
    assert not guard.admit(c, "10.0.0.1")
    assert guard.admit(c, "10.0.0.2") and guard.count("10.0.0.1") == 2
    guard.release(a)
    guard.release(a)  # idempotent
    assert guard.count("10.0.0.1") == 1 and guard.admit(Conn(), "10.0.0.1")
    assert guard.refused == 1 and len(guard) == 3


def test_trusted_proxies_are_exempt_from_the_per_ip_cap() -> None:
    guard = ConnectionGuard(per_ip=1, max_total=0, exempt=[ipaddress.ip_network("10.0.0.0/8")])
    assert all(guard.admit(Conn(), "10.1.2.3") for _ in range(5))
    assert guard.admit(Conn(), "192.0.2.1") and not guard.admit(Conn(), "192.0.2.1")
    assert guard.admit(Conn(), "not an ip") and not guard.admit(Conn(), "not an ip")  # unparsable: not exempt


def test_at_the_total_bound_the_oldest_idle_connection_makes_room() -> None:
    guard = ConnectionGuard(per_ip=0, max_total=3)
    busy, idle_old, idle_new = Conn(idle=False), Conn(), Conn()
    for conn in (busy, idle_old, idle_new):
        assert guard.admit(conn, "10.0.0.1")
    newcomer = Conn()
    assert guard.admit(newcomer, "10.0.0.9")
    assert idle_old.dropped and not busy.dropped and not idle_new.dropped
    assert len(guard) == 3 and guard.evicted == 1
    idle_new.idle = newcomer.idle = False
    assert not guard.admit(Conn(), "10.0.0.9")  # nobody idle: refused
    assert guard.refused == 1


@pytest.mark.parametrize(("soft", "configured", "budget"), [
    (256, 0, 192), (1024, 0, 896), (1 << 20, 0, (1 << 20) - (1 << 17)), (1 << 20, 5000, 5000), (256, 5000, 192),
    (32, 0, 1),
])
def test_descriptor_budget_keeps_a_reserve(soft: int, configured: int, budget: int) -> None:
    assert descriptor_budget(soft, configured) == budget
