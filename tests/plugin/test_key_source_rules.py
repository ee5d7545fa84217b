"""plugin.keys at its edges: the fetch limits, the cache's maximum age and refresh cooldown at
their exact boundaries (with the defaults a mount gets), which keys a token may be tried
against, the discovery URL rules, and each failure message. Found by mutation testing
(docs/mutation.md)."""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from plugin.errors import InvalidRequest, UpstreamError
from plugin.framework import FetchResult
from plugin.jose_verify import SUPPORTED_ALGS, ParsedToken, parse_token
from plugin.keys import (
    DiscoveryKeySource,
    JWKSKeySource,
    KeySource,
    RemoteJWKS,
    build_key_source,
    client_cert_of,
    fetch_discovery,
)
from tests.plugin.keyfactory import (
    DROP,
    FakeFetcher,
    RecordingEvents,
    default_claims,
    ec_key,
    jwks,
    make_token,
    rsa_key,
)

URL = "https://idp.example.com/certs"
ISSUER = "https://idp.example.com"
WELL_KNOWN = "/.well-known/openid-configuration"
ALL = list(SUPPORTED_ALGS)
SIG = "error validating token: error verifying token signature: "


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def tok(key: Any, **kw: Any) -> ParsedToken:
    return parse_token(make_token(default_claims(), key=key, **kw))


async def fails(src: KeySource, token: ParsedToken) -> str:
    with pytest.raises(InvalidRequest) as exc:
        await src.verify(token, ALL)
    return exc.value.messages[0]


JWKSFactory = Callable[[FakeFetcher, Clock], KeySource]
JWKS_SOURCES: dict[str, JWKSFactory] = {
    "build_key_source": lambda f, c: build_key_source({"jwks_url": URL}, f, clock=c),
    "RemoteJWKS": lambda f, c: JWKSKeySource(RemoteJWKS(URL, None, f, clock=c)),
}


# -- fetch limits ----------------------------------------------------------------------------------

async def test_fetches_use_a_10_second_timeout() -> None:
    fetcher = FakeFetcher({URL: jwks(ec_key(kid="a"))})
    await build_key_source({"jwks_url": URL}, fetcher).check()
    assert fetcher.calls[0][2]["timeout"] == 10.0


@pytest.mark.parametrize(("size", "ok"), [(1 << 20, True), ((1 << 20) + 1, False)], ids=["1 MiB", "1 MiB + 1"])
async def test_jwks_body_limit(size: int, ok: bool) -> None:
    key = ec_key(kid="a")
    body = json.dumps(jwks(key)).encode()
    body += b" " * (size - len(body))
    fetcher = FakeFetcher({URL: FetchResult(200, {}, body)})
    src = build_key_source({"jwks_url": URL}, fetcher)
    if ok:
        await src.check()
        await src.verify(tok(key), ALL)
    else:
        with pytest.raises(InvalidRequest) as exc:
            await src.check()
        assert exc.value.messages == [f"error checking jwks URL {URL}: response body exceeds {1 << 20} bytes"]


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (UpstreamError(""), "request failed"),
        (OSError("boom"), "request failed (OSError)"),
        (FetchResult(500, {}, b"secret body"), "unexpected HTTP status 500"),
        ({"keys": "nope"}, "response is not a JWK set"),
        ({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}, "JWK set contains no usable signing keys"),
        ("not json", "response is not valid JSON"),
    ],
    ids=["empty upstream error", "other exception", "status", "not a set", "no usable key", "not JSON"],
)
async def test_jwks_check_failures_name_the_reason(answer: Any, reason: str) -> None:
    src = build_key_source({"jwks_url": URL}, FakeFetcher({URL: answer}))
    with pytest.raises(InvalidRequest) as exc:
        await src.check()
    assert exc.value.messages == [f"error checking jwks URL {URL}: {reason}"]


async def test_login_names_why_no_keys_are_there() -> None:
    clock = Clock()
    fetcher = FakeFetcher({URL: FetchResult(503, {}, b"")})
    src = build_key_source({"jwks_url": URL}, fetcher, clock=clock)
    message = await fails(src, tok(ec_key(kid="a")))
    assert message == SIG + f"failed to verify id token signature: could not fetch keys from {URL}: " \
                            "unexpected HTTP status 503"


async def test_login_before_any_fetch_says_no_keys() -> None:
    """Within the cooldown of a fetch that another caller started and lost: nothing known yet."""
    clock = Clock()
    cache = RemoteJWKS(URL, None, FakeFetcher({URL: jwks(ec_key(kid="a"))}), clock=clock)
    cache.last_attempt = clock.now  # an attempt just now (another caller's, still unanswered)
    assert cache.unavailable_reason() == f"could not fetch keys from {URL}: no keys"
    message = await fails(JWKSKeySource(cache), tok(ec_key(kid="b")))
    assert message == SIG + f"failed to verify id token signature: could not fetch keys from {URL}: no keys"


# -- the cache's maximum age and cooldown (the defaults a mount gets) ------------------------------

@pytest.mark.parametrize("make", list(JWKS_SOURCES.values()), ids=list(JWKS_SOURCES))
async def test_keys_are_refreshed_after_exactly_an_hour(make: JWKSFactory) -> None:
    key = ec_key(kid="a")
    clock = Clock()
    fetcher = FakeFetcher({URL: jwks(key)})
    src = make(fetcher, clock)
    await src.verify(tok(key), ALL)
    clock.now += 3599.9
    await src.verify(tok(key), ALL)
    await asyncio.sleep(0)
    assert fetcher.count() == 1
    clock.now += 0.1  # exactly 3600 s after the fetch
    await src.verify(tok(key), ALL)
    await asyncio.sleep(0)
    assert fetcher.count() == 2


@pytest.mark.parametrize("make", list(JWKS_SOURCES.values()), ids=list(JWKS_SOURCES))
async def test_unknown_kid_refresh_cooldown_is_exactly_10_seconds(make: JWKSFactory) -> None:
    known = ec_key(kid="known")
    clock = Clock()
    fetcher = FakeFetcher({URL: jwks(known)})
    src = make(fetcher, clock)
    await src.verify(tok(known), ALL)
    clock.now += 9.9
    await fails(src, tok(ec_key(kid="new")))
    assert fetcher.count() == 1  # within the cooldown
    clock.now += 0.1  # exactly 10 s after the last fetch
    await fails(src, tok(ec_key(kid="newer")))
    assert fetcher.count() == 2


async def test_a_stale_set_behind_a_failing_idp_is_fetched_once_per_cooldown() -> None:
    key = ec_key(kid="a")
    clock = Clock()
    served: dict[str, Any] = {"doc": jwks(key)}
    fetcher = FakeFetcher({URL: lambda: served["doc"]})
    src = build_key_source({"jwks_url": URL}, fetcher, clock=clock)
    await src.verify(tok(key), ALL)
    served["doc"] = FetchResult(500, {}, b"")
    clock.now += 4000  # stale: refreshed in the background, the last good keys still serve
    for _ in range(3):
        await src.verify(tok(key), ALL)
        await asyncio.sleep(0)
    assert fetcher.count() == 2
    clock.now += 9.9
    await src.verify(tok(key), ALL)
    await asyncio.sleep(0)
    assert fetcher.count() == 2
    clock.now += 0.1  # the cooldown is over: one more background try
    await src.verify(tok(key), ALL)
    await asyncio.sleep(0)
    assert fetcher.count() == 3


# -- which keys a token is tried against ------------------------------------------------------------

async def test_a_token_without_kid_is_tried_against_keys_with_one() -> None:
    key = ec_key(kid="a")
    src = build_key_source({"jwks_url": URL}, FakeFetcher({URL: jwks(key)}))
    await src.verify(tok(key, kid=DROP), ALL)


async def test_keys_of_other_algorithms_do_not_use_up_the_tries() -> None:
    good = ec_key(kid="good")
    rsa = [rsa_key(kid=f"r{i}", slot=8).jwk() for i in range(25)]
    src = build_key_source({"jwks_url": URL}, FakeFetcher({URL: {"keys": [*rsa, good.jwk()]}}))
    await src.verify(tok(good, kid=DROP), ALL)


@pytest.mark.parametrize(("others", "ok"), [(19, True), (20, False)], ids=["20th key", "21st key"])
async def test_a_token_without_kid_tries_at_most_20_keys(others: int, ok: bool) -> None:
    good = ec_key(kid="good")
    keys = [ec_key(kid=f"o{i}").jwk() for i in range(others)] + [good.jwk()]
    clock = Clock()
    fetcher = FakeFetcher({URL: {"keys": keys}})
    src = build_key_source({"jwks_url": URL}, fetcher, clock=clock)
    if ok:
        await src.verify(tok(good, kid=DROP), ALL)
    else:
        assert await fails(src, tok(good, kid=DROP)) == SIG + "failed to verify id token signature"


# -- discovery ------------------------------------------------------------------------------------

def _show_cases() -> list[tuple[str, str]]:
    return [
        ("h" * 128, "h" * 128),
        ("h" * 129, json.dumps("h" * 128) + "..."),
        ("a b", '"a b"'),
        ("a b" + "h" * 125, json.dumps("a b" + "h" * 125)),  # quoted, and nothing was cut
        ("caf\u00e9", '"caf\\u00e9"'),
    ]


@pytest.mark.parametrize(("issuer", "shown"), _show_cases(), ids=["128", "129", "space", "128 with a space",
                                                                  "non-ASCII"])
async def test_issuer_mismatch_shows_the_issuer(issuer: str, shown: str) -> None:
    fetcher = FakeFetcher({ISSUER + WELL_KNOWN: {"issuer": issuer, "jwks_uri": URL}})
    with pytest.raises(InvalidRequest) as exc:
        await fetch_discovery(ISSUER, None, fetcher)
    assert exc.value.messages == [
        f"error checking oidc discovery URL: issuer in discovery document is {shown}, expected {ISSUER}"
    ]


@pytest.mark.parametrize(
    ("url", "doc", "message"),
    [
        (ISSUER + WELL_KNOWN + "/", None, f"the URL must be the issuer, without {WELL_KNOWN}"),
        (ISSUER, ["not", "an object"], "discovery document is not a JSON object"),
        (ISSUER, {"issuer": ISSUER, "jwks_uri": "ftp://idp/certs"}, "jwks_uri in discovery document is not an http(s) URL"),
        (ISSUER, {"issuer": ISSUER, "jwks_uri": 5}, "jwks_uri in discovery document is not an http(s) URL"),
        (ISSUER, {"issuer": ISSUER, "jwks_uri": "http://idp/certs"}, "jwks_uri in discovery document is not https"),
    ],
    ids=["well-known URL", "not an object", "not http", "not a string", "downgrade"],
)
async def test_discovery_refusals(url: str, doc: Any, message: str) -> None:
    fetcher = FakeFetcher({url.rstrip("/") + WELL_KNOWN: doc} if doc is not None else {})
    with pytest.raises(InvalidRequest) as exc:
        await fetch_discovery(url, None, fetcher)
    assert exc.value.messages == [f"error checking oidc discovery URL: {message}"]


async def test_an_issuer_ending_in_x_is_an_issuer() -> None:
    issuer = "https://idp.example.com/tenantX"
    key = ec_key(kid="a")
    fetcher = FakeFetcher({issuer + WELL_KNOWN: {"issuer": issuer, "jwks_uri": URL}, URL: jwks(key)})
    await build_key_source({"oidc_discovery_url": issuer}, fetcher).verify(tok(key), ALL)
    weird = "https://idp.example.com/.well-known/openid-configurationX"
    fetcher = FakeFetcher({weird + WELL_KNOWN: {"issuer": weird, "jwks_uri": URL}, URL: jwks(key)})
    assert (await fetch_discovery(weird, None, fetcher))["issuer"] == weird


async def test_discovery_without_jwks_uri_fails_at_login() -> None:
    fetcher = FakeFetcher({ISSUER + WELL_KNOWN: {"issuer": ISSUER}})
    src = build_key_source({"oidc_discovery_url": ISSUER}, fetcher)
    assert await fails(src, tok(ec_key(kid="a"))) == (
        SIG + "failed to verify id token signature: error checking oidc discovery URL: "
        "discovery document has no jwks_uri"
    )


DiscoveryFactory = Callable[[FakeFetcher, Clock], KeySource]
DISCOVERY_SOURCES: dict[str, DiscoveryFactory] = {
    "build_key_source": lambda f, c: build_key_source({"oidc_discovery_url": ISSUER}, f, clock=c),
    "DiscoveryKeySource": lambda f, c: DiscoveryKeySource(ISSUER, None, f, clock=c),
}


@pytest.mark.parametrize("make", list(DISCOVERY_SOURCES.values()), ids=list(DISCOVERY_SOURCES))
async def test_a_failed_discovery_is_retried_after_exactly_10_seconds(make: DiscoveryFactory) -> None:
    key = ec_key(kid="a")
    clock = Clock()
    served: dict[str, Any] = {"doc": FetchResult(503, {}, b"")}
    fetcher = FakeFetcher({ISSUER + WELL_KNOWN: lambda: served["doc"], URL: jwks(key)})
    src = make(fetcher, clock)
    first = await fails(src, tok(key))
    assert first == SIG + "failed to verify id token signature: error checking oidc discovery URL: " \
                          "unexpected HTTP status 503"
    served["doc"] = {"issuer": ISSUER, "jwks_uri": URL}
    clock.now += 9.9
    assert await fails(src, tok(key)) == first  # remembered: no fetch
    assert fetcher.count(ISSUER + WELL_KNOWN) == 1
    clock.now += 0.1
    await src.verify(tok(key), ALL)
    assert fetcher.count(ISSUER + WELL_KNOWN) == 2


@pytest.mark.parametrize("make", list(DISCOVERY_SOURCES.values()), ids=list(DISCOVERY_SOURCES))
async def test_discovered_keys_are_refreshed_after_exactly_an_hour(make: DiscoveryFactory) -> None:
    key = ec_key(kid="a")
    clock = Clock()
    fetcher = FakeFetcher({ISSUER + WELL_KNOWN: {"issuer": ISSUER, "jwks_uri": URL}, URL: jwks(key)})
    src = make(fetcher, clock)
    await src.verify(tok(key), ALL)
    clock.now += 3599.9
    await src.verify(tok(key), ALL)
    await asyncio.sleep(0)
    assert fetcher.count(URL) == 1
    clock.now += 0.1
    await src.verify(tok(key), ALL)
    await asyncio.sleep(0)
    assert fetcher.count(URL) == 2


# -- jwks_pairs ---------------------------------------------------------------------------------

URL2 = "https://other.example.com/certs"


async def test_pairs_with_every_endpoint_down() -> None:
    fetcher = FakeFetcher({URL: FetchResult(500, {}, b""), URL2: OSError("down")})
    src = build_key_source({"jwks_pairs": [{"jwks_url": URL}, {"jwks_url": URL2}]}, fetcher)
    assert await fails(src, tok(ec_key(kid="a"))) == (
        SIG + "failed to refresh all 2 JWKS caches - check network connectivity and JWKS endpoints"
    )


async def test_pairs_known_kid_fetches_nothing_more() -> None:
    a, b = ec_key(kid="a"), ec_key(kid="b")
    clock = Clock()
    fetcher = FakeFetcher({URL: jwks(a), URL2: jwks(b)})
    src = build_key_source({"jwks_pairs": [{"jwks_url": URL}, {"jwks_url": URL2}]}, fetcher, clock=clock)
    await src.verify(tok(a), ALL)
    assert fetcher.count() == 2
    clock.now += 60  # past the cooldown, within the maximum age
    await src.verify(tok(b), ALL)
    assert fetcher.count() == 2


async def test_pairs_check_always_fetches() -> None:
    a, b = ec_key(kid="a"), ec_key(kid="b")
    fetcher = FakeFetcher({URL: jwks(a), URL2: jwks(b)})
    src = build_key_source({"jwks_pairs": [{"jwks_url": URL}, {"jwks_url": URL2}]}, fetcher, clock=Clock())
    await src.check()
    await src.check()  # within the cooldown: a config write checks the endpoints anyway
    assert fetcher.count() == 4


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"jwks_pairs": [{"jwks_ca_pem": "x"}]},
         "invalid jwks_pairs: jwks_pairs must be provided as a list of json objects with the fields jwks_url "
         "and jwks_ca_pem"),
        ({}, "exactly one of 'jwt_validation_pubkeys', 'jwks_url', 'jwks_pairs' or 'oidc_discovery_url' must be set"),
    ],
    ids=["pair without url", "no source"],
)
def test_build_key_source_messages(config: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        build_key_source(config, FakeFetcher())
    assert exc.value.messages == [message]


@pytest.mark.parametrize(
    ("routes", "fetches"),
    [
        ({ISSUER + WELL_KNOWN: {"issuer": ISSUER, "jwks_uri": URL}, URL: "keys"}, [("discovery", True), ("jwks", True)]),
        ({ISSUER + WELL_KNOWN: {"issuer": ISSUER, "jwks_uri": URL}}, [("discovery", True), ("jwks", False)]),
        ({}, [("discovery", False)]),
    ],
    ids=["both fetched", "the key set fails", "discovery fails"],
)
async def test_key_fetch_events_name_the_source_and_the_outcome(routes: dict[str, Any],
                                                                 fetches: list[tuple[str, bool]]) -> None:
    key = ec_key()
    if routes.get(URL) == "keys":
        routes[URL] = jwks(key)
    events = RecordingEvents()
    src = DiscoveryKeySource(ISSUER, None, FakeFetcher(routes), clock=Clock(), events=events)
    if fetches[-1][1]:
        await src.verify(tok(key), ALL)
    else:
        assert (await fails(src, tok(key))).startswith(SIG)
    assert events.fetches == fetches


# -- what GET config's key status and a refusal show ---------------------------------------------

def rfc3339(when: float) -> str:
    return datetime.datetime.fromtimestamp(when, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_jwks_status_through_a_failure_a_recovery_and_a_failed_refresh() -> None:
    key, clock = ec_key(kid="k"), Clock()
    served: dict[str, Any] = {"doc": UpstreamError("down")}
    src = build_key_source({"jwks_url": URL}, FakeFetcher({URL: lambda: served["doc"]}), clock=clock,
                           mount="auth/jwt/")
    [fresh] = src.status()
    assert fresh == {"source": "jwks_url", "url": URL, "key_count": 0, "kids": [], "last_fetch": None,
                     "last_error": None, "consecutive_failures": 0, "failures": 0, "next_refresh": "at first use"}
    failed_at = clock.now
    await fails(src, tok(key))
    [status] = src.status()
    assert status["key_count"] == 0 and status["last_error"] == "down"
    assert status["next_refresh"] == rfc3339(failed_at + 10)  # the cooldown after a failure
    clock.now += 10
    served["doc"] = jwks(key)
    with capture_logs() as logs:
        await src.verify(tok(key), ALL)
    assert [(e["event"], e["mount"]) for e in logs] == [("jwks_fetch_recovered", "auth/jwt/")]
    fetched_at = clock.now
    [status] = src.status()
    assert status["key_count"] == 1 and status["next_refresh"] == rfc3339(fetched_at + 3600)
    served["doc"] = UpstreamError("down again")
    clock.now += 3605  # stale: the background refresh fails, the held keys still serve
    await src.verify(tok(key), ALL)
    await asyncio.sleep(0)
    [status] = src.status()
    assert status["key_count"] == 1 and status["last_error"] == "down again"
    assert status["next_refresh"] == rfc3339(clock.now + 10)  # the cooldown, not the held set's age
    await src.close()


@pytest.mark.parametrize(
    ("kids", "held"),
    [
        ([f"k{i:02}" for i in range(10)], ", ".join(f"k{i:02}" for i in range(10))),
        ([f"k{i:02}" for i in range(11)], ", ".join(f"k{i:02}" for i in range(10)) + ", ..."),
        (["x" * 64], "x" * 64),
        (["x" * 65], '"' + "x" * 64 + '"...'),
    ],
    ids=["10 kids", "11 kids", "a 64-character kid", "a 65-character kid"],
)
async def test_the_kids_a_refusal_and_the_status_show(kids: list[str], held: str) -> None:
    key, clock = ec_key(), Clock()
    src = build_key_source({"jwks_url": URL}, FakeFetcher({URL: jwks(*[key.with_kid(k) for k in kids])}), clock=clock)
    message = await fails(src, tok(key.with_kid("unknown")))
    assert message == (SIG + f"failed to verify id token signature: no key with kid unknown: the key set from {URL} "
                       f"holds kids [{held}] (fetched {rfc3339(clock.now)})")
    [status] = src.status()
    assert status["kids"] == kids[:10] and status["key_count"] == len(kids)


async def test_pairs_refusal_names_an_endpoint_with_no_keys_yet() -> None:
    a = ec_key(kid="a")
    src = build_key_source({"jwks_pairs": [{"jwks_url": URL}, {"jwks_url": URL2}]},
                           FakeFetcher({URL: jwks(a), URL2: UpstreamError("down")}), clock=Clock())
    message = await fails(src, tok(ec_key(kid="z")))
    assert message.endswith(f"; no key set from {URL2} yet; last refresh error: down")


@pytest.mark.parametrize(("unusable", "ok"), [(99, True), (100, False)], ids=["99 before", "100 before"])
async def test_only_the_first_100_jwks_of_a_set_count(unusable: int, ok: bool) -> None:
    key = ec_key(kid="good")
    doc = {"keys": [{"kty": "oct", "k": "c2VjcmV0"}] * unusable + [key.jwk()]}
    src = build_key_source({"jwks_url": URL}, FakeFetcher({URL: doc}), clock=Clock())
    if ok:
        await src.verify(tok(key), ALL)
    else:
        assert (await fails(src, tok(key))).endswith("JWK set contains no usable signing keys")


async def test_discovery_status_through_a_failure_and_a_recovery() -> None:
    key, clock = ec_key(kid="k"), Clock()
    served: dict[str, Any] = {"doc": UpstreamError("down")}
    fetcher = FakeFetcher({ISSUER + WELL_KNOWN: lambda: served["doc"], URL: jwks(key)})
    src = build_key_source({"oidc_discovery_url": ISSUER}, fetcher, clock=clock)
    failed_at = clock.now
    await fails(src, tok(key))
    [doc] = src.status()
    assert doc["next_refresh"] == rfc3339(failed_at + 10) and doc["last_error"].endswith("down")
    clock.now += 10
    served["doc"] = {"issuer": ISSUER, "jwks_uri": URL}
    await src.verify(tok(key), ALL)
    doc, _ = src.status()
    assert doc["last_error"] is None and doc["consecutive_failures"] == 0 and doc["failures"] == 1


async def test_a_discovered_key_set_keeps_the_mount_and_the_client_certificate() -> None:
    cert = ("-----BEGIN CERTIFICATE-----", "-----BEGIN PRIVATE KEY-----")
    fetcher = FakeFetcher({ISSUER + WELL_KNOWN: {"issuer": ISSUER, "jwks_uri": URL}, URL: UpstreamError("down")})
    src = build_key_source({"oidc_discovery_url": ISSUER, "client_tls_cert": cert[0], "client_tls_key": cert[1],
                            "override_allowed_server_names": ["idp.internal"]}, fetcher, clock=Clock(), mount="auth/corp/")
    with capture_logs() as logs:
        await fails(src, tok(ec_key()))
    assert [(e["event"], e["mount"]) for e in logs] == [("jwks_fetch_failed", "auth/corp/")]
    assert [c[2]["client_cert"] for c in fetcher.calls] == [cert, cert]  # discovery and the key set
    assert [c[2]["server_names"] for c in fetcher.calls] == [("idp.internal",)] * 2


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, None),
        ({"client_tls_cert": "c"}, None),
        ({"client_tls_key": "k"}, None),
        ({"client_tls_cert": "", "client_tls_key": "k"}, None),
        ({"client_tls_cert": "c", "client_tls_key": "k"}, ("c", "k")),
    ],
    ids=["neither", "cert only", "key only", "empty cert", "both"],
)
def test_client_cert_of(config: dict[str, Any], expected: tuple[str, str] | None) -> None:
    assert client_cert_of(config) == expected
