"""The token store's sealed secrets (``server/tokens/keys.py``): the stored layout of the
batch signing keys, and which keys verify when, across rotations (issue 16; found by
mutation testing, docs/mutation.md). Storage keys and fields are written out: another node,
or the next version, reads them."""

from __future__ import annotations

from typing import Any

import pytest

from plugin.framework import Alias, Auth
from plugin.sealing import EphemeralSealer
from plugin.storage import InMemoryStorage
from server.tokens.keys import load_batch_keys, load_salt, rotate_batch_keys
from server.tokens.store import TokenStore
from tests.server.tokenkit import JWT, Clock

SEALER = EphemeralSealer()


def opened(stored: Any) -> list[tuple[bytes, float]]:
    """(key, retire_at) of each stored batch key, newest first."""
    assert set(stored) == {"keys"}
    out = []
    for k in stored["keys"]:
        assert set(k) == {"sealed", "retire_at"}
        out.append((SEALER.unseal(k["sealed"], "sys/token/batch_key#sealed"), k["retire_at"]))
    return out


async def test_first_start_stores_one_signing_key() -> None:
    storage = InMemoryStorage()
    keys = await load_batch_keys(storage, SEALER, 1000)
    assert opened(await storage.get("sys/token/batch_key")) == [(keys.signing, 0)]
    assert keys.verifying == (keys.signing,) and len(keys.signing) == 32
    assert await load_batch_keys(storage, SEALER, 5000) == keys  # the same key on every start


async def test_rotation_without_a_key_yet_creates_one() -> None:
    storage = InMemoryStorage()
    keys = await rotate_batch_keys(storage, SEALER, 1000, 100)
    assert opened(await storage.get("sys/token/batch_key")) == [(keys.signing, 0)]
    assert keys.verifying == (keys.signing,)


async def test_rotated_keys_verify_until_the_last_token_they_signed_expires() -> None:
    storage = InMemoryStorage()
    k1 = (await load_batch_keys(storage, SEALER, 1000)).signing
    after = await rotate_batch_keys(storage, SEALER, 2000, 100)
    k2 = after.signing
    assert k2 != k1 and after.verifying == (k2, k1)
    assert opened(await storage.get("sys/token/batch_key")) == [(k2, 0), (k1, 2100)]
    assert (await load_batch_keys(storage, SEALER, 2099)).verifying == (k2, k1)
    assert (await load_batch_keys(storage, SEALER, 2100)).verifying == (k2,)  # retired at 2100
    # a second rotation keeps the first key's retirement and sets the second one's
    k3 = (await rotate_batch_keys(storage, SEALER, 2050, 100)).signing
    assert opened(await storage.get("sys/token/batch_key")) == [(k3, 0), (k2, 2150), (k1, 2100)]
    # a rotation drops the keys retired by then, and no earlier
    await rotate_batch_keys(storage, SEALER, 2100, 100)
    assert [r for _, r in opened(await storage.get("sys/token/batch_key"))] == [0, 2200, 2150]
    assert (await load_batch_keys(storage, SEALER, 2149)).verifying[1:] == (k3, k2)


async def test_a_clear_key_of_an_older_version_is_sealed_in_place() -> None:
    storage = InMemoryStorage()
    await storage.put("sys/token/batch_key", {"value": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="})
    keys = await load_batch_keys(storage, SEALER, 1000)
    assert keys.signing == bytes(range(32))
    assert opened(await storage.get("sys/token/batch_key")) == [(bytes(range(32)), 0)]
    await storage.put("sys/token/salt", {"value": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="})
    assert await load_salt(storage, SEALER) == bytes(range(32))


@pytest.mark.parametrize("stored", [{"keys": []}, {"keys": "x"}, {"value": 5}])
async def test_a_corrupt_batch_key_row_stops_the_start(stored: Any) -> None:
    storage = InMemoryStorage()
    await storage.put("sys/token/batch_key", stored)
    with pytest.raises(RuntimeError) as err:
        await load_batch_keys(storage, SEALER, 1000)
    assert str(err.value) == "storage returned no token store secret at sys/token/batch_key"


async def test_batch_tokens_verify_across_a_rotation_on_every_node() -> None:
    """A rotation on one node: its batch tokens keep working there and on the other nodes,
    and the other nodes learn the new key from the first token signed with it."""
    clock = Clock(1_700_000_000.0)
    storage = InMemoryStorage()
    a = TokenStore(storage, clock=clock, sealer=SEALER, max_lease_ttl=600)
    b = TokenStore(storage, clock=clock, sealer=SEALER, max_lease_ttl=600)
    for store in (a, b):
        await store.start(sweep=False)
    auth = Auth(policies=["dev"], alias=Alias(name="alice"), token_type="batch", ttl=300)
    old, _ = await a.issue(auth, mount=JWT)
    await a.rotate_batch_key()
    new, _ = await a.issue(auth, mount=JWT)
    for store in (a, b):
        for block in (old, new):
            entry = await store.lookup(block["client_token"])
            assert entry is not None and entry.policies == ["default", "dev"]
