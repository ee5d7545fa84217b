"""How a write's body is read (docs/api.md, "Request body"), as Vault reads it: JSON whatever
the content type, except a urlencoded form that does not start with ``{``; ``multipart/form-data``
is not a form to Vault (OpenBao 2.7.2: ``failed to decode JSON input``) and not to authmount."""

from __future__ import annotations

import gzip
import zlib

import pytest
from pytest_aiohttp import AiohttpClient

from server.app import create_app
from server.http.listverb import make_test_server
from server.settings import Settings, StorageSettings
from tests.server.httpkit import Client

ROOT = "root-token-for-bodies"
H = {"X-Vault-Token": ROOT}
POLICY = 'path "x" { capabilities = ["read"] }'


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    settings = Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT)
    return await aiohttp_client(make_test_server(create_app(settings)))


@pytest.mark.parametrize(
    ("body", "ctype", "status", "errors"),
    [
        ('{"policy": "' + POLICY.replace('"', '\\"') + '"}', "application/json", 204, None),
        ('{"policy": "' + POLICY.replace('"', '\\"') + '"}', "application/x-www-form-urlencoded", 204, None),
        ("policy=" + POLICY.replace(" ", "+").replace('"', "%22"), "application/x-www-form-urlencoded", 204, None),
        ("policy=x", "application/json", 400, ["error parsing JSON"]),
        ("policy=x", "text/plain", 400, ["error parsing JSON"]),
        ('--b\r\nContent-Disposition: form-data; name="policy"\r\n\r\nx\r\n--b--\r\n', "multipart/form-data; boundary=b",
         400, ["error parsing JSON"]),
    ],
    ids=["json", "json as a form type (curl -d)", "form", "form sent as json", "text", "multipart"],
)
async def test_write_bodies(client: Client, body: str, ctype: str, status: int, errors: list[str] | None) -> None:
    resp = await client.put("/v1/sys/policies/acl/p", data=body.encode(), headers={**H, "Content-Type": ctype})
    assert resp.status == status
    if errors is not None:
        assert (await resp.json())["errors"] == errors
    else:
        got = await client.get("/v1/sys/policies/acl/p", headers=H)
        assert (await got.json())["data"]["policy"] == POLICY


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(("path", "token"), [
    ("/v1/sys/auth/deep", True), ("/v1/auth/jwt/login", False), ("/v1/sys/policies/acl/deep", True),
])
@pytest.mark.parametrize("depth", [64, 65, 300, 2000])
async def test_a_body_nested_too_deeply_is_a_400(client: Client, path: str, token: bool, depth: int) -> None:
    """orjson reads up to 1,024 levels but writes only 255, so a body of 256 to 1,024 levels
    was read, then failed at storage or the audit log: a 500, from an anonymous login too
    with an audit device on. The body counts its own object as a level."""
    await client.post("/v1/sys/audit/file", headers=H, json={"type": "file", "options": {"file_path": "discard"}})
    body = '{"type": "jwt", "role": "r", "jwt": "a.b.c", "x": ' + _nested(depth - 1) + "}"
    resp = await client.post(path, data=body.encode(), headers={**(H if token else {}), "Content-Type": "application/json"})
    assert resp.status != 500
    if depth > 64:
        assert resp.status == 400
        assert (await resp.json())["errors"] == ["error parsing JSON: nested too deeply (more than 64 levels)"]


async def test_a_body_its_encoding_cannot_decode_is_a_400(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    """A body that says gzip and is not: aiohttp's error (a 500, and a traceback for every
    such request from anyone) is a 400 naming the encoding."""
    resp = await client.post("/v1/auth/jwt/login", data=b"xy", headers={"Content-Encoding": "gzip"})
    assert resp.status == 400
    assert (await resp.json())["errors"] == ["error reading the request body: it is not valid 'gzip'"]
    assert "Traceback" not in caplog.text
    assert (await client.get("/v1/sys/health")).status == 200  # the server serves on


_JSON = ('{"policy": "' + POLICY.replace('"', '\\"') + '"}').encode()


def _deflate(data: bytes, wbits: int) -> bytes:
    packer = zlib.compressobj(wbits=wbits)
    return packer.compress(data) + packer.flush()


@pytest.mark.parametrize(("encoding", "body", "status", "errors"), [
    ("gzip", gzip.compress(_JSON), 204, None),
    ("GZIP ", gzip.compress(_JSON), 204, None),
    ("x-gzip", gzip.compress(_JSON), 204, None),
    ("deflate", _deflate(_JSON, 15), 204, None),
    ("deflate", _deflate(_JSON, -15), 204, None),
    ("identity", _JSON, 204, None),
    ("no-such-encoding", _JSON, 204, None),  # as Vault, which reads every body as it comes
    ("gzip", gzip.compress(_JSON)[:-8], 400, ["error reading the request body: it is not valid 'gzip'"]),
    ("gzip", gzip.compress(_JSON)[:-1], 400, ["error reading the request body: it is not valid 'gzip'"]),
    ("gzip", gzip.compress(_JSON) + b"x", 400, ["error reading the request body: it is not valid 'gzip'"]),
    ("gzip", gzip.compress(_JSON) * 2, 400, ["error reading the request body: it is not valid 'gzip'"]),
    ("gzip", b"x", 400, ["error reading the request body: it is not valid 'gzip'"]),
    ("gzip", b"\x1f\x8b", 400, ["error reading the request body: it is not valid 'gzip'"]),
    ("deflate", b"x", 400, ["error reading the request body: it is not valid 'deflate'"]),
    ("deflate", _deflate(_JSON, 15)[:-2], 400, ["error reading the request body: it is not valid 'deflate'"]),
    ("br", b"x", 400, ["error reading the request body: Content-Encoding 'br' is not supported (gzip and "
                       "deflate are)"]),
], ids=["gzip", "gzip spelt otherwise", "x-gzip", "deflate", "raw deflate", "identity", "unknown", "gzip without its "
        "trailer", "gzip cut by a byte", "gzip and a byte more", "two gzip streams", "garbage", "gzip magic only",
        "deflate garbage", "deflate cut short", "brotli"])
async def test_encoded_bodies(client: Client, encoding: str, body: bytes, status: int,
                              errors: list[str] | None) -> None:
    """A body is decoded whole or refused: aiohttp's own decoding took a gzip stream cut short
    as the part it held, and a byte of garbage as an empty write (an empty token create made
    a token). The policy is written only from a whole stream."""
    resp = await client.put("/v1/sys/policies/acl/p", data=body,
                            headers={**H, "Content-Type": "application/json", "Content-Encoding": encoding})
    assert resp.status == status
    if errors is not None:
        assert (await resp.json())["errors"] == errors
        assert (await client.get("/v1/sys/policies/acl/p", headers=H)).status == 404
    assert (await client.get("/v1/sys/health")).status == 200  # the connection and the server serve on


async def test_a_decoded_body_is_bounded_like_a_plain_one(aiohttp_client: AiohttpClient) -> None:
    """A small gzip body that decodes to more than ``max_request_size`` is a 413, decoded no
    further than the limit."""
    settings = Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT,
                        max_request_size=65536)
    client: Client = await aiohttp_client(make_test_server(create_app(settings)))
    bomb = gzip.compress(b'{"policy": "' + b" " * 10_000_000 + b'"}')
    assert len(bomb) < 65536
    resp = await client.put("/v1/sys/policies/acl/p", data=bomb, headers={**H, "Content-Encoding": "gzip"})
    assert resp.status == 413


async def test_a_body_of_open_strings_and_brackets_is_refused_as_json(client: Client) -> None:
    """The depth check skips JSON strings; a string left open used to be scanned again from
    each of its quotes (40 KB of escaped quotes and 70 brackets held the event loop 5 s, from
    any caller). It is now read once, and the parser refuses the text."""
    from plugin.jsonlimits import _NESTING

    body = '"' + '\\"' * 20_000 + "[" * 70
    assert [m.group() for m in _NESTING.finditer(body)] == [body]  # one match: the open string
    resp = await client.post("/v1/auth/token/lookup-self", data=body.encode(), headers={"Content-Type": "application/json"})
    assert resp.status == 400 and (await resp.json())["errors"] == ["error parsing JSON"]
