"""The Storage protocol on every engine (memory, SQLite, PostgreSQL), plus engine specifics."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import enum
import math
import os
import random
import stat
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from pytest_aiohttp import AiohttpClient

from plugin.storage import InMemoryStorage, PrefixedStorage, Storage
from server.storage import Engine, open_storage
from server.storage.keyrange import list_children
from server.storage.postgres import PostgresStorage, like_prefix
from server.storage.sqlite import SQLiteStorage
from tests.pg import PostgresServer
from tests.server.httpkit import Client

ENGINES = ["memory", "sqlite", "postgres"]


@pytest.fixture(params=ENGINES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Engine]:
    """An open store of each engine type, closed after the test."""
    kind = request.param
    cfg: dict[str, Any] = {"type": kind}
    if kind == "sqlite":
        cfg["path"] = str(tmp_path / "db" / "authmount.db")
    elif kind == "postgres":
        cfg["dsn"] = request.getfixturevalue("postgres_dsn")
    s = await open_storage(cfg)
    yield s
    await s.close()


def _incr(old: Any) -> Any:
    return {"n": (old or {"n": 0})["n"] + 1}


def _delete(old: Any) -> dict[str, int] | None:
    return None


def _boom(old: Any) -> Any:
    raise ZeroDivisionError("fn failed")


VALUES = [
    ({"a": {"b": [1, 2, {"c": None}]}, "t": True, "f": 1.5}, "nested"),
    ({"name": "Zoë ✓ 名前 🚀", "k\u00e9y": "v"}, "unicode"),
    ([1, "two", 3.25, False, None, []], "list"),
    ("plain string", "string"),
    (0, "zero"),
    (-(2**53), "big-int"),
    ({}, "empty-dict"),
]


@pytest.mark.parametrize("value", [v for v, _ in VALUES], ids=[i for _, i in VALUES])
async def test_json_round_trip(store: Engine, value: Any) -> None:
    await store.put("sys/x", value)
    assert await store.get("sys/x") == value


async def test_implements_protocol(store: Engine) -> None:
    assert isinstance(store, Storage)
    store.set_invalidation_callback(lambda key: None)
    store.set_unannounced_prefixes(["sys/token/id/"])


async def test_engine_extras(store: Engine) -> None:
    """The ``Engine`` extras the server calls without probing: ``shared`` says whether
    another node may write; ``peek_cached`` hands out the stored bytes only where the engine
    holds them in memory (a new bytes object per write); ``put_many`` writes them all."""
    shared = isinstance(store, PostgresStorage)
    assert store.shared is shared
    await store.put_many([("m/a", {"v": 1}), ("m/b", [2]), ("m/a", {"v": 3})])  # last one wins
    assert (await store.get("m/a"), await store.get("m/b")) == ({"v": 3}, [2])
    first = store.peek_cached("m/a")
    if shared:
        assert first is None  # another node may have changed it: nothing is cached
        return
    assert first is not None and orjson.loads(first) == {"v": 3}
    await store.put("m/a", {"v": 3})  # the same value again: new bytes all the same
    again = store.peek_cached("m/a")
    assert again is not None and again is not first and again == first
    await store.delete("m/a")
    assert store.peek_cached("m/a") is None and store.peek_cached("m/never") is None


async def test_get_missing_put_replace_delete(store: Engine) -> None:
    assert await store.get("nope") is None
    await store.put("k", {"v": 1})
    await store.put("k", {"v": 2})
    assert await store.get("k") == {"v": 2}
    await store.delete("k")
    await store.delete("k")  # deleting a missing key is not an error
    assert await store.get("k") is None


async def test_get_returns_a_copy(store: Engine) -> None:
    await store.put("k", {"list": [1]})
    got = await store.get("k")
    assert got is not None
    got["list"].append(2)
    assert await store.get("k") == {"list": [1]}


LIST_CASES = [
    ("", ["a/", "b", "c%/", "c%x/", "c_d/", "cxd/"], "root"),
    ("a/", ["b", "b/", "c/"], "folder-and-leaf-same-name"),
    ("a/b/", ["x"], "nested"),
    ("a/c/", ["d/"], "deep"),
    ("c_d/", ["1"], "underscore-is-literal"),
    ("c%/", ["2"], "percent-is-literal"),
    ("zzz/", [], "missing"),
]


@pytest.mark.parametrize(("prefix", "expected"), [c[:2] for c in LIST_CASES],
                         ids=[c[2] for c in LIST_CASES])
async def test_list_immediate_children(store: Engine, prefix: str, expected: list[str]) -> None:
    for key in ("a/b", "a/b/x", "a/c/d/e", "b", "c_d/1", "cxd/9", "c%/2", "c%x/3"):
        await store.put(key, 1)
    assert await store.list(prefix) == expected


async def test_update_creates_returns_and_deletes(store: Engine) -> None:
    assert await store.update("ctr", _incr) == {"n": 1}
    assert await store.update("ctr", _incr) == {"n": 2}
    assert await store.get("ctr") == {"n": 2}
    assert await store.update("ctr", _delete) is None
    assert await store.get("ctr") is None
    assert await store.list("") == []


async def test_update_sees_old_value(store: Engine) -> None:
    await store.put("k", {"seen": []})
    seen: list[Any] = []

    def remember(old: Any) -> dict[str, int]:
        seen.append(old)
        return {"x": 1}

    await store.update("k", remember)
    assert seen == [{"seen": []}]


async def test_concurrent_updates_are_serialised(store: Engine) -> None:
    await asyncio.gather(*(store.update("ctr", _incr) for _ in range(100)))
    assert await store.get("ctr") == {"n": 100}


@pytest.mark.parametrize(
    ("fn", "error"),
    [(_boom, ZeroDivisionError), (lambda old: {"bad": object()}, TypeError)],
    ids=["fn-raises", "result-not-json"],
)
async def test_failed_update_leaves_old_value(store: Engine, fn: Any, error: type) -> None:
    await store.put("k", {"v": "old"})
    with pytest.raises(error):
        await store.update("k", fn)
    assert await store.get("k") == {"v": "old"}
    with pytest.raises(error):
        await store.update("missing", fn)
    assert await store.get("missing") is None
    assert await store.list("") == ["k"]


async def test_failed_put_leaves_old_value(store: Engine) -> None:
    await store.put("k", {"v": "old"})
    with pytest.raises(TypeError):
        await store.put("k", {"v": {1, 2}})
    assert await store.get("k") == {"v": "old"}


# -- what every engine accepts and refuses: one table, the same answer everywhere -----------


@dataclasses.dataclass
class _Point:
    x: int
    y: int


class _Colour(str, enum.Enum):
    RED = "red"


_REFUSED = object()  # marks a value every engine refuses (with TypeError)

#: (id, value, what ``get`` hands back after it was stored, or _REFUSED).
VALUE_TABLE: list[tuple[str, Any, Any]] = [
    ("set", {1, 2}, _REFUSED),
    ("set-nested", {"a": [{1}]}, _REFUSED),
    ("tuple", (1, "a", (2,)), [1, "a", [2]]),
    ("int-dict-key", {1: "a"}, _REFUSED),
    ("bool-dict-key", {"a": {True: 1}}, _REFUSED),
    ("bytes", b"ab", _REFUSED),
    ("bytes-nested", {"a": [b"x"]}, _REFUSED),
    ("object", object(), _REFUSED),
    ("nan", math.nan, None),
    ("inf-nested", {"x": [math.inf, -math.inf]}, {"x": [None, None]}),
    ("nested-dict", {"a": {"b": {"c": [1, {"d": None, "e": 1.5, "f": False}]}}},
     {"a": {"b": {"c": [1, {"d": None, "e": 1.5, "f": False}]}}}),
    ("dict-key-order-kept", {"zz": 1, "a": 2, "mm": {"y": 1, "x": 2}}, {"zz": 1, "a": 2, "mm": {"y": 1, "x": 2}}),
    ("uint64-max", 2**64 - 1, 2**64 - 1),
    ("int64-min", -(2**63), -(2**63)),
    ("large-int", 2**64, _REFUSED),
    ("large-negative-int", -(2**63) - 1, _REFUSED),
    ("large-int-nested", {"n": [10**30]}, _REFUSED),
    ("float-exact", {"f": 0.1, "g": 1e308, "h": -0.0, "i": 1.0}, {"f": 0.1, "g": 1e308, "h": -0.0, "i": 1.0}),
    ("lone-surrogate", "a\ud800b", _REFUSED),
    ("lone-surrogate-dict-key", {"\udc00": 1}, _REFUSED),
    ("astral-and-bmp", {"\U0001f680": "é\u2028"}, {"\U0001f680": "é\u2028"}),
    ("nul-in-string", {"a": "x\x00y"}, {"a": "x\x00y"}),
    ("nul-in-dict-key", {"a\x00": 1}, {"a\x00": 1}),
    ("none", None, None),
    ("dataclass", _Point(1, 2), {"x": 1, "y": 2}),
    ("datetime", datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC), "2024-01-02T03:04:05+00:00"),
    ("str-enum", {"c": _Colour.RED}, {"c": "red"}),
]
async def _value_case(store: Engine, op: str, name: str, value: Any, stored: Any) -> str | None:
    """Apply one row of VALUE_TABLE with ``op`` under ``t/<name>/``; None if the engine did
    what the row says, else what it did instead."""
    key, folder = f"t/{name}/k", f"t/{name}/"
    await store.put(key, "old")
    write: Callable[[], Awaitable[Any]] = {
        "put": lambda: store.put(key, value),
        "update": lambda: store.update(key, lambda old: value),
        "put_many": lambda: store.put_many([(folder + "a", 1), (key, value), (folder + "z", 2)]),
    }[op]
    try:
        returned = await write()
    except TypeError as exc:
        if stored is not _REFUSED:
            return f"refused with {exc!r}"
        if await store.get(key) != "old" or await store.list(folder) != ["k"]:
            return "refused, but the old value was changed or other keys written"
        return None
    except Exception as exc:  # noqa: BLE001 - reported as a row failure
        return f"raised {exc!r}"
    if stored is _REFUSED:
        return "accepted"
    if op == "update" and returned is not value:
        return f"update returned {returned!r}"
    if op == "update" and value is None:  # None from fn deletes (a put of None stores a JSON null)
        return None if await store.list(folder) == [] else "update to None did not delete"
    got = await store.get(key)
    if repr(got) != repr(stored):  # equal, same types, same dict key order
        return f"read back {got!r}"
    if isinstance(got, dict):
        got["mutated"] = True
        if repr(await store.get(key)) != repr(stored):
            return "get did not hand back a fresh copy"
    want = ["a", "k", "z"] if op == "put_many" else ["k"]
    return None if await store.list(folder) == want else f"listed {await store.list(folder)}"


@pytest.mark.parametrize("op", ["put", "update", "put_many"])
async def test_value_table(store: Engine, op: str) -> None:
    """Every engine accepts and refuses the same values (VALUE_TABLE), whichever write
    stores them, and reads back the same thing."""
    failures = {name: why for name, value, stored in VALUE_TABLE
                if (why := await _value_case(store, op, name, value, stored)) is not None}
    assert failures == {}


#: (id, key, exception) for keys no engine can hold.
KEY_TABLE: list[tuple[str, Any, type[Exception]]] = [
    ("empty", "", TypeError),
    ("none", None, TypeError),
    ("int", 5, TypeError),
    ("bytes", b"k", TypeError),
    ("nul", "a\x00b", ValueError),
    ("lone-surrogate", "a/\ud800", ValueError),
]


def _key_ops(key: Any) -> dict[str, Callable[[Any], Awaitable[Any]]]:
    return {
        "get": lambda s: s.get(key),
        "put": lambda s: s.put(key, 1),
        "put_many": lambda s: s.put_many([("fine", 1), (key, 1)]),
        "delete": lambda s: s.delete(key),
        "update": lambda s: s.update(key, lambda old: 1),
    }


def _prefix_ops(prefix: Any) -> dict[str, Callable[[Any], Awaitable[Any]]]:
    return {
        "list": lambda s: s.list(prefix),
        "list_page": lambda s: s.list_page(prefix),
        "list_page-after": lambda s: s.list_page("", prefix),
        "delete_prefix": lambda s: s.delete_prefix(prefix),
    }


async def _refusals(store: Engine, table: list[tuple[str, Any, type[Exception]]],
                    ops: Callable[[Any], dict[str, Callable[[Any], Awaitable[Any]]]]) -> dict[str, str]:
    """Run every operation of ``ops(arg)`` for each row; what did not raise the row's error."""
    failures: dict[str, str] = {}
    for name, arg, error in table:
        for op, call in ops(arg).items():
            try:
                await call(store)
                failures[f"{name}/{op}"] = "accepted"
            except error:
                pass
            except Exception as exc:  # noqa: BLE001 - reported as a row failure
                failures[f"{name}/{op}"] = f"raised {exc!r}"
    return failures


async def test_key_table(store: Engine) -> None:
    """Every engine refuses the same keys (KEY_TABLE) in every key operation, with the same
    exception, and writes nothing."""
    assert await _refusals(store, KEY_TABLE, _key_ops) == {}
    assert await store.list("") == []


#: (id, prefix, exception) for prefixes (and ``after`` names) no key can start with.
PREFIX_TABLE: list[tuple[str, Any, type[Exception]]] = [
    ("int", 5, TypeError),
    ("none", None, TypeError),
    ("nul", "a\x00", ValueError),
    ("lone-surrogate", "\udfff/", ValueError),
]


async def test_prefix_table(store: Engine) -> None:
    """``list``, ``list_page`` (prefix and ``after``) and ``delete_prefix`` refuse the same
    prefixes (PREFIX_TABLE) on every engine, with the same exception."""
    await store.put("a/b", 1)
    assert await _refusals(store, PREFIX_TABLE, _prefix_ops) == {}
    assert await store.get("a/b") == 1


async def test_api_stores_nul_alike_on_every_engine(store: Engine, aiohttp_client: AiohttpClient) -> None:
    """Regression: PostgreSQL (jsonb) refused a string holding NUL, so writing a role or
    creating a token with such a value gave a 500 there and worked on SQLite. Every engine
    now stores it (Vault does too)."""
    from server.app import create_app
    from server.http.listverb import make_test_server
    from server.settings import Settings, StorageSettings

    settings = Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id="root")
    client: Client = await aiohttp_client(make_test_server(create_app(settings, storage=store)))
    root = {"X-Vault-Token": "root"}
    assert (await client.post("/v1/sys/auth/jwt", json={"type": "jwt"}, headers=root)).status == 204
    role = {"role_type": "jwt", "user_claim": "sub", "bound_audiences": ["a\x00"], "bound_claims": {"x": "b\x00"}}
    assert (await client.post("/v1/auth/jwt/role/r", json=role, headers=root)).status == 204
    read = await (await client.get("/v1/auth/jwt/role/r", headers=root)).json()
    assert read["data"]["bound_audiences"] == ["a\x00"] and read["data"]["bound_claims"] == {"x": "b\x00"}
    created = await client.post("/v1/auth/token/create", json={"meta": {"k": "v\x00"}}, headers=root)
    assert created.status == 200
    token = (await created.json())["auth"]["client_token"]
    looked = await (await client.get("/v1/auth/token/lookup-self", headers={"X-Vault-Token": token})).json()
    assert looked["data"]["meta"] == {"k": "v\x00"}


DELETE_PREFIX_CASES = [
    ("auth/a/", 3, ["auth/a_b/x", "auth/ab/x", "other"], "folder"),
    ("auth/a_b/", 1, ["auth/a/1", "auth/a/2", "auth/a/3/4", "auth/ab/x", "other"],
     "underscore-literal"),
    ("auth/", 5, ["other"], "everything-under"),
    ("nothing/", 0, ["auth/a/1", "auth/a/2", "auth/a/3/4", "auth/a_b/x", "auth/ab/x",
                     "other"], "no-match"),
]


@pytest.mark.parametrize(("prefix", "count", "left"), [c[:3] for c in DELETE_PREFIX_CASES],
                         ids=[c[3] for c in DELETE_PREFIX_CASES])
async def test_delete_prefix(store: Engine, prefix: str, count: int, left: list[str]) -> None:
    for key in ("auth/a/1", "auth/a/2", "auth/a/3/4", "auth/a_b/x", "auth/ab/x", "other"):
        await store.put(key, key)
    assert await store.delete_prefix(prefix) == count
    remaining = [k for k in ("auth/a/1", "auth/a/2", "auth/a/3/4", "auth/a_b/x", "auth/ab/x",
                             "other") if await store.get(k) is not None]
    assert remaining == left


# -- list_page: one bounded page of list()'s children -------------------------------------

PAGE_ENGINES = [*ENGINES, "prefixed"]


@pytest.fixture(params=PAGE_ENGINES)
async def page_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    """Every engine, plus a mount's PrefixedStorage view (over an inner store holding
    decoy keys next to its prefix)."""
    kind = request.param
    cfg: dict[str, Any] = {"type": "memory" if kind == "prefixed" else kind}
    if kind == "sqlite":
        cfg["path"] = str(tmp_path / "db" / "authmount.db")
    elif kind == "postgres":
        cfg["dsn"] = request.getfixturevalue("postgres_dsn")
    s = await open_storage(cfg)
    if kind == "prefixed":
        for decoy in ("mnt", "mnt0", "mns/a", "mnt.x/b", "auth/a/b"):
            await s.put(decoy, 0)
        yield PrefixedStorage(s, "mnt/")
    else:
        yield s
    await s.close()


PAGE_KEYS = ("a/b", "a/b/x", "a/c/d/e", "b", "c_d/1", "cxd/9", "c%/2", "c%x/3")
ROOT = ["a/", "b", "c%/", "c%x/", "c_d/", "cxd/"]  # list("") of PAGE_KEYS
PAGE_CASES = [
    ("", "", 100, ROOT, "whole-folder"),
    ("", "", 1, ["a/"], "limit-1"),
    ("", "", 3, ["a/", "b", "c%/"], "limit-cuts"),
    ("", "a/", 2, ["b", "c%/"], "after-a-sub-folder"),
    ("", "a", 1, ["a/"], "after-a-leaf-name-before-its-folder"),
    ("", "a/zzz", 1, ["b"], "after-inside-a-sub-folder"),
    ("", "b", 1, ["c%/"], "after-at-a-key"),
    ("", "c", 2, ["c%/", "c%x/"], "after-between-keys"),
    ("", "c%/", 1, ["c%x/"], "after-percent-folder"),
    ("", "cxd/", 5, [], "after-the-last"),
    ("", "zzz", 5, [], "after-past-the-end"),
    ("a/", "", 10, ["b", "b/", "c/"], "leaf-and-folder-same-name"),
    ("a/", "b", 10, ["b/", "c/"], "after-leaf-of-same-name"),
    ("a/", "b/", 10, ["c/"], "after-folder-of-same-name"),
    ("a/c/", "", 10, ["d/"], "deep"),
    ("c_d/", "", 10, ["1"], "underscore-is-literal"),
    ("c%/", "", 10, ["2"], "percent-is-literal"),
    ("zzz/", "", 10, [], "missing-prefix"),
]


@pytest.mark.parametrize(("prefix", "after", "limit", "expected"), [c[:4] for c in PAGE_CASES],
                         ids=[c[4] for c in PAGE_CASES])
async def test_list_page(page_store: Engine, prefix: str, after: str, limit: int,
                         expected: list[str]) -> None:
    for key in PAGE_KEYS:
        await page_store.put(key, 1)
    assert await page_store.list_page(prefix, after, limit) == expected
    assert expected == [c for c in await page_store.list(prefix) if c > after][:limit]


async def test_list_page_of_an_empty_store(page_store: Engine) -> None:
    assert await page_store.list_page("") == []
    assert await page_store.list_page("a/", "x", 1) == []


async def test_list_page_defaults(page_store: Engine) -> None:
    """``after`` defaults to the start of the folder, ``limit`` to 1000."""
    await asyncio.gather(*(page_store.put(f"t/{i:04d}", i) for i in range(1001)))
    assert await page_store.list_page("t/") == [f"{i:04d}" for i in range(1000)]


PAGE_BAD_ARGS = [
    (None, "", 1, TypeError, "prefix must be a str", "prefix-none"),
    (b"a/", "", 1, TypeError, "prefix must be a str", "prefix-bytes"),
    ("", None, 1, TypeError, "after must be a str", "after-none"),
    ("", 5, 1, TypeError, "after must be a str", "after-int"),
    ("", "", "10", TypeError, "limit must be an int", "limit-str"),
    ("", "", 1.0, TypeError, "limit must be an int", "limit-float"),
    ("", "", True, TypeError, "limit must be an int", "limit-bool"),
    ("", "", 0, ValueError, "limit must be at least 1", "limit-zero"),
    ("", "", -3, ValueError, "limit must be at least 1", "limit-negative"),
]


@pytest.mark.parametrize(("prefix", "after", "limit", "error", "message"),
                         [c[:5] for c in PAGE_BAD_ARGS], ids=[c[5] for c in PAGE_BAD_ARGS])
async def test_list_page_rejects_bad_arguments(page_store: Engine, prefix: Any, after: Any, limit: Any,
                                               error: type, message: str) -> None:
    await page_store.put("a/b", 1)
    with pytest.raises(error, match=message):
        await page_store.list_page(prefix, after, limit)


@pytest.mark.parametrize("limit", [1, 3, 7], ids=["limit-1", "limit-3", "limit-7"])
async def test_list_page_walk_while_deleting(page_store: Engine, limit: int) -> None:
    """Paging by ``after`` = the last name seen neither skips nor repeats a key while the
    walker deletes what it has seen (as the sweeper does) and another writer deletes a
    key ahead of the walk and adds one behind it."""
    names = [f"{i:02d}" for i in range(40)]
    for name in names:
        await page_store.put("t/" + name, 1)
    await page_store.put("t/15/sub", 1)  # a sub-folder in the middle
    seen: list[str] = []
    gone_ahead: set[str] = set()
    after = ""
    for step in range(100):
        page = await page_store.list_page("t/", after, limit)
        seen += page
        for name in page:
            await page_store.delete("t/" + name)  # the sub-folder's key stays: harmless
        ahead = f"{int(page[-1].rstrip('/')) + 2:02d}" if page else ""
        if ahead in names:
            await page_store.delete("t/" + ahead)
            gone_ahead.add(ahead)
        await page_store.put(f"t/!{step}", 1)  # "!" sorts before every name seen
        if len(page) < limit:
            break
        after = page[-1]
    assert seen == sorted(set(seen))  # in order, no repeats
    assert seen == sorted(set(names) - gone_ahead | {"15/"})
    assert gone_ahead  # the walk really raced the other writer


async def test_list_page_matches_the_reference(page_store: Engine) -> None:
    """Random keys with folders and odd characters: every page equals ``list`` filtered."""
    rnd = random.Random(11)
    parts = ["a", "b", "a/", "/", "b/c", "0", ".", "é", "\U0001f680", "\U0010ffff", "x/y/", "%", "_"]
    keys = {"".join(rnd.choice(parts) for _ in range(rnd.randint(1, 4))) for _ in range(60)}
    for key in keys:
        await page_store.put(key, 1)
    for prefix in ["", "a", "a/", "b/", "/", "x/y/", "é", "\U0010ffff", "%"]:
        children = list_children(keys, prefix)
        assert await page_store.list(prefix) == children
        afters = ["", "0", "a/0", "\U0010ffff", *children]
        for after in afters:
            for limit in (1, 2, 5):
                want = [c for c in children if c > after][:limit]
                assert await page_store.list_page(prefix, after, limit) == want, (prefix, after, limit)


async def test_closed_store_refuses(store: Engine) -> None:
    await store.close()
    with pytest.raises(RuntimeError):
        await store.get("k")
    with pytest.raises(RuntimeError):
        await store.put("k", 1)


@pytest.mark.parametrize(
    "cfg",
    [{"type": "nosql"}, {"type": "postgres"}, {"type": "sqlite", "sqlite_synchronous": "OFF"},
     {"type": "postgres", "dsn": "postgresql://x/y", "pool_size": 0},
     {"type": "sqlite", "sqlite_cache_entries": -1},
     {"type": "sqlite", "sqlite_cache_entries": "many"}],
    ids=["unknown-type", "postgres-without-dsn", "sqlite-sync-off", "pool-size-zero",
         "cache-negative", "cache-not-int"],
)
async def test_open_storage_rejects_bad_settings(cfg: dict[str, Any], tmp_path: Path) -> None:
    cfg.setdefault("path", str(tmp_path / "x.db"))
    with pytest.raises(ValueError):
        await open_storage(cfg)


# -- memory engine specifics ----------------------------------------------------------------


async def test_memory_storage_of_workers_is_one_sqlite_database_in_their_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A worker of ``storage: memory`` (its supervisor set AUTHMOUNT_MEMORY_DIR) opens the
    shared database there, with synchronous=OFF (shared memory: no disk to wait for);
    without the variable memory storage is the process's own dict, and a user's
    ``sqlite_synchronous: OFF`` is still refused."""
    from server.storage import shared_memory
    from server.supervisor import WORKER_ENV

    assert isinstance(await open_storage({"type": "memory"}), InMemoryStorage)
    monkeypatch.setenv(shared_memory.MEMORY_DIR_ENV, str(tmp_path))
    monkeypatch.delenv(WORKER_ENV, raising=False)
    assert isinstance(await open_storage({"type": "memory"}), InMemoryStorage)  # not a worker: ignored
    monkeypatch.setenv(WORKER_ENV, "0")
    store = await open_storage({"type": "memory"})
    try:
        assert isinstance(store, SQLiteStorage) and store.synchronous == "OFF"
        assert store.path == str(tmp_path / "authmount.db")
        await store.put("k", {"v": 1})
    finally:
        await store.close()
    with pytest.raises(ValueError, match="sqlite_synchronous must be one of FULL, NORMAL, EXTRA"):
        await open_storage({"type": "sqlite", "path": str(tmp_path / "u.db"), "sqlite_synchronous": "OFF"})
    with pytest.raises(ValueError, match="sqlite_synchronous"):
        SQLiteStorage(str(tmp_path / "v.db"), "OFF")  # only memory storage may go without syncs


def test_memory_workers_directory_is_private_and_in_shared_memory(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    """/dev/shm when it is there (a tmpfs: nothing reaches a disk), else the temp directory;
    mode 0700 either way."""
    from server.storage import shared_memory

    made = Path(shared_memory.make_dir(str(tmp_path)))
    assert made.parent == tmp_path and made.name.startswith("authmount-memory-")
    assert made.stat().st_mode & 0o777 == 0o700
    monkeypatch.setattr(shared_memory, "SHM", str(tmp_path / "no-shm"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    fallback = Path(shared_memory.make_dir())
    assert fallback.parent == tmp_path
    monkeypatch.setattr(shared_memory, "SHM", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", "/nonexistent")
    assert Path(shared_memory.make_dir()).parent == tmp_path  # SHM itself when it exists


def test_stale_memory_directories_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    """A directory left by a SIGKILLed supervisor goes at the next start; one whose owner
    lock is held (a running server, in any PID namespace), a young one (a server starting),
    a symlink and other names stay."""
    import fcntl
    import time

    from server.storage import shared_memory
    from server.storage.sqlite_shared import owner_lock

    old = time.time() - 2 * shared_memory.STALE_AFTER_SECONDS

    def made(locked: bool, age: float = old) -> Path:
        path = Path(shared_memory.make_dir(str(tmp_path)))
        Path(shared_memory.db_path(str(path))).write_bytes(b"tokens")
        fd = owner_lock(shared_memory.db_path(str(path)))
        if not locked:
            os.close(fd)  # the server is gone: the kernel dropped its lock
        else:
            held.append(fd)
        os.utime(path, (age, age))
        return path

    held: list[int] = []
    stale, no_lock = made(locked=False), Path(shared_memory.make_dir(str(tmp_path)))
    os.utime(no_lock, (old, old))
    live, young = made(locked=True), made(locked=False, age=time.time())
    other = tmp_path / "something-else"
    other.mkdir()
    os.utime(other, (old, old))
    (tmp_path / (shared_memory.PREFIX + "link")).symlink_to(stale)
    try:
        removed = shared_memory.remove_stale(str(tmp_path))
        assert sorted(removed) == sorted([str(stale), str(no_lock)])
        assert not stale.exists() and not no_lock.exists()
        assert live.exists() and young.exists() and other.exists()
        fcntl.flock(held[0], fcntl.LOCK_EX | fcntl.LOCK_NB)  # still ours: nothing took it
    finally:
        for fd in held:
            os.close(fd)
    assert shared_memory.remove_stale(str(tmp_path / "missing")) == []


@pytest.mark.parametrize("slack", [0, 5, 4096], ids=["resort-always", "resort-often", "default"])
async def test_memory_list_page_under_churn(monkeypatch: pytest.MonkeyPatch, slack: int) -> None:
    """The memory engine's sorted key list stays exact while keys are created, re-created,
    updated, deleted and prefix-deleted between pages (merged in, skipped, or re-sorted)."""
    import plugin.storage

    monkeypatch.setattr(plugin.storage, "RESORT_SLACK", slack)
    store = InMemoryStorage()
    rnd = random.Random(5)
    ref: set[str] = set()
    names = [f"{a}{b}" for a in ("a/", "b/", "a/x/", "") for b in "0123456789"]
    for step in range(600):
        key, op = rnd.choice(names), rnd.random()
        if op < 0.4:
            await store.put(key, step)
            ref.add(key)
        elif op < 0.55:
            await store.update(key, lambda old: {"n": 1})
            ref.add(key)
        elif op < 0.65:
            await store.update(key, lambda old: None)
            ref.discard(key)
        elif op < 0.95:
            await store.delete(key)
            ref.discard(key)
        else:
            doomed = {k for k in ref if k.startswith("a/x/")}
            assert await store.delete_prefix("a/x/") == len(doomed)
            ref -= doomed
        prefix = rnd.choice(["", "a/", "b/", "a/x/"])
        children = list_children(ref, prefix)
        after = rnd.choice(["", *children])
        limit = rnd.choice([1, 3, 100])
        assert await store.list_page(prefix, after, limit) == [c for c in children if c > after][:limit]
    await store.close()


# -- SQLite specifics ---------------------------------------------------------------------


async def test_sqlite_persists_across_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "deep" / "dir" / "a.db")
    s = await open_storage({"type": "sqlite", "path": path})
    await s.put("a/b", {"v": "é"})
    await s.update("ctr", _incr)
    await s.put("gone", 1)
    await s.delete("gone")
    await s.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    s = await open_storage({"type": "sqlite", "path": path, "sqlite_synchronous": "normal"})
    assert await s.get("a/b") == {"v": "é"}
    assert await s.get("ctr") == {"n": 1}
    assert await s.get("gone") is None
    assert await s.list("") == ["a/", "ctr"]
    await s.close()


async def test_sqlite_single_owner(tmp_path: Path) -> None:
    path = str(tmp_path / "a.db")
    first = await SQLiteStorage.open(path)
    with pytest.raises(RuntimeError, match="in use"):
        await SQLiteStorage.open(path)
    await first.close()
    second = await SQLiteStorage.open(path)
    await second.close()


async def test_sqlite_group_commit_500_concurrent_puts(tmp_path: Path) -> None:
    path = str(tmp_path / "a.db")
    s = await SQLiteStorage.open(path)
    await asyncio.gather(*(s.put(f"tok/{i}", {"i": i}) for i in range(500)))
    assert s.commits < 500  # writes shared transactions
    await s.close()
    s = await SQLiteStorage.open(path)
    assert [await s.get(f"tok/{i}") for i in range(500)] == [{"i": i} for i in range(500)]
    assert len(await s.list("tok/")) == 500
    await s.close()


async def test_sqlite_failure_in_batch_fails_only_its_caller(tmp_path: Path) -> None:
    s = await SQLiteStorage.open(str(tmp_path / "a.db"))
    await s.put("k", 0)
    results = await asyncio.gather(
        s.put("a", 1),
        s.update("k", lambda old: old + 1),
        s.update("k", _boom),
        s.update("k", lambda old: {"bad": object()}),
        s.update("k", lambda old: old + 10),
        s.put("b", 2),
        return_exceptions=True,
    )
    assert [type(r).__name__ for r in results] == [
        "NoneType", "int", "ZeroDivisionError", "TypeError", "int", "NoneType"]
    assert results[4] == 11
    assert [await s.get(k) for k in ("a", "k", "b")] == [1, 11, 2]
    await s.close()


async def test_sqlite_same_batch_sequences(tmp_path: Path) -> None:
    """Puts, updates, deletes and delete_prefix of keys created in the same batch."""
    path = str(tmp_path / "a.db")
    s = await SQLiteStorage.open(path)
    await s.put("keep/old", 0)
    results = await asyncio.gather(
        s.put("p/a", 1),
        s.put("p/a", 2),
        s.update("p/a", lambda old: old * 10),
        s.put("p/b", 1),
        s.delete("p/b"),
        s.put("p/b", 3),
        s.put("q/c", 1),
        s.delete_prefix("q/"),
        s.put("q/c", 5),
        s.put("r/d", 1),
        s.delete_prefix("r/"),
        s.update("r/d", lambda old: [old]),
    )
    assert results == [None, None, 20, None, None, None, None, 1, None, None, 1, [None]]
    expected = {"keep/old": 0, "p/a": 20, "p/b": 3, "q/c": 5, "r/d": [None]}
    assert {k: await s.get(k) for k in expected} == expected
    await s.close()
    s = await SQLiteStorage.open(path)
    assert {k: await s.get(k) for k in expected} == expected
    assert await s.list("") == ["keep/", "p/", "q/", "r/"]
    await s.close()


@pytest.mark.parametrize("entries", [0, 2], ids=["no-cache", "tiny-cache"])
async def test_sqlite_value_cache_stays_exact(tmp_path: Path, entries: int) -> None:
    s = await open_storage({"type": "sqlite", "path": str(tmp_path / "a.db"),
                            "sqlite_cache_entries": entries})
    for i in range(5):
        await s.put(f"k/{i}", {"i": i})
    await s.update("k/0", lambda old: {"i": old["i"] - 1})
    await s.put("k/4", {"i": 40})
    await s.delete("k/3")
    assert isinstance(s, SQLiteStorage)
    assert len(s._cache) <= entries
    assert [await s.get(f"k/{i}") for i in range(5)] == [
        {"i": -1}, {"i": 1}, {"i": 2}, None, {"i": 40}]
    assert await s.delete_prefix("k/") == 4
    assert [await s.get(f"k/{i}") for i in range(5)] == [None] * 5
    await s.close()


@pytest.mark.parametrize(
    ("prefix", "pattern"),
    [("a/", "a/%"), ("a_b%", "a\\_b\\%%"), ("back\\slash", "back\\\\slash%")],
    ids=["plain", "wildcards", "backslash"],
)
def test_like_prefix_escapes(prefix: str, pattern: str) -> None:
    assert like_prefix(prefix) == pattern


# -- PostgreSQL specifics -----------------------------------------------------------------


async def _wait_for(seen: list[str], want: set[str]) -> None:
    # A hang guard, not a timing assertion: notifications normally arrive in milliseconds.
    async with asyncio.timeout(20):
        while not want <= set(seen):
            await asyncio.sleep(0.01)


async def test_postgres_invalidation_reaches_other_nodes(postgres_dsn: str) -> None:  # noqa: F811
    a = await open_storage({"type": "postgres", "dsn": postgres_dsn})
    b = await open_storage({"type": "postgres", "dsn": postgres_dsn, "pool_size": 2})
    seen_a: list[str] = []
    seen_b: list[str] = []
    a.set_invalidation_callback(seen_a.append)
    b.set_invalidation_callback(seen_b.append)
    try:
        await a.put("auth/x/config", {"v": 1})
        await a.update("auth/x/role/r", _incr)
        await a.put("sys/token/1", 1)
        await a.put("sys/token/2", 2)
        await a.delete_prefix("sys/token/")
        await a.delete("auth/x/config")
        await _wait_for(seen_b, {"auth/x/config", "auth/x/role/r", "sys/token/1", "sys/token/2"})
        assert await b.get("auth/x/role/r") == {"n": 1}
        await b.put("from-b", 1)
        await _wait_for(seen_a, {"from-b"})
        assert "from-b" not in seen_b  # a node is not told about its own writes
        assert not set(seen_a) & {"auth/x/config", "sys/token/1"}
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize(
    "write",
    ["put", "put_many", "update", "update_to_none", "delete", "delete_prefix"],
)
async def test_postgres_unannounced_prefixes_are_not_notified(postgres_dsn: str, write: str) -> None:  # noqa: F811
    """Writes under set_unannounced_prefixes (token rows: no node caches them) send no
    NOTIFY, by every kind of write; other keys, and similar-looking ones, still do."""
    a = await open_storage({"type": "postgres", "dsn": postgres_dsn})
    b = await open_storage({"type": "postgres", "dsn": postgres_dsn, "pool_size": 2})
    seen: list[str] = []
    b.set_invalidation_callback(seen.append)
    a.set_unannounced_prefixes(["sys/token/id/", "x_%/"])  # LIKE wildcards are literal
    quiet = ["sys/token/id/abc", "x_%/k"]
    loud = ["sys/token/mount-epoch/m", "sys/token/idx", "xy%/k"]
    try:
        for key in quiet + loud:
            await a.put(key, 1)
        seen.clear()
        for key in quiet + loud:
            if write == "put":
                await a.put(key, 2)
            elif write == "put_many":
                await asyncio.gather(*(a.put(k, 3) for k in (key, key + "-2")))
            elif write == "update":
                await a.update(key, lambda old: {"n": 1})
            elif write == "update_to_none":
                await a.update(key, lambda old: None)
            elif write == "delete":
                await a.delete(key)
            else:
                await a.delete_prefix(key)
        await b.put("marker", 1)  # b's own write: not announced to b; wait on a's loud ones
        await _wait_for(seen, set(loud))
        await asyncio.sleep(0.2)  # a late notification of a quiet key would land by now
        assert not set(seen) & set(quiet), seen
        assert await b.get("sys/token/id/abc") == (
            None if write in ("update_to_none", "delete", "delete_prefix") else
            {"n": 1} if write == "update" else 3 if write == "put_many" else 2
        )
    finally:
        await a.close()
        await b.close()


async def test_postgres_converts_a_jsonb_table(postgres_dsn: str) -> None:  # noqa: F811
    """A table of the older layout (``value jsonb``) is converted to ``json`` at open, its
    rows kept; afterwards a string holding NUL is stored as on every other engine."""
    import psycopg

    old_layout = 'CREATE TABLE authmount_kv (key text COLLATE "C" PRIMARY KEY, value jsonb NOT NULL)'
    rows = {"core/mounts": {"token/": {"type": "token"}}, "sys/token/id/abc": {"policies": ["a"], "ttl": 60}}
    async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as conn:
        await conn.execute(old_layout)
        for key, value in rows.items():
            await conn.execute("INSERT INTO authmount_kv VALUES (%s, %s::jsonb)", (key, orjson.dumps(value).decode()))

    async def value_type() -> str:
        async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as conn:
            cur = await conn.execute("SELECT pg_typeof(value)::text FROM authmount_kv LIMIT 1")
            row = await cur.fetchone()
            assert row is not None
            return str(row[0])

    assert await value_type() == "jsonb"
    for _ in range(2):  # the second open finds the new layout and leaves it alone
        s = await open_storage({"type": "postgres", "dsn": postgres_dsn})
        try:
            assert {key: await s.get(key) for key in rows} == rows
            await s.put("nul", {"b": "x\x00y", "a": 1})
            assert repr(await s.get("nul")) == repr({"b": "x\x00y", "a": 1})  # key order kept too
        finally:
            await s.close()
        assert await value_type() == "json"


async def test_postgres_updates_atomic_across_nodes(postgres_dsn: str) -> None:  # noqa: F811
    a = await open_storage({"type": "postgres", "dsn": postgres_dsn, "pool_size": 5})
    b = await open_storage({"type": "postgres", "dsn": postgres_dsn, "pool_size": 5})
    try:
        # The key starts missing, so the first updates race to create it.
        await asyncio.gather(*(n.update("ctr", _incr) for _ in range(40) for n in (a, b)))
        assert await a.get("ctr") == {"n": 80}
    finally:
        await a.close()
        await b.close()


async def test_postgres_open_fails_cleanly_on_bad_dsn(postgres_server: PostgresServer) -> None:  # noqa: F811
    import psycopg

    with pytest.raises(psycopg.OperationalError):
        await open_storage({"type": "postgres", "dsn": postgres_server.dsn("no_such_db")})


async def test_postgres_listener_reconnects(postgres_dsn: str) -> None:  # noqa: F811
    """A dropped LISTEN connection comes back; the callback hears "" (anything changed)."""
    import psycopg

    a = await open_storage({"type": "postgres", "dsn": postgres_dsn})
    b = await open_storage({"type": "postgres", "dsn": postgres_dsn})
    seen: list[str] = []
    b.set_invalidation_callback(seen.append)
    try:
        async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as admin:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE query LIKE 'LISTEN%%' AND pid <> pg_backend_pid()"
            )
        await _wait_for(seen, {""})
        await a.put("after/reconnect", 1)
        await _wait_for(seen, {"after/reconnect"})
    finally:
        await a.close()
        await b.close()


async def test_postgres_batched_puts_fail_only_the_culprit(postgres_dsn: str) -> None:  # noqa: F811
    """Concurrent puts share one statement; a write PostgreSQL rejects fails only its put."""
    import psycopg

    s = await open_storage({"type": "postgres", "dsn": postgres_dsn})
    too_long = "k/" + "x" * 8000  # its NOTIFY payload is over PostgreSQL's limit
    try:
        results = await asyncio.gather(
            *(s.put(f"k/{i}", {"i": i}) for i in range(50)),
            s.put(too_long, "refused"),
            s.put("k/7", "last wins"),
            return_exceptions=True,
        )
        assert results[:50] == [None] * 50 and results[51] is None
        assert isinstance(results[50], psycopg.Error)
        assert await s.get(too_long) is None
        assert await s.get("k/1") == {"i": 1}
        assert await s.get("k/7") == "last wins"
        assert len(await s.list("k/")) == 50
    finally:
        await s.close()


async def test_postgres_nodes_starting_together_on_an_empty_database(  # noqa: F811
    postgres_server: PostgresServer,
) -> None:
    """Regression: two nodes racing CREATE TABLE IF NOT EXISTS failed with a duplicate
    pg_type row (seen as an intermittent ``--workers 2`` start-up failure)."""
    for _ in range(5):
        dsn = postgres_server.create_database()
        try:
            stores = await asyncio.gather(*(open_storage({"type": "postgres", "dsn": dsn}) for _ in range(6)))
            await stores[0].put("k", {"v": 1})
            assert await stores[-1].get("k") == {"v": 1}
            for store in stores:
                await store.close()
        finally:
            postgres_server.drop_database(dsn)
