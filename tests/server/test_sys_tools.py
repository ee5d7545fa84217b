"""``sys/tools/hash`` and ``sys/tools/random`` (every answer compared with OpenBao 2.7.2 in
tests/e2e/test_openbao_differential.py, ``test_tools_as_openbao``)."""

from __future__ import annotations

import base64
import hashlib

import pytest
from pytest_aiohttp import AiohttpClient

from server.app import create_app
from server.http.listverb import make_test_server
from server.settings import Settings, StorageSettings
from server.sys.tools import MAX_RANDOM_BYTES, B64Error, go_b64decode
from tests.server.httpkit import Client

ROOT = "root-token-for-tools"
H = {"X-Vault-Token": ROOT}


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    settings = Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT)
    return await aiohttp_client(make_test_server(create_app(settings)))


@pytest.mark.parametrize(("text", "decoded"), [
    ("", b""), ("YQ==", b"a"), ("YWI=", b"ab"), ("YWJj", b"abc"), ("YW\nJj\r\n", b"abc"), ("ab\r\n=\n=", b"i"),
])
def test_base64_as_go_reads_it(text: str, decoded: bytes) -> None:
    assert go_b64decode(text) == decoded


@pytest.mark.parametrize(("text", "offset"), [
    ("aGVsbG8", 4), ("a$b", 1), ("ab=c", 2), ("YQ==\nYQ==", 5), ("a===", 1), ("ab===", 4), ("abc=d", 4),
    ("=abc", 0), ("ab=", 3), ("a", 0), ("\u00e9", 0),
])
def test_base64_refusals_name_gos_offset(text: str, offset: int) -> None:
    with pytest.raises(B64Error, match=f"^illegal base64 data at input byte {offset}$"):
        go_b64decode(text)


async def test_hash_and_random(client: Client) -> None:
    resp = await client.post("/v1/sys/tools/hash/sha2-512", headers=H,
                             json={"input": base64.b64encode(b"hello").decode(), "format": "base64"})
    assert (await resp.json())["data"]["sum"] == base64.b64encode(hashlib.sha512(b"hello").digest()).decode()
    resp = await client.post("/v1/sys/tools/random/seal/7", headers=H, json={"format": "hex", "source": "all"})
    out = await resp.json()
    assert len(bytes.fromhex(out["data"]["random_bytes"])) == 7
    assert out["warnings"] == [
        "no seal/entropy augmentation available, using platform entropy source",
        "Endpoint replaced the value of these parameters with the values captured from the endpoint's path: [source]"]
    first = await (await client.post("/v1/sys/tools/random", headers=H, json={})).json()
    second = await (await client.post("/v1/sys/tools/random", headers=H, json={})).json()
    assert len(base64.b64decode(first["data"]["random_bytes"])) == 32
    assert first["data"]["random_bytes"] != second["data"]["random_bytes"]
    resp = await client.post(f"/v1/sys/tools/random/{MAX_RANDOM_BYTES + 1}", headers=H, json={})
    assert resp.status == 400 and (await resp.json())["errors"] == [f"'bytes' should be less than {MAX_RANDOM_BYTES}"]
