"""Abuse limits on the unauthenticated paths: bucket math, table bound, settings, HTTP 429s."""

from __future__ import annotations

import asyncio
import ipaddress
import re
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from plugin import registry
from plugin.framework import Auth, Backend, Operation, PathSpec, Request, Response
from plugin.schema import FieldSet
from server import settings as settings_mod
from server.app import create_app
from server.appkeys import MOUNTS
from server.http.listverb import make_test_server
from server.http.ratelimit import LIMITER, LoginLimiter, QuotaExceeded, Slots, TokenBuckets, client_key
from server.settings import RateLimitSettings, Settings, SettingsError, StorageSettings, settings_from_mapping
from tests.server.httpkit import Client, app_of

ROOT = "root-token-for-ratelimit-tests"
H = {"X-Vault-Token": ROOT}
DOCS = Path(__file__).resolve().parents[2] / "docs"
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class GateBackend(Backend):
    """``login`` (unauthenticated) that can be held open; ``item`` needs a token."""

    type_name = "ratelimit-gate"

    def __init__(self) -> None:
        super().__init__()
        self.gate: asyncio.Event | None = None
        self.running = 0
        self.paths = [
            PathSpec("login", FieldSet({}), {Operation.UPDATE: self._login}, unauthenticated=True),
            PathSpec("item", FieldSet({}), {Operation.READ: self._item}),
        ]

    async def _login(self, req: Request, values: dict[str, Any]) -> Response:
        self.running += 1
        try:
            if self.gate is not None:
                await self.gate.wait()
        finally:
            self.running -= 1
        return Response(auth=Auth(display_name="gate", policies=[], ttl=600))

    async def _item(self, req: Request, values: dict[str, Any]) -> Response:
        return Response(data={"ok": True})


registry.register(GateBackend.type_name, GateBackend)


# -- token bucket math ------------------------------------------------------------------
def test_burst_then_refill_at_rate() -> None:
    clock = Clock()
    buckets = TokenBuckets(2.0, 3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # empty: one token needs 1/rate seconds
    clock.now += 0.25
    assert buckets.take("a") == pytest.approx(0.25)  # half a token saved up meanwhile, not spent
    clock.now += 0.25
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0


def test_refill_is_capped_at_burst() -> None:
    clock = Clock()
    buckets = TokenBuckets(10.0, 4, clock=clock)
    for _ in range(4):
        assert buckets.take("a") == 0.0
    clock.now += 3600  # an hour idle refills only up to the burst
    assert [buckets.take("a") for _ in range(4)] == [0.0] * 4
    assert buckets.take("a") > 0


def test_keys_have_separate_buckets() -> None:
    buckets = TokenBuckets(1.0, 1, clock=Clock())
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0
    assert buckets.take("b") == 0.0


def test_table_is_bounded_least_recently_used_first() -> None:
    clock = Clock()
    buckets = TokenBuckets(1.0, 2, max_keys=100, clock=clock)
    buckets.take("keep")
    for i in range(1000):
        buckets.take(f"10.0.{i // 256}.{i % 256}")
        buckets.take("keep")  # recently used: never the one evicted
        assert len(buckets) <= 100
    assert len(buckets) == 100
    assert buckets.take("keep") > 0  # its bucket (emptied by the loop) survived


def test_idle_buckets_are_dropped_as_new_clients_arrive() -> None:
    clock = Clock()
    buckets = TokenBuckets(10.0, 20, clock=clock)  # full again after 2 s
    for i in range(50):
        buckets.take(f"old-{i}")
    clock.now += 2.5
    for i in range(50):
        buckets.take(f"new-{i}")
    assert len(buckets) == 50  # every idle (full) bucket made room for a new one


def test_a_refusal_with_a_block_holds_the_next_token_back() -> None:
    """A rate limit quota's ``block_interval``: after a refusal the next token comes only
    ``block`` seconds later, and the bucket is not forgotten as idle meanwhile."""
    clock = Clock()
    buckets = TokenBuckets(2.0, 1, clock=clock, block_max=10.0)  # full again after 0.5 s, or 10.5 s blocked
    assert buckets.take("a") == 0.0
    assert buckets.take("a", block=10.0) == pytest.approx(10.0)
    clock.now += 2.0
    buckets.take("b")  # a new client makes room: the blocked bucket is not idle yet
    clock.now += 7.9
    assert buckets.take("a") == pytest.approx(0.1)
    clock.now += 0.1
    assert buckets.take("a") == 0.0


@pytest.mark.parametrize(("rate", "burst", "max_keys"), [(0.0, 5, 10), (-1.0, 1, 10), (1.0, 0, 10), (1.0, 1, 0)])
def test_bucket_bounds_are_refused(rate: float, burst: int, max_keys: int) -> None:
    with pytest.raises(ValueError) as exc:
        TokenBuckets(rate, burst, max_keys=max_keys)
    assert str(exc.value) == "rate must be > 0, burst and max_keys >= 1"
    assert len(TokenBuckets(0.5, 1, max_keys=1)) == 0  # the least of each is taken


@pytest.mark.parametrize(
    ("addr", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "20010db800010002::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "20010db800010002::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("not-an-ip:x", "not-an-ip:x"),
    ],
    ids=["ipv4", "ipv6 /64", "same /64", "ipv4-mapped", "unparseable kept as is"],
)
def test_client_key(addr: str, key: str) -> None:
    assert client_key(addr) == key


def test_quota_error_has_vault_message_and_retry_after() -> None:
    exc = QuotaExceeded("auth/jwt/login", 0.2)
    assert exc.status == 429 and exc.limit == "per_ip"  # the authmount_rate_limited label
    assert exc.messages == ['request path "auth/jwt/login": rate limit quota exceeded']
    assert exc.headers == {"Retry-After": "1"}
    assert QuotaExceeded("auth/jwt/login", 2.1).headers == {"Retry-After": "3"}


@pytest.mark.parametrize(
    ("limits", "buckets", "slots"),
    [
        (RateLimitSettings(), True, True),
        (RateLimitSettings(login_per_ip_per_second=0), False, True),
        (RateLimitSettings(login_burst=0), False, True),
        (RateLimitSettings(max_concurrent_logins=0), True, False),
    ],
    ids=["defaults", "rate 0", "burst 0", "slots 0"],
)
def test_zero_disables(limits: RateLimitSettings, buckets: bool, slots: bool) -> None:
    limiter = LoginLimiter(limits)
    assert (limiter.buckets is not None, limiter.slots is not None) == (buckets, slots)


# -- concurrency slots -------------------------------------------------------------------
async def test_slots_fast_path_and_release() -> None:
    slots = Slots(2)
    assert slots.try_acquire() and slots.try_acquire()
    assert not slots.try_acquire()
    slots.release()
    assert slots.free == 1
    assert slots.try_acquire()
    slots.release()
    slots.release()
    assert slots.free == 2  # each release gives one back


async def test_one_concurrent_login_at_a_time() -> None:
    """``max_concurrent_logins: 1`` is a limit of one, refused as ``concurrency``; the wait
    for a slot is a second by default."""
    limiter = LoginLimiter(RateLimitSettings(max_concurrent_logins=1, login_per_ip_per_second=0))
    assert limiter.slots is not None and limiter.queue_wait == 1.0 and limiter.slots.try_acquire()
    limiter.queue_wait = 0.01
    with pytest.raises(QuotaExceeded) as exc:
        await limiter.run("auth/x/login", "192.0.2.1", Backend(), Request(operation=Operation.UPDATE, path="login"))
    assert exc.value.limit == "concurrency" and exc.value.headers == {"Retry-After": "1"}


async def test_slots_hand_over_in_arrival_order() -> None:
    slots = Slots(1)
    assert slots.try_acquire()
    order: list[str] = []

    async def waiter(name: str) -> None:
        assert await slots.wait(30)
        order.append(name)

    tasks = [asyncio.create_task(waiter(n)) for n in ("first", "second")]
    await asyncio.sleep(0)
    assert not slots.try_acquire()  # a newcomer does not overtake the queue
    slots.release()
    await asyncio.sleep(0)
    slots.release()
    await asyncio.gather(*tasks)
    assert order == ["first", "second"]
    slots.release()
    assert slots.free == 1


async def test_slots_wait_times_out_and_leaves_the_queue() -> None:
    slots = Slots(1)
    assert slots.try_acquire()
    assert await slots.wait(0.01) is False
    slots.release()
    assert slots.free == 1  # no stale waiter swallowed the slot


async def test_slot_handed_over_as_the_waiter_is_cancelled_is_passed_on() -> None:
    slots = Slots(1)
    assert slots.try_acquire()
    task = asyncio.create_task(slots.wait(30))
    await asyncio.sleep(0)
    slots.release()  # handed to the waiter ...
    task.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await task
    assert slots.free == 1


async def test_cancelled_waiter_does_not_keep_a_slot() -> None:
    slots = Slots(1)
    assert slots.try_acquire()
    task = asyncio.create_task(slots.wait(30))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    slots.release()
    assert slots.free == 1
    assert slots.try_acquire()


# -- settings ---------------------------------------------------------------------------
def test_settings_defaults_are_on() -> None:
    limits = settings_from_mapping({}).rate_limit
    assert (limits.login_per_ip_per_second, limits.login_burst, limits.max_concurrent_logins) == (50.0, 100, 256)


def test_settings_values() -> None:
    raw = {"rate_limit": {"login_per_ip_per_second": 2.5, "login_burst": 5, "max_concurrent_logins": 0}}
    assert settings_from_mapping(raw).rate_limit == RateLimitSettings(2.5, 5, 0)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "rate_limit: must be a mapping"),
        ({"per_second": 1}, "rate_limit.per_second: unknown setting"),
        ({"login_per_ip_per_second": -1}, "rate_limit.login_per_ip_per_second: must be a number >= 0"),
        ({"login_per_ip_per_second": "fast"}, "rate_limit.login_per_ip_per_second: must be a number >= 0"),
        ({"login_per_ip_per_second": float("nan")}, "rate_limit.login_per_ip_per_second: must be a number >= 0"),
        ({"login_burst": 1.5}, "rate_limit.login_burst: must be an integer >= 0"),
        ({"login_burst": True}, "rate_limit.login_burst: must be an integer >= 0"),
        ({"max_concurrent_logins": -3}, "rate_limit.max_concurrent_logins: must be an integer >= 0"),
    ],
    ids=["not a mapping", "unknown key", "negative rate", "string rate", "nan rate", "float burst", "bool burst",
         "negative slots"],
)
def test_settings_errors_name_the_key(value: Any, message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        settings_from_mapping({"rate_limit": value})


@pytest.mark.parametrize("key", [k for k, _, _ in settings_mod.documented_settings() if k.startswith("rate_limit.")])
def test_rate_limit_keys_are_documented(key: str) -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert re.search(rf"^\| `{re.escape(key)}` \|", text, re.M), key


def test_quota_message_is_in_troubleshooting() -> None:
    text = (DOCS / "troubleshooting.md").read_text(encoding="utf-8")
    assert '`request path "auth/<mount>/<path>": rate limit quota exceeded` | 429 |' in text


# -- over HTTP --------------------------------------------------------------------------
def make_settings(**limits: Any) -> Settings:
    return Settings(
        storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT,
        trusted_proxies=LOOPBACK, rate_limit=RateLimitSettings(**limits),
    )


async def gate_client(aiohttp_client: AiohttpClient, **limits: Any) -> Client:
    client: Client = await aiohttp_client(make_test_server(create_app(make_settings(**limits))))
    resp = await client.post("/v1/sys/auth/gate", json={"type": GateBackend.type_name}, headers=H)
    assert resp.status == 204
    return client


def login(client: Client, ip: str | None = None) -> Any:
    return client.post("/v1/auth/gate/login", json={}, headers={"X-Forwarded-For": ip} if ip else {})


async def test_burst_beyond_limit_is_429_in_vault_shape(aiohttp_client: AiohttpClient) -> None:
    client = await gate_client(aiohttp_client, login_per_ip_per_second=0.01, login_burst=3)
    for _ in range(3):
        assert (await login(client, "198.51.100.1")).status == 200
    resp = await login(client, "198.51.100.1")
    assert resp.status == 429
    assert resp.headers["Content-Type"] == "application/json"
    assert await resp.read() == b'{"errors":["request path \\"auth/gate/login\\": rate limit quota exceeded"]}'
    assert int(resp.headers["Retry-After"]) >= 1


async def test_other_ips_are_unaffected(aiohttp_client: AiohttpClient) -> None:
    client = await gate_client(aiohttp_client, login_per_ip_per_second=0.01, login_burst=2)
    for _ in range(2):
        assert (await login(client, "198.51.100.1")).status == 200
    assert (await login(client, "198.51.100.1")).status == 429
    assert (await login(client, "198.51.100.2")).status == 200
    assert (await login(client, "2001:db8::1")).status == 200
    # The client IP is the trusted proxy's rightmost XFF entry, not a spoofable leftmost one.
    assert (await login(client, "198.51.100.1, 203.0.113.9")).status == 200
    assert (await login(client, "203.0.113.9, 198.51.100.1")).status == 429


async def test_authenticated_paths_are_not_limited(aiohttp_client: AiohttpClient) -> None:
    client = await gate_client(aiohttp_client, login_per_ip_per_second=0.01, login_burst=1)
    assert (await login(client)).status == 200
    assert (await login(client)).status == 429
    for _ in range(5):
        resp = await client.get("/v1/auth/gate/item", headers=H)
        assert resp.status == 200
        assert (await client.get("/v1/auth/token/lookup-self", headers=H)).status == 200


async def test_limit_is_shared_by_all_mounts_and_names_the_path(aiohttp_client: AiohttpClient) -> None:
    client = await gate_client(aiohttp_client, login_per_ip_per_second=0.01, login_burst=1)
    assert (await client.post("/v1/sys/auth/other/gate", json={"type": GateBackend.type_name}, headers=H)).status == 204
    assert (await login(client)).status == 200
    resp = await client.post("/v1/auth/other/gate/login", json={})
    assert resp.status == 429
    assert (await resp.json())["errors"] == ['request path "auth/other/gate/login": rate limit quota exceeded']


async def test_disabled_by_zero(aiohttp_client: AiohttpClient) -> None:
    client = await gate_client(aiohttp_client, login_per_ip_per_second=0, login_burst=1, max_concurrent_logins=0)
    statuses = [(await login(client)).status for _ in range(20)]
    assert statuses == [200] * 20


async def test_default_settings_allow_the_burst(aiohttp_client: AiohttpClient) -> None:
    client = await gate_client(aiohttp_client)
    statuses = await asyncio.gather(*(login(client) for _ in range(100)))
    assert [r.status for r in statuses] == [200] * 100


async def test_concurrency_cap_queues_then_429(aiohttp_client: AiohttpClient) -> None:
    client = await gate_client(aiohttp_client, login_per_ip_per_second=0, max_concurrent_logins=2)
    app = app_of(client)
    backend = app[MOUNTS].mounts["gate/"].backend
    assert isinstance(backend, GateBackend)
    app[LIMITER].queue_wait = 0.05
    backend.gate = asyncio.Event()
    held = [asyncio.create_task(login(client, f"198.51.100.{i}")) for i in range(2)]
    while backend.running < 2:
        await asyncio.sleep(0.01)
    resp = await login(client, "198.51.100.9")  # both slots busy past queue_wait
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "1"
    assert (await client.get("/v1/auth/gate/item", headers=H)).status == 200  # not a login: no slot needed
    app[LIMITER].queue_wait = 30.0
    waiting = asyncio.create_task(login(client, "198.51.100.10"))
    await asyncio.sleep(0.2)
    assert not waiting.done()  # queued behind the busy slots, not refused
    backend.gate.set()
    assert [(await t).status for t in held] == [200, 200]
    assert (await waiting).status == 200
    assert backend.running == 0


async def test_hvac_sees_rate_limit_exceeded(aiohttp_client: AiohttpClient, monkeypatch: pytest.MonkeyPatch) -> None:
    import hvac
    import hvac.exceptions

    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    monkeypatch.delenv("VAULT_ADDR", raising=False)
    client = await gate_client(aiohttp_client, login_per_ip_per_second=0.01, login_burst=1)
    url = str(client.make_url("")).rstrip("/")

    def two_logins() -> tuple[dict[str, Any], Exception | None]:
        vault = hvac.Client(url=url, timeout=10)
        first = vault.auth.jwt.jwt_login(role="r", jwt="not-checked-by-this-backend", path="gate")
        try:
            vault.auth.jwt.jwt_login(role="r", jwt="not-checked-by-this-backend", path="gate")
        except hvac.exceptions.VaultError as exc:
            return first, exc
        return first, None

    first, second = await asyncio.to_thread(two_logins)
    assert first["auth"]["client_token"]
    assert isinstance(second, hvac.exceptions.RateLimitExceeded)
    assert 'request path "auth/gate/login": rate limit quota exceeded' in str(second)
