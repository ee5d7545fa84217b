"""``sys/ha-status`` (``vault operator members``): the nodes serving one storage, from the rows
each node writes at start and every ``ECHO_INTERVAL`` (``server.nodes``)."""

from __future__ import annotations

import socket
import time
from typing import Any

from plugin.storage import InMemoryStorage
from server.app import create_app
from server.http.listverb import make_test_server
from server.nodes import NODES_PREFIX, STALE_AFTER
from server.settings import Settings, StorageSettings
from server.sys.status import REPORTED_VERSION

ROOT = "root-token-for-tests"
H = {"X-Vault-Token": ROOT}


def _settings() -> Settings:
    return Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT,
                    listen_address="0.0.0.0:8222")


async def test_the_nodes_of_one_storage(aiohttp_client: Any) -> None:
    """This node (a wildcard listen address shown as the host name) and another live node are
    listed, sorted, each active with its version; a node whose row went stale is not; a row
    of a node gone over an hour (or no row of a node) is deleted at the next start; the node deletes its own row
    when it stops. No token, or one without ``read``, is a 403."""
    storage = InMemoryStorage()
    now = time.time()
    other = {"hostname": "aaa-node", "api_address": "https://aaa-node:8200", "version": "2.7.2+authmount.0.0.9",
             "started": now - 100, "last_echo": now - 1}
    await storage.put(NODES_PREFIX + "aaa-node-8200", other)
    await storage.put(NODES_PREFIX + "gone-8200", {**other, "hostname": "gone", "last_echo": now - STALE_AFTER - 1})
    await storage.put(NODES_PREFIX + "long-gone-8200", {**other, "hostname": "long-gone", "last_echo": now - 7200})
    await storage.put(NODES_PREFIX + "garbled", {"last_echo": "soon"})  # no row of a node: deleted too
    client = await aiohttp_client(make_test_server(create_app(_settings(), storage=storage)))
    resp = await client.get("/v1/sys/ha-status", headers=H)
    assert resp.status == 200
    body = await resp.json()
    me = socket.gethostname()
    assert [n["hostname"] for n in body["nodes"]] == sorted(["aaa-node", me])
    assert body["data"]["nodes"] == body["nodes"]  # also at the top level, as Vault answers
    mine = next(n for n in body["nodes"] if n["hostname"] == me)
    assert mine["api_address"] == f"http://{me}:8222" and mine["version"] == REPORTED_VERSION
    assert mine["active_node"] is True and mine["cluster_address"] == "" and mine["last_echo"].endswith("Z")
    assert sorted(await storage.list(NODES_PREFIX)) == sorted(["aaa-node-8200", "gone-8200", f"{me}-8222"])
    assert (await client.get("/v1/sys/ha-status")).status == 403
    user = (await (await client.post("/v1/auth/token/create", json={"policies": ["default"]}, headers=H)).json())
    assert (await client.get("/v1/sys/ha-status", headers={"X-Vault-Token": user["auth"]["client_token"]})).status == 403
    await client.close()
    assert sorted(await storage.list(NODES_PREFIX)) == ["aaa-node-8200", "gone-8200"]
