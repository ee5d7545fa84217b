"""The keyring: storage key sources, sealing, rotation and rewrapping."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import time
from pathlib import Path

import orjson
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from pytest_aiohttp import AiohttpClient

from plugin.framework import Auth
from plugin.sealing import NewerTermError, b64e, format_sealed, parse_sealed, seal_bytes
from plugin.storage import InMemoryStorage
from server.app import create_app
from server.appkeys import KEYRING, STORAGE
from server.http.listverb import make_test_server
from server.http.log import handled
from server.keyring import (
    ENV_KEY,
    KEYRING_KEY,
    PROCESS_SEALER,
    Keyring,
    PrefixSealer,
    SealError,
    StorageKeyError,
    is_sealed,
    key_fingerprint,
    load_storage_key,
    reseal,
    write_key_file,
)
from server.settings import Settings, StorageSettings
from server.tokens.keys import rotate_batch_keys
from server.tokens.store import TokenStore
from tests.server.httpkit import Client, app_of
from tests.server.tokenkit import JWT

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))


async def ring(storage: InMemoryStorage | None = None, key: bytes = KEY) -> Keyring:
    return await Keyring.open(storage or InMemoryStorage(), key)


async def test_seal_round_trip_binds_the_context() -> None:
    k = await ring()
    sealed = k.seal(b"client-secret", "auth/u1/config")
    assert is_sealed(sealed) and b"client-secret" not in sealed.encode() and sealed.startswith("am1.1.")
    assert k.unseal(sealed, "auth/u1/config") == b"client-secret"
    assert k.seal(b"x", "c") != k.seal(b"x", "c")  # a fresh salt and nonce each time
    with pytest.raises(SealError, match="does not open"):
        k.unseal(sealed, "auth/u2/config")  # moved to another place


@pytest.mark.parametrize("bad", ["", "plain", "am1.", "am1.1", "am1.x.AAAA", "am1.9.AAAA", "am1.1.!!!!",
                                 "am1.1.AAAA", "am1.99999999999.AAAA"])
async def test_malformed_sealed_values_are_refused(bad: str) -> None:
    k = await ring()
    with pytest.raises(SealError):
        k.unseal(bad, "c")


async def test_tampering_is_detected() -> None:
    k = await ring()
    sealed = k.seal(b"secret", "c")
    raw = bytearray(base64.urlsafe_b64decode(sealed[6:] + "=" * (-len(sealed[6:]) % 4)))
    raw[-1] ^= 1
    forged = "am1.1." + base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    with pytest.raises(SealError):
        k.unseal(forged, "c")


async def test_keyring_is_stored_sealed_and_shared() -> None:
    storage = InMemoryStorage()
    a = await ring(storage)
    stored = await storage.get(KEYRING_KEY)
    assert stored is not None
    assert stored["storage_key"] == key_fingerprint(KEY) and "terms" not in stored
    b = await ring(storage)  # a second node opens the same keyring
    assert b.unseal(a.seal(b"s", "c"), "c") == b"s"
    with pytest.raises(StorageKeyError, match="sealed with storage key"):
        await Keyring.open(storage, OTHER)


async def test_rotate_keeps_old_terms_readable_and_other_nodes_reload() -> None:
    storage = InMemoryStorage()
    a, b = await ring(storage), await ring(storage)
    old = a.seal(b"old", "c")
    assert await a.rotate(storage) == 2 and a.active == 2
    new = a.seal(b"new", "c")
    assert a.term_of(new) == 2 and a.unseal(old, "c") == b"old"
    with pytest.raises(NewerTermError, match="^sealed under term 2, newer than this keyring's 1$"):
        b.unseal(new, "c")
    await b.reload(storage)
    assert b.unseal(new, "c") == b"new" and b.active == 2


async def test_a_term_older_than_the_newest_and_unknown_is_no_newer_term() -> None:
    storage = InMemoryStorage()
    a = await ring(storage)
    await a.rotate(storage)
    forged = format_sealed(0, parse_sealed(a.seal(b"x", "c"))[1])
    with pytest.raises(SealError, match="^sealed under unknown term 0$") as raised:
        a.unseal(forged, "c")
    assert not isinstance(raised.value, NewerTermError)


async def test_a_reload_that_read_before_a_rotation_does_not_take_its_term_back() -> None:
    """Two rotations in a row elsewhere announce two reloads here; if the first one's read
    (one term) finishes after the second's (two terms), the keyring kept the older snapshot
    and values sealed under the newest term stopped opening on this node, until the next
    rotation. Reloads and rotations now only ever add terms."""
    storage = InMemoryStorage()
    a, b = await ring(storage), await ring(storage)
    stale = await storage.get(KEYRING_KEY)  # what b's first reload read
    await a.rotate(storage)
    await a.rotate(storage)
    newest = a.seal(b"new", "c")
    await b.reload(storage)  # the second reload, done first
    assert b.active == 3 and b.unseal(newest, "c") == b"new"
    fresh = await storage.get(KEYRING_KEY)
    await storage.put(KEYRING_KEY, stale)  # the first reload, finishing late, reads the stale value
    await b.reload(storage)
    assert b.active == 3 and b.unseal(newest, "c") == b"new"
    await storage.put(KEYRING_KEY, fresh)
    # b's own rotation, concurrent with a reload of what was there before it
    await b.rotate(storage)
    await storage.put(KEYRING_KEY, fresh)
    await b.reload(storage)
    assert b.active == 4 and b.unseal(b.seal(b"mine", "c"), "c") == b"mine"


async def test_rewrap_under_a_new_storage_key() -> None:
    storage = InMemoryStorage()
    a = await ring(storage)
    sealed = a.seal(b"s", "c")
    await a.rewrap(storage, OTHER)
    with pytest.raises(StorageKeyError):
        await Keyring.open(storage, KEY)
    assert (await Keyring.open(storage, OTHER)).unseal(sealed, "c") == b"s"


def test_key_file_created_0600_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "authmount.key"
    key, where = load_storage_key(key_file=str(path), env={}, create=True)
    assert where == str(path) and len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_storage_key(key_file=str(path), env={}, create=False) == (key, str(path))
    assert not list(path.parent.glob("*.tmp*"))


def test_env_wins_and_must_be_32_bytes(tmp_path: Path) -> None:
    env = {ENV_KEY: base64.b64encode(OTHER).decode()}
    assert load_storage_key(key_file=str(tmp_path / "k"), env=env, create=True) == (OTHER, "env")
    assert not (tmp_path / "k").exists()
    with pytest.raises(StorageKeyError, match="must be 32 bytes"):
        load_storage_key(key_file=None, env={ENV_KEY: "c2hvcnQ="}, create=False)


@pytest.mark.parametrize(("setup", "message"), [
    ("missing", "does not exist, but the storage holds secrets"),
    ("open-mode", "readable by others"),
    ("garbage", "must be 32 bytes"),
    ("none", "no storage key"),
])
def test_key_problems_are_named(tmp_path: Path, setup: str, message: str) -> None:
    path = tmp_path / "k"
    if setup == "open-mode":
        path.write_text(base64.b64encode(KEY).decode())
        os.chmod(path, 0o644)
    elif setup == "garbage":
        path.write_text("not base64!")
        os.chmod(path, 0o600)
    with pytest.raises(StorageKeyError, match=message):
        load_storage_key(key_file=None if setup == "none" else str(path), env={}, create=False)


# ---------------------------------------------------------------------------
# The storage layout, messages and key sources at their edges (issue 16; found by mutation
# testing, docs/mutation.md). Storage keys are written out: other nodes and versions read them.


def test_the_storage_key_fingerprint_is_a_documented_hash() -> None:
    """``sys/key-status`` shows it and the stored keyring names it: 16 hex digits of SHA-256
    over a label and the key (a new derivation would make every stored keyring refuse)."""
    expected = hashlib.sha256(b"authmount storage key\0" + KEY).hexdigest()[:16]
    assert key_fingerprint(KEY) == expected and len(expected) == 16


async def test_open_stores_the_keyring_and_fingerprint_key_where_documented() -> None:
    storage = InMemoryStorage()
    assert not await Keyring.exists(storage)
    k = await Keyring.open(storage, KEY, now=1_700_000_000)
    assert await Keyring.exists(storage)
    assert sorted(await storage.list("core/")) == ["fingerprint-key", "keyring"]
    stored = await storage.get("core/keyring")
    assert stored is not None and set(stored) == {"v", "storage_key", "sealed"} and stored["v"] == 1
    sealed_key = await storage.get("core/fingerprint-key")
    assert sealed_key is not None and set(sealed_key) == {"sealed"}
    # sealed like every secret, for "<key>#<field>" (the rule reseal relies on)
    assert len(k.unseal(sealed_key["sealed"], "core/fingerprint-key#sealed")) == 32


async def test_status_shows_the_active_term() -> None:
    storage = InMemoryStorage()
    k = await Keyring.open(storage, KEY, now=1_700_000_000)
    # encryptions: the seals this process made under the term (the first start sealed the
    # fingerprint key); a number, which the Vault CLI's key-status needs
    expected = {"term": 1, "install_time": "2023-11-14T22:13:20Z", "encryptions": 1, "terms": 1,
                "storage_key_fingerprint": key_fingerprint(KEY)}
    assert k.status() == expected
    k.seal(b"a", "c"), k.seal(b"b", "c")
    assert k.status() == {**expected, "encryptions": 3}
    assert await k.rotate(storage, now=1_700_086_400) == 2
    assert k.status() == {**expected, "term": 2, "install_time": "2023-11-15T22:13:20Z", "terms": 2, "encryptions": 0}


async def test_fingerprints_are_stable_across_nodes_and_restarts_and_bind_the_context() -> None:
    storage = InMemoryStorage()
    a = await ring(storage)
    b = await ring(storage)  # another node, or a restart
    value = a.fingerprint(b"hunter2", "auth/u1/config#oidc_client_secret")
    assert value.startswith("hmac-sha256:") and "hunter2" not in value
    assert b.fingerprint(b"hunter2", "auth/u1/config#oidc_client_secret") == value
    assert a.fingerprint(b"hunter2", "auth/u2/config#oidc_client_secret") != value
    assert a.fingerprint(b"hunter3", "auth/u1/config#oidc_client_secret") != value
    await a.rotate(storage)  # rotation keeps fingerprints
    assert a.fingerprint(b"hunter2", "auth/u1/config#oidc_client_secret") == value


def test_a_keyring_not_opened_from_storage_refuses_fingerprints() -> None:
    with pytest.raises(RuntimeError) as err:
        Keyring(KEY, {}, 1).fingerprint(b"x", "c")
    assert str(err.value) == "keyring has no fingerprint key (not opened with Keyring.open)"


async def test_a_fingerprint_key_that_does_not_open_stops_the_start() -> None:
    storage = InMemoryStorage()
    await ring(storage)
    await storage.put("core/fingerprint-key", {"sealed": "am1.9.AAAA"})
    with pytest.raises(StorageKeyError) as err:
        await ring(storage)
    assert str(err.value) == "core/fingerprint-key does not open with this keyring: sealed under term 9, newer than this keyring's 1"


def test_the_process_sealer_seals_and_opens() -> None:
    assert PROCESS_SEALER.unseal(PROCESS_SEALER.seal(b"s", "c"), "c") == b"s"


async def test_a_prefix_sealer_seals_for_the_full_storage_path() -> None:
    k = await ring()
    mount = PrefixSealer(k, "auth/u1/")
    sealed = mount.seal(b"secret", "config#oidc_client_secret")
    assert k.unseal(sealed, "auth/u1/config#oidc_client_secret") == b"secret"
    assert mount.unseal(k.seal(b"other", "auth/u1/role/r#x"), "role/r#x") == b"other"
    assert mount.fingerprint(b"s", "config#x") == k.fingerprint(b"s", "auth/u1/config#x")
    with pytest.raises(SealError):
        PrefixSealer(k, "auth/u2/").unseal(sealed, "config#oidc_client_secret")


async def test_unknown_terms_are_named() -> None:
    k = await ring()
    with pytest.raises(SealError) as err:
        k.unseal("am1.5." + "A" * 80, "c")
    assert str(err.value) == "sealed under term 5, newer than this keyring's 1"


async def test_rewrap_then_rotate_uses_the_new_storage_key() -> None:
    storage = InMemoryStorage()
    a = await ring(storage)
    await a.rewrap(storage, OTHER)
    assert a.status()["storage_key_fingerprint"] == key_fingerprint(OTHER)
    assert await a.rotate(storage) == 2
    assert (await Keyring.open(storage, OTHER)).active == 2


def _stored_keyring(body: dict[str, object], key: bytes = KEY) -> dict[str, object]:
    blob = seal_bytes(key, orjson.dumps(body), "core/keyring")
    return {"v": 1, "storage_key": key_fingerprint(key), "sealed": b64e(blob)}


@pytest.mark.parametrize(("stored", "message"), [
    ("not a keyring", "core/keyring in storage is not a keyring this version can read"),
    ({"v": 2, "sealed": "x", "storage_key": ""}, "core/keyring in storage is not a keyring this version can read"),
    ({"v": 1, "sealed": 5}, "core/keyring in storage is not a keyring this version can read"),
    ({"v": 1, "sealed": "x", "storage_key": key_fingerprint(OTHER)},
     f"the keyring in storage was sealed with storage key {key_fingerprint(OTHER)}, but this node has "
     f"{key_fingerprint(KEY)}: give every node the same key file (or AUTHMOUNT_STORAGE_KEY)"),
    ({"v": 1, "sealed": b64e(bytes(60)), "storage_key": key_fingerprint(KEY)},
     "the keyring in storage does not open with this storage key: "
     "sealed value does not open here (wrong key or context, or tampered)"),
    (_stored_keyring({"terms": {"1": {"key": b64e(bytes(32)), "created": 0}}, "active": 2}),
     "the keyring in storage has no active term"),
])
async def test_a_keyring_that_cannot_be_read_is_named(stored: object, message: str) -> None:
    storage = InMemoryStorage()
    await storage.put("core/keyring", stored)
    with pytest.raises(StorageKeyError) as err:
        await Keyring.open(storage, KEY)
    assert str(err.value) == message


async def test_a_keyring_written_in_the_documented_form_opens() -> None:
    storage = InMemoryStorage()
    term_key = bytes(range(32, 64))
    await storage.put("core/keyring", _stored_keyring(
        {"terms": {"1": {"key": b64e(bytes(32)), "created": 0}, "3": {"key": b64e(term_key), "created": 0}},
         "active": 3}))
    k = await Keyring.open(storage, KEY)
    assert k.active == 3 and k.status()["terms"] == 2
    assert k.seal(b"x", "c").startswith("am1.3.") and k.unseal(k.seal(b"x", "c"), "c") == b"x"


# ---------------------------------------------------------------------------
# Storage key sources


def test_the_storage_key_variable_is_named_as_documented(tmp_path: Path) -> None:
    env = {"AUTHMOUNT_STORAGE_KEY": base64.b64encode(OTHER).decode() + "\n"}
    assert ENV_KEY == "AUTHMOUNT_STORAGE_KEY"
    assert load_storage_key(key_file=None, env=env, create=False) == (OTHER, "env")


@pytest.mark.parametrize("text", [
    base64.b64encode(KEY).decode()[:10] + "!" + base64.b64encode(KEY).decode()[10:],  # a stray character
    base64.b64encode(KEY + b"x").decode(),  # 33 bytes
    base64.b64encode(KEY[:31]).decode(),  # 31 bytes
])
def test_a_malformed_storage_key_is_refused(text: str) -> None:
    with pytest.raises(StorageKeyError) as err:
        load_storage_key(key_file=None, env={ENV_KEY: text}, create=False)
    assert str(err.value) == "storage key from AUTHMOUNT_STORAGE_KEY must be 32 bytes in base64"


def test_key_file_messages(tmp_path: Path) -> None:
    path = tmp_path / "k"
    with pytest.raises(StorageKeyError) as err:
        load_storage_key(key_file=None, env={}, create=False)
    assert str(err.value) == (
        "no storage key: set AUTHMOUNT_STORAGE_KEY or storage.key_file (the key that seals this server's secrets)"
    )
    with pytest.raises(StorageKeyError) as err:
        load_storage_key(key_file=str(path), env={}, create=False)
    assert str(err.value) == (
        f"storage key file {path} does not exist, but the storage holds secrets sealed with a storage key: "
        "copy the key file from the node that created it (or set AUTHMOUNT_STORAGE_KEY)"
    )
    path.write_text(base64.b64encode(KEY).decode())
    os.chmod(path, 0o640)
    with pytest.raises(StorageKeyError) as err:
        load_storage_key(key_file=str(path), env={}, create=False)
    assert str(err.value) == f"storage key file {path} is readable by others (mode 640); chmod 600 it"
    os.chmod(path, 0o600)
    path.write_text("short\n")
    with pytest.raises(StorageKeyError) as err:
        load_storage_key(key_file=str(path), env={}, create=False)
    assert str(err.value) == f"storage key from {path} must be 32 bytes in base64"


@pytest.mark.parametrize("where", [".", "a/b/c"])
def test_key_file_created_in_existing_and_missing_folders(tmp_path: Path, where: str) -> None:
    path = tmp_path / where / "authmount.key"
    key, _ = load_storage_key(key_file=str(path), env={}, create=True)
    assert base64.b64decode(path.read_text()) == key
    assert sorted(p.name for p in path.parent.iterdir()) == ["authmount.key"]


def test_a_key_file_created_meanwhile_by_another_process_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two nodes starting together: the one that links its file second uses the first one's key."""
    path = tmp_path / "authmount.key"
    link = os.link

    def racing_link(src: str | Path, dst: str | Path) -> None:
        write_key_file(path, OTHER)  # the other process got there first
        link(src, dst)

    monkeypatch.setattr(os, "link", racing_link)
    assert load_storage_key(key_file=str(path), env={}, create=True) == (OTHER, str(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["authmount.key"]


# ---------------------------------------------------------------------------
# reseal: every sealed value below the prefixes, again under the active term


async def test_reseal_walks_every_prefix_and_counts_what_it_sealed_again() -> None:
    storage = InMemoryStorage()
    k = await ring(storage)
    old: dict[str, object] = {}

    def sealed(key: str, field: str, plain: bytes) -> str:
        value = k.seal(plain, f"{key}#{field}")
        old[f"{key}#{field}"] = plain
        return value

    rows: dict[str, object] = {
        "auth/u1/config": {"oidc_client_secret": sealed("auth/u1/config", "oidc_client_secret", b"a"), "name": "x"},
        "auth/u1/role/r": {"nested": {"keys": [sealed("auth/u1/role/r", "keys", b"b"),
                                               sealed("auth/u1/role/r", "keys", b"c")]}},
        "auth/u2/whole": sealed("auth/u2/whole", "", b"d"),
        # a mount path that sorts before any letter (the first page of a folder starts at "")
        "auth/1password/config": {"secret": sealed("auth/1password/config", "secret", b"i")},
        "sys/token/salt": {"sealed": sealed("sys/token/salt", "sealed", b"e")},
        "sys/token/batch_key": {"keys": [{"sealed": sealed("sys/token/batch_key", "sealed", b"f"), "retire_at": 0}]},
        "sys/token/other": {"sealed": k.seal(b"g", "sys/token/other#sealed")},  # not below a prefix
        "sys/policy/p": {"x": k.seal(b"h", "sys/policy/p#x")},
    }
    rows.update({f"auth/u3/role/r{i:04d}": {"s": sealed(f"auth/u3/role/r{i:04d}", "s", b"%d" % i)}
                 for i in range(1030)})  # more than one page of a folder
    for key, value in rows.items():
        await storage.put(key, value)
    keyring_before = await storage.get("core/keyring")
    await k.rotate(storage)
    await storage.put("auth/u1/plain", {"name": "am1 is not a prefix here"})
    # 6 rows with 7 values, the 1030 roles, and the fingerprint key (core/)
    assert await reseal(storage, k) == 7 + 1030 + 1
    for context, plain in old.items():
        key, _, field = context.partition("#")
        row = await storage.get(key)
        values = _sealed_in(row)
        assert values and all(k.term_of(v) == 2 for v in values), key
        assert any(k.unseal(v, context) == plain for v in values), key
    assert [k.term_of(v) for v in _sealed_in(await storage.get("sys/token/other"))] == [1]
    assert [k.term_of(v) for v in _sealed_in(await storage.get("sys/policy/p"))] == [1]
    assert (await storage.get("core/keyring")) != keyring_before  # rotated, but not resealed by a term:
    assert (await Keyring.open(storage, KEY)).active == 2  # still opens with the storage key
    assert await reseal(storage, k) == 0  # everything is under the active term now


def _sealed_in(value: object) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _sealed_in(v)]
    if isinstance(value, list):
        return [s for v in value for s in _sealed_in(v)]
    return [value] if isinstance(value, str) and is_sealed(value) else []


async def test_reseal_leaves_a_value_that_does_not_open_and_logs_it() -> None:
    storage = InMemoryStorage()
    k = await ring(storage)
    moved = k.seal(b"x", "auth/u1/elsewhere#secret")  # sealed for another place
    await storage.put("auth/u1/config", {"secret": moved, "ok": k.seal(b"y", "auth/u1/config#ok")})
    await k.rotate(storage)
    with structlog.testing.capture_logs() as logs:
        assert await reseal(storage, k, ("auth/",)) == 1
    assert logs == [{"event": "reseal_failed", "log_level": "error", "key": "auth/u1/config", "field": "secret"}]
    row = await storage.get("auth/u1/config")
    assert row is not None and row["secret"] == moved and k.term_of(row["ok"]) == 2


async def test_an_unwrap_of_a_response_sealed_under_a_term_this_node_has_not_read_yet(
    aiohttp_client: AiohttpClient,
) -> None:
    """Another node rotated the keyring and wrapped a response under the new term a moment
    ago, before its announcement reached this one. The unwrap here re-reads the keyring and
    goes on. It was a 500 ``internal error``, and the response was gone: the record was
    deleted before it was opened, and the wrapping token's one use spent."""
    settings = Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id="root")
    client: Client = await aiohttp_client(make_test_server(create_app(settings)))
    headers = {"X-Vault-Token": "root"}
    resp = await client.post("/v1/auth/token/create", json={"ttl": "1h"}, headers={**headers, "X-Vault-Wrap-TTL": "5m"})
    wrapping = (await resp.json())["wrap_info"]["token"]
    app = app_of(client)
    storage, here = app[STORAGE], app[KEYRING]
    elsewhere = await Keyring.open(storage, here._storage_key)  # another node, same storage key
    await elsewhere.rotate(storage)
    (key,) = [k for k in await storage.list("sys/wrapping/")]
    record = await storage.get("sys/wrapping/" + key)
    assert isinstance(record, dict)
    context = "sys/wrapping/" + key + "#response"
    record["response"] = elsewhere.seal(elsewhere.unseal(record["response"], context), context)  # as wrapped there
    await storage.put("sys/wrapping/" + key, record)
    assert here.active == 1  # in-memory storage announces nothing: as if the announcement were on its way
    resp = await client.post("/v1/sys/wrapping/unwrap", headers={"X-Vault-Token": wrapping})
    assert resp.status == 200, await resp.text()  # the keyring was re-read and the unwrap went on
    assert (await resp.json())["auth"]["client_token"].startswith("hvs.") and here.active == 2


async def test_any_request_that_meets_a_newer_term_rereads_the_keyring_and_answers_503(
    aiohttp_client: AiohttpClient,
) -> None:
    """What no path handles itself: the request edge re-reads the keyring and answers 503
    with Retry-After (Vault's Go client and CLI retry a 503), so the retry opens the value.
    (A batch token signed with a key another node made since its rotation meets this.)"""
    settings = Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id="root")
    client: Client = await aiohttp_client(make_test_server(create_app(settings)))
    app = app_of(client)
    storage, here = app[STORAGE], app[KEYRING]
    elsewhere = await Keyring.open(storage, here._storage_key)
    await elsewhere.rotate(storage)
    sealed = elsewhere.seal(b"made there", "c")

    async def opens(request: web.Request) -> web.StreamResponse:
        return web.Response(body=here.unseal(sealed, "c"))

    route = handled(opens)
    resp = await route(make_mocked_request("GET", "/v1/x", app=app))
    assert resp.status == 503 and resp.headers["Retry-After"] == "1" and here.active == 2
    resp = await route(make_mocked_request("GET", "/v1/x", app=app))
    assert resp.status == 200 and isinstance(resp, web.Response) and resp.body == b"made there"


async def _a_batch_token_works(tokens: TokenStore) -> None:
    block, _ = await tokens.issue(Auth(policies=["dev"], token_type="batch"), mount=JWT)
    assert (await tokens.authenticate(block["client_token"], "127.0.0.1")).policies == ["default", "dev"]


async def test_batch_keys_sealed_under_a_term_this_node_has_not_read_yet() -> None:
    """Another node rotated (keyring and batch key): this node's next batch-key read, or its
    own rotation racing that one, re-reads the keyring first instead of failing."""
    storage = InMemoryStorage()
    here, elsewhere = await ring(storage), await ring(storage)
    tokens = TokenStore(storage, sealer=here)
    await tokens.start(sweep=False)
    try:
        await elsewhere.rotate(storage)
        await rotate_batch_keys(storage, elsewhere, time.time(), 3600)
        await tokens.reload_batch_keys()
        assert here.active == 2
        await _a_batch_token_works(tokens)  # signed with the key read, which verifies it
        await elsewhere.rotate(storage)
        await rotate_batch_keys(storage, elsewhere, time.time(), 3600)
        here_before = here.active
        await tokens.rotate_batch_key()  # its keyring adopts term 3 only through the retry
        assert here_before == 2 and here.active == 3
        await _a_batch_token_works(tokens)
    finally:
        await tokens.close()
