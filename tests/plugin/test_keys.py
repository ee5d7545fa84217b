"""Tests for plugin.keys: static, HMAC, JWKS, jwks_pairs and discovery key sources."""

from __future__ import annotations

import asyncio
import datetime
import uuid
from typing import Any

import pytest

from plugin.errors import InvalidRequest, UpstreamError
from plugin.framework import FetchResult
from plugin.jose_verify import SUPPORTED_ALGS, ParsedToken, parse_token
from plugin.keys import JWKSKeySource, KeySource, build_key_source, fetch_discovery
from tests.plugin.keyfactory import (
    FakeFetcher,
    KeyPair,
    RecordingEvents,
    Route,
    default_claims,
    ec_key,
    jwks,
    make_token,
    rsa_key,
)

JWKS_URL = "https://idp.example.com/certs"
ISSUER = "https://idp.example.com"
DISCOVERY = ISSUER + "/.well-known/openid-configuration"
ALL = list(SUPPORTED_ALGS)
SIG = "error validating token: error verifying token signature: "


class FakeClock:
    """A settable clock."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def tok(key: KeyPair | bytes | str | None, **kw: Any) -> ParsedToken:
    return parse_token(make_token(default_claims(), key=key, **kw))


def jwks_source(fetcher: FakeFetcher, clock: FakeClock | None = None, **kw: Any) -> JWKSKeySource:
    src = build_key_source({"jwks_url": JWKS_URL}, fetcher, clock=clock or FakeClock(), **kw)
    assert isinstance(src, JWKSKeySource)
    return src


def inflight(src: JWKSKeySource) -> asyncio.Task[bool]:
    """The background refresh ``src`` is running."""
    task = src.jwks._inflight
    assert task is not None, "no refresh in flight"
    return task


# -- static sources --------------------------------------------------------------------

async def test_static_pem_source() -> None:
    key = rsa_key()
    src = build_key_source({"jwt_validation_pubkeys": [key.pem]}, FakeFetcher())
    await src.check()
    await src.verify(tok(key), ALL)
    with pytest.raises(InvalidRequest) as exc:
        await src.verify(tok(rsa_key(slot=1)), ALL)
    assert exc.value.messages == [SIG + "no known key successfully validated the token signature"]


async def test_unexpected_algorithm_is_checked_first() -> None:
    key = ec_key()
    src = build_key_source({"jwt_validation_pubkeys": [key.pem]}, FakeFetcher())
    with pytest.raises(InvalidRequest) as exc:
        await src.verify(tok(key), ["RS256"])
    assert exc.value.messages == [
        "error validating token: invalid algorithm (alg) header parameter: "
        "token signed with unexpected algorithm"
    ]


async def test_hmac_source() -> None:
    secret = "s" * 32
    src = build_key_source({"jwt_validation_hmac_secrets": ["x" * 40, secret]}, FakeFetcher())
    await src.verify(tok(secret, alg="HS384"), ["HS256", "HS384"])
    with pytest.raises(InvalidRequest, match="no known key successfully validated"):
        await src.verify(tok("t" * 32, alg="HS256"), ["HS256"])


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"jwt_validation_pubkeys": ["nope"]}, "error parsing public key"),
        ({"jwt_validation_hmac_secrets": ["short"]}, "at least 32"),
        ({}, "exactly one of"),
        ({"jwks_pairs": ["x"]}, "invalid jwks_pairs"),
    ],
    ids=["bad pem", "short hmac", "nothing", "bad pair"],
)
def test_build_key_source_refusals(config: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        build_key_source(config, FakeFetcher())


# -- JWKS URL: laziness, caching, refresh ---------------------------------------------

async def test_jwks_is_lazy_and_cached() -> None:
    key = rsa_key(kid="k1")
    fetcher = FakeFetcher({JWKS_URL: jwks(key)})
    src = jwks_source(fetcher)
    assert fetcher.count() == 0
    for _ in range(5):
        await src.verify(tok(key), ALL)
    assert fetcher.count() == 1
    method, url, kw = fetcher.calls[0]
    assert (method, url, kw["ca_pem"]) == ("GET", JWKS_URL, None)


async def test_jwks_ca_pem_is_passed_to_fetcher() -> None:
    import trustme

    ca_pem = trustme.CA().cert_pem.bytes().decode()
    fetcher = FakeFetcher({JWKS_URL: jwks(ec_key(kid="a"))})
    src = build_key_source({"jwks_url": JWKS_URL, "jwks_ca_pem": ca_pem}, fetcher)
    await src.check()
    assert fetcher.calls[0][2]["ca_pem"] == ca_pem


async def test_jwks_accepts_any_content_type() -> None:
    key = ec_key(kid="a")
    import json

    body = json.dumps(jwks(key)).encode()
    fetcher = FakeFetcher({JWKS_URL: FetchResult(200, {"content-type": "application/jwk-set+json"}, body)})
    await jwks_source(fetcher).verify(tok(key), ALL)


async def test_unknown_kid_refreshes_once_then_rejects() -> None:
    old, new = ec_key(kid="old"), ec_key(kid="new")
    clock = FakeClock()
    served = {"doc": jwks(old)}
    fetcher = FakeFetcher({JWKS_URL: lambda: served["doc"]})
    src = jwks_source(fetcher, clock)
    await src.verify(tok(old), ALL)
    served["doc"] = jwks(old, new)
    clock.now += 11  # past the cooldown
    await src.verify(tok(new), ALL)  # unknown kid -> refresh -> verified
    assert fetcher.count() == 2
    stranger = ec_key(kid="stranger")
    with pytest.raises(InvalidRequest) as exc:
        await src.verify(tok(stranger), ALL)
    # The refusal names the kid, the kids the set holds and when it was fetched (issue 12).
    fetched = datetime.datetime.fromtimestamp(clock.now, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert exc.value.messages == [
        SIG + f"failed to verify id token signature: no key with kid stranger: the key set from {JWKS_URL} "
        f"holds kids [old, new] (fetched {fetched})"
    ]
    assert fetcher.count() == 2  # within the cooldown: no fetch


async def test_known_kid_with_bad_signature_does_not_refresh() -> None:
    key = ec_key(kid="k")
    clock = FakeClock()
    fetcher = FakeFetcher({JWKS_URL: jwks(key)})
    src = jwks_source(fetcher, clock)
    await src.verify(tok(key), ALL)
    clock.now += 100
    forged = tok(ec_key(kid="k"))
    with pytest.raises(InvalidRequest, match="failed to verify id token signature"):
        await src.verify(forged, ALL)
    assert fetcher.count() == 1


async def test_single_flight_100_concurrent_unknown_kid() -> None:
    """Vault TestJWKSCache_InflightDeduplication: one outbound request for 100 logins."""
    known, unknown = ec_key(kid="known"), ec_key(kid="unknown")
    clock = FakeClock()
    fetcher = FakeFetcher({JWKS_URL: jwks(known)})
    src = jwks_source(fetcher, clock)
    await src.verify(tok(known), ALL)
    clock.now += 60
    fetcher.gate = asyncio.Event()
    fetcher.routes[JWKS_URL] = jwks(known, unknown)
    token = tok(unknown)
    tasks = [asyncio.ensure_future(src.verify(token, ALL)) for _ in range(100)]
    await asyncio.sleep(0)
    fetcher.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results == [None] * 100
    assert fetcher.count() == 2


async def test_cooldown_1000_random_kids() -> None:
    key = ec_key(kid="real")
    clock = FakeClock()
    fetcher = FakeFetcher({JWKS_URL: jwks(key)})
    src = jwks_source(fetcher, clock)
    await src.verify(tok(key), ALL)
    clock.now += 30
    attacker = ec_key()
    tokens = [tok(attacker, kid=uuid.uuid4().hex) for _ in range(1000)]
    results = await asyncio.gather(*(src.verify(t, ALL) for t in tokens), return_exceptions=True)
    assert all(isinstance(r, InvalidRequest) for r in results)
    assert fetcher.count() == 2  # the initial fetch plus at most one refresh
    for t in tokens[:50]:  # sequential too, still inside the cooldown window
        with pytest.raises(InvalidRequest):
            await src.verify(t, ALL)
    assert fetcher.count() == 2


async def test_stale_keys_serve_while_slow_idp_refreshes() -> None:
    key = ec_key(kid="k")
    clock = FakeClock()
    fetcher = FakeFetcher({JWKS_URL: jwks(key)})
    src = jwks_source(fetcher, clock, max_age=300)
    await src.verify(tok(key), ALL)
    clock.now += 301
    fetcher.gate = asyncio.Event()  # the IdP now hangs
    await src.verify(tok(key), ALL)  # served from cache, does not wait
    await src.verify(tok(key), ALL)
    await asyncio.sleep(0)  # let the background task reach the (hanging) fetcher
    assert fetcher.count() == 2  # one background refresh started, not one per login
    assert not inflight(src).done()
    fetcher.gate.set()
    await src.close()


async def test_rotated_out_key_disappears_after_refresh() -> None:
    old, new = ec_key(kid="old"), ec_key(kid="new")
    clock = FakeClock()
    served = {"doc": jwks(old)}
    fetcher = FakeFetcher({JWKS_URL: lambda: served["doc"]})
    src = jwks_source(fetcher, clock, max_age=300)
    await src.verify(tok(old), ALL)
    served["doc"] = jwks(new)
    clock.now += 301
    await src.verify(tok(old), ALL)  # stale but still cached; refresh runs in background
    await inflight(src)
    with pytest.raises(InvalidRequest, match="failed to verify id token signature"):
        await src.verify(tok(old), ALL)
    await src.verify(tok(new), ALL)


FAILURES: list[tuple[str, Route]] = [
    ("network", UpstreamError("connection refused")),
    ("500", FetchResult(500, {}, b"boom")),
    ("html", b"<html>oops</html>"),
    ("empty set", {"keys": []}),
    ("only bad keys", {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}),
]


@pytest.mark.parametrize("failure", [f for _, f in FAILURES], ids=[i for i, _ in FAILURES])
async def test_last_good_keys_survive_failed_refresh(failure: Route) -> None:
    key = ec_key(kid="k")
    clock = FakeClock()
    fetcher = FakeFetcher({JWKS_URL: jwks(key)})
    src = jwks_source(fetcher, clock, max_age=300)
    await src.verify(tok(key), ALL)
    fetcher.routes[JWKS_URL] = failure
    clock.now += 1000
    await src.verify(tok(key), ALL)
    await inflight(src)
    with pytest.raises(InvalidRequest):
        await src.verify(tok(ec_key(kid="other")), ALL)  # unknown kid, forces a refresh
    await src.verify(tok(key), ALL)
    assert fetcher.count() >= 2


async def test_first_fetch_failure_names_reason_without_body() -> None:
    fetcher = FakeFetcher({JWKS_URL: FetchResult(503, {}, b"secret upstream page")})
    src = jwks_source(fetcher)
    with pytest.raises(InvalidRequest) as exc:
        await src.verify(tok(ec_key()), ALL)
    msg = exc.value.messages[0]
    assert msg.startswith(SIG + "failed to verify id token signature: ")
    assert "503" in msg and "secret upstream page" not in msg


async def test_close_cancels_background_fetch() -> None:
    key = ec_key(kid="k")
    clock = FakeClock()
    fetcher = FakeFetcher({JWKS_URL: jwks(key)})
    src = jwks_source(fetcher, clock, max_age=1)
    await src.verify(tok(key), ALL)
    fetcher.gate = asyncio.Event()
    clock.now += 20
    await src.verify(tok(key), ALL)
    task = src.jwks._inflight
    assert task is not None and not task.done()
    await src.close()
    assert task.cancelled()


# -- check() for jwks_url --------------------------------------------------------------

CHECKS: list[tuple[str, Route | None, str]] = [
    ("404", None, "unexpected HTTP status 404"),
    ("500", FetchResult(500, {}, b"<h1>down</h1>"), "unexpected HTTP status 500"),
    ("302", FetchResult(302, {"location": "http://169.254.169.254/"}, b""), "unexpected HTTP status 302"),
    ("not a keyset", "It's not a keyset!", "not valid JSON"),
    ("html", b"<html><body>hi</body></html>", "not valid JSON"),
    ("invalid utf8", b"\xff\xfe{}", "not valid JSON"),
    ("empty object", {}, "not a JWK set"),
    ("keys string", {"keys": "x"}, "not a JWK set"),
    ("json array", [1, 2], "not a JWK set"),
    ("empty keys", {"keys": []}, "no usable signing keys"),
    ("only bad keys", {"keys": [{"kty": "oct", "k": "AQAB"}, {"n": "x"}]}, "no usable signing keys"),
    ("huge body", b"{" + b" " * (2 << 20) + b"}", "exceeds"),
    ("tls", UpstreamError("TLS certificate verify failed"), "TLS certificate verify failed"),
    ("deep json", b"[" * 100000, "not valid JSON"),
    # Valid JSON, 66 levels: refused by the explicit nesting limit (64), not by recursion.
    ("deep valid json", b'{"keys":[' + b"[" * 64 + b"]" * 64 + b"]}", "not valid JSON"),
]


@pytest.mark.parametrize(("answer", "reason"), [(a, r) for _, a, r in CHECKS], ids=[i for i, _, _ in CHECKS])
async def test_jwks_check_failures(answer: Route | None, reason: str) -> None:
    fetcher = FakeFetcher({JWKS_URL: answer} if answer is not None else {})
    with pytest.raises(InvalidRequest) as exc:
        await jwks_source(fetcher).check()
    msg = exc.value.messages[0]
    assert msg.startswith(f"error checking jwks URL {JWKS_URL}: ")
    assert reason in msg
    assert "<h1>" not in msg and "keyset!" not in msg


async def test_jwks_check_bad_ca_pem() -> None:
    fetcher = FakeFetcher({JWKS_URL: jwks(ec_key())})
    src = build_key_source({"jwks_url": JWKS_URL, "jwks_ca_pem": "not a pem"}, fetcher)
    with pytest.raises(InvalidRequest, match="^error checking jwks_ca_pem: could not parse CA PEM"):
        await src.check()
    assert fetcher.count() == 0


async def test_jwks_check_warms_cache_and_ignores_cooldown() -> None:
    key = ec_key(kid="k")
    fetcher = FakeFetcher({JWKS_URL: jwks(key)})
    src = jwks_source(fetcher)
    await src.check()
    await src.check()
    assert fetcher.count() == 2
    await src.verify(tok(key), ALL)
    assert fetcher.count() == 2


# -- OIDC discovery --------------------------------------------------------------------

def discovery_doc(issuer: str = ISSUER, jwks_uri: Any = JWKS_URL) -> dict[str, Any]:
    return {"issuer": issuer, "jwks_uri": jwks_uri, "authorization_endpoint": ISSUER + "/auth"}


async def test_discovery_source_verifies() -> None:
    key = rsa_key(kid="d1")
    fetcher = FakeFetcher({DISCOVERY: discovery_doc(), JWKS_URL: jwks(key)})
    src = build_key_source(
        {"oidc_discovery_url": ISSUER, "oidc_client_id": "c", "oidc_client_secret": "s"}, fetcher
    )
    assert fetcher.count() == 0
    await src.verify(tok(key), ALL)
    await src.verify(tok(key), ALL)
    assert [u for _, u, _ in fetcher.calls] == [DISCOVERY, JWKS_URL]


async def test_discovery_trailing_slash_is_byte_exact() -> None:
    url = ISSUER + "/"
    fetcher = FakeFetcher({DISCOVERY: discovery_doc(issuer=url)})
    doc = await fetch_discovery(url, None, fetcher)
    assert doc["issuer"] == url
    with pytest.raises(InvalidRequest) as exc:
        await fetch_discovery(ISSUER, None, fetcher)
    assert exc.value.messages == [
        "error checking oidc discovery URL: issuer in discovery document is "
        "https://idp.example.com/, expected https://idp.example.com"
    ]


DISCOVERY_FAILURES: list[tuple[str, Route | None, str]] = [
    ("404", None, "unexpected HTTP status 404"),
    ("not json", "<html>", "not valid JSON"),
    ("array", [1], "not a JSON object"),
    ("no issuer", {"jwks_uri": JWKS_URL}, "issuer in discovery document is missing"),
    ("other issuer", discovery_doc(issuer="https://evil.example"), "is https://evil.example, expected"),
    ("issuer case", discovery_doc(issuer="https://IDP.example.com"), "expected https://idp.example.com"),
    ("jwks_uri http", discovery_doc(jwks_uri="http://idp.example.com/certs"), "not https"),
    ("jwks_uri file", discovery_doc(jwks_uri="file:///etc/passwd"), "not an http(s) URL"),
    ("jwks_uri number", discovery_doc(jwks_uri=5), "not an http(s) URL"),
    ("network", UpstreamError("timed out"), "timed out"),
]


@pytest.mark.parametrize(
    ("answer", "reason"), [(a, r) for _, a, r in DISCOVERY_FAILURES], ids=[i for i, _, _ in DISCOVERY_FAILURES]
)
async def test_discovery_check_failures(answer: Route | None, reason: str) -> None:
    fetcher = FakeFetcher({DISCOVERY: answer} if answer is not None else {})
    src = build_key_source({"oidc_discovery_url": ISSUER}, fetcher)
    with pytest.raises(InvalidRequest) as exc:
        await src.check()
    assert exc.value.messages[0].startswith("error checking oidc discovery URL: ")
    assert reason in exc.value.messages[0]


async def test_discovery_missing_jwks_uri_fails_check() -> None:
    fetcher = FakeFetcher({DISCOVERY: {"issuer": ISSUER}})
    with pytest.raises(InvalidRequest, match="no jwks_uri"):
        await build_key_source({"oidc_discovery_url": ISSUER}, fetcher).check()


async def test_discovery_bad_ca_pem() -> None:
    fetcher = FakeFetcher({DISCOVERY: discovery_doc()})
    with pytest.raises(InvalidRequest, match="error checking oidc discovery URL: could not parse CA PEM"):
        await fetch_discovery(ISSUER, "-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----", fetcher)
    assert fetcher.count() == 0


async def test_discovery_failure_at_login_is_rate_limited() -> None:
    key = ec_key(kid="k")
    clock = FakeClock()
    fetcher = FakeFetcher({DISCOVERY: FetchResult(500, {}, b"")})
    src = build_key_source({"oidc_discovery_url": ISSUER}, fetcher, clock=clock)
    for _ in range(20):
        with pytest.raises(InvalidRequest) as exc:
            await src.verify(tok(key), ALL)
        assert exc.value.messages[0].startswith(SIG + "failed to verify id token signature: ")
        assert "500" in exc.value.messages[0]
    assert fetcher.count() == 1
    fetcher.routes.update({DISCOVERY: discovery_doc(), JWKS_URL: jwks(key)})
    clock.now += 11
    await src.verify(tok(key), ALL)


# -- jwks_pairs ------------------------------------------------------------------------

URL_A, URL_B = "https://a.example/certs", "https://b.example/certs"


def pairs_source(fetcher: FakeFetcher, clock: FakeClock | None = None) -> KeySource:
    config = {"jwks_pairs": [{"jwks_url": URL_A, "jwks_ca_pem": ""}, {"jwks_url": URL_B}]}
    return build_key_source(config, fetcher, clock=clock or FakeClock())


async def test_pairs_verify_by_kid() -> None:
    ka, kb = ec_key(kid="a"), rsa_key(kid="b")
    fetcher = FakeFetcher({URL_A: jwks(ka), URL_B: jwks(kb)})
    src = pairs_source(fetcher)
    await src.verify(tok(ka), ALL)
    await src.verify(tok(kb), ALL)
    assert fetcher.count(URL_A) == 1 and fetcher.count(URL_B) == 1
    with pytest.raises(InvalidRequest) as exc:
        await src.verify(tok(ec_key(kid="a")), ALL)
    assert exc.value.messages == [SIG + "failed to verify id token signature"]


async def test_pairs_missing_kid() -> None:
    ka = ec_key()
    src = pairs_source(FakeFetcher({URL_A: jwks(ka.with_kid("a"))}))
    with pytest.raises(InvalidRequest) as exc:
        await src.verify(tok(ka), ALL)
    assert exc.value.messages == [SIG + "token missing kid header parameter"]


async def test_pairs_unknown_kid() -> None:
    fetcher = FakeFetcher({URL_A: jwks(ec_key(kid="a")), URL_B: jwks(ec_key(kid="b"))})
    src = pairs_source(fetcher)
    with pytest.raises(InvalidRequest) as exc:
        await src.verify(tok(ec_key(kid="zzz")), ALL)
    assert exc.value.messages[0].startswith(
        SIG + "error searching for key set with kid zzz: no key found with kid zzz in any JWKS endpoint: "
        f"the key set from {URL_A} holds kids [a] (fetched "
    )
    assert f"; the key set from {URL_B} holds kids [b] (fetched " in exc.value.messages[0]
    weird = "../../etc/passwd\r\nX: y" + "k" * 300
    with pytest.raises(InvalidRequest) as exc:
        await src.verify(tok(ec_key(kid=weird)), ALL)
    assert "\r\n" not in exc.value.messages[0] and len(exc.value.messages[0]) < 600
    assert fetcher.count() == 2  # the cooldown covers both misses


async def test_pairs_all_endpoints_down() -> None:
    src = pairs_source(FakeFetcher({}))
    with pytest.raises(InvalidRequest, match="failed to refresh all 2 JWKS caches"):
        await src.verify(tok(ec_key(kid="a")), ALL)


async def test_pairs_new_kid_triggers_refresh_of_all() -> None:
    ka, kb1, kb2 = ec_key(kid="a"), ec_key(kid="b1"), ec_key(kid="b2")
    clock = FakeClock()
    fetcher = FakeFetcher({URL_A: jwks(ka), URL_B: jwks(kb1)})
    src = pairs_source(fetcher, clock)
    await src.verify(tok(ka), ALL)
    fetcher.routes[URL_B] = jwks(kb1, kb2)
    clock.now += 11
    await src.verify(tok(kb2), ALL)
    assert fetcher.count(URL_A) == 2 and fetcher.count(URL_B) == 2


async def test_pairs_check_reports_failing_url() -> None:
    fetcher = FakeFetcher({URL_A: jwks(ec_key(kid="a")), URL_B: "nope"})
    with pytest.raises(InvalidRequest, match=f"^error checking jwks URL {URL_B}: response is not valid JSON"):
        await pairs_source(fetcher).check()
    bad_ca = {"jwks_pairs": [{"jwks_url": URL_A, "jwks_ca_pem": "garbage"}]}
    with pytest.raises(InvalidRequest, match="^error checking jwks_ca_pem"):
        await build_key_source(bad_ca, fetcher).check()


async def test_pairs_empty_kid_is_shown_quoted() -> None:
    src = pairs_source(FakeFetcher({URL_A: jwks(ec_key(kid="a"))}))
    with pytest.raises(InvalidRequest) as exc:
        await src.verify(tok(ec_key(kid="")), ALL)
    assert 'with kid "": no key found with kid "" in any JWKS endpoint' in exc.value.messages[0]


# -- JWKS as published in practice (issue 12) -------------------------------------------

@pytest.mark.parametrize(
    ("members", "usable"),
    [
        ({"key_ops": ["sign"]}, True),  # node-oidc-provider publishes its private key's ops
        ({"key_ops": ["verify"]}, True),
        ({"key_ops": ["sign", "verify"]}, True),
        ({"use": "sig", "key_ops": ["sign"]}, True),
        ({"key_ops": ["encrypt"]}, False),
        ({"key_ops": ["sign", "decrypt"]}, False),
        ({"key_ops": ["wrapKey"]}, False),
        ({"key_ops": []}, False),
        ({"key_ops": "sign"}, False),
        ({"key_ops": ["sign", 1]}, False),
        ({"use": "enc"}, False),
        ({"use": "enc", "key_ops": ["sign"]}, False),
    ],
    ids=["sign", "verify", "both", "use sig and sign", "encrypt", "sign and decrypt", "wrapKey", "empty",
         "not a list", "not strings", "use enc", "use enc with sign"],
)
async def test_key_ops(members: dict[str, Any], usable: bool) -> None:
    key = rsa_key(kid="k")
    src = jwks_source(FakeFetcher({JWKS_URL: {"keys": [key.jwk(**members)]}}))
    if usable:
        await src.verify(tok(key), ALL)
        return
    with pytest.raises(InvalidRequest, match="JWK set contains no usable signing keys"):
        await src.verify(tok(key), ALL)


# -- what a remote source tells about itself (issue 12) ---------------------------------

async def test_refresh_failures_are_logged_once_per_streak_and_counted() -> None:
    from structlog.testing import capture_logs

    key = ec_key(kid="k")
    clock = FakeClock()
    served: dict[str, Any] = {"doc": UpstreamError("connection refused")}
    counted = RecordingEvents()
    src = jwks_source(FakeFetcher({JWKS_URL: lambda: served["doc"]}), clock, mount="auth/jwt/", events=counted)
    with capture_logs() as logs:
        for _ in range(3):
            with pytest.raises(InvalidRequest, match="could not fetch keys from .*connection refused"):
                await src.verify(tok(key), ALL)
            clock.now += 11  # past the cooldown: each attempt fetches
        served["doc"] = jwks(key)
        await src.verify(tok(key), ALL)
        served["doc"] = UpstreamError("timeout")
        clock.now += 3601
        await src.verify(tok(key), ALL)  # stale: a background refresh fails, the last good keys serve
        await asyncio.sleep(0)
        await src.close()
    events = [(e["event"], e.get("failures")) for e in logs]
    assert events == [("jwks_fetch_failed", None), ("jwks_fetch_recovered", 3), ("jwks_fetch_failed", None)]
    assert logs[0]["mount"] == "auth/jwt/" and logs[0]["url"] == JWKS_URL and "connection refused" in logs[0]["reason"]
    # every fetch reaches the metrics (authmount_key_fetches_total), each failure of a streak too
    assert counted.fetches == [("jwks", False)] * 3 + [("jwks", True), ("jwks", False)]
    assert counted.fetched == [(JWKS_URL, clock.now - 3601)]  # the set in use: fetched after the streak
    [status] = src.status()
    assert status["failures"] == 4 and status["consecutive_failures"] == 1 and status["last_error"]
    assert status["key_count"] == 1 and status["kids"] == ["k"]


async def test_status_of_each_source() -> None:
    key = ec_key(kid="k1")
    clock = FakeClock()
    fetcher = FakeFetcher({DISCOVERY: {"issuer": ISSUER, "jwks_uri": JWKS_URL}, JWKS_URL: jwks(key, ec_key(kid="k2"))})
    src = build_key_source({"oidc_discovery_url": ISSUER}, fetcher, clock=clock)
    [fresh] = src.status()
    assert fresh == {"source": "oidc_discovery_url", "url": ISSUER, "last_fetch": None, "last_error": None,
                     "consecutive_failures": 0, "failures": 0, "next_refresh": "at first use"}
    await src.verify(tok(key), ALL)
    when = datetime.datetime.fromtimestamp(clock.now, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    later = datetime.datetime.fromtimestamp(clock.now + 3600, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    doc, keys = src.status()
    assert doc["last_fetch"] == when and doc["next_refresh"].startswith("never")
    assert keys == {"source": "jwks_uri", "url": JWKS_URL, "key_count": 2, "kids": ["k1", "k2"], "last_fetch": when,
                    "last_error": None, "consecutive_failures": 0, "failures": 0, "next_refresh": later}
    assert build_key_source({"jwt_validation_pubkeys": [key.pem]}, fetcher).status() == []
    pairs = build_key_source({"jwks_pairs": [{"jwks_url": JWKS_URL}, {"jwks_url": JWKS_URL + "2"}]}, fetcher)
    assert [s["source"] for s in pairs.status()] == ["jwks_pairs[0]", "jwks_pairs[1]"]


async def test_unknown_kid_message_names_the_last_refresh_error() -> None:
    key = ec_key(kid="k1")
    clock = FakeClock()
    served: dict[str, Any] = {"doc": jwks(key)}
    src = jwks_source(FakeFetcher({JWKS_URL: lambda: served["doc"]}), clock)
    await src.verify(tok(key), ALL)
    served["doc"] = UpstreamError("connection refused")
    clock.now += 20
    with pytest.raises(InvalidRequest) as exc:
        await src.verify(tok(ec_key(kid="rotated")), ALL)
    assert exc.value.messages[0].endswith(
        "no key with kid rotated: the key set from https://idp.example.com/certs holds kids [k1] "
        "(fetched 1970-01-12T13:46:40Z); last refresh error: connection refused"
    )
    weird = "<b>\r\n" + "k" * 300
    with pytest.raises(InvalidRequest) as exc:
        await src.verify(tok(ec_key(kid=weird)), ALL)
    assert "\r" not in exc.value.messages[0] and "k" * 200 not in exc.value.messages[0]  # escaped and cut
