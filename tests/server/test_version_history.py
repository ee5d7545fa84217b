"""``sys/version-history``: each version that ran on the storage, once, with when it first
started, oldest first; what ``vault version-history`` reads (compared with OpenBao in
tests/e2e/test_openbao_differential.py, ``test_version_history_as_openbao``)."""

from __future__ import annotations

from typing import Any

import pytest

from plugin.storage import InMemoryStorage
from server.app import create_app
from server.http.listverb import make_test_server
from server.settings import Settings, StorageSettings
from server.sys import versions
from server.sys.status import REPORTED_VERSION as VERSION

ROOT = "root-token-for-tests"


async def test_each_version_is_recorded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """An upgrade adds the new version after the old one; a restart, or a downgrade, adds
    nothing and keeps when a version first ran (Vault's rule); nothing is written then."""
    storage = InMemoryStorage()
    clock = iter([1_700_000_000, 1_700_086_400, 1_700_172_800])
    monkeypatch.setattr("server.sys.versions.time.time", lambda: next(clock))
    await versions.record(storage, "0.1.0")
    await versions.record(storage, "0.2.0")
    writes: list[str] = []
    real_update = storage.update

    async def update(key: str, fn: Any) -> Any:
        writes.append(key)
        return await real_update(key, fn)

    monkeypatch.setattr(storage, "update", update)
    await versions.record(storage, "0.1.0")  # a downgrade
    await versions.record(storage, "0.2.0")  # a restart
    assert writes == []
    resp = await versions.history(storage)
    assert resp.data == {"keys": ["0.1.0", "0.2.0"], "key_info": {
        "0.1.0": {"timestamp_installed": "2023-11-14T22:13:20Z", "previous_version": None, "commit_date": ""},
        "0.2.0": {"timestamp_installed": "2023-11-15T22:13:20Z", "previous_version": "0.1.0", "commit_date": ""}}}


async def test_the_server_records_its_version(aiohttp_client: Any) -> None:
    """A start records the running version; LIST (or ``GET ?list=true``) with a token allowed
    ``list`` reads it; no token is a 403; a GET is not served (Vault: LIST only)."""
    settings = Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT)
    client = await aiohttp_client(make_test_server(create_app(settings)))
    head = {"X-Vault-Token": ROOT}
    resp = await client.request("LIST", "/v1/sys/version-history", headers=head)
    assert resp.status == 200 and (await resp.json())["data"]["keys"] == [VERSION]
    resp = await client.get("/v1/sys/version-history?list=true", headers=head)
    assert (await resp.json())["data"]["key_info"][VERSION]["previous_version"] is None
    assert (await client.request("LIST", "/v1/sys/version-history")).status == 403
    assert (await client.get("/v1/sys/version-history", headers=head)).status == 405
