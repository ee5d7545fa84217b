"""AiohttpFetcher: size caps, same-origin redirects, timeouts, CA pinning, short errors."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from plugin.errors import UpstreamError
from server.http.fetcher import AiohttpFetcher


def _idp_app() -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"keys": [], "method": request.method, "form": dict(await request.post())})

    async def big(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)  # chunked: no Content-Length to check up front
        for _ in range(20):
            await resp.write(b"x" * 1024)
        return resp

    async def big_declared(request: web.Request) -> web.Response:
        return web.Response(body=b"y" * 5000)

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(text="late")

    async def hop(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        raise web.HTTPFound(f"/hop/{n - 1}" if n > 0 else "/ok")

    async def away(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://other.example:1/keys")

    app = web.Application()
    app.router.add_route("*", "/ok", ok)
    app.router.add_get("/big", big)
    app.router.add_get("/big-declared", big_declared)
    app.router.add_get("/slow", slow)
    app.router.add_get("/hop/{n}", hop)
    app.router.add_get("/away", away)
    return app


@pytest.fixture
async def idp(aiohttp_server: AiohttpServer) -> TestServer:
    return await aiohttp_server(_idp_app())


@pytest.fixture
async def fetcher() -> AsyncIterator[AiohttpFetcher]:
    f = AiohttpFetcher()
    yield f
    await f.close()


async def test_get_and_post_form(idp: TestServer, fetcher: AiohttpFetcher) -> None:
    res = await fetcher.fetch("GET", str(idp.make_url("/ok")))
    assert res.status == 200 and res.headers["content-type"].startswith("application/json")
    assert b'"keys"' in res.body
    res = await fetcher.fetch("POST", str(idp.make_url("/ok")), form={"code": "c"})
    assert b'"form": {"code": "c"}' in res.body


@pytest.mark.parametrize(
    ("path", "kwargs", "match"),
    [
        ("/big", {"max_bytes": 4096}, "exceeds 4096 bytes"),
        ("/big-declared", {"max_bytes": 1000}, "exceeds 1000 bytes"),
        ("/slow", {"timeout": 0.2}, "timeout after 0.2s"),
        ("/hop/5", {}, "too many redirects"),
        ("/away", {}, "refusing redirect"),
    ],
    ids=["streamed cap", "declared length cap", "timeout", "redirect loop", "cross-host redirect"],
)
async def test_failures_are_upstream_errors(idp: TestServer, fetcher: AiohttpFetcher, path: str,
                                            kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(UpstreamError, match=match) as info:
        await fetcher.fetch("GET", str(idp.make_url(path)), **kwargs)
    assert info.value.status == 502


async def test_same_host_redirects_followed(idp: TestServer, fetcher: AiohttpFetcher) -> None:
    res = await fetcher.fetch("GET", str(idp.make_url("/hop/2")))
    assert res.status == 200 and b"keys" in res.body


async def test_connection_refused(fetcher: AiohttpFetcher) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UpstreamError, match="error fetching"):
        await fetcher.fetch("GET", f"http://127.0.0.1:{port}/x", timeout=5)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://x/y", "nohost"], ids=["file", "ftp", "relative"])
async def test_non_http_urls_refused(fetcher: AiohttpFetcher, url: str) -> None:
    with pytest.raises(UpstreamError, match="unsupported URL"):
        await fetcher.fetch("GET", url)


async def test_tls_with_pinned_ca(aiohttp_server: AiohttpServer, fetcher: AiohttpFetcher) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    server = await aiohttp_server(_idp_app(), ssl=ctx)
    url = f"https://127.0.0.1:{server.port}/ok"
    res = await fetcher.fetch("GET", url, ca_pem=ca.cert_pem.bytes().decode())
    assert res.status == 200
    with pytest.raises(UpstreamError, match="TLS error|error fetching"):
        await fetcher.fetch("GET", url, ca_pem=trustme.CA().cert_pem.bytes().decode())
    with pytest.raises(UpstreamError, match="invalid CA PEM"):
        await fetcher.fetch("GET", url, ca_pem="not a pem")


async def test_client_certificate_for_mtls(aiohttp_server: AiohttpServer, fetcher: AiohttpFetcher) -> None:
    """Issue 12: an internal IdP that requires a client certificate (config client_tls_cert/key)."""
    ca = trustme.CA()
    clients = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    ctx.verify_mode = ssl.CERT_REQUIRED
    clients.configure_trust(ctx)
    seen: list[Any] = []

    async def who(request: web.Request) -> web.Response:
        seen.append(request.transport.get_extra_info("peercert") if request.transport else None)
        return web.json_response({"keys": []})

    app = web.Application()
    app.router.add_get("/keys", who)
    server = await aiohttp_server(app, ssl=ctx)
    url = f"https://127.0.0.1:{server.port}/keys"
    ca_pem = ca.cert_pem.bytes().decode()
    leaf = clients.issue_cert("authmount-client")
    cert_pem = "".join(blob.bytes().decode() for blob in leaf.cert_chain_pems)
    key_pem = leaf.private_key_pem.bytes().decode()
    with pytest.raises(UpstreamError, match="TLS error|error fetching"):
        await fetcher.fetch("GET", url, ca_pem=ca_pem)  # no certificate: the IdP refuses
    res = await fetcher.fetch("GET", url, ca_pem=ca_pem, client_cert=(cert_pem, key_pem))
    assert res.status == 200
    [peer] = seen
    assert ("DNS", "authmount-client") in peer["subjectAltName"]  # the IdP saw authmount's certificate
    other = clients.issue_cert("other").private_key_pem.bytes().decode()
    with pytest.raises(UpstreamError, match="invalid TLS client certificate or key"):
        await fetcher.fetch("GET", url, ca_pem=ca_pem, client_cert=(cert_pem, other))  # key of another cert
    with pytest.raises(UpstreamError, match="invalid TLS client certificate or key"):
        await fetcher.fetch("GET", url, ca_pem=ca_pem, client_cert=("garbage", "garbage"))
