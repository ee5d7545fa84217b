"""The keyring: storage key sources, sealing, rotation and rewrapping."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from plugin.storage import InMemoryStorage
from server.keyring import (
    ENV_KEY,
    KEYRING_KEY,
    Keyring,
    SealError,
    StorageKeyError,
    is_sealed,
    key_fingerprint,
    load_storage_key,
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
