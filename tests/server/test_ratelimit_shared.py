"""The per-IP login buckets the workers of one server share (``server.http.ratelimit_shared``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.http.ratelimit import LoginLimiter, QuotaExceeded, TokenBuckets
from server.http.ratelimit_shared import SETS, WAYS, SharedTokenBuckets, create_table
from server.settings import RateLimitSettings

REPO = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def table() -> Iterator[int]:
    fd = create_table()
    yield fd
    os.close(fd)


def test_two_workers_spend_from_one_bucket(table: int) -> None:
    """Two views of the table (two workers): the burst is shared, not doubled, and the
    refill is the configured rate, whichever worker asks."""
    clock = Clock()
    a = SharedTokenBuckets(table, 2.0, 4, clock=clock)
    b = SharedTokenBuckets(table, 2.0, 4, clock=clock)
    assert [a.take("10.0.0.1"), b.take("10.0.0.1"), a.take("10.0.0.1"), b.take("10.0.0.1")] == [0.0] * 4
    assert b.take("10.0.0.1") == pytest.approx(0.5)
    assert a.take("10.0.0.1") == pytest.approx(0.5)
    assert a.take("10.0.0.2") == 0.0  # another client has its own bucket
    clock.now += 0.5  # one token back
    assert b.take("10.0.0.1") == 0.0
    assert a.take("10.0.0.1") > 0.0


def test_the_shared_table_agrees_with_the_process_buckets(table: int) -> None:
    """The same answers as ``TokenBuckets`` for one client over a run of requests."""
    clock = Clock()
    shared = SharedTokenBuckets(table, 3.0, 5, clock=clock)
    local = TokenBuckets(3.0, 5, clock=clock)
    for step in [0.0, 0.0, 0.1, 0.0, 0.05, 0.0, 0.0, 0.4, 0.0, 1.0, 0.0, 0.0, 3.0] * 3:
        clock.now += step
        assert shared.take("c") == pytest.approx(local.take("c"))


def test_a_set_keeps_its_busy_clients_and_forgets_full_buckets_first(table: int) -> None:
    """More clients than a set holds: an idle bucket that is full again is given up before
    the least recently used busy one."""
    clock = Clock()
    buckets = SharedTokenBuckets(table, 1.0, 2, clock=clock)
    same_set: list[str] = []
    i = 0
    while len(same_set) < WAYS + 1:
        key = f"10.1.{i // 256}.{i % 256}"
        i += 1
        if buckets._slot(key)[1] == buckets._slot("10.9.9.9")[1]:
            same_set.append(key)
    busy, idle, newcomer = same_set[: WAYS - 1], same_set[WAYS - 1], same_set[WAYS]
    buckets.take(idle)
    clock.now += 5  # idle's bucket is full again
    for key in busy:
        buckets.take(key)
        buckets.take(key)  # empty now
    assert buckets.take(newcomer) == 0.0
    for key in busy:  # still remembered as empty
        assert buckets.take(key) > 0.0
    assert len(buckets) == WAYS


def test_the_table_is_bounded_and_unlinked(table: int) -> None:
    assert os.fstat(table).st_nlink == 0  # nobody else can open it
    assert os.fstat(table).st_size < 4 * 2**20
    assert SETS * WAYS >= 100_000


def test_a_foreign_descriptor_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "x"
    other.write_bytes(bytes(8 << 20))
    fd = os.open(other, os.O_RDWR)
    try:
        with pytest.raises(ValueError, match="not a rate-limit table"):
            SharedTokenBuckets(fd, 1.0, 1)
    finally:
        os.close(fd)


def test_limiter_on_the_table_and_sighup_refills_every_bucket(table: int) -> None:
    clock = Clock()
    limits = RateLimitSettings(login_per_ip_per_second=1.0, login_burst=2)
    one = LoginLimiter(limits, clock=clock, shared_fd=table)
    two = LoginLimiter(limits, clock=clock, shared_fd=table)  # a worker started later keeps them
    one.check("auth/x/login", "10.0.0.1")
    two.check("auth/x/login", "10.0.0.1")
    with pytest.raises(QuotaExceeded):
        one.check("auth/x/login", "10.0.0.1")
    three = LoginLimiter(limits, clock=clock, shared_fd=table)
    with pytest.raises(QuotaExceeded):
        three.check("auth/x/login", "10.0.0.1")
    two.reconfigure(RateLimitSettings(login_per_ip_per_second=1.0, login_burst=3))  # SIGHUP
    one.reconfigure(RateLimitSettings(login_per_ip_per_second=1.0, login_burst=3))
    for _ in range(3):
        one.check("auth/x/login", "10.0.0.1")
    with pytest.raises(QuotaExceeded):
        two.check("auth/x/login", "10.0.0.1")


_CHILD = """
import os, sys, time
from server.http.ratelimit_shared import SharedTokenBuckets
fd = int(sys.argv[1])
b = SharedTokenBuckets(fd, 1e-6, 1000)
start = float(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
print(sum(1 for _ in range(600) if b.take("10.0.0.7") == 0.0))
"""


def test_processes_racing_on_one_bucket_spend_exactly_the_burst(table: int) -> None:
    """Three processes take 600 tokens each at once from a bucket of 1000 (no refill to
    speak of): together they get exactly 1000 (the set lock makes each take whole)."""
    start = str(time.time() + 1.0)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(table), start],
            pass_fds=[table],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    got = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert sum(got) == 1000, got
