"""Rate limit quotas (``sys/quotas/*``): Vault's API and refusals, the most specific quota
judging each request, per client, before the token is looked at, and sys/quotas itself never
limited (docs/vault-differences.md row 68)."""

from __future__ import annotations

from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from server.app import create_app
from server.appkeys import QUOTAS, STORAGE
from server.http.listverb import make_test_server
from server.http.ratelimit import QuotaExceeded
from server.http.ratelimit_shared import create_table
from server.quotas import DEFAULT_EXEMPT, Quota, QuotaConfig, Quotas
from server.settings import Settings, StorageSettings
from tests.plugin.keyfactory import ec_key
from tests.server.httpkit import Client, app_of
from tests.server.tokenkit import Clock

ROOT = "root-token-for-quota-tests"
PEM = ec_key().pem
H = {"X-Vault-Token": ROOT}


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    settings = Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT)
    c: Client = await aiohttp_client(make_test_server(create_app(settings)))
    assert (await c.post("/v1/sys/auth/jwt", json={"type": "jwt"}, headers=H)).status == 204
    return c


async def call(client: Client, method: str, path: str, body: Any = None, *, token: str | None = ROOT,
               **headers: str) -> tuple[int, Any]:
    sent = {"X-Vault-Token": token} if token else {}
    resp = await client.request(method, "/v1/" + path, json=body, headers={**sent, **headers})
    text = await resp.text()
    return resp.status, (await resp.json() if text else None)


async def quota(client: Client, name: str, **body: Any) -> None:
    status, out = await call(client, "POST", f"sys/quotas/rate-limit/{name}", body)
    assert status == 204, out


async def statuses(client: Client, method: str, path: str, n: int, body: Any = None, **kw: Any) -> list[int]:
    return [(await call(client, method, path, body, **kw))[0] for _ in range(n)]


async def test_a_quota_limits_each_client_and_answers_vaults_429(client: Client) -> None:
    await quota(client, "mounts", path="sys/mounts", rate=2, interval="1h")
    assert await statuses(client, "GET", "sys/mounts", 4) == [200, 200, 429, 429]
    resp = await client.get("/v1/sys/mounts", headers=H)
    assert resp.status == 429 and resp.headers["Content-Type"] == "application/json"
    assert int(resp.headers["Retry-After"]) > 1000
    assert await resp.json() == {"errors": ['request path "sys/mounts": rate limit quota exceeded']}
    assert (await call(client, "GET", "sys/auth"))[0] == 200  # another path: not this quota's


async def test_quotas_judge_before_the_token(client: Client) -> None:
    """As in Vault: a client over the rate is refused with 429 whether or not it has a token."""
    await quota(client, "anon", path="sys/mounts", rate=1, interval="1h")
    assert await statuses(client, "GET", "sys/mounts", 2, token=None) == [403, 429]


async def test_the_most_specific_quota_judges(client: Client) -> None:
    await quota(client, "global", rate=100)
    await quota(client, "mount", path="auth/jwt", rate=50, interval="1h")
    await quota(client, "roles", path="auth/jwt/role/*", rate=3, interval="1h")
    await quota(client, "one-role", path="auth/jwt/role/ci", rate=1, interval="1h")
    await quota(client, "ci-logins", path="auth/jwt", role="ci", rate=2, interval="1h")
    q: Quotas = app_of(client)[QUOTAS]
    assert q.find("auth/jwt/", "role/ci", "").name == "one-role"  # type: ignore[union-attr]
    assert q.find("auth/jwt/", "role/other", "").name == "roles"  # type: ignore[union-attr]
    assert q.find("auth/jwt/", "config", "").name == "mount"  # type: ignore[union-attr]
    assert q.find("auth/jwt/", "login", "ci").name == "ci-logins"  # type: ignore[union-attr]
    assert q.find("auth/jwt/", "login", "other").name == "mount"  # type: ignore[union-attr]
    assert q.find("sys/", "mounts", "").name == "global"  # type: ignore[union-attr]
    body = {"role": "ci", "jwt": "x.y.z"}
    assert await statuses(client, "POST", "auth/jwt/login", 3, body, token=None) == [400, 400, 429]
    assert (await call(client, "POST", "auth/jwt/login", {"role": "dev", "jwt": "x.y.z"}, token=None))[0] == 400
    assert await statuses(client, "GET", "auth/jwt/role/ci", 2) == [404, 429]


async def test_a_role_quota_judges_the_role_a_login_will_use(client: Client) -> None:
    """A login's role is lower-cased, as the login takes it, and a login without one is judged
    by the quota of the mount's default_role, as Vault resolves it: neither spelling nor
    leaving the role out escapes the role's quota."""
    status, out = await call(client, "POST", "auth/jwt/config", {"jwt_validation_pubkeys": [PEM],
                                                                "default_role": "ci"})
    assert status == 204, out
    await quota(client, "ci-logins", path="auth/jwt", role="CI", rate=3, interval="1h")
    logins = [{"role": "ci", "jwt": "x.y.z"}, {"role": "Ci", "jwt": "x.y.z"}, {"jwt": "x.y.z"}, {"jwt": "x.y.z"}]
    assert [(await call(client, "POST", "auth/jwt/login", b, token=None))[0] for b in logins] == [400, 400, 400, 429]
    assert (await call(client, "POST", "auth/jwt/login", {"role": "other", "jwt": "x.y.z"}, token=None))[0] == 400
    status, out = await call(client, "POST", "sys/quotas/rate-limit/ci-again", {"path": "auth/jwt", "role": "ci",
                                                                               "rate": 1})
    assert (status, out["errors"]) == (400, ['quota rule with similar properties exists under the name "ci-logins"'])


async def test_exempt_paths_and_sys_quotas_are_never_limited(client: Client) -> None:
    await quota(client, "everything", rate=1, interval="1h")
    assert await statuses(client, "GET", "sys/health", 3) == [200, 200, 200]  # Vault's default exempt paths
    assert await statuses(client, "GET", "sys/mounts", 2) == [200, 429]
    # a global quota cannot lock the operator out of the quota that would undo it (OpenBao does)
    assert await statuses(client, "GET", "sys/quotas/rate-limit/everything", 3) == [200, 200, 200]
    status, out = await call(client, "POST", "sys/quotas/config", {"rate_limit_exempt_paths": ["sys/mounts", "auth/*"]})
    assert status == 204, out
    assert (await call(client, "GET", "sys/quotas/config"))[1]["data"] == {
        "enable_rate_limit_audit_logging": False, "enable_rate_limit_response_headers": False,
        "rate_limit_exempt_paths": ["sys/mounts", "auth/*"]}
    assert await statuses(client, "GET", "sys/mounts", 2) == [200, 200]
    assert await statuses(client, "GET", "auth/token/lookup-self", 2) == [200, 200]
    assert (await call(client, "DELETE", "sys/quotas/rate-limit/everything"))[0] == 204
    assert await statuses(client, "GET", "sys/auth", 3) == [200, 200, 200]


async def test_block_interval_refuses_a_client_over_the_rate_for_that_long(client: Client) -> None:
    await quota(client, "blocking", path="sys/mounts", rate=2, block_interval="30s")
    assert await statuses(client, "GET", "sys/mounts", 3) == [200, 200, 429]
    resp = await client.get("/v1/sys/mounts", headers=H)
    assert resp.status == 429 and 28 <= int(resp.headers["Retry-After"]) <= 30


async def test_shapes_listing_and_deletion(client: Client) -> None:
    await quota(client, "b", path="auth/jwt/login", rate=2.5, interval="2m", block_interval="5m")
    await quota(client, "a", rate=10)
    assert (await call(client, "GET", "sys/quotas/rate-limit/b"))[1]["data"] == {
        "block_interval": 300, "inheritable": False, "interval": 120, "name": "b", "path": "auth/jwt/login",
        "rate": 2.5, "role": "", "type": "rate-limit"}
    assert (await call(client, "GET", "sys/quotas/rate-limit/a"))[1]["data"]["inheritable"] is True  # global
    assert (await call(client, "LIST", "sys/quotas/rate-limit"))[1]["data"]["keys"] == ["a", "b"]
    await quota(client, "b", path="auth/jwt/login", rate=4)  # an update: the same name may keep its factors
    assert (await call(client, "GET", "sys/quotas/rate-limit/b"))[1]["data"]["interval"] == 1
    for name in ("a", "b"):
        assert (await call(client, "DELETE", f"sys/quotas/rate-limit/{name}"))[0] == 204
    assert (await call(client, "GET", "sys/quotas/rate-limit/a"))[0] == 404
    assert (await call(client, "LIST", "sys/quotas/rate-limit"))[0] == 404
    assert not app_of(client)[QUOTAS].active


@pytest.mark.parametrize(("rate", "shown"), [(20, 20), (20.0, 20), (2.5, 2.5), (2**53, 2**53), (1e308, 1e308),
                                             (2.0**70, 2.0**70), (2.0**63, 2.0**63), (2.0**62, 2**62)])
async def test_a_rate_reads_back_as_openbao_writes_it(client: Client, rate: float, shown: float) -> None:
    """A whole rate without a fraction, as Go writes a float64; one past 2**63 stays a float
    (1e308 was stored, and every read of it a 500: JSON has no such integer for orjson)."""
    await quota(client, "r", rate=rate)
    status, out = await call(client, "GET", "sys/quotas/rate-limit/r")
    assert status == 200 and out["data"]["rate"] == shown and type(out["data"]["rate"]) is type(shown)
    status, out = await call(client, "GET", "sys/quotas/rate-limit/r?help=1")  # a float field's help was a 500
    assert status == 200 and "    rate (float)" in out["help"]


@pytest.mark.parametrize(("body", "message"), [
    ({"rate": 0}, "'rate' is invalid"),
    ({"rate": -1}, "'rate' is invalid"),
    ({}, "'rate' is invalid"),
    ({"rate": "abc"}, 'error converting input abc for field "rate": cannot parse as a number'),
    ({"rate": 1, "block_interval": "-5s"}, "cannot provide negative value"),
    ({"rate": 1, "path": "nope/"}, 'invalid mount path "nope/"'),
    ({"rate": 1, "path": "auth/nope"}, 'invalid mount path "auth/nope"'),
    ({"rate": 1, "path": "auth/jwt/login", "role": "x"}, "Quotas cannot contain both a path suffix and a role"),
    ({"rate": 1, "path": "sys/", "role": "x"}, 'Mount path "sys/" is not a valid auth method'),
    ({"rate": 1, "path": "auth/token", "role": "x"}, 'Mount path "auth/token/" does not support use with role-based'),
    ({"rate": 1, "path": "auth/jwt"}, 'quota rule with similar properties exists under the name "taken"'),
])
async def test_refusals(client: Client, body: dict[str, Any], message: str) -> None:
    await quota(client, "taken", path="auth/jwt/", rate=5)
    status, out = await call(client, "POST", "sys/quotas/rate-limit/new", body)
    assert status == 400 and message in out["errors"][0], out
    assert (await call(client, "GET", "sys/quotas/rate-limit/new"))[0] == 404


@pytest.mark.parametrize("field", ["enable_rate_limit_audit_logging", "enable_rate_limit_response_headers"])
async def test_unsupported_config_switches_are_refused(client: Client, field: str) -> None:
    status, out = await call(client, "POST", "sys/quotas/config", {field: True})
    assert status == 400 and out["errors"][0].startswith(f"{field} is not supported"), out


async def test_quota_paths_need_their_policy(client: Client) -> None:
    status, out = await call(client, "POST", "auth/token/create", {"policies": ["default"]})
    token = out["auth"]["client_token"]
    assert (await call(client, "POST", "sys/quotas/rate-limit/x", {"rate": 1}, token=token))[0] == 403
    assert (await call(client, "GET", "sys/quotas/config", token=token))[0] == 403


def test_a_quota_left_unchanged_keeps_its_buckets() -> None:
    q = Quotas(storage=None, clock=lambda: 0.0)  # type: ignore[arg-type]
    kept = Quota("kept", mount="sys/", suffix="mounts", rate=1, interval=3600)
    q.install({"kept": kept, "other": Quota("other", rate=5)}, QuotaConfig())
    q.check("sys/mounts", "sys/", "", "10.0.0.1")
    q.install({"kept": kept}, QuotaConfig())  # another quota deleted: this one's clients stay counted
    with pytest.raises(Exception, match="rate limit quota exceeded"):
        q.check("sys/mounts", "sys/", "", "10.0.0.1")
    q.install({"kept": Quota("kept", mount="sys/", suffix="mounts", rate=2, interval=3600)}, QuotaConfig())
    q.check("sys/mounts", "sys/", "", "10.0.0.1")  # changed limits: buckets start full again


def _quotas(*quotas: Quota, shared: bool = False) -> tuple[Quotas, Clock]:
    clock = Clock()
    q = Quotas(storage=None, clock=clock, shared_fd=create_table() if shared else None)  # type: ignore[arg-type]
    q.install({one.name: one for one in quotas}, QuotaConfig())
    return q, clock


def test_the_longest_glob_of_a_mount_judges() -> None:
    q, _ = _quotas(Quota("roles", mount="auth/jwt/", suffix="role/*", rate=5),
                   Quota("ci-roles", mount="auth/jwt/", suffix="role/ci-*", rate=5),
                   Quota("mount", mount="auth/jwt/", rate=5))
    found = {suffix: q.find("auth/jwt/", suffix, "") for suffix in ("role/ci-x", "role/ci", "role/x", "rx", "")}
    assert {k: v.name if v else None for k, v in found.items()} == {
        "role/ci-x": "ci-roles", "role/ci": "roles", "role/x": "roles", "rx": "mount", "": "mount"}


def test_exempt_paths_by_name_and_by_glob() -> None:
    """Vault's default exempt paths, and a glob exempting only what starts with its prefix."""
    assert all(QuotaConfig().exempt(path) for path in DEFAULT_EXEMPT)
    assert set(DEFAULT_EXEMPT) == {"sys/generate-recovery-token/attempt", "sys/generate-recovery-token/update",
                                   "sys/generate-root/attempt", "sys/generate-root/update", "sys/health",
                                   "sys/seal-status", "sys/unseal"}
    config = QuotaConfig(rate_limit_exempt_paths=("sys/mo*", "sys/auth"))
    assert [config.exempt(p) for p in ("sys/mounts", "sys/mo", "sys/auth", "sys/auth/jwt", "sys/m", "sys/x")] == [
        True, True, True, False, False, False]


def test_a_quota_counts_each_client_under_its_own_key_at_its_rate() -> None:
    """Each client address its own budget; ``rate`` per ``interval`` seconds (2 a second here);
    the refusal is labelled ``quota`` (the ``authmount_rate_limited`` metric); a path that only
    looks like the quota's (a trailing ``X``) is not its."""
    for shared in (False, True):  # this process's buckets, and the workers' shared table
        q, clock = _quotas(Quota("mounts", mount="sys/", suffix="mounts", rate=2, interval=1), shared=shared)
        for remote in ("10.0.0.1", "10.0.0.2"):
            q.check("sys/mounts", "sys/", "", remote)
            q.check("sys/mounts/", "sys/", "", remote)  # the same path with its slash
            with pytest.raises(QuotaExceeded) as exc:
                q.check("sys/mounts", "sys/", "", remote)
            assert exc.value.limit == "quota"
        q.check("sys/mountsX", "sys/", "", "10.0.0.1")  # not the quota's path
        clock.now += 0.5  # one more request a half second later (2 a second)
        q.check("sys/mounts", "sys/", "", "10.0.0.1")


def test_only_a_write_of_a_quota_reloads_them() -> None:
    q, _ = _quotas()
    asked: list[int] = []
    q._refresh = type("R", (), {"request": lambda self: asked.append(1)})()
    for key in ("sys/quotas/rate-limit/a", "", "auth/jwt/config", "sys/policy/x"):
        q.invalidate(key)
    assert len(asked) == 2


async def test_where_quotas_are_stored(client: Client) -> None:
    """Keys of the storage layout an upgrade keeps."""
    await quota(client, "kept", path="sys/mounts", rate=2)
    assert (await call(client, "POST", "sys/quotas/config", {"rate_limit_exempt_paths": ["sys/health"]}))[0] == 204
    storage = app_of(client)[STORAGE]
    stored = await storage.get("sys/quotas/rate-limit/kept")
    assert isinstance(stored, dict) and stored["rate"] == 2
    config = await storage.get("sys/quotas/config")
    assert isinstance(config, dict) and config["rate_limit_exempt_paths"] == ["sys/health"]


async def test_the_config_reads_as_vaults_defaults_before_any_write(client: Client) -> None:
    assert (await call(client, "GET", "sys/quotas/config"))[1]["data"] == {
        "enable_rate_limit_audit_logging": False, "enable_rate_limit_response_headers": False,
        "rate_limit_exempt_paths": sorted(DEFAULT_EXEMPT)}


def test_workers_count_a_client_once_in_the_shared_table() -> None:
    """Two workers' quotas on one shared table: a client's request on one is spent on both."""
    table = create_table()
    workers = [Quotas(storage=None, clock=lambda: 1000.0, shared_fd=table) for _ in range(2)]  # type: ignore[arg-type]
    for q in workers:
        q.install({"one": Quota("one", mount="sys/", suffix="mounts", rate=1, interval=3600)}, QuotaConfig())
    workers[0].check("sys/mounts", "sys/", "", "10.0.0.1")
    with pytest.raises(QuotaExceeded):
        workers[1].check("sys/mounts", "sys/", "", "10.0.0.1")
