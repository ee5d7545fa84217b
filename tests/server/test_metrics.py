"""Metrics at ``sys/metrics``: Vault's names, authmount's own, parsed with prometheus-client's
own text parser; ``sys/health``'s parameters and readiness.

The metric objects are process-wide (as prometheus-client's are), so tests compare values
before and after what they do.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pytest_aiohttp import AiohttpClient

from plugin.framework import NO_EVENTS
from plugin.keys import RemoteJWKS
from plugin.storage import InMemoryStorage
from server import telemetry
from server.app import create_app
from server.http.listverb import make_test_server
from server.settings import RateLimitSettings, Settings, StorageSettings, TelemetrySettings
from server.tokens.entry import TokenEntry
from server.tokens.store import TokenStore
from tests.plugin.keyfactory import make_token, rsa_key
from tests.server.httpkit import Client

ROOT = "root-token-for-metrics-tests"
H = {"X-Vault-Token": ROOT}
KEY = rsa_key(kid="metrics")
ISS = "https://ci.example.com"


def jwt(**claims: Any) -> str:
    base = {"iss": ISS, "sub": "repo:org/app", "aud": "authmount", "iat": int(time.time()), "exp": 4102444800}
    return make_token(base | claims, key=KEY)


def _settings(**extra: Any) -> Settings:
    return Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT, **extra)


async def _client(aiohttp_client: AiohttpClient, settings: Settings | None = None) -> Client:
    client: Client = await aiohttp_client(make_test_server(create_app(settings or _settings())))
    for path, body in (
        ("sys/auth/ci", {"type": "jwt"}),
        ("auth/ci/config", {"jwt_validation_pubkeys": [KEY.pem], "bound_issuer": ISS}),
        ("auth/ci/role/deploy", {"role_type": "jwt", "user_claim": "sub", "bound_audiences": ["authmount"],
                                 "token_policies": ["deploy"], "token_ttl": "30m"}),
    ):
        resp = await client.post("/v1/" + path, json=body, headers=H)
        assert resp.status in (200, 204), await resp.text()
    return client


async def scrape(client: Client, headers: dict[str, str] | None = None) -> dict[tuple[str, tuple[Any, ...]], float]:
    """Every sample of ``sys/metrics?format=prometheus``: {(name, sorted labels): value}."""
    resp = await client.get("/v1/sys/metrics?format=prometheus", headers=H if headers is None else headers)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    out: dict[tuple[str, tuple[Any, ...]], float] = {}
    for family in text_string_to_metric_families(await resp.text()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: dict[tuple[str, tuple[Any, ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_vault_names_are_served(aiohttp_client: AiohttpClient) -> None:
    client = await _client(aiohttp_client)
    resp = await client.post("/v1/auth/ci/login", json={"role": "deploy", "jwt": jwt()})
    assert resp.status == 200
    samples = await scrape(client)
    names = {name for name, _ in samples}
    for name in ("vault_core_handle_request_count", "vault_core_handle_login_request_count",
                 "vault_core_handle_login_request_sum", "vault_token_lookup_count", "vault_route_update_auth_ci__count",
                 "vault_route_update_sys__count", "vault_token_creation_total", "vault_audit_log_request_failure_total",
                 "authmount_logins_total", "process_resident_memory_bytes"):
        assert name in names, name  # the parser names every counter sample "<name>_total"
    assert not any(n.endswith("_created") for n in names)
    # Vault's counters keep their name on the wire (no _total), authmount's follow Prometheus' convention.
    text = await (await client.get("/v1/sys/metrics?format=prometheus", headers=H)).text()
    assert "# TYPE vault_token_creation counter\n" in text and "\nvault_token_creation{" in text
    assert "vault_token_creation_total" not in text and "\nauthmount_logins_total{" in text


async def test_login_counters_move_by_reason(aiohttp_client: AiohttpClient) -> None:
    client = await _client(aiohttp_client)
    before = await scrape(client)
    attempts = [
        ({"role": "deploy", "jwt": jwt()}, 200),
        ({"role": "deploy", "jwt": jwt()}, 200),
        ({"role": "deploy", "jwt": jwt(aud="other")}, 400),
        ({"role": "deploy", "jwt": jwt(iss="https://evil.example.com")}, 400),
        ({"role": "deploy", "jwt": make_token({"iss": ISS, "aud": "authmount", "exp": 4102444800},
                                              key=rsa_key(kid="metrics", slot=1))}, 400),
        ({"role": "deploy", "jwt": "garbage"}, 400),
        ({"role": "no-such-role", "jwt": jwt()}, 400),
    ]
    for body, status in attempts:
        resp = await client.post("/v1/auth/ci/login", json=body)
        assert resp.status == status, await resp.text()
    after = await scrape(client)

    def delta(outcome: str, role: str = "deploy") -> float:
        labels = {"mount": "auth/ci/", "role": role, "outcome": outcome}
        return value(after, "authmount_logins_total", **labels) - value(before, "authmount_logins_total", **labels)

    assert [delta(o) for o in ("success", "audience", "issuer", "signature", "parse")] == [2, 1, 1, 1, 1]
    assert delta("invalid_request", role="") == 1  # an unknown role is not a label value
    created = {"auth_method": "jwt", "mount_point": "auth/ci/", "creation_ttl": "1h", "token_type": "service",
               "namespace": "root"}
    name = "vault_token_creation_total"
    assert value(after, name, **created) - value(before, name, **created) == 2
    logins = "vault_core_handle_login_request_count"
    assert value(after, logins) - value(before, logins) == len(attempts)


async def test_metrics_need_read_unless_the_setting_opens_them(aiohttp_client: AiohttpClient) -> None:
    client = await _client(aiohttp_client)
    assert (await client.get("/v1/sys/metrics?format=prometheus")).status == 403
    await client.put("/v1/sys/policies/acl/scrape", headers=H, json={"policy": 'path "sys/metrics" { capabilities = '
                                                                       '["read"] }'})
    resp = await client.post("/v1/auth/token/create", headers=H, json={"policies": ["scrape"]})
    scraper = {"X-Vault-Token": (await resp.json())["auth"]["client_token"]}
    assert await scrape(client, scraper)
    assert (await client.get("/v1/sys/audit", headers=scraper)).status == 403

    opened = await _client(aiohttp_client, _settings(telemetry=TelemetrySettings(unauthenticated_metrics_access=True)))
    assert await scrape(opened, {})
    assert (await opened.get("/v1/sys/audit")).status == 403  # only metrics opened


async def test_json_format_and_bad_format(aiohttp_client: AiohttpClient) -> None:
    client = await _client(aiohttp_client)
    body = await (await client.get("/v1/sys/metrics", headers=H)).json()
    assert set(body) == {"Timestamp", "Gauges", "Counters", "Samples", "Points"}
    assert any(s["Name"] == "vault.core.handle_request" and s["Count"] >= 1 for s in body["Samples"])
    resp = await client.get("/v1/sys/metrics?format=xml", headers=H)
    assert resp.status == 400
    assert (await resp.json())["errors"] == ["unsupported metrics format 'xml' (use prometheus, or none for JSON)"]


async def test_rate_limit_rejections_are_counted(aiohttp_client: AiohttpClient) -> None:
    settings = _settings(rate_limit=RateLimitSettings(login_per_ip_per_second=0.001, login_burst=1))
    client = await _client(aiohttp_client, settings)
    before = await scrape(client)
    statuses = [(await client.post("/v1/auth/ci/login", json={"role": "deploy", "jwt": jwt()})).status
                for _ in range(3)]
    assert statuses == [200, 429, 429]
    after = await scrape(client)
    labels = {"mount": "auth/ci/", "limit": "per_ip"}
    assert value(after, "authmount_rate_limited_total", **labels) - value(before, "authmount_rate_limited_total",
                                                                           **labels) == 2


async def test_key_events_of_a_remote_set() -> None:
    class Fetched:
        status = 200
        headers: dict[str, str] = {}
        body = json.dumps({"keys": [KEY.jwk()]}).encode()

    class Fetcher:
        async def fetch(self, method: str, url: str, **_: Any) -> Any:
            return Fetched()

    events = telemetry.MountEvents("auth/events-test/")
    cache = RemoteJWKS("https://idp.example.com/jwks", None, Fetcher(), events=events)
    await cache.current()  # a fetch
    await cache.current()  # a hit
    text = telemetry.exposition().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    mount = ("mount", "auth/events-test/")
    assert samples[("authmount_key_fetches_total", (("kind", "jwks"), mount, ("result", "ok")))] == 1
    assert samples[("authmount_key_cache_hits_total", (mount,))] == 1
    fetched = samples[("authmount_key_set_fetched_timestamp_seconds", (mount, ("url", "https://idp.example.com/jwks")))]
    assert abs(fetched - time.time()) < 60
    assert RemoteJWKS("u", None, Fetcher()).events is NO_EVENTS  # plugin defaults report nothing


async def test_usage_gauges() -> None:
    store = TokenStore(InMemoryStorage())
    await store.start(sweep=False)
    for policies, ttl in ((["a"], 60), (["a", "b"], 7200), (["root"], 0)):
        await store.mint(TokenEntry(id_hash="", accessor="", policies=policies, ttl=ttl,
                                    expire_time=time.time() + ttl if ttl else 0, mount_accessor="auth_jwt_x"))
    usage = await store.usage()
    assert (usage.total, usage.leases) == (3, 2)
    assert usage.by_policy == {"a": 2, "b": 1, "root": 1}
    assert usage.by_ttl == {"1m": 1, "2h": 1, "+Inf": 1}
    await store.close()


@pytest.mark.parametrize(
    ("query", "status"),
    [("", 200), ("?activecode=299", 299), ("?standbyok=true&perfstandbyok=true", 200), ("?sealedcode=200", 200)],
)
async def test_health_parameters(aiohttp_client: AiohttpClient, query: str, status: int) -> None:
    client = await _client(aiohttp_client)
    resp = await client.get("/v1/sys/health" + query)
    assert resp.status == status
    body = await resp.json()
    assert body["ready"] is True and body["sealed"] is False and "problems" not in body


@pytest.mark.parametrize("query", ["?activecode=abc", "?activecode=99", "?unreadycode=600"])
async def test_health_parameter_refusals(aiohttp_client: AiohttpClient, query: str) -> None:
    client = await _client(aiohttp_client)
    resp = await client.get("/v1/sys/health" + query)
    assert resp.status == 400
    assert (await resp.json())["errors"][0].startswith("invalid value for ")


async def test_storage_failures_are_counted_and_readiness_probes(aiohttp_client: AiohttpClient) -> None:
    client = await _client(aiohttp_client)
    before = await scrape(client)
    telemetry.storage_failed("the disk is full")  # what server/http/errors.py records on a 503
    after = await scrape(client)
    name = "authmount_storage_unavailable_total"
    assert value(after, name, reason="the disk is full") - value(before, name, reason="the disk is full") == 1
    # the in-memory storage works: the readiness probe write succeeds and clears the failure
    assert (await client.get("/v1/sys/health")).status == 200
    assert telemetry.storage_failure() == ""


@pytest.mark.parametrize("multiprocess", [False, True], ids=["one-process", "workers"])
def test_usage_gauge_drops_the_series_of_a_gone_label(monkeypatch: pytest.MonkeyPatch, multiprocess: bool) -> None:
    """A policy whose last token expired leaves the gauge: its series is dropped in one
    process, and set to 0 with --workers, where prometheus-client cannot drop a series (its
    clear() only warned, and the old count stayed in the worker's file)."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    gauge = Gauge("t_by_policy", "test", ["policy", "namespace"], registry=registry)
    monkeypatch.setattr(telemetry, "MULTIPROCESS", multiprocess)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not implemented in multi-process mode" warning
        telemetry.set_usage(gauge, {"a": 2, "b": 1})
        telemetry.set_usage(gauge, {"a": 1})
    series = {s.labels["policy"]: s.value for m in registry.collect() for s in m.samples}
    assert series == ({"a": 1, "b": 0} if multiprocess else {"a": 1})


async def test_workers_write_observations_to_the_shared_files_within_the_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    """With --workers another worker answers the scrape from the shared files, so a worker
    writes what its request path observed there ``SHARED_FLUSH_DELAY`` after the first one
    waiting, in one go, and at once at its exit; before, each observation was its own locked
    write to a memory-mapped file (26 us of CPU per login)."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess

    # docs/operations.md (Metrics) promises another worker's scrape sees a request within 100 ms
    assert telemetry.SHARED_FLUSH_DELAY <= 0.1
    assert telemetry._flush_scheduled is False  # this process never ran in multi-process mode
    registry = CollectorRegistry()
    hist = Histogram("t_shared_ms", "test", buckets=(1, 10), registry=registry)
    counter = Counter("t_shared", "test", ["outcome"], registry=registry)
    monkeypatch.setattr(telemetry, "MULTIPROCESS", True)
    monkeypatch.setattr(telemetry, "SHARED_FLUSH_DELAY", 0.05)
    telemetry.flush_pending()  # nothing of other tests waits
    timer = telemetry._request_timer(hist)
    assert isinstance(timer, telemetry._PendingTimer)  # counted in Python with --workers too

    def written() -> dict[tuple[str, str], float]:
        return {(s.name, s.labels.get("le", s.labels.get("outcome", ""))): s.value
                for m in registry.collect() for s in m.samples if not s.name.endswith("_created")}

    success = counter.labels("success")
    before = written()
    for ms in (0.5, 5.0, 50.0):
        timer.observe(ms)
        telemetry._count(success)
        assert telemetry._flush_scheduled is True  # one timer for all of them
    assert telemetry._PENDING_TIMERS.count(timer) == 1  # waiting once, however often observed
    assert written() == before  # waiting, not yet written
    await asyncio.sleep(0.15)
    after = written()
    assert after[("t_shared_ms_bucket", "1.0")] == 1 and after[("t_shared_ms_bucket", "10.0")] == 2
    assert after[("t_shared_ms_bucket", "+Inf")] == 3 and after[("t_shared_ms_sum", "")] == 55.5
    assert after[("t_shared_total", "success")] == 3
    # the next observation gets a timer of its own, and so does a count alone
    timer.observe(2.0)
    await asyncio.sleep(0.15)
    assert written()[("t_shared_ms_count", "")] == 4 and written()[("t_shared_ms_sum", "")] == 57.5
    telemetry._count(success)
    await asyncio.sleep(0.15)
    assert written()[("t_shared_total", "success")] == 4
    # a worker's exit writes what waits at once
    timer.observe(3.0)
    monkeypatch.setattr(multiprocess, "mark_process_dead", lambda pid: None)
    telemetry.process_exit()
    assert written()[("t_shared_ms_count", "")] == 5
    # outside an event loop there is no timer to wait for: written at once
    await asyncio.to_thread(timer.observe, 4.0)
    assert written()[("t_shared_ms_count", "")] == 6
    await asyncio.sleep(0.1)  # the timer of the observation before the exit finds nothing
    assert written()[("t_shared_ms_count", "")] == 6
    # one process (no --workers) schedules nothing: the scrape adds up what waits
    monkeypatch.setattr(telemetry, "MULTIPROCESS", False)
    timer.observe(1.5)
    telemetry._count(success)
    assert telemetry._flush_scheduled is False
    await asyncio.sleep(0.15)
    assert written()[("t_shared_ms_count", "")] == 6
    telemetry.flush_pending()
    assert written()[("t_shared_ms_count", "")] == 7 and written()[("t_shared_total", "success")] == 5


_WORKER = """
import asyncio, json
from prometheus_client import CollectorRegistry, multiprocess
from server import telemetry

def shared():
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return {s.name: s.value for m in registry.collect() for s in m.samples
            if s.name in ("vault_core_handle_login_request_count", "authmount_logins_total")}

async def main():
    telemetry.HANDLE_LOGIN_REQUEST.observe(2.0)
    telemetry.count_login("auth/jwt/", "ci", "success")
    waiting = shared()
    await asyncio.sleep(0.25)
    print(json.dumps({"multiprocess": telemetry.MULTIPROCESS, "waiting": waiting, "after": shared()}))

asyncio.run(main())
"""


def test_a_worker_process_writes_its_requests_to_the_shared_files(tmp_path: Path) -> None:
    """What --workers gives each worker: a fresh process in prometheus-client's multi-process
    mode, the shared directory in PROMETHEUS_MULTIPROC_DIR. A login's timer and counter
    reach the files another worker's scrape reads within 100 ms, with nothing else (no
    scrape, no exit) to make them go."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", _WORKER], env=env, cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["multiprocess"] is True
    assert set(seen["waiting"].values()) <= {0.0}  # not yet in the files
    assert seen["after"] == {"vault_core_handle_login_request_count": 1.0, "authmount_logins_total": 1.0}
