"""The fast paths of login and lookup keep the exact behaviour of the code they replaced."""

from __future__ import annotations

import asyncio
import base64
import collections
import io
import json
import re
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

import server.http.log as log
import server.storage.sqlite as sqlite_engine
import server.tokens.batch as batch
import server.tokens.entry as entry_mod
import server.tokens.ids as te
import server.tokens.ttl as ttl
from plugin import jose_verify as jv
from plugin.errors import InvalidRequest, NotFound, UnsupportedPath
from plugin.framework import Backend, Operation, PathSpec, Request
from plugin.schema import FieldSet
from plugin.storage import InMemoryStorage
from server.storage.sqlite import SQLiteStorage
from server.tokens.store import TokenStore

# -- request log ---------------------------------------------------------------------------


def test_request_ids_are_distinct_uuid4() -> None:
    ids = [log.new_request_id() for _ in range(3000)]  # crosses several pool refills
    assert len(set(ids)) == len(ids)
    for rid in ids[:500]:
        parsed = uuid.UUID(rid)
        assert str(parsed) == rid and parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_timestamp_is_structlogs_iso_utc_format() -> None:
    before = datetime.now(UTC)
    stamp = log._timestamp(time.time())
    after = datetime.now(UTC)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z", stamp)
    parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert before.replace(microsecond=0) <= parsed <= after


REDACT_CASES = [
    ("/v1/auth/token/lookup-self", "plain path"),
    ("/v1/auth/x/hvs.SECRETSECRETSECRET1", "vault token"),
    ("Authorization: BeArEr abcdefghij", "mixed-case bearer"),
    ("bearer\tqwertyuiop", "bearer with tab"),
    ("s.ABCDEFGHIJKLMNOPQRSTUVWX in text", "legacy token"),
    ("eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl", "jwt"),
    ("no dots and no b-word here", "nothing"),
    ("short", "short"),
]


@pytest.mark.parametrize("text", [c for c, _ in REDACT_CASES], ids=[i for _, i in REDACT_CASES])
def test_redact_shortcut_agrees_with_the_regex(text: str) -> None:
    assert log.redact(text) == (log._TOKEN_RE.sub(log.REDACTED, text) if len(text) >= 10 else text)


async def test_pre_rendered_request_line(aiohttp_client: AiohttpClient, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = io.BytesIO()
    monkeypatch.setattr(log, "_request_sink", sink)
    monkeypatch.setattr(log, "_pending_lines", collections.deque())

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application()
    app.router.add_get("/v1/auth/x/hvs.SECRETSECRETSECRET1", log.handled(handler))
    client = await aiohttp_client(app)
    for _ in range(2):
        resp = await client.get(
            "/v1/auth/x/hvs.SECRETSECRETSECRET1", headers={"X-Vault-Token": "hvs.SECRETSECRETSECRET2"}
        )
        assert resp.status == 204
    assert sink.getvalue() == b""  # taken, rendered when the buffer is flushed
    log.flush_request_log()
    lines = sink.getvalue().splitlines()
    assert len(lines) == 2  # one line per request
    line = orjson.loads(lines[0])
    # Same fields and order as the structlog chain renders them.
    assert list(line) == [
        "method", "path", "mount", "remote_addr", "status", "duration_ms", "event", "request_id", "level",
        "timestamp",
    ]
    assert line["path"] == "/v1/auth/x/<redacted>" and line["status"] == 204 and line["event"] == "request"
    assert line["remote_addr"] == "127.0.0.1"  # docs/troubleshooting.md sends operators to it
    assert b"SECRETSECRET" not in sink.getvalue()


def test_request_lines_keep_their_order_with_structlog_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Request lines wait unrendered; a structlog line written through the same stream
    renders them first, so the file keeps the order in which things happened."""
    sink = io.BytesIO()
    monkeypatch.setattr(log, "_pending_lines", collections.deque())
    monkeypatch.setattr(log, "_flush_pending", True)  # no timer: the test has no running loop
    ordered = log._OrderedStream(sink)
    log._take_request_line(sink, ("r1", "GET", "/v1/sys/health", None, "127.0.0.1", 200, 0.0012345, time.time()))
    ordered.write(b'{"event":"later"}\n')
    log._take_request_line(sink, ("r2", "GET", "/v1/sys/health", None, "127.0.0.1", 200, 0.001, time.time()))
    assert [orjson.loads(line)["event"] for line in sink.getvalue().splitlines()] == ["request", "later"]
    assert orjson.loads(sink.getvalue().splitlines()[0])["duration_ms"] == 1.234
    log._flush(sink)
    assert [orjson.loads(line).get("request_id") for line in sink.getvalue().splitlines()] == ["r1", None, "r2"]


def test_request_lines_rendered_from_another_thread_are_never_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    """A structlog line logged on another thread (the SQLite writer's) renders the waiting
    request lines while the event loop's thread keeps taking new ones: every line comes
    out exactly once."""
    import sys
    import threading

    monkeypatch.setattr(log, "_pending_lines", collections.deque())
    monkeypatch.setattr(log, "_flush_pending", True)
    monkeypatch.setattr(log, "MAX_PENDING_LINES", 10**9)  # only the other thread renders
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    out, guard = io.BytesIO(), threading.Lock()

    class Locked:  # BufferedWriter is thread-safe; BytesIO needs the lock
        def write(self, data: bytes) -> None:
            with guard:
                out.write(data)

    sink, stop = Locked(), threading.Event()

    def other_thread() -> None:
        while not stop.is_set():
            log._render_pending(sink)

    thread = threading.Thread(target=other_thread)
    thread.start()
    try:
        for i in range(20000):
            log._take_request_line(sink, (f"r{i}", "GET", "/x", None, "", 200, 0.0, time.time()))
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
    log._render_pending(sink)
    ids = [orjson.loads(line)["request_id"] for line in out.getvalue().splitlines()]
    assert sorted(ids) == sorted(f"r{i}" for i in range(20000))


def test_request_lines_are_rendered_at_most_max_pending_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    sink = io.BytesIO()
    monkeypatch.setattr(log, "_pending_lines", collections.deque())
    monkeypatch.setattr(log, "_flush_pending", True)
    for i in range(log.MAX_PENDING_LINES - 1):
        log._take_request_line(sink, (f"r{i}", "GET", "/x", None, "", 200, 0.0, time.time()))
    assert sink.getvalue() == b""
    log._take_request_line(sink, ("last", "GET", "/x", None, "", 200, 0.0, time.time()))
    assert sink.getvalue().count(b"\n") == log.MAX_PENDING_LINES and not log._pending_lines



async def test_structlog_lines_carry_the_request_id(aiohttp_client: AiohttpClient) -> None:
    """A line logged while a request runs gets that request's id (``_add_request_id`` in the
    processor chain, one ContextVar set per request), and the next request its own."""
    seen: list[tuple[str, object]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((request[log.REQUEST_ID], log._add_request_id(None, "info", {"event": "x"}).get("request_id")))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_get("/x", log.handled(handler))
    client = await aiohttp_client(app)
    for _ in range(2):  # one keep-alive connection: both requests run in its task's context
        assert (await client.get("/x")).status == 204
    assert [rid for rid, _ in seen] == [logged for _, logged in seen]
    assert seen[0][0] != seen[1][0]
    assert log._add_request_id(None, "info", {"request_id": "given"})["request_id"] == "given"


async def test_request_lines_are_flushed_within_the_delay_not_per_request(
    aiohttp_client: AiohttpClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lines wait in the buffer (no write(2) per request) and reach the file within
    FLUSH_DELAY; flush_request_log (shutdown, exit) writes them out at once."""
    raw = io.BytesIO()
    sink = io.BufferedWriter(raw, buffer_size=65536)
    monkeypatch.setattr(log, "_request_sink", sink)
    monkeypatch.setattr(log, "_flush_pending", False)
    monkeypatch.setattr(log, "_pending_lines", collections.deque())

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application()
    app.router.add_get("/x", log.handled(handler))
    client = await aiohttp_client(app)
    for _ in range(3):
        assert (await client.get("/x")).status == 204
    assert raw.getvalue() == b""  # still buffered: three requests, no flush yet
    for _ in range(100):  # the timer fires after FLUSH_DELAY (0.05 s)
        if raw.getvalue().count(b"\n") == 3:
            break
        await asyncio.sleep(log.FLUSH_DELAY)
    assert raw.getvalue().count(b"\n") == 3
    assert (await client.get("/x")).status == 204
    log.flush_request_log()
    assert raw.getvalue().count(b"\n") == 4


# -- randomness ----------------------------------------------------------------------------


def test_random_b62_alphabet_and_spread() -> None:
    text = "".join(te.random_b62() for _ in range(4000))
    counts = collections.Counter(text)
    assert set(counts) == set(te._B62)
    expected = len(text) / 62
    assert all(0.7 * expected < n < 1.3 * expected for n in counts.values())


# -- token store -------------------------------------------------------------------------------


async def test_hash_and_entity_id_match_the_reference() -> None:
    import hashlib
    import hmac

    store = TokenStore(InMemoryStorage())
    await store.start(sweep=False)
    assert store._salt is not None and store._entity_ns is not None
    for raw in ("hvs.abc", "b.\u00e9", "x" * 300):
        assert store.hash(raw) == hmac.new(store._salt, raw.encode(), hashlib.sha256).hexdigest()
    for acc, alias in (("auth_jwt_1", "alice"), ("auth_jwt_1", "Zoë"), ("", "")):
        for _ in range(2):  # computed, then cached
            assert store.entity_id(acc, alias) == str(uuid.uuid5(store._entity_ns, f"{acc}:{alias}"))


@pytest.mark.parametrize(
    "granted, no_default, expected",
    [
        ([" B ", "a", "b"], False, ["a", "b", "default"]),
        (["b", "a"], True, ["a", "b"]),
        ([], False, ["default"]),
        (["root"], False, InvalidRequest),
        (["Root "], True, InvalidRequest),
        (["control-group"], False, InvalidRequest),
    ],
    ids=["sanitised", "no-default", "empty", "root", "root-spelling", "internal"],
)
async def test_token_policies_are_remembered_but_never_a_refusal(
    granted: list[str], no_default: bool, expected: list[str] | type[Exception]
) -> None:
    """``_token_policies`` remembers each distinct granted list; every call still gets a
    list of its own, and a refused list is refused again (nothing remembered for it)."""
    store = TokenStore(InMemoryStorage())
    for _ in range(3):
        if isinstance(expected, list):
            got = store._token_policies(granted, no_default)
            assert got == expected
            got.append("mutated")  # the caller's own list
        else:
            with pytest.raises(expected):
                store._token_policies(granted, no_default)
    assert len(store._policy_lists) == (1 if isinstance(expected, list) else 0)


@pytest.mark.parametrize(
    "meta", [{"role": "r"}, {"name": "Zoë ✓ 名前"}, {"odd": "\ud800"}], ids=["ascii", "unicode", "lone-surrogate"]
)
def test_batch_token_round_trip(meta: dict[str, str]) -> None:
    key = b"k" * 32
    entry = entry_mod.TokenEntry(id_hash="", accessor="", policies=["default", "p"], meta=meta, ttl=60,
                          expire_time=1795668899.25, type="batch")  # fmt: skip
    raw = batch.encode_batch(entry, key)
    back = batch.decode_batch(raw, (key,))
    assert back is not None and back.meta == meta and back.policies == ["default", "p"]
    assert back.expire_time == 1795668899.25
    assert (back.role, back.internal_data) == ("", {})
    assert batch.decode_batch(raw[:-2] + ("A" if raw[-2] != "A" else "B") + raw[-1], (key,)) is None


def test_a_batch_token_carries_its_role_and_what_its_provider_needs() -> None:
    """The token role it was made against, and the internal data ``CARRIED_INTERNAL`` names
    (what an OIDC provider's access token is for, that groups grant it nothing): signed into
    the token, read back; any other internal data stays out."""
    key = b"k" * 32
    carried = {"oidc_provider": "p", "oidc_client_id": "c", "oidc_scopes": ["openid"], "no_identity_policies": True}
    entry = entry_mod.TokenEntry(id_hash="", accessor="", policies=["p"], role="ci", type="batch",
                                 internal_data={**carried, "secret_state": "x"})
    back = batch.decode_batch(batch.encode_batch(entry, key), (key,))
    assert back is not None and (back.role, back.internal_data) == ("ci", carried)
    assert batch.CARRIED_INTERNAL == tuple(carried)


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (59, "59s"), (600, "10m"), (3600, "1h"), (3661, "1h1m1s"), (768 * 3600 + 1, "768h1s"),
    (768 * 3600 + 60, "768h1m"), (90061, "25h1m1s"),
])
def test_capping_warnings_print_durations_as_vault(seconds: int, text: str) -> None:
    """Vault's ``humanDuration`` in the TTL capping warnings: Go's form without zero parts."""
    assert ttl.human_duration(seconds) == text


def test_entry_dict_round_trip() -> None:
    entry = entry_mod.TokenEntry(id_hash="h", accessor="a", policies=["p"], internal_data={"role": "r", "n": 1})
    nested = entry_mod.TokenEntry(id_hash="h", accessor="a", policies=["p"], internal_data={"x": {"y": [1]}})
    for e in (entry, nested):
        data = e.to_dict()
        assert data["internal_data"] == e.internal_data and data["internal_data"] is not e.internal_data
        assert entry_mod.TokenEntry.from_dict({**data, "unknown": 1}) == e
        assert entry_mod.TokenEntry.from_dict(data) == e


@pytest.mark.parametrize("ts", [0, 1795668899, 1795668899.5, 1795668899.000001], ids=["epoch", "int", "half", "micro"])
def test_rfc3339(ts: float) -> None:
    assert ttl.rfc3339(ts) == datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize("ts", [253402300800.0, 1e13, 9e15])
def test_rfc3339_past_the_year_9999_is_its_last_second(ts: float) -> None:
    """``datetime`` ends with the year 9999: a lookup of a token expiring later was a 500.
    Durations now end at Go's 292 years, so no expiry gets there; the display holds anyway."""
    assert ttl.rfc3339(ts) == "9999-12-31T23:59:59Z"


# -- SQLite engine -------------------------------------------------------------------------------


async def test_put_many_is_durable_and_all_or_nothing_on_bad_values(tmp_path: Path) -> None:
    store = await SQLiteStorage.open(str(tmp_path / "a.db"))
    try:
        commits = store.commits
        await store.put_many([("sys/a", {"v": 1}), ("sys/b", 2)])
        assert store.commits == commits + 1  # one group commit for both
        with pytest.raises(TypeError):
            await store.put_many([("sys/c", 3), ("sys/d", object())])
        with pytest.raises(TypeError):
            await store.put_many([("", 1)])
    finally:
        await store.close()
    store = await SQLiteStorage.open(str(tmp_path / "a.db"))
    try:
        assert await store.get("sys/a") == {"v": 1} and await store.get("sys/b") == 2
        assert await store.get("sys/c") is None and await store.list("sys/") == ["a", "b"]
    finally:
        await store.close()


async def test_value_cache_is_bounded_by_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_engine, "CACHE_BYTES", 10_000)
    store = await SQLiteStorage.open(str(tmp_path / "c.db"))
    try:
        big = "x" * 1000
        for i in range(50):
            await store.put(f"k/{i}", {"v": big, "i": i})
        assert store._cache_size <= 10_000
        assert store._cache_size == sum(len(v) for v in store._cache.values())
        assert len(store._cache) < 50
        for i in range(50):  # evicted values come from the file
            assert await store.get(f"k/{i}") == {"v": big, "i": i}
        await store.delete("k/49")
        assert "k/49" not in store._cache
        assert store._cache_size == sum(len(v) for v in store._cache.values())
    finally:
        await store.close()


# -- routing and strict parsing --------------------------------------------------------------------


def _spec(pattern: str) -> PathSpec:
    async def handler(req: Request, values: dict[str, Any]) -> None:
        return None

    return PathSpec(pattern=pattern, fields=FieldSet({}), operations={Operation.READ: handler})


async def test_route_cache_is_shared_and_read_only() -> None:
    backend = Backend()
    backend.paths = [_spec(r"role/(?P<name>\w+)"), _spec("login")]
    route = backend.resolve("role/a")
    with pytest.raises(TypeError):
        route.captures["name"] = "changed"  # type: ignore[index]
    req = Request(operation=Operation.READ, path="role/a")
    with pytest.raises(NotFound):  # the handler answers None: a read of nothing
        await backend.handle_request(req)
    req.captures["name"] = "changed"  # the request's own copy
    again = backend.resolve("role/a")
    assert again is route and dict(again.captures) == {"name": "a"}
    backend.paths = [_spec("login")]  # a new table is honoured
    with pytest.raises(UnsupportedPath):
        backend.resolve("role/a")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "part",
    ["", "A", "AA==", "AB", "AAB", "+/+/", "ab cd", "abc\n", "abé", "YW=j", "YQ.."],
    ids=["empty", "len1", "padded", "low-bits-2", "low-bits-3", "std-alphabet", "space", "newline",
         "non-ascii", "inner-pad", "dots"],  # fmt: skip
)
def test_non_canonical_base64url_is_refused(part: str) -> None:
    assert jv._b64url_strict(part) is None


def _round_trip_canonical(part: str) -> bool:
    """The definition: the text decodes and re-encodes to itself (the former implementation)."""
    try:
        raw = part.encode("ascii")
        data = base64.b64decode(raw.translate(bytes.maketrans(b"-_", b"+/")) + b"=" * (-len(raw) % 4), validate=True)
    except (UnicodeEncodeError, ValueError):
        return False
    return bool(raw) and len(raw) % 4 != 1 and base64.urlsafe_b64encode(data).rstrip(b"=") == raw


def test_canonical_check_agrees_with_the_round_trip() -> None:
    """``_b64url_canonical`` checks the alphabet and the last character's unused bits
    instead of decoding; every string of the URL alphabet (plus a few others) up to 3
    characters, and random longer ones, get the same answer as the round trip."""
    import itertools
    import random

    chars = jv._B64URL_ALPHABET + "+/=. é"
    cases = ["".join(p) for n in range(4) for p in itertools.product(chars, repeat=n)]
    rng = random.Random(7)
    cases += ["".join(rng.choice(jv._B64URL_ALPHABET if i % 5 else chars) for _ in range(rng.randrange(4, 60)))
              for i in range(3000)]
    for part in cases:
        assert jv._b64url_canonical(part) == _round_trip_canonical(part), part
        assert (jv._b64url_strict(part) is not None) == _round_trip_canonical(part), part


@pytest.mark.parametrize("data", [b"", b"a", b"ab", b"abc", bytes(range(256))], ids=["0", "1", "2", "3", "256"])
def test_canonical_base64url_decodes(data: bytes) -> None:
    text = _b64(data)
    assert jv._b64url_strict(text) == (data if text else None)


@pytest.mark.parametrize(
    "payload, reason",
    [
        ('{"sub":"a","sub":"b"}', "duplicate key"),
        ('{"a":{"x":1,"x":2}}', "duplicate key"),
        ('{"sub":"\\ud800"}', "lone surrogate"),
        ('{"exp":NaN}', "NaN is not allowed"),
        ('{"exp":1e400}', "number out of range"),
    ],
    ids=["duplicate", "nested-duplicate", "surrogate", "nan", "huge-float"],
)
def test_strict_json_still_refuses(payload: str, reason: str) -> None:
    token = ".".join([_b64(b'{"alg":"RS256"}'), _b64(payload.encode()), _b64(b"sig")])
    with pytest.raises(InvalidRequest) as err:
        jv.parse_token(token)
    assert reason in str(err.value)


def test_strict_json_keeps_escaped_pairs() -> None:
    token = ".".join([_b64(b'{"alg":"RS256"}'), _b64(json.dumps({"sub": "\U0001f680"}).encode()), _b64(b"sig")])
    assert jv.parse_token(token).claims == {"sub": "\U0001f680"}


async def test_values_read_from_the_file_are_cached_unless_a_commit_intervened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_engine, "CACHE_BYTES", 3000)
    store = await SQLiteStorage.open(str(tmp_path / "r.db"))
    try:
        await store.put("tok/a", {"v": "a" * 500})
        for i in range(20):  # push tok/a out of the cache
            await store.put(f"k/{i}", {"v": "x" * 500})
        assert "tok/a" not in store._cache
        assert await store.get("tok/a") == {"v": "a" * 500}
        assert "tok/a" in store._cache  # read-through
        assert store._cache_size == sum(len(v) for v in store._cache.values()) <= 3000
        await store.put("k/0", {"v": "new"})
        # A read that began before a published commit must not fill the cache.
        blob = orjson.dumps({"v": "old"})
        store._cache_read("k/stale", blob, store._cache_gen - 1)
        assert "k/stale" not in store._cache
        store._cache_read("tok/a", b'{"v":"other"}', store._cache_gen)  # present: kept as is
        assert await store.get("tok/a") == {"v": "a" * 500}
    finally:
        await store.close()


# -- backend headers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "visible"),
    [
        ("X-Custom", True),
        ("User-Agent", True),
        ("X-Vault-Token", False),
        ("Authorization", False),
        ("Cookie", False),
        ("Proxy-Authorization", False),
        ("X-Authmount-List", False),
    ],
)
def test_backend_headers_hide_credentials(name: str, visible: bool) -> None:
    from multidict import CIMultiDict, CIMultiDictProxy

    from server.http.handlers import BackendHeaders
    from server.http.listverb import MARKER_HEADER

    raw = CIMultiDict({name: "value", "Host": "h"})
    if name == "X-Authmount-List":
        raw = CIMultiDict({MARKER_HEADER: "1", "Host": "h"})
        name = MARKER_HEADER
    view = BackendHeaders(CIMultiDictProxy(raw))
    assert (name.lower() in view) is visible
    assert view.get(name.lower()) == ("value" if visible else None)
    assert set(view) == ({name.lower(), "host"} if visible else {"host"})
    assert len(view) == len(set(view))
