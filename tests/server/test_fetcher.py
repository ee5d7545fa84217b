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


async def _tls_server(aiohttp_server: AiohttpServer, ca: trustme.CA, *names: str) -> str:
    """An HTTPS server on 127.0.0.1 whose certificate (from ``ca``) is for ``names`` only."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(ctx)
    server = await aiohttp_server(_idp_app(), ssl=ctx)
    return f"https://127.0.0.1:{server.port}/ok"


#: override_allowed_server_names: (the certificate's names, the allowed names, accepted).
SERVER_NAMES: list[tuple[str, tuple[str, ...], tuple[str, ...], bool]] = [
    ("the one name", ("idp.internal",), ("idp.internal",), True),
    ("any of the names", ("idp.internal",), ("other.test", "IDP.Internal."), True),
    ("none of the names", ("idp.internal",), ("other.test",), False),
    ("a wildcard certificate", ("*.corp.test",), ("idp.corp.test",), True),
    ("a wildcard is one label", ("*.corp.test",), ("a.idp.corp.test",), False),
    ("a wildcard needs a label", ("*.corp.test",), ("corp.test",), False),
    ("an allowed IP", ("idp.internal", "10.9.9.9"), ("10.9.9.9",), True),
    ("an IP is no DNS name", ("10.9.9.9",), ("idp.internal",), False),
    ("the URL's host no longer counts", ("127.0.0.1",), ("idp.internal",), False),
]


@pytest.mark.parametrize(("certified", "allowed", "ok"), [c[1:] for c in SERVER_NAMES], ids=[c[0] for c in SERVER_NAMES])
async def test_allowed_server_names(aiohttp_server: AiohttpServer, fetcher: AiohttpFetcher,
                                    certified: tuple[str, ...], allowed: tuple[str, ...], ok: bool) -> None:
    """The config's override_allowed_server_names: the certificate must name one of them,
    whatever the URL's host is; the chain is still verified."""
    ca = trustme.CA()
    url = await _tls_server(aiohttp_server, ca, *certified)
    ca_pem = ca.cert_pem.bytes().decode()
    if "127.0.0.1" not in certified:  # without the override the name is the URL's host: not certified
        with pytest.raises(UpstreamError, match="TLS error"):
            await fetcher.fetch("GET", url, ca_pem=ca_pem)
    if ok:
        assert (await fetcher.fetch("GET", url, ca_pem=ca_pem, server_names=allowed)).status == 200
    else:
        with pytest.raises(UpstreamError, match="not for any of override_allowed_server_names"):
            await fetcher.fetch("GET", url, ca_pem=ca_pem, server_names=allowed)


async def test_allowed_server_names_still_verify_the_chain(aiohttp_server: AiohttpServer, fetcher: AiohttpFetcher) -> None:
    ca = trustme.CA()
    url = await _tls_server(aiohttp_server, ca, "idp.internal")
    other_ca = trustme.CA().cert_pem.bytes().decode()
    with pytest.raises(UpstreamError, match="TLS error") as info:
        await fetcher.fetch("GET", url, ca_pem=other_ca, server_names=("idp.internal",))
    assert "override_allowed_server_names" not in str(info.value)  # refused by the chain, before the names
    with pytest.raises(UpstreamError, match="TLS error"):  # nor do the system CAs know it
        await fetcher.fetch("GET", url, server_names=("idp.internal",))


async def test_no_request_reaches_a_server_of_another_name(aiohttp_server: AiohttpServer, fetcher: AiohttpFetcher) -> None:
    """The names are judged at the handshake: a token request (which carries the client's
    secret) is never sent to a server whose certificate names another host."""
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("evil.test").configure_cert(ctx)
    seen: list[str] = []

    async def token(request: web.Request) -> web.Response:
        seen.append(await request.text())
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/token", token)
    server = await aiohttp_server(app, ssl=ctx)
    with pytest.raises(UpstreamError, match="certificate is for evil.test, not for any of override_allowed_server_names"):
        await fetcher.fetch("POST", f"https://127.0.0.1:{server.port}/token", ca_pem=ca.cert_pem.bytes().decode(),
                            form={"client_secret": "s3cret"}, server_names=("idp.internal",))
    assert seen == []


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_allowed_server_names_on_either_event_loop(loop: str) -> None:
    """The name check lives in the ``SSLObject`` the loop's TLS creates: uvloop's too."""
    factory = asyncio.new_event_loop
    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        factory = uvloop.new_event_loop
    ca = trustme.CA()

    async def scenario() -> tuple[int, str]:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("idp.internal").configure_cert(ctx)
        runner = web.AppRunner(_idp_app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        port = runner.addresses[0][1]
        fetcher = AiohttpFetcher()
        try:
            url, pem = f"https://127.0.0.1:{port}/ok", ca.cert_pem.bytes().decode()
            ok = await fetcher.fetch("GET", url, ca_pem=pem, server_names=("idp.internal",))
            try:
                await fetcher.fetch("GET", url, ca_pem=pem, server_names=("other.test",))
                refused = ""
            except UpstreamError as exc:
                refused = str(exc)
            return ok.status, refused
        finally:
            await fetcher.close()
            await runner.cleanup()

    with asyncio.Runner(loop_factory=factory) as runner:
        status, refused = runner.run(scenario())
    assert status == 200
    assert "certificate is for idp.internal, not for any of override_allowed_server_names (other.test)" in refused, refused
