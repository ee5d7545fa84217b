"""The keyring: storage key sources, sealing, rotation and rewrapping."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

import orjson
import pytest
import structlog

from plugin.sealing import b64e, seal_bytes
from plugin.storage import InMemoryStorage
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
    with pytest.raises(SealError, match="unknown term 2"):
        b.unseal(new, "c")
    await b.reload(storage)
    assert b.unseal(new, "c") == b"new" and b.active == 2


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
    expected = {"term": 1, "install_time": "2023-11-14T22:13:20Z", "encryptions": None, "terms": 1,
                "storage_key_fingerprint": key_fingerprint(KEY)}
    assert k.status() == expected
    assert await k.rotate(storage, now=1_700_086_400) == 2
    assert k.status() == {**expected, "term": 2, "install_time": "2023-11-15T22:13:20Z", "terms": 2}


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
    assert str(err.value) == "core/fingerprint-key does not open with this keyring: sealed under unknown term 9"


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
    assert str(err.value) == "sealed under unknown term 5"


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
