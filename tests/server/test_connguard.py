"""ConnectionGuard: per-IP and total connection limits, idle eviction, the descriptor budget."""

from __future__ import annotations

import ipaddress
import resource

import pytest
import structlog

from server.http.connguard import ConnectionGuard, descriptor_budget, raise_descriptor_limit


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


def test_unknown_ip_counts_zero_and_a_total_of_one_is_a_bound() -> None:
    guard = ConnectionGuard(per_ip=0, max_total=1)
    assert guard.count("10.0.0.1") == 0
    first, second = Conn(idle=False), Conn()
    assert guard.admit(first, "10.0.0.1")
    assert not guard.admit(second, "10.0.0.2")  # the one slot is busy
    assert len(guard) == 1 and guard.count("10.0.0.2") == 0 and guard.refused == 1


def test_every_eviction_is_counted_and_the_slot_goes_to_the_newcomer() -> None:
    guard = ConnectionGuard(per_ip=0, max_total=1)
    conns = [Conn() for _ in range(4)]
    for conn in conns:
        assert guard.admit(conn, "10.0.0.1")
    assert [c.dropped for c in conns] == [True, True, True, False]
    assert guard.evicted == 3 and guard.count("10.0.0.1") == 1 and len(guard) == 1


@pytest.mark.parametrize("kind", ["per_ip", "total"])
def test_refusals_are_logged_the_first_and_every_thousandth_time(kind: str) -> None:
    """docs/operations.md: ``connection_refused`` in the log, the first and then every 1000th."""
    guard = ConnectionGuard(per_ip=1, max_total=0) if kind == "per_ip" else ConnectionGuard(per_ip=0, max_total=1)
    assert guard.admit(Conn(idle=False), "10.0.0.1")
    ip = "10.0.0.1" if kind == "per_ip" else "10.0.0.2"
    with structlog.testing.capture_logs() as logs:
        for _ in range(2001):
            assert not guard.admit(Conn(), ip)
    assert guard.refused == 2001
    assert logs == [
        {"event": "connection_refused", "log_level": "warning", "reason": kind, "client": ip, "refused": n, "open": 1}
        for n in (1, 1000, 2000)
    ]


def test_evictions_are_logged_the_first_and_every_thousandth_time() -> None:
    guard = ConnectionGuard(per_ip=0, max_total=1)
    assert guard.admit(Conn(), "10.0.0.1")
    with structlog.testing.capture_logs() as logs:
        for _ in range(2001):
            assert guard.admit(Conn(), "10.0.0.1")
    assert guard.evicted == 2001 and guard.refused == 0
    assert logs == [{"event": "connection_evicted", "log_level": "warning", "open": 0, "evicted": n}
                    for n in (1, 1000, 2000)]


def test_descriptor_budget_defaults_and_rounding() -> None:
    assert descriptor_budget(1024) == 896  # no configured value: the whole budget
    assert descriptor_budget(1024, 1) == 1  # a configured 1 is a setting, not "unset"
    budget = descriptor_budget(1001)  # a reserve of 1001 // 8 = 125 descriptors
    assert budget == 876 and isinstance(budget, int)


INF = resource.RLIM_INFINITY


@pytest.mark.parametrize(("soft", "hard", "fails", "raised_to", "result"), [
    (1024, 4096, False, 4096, 4096),  # raised to the hard limit
    (4096, 4096, False, None, 4096),  # already there: nothing to do
    (1024, INF, False, 1 << 20, 1 << 20),  # no hard limit: a million
    (1 << 21, INF, False, 1 << 21, 1 << 21),  # ... unless the soft limit is higher already
    (1024, 4096, True, 4096, 1024),  # not allowed: the soft limit stays
])
def test_raise_descriptor_limit(
    monkeypatch: pytest.MonkeyPatch, soft: int, hard: int, fails: bool, raised_to: int | None, result: int
) -> None:
    calls: list[tuple[int, tuple[int, int]]] = []

    def setrlimit(which: int, limits: tuple[int, int]) -> None:
        calls.append((which, limits))
        if fails:
            raise ValueError("not allowed")

    monkeypatch.setattr(resource, "getrlimit", lambda which: (soft, hard) if which == resource.RLIMIT_NOFILE else (0, 0))
    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    assert raise_descriptor_limit() == result
    assert calls == ([] if raised_to is None else [(resource.RLIMIT_NOFILE, (raised_to, hard))])
