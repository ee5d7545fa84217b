"""Error mapping: every PluginError class → its status and Vault's ``{"errors": [...]}`` body."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest
import structlog
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from plugin import errors
from server.http.errors import STORAGE_FAILURES, error_response
from server.http.log import handled
from tests.server.httpkit import Client


def _app(exc: BaseException) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        raise exc

    app = web.Application()
    app.router.add_get("/x", handled(handler))  # the server's wrapper: log + errors
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
async def test_error_mapping(
    aiohttp_client: AiohttpClient, exc: BaseException, status: int, body: dict[str, Any]
) -> None:
    client = await aiohttp_client(_app(exc))
    resp = await client.get("/x")
    assert resp.status == status
    assert resp.headers["Content-Type"] == "application/json"  # exactly: hvac compares strings
    assert await resp.json() == body
    assert "secret detail" not in await resp.text()


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (sqlite3.OperationalError("database is locked"), "the database is locked by another process"),
        (sqlite3.OperationalError("database or disk is full"), "the database or disk is full"),
        (sqlite3.OperationalError("disk I/O error"), "disk I/O error"),
        (sqlite3.OperationalError("attempt to write a readonly database"), "the database is read-only"),
        (sqlite3.DatabaseError("database disk image is malformed"), "database error"),
        (psycopg.OperationalError("connection to server at 10.0.0.5 failed: timeout"), "the database connection failed"),
    ],
    ids=["locked", "full", "io", "readonly", "malformed", "postgres down"],
)
async def test_storage_failures_are_503_and_counted(
    aiohttp_client: AiohttpClient, exc: BaseException, reason: str
) -> None:
    """A storage failure was a generic 500 after the busy timeout; a load balancer and an
    operator must be able to tell it from a bug. The engine's own text (paths, hosts) stays
    in the log."""
    before = STORAGE_FAILURES.get(reason, 0)
    client = await aiohttp_client(_app(exc))
    with structlog.testing.capture_logs() as logs:
        resp = await client.get("/x")
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    assert resp.headers["Content-Type"] == "application/json"
    assert await resp.json() == {"errors": [f"storage unavailable: {reason}"]}
    assert "10.0.0.5" not in await resp.text()
    assert STORAGE_FAILURES[reason] == before + 1
    if before == 0:
        assert [e["reason"] for e in logs if e["event"] == "storage_unavailable"] == [reason]


def test_error_response_content_type() -> None:
    resp = error_response(403, ["permission denied"])
    assert resp.content_type == "application/json" and resp.charset is None
    assert resp.body == b'{"errors":["permission denied"]}'


# -- logging: redaction and the request line ------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("token hvs.CAESIabcdefghijklmnop123 used", "token <redacted> used"),
        ("jwt eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln end", "jwt <redacted> end"),
        ("Authorization: Bearer abc.def", "Authorization: <redacted>"),
        ({"client_token": "anything", "role": "ci"}, {"client_token": "<redacted>", "role": "ci"}),
        ({"nested": [{"jwt": "x"}]}, {"nested": [{"jwt": "<redacted>"}]}),
        ("/v1/auth/jwt/login", "/v1/auth/jwt/login"),
    ],
    ids=["vault token", "jwt", "bearer", "secret key", "nested secret key", "plain path untouched"],
)
def test_redact(value: Any, expected: Any) -> None:
    from server.http.log import redact

    assert redact(value) == expected


async def test_request_log_line(aiohttp_client: AiohttpClient) -> None:
    import structlog

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application()
    app.router.add_get("/v1/auth/x/hvs.SECRETSECRETSECRET1", handled(handler))
    client = await aiohttp_client(app)
    with structlog.testing.capture_logs() as logs:
        resp = await client.get("/v1/auth/x/hvs.SECRETSECRETSECRET1", headers={"X-Vault-Token": "hvs.SECRETSECRETSECRET2"})
    assert resp.status == 204
    lines = [entry for entry in logs if entry["event"] == "request"]
    assert len(lines) == 1
    line = lines[0]
    assert {"method", "path", "mount", "status", "duration_ms"} <= set(line)
    assert line["status"] == 204 and line["method"] == "GET"
    assert "SECRETSECRETSECRET2" not in repr(logs)  # the header token is never logged


def test_redact_processor_on_a_request_line() -> None:
    from server.http.log import _redact_processor

    event = {"event": "request", "path": "/v1/auth/x/hvs.SECRETSECRETSECRET1", "token": "raw", "status": 200}
    out = _redact_processor(None, "info", event)
    assert out == {"event": "request", "path": "/v1/auth/x/<redacted>", "token": "<redacted>", "status": 200}


async def test_error_is_logged_with_its_status(aiohttp_client: AiohttpClient) -> None:
    import structlog

    app = _app(RuntimeError("boom"))
    client = await aiohttp_client(app)
    with structlog.testing.capture_logs() as logs:
        resp = await client.get("/x")
    assert resp.status == 500
    events = [(e["event"], e.get("status")) for e in logs]
    assert ("internal_error", None) in events and ("request", 500) in events
    internal = next(e for e in logs if e["event"] == "internal_error")
    assert internal.get("exc_info") is True and internal["path"] == "/x"  # traceback logged


async def test_a_lock_held_elsewhere_is_a_503_not_a_500(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    """Another process holds SQLite's write lock past the busy timeout: the write fails with
    503 ``storage unavailable``, the server keeps serving reads, and the write succeeds once
    the lock is gone (nothing half-written)."""
    import dataclasses

    from server.app import create_app
    from server.http.listverb import make_test_server
    from server.settings import Settings, StorageSettings

    db = tmp_path / "authmount.db"
    settings = dataclasses.replace(Settings(storage=StorageSettings(type="sqlite", path=str(db))), dev=True,
                                   dev_root_token_id="root")
    client: Client = await aiohttp_client(make_test_server(create_app(settings)))
    h = {"X-Vault-Token": "root"}
    other = sqlite3.connect(db, isolation_level=None, timeout=0)
    other.execute("BEGIN EXCLUSIVE")
    try:
        resp = await client.post("/v1/sys/policies/acl/p", json={"policy": 'path "a" { capabilities = ["read"] }'},
                                 headers=h)
        assert resp.status == 503, await resp.text()
        assert (await resp.json())["errors"] == ["storage unavailable: the database is locked by another process"]
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert (await client.get("/v1/sys/health")).status == 200
    resp = await client.post("/v1/sys/policies/acl/p", json={"policy": 'path "a" { capabilities = ["read"] }'},
                             headers=h)
    assert resp.status == 204
    assert (await client.get("/v1/sys/policies/acl/p", headers=h)).status == 200
