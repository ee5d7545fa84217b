"""Error mapping: every PluginError class → its status and Vault's ``{"errors": [...]}`` body."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from plugin import errors
from server.errors import error_response, setup_errors


def _app(exc: BaseException) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        raise exc

    app = web.Application()
    setup_errors(app)
    app.router.add_get("/x", handler)
    return app


@pytest.mark.parametrize(
    ("exc", "status", "body"),
    [
        (errors.InvalidRequest("bad field"), 400, {"errors": ["bad field"]}),
        (errors.PermissionDenied(), 403, {"errors": ["permission denied"]}),
        (errors.NotFound(), 404, {"errors": []}),
        (errors.UnsupportedPath(), 404, {"errors": ["unsupported path"]}),
        (errors.UnsupportedOperation(), 405, {"errors": ["unsupported operation"]}),
        (errors.RateLimited('request path "x": rate limit quota exceeded'), 429,
         {"errors": ['request path "x": rate limit quota exceeded']}),
        (errors.UpstreamError("idp down"), 502, {"errors": ["idp down"]}),
        (errors.InvalidRequest(messages=["a", "b"]), 400, {"errors": ["a", "b"]}),
        (RuntimeError("secret detail"), 500, {"errors": ["internal error"]}),
        (KeyError("k"), 500, {"errors": ["internal error"]}),
        (web.HTTPNotFound(), 404, {"errors": []}),
        (web.HTTPRequestEntityTooLarge(max_size=1, actual_size=2), 413, {"errors": ["http: request body too large"]}),
    ],
    ids=["400", "403", "404 not found", "404 unsupported path", "405", "429", "502", "several messages",
         "500 runtime", "500 keyerror", "aiohttp 404", "aiohttp 413"],
)
async def test_error_mapping(aiohttp_client: Any, exc: BaseException, status: int, body: dict[str, Any]) -> None:
    client = await aiohttp_client(_app(exc))
    resp = await client.get("/x")
    assert resp.status == status
    assert resp.headers["Content-Type"] == "application/json"  # exactly: hvac compares strings
    assert await resp.json() == body
    assert "secret detail" not in await resp.text()


def test_error_response_content_type() -> None:
    resp = error_response(403, ["permission denied"])
    assert resp.content_type == "application/json" and resp.charset is None
    assert resp.body == b'{"errors":["permission denied"]}'
