"""``sys/ha-status`` (``vault operator members``): the nodes serving one storage
(``server.nodes``). On shared storage each node writes a row at start and every
``ECHO_INTERVAL``; on SQLite and in memory nothing is written and the node lists itself."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

from plugin.storage import InMemoryStorage
from server.app import create_app
from server.http.listverb import make_test_server
from server.nodes import NODES_PREFIX, STALE_AFTER, Node
from server.settings import Settings, StorageSettings
from server.sys.status import REPORTED_VERSION

ROOT = "root-token-for-tests"
H = {"X-Vault-Token": ROOT}
ME = socket.gethostname()


async def test_a_single_node_lists_itself_and_writes_nothing(aiohttp_client: Any) -> None:
    """On storage no other node shares, the node lists itself (a wildcard listen address shown
    as the host name), each field as OpenBao names it, and writes no row: an idle embedded
    server writes nothing. No token, or one without ``read``, is a 403."""
    storage = InMemoryStorage()
    settings = Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT,
                        listen_address="0.0.0.0:8222")
    client = await aiohttp_client(make_test_server(create_app(settings, storage=storage)))
    body = await (await client.get("/v1/sys/ha-status", headers=H)).json()
    [node] = body["nodes"]
    assert body["data"]["nodes"] == [node]  # also at the top level, as Vault answers
    assert {k: v for k, v in node.items() if k != "last_echo"} == {
        "hostname": ME, "api_address": f"http://{ME}:8222", "cluster_address": "", "active_node": True,
        "version": REPORTED_VERSION}
    assert node["last_echo"].endswith("Z")
    assert await storage.list(NODES_PREFIX) == []
    assert (await client.get("/v1/sys/ha-status")).status == 403
    user = await (await client.post("/v1/auth/token/create", json={"policies": ["default"]}, headers=H)).json()
    assert (await client.get("/v1/sys/ha-status", headers={"X-Vault-Token": user["auth"]["client_token"]})).status == 403


async def test_step_down_changes_nothing_and_needs_sudo(aiohttp_client: Any) -> None:
    """``vault operator step-down``: every node is active, so there is nothing to give up (a
    Vault without HA answers 204 too); only a sudo token hears it."""
    settings = Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT)
    client = await aiohttp_client(make_test_server(create_app(settings)))
    before = await (await client.get("/v1/sys/leader")).json()
    assert (await client.put("/v1/sys/step-down", headers=H)).status == 204
    assert await (await client.get("/v1/sys/leader")).json() == before
    assert [n["active_node"] for n in (await (await client.get("/v1/sys/ha-status", headers=H)).json())["nodes"]] == \
        [True]
    user = await (await client.post("/v1/auth/token/create", json={"policies": ["default"]}, headers=H)).json()
    for headers in ({}, {"X-Vault-Token": user["auth"]["client_token"]}):
        resp = await client.put("/v1/sys/step-down", headers=headers)
        assert (resp.status, await resp.json()) == (403, {"errors": ["permission denied"]})


async def test_nodes_on_shared_storage(monkeypatch: pytest.MonkeyPatch) -> None:
    """On shared storage: the node writes its row at start and again every echo; live nodes
    are listed sorted, a node silent for ``STALE_AFTER`` is not; a start deletes the rows of
    nodes gone over an hour and rows that are no node's; a stop deletes the node's own row."""
    monkeypatch.setattr("server.nodes.ECHO_INTERVAL", 0.05)
    storage = InMemoryStorage()
    now = time.time()
    other = {"hostname": "aaa-node", "api_address": "https://aaa-node:8200", "version": "2.7.2+authmount.0.0.9",
             "started": now - 100, "last_echo": now - 1}
    await storage.put(NODES_PREFIX + "aaa-node-8200", other)
    await storage.put(NODES_PREFIX + "gone-8200", {**other, "hostname": "gone", "last_echo": now - STALE_AFTER - 1})
    await storage.put(NODES_PREFIX + "long-gone-8200", {**other, "hostname": "long-gone", "last_echo": now - 7200})
    await storage.put(NODES_PREFIX + "garbled", {"last_echo": "soon"})
    node = Node(storage, ("10.0.0.5", 8200), tls=True, version="v", shared=True)
    await node.start()
    assert sorted(await storage.list(NODES_PREFIX)) == sorted(["aaa-node-8200", "gone-8200", f"{ME}-8200"])
    async def echoed() -> float:
        row: dict[str, float] = await storage.get(node.key) or {}
        return row["last_echo"]

    first = await echoed()
    listed = await node.members()
    assert [(n["hostname"], n["api_address"]) for n in listed] == sorted(
        [("aaa-node", "https://aaa-node:8200"), (ME, "https://10.0.0.5:8200")])
    for _ in range(100):  # the echo writes the row again
        if await echoed() > first:
            break
        await asyncio.sleep(0.02)
    assert await echoed() > first
    await node.stop()
    assert sorted(await storage.list(NODES_PREFIX)) == ["aaa-node-8200", "gone-8200"]
