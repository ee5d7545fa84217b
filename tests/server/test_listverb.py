"""The LIST verb on aiohttp's C parser: the request framer, raw sockets, keep-alive, pipelining."""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from server.app import create_app
from server.http.listverb import MARKER_HEADER, MARKER_VALUE, RequestFramer, make_test_server
from server.settings import Settings, StorageSettings
from tests.server.httpkit import Client

ROOT = "root-for-list-tests"


# -- the framer alone ----------------------------------------------------------------------
def feed_all(chunks: list[bytes]) -> bytes:
    framer = RequestFramer()
    return b"".join(framer.feed(c) for c in chunks)


LIST_REQ = b"LIST /v1/auth/jwt/role HTTP/1.1\r\nHost: x\r\n\r\n"
POST_REQ = b"POST /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nLIST /abcde"
CHUNKED_REQ = (b"POST /v1/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nLIST \r\n6;ext=1\r\nLIST /\r\n0\r\nTrailer: 1\r\n\r\n")
GET_REQ = b"GET /v1/sys/health HTTP/1.1\r\nHost: x\r\n\r\n"
MARKED = b"GET /v1/auth/jwt/role HTTP/1.1\r\n" + f"{MARKER_HEADER}: {MARKER_VALUE}\r\n".encode() + b"Host: x\r\n\r\n"


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (LIST_REQ, MARKED),
        (GET_REQ, GET_REQ),
        (POST_REQ + LIST_REQ, POST_REQ + MARKED),
        (CHUNKED_REQ + LIST_REQ, CHUNKED_REQ + MARKED),
        (GET_REQ + LIST_REQ + GET_REQ, GET_REQ + MARKED + GET_REQ),
        (POST_REQ + b"\r\n" + LIST_REQ, POST_REQ + MARKED),
    ],
    ids=["list", "get untouched", "body bytes LIST are not a request", "chunked body then LIST", "pipelined",
         "stray CRLF after a body"],
)
def test_framer_rewrites_only_request_lines(stream: bytes, expected: bytes) -> None:
    assert feed_all([stream]) == expected
    # Any split of the stream into two TCP reads gives the same bytes.
    for cut in range(1, len(stream)):
        assert feed_all([stream[:cut], stream[cut:]]) == expected, cut


def test_framer_cuts_a_pipeline_at_each_request() -> None:
    """``cuts`` are where each request after the first begins in ``feed``'s output, so the
    parser is handed one request at a time."""
    framer = RequestFramer()
    out = framer.feed(POST_REQ + CHUNKED_REQ + LIST_REQ + GET_REQ[:10])
    assert out == POST_REQ + CHUNKED_REQ + MARKED
    assert framer.cuts == [len(POST_REQ), len(POST_REQ) + len(CHUNKED_REQ)]
    assert framer.feed(GET_REQ[10:] + GET_REQ) == GET_REQ + GET_REQ and framer.cuts == [len(GET_REQ)]
    assert framer.feed(LIST_REQ) == MARKED and framer.cuts == []  # one whole request: no cut


def test_framer_byte_by_byte() -> None:
    stream = POST_REQ + CHUNKED_REQ + LIST_REQ
    assert feed_all([stream[i : i + 1] for i in range(len(stream))]) == POST_REQ + CHUNKED_REQ + MARKED


def test_framer_strips_client_marker_header() -> None:
    forged = b"GET /v1/x HTTP/1.1\r\nX-Authmount-List: " + MARKER_VALUE.encode() + b"\r\nHost: x\r\n\r\n"
    assert feed_all([forged]) == b"GET /v1/x HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    "stream",
    [b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\nLIST / HTTP/1.1\r\n\r\n",
     b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\nLIST / HTTP/1.1\r\n\r\n",
     b"GET / HTTP/1.1\nHost: x\n\nLIST / HTTP/1.1\r\n\r\n"],
    ids=["bad content-length", "non-chunked transfer-encoding", "bare LF"],
)
def test_framer_steps_aside_on_malformed_streams(stream: bytes) -> None:
    assert feed_all([stream]) == stream


# -- through a real socket -----------------------------------------------------------------
@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    settings = Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT)
    client: Client = await aiohttp_client(make_test_server(create_app(settings)))
    for name in ("b", "a"):
        body = orjson.dumps({"policy": f'path "auth/{name}" {{ capabilities = ["read"] }}'})
        resp = await client.put(f"/v1/sys/policies/acl/{name}", data=body, headers={"X-Vault-Token": ROOT})
        assert resp.status == 204
    return client


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ln)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


def req(method: str, path: str, body: bytes = b"") -> bytes:
    extra = f"Content-Length: {len(body)}\r\nContent-Type: application/json\r\n" if body else ""
    return f"{method} {path} HTTP/1.1\r\nHost: t\r\nX-Vault-Token: {ROOT}\r\n{extra}\r\n".encode() + body


async def test_list_keepalive_several_requests_one_connection(client: Client) -> None:
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        for _ in range(3):
            writer.write(req("LIST", "/v1/sys/policies/acl"))
            status, headers, body = await read_response(reader)
            assert status == 200
            assert headers["content-type"] == "application/json"
            assert {"a", "b", "default", "root"} <= set(orjson.loads(body)["data"]["keys"])
            writer.write(req("GET", "/v1/sys/health"))
            status, _, _ = await read_response(reader)
            assert status == 200
            writer.write(req("POST", "/v1/sys/policies/acl/c", b'{"policy": "path \\"x\\" {capabilities=[\\"read\\"]}"}'))
            status, _, _ = await read_response(reader)
            assert status == 204
    finally:
        writer.close()


async def test_list_pipelined_after_body(client: Client) -> None:
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        body = b'{"policy": "path \\"LIST \\" {capabilities=[\\"read\\"]}"}'
        writer.write(req("PUT", "/v1/sys/policies/acl/z", body) + req("LIST", "/v1/sys/policies/acl"))
        assert (await read_response(reader))[0] == 204
        status, _, listing = await read_response(reader)
        assert status == 200
        assert "z" in orjson.loads(listing)["data"]["keys"]
    finally:
        writer.close()


@pytest.mark.parametrize(
    "bad",
    [b"GET /v1/sys/health HTTP/1.1\r\nHost: t\r\nno colon here\r\n\r\n",
     b"GET /v1/sys/health HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n",
     b"GET /v1/sys/he\x01alth HTTP/1.1\r\nHost: t\r\n\r\n",
     b"GET /v1/sys/health HTTP/1.1\n\nHost: t\r\n\r\n"],
    ids=["header without a colon", "bad content-length", "control character", "bare line feeds"],
)
async def test_a_malformed_request_after_whole_ones_in_one_packet(client: Client, bad: bytes) -> None:
    """Each whole request before a malformed one is answered, then the 400 (OpenBao 2.7.2 does
    the same); aiohttp's parser, given the packet at once, dropped the answers before it."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        body = b'{"policy": "path \\"p\\" {capabilities=[\\"read\\"]}"}'
        writer.write(req("LIST", "/v1/sys/policies/acl") + req("PUT", "/v1/sys/policies/acl/piped", body) + bad)
        assert (await read_response(reader))[0] == 200
        assert (await read_response(reader))[0] == 204
        status, headers, answer = await read_response(reader)
        assert status == 400 and headers["content-type"] == "application/json"
        assert orjson.loads(answer)["errors"][0].startswith("malformed HTTP request: ")
        assert await reader.read() == b""  # and the connection is closed
    finally:
        writer.close()


async def test_forged_marker_is_a_plain_get(client: Client) -> None:
    resp = await client.get("/v1/sys/policies/acl", headers={"X-Vault-Token": ROOT, MARKER_HEADER: MARKER_VALUE})
    # The framer strips the header, so this is an ordinary GET (not a LIST): 405.
    assert resp.status == 405


async def test_list_method_from_aiohttp_client(client: Client) -> None:
    resp = await client.request("LIST", "/v1/sys/policies/acl", headers={"X-Vault-Token": ROOT})
    assert resp.status == 200
    assert "a" in (await resp.json())["data"]["keys"]


SECRET = "hvs.SECRETtokenSECRET"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (f"GET /v1/sys/health HTTP/1.1\r\nHost: t\r\nX-Vault-Token {SECRET}\r\n\r\n".encode(), "Invalid header token"),
        (f"GET /v1/sys/health?token={SECRET}\x01 HTTP/1.1\r\nHost: t\r\n\r\n".encode(), "Invalid char in url"),
        (f"GET /v1/{SECRET}\xfc HTTP/1.1\r\nHost: t\r\n\r\n".encode(), "Invalid char in url path"),
        (f"GET /v1/{SECRET}{'a' * 9000} HTTP/1.1\r\nHost: t\r\n\r\n".encode(), "Got more than 8190 bytes"),
        (f"GET /v1/sys/health HTTP/1.1\r\nX-Vault-Token: {SECRET}{'a' * 9000}\r\n\r\n".encode(), "Got more than 8190"),
        (b"POST /v1/auth/jwt/login HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
         "Duplicate Content-Length"),
        (b"POST /v1/auth/jwt/login HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "Invalid character in chunk"),
        (f"{SECRET} / HTTP/1.1\r\n\r\n".encode(), "Invalid method encountered"),
        (b"GET /v1/sys/health HTTP/1.1\r\n\r\n", "Missing 'Host' header"),
    ],
    ids=["header-without-colon", "control-char-in-target", "non-ascii-target", "long-target", "long-header",
         "two-content-lengths", "bad-chunk-size", "bad-method", "no-host"],
)
async def test_a_request_the_parser_refuses_gets_a_json_400_that_quotes_nothing(
    client: Client, raw: bytes, reason: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp answered these ``text/plain`` quoting the offending bytes, and logged them
    with a traceback at error level: a malformed header line with a token put the token in
    the log, and any anonymous caller could fill the log with tracebacks."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(raw)
        status, headers, body = await read_response(reader)
        assert await reader.read() == b""  # and the connection is closed
    finally:
        writer.close()
    assert status == 400 and headers["content-type"] == "application/json"
    (error,) = orjson.loads(body)["errors"]
    assert error.startswith("malformed HTTP request: " + reason) and SECRET not in error and len(error) < 110
    out = capsys.readouterr().out
    assert "http_malformed" in out and SECRET not in out and "Traceback" not in out
    assert not [r for r in caplog.records if r.name.startswith("aiohttp") and r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    ("exc", "status", "error"),
    [(RuntimeError("boom"), 500, "internal error"), (TimeoutError(), 504, "gateway timeout")],
    ids=["unhandled-error", "unhandled-timeout"],
)
async def test_an_error_no_handler_caught_keeps_its_status_in_vaults_body(
    aiohttp_client: AiohttpClient, exc: Exception, status: int, error: str
) -> None:
    """authmount's handlers turn every error into a reply themselves; what escapes one (a
    bug) still gets aiohttp's status, with Vault's JSON body instead of text/plain."""

    async def fail(request: web.Request) -> web.StreamResponse:
        raise exc

    app = web.Application()
    app.router.add_get("/v1/fail", fail)
    client: Client = await aiohttp_client(make_test_server(app))
    resp = await client.get("/v1/fail")
    assert resp.status == status and resp.headers["Content-Type"] == "application/json"
    assert await resp.json() == {"errors": [error]}
