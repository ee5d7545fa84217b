"""The server finds routes with ``PrefixRouter``: the same route and match value as aiohttp's
router on the same table, the ``Expect`` handshake as aiohttp does it, and the connections
of the server really use it."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import re
from collections.abc import Awaitable, Callable

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from pytest_aiohttp import AiohttpClient

from server.app import create_app
from server.appkeys import REQUEST_HANDLER
from server.http.listverb import make_test_server
from server.http.routes import PrefixRouter, is_relative_path
from server.settings import Settings, StorageSettings
from tests.server.httpkit import Client, app_of

ROOT = "root-token-for-route-tests"

# Pieces of request targets: the route prefixes, separators, the escapes that path_safe keeps
# (%2F, %25) or decodes (%0a is a newline, which "." does not match), and plain names.
PIECES = ("/", "//", "v1", "v1/", "sys", "sys/", "auth", "auth/", "identity/", "token", "x",
          "%2F", "%25", "%0a", "%0A", "%20", "é", ".", "..", "?q=1", "#f")


def _app() -> web.Application:
    return create_app(Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT))


def _targets() -> list[str]:
    short = ["/" + "".join(p) for n in range(3) for p in itertools.product(PIECES, repeat=n)]
    rng = random.Random(11)
    targets = short + ["/" + "".join(rng.choices(PIECES, k=rng.randint(3, 9))) for _ in range(2500)]
    # A mocked request parses "//x" as a host; the server's parser does not (test below).
    return [t for t in targets if not t.startswith("//")]


async def test_prefix_router_finds_what_aiohttps_router_finds() -> None:
    app = _app()
    router = app[REQUEST_HANDLER]
    assert isinstance(router, PrefixRouter)
    targets = _targets()
    matched = 0
    for target in targets:
        request = make_mocked_request("GET", target, app=app)
        theirs = await app.router.resolve(request)
        ours = router.resolve(request.rel_url.path_safe)
        assert theirs.http_exception is None, target  # the last route takes every path from /
        assert ours is not None, target
        assert (ours.route, dict(ours)) == (theirs.route, dict(theirs)), target
        matched += 1
    assert matched > 2600


@pytest.mark.parametrize("target", ["*", "v1/sys/health", ""])
async def test_a_target_no_route_takes_is_aiohttps_to_answer(target: str) -> None:
    router = _app()[REQUEST_HANDLER]
    assert isinstance(router, PrefixRouter)
    assert router.resolve(target) is None  # PrefixRouter.__call__ then hands it to Application._handle


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    client: Client = await aiohttp_client(make_test_server(_app()))
    return client


async def test_the_servers_connections_use_the_prefix_router(client: Client) -> None:
    runner = client.server.runner
    assert runner is not None and runner.server is not None
    assert runner.server.request_handler is app_of(client)[REQUEST_HANDLER]
    resp = await client.get("/v1/sys/health")
    assert resp.status == 200
    resp = await client.get("/v1/no/such/path", headers={"X-Vault-Token": ROOT})
    assert resp.status == 404
    assert await resp.json() == {"errors": ["no handler for route \"no/such/path\". route entry not found."]}


async def _exchange(client: Client, head: bytes, body: bytes) -> tuple[bytes, bytes]:
    """Send ``head``, read what comes before the body is sent, then send it and read the rest."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(head)
        await writer.drain()
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.write(body)
        await writer.drain()
        rest = await asyncio.wait_for(reader.read(65536), 5)
        return interim, rest
    finally:
        writer.close()


async def test_expect_100_continue_is_answered_before_the_body(client: Client) -> None:
    # curl sends Expect: 100-continue with a body over 1 KB and waits a second for it.
    body = b'{"type": "jwt", "description": "' + b"d" * 2000 + b'"}'
    head = (b"POST /v1/sys/auth/big HTTP/1.1\r\nHost: x\r\nX-Vault-Token: " + ROOT.encode()
            + b"\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nConnection: close\r\n"
            + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    interim, rest = await _exchange(client, head, body)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert rest.startswith(b"HTTP/1.1 204 ")
    resp = await client.get("/v1/sys/auth", headers={"X-Vault-Token": ROOT})
    assert "big/" in (await resp.json())["data"]


async def test_an_unknown_expectation_is_refused_in_json_and_logged(client: Client) -> None:
    """417, as aiohttp and OpenBao answer it, but with Vault's error body and a request line
    (aiohttp's own answer was ``text/plain`` and unlogged)."""
    head = b"POST /v1/sys/auth/big HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\nContent-Length: 2\r\n\r\n"
    with structlog.testing.capture_logs() as logs:
        resp = await client.post("/v1/sys/auth/big", data=b"{}", headers={"Expect": "teapot", "X-Vault-Token": ROOT})
    assert resp.status == 417 and resp.headers["Content-Type"] == "application/json"
    assert await resp.json() == {"errors": ['unsupported Expect header "teapot": only 100-continue is understood']}
    assert [(e["status"], e["path"]) for e in logs if e["event"] == "request"] == [(417, "/v1/sys/auth/big")]
    interim, _ = await _exchange(client, head, b"{}")
    assert interim.startswith(b"HTTP/1.1 417 ")


RAW_TARGETS = ["/v1/sys/health", "//v1/sys/health", "/v1//sys/health", "/v1/sys", "/v1", "/v1/", "/",
               "/v1/auth/", "/v1/auth/%0a", "/v1/auth/token/lookup-self%0a", "/v1/nope%0a", "/%0a",
               "/v1/sys/policies/acl/a%2Fb", "/v1/auth/a%252F", "*", "http://h/v1/sys/health",
               "http://h", "/v1/sys/health?x=%0a", "/v1/identity/entity/id"]


async def _raw(port: int, target: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET " + target.encode() + b" HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        reply = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    content_type = [h for h in head.split(b"\r\n") if h.lower().startswith(b"content-type:")]
    return status + b" " + b"".join(content_type) + b" " + body.replace(b"\r\n", b"")


async def test_the_server_answers_odd_targets_as_with_aiohttps_router() -> None:
    reference = web.AppRunner(_app(), access_log=None)  # aiohttp's router: Application._handle
    ours = make_test_server(_app())
    await reference.setup()
    site = web.TCPSite(reference, "127.0.0.1", 0)
    await site.start()
    await ours.start_server()
    try:
        assert ours.runner is not None and ours.runner.server is not None
        assert isinstance(ours.runner.server.request_handler, PrefixRouter)
        port = reference.addresses[0][1]
        for target in RAW_TARGETS:
            theirs = await _raw(port, target)
            mine = await _raw(ours.port or 0, target)
            if b"text/plain" in theirs and theirs.startswith(b"HTTP/1.0 400 "):
                # The parser refused it (``*`` with GET): aiohttp's text/plain, ours Vault's JSON error.
                assert mine.startswith(b"HTTP/1.0 400 Bad Request Content-Type: application/json "), (target, mine)
                assert b'{"errors":["malformed HTTP request: ' in mine, (target, mine)
                continue
            if theirs == b"HTTP/1.1 404 Not Found Content-Type: text/plain; charset=utf-8 404: Not Found":
                # A target no route takes (absolute form without a path): aiohttp's text/plain, ours JSON.
                assert mine == b'HTTP/1.1 404 Not Found Content-Type: application/json {"errors":[]}', (target, mine)
                continue
            # Request ids and dates differ; compare status, content type and body without ids.
            assert _stable(mine) == _stable(theirs), target
    finally:
        await ours.close()
        await reference.cleanup()


@pytest.mark.parametrize(("request_line", "answer"), [
    (b"OPTIONS * HTTP/1.1", b"HTTP/1.1 200 OK  "),  # the server itself: no body, as Go
    (b"CONNECT example.com:443 HTTP/1.1", b'HTTP/1.1 404 Not Found Content-Type: application/json {"errors":[]}'),
    (b"OPTIONS /v1/sys/health HTTP/1.1", b'HTTP/1.1 405 Method Not Allowed Content-Type: application/json '
                                         b'{"errors":["unsupported operation"]}'),
])
async def test_targets_that_are_no_path_answer_as_openbao(client: Client, request_line: bytes, answer: bytes) -> None:
    """aiohttp's router answered both in plain text (``404: Not Found``); OpenBao 2.7.2 answers
    ``OPTIONS *`` 200 without a body and ``CONNECT`` with its JSON 404."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port or 0)
    try:
        writer.write(request_line + b"\r\nHost: h\r\nConnection: close\r\n\r\n")
        reply = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    content_type = [h for h in head.split(b"\r\n") if h.lower().startswith(b"content-type:")]
    assert head.split(b"\r\n", 1)[0] + b" " + b"".join(content_type) + b" " + body == answer


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/0.9"])
async def test_another_http_version_is_refused_in_http_1_1(client: Client, version: bytes) -> None:
    """aiohttp's parser takes these two (it refuses HTTP/1.2 or 3.0 with 400) and the reply
    echoed the version: ``HTTP/2.0 200 OK`` framed as HTTP/1.1. OpenBao 2.7.2 answers 505 in an
    HTTP/1.1 reply and closes the connection; so do we, in Vault's JSON, logged. A request
    sent behind it on the same connection is not answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port or 0)
    try:
        with structlog.testing.capture_logs() as logs:
            writer.write(b"GET /v1/sys/health " + version + b"\r\nHost: h\r\n\r\n"
                         b"GET /v1/sys/health HTTP/1.1\r\nHost: h\r\n\r\n")
            reply = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 505 HTTP Version Not Supported"
    assert b"Content-Type: application/json" in lines and b"Connection: close" in lines
    assert json.loads(body) == {"errors": [f"unsupported protocol version {version.decode()}: "
                                           "this server speaks HTTP/1.0 and HTTP/1.1"]}
    assert [(e["status"], e["path"]) for e in logs if e["event"] == "request"] == [(505, "/v1/sys/health")]


def _stable(reply: bytes) -> bytes:
    return re.sub(rb'"(request_id|cluster_id|cluster_name)":"[^"]*"|"server_time_utc":\d+', b"", reply)


async def test_an_application_with_middlewares_keeps_aiohttps_handling() -> None:
    seen: list[str] = []

    @web.middleware
    async def note(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        seen.append(request.path)
        return await handler(request)

    app = _app()
    app.middlewares.append(note)
    server = make_test_server(app)
    await server.start_server()
    try:
        assert server.runner is not None and server.runner.server is not None
        assert not isinstance(server.runner.server.request_handler, PrefixRouter)
        assert (await _raw(server.port or 0, "/v1/sys/health")).startswith(b"HTTP/1.1 200 ")
        assert seen == ["/v1/sys/health"]
    finally:
        await server.close()



async def _head(port: int, method: str, target: str) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """The status line, headers and body of one raw request (the target sent as written:
    aiohttp's client would resolve its dot segments)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        body = b"{}" if method == "POST" else b""
        writer.write(f"{method} {target} HTTP/1.1\r\nHost: h\r\nContent-Length: {len(body)}\r\n"
                     "Connection: close\r\n\r\n".encode() + body)
        reply = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, rest = reply.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    return status, {k.lower(): v for k, _, v in (line.partition(b": ") for line in lines)}, rest


@pytest.mark.parametrize(("target", "location"), [
    ("/v1//sys/auth", "/v1/sys/auth"), ("/v1/sys//auth?list=true&x=%20y", "/v1/sys/auth?list=true&x=%20y"),
    ("/v1/./sys/auth", "/v1/sys/auth"), ("/v1/sys/../sys/auth", "/v1/sys/auth"),
    ("/v1/auth/jwt//role/", "/v1/auth/jwt/role/"), ("/v1/auth/token//lookup-self", "/v1/auth/token/lookup-self"),
    ("/v1/identity//group/name", "/v1/identity/group/name"), ("/v1/nope//x", "/v1/nope/x"),
    # never to another host: a protocol-relative "//evil.example" would be one, and so would
    # "/\\evil.example" to a browser (the backslash is escaped)
    ("/v1/..//evil.example/x", "/evil.example/x"), ("/v1/../..//evil.example", "/evil.example"),
    ("/v1/../\\evil.example/", "/%5Cevil.example/"), ("/v1/..", "/"), ("/v1/../", "/"),
    # a last "." or ".." segment names a directory (OpenBao 2.7.2 keeps the slash too)
    ("/v1/sys/mounts/..", "/v1/sys/"), ("/v1/.", "/v1/"),
])
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_an_unclean_path_is_redirected_to_its_clean_form(
    client: Client, method: str, target: str, location: str
) -> None:
    """As Vault's HTTP server: 307 (method and body kept) to the path without empty, ``.`` or
    ``..`` segments, before any token is looked at; a route handled the rest only by chance
    (``sys/auth/jwt//tune`` worked, ``auth/jwt//role/x`` was a 404)."""
    status, headers, body = await _head(client.server.port or 0, method, target)
    assert status == b"HTTP/1.1 307 Temporary Redirect" and headers[b"location"] == location.encode()
    assert body == b""


@pytest.mark.parametrize("target", ["/v1/sys/health", "/v1/sys/auth/", "/v1/auth/a/.well-known", "//v1/sys/health",
                                    "http://h/v1/sys/health"])  # an absolute-form target: its path is clean
async def test_a_clean_path_is_not_redirected(client: Client, target: str) -> None:
    status, headers, _ = await _head(client.server.port or 0, "GET", target)
    assert not status.startswith(b"HTTP/1.1 307") and b"location" not in headers


@pytest.mark.parametrize("target", [
    "/v1/sys/%2e%2e/sys/auth", "/v1/auth/token/lookup-self/%2E", "/v1/sys/auth/%2e", "/v1/%2e%2e",
    "/v1/sys/policies/acl/a%2f..%2fb", "/v1/sys/policies/acl/..%2fdefault", "/v1/auth/jwt/role/.%2fadmin",
    "/v1/nope/%2E%2E",
])
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
async def test_escaped_dot_segments_are_refused(client: Client, method: str, target: str) -> None:
    """A ``.`` or ``..`` segment spelt with escapes survives the redirect of unclean paths;
    decoded, it would name a path other than the one asked. Refused as OpenBao refuses it
    (``logical.IsRelativePath``), before any token is looked at: no 403 tells a path exists."""
    status, headers, body = await _head(client.server.port or 0, method, target)
    assert status == b"HTTP/1.1 400 Bad Request"
    assert json.loads(body) == {"errors": ["relative paths not supported"]}


@pytest.mark.parametrize("target", ["/v1/auth/jwt/role/a%2e", "/v1/auth/jwt/role/%2e%2ea", "/v1/sys/policies/acl/a%2e%2e"])
async def test_escaped_dots_inside_a_name_are_not_segments(client: Client, target: str) -> None:
    _, _, body = await _head(client.server.port or 0, "GET", target)
    assert b"relative paths" not in body and b"errors" in body  # answered by the route (403 or 404)


@pytest.mark.parametrize(("path", "relative"), [
    (".", True), ("..", True), ("./a", True), ("../a", True), ("a/.", True), ("a/..", True), ("a/./b", True),
    ("a/../b", True), ("a//b", False), ("a.", False), (".a", False), ("a/..b", False), ("a/.b/c", False), ("", False),
])
def test_is_relative_path_as_openbao(path: str, relative: bool) -> None:
    assert is_relative_path(path) is relative
