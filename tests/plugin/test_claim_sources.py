"""Claims from where IdPs put them (plugin/claim_sources.py): userinfo precedence, and
distributed and aggregated claims (OIDC Core 5.6.2) resolved generically and bounded, through
``resolve`` and through the login's ``distributed_claims`` check. Hostile sources: slow, huge,
redirecting elsewhere, unsigned, naming registered claims (issue 12)."""

from __future__ import annotations

from typing import Any

import pytest

from plugin import claim_sources
from plugin.claim_sources import Sources, merge_userinfo, referenced_claims, resolve
from plugin.errors import InvalidRequest, PluginError, UpstreamError
from plugin.framework import FetchResult
from tests.plugin.fakes import Harness
from tests.plugin.keyfactory import FakeFetcher, ec_key, make_token, self_signed_cert_pem
from tests.plugin.oidc_fakes import BOB
from tests.plugin.oidc_fakes import Harness as OidcHarness

KEY = ec_key()
OTHER = ec_key()
SOURCE = "https://claims.example/groups"
GROUPS = ["g1", "g2"]


def distributed(endpoint: str = SOURCE, **spec: Any) -> dict[str, Any]:
    return {"_claim_names": {"groups": "src1"}, "_claim_sources": {"src1": {"endpoint": endpoint, **spec}}}


async def verified(raw: str) -> dict[str, Any]:
    """A stand-in for the mount's verification: only the literal "good" tokens verify."""
    if not raw.startswith("good."):
        raise InvalidRequest("signature")
    return {"groups": GROUPS, "team": "t"}


def sources(fetcher: FakeFetcher, token: str = "at-1") -> Sources:
    return Sources(fetcher, verified, token)


# ---------------------------------------------------------------------------
# Pure helpers


@pytest.mark.parametrize(
    ("precedence", "expected"),
    [("userinfo", {"sub": "s", "team": "ui", "groups": ["x"]}), ("id_token", {"sub": "s", "team": "idt", "groups": ["x"]})],
)
def test_merge_userinfo_precedence(precedence: str, expected: dict[str, Any]) -> None:
    claims = {"sub": "s", "team": "idt"}
    merge_userinfo(claims, {"sub": "s", "team": "ui", "groups": ["x"]}, precedence)
    assert claims == expected


def test_referenced_claims() -> None:
    assert referenced_claims(["email", "/groups/0", "/a~1b/c", "", "/"]) == {"email", "groups", "a/b"}


# ---------------------------------------------------------------------------
# resolve


async def test_distributed_json_with_the_sources_own_token() -> None:
    fetcher = FakeFetcher({SOURCE: {"groups": GROUPS, "other": 1}})
    claims = {"sub": "s", **distributed(access_token="source-token")}
    assert await resolve(claims, {"groups"}, sources(fetcher)) == (["groups"], [])
    assert claims["groups"] == GROUPS and "other" not in claims
    [(method, _, sent)] = fetcher.calls
    assert method == "GET" and sent["headers"]["Authorization"] == "Bearer source-token"
    assert sent["timeout"] == claim_sources.DEADLINE


async def test_distributed_falls_back_to_the_flows_access_token() -> None:
    fetcher = FakeFetcher({SOURCE: {"groups": GROUPS}})
    claims = distributed()
    await resolve(claims, {"groups"}, sources(fetcher, "flow-token"))
    assert fetcher.calls[0][2]["headers"]["Authorization"] == "Bearer flow-token"


async def test_distributed_jwt_answer_must_verify() -> None:
    good = FakeFetcher({SOURCE: FetchResult(200, {"content-type": "application/jwt"}, b"good.e30.sig")})
    claims = distributed()
    assert await resolve(claims, {"groups"}, sources(good)) == (["groups"], [])
    bad = FakeFetcher({SOURCE: FetchResult(200, {"content-type": "application/jwt"}, b"evil.e30.sig")})
    claims = distributed()
    resolved, failures = await resolve(claims, {"groups"}, sources(bad))
    assert resolved == [] and "groups" not in claims
    assert failures == ['claim source "src1": its JWT is refused (signature)']


async def test_aggregated_claims() -> None:
    claims = {"_claim_names": {"groups": "agg"}, "_claim_sources": {"agg": {"JWT": "good.e30.sig"}}}
    assert await resolve(claims, {"groups"}, sources(FakeFetcher())) == (["groups"], [])
    assert claims["groups"] == GROUPS


async def test_only_what_the_role_reads_is_fetched() -> None:
    fetcher = FakeFetcher({SOURCE: {"groups": GROUPS}})
    claims = distributed()
    assert await resolve(claims, {"email"}, sources(fetcher)) == ([], [])
    assert fetcher.calls == []


@pytest.mark.parametrize(
    ("claims", "answer", "failures"),
    [
        ({"sub": "me", "_claim_names": {"sub": "src1"}, "_claim_sources": {"src1": {"endpoint": SOURCE}}},
         {"sub": "admin"}, []),  # registered claims are never taken from a source
        ({"groups": ["mine"], **distributed()}, {"groups": ["theirs"]}, []),  # present claims are kept
        (distributed("http://claims.example/groups"), {}, ['claim source "src1": the endpoint is not an https URL']),
        (distributed("file:///etc/passwd"), {}, ['claim source "src1": the endpoint is not an https URL']),
        (distributed("https://claims.example/ groups"), {}, ['claim source "src1": the endpoint is not an https URL']),
        ({"_claim_names": {"groups": "nope"}, "_claim_sources": {}}, {}, ['claim source "nope" is not described']),
        ({"_claim_names": {"groups": "s"}, "_claim_sources": {"s": {"JWT": "x" * (256 * 1024 + 1)}}}, {},
         ['claim source "s": the aggregated JWT is not a string of at most 262144 bytes']),
        (distributed(), {"team": "x"}, ['claim source "src1" did not answer claim "groups"']),
        (distributed(), ["g"], ['claim source "src1": the answer is not a JSON object']),
        (distributed(), "<html>", ['claim source "src1": the answer is neither a JWT nor JSON']),
        (distributed(), FetchResult(500, {}, b"{}"), ['claim source "src1": HTTP 500']),
        (distributed(), UpstreamError("response from https://claims.example/groups exceeds 262144 bytes"),
         ['claim source "src1": response from https://claims.example/groups exceeds 262144 bytes']),
        (distributed(), UpstreamError("refusing redirect from https://claims.example/groups to another host"),
         ['claim source "src1": refusing redirect from https://claims.example/groups to another host']),
    ],
    ids=["registered claim", "present claim", "plain http", "file URL", "whitespace URL", "unknown source",
         "huge aggregated JWT", "claim missing", "JSON array", "not JSON", "HTTP 500", "huge answer",
         "redirect elsewhere"],
)
async def test_hostile_and_broken_sources(claims: dict[str, Any], answer: Any, failures: list[str]) -> None:
    before = dict(claims)
    wanted = {"groups", "sub"}
    resolved, got = await resolve(claims, wanted, sources(FakeFetcher({SOURCE: answer})))
    assert got == failures and resolved == []
    assert {k: claims[k] for k in before} == before  # nothing replaced


async def test_loopback_http_is_allowed() -> None:
    url = "http://127.0.0.1:8080/groups"
    claims = distributed(url)
    assert await resolve(claims, {"groups"}, sources(FakeFetcher({url: {"groups": GROUPS}}))) == (["groups"], [])


async def test_a_slow_source_is_cut_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(claim_sources, "DEADLINE", 0.05)
    fetcher = FakeFetcher({SOURCE: {"groups": GROUPS}}, delay=5)
    claims = distributed()
    resolved, failures = await resolve(claims, {"groups"}, sources(fetcher))
    assert resolved == [] and failures == ['claim source "src1": no answer within 0.05 seconds']


async def test_at_most_four_sources() -> None:
    names = {f"c{i}": f"s{i}" for i in range(6)}
    specs = {f"s{i}": {"endpoint": f"https://claims.example/{i}"} for i in range(6)}
    fetcher = FakeFetcher({f"https://claims.example/{i}": {f"c{i}": i} for i in range(6)})
    claims = {"_claim_names": names, "_claim_sources": specs}
    resolved, failures = await resolve(claims, set(names), sources(fetcher))
    assert resolved == ["c0", "c1", "c2", "c3"] and fetcher.count() == 4
    assert failures == ["claim sources ['s4', 's5'] not resolved: at most 4 per login"]


async def test_no_access_token() -> None:
    resolved, failures = await resolve(distributed(), {"groups"}, sources(FakeFetcher(), token=""))
    assert failures == ['claim source "src1": no access token for its endpoint']


# ---------------------------------------------------------------------------
# The login's distributed_claims check


async def jwt_harness(fetcher: FakeFetcher, **role: Any) -> Harness:
    h = Harness(fetcher=fetcher)
    await h.write("config", {"jwt_validation_pubkeys": [KEY.pem]})
    await h.write("role/r", {"role_type": "jwt", "user_claim": "sub", "bound_audiences": ["vault"],
                             "groups_claim": "groups", "resolve_distributed_claims": True, **role})
    return h


def token(h: Harness, **claims: Any) -> str:
    now = int(h.clock.now)
    return make_token({"sub": "bot", "aud": "vault", "iat": now, "exp": now + 60, **claims}, key=KEY)


async def test_jwt_login_uses_distributed_claim_access_token() -> None:
    fetcher = FakeFetcher({SOURCE: {"groups": GROUPS}})
    h = await jwt_harness(fetcher)
    resp = await h.login({"role": "r", "jwt": token(h, **distributed()), "distributed_claim_access_token": "login-at"})
    assert resp.auth is not None and resp.auth.group_aliases == GROUPS
    assert fetcher.calls[0][2]["headers"]["Authorization"] == "Bearer login-at"


async def test_aggregated_claims_verify_with_the_mounts_keys() -> None:
    h = await jwt_harness(FakeFetcher())
    now = int(h.clock.now)
    inner = make_token({"groups": GROUPS, "exp": now + 60}, key=KEY)
    agg = {"_claim_names": {"groups": "a"}, "_claim_sources": {"a": {"JWT": inner}}}
    auth = (await h.login({"role": "r", "jwt": token(h, **agg)})).auth
    assert auth is not None and auth.group_aliases == GROUPS
    forged = {"_claim_names": {"groups": "a"}, "_claim_sources": {"a": {"JWT": make_token({"groups": ["admins"]}, key=OTHER)}}}
    with pytest.raises(PluginError) as exc:
        await h.login({"role": "r", "jwt": token(h, **forged)})
    assert exc.value.check == "distributed_claims"
    assert exc.value.messages[0].startswith(
        'error resolving distributed claims: claim source "a": its JWT is refused (error validating token: '
        'error verifying token signature: ')
    stale = {"_claim_names": {"groups": "a"},
             "_claim_sources": {"a": {"JWT": make_token({"groups": GROUPS, "exp": now - 3600}, key=KEY)}}}
    with pytest.raises(PluginError, match="the claims JWT is expired"):
        await h.login({"role": "r", "jwt": token(h, **stale)})


def aggregated(**inner: Any) -> dict[str, Any]:
    return {"_claim_names": {"groups": "a"},
            "_claim_sources": {"a": {"JWT": make_token({"groups": GROUPS, **inner}, key=KEY)}}}


@pytest.mark.parametrize(
    ("exp_offset", "ok"),
    [(None, True), (-60, True), (-61, False)],
    ids=["no exp", "exp 60 s ago (the clock skew leeway)", "exp 61 s ago"],
)
async def test_a_claims_jwt_expires_with_the_clock_skew_leeway(exp_offset: int | None, ok: bool) -> None:
    h = await jwt_harness(FakeFetcher())
    inner = {} if exp_offset is None else {"exp": int(h.clock.now) + exp_offset}
    if ok:
        auth = (await h.login({"role": "r", "jwt": token(h, **aggregated(**inner))})).auth
        assert auth is not None and auth.group_aliases == GROUPS
    else:
        with pytest.raises(InvalidRequest) as exc:
            await h.login({"role": "r", "jwt": token(h, **aggregated(**inner))})
        assert exc.value.messages == ['error resolving distributed claims: claim source "a": its JWT is refused (the claims JWT '
                                      "is expired)"]


async def test_every_failing_source_is_named() -> None:
    other = "https://claims.example/teams"
    h = await jwt_harness(FakeFetcher({SOURCE: FetchResult(503, {}, b""), other: FetchResult(500, {}, b"")}),
                          claim_mappings={"team": "team"})
    claims = {"_claim_names": {"groups": "src1", "team": "src2"},
              "_claim_sources": {"src1": {"endpoint": SOURCE, "access_token": "t"},
                                 "src2": {"endpoint": other, "access_token": "t"}}}
    with pytest.raises(InvalidRequest) as exc:
        await h.login({"role": "r", "jwt": token(h, **claims)})
    assert exc.value.messages == ['error resolving distributed claims: claim source "src1": HTTP 503; '
                                  'claim source "src2": HTTP 500']


async def test_a_login_without_an_access_token_names_it() -> None:
    fetcher = FakeFetcher({SOURCE: {"groups": GROUPS}})
    h = await jwt_harness(fetcher)
    with pytest.raises(InvalidRequest) as exc:
        await h.login({"role": "r", "jwt": token(h, **distributed())})
    assert exc.value.messages == ['error resolving distributed claims: claim source "src1": no access token for '
                                  'its endpoint']
    assert fetcher.calls == []


async def test_sources_are_fetched_with_the_mounts_tls_settings() -> None:
    ca = self_signed_cert_pem(OTHER)
    jwks_url = "https://idp.example/certs"
    fetcher = FakeFetcher({SOURCE: {"groups": GROUPS}, jwks_url: {"keys": [KEY.jwk()]}})
    h = Harness(fetcher=fetcher)
    await h.write("config", {"jwks_url": jwks_url, "jwks_ca_pem": ca, "override_allowed_server_names": ["idp.internal"]})
    await h.write("role/r", {"role_type": "jwt", "user_claim": "sub", "bound_audiences": ["vault"],
                             "groups_claim": "groups", "resolve_distributed_claims": True})
    await h.login({"role": "r", "jwt": token(h, **distributed(access_token="t"))})
    assert [(c[2]["ca_pem"], c[2]["server_names"]) for c in fetcher.calls if c[1] == SOURCE] == [(ca, ("idp.internal",))]


@pytest.mark.parametrize(
    ("role", "claims", "outcome"),
    [
        ({}, distributed(access_token="t"), {"ok": True, "detail": 'resolved ["groups"]'}),
        ({"groups_claim": ""}, distributed(access_token="t"), {"ok": True, "detail": "the role reads none of them"}),
        ({"resolve_distributed_claims": False}, distributed(access_token="t"),
         {"ok": True, "skipped": True,
          "detail": "the role does not resolve distributed claims (resolve_distributed_claims)"}),
        ({}, {}, {"ok": True, "skipped": True, "detail": "the token names no distributed or aggregated claims"}),
    ],
    ids=["resolved", "reads none", "off", "nothing to resolve"],
)
async def test_what_explain_says_of_distributed_claims(role: dict[str, Any], claims: dict[str, Any],
                                                        outcome: dict[str, Any]) -> None:
    h = await jwt_harness(FakeFetcher({SOURCE: {"groups": GROUPS}}), **role)
    resp = await h.write("role/r/explain", {"jwt": token(h, **claims)})
    assert resp is not None and resp.data is not None
    [found] = [c for c in resp.data["checks"] if c["check"] == "distributed_claims"]
    assert found == {"check": "distributed_claims", **outcome}


async def test_unresolved_claims_refuse_the_login_and_explain_says_why() -> None:
    """Fail closed: a role that reads a claim never sees a token without it."""
    h = await jwt_harness(FakeFetcher({SOURCE: FetchResult(503, {}, b"")}))
    jwt = token(h, **distributed(access_token="t"))
    with pytest.raises(InvalidRequest) as exc:
        await h.login({"role": "r", "jwt": jwt})
    assert exc.value.messages == ['error resolving distributed claims: claim source "src1": HTTP 503']
    resp = await h.write("role/r/explain", {"jwt": jwt})
    assert resp is not None and resp.data is not None
    [outcome] = [c for c in resp.data["checks"] if c["check"] == "distributed_claims"]
    assert outcome == {"check": "distributed_claims", "ok": False,
                       "detail": 'error resolving distributed claims: claim source "src1": HTTP 503'}


async def test_off_by_default() -> None:
    fetcher = FakeFetcher({SOURCE: {"groups": GROUPS}})
    h = await jwt_harness(fetcher, resolve_distributed_claims=False)
    with pytest.raises(InvalidRequest, match='"groups" claim not found'):
        await h.login({"role": "r", "jwt": token(h, **distributed(access_token="t"))})
    assert fetcher.calls == []


# ---------------------------------------------------------------------------
# In the OIDC flow: userinfo and distributed claims from the flow's access token


async def test_oidc_userinfo_groups_and_precedence() -> None:
    h = OidcHarness()
    await h.configure()
    await h.role(claim_mappings={"team": "team"})
    h.idp.userinfo = {"groups": ["from-userinfo"], "team": "ui"}
    bob = {k: v for k, v in BOB.items() if k != "groups"}
    resp = await h.login(team="idt", **bob)
    assert resp.auth.group_aliases == ["from-userinfo"] and resp.auth.metadata["team"] == "ui"
    await h.role(claim_mappings={"team": "team"}, oidc_claims_precedence="id_token")
    resp = await h.login(team="idt", **bob)
    assert resp.auth.group_aliases == ["from-userinfo"] and resp.auth.metadata["team"] == "idt"


async def test_oidc_distributed_claim_with_the_flows_access_token() -> None:
    h = OidcHarness()
    await h.configure()
    await h.role(resolve_distributed_claims=True)
    seen: list[str] = []
    real = h.idp.fetch

    async def fetch(method: str, url: str, **kw: Any) -> FetchResult:
        if url == SOURCE:
            seen.append(kw["headers"]["Authorization"])
            return FetchResult(200, {}, b'{"groups": ["dist"]}')
        return await real(method, url, **kw)

    h.idp.fetch = fetch  # type: ignore[method-assign]
    bob = {k: v for k, v in BOB.items() if k != "groups"}
    resp = await h.login(**bob, **distributed())
    assert resp.auth.group_aliases == ["dist"]
    [auth] = seen
    assert auth.startswith("Bearer at_")  # the flow's access token


async def test_a_cancelled_login_leaves_no_fetch_behind() -> None:
    import asyncio

    gate = asyncio.Event()
    fetcher = FakeFetcher({SOURCE: {"groups": GROUPS}}, gate=gate)
    login = asyncio.ensure_future(resolve(distributed(), {"groups"}, sources(fetcher)))
    while not fetcher.calls:
        await asyncio.sleep(0)
    before = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
    login.cancel()
    with pytest.raises(asyncio.CancelledError):
        await login
    await asyncio.sleep(0)
    assert all(t.done() for t in before)  # the source's fetch was cancelled with the login


async def test_explain_takes_the_distributed_claim_access_token() -> None:
    """explain runs the distributed_claims check as the login does, with the same field."""
    fetcher = FakeFetcher({SOURCE: {"groups": GROUPS}})
    h = await jwt_harness(fetcher)
    jwt = token(h, **distributed())

    def check(data: dict[str, Any]) -> dict[str, Any]:
        found: dict[str, Any] = next(c for c in data["checks"] if c["check"] == "distributed_claims")
        return found

    async def explain(**extra: str) -> dict[str, Any]:
        resp = await h.write("role/r/explain", {"jwt": jwt, **extra})
        assert resp is not None and resp.data is not None
        return resp.data

    without = await explain()
    assert without["would_succeed"] is False and check(without)["ok"] is False
    assert "no access token for its endpoint" in check(without)["detail"] and not fetcher.calls
    data = await explain(distributed_claim_access_token="explain-at")
    assert data["would_succeed"] is True and check(data)["ok"] is True
    assert data["identity"]["groups"] == GROUPS
    assert fetcher.calls[0][2]["headers"]["Authorization"] == "Bearer explain-at"
    assert "explain-at" not in str(data)
