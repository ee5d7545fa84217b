"""Automatic rotation of the data key (``sys/rotate/config``, Vault's ``sys/rotate/keyring/config``):
Vault's fields, defaults and refusals; a rotation when the active term is ``interval`` old,
made once however many nodes check; and the server's task that checks."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from plugin.storage import InMemoryStorage
from server.app import create_app
from server.appkeys import KEYRING, STORAGE
from server.http.listverb import make_test_server
from server.keyring import ENV_KEY, ROTATE_CONFIG_KEY, Keyring, RotationConfig, is_sealed
from server.settings import Settings, StorageSettings
from server.sys import keys
from server.tokens.store import TokenStore
from tests.server.httpkit import Client, answer, app_of, dev_client

ROOT = "root-token-for-rotation-tests"
H = {"X-Vault-Token": ROOT}
KEY = bytes(range(32))
DAY = 86400
DEFAULTS = {"enabled": True, "interval": 0, "max_operations": 3865470566}


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    return await dev_client(aiohttp_client, ROOT)


async def call(client: Client, method: str, path: str, body: Any = None, token: str = ROOT) -> tuple[int, Any]:
    return await answer(client, method, path, body, token=token)


async def test_the_settings_read_as_vaults_defaults_under_both_names(client: Client) -> None:
    for path in ("sys/rotate/config", "sys/rotate/keyring/config"):
        status, out = await call(client, "GET", path)
        assert status == 200 and out["data"] == DEFAULTS


async def test_a_write_changes_what_it_names_and_reads_back_as_vault_writes_it(client: Client) -> None:
    assert (await call(client, "POST", "sys/rotate/config", {"interval": "25h", "enabled": False}))[0] == 204
    assert (await call(client, "GET", "sys/rotate/config"))[1]["data"] == \
        {"enabled": False, "interval": "25h0m0s", "max_operations": 3865470566}
    # the other name, seconds, and one field: the others stay
    assert (await call(client, "PUT", "sys/rotate/keyring/config", {"max_operations": 2000000}))[0] == 204
    assert (await call(client, "GET", "sys/rotate/keyring/config"))[1]["data"] == \
        {"enabled": False, "interval": "25h0m0s", "max_operations": 2000000}
    assert (await call(client, "POST", "sys/rotate/config", {"interval": 0, "enabled": True}))[0] == 204
    assert (await call(client, "GET", "sys/rotate/config"))[1]["data"] == {**DEFAULTS, "max_operations": 2000000}
    # where they are stored: a key of the storage layout an upgrade keeps
    assert await app_of(client)[STORAGE].get("core/rotate-config") == {**DEFAULTS, "max_operations": 2000000}


@pytest.mark.parametrize(("body", "error"), [
    ({"interval": "1h"}, "interval must be greater or equal to 24h0m0s"),
    ({"interval": 86399}, "interval must be greater or equal to 24h0m0s"),
    ({"interval": "1h", "max_operations": 5}, "interval must be greater or equal to 24h0m0s"),  # Vault's order
    ({"max_operations": 5}, "max_operations must be in the range [1000000,3865470566]"),
    ({"max_operations": 3865470567}, "max_operations must be in the range [1000000,3865470566]"),
    ({"interval": "bogus"}, 'Field validation failed: error converting input bogus for field "interval": '
                            'time: invalid duration "bogus"'),
    ({"interval": -5}, "Field validation failed: error converting input -5 for field \"interval\": "
                       "cannot provide negative value '-5'"),
])
async def test_vaults_refusals_leave_the_settings_as_they_were(client: Client, body: dict[str, Any],
                                                              error: str) -> None:
    assert (await call(client, "POST", "sys/rotate/config", {"interval": "48h"}))[0] == 204
    status, out = await call(client, "POST", "sys/rotate/config", body)
    assert (status, out) == (400, {"errors": [error]})
    assert (await call(client, "GET", "sys/rotate/config"))[1]["data"] == {**DEFAULTS, "interval": "48h0m0s"}


async def test_the_settings_need_a_policy_and_rotate_keyring_needs_sudo(client: Client) -> None:
    policy = 'path "sys/rotate/*" { capabilities = ["read", "update"] } path "sys/key-status" { capabilities = ["read"] }'
    assert (await call(client, "PUT", "sys/policies/acl/rotation", {"policy": policy}))[0] == 204
    status, out = await call(client, "POST", "auth/token/create", {"policies": ["rotation"]})
    assert status == 200
    token = out["auth"]["client_token"]
    assert (await call(client, "GET", "sys/rotate/config", token=token))[0] == 200
    assert (await call(client, "POST", "sys/rotate/config", {"interval": "24h"}, token=token))[0] == 204
    assert (await call(client, "POST", "sys/rotate/keyring", token=token)) == (403, {"errors": ["permission denied"]})
    assert (await call(client, "GET", "sys/key-status", token=token)) == (403, {"errors": ["permission denied"]})
    status, out = await call(client, "POST", "auth/token/create", {"policies": ["default"]})
    other = out["auth"]["client_token"]
    assert (await call(client, "GET", "sys/rotate/config", token=other)) == (403, {"errors": ["permission denied"]})


async def test_rotate_keyring_is_rotate(client: Client) -> None:
    assert (await call(client, "POST", "sys/rotate/keyring"))[0] == 204
    status = (await call(client, "GET", "sys/key-status"))[1]
    assert status["data"]["term"] == status["term"] == 2  # also at the top level, as Vault answers it
    assert (await call(client, "POST", "sys/rotate"))[0] == 204
    assert (await call(client, "GET", "sys/key-status"))[1]["data"]["term"] == 3


# ---------------------------------------------------------------------------
# The rotation itself


async def _node(storage: InMemoryStorage, now: float = 1_700_000_000) -> tuple[Keyring, TokenStore]:
    ring = await Keyring.open(storage, KEY, now=now)
    tokens = TokenStore(storage, default_lease_ttl=3600, max_lease_ttl=86400, sealer=ring)
    await tokens.start()
    return ring, tokens


async def test_a_due_rotation_happens_once_however_many_nodes_ask() -> None:
    storage = InMemoryStorage()
    (a, ta), (b, tb) = await _node(storage, now=time.time() - 2 * DAY), await _node(storage)
    secret = await storage.get("sys/token/salt")
    assert secret is not None
    got = await asyncio.gather(keys.rotate_keys(storage, a, ta, due=DAY), keys.rotate_keys(storage, b, tb, due=DAY))
    assert sorted(got, key=str) == [2, None]  # one node rotated; the other found it done
    assert a.active == b.active == 2  # the one that did not rotate re-read the keyring
    resealed = await storage.get("sys/token/salt")  # every stored secret sealed again under term 2
    assert resealed is not None
    assert secret["sealed"].startswith("am1.1.") and resealed["sealed"].startswith("am1.2.")
    assert is_sealed(resealed["sealed"]) and a.unseal(resealed["sealed"], "sys/token/salt#sealed") == \
        a.unseal(secret["sealed"], "sys/token/salt#sealed")
    # not due again until the new term is a day old
    assert await keys.rotate_keys(storage, a, ta, due=DAY) is None and a.active == 2


async def test_a_term_exactly_the_interval_old_is_due() -> None:
    created = time.time() - 10 * DAY
    ring, _ = await _node(InMemoryStorage(), now=created)
    assert ring.due(DAY, created + DAY) and not ring.due(DAY, created + DAY - 1)


async def test_a_term_younger_than_the_interval_is_kept() -> None:
    storage = InMemoryStorage()
    ring, tokens = await _node(storage, now=time.time() - DAY + 60)
    before = await storage.get("core/keyring")
    assert await keys.rotate_keys(storage, ring, tokens, due=DAY) is None
    assert ring.active == 1 and await storage.get("core/keyring") == before


@pytest.mark.parametrize(("stored", "due"), [
    (None, None),  # Vault's defaults: no interval
    ({"enabled": True, "max_operations": 1000000, "interval": 0}, None),
    ({"enabled": True, "max_operations": 1000000, "interval": DAY}, DAY),
    ({"enabled": False, "max_operations": 1000000, "interval": DAY}, None),
])
def test_the_settings_ask_for_a_rotation_only_enabled_and_with_an_interval(stored: Any, due: int | None) -> None:
    assert RotationConfig.from_stored(stored).due() == due


async def test_the_server_rotates_once_the_interval_has_passed(aiohttp_client: AiohttpClient,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's own task: a keyring whose term is two days old, an interval of one day."""
    monkeypatch.setattr(keys, "CHECK_PERIOD", 0.02)
    monkeypatch.setenv(ENV_KEY, base64.b64encode(KEY).decode())
    storage = InMemoryStorage()
    await Keyring.open(storage, KEY, now=time.time() - 2 * DAY)
    await storage.put(ROTATE_CONFIG_KEY, {"enabled": False, "max_operations": 1000000, "interval": DAY})
    settings = Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT)
    client: Client = await aiohttp_client(make_test_server(create_app(settings, storage=storage)))
    app = app_of(client)
    await asyncio.sleep(0.2)
    assert app[KEYRING].active == 1  # off: nothing happens
    assert (await call(client, "POST", "sys/rotate/config", {"enabled": True}))[0] == 204
    for _ in range(100):
        if app[KEYRING].active == 2:
            break
        await asyncio.sleep(0.02)
    assert (await call(client, "GET", "sys/key-status"))[1]["data"]["term"] == 2
    batch = await app[STORAGE].get("sys/token/batch_key")  # batch tokens got a new signing key too,
    assert batch is not None and len(batch["keys"]) == 2 and "retire_at" in batch["keys"][0]  # the old one retiring,
    assert {k["sealed"][:6] for k in batch["keys"]} == {"am1.2."}  # both sealed again under the new term
    written: list[str] = []
    update = storage.update

    async def counted(key: str, fn: Any) -> Any:
        written.append(key)
        return await update(key, fn)

    storage.update = counted  # type: ignore[method-assign]
    await asyncio.sleep(0.2)
    assert app[KEYRING].active == 2  # the new term is young: no second rotation,
    assert "core/keyring" not in written  # nor a storage update that finds it not due (every check)


async def test_the_settings_file_declares_them(aiohttp_client: AiohttpClient) -> None:
    settings = Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT,
                        rotate_config={"interval": "48h", "enabled": False})
    client: Client = await aiohttp_client(make_test_server(create_app(settings)))
    assert (await call(client, "GET", "sys/rotate/config"))[1]["data"] == \
        {**DEFAULTS, "interval": "48h0m0s", "enabled": False}
