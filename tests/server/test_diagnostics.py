"""What a running server shows an operator troubleshooting it (``server.diagnostics``,
``server.sys.debug``): ``sys/monitor`` (``vault monitor``), ``sys/in-flight-req``,
``sys/host-info``, ``sys/config/state/sanitized`` and ``sys/replication/status``, which is what
``vault debug`` collects. The real CLI runs against a real server in
tests/e2e/test_bao_cli.py (``test_bao_monitor_and_debug``)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog

from server import diagnostics
from server.app import create_app
from server.diagnostics import LOG_HUB, LogHub, LogRelay, render_standard
from server.http import log
from server.http.listverb import make_test_server
from server.settings import AuditSeed, MountSeed, Settings, StorageSettings

ROOT = "root-token-for-tests"
HEAD = {"X-Vault-Token": ROOT}


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The log configured as a server configures it (JSON to stderr at info), put back after;
    no monitor is left open."""
    for name in ("_request_sink", "_level", "_format"):
        monkeypatch.setattr(log, name, getattr(log, name))
    monkeypatch.setattr(logging.getLogger(), "level", logging.getLogger().level)
    log.configure_logging("info", "json")
    yield
    log.flush_request_log()
    structlog.reset_defaults()
    assert LOG_HUB.monitors == ()


def _settings(**kw: Any) -> Settings:
    return Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT, **kw)


async def _client(aiohttp_client: Any, settings: Settings | None = None, *, cancels: bool = True) -> Any:
    """A test client of a server app. ``cancels=False``: a client that leaves does not cancel
    its handler, as in the real server (aiohttp's test server cancels it)."""
    server = make_test_server(create_app(settings or _settings()))
    if not cancels:
        make = server._make_runner

        async def runner(**kw: Any) -> Any:
            return await make(**{**kw, "handler_cancellation": False})

        server._make_runner = runner  # type: ignore[method-assign]
    return await aiohttp_client(server)


async def _line(resp: Any, timeout: float = 5.0) -> str:
    line: bytes = await asyncio.wait_for(resp.content.readline(), timeout)
    return line.decode()


async def _lines_until(resp: Any, needle: str) -> list[str]:
    seen = []
    while True:
        seen.append(await _line(resp))
        if needle in seen[-1]:
            return seen


# -- the standard format ----------------------------------------------------------------------
@pytest.mark.parametrize(("value", "shown"), [
    ("plain", "k=plain"),
    ("", 'k=""'),
    ("two words", 'k="two words"'),
    ('say "hi"', 'k="say \\"hi\\""'),
    ("a=b", 'k="a=b"'),
    ("/v1/auth/\x1b[2Jx\x07", 'k="/v1/auth/\\u001b[2Jx\\u0007"'),  # no escape sequence reaches a terminal
    ("c1\x9bcsi", 'k="c1\\u009bcsi"'),  # nor a C1 control (CSI on some terminals)
    ("line\nbreak", 'k="line\\nbreak"'),  # one event, one line
    (None, "k=null"),
    (True, "k=true"),
    (12, "k=12"),
    (0.5, "k=0.5"),
    (["a", "b"], 'k=["a","b"]'),
    ({"x": 1}, 'k={"x":1}'),
])
def test_standard_lines_quote_what_needs_it(value: Any, shown: str) -> None:
    line = render_standard({"event": "e", "level": "info", "timestamp": "T", "k": value})
    assert line == f"T [INFO]  e: {shown}"


@pytest.mark.parametrize(("level", "head"), [
    ("debug", "[DEBUG]"), ("info", "[INFO] "), ("warning", "[WARN] "), ("error", "[ERROR]"), ("critical", "[ERROR]"),
])
def test_standard_level_names_are_hclogs(level: str, head: str) -> None:
    """As Vault's lines read in ``vault monitor``: ``[WARN] ``, padded to one width."""
    assert render_standard({"event": "e", "level": level, "timestamp": "T"}) == f"T {head} e:"


# -- monitors ---------------------------------------------------------------------------------
async def _drain(lines: AsyncIterator[bytes]) -> str:
    chunk = await asyncio.wait_for(anext(lines), 2)
    return chunk.decode()


async def test_a_monitor_gets_its_level_and_above() -> None:
    hub = LogHub()
    monitor = hub.open(logging.INFO, json=True)
    assert hub.level == logging.INFO
    for level in ("debug", "info", "warning", "error"):
        hub.publish({"event": level, "level": level})
    lines = monitor.lines()
    got = [orjson.loads(line)["event"] for line in (await _drain(lines)).splitlines()]
    assert got == ["info", "warning", "error"]
    await lines.aclose()
    assert hub.monitors == () and hub.level > logging.CRITICAL  # closing the stream unsubscribes


async def test_a_slow_reader_loses_lines_and_is_told() -> None:
    """A client that reads slowly holds at most ``MONITOR_BUFFER`` lines; the rest are counted,
    and the next chunk says how many were dropped."""
    hub = LogHub()
    monitor = hub.open(logging.DEBUG, json=False)
    extra = 88
    for i in range(diagnostics.MONITOR_BUFFER + extra):
        hub.publish({"event": f"e{i}", "level": "info", "timestamp": "T"})
    lines = monitor.lines()
    got = (await _drain(lines)).splitlines()
    assert len(got) == 1 + diagnostics.MONITOR_BUFFER
    assert got[0].startswith("20") and "[WARN]  monitor_dropped_lines: dropped=88 " in got[0]
    assert got[1] == "T [INFO]  e0:" and got[-1] == f"T [INFO]  e{diagnostics.MONITOR_BUFFER - 1}:"
    hub.publish({"event": "after", "level": "info", "timestamp": "T"})
    assert (await _drain(lines)) == "T [INFO]  after:\n"
    await lines.aclose()


async def test_a_line_logged_on_another_thread_wakes_the_monitor() -> None:
    """The SQLite writer thread logs too: its lines reach a waiting monitor at once."""
    hub = LogHub()
    monitor = hub.open(logging.INFO, json=True)
    lines = monitor.lines()
    pending = asyncio.ensure_future(anext(lines))
    await asyncio.sleep(0.05)
    thread = threading.Thread(target=hub.publish, args=({"event": "from_writer", "level": "info"},))
    thread.start()
    thread.join()
    chunk = await asyncio.wait_for(pending, 0.5)  # not the idle tick's second
    assert orjson.loads(chunk)["event"] == "from_writer"
    await lines.aclose()


async def test_an_idle_monitor_ticks_and_a_closed_one_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(diagnostics, "IDLE_TICK", 0.05)
    hub = LogHub()
    monitor = hub.open(logging.INFO, json=True)
    lines = monitor.lines()
    assert await asyncio.wait_for(anext(lines), 1) == b""  # nothing to say: the writer checks its client
    hub.close_all()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(lines), 1)
    assert hub.monitors == ()


async def test_at_most_max_monitors() -> None:
    hub = LogHub()
    opened = [hub.open(logging.INFO, json=True) for _ in range(diagnostics.MAX_MONITORS)]
    with pytest.raises(diagnostics.TooManyMonitors):
        hub.open(logging.INFO, json=True)
    hub.remove(opened[0])
    hub.open(logging.ERROR, json=True)
    assert hub.level == logging.INFO


async def test_workers_see_each_others_lines(tmp_path: Path) -> None:
    """``--workers N``: a monitor on one worker streams the others' lines too (each line once,
    marked with its worker), at its level; a worker without monitors listens on nothing."""
    first, second = LogHub(), LogHub()
    first.relay = LogRelay(first, str(tmp_path), 0, ident=1001)
    second.relay = LogRelay(second, str(tmp_path), 1, ident=1002)
    try:
        monitor = first.open(logging.INFO, json=True)
        assert os.listdir(tmp_path) == ["1001-20.sock"]  # its level in its name
        second.relay.scan()
        assert second.level == logging.INFO  # the other worker's monitor makes it publish info
        second.publish({"event": "on_worker_1", "level": "info"})
        second.publish({"event": "debug_on_worker_1", "level": "debug"})  # below the monitor's level: not sent
        first.publish({"event": "on_worker_0", "level": "warning"})
        lines = monitor.lines()
        got: list[dict[str, Any]] = []
        while len(got) < 2:
            got += [orjson.loads(line) for line in (await _drain(lines)).splitlines()]
        assert sorted((e["event"], e["worker"]) for e in got) == [("on_worker_0", 0), ("on_worker_1", 1)]
        await lines.aclose()
        assert os.listdir(tmp_path) == []  # the last monitor gone: the socket too
        second.relay.scan()
        assert second.level > logging.CRITICAL
    finally:
        first.close_all()
        second.close_all()


# -- sys/monitor over HTTP --------------------------------------------------------------------
async def test_monitor_streams_the_log_at_its_own_level(logged: None, aiohttp_client: Any,
                                                        capfd: pytest.CaptureFixture[str]) -> None:
    """A monitor at debug sees debug lines while the log file takes info and up; request lines
    come with the log's redaction; a client that leaves is unsubscribed."""
    client = await _client(aiohttp_client)
    resp = await client.get("/v1/sys/monitor?log_level=debug", headers=HEAD)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/plain; charset=utf-8" and resp.headers["Cache-Control"] == "no-store"
    assert len(LOG_HUB.monitors) == 1
    structlog.get_logger("authmount.test").debug("only_for_monitors", role="ci")
    lines = await _lines_until(resp, "only_for_monitors")
    assert lines[-1].split(" ", 1)[1] == "[DEBUG] only_for_monitors: role=ci\n"
    secret = "hvs.CAESIJ0123456789abcdefghijkl"
    await client.get(f"/v1/auth/token/lookup/{secret}", headers=HEAD)
    lines = await _lines_until(resp, "path=/v1/auth/token/lookup/")
    assert secret not in "".join(lines) and "path=/v1/auth/token/lookup/<redacted>" in lines[-1]
    resp.close()
    await _unsubscribed()
    log.flush_request_log()
    assert "only_for_monitors" not in capfd.readouterr().err  # below the file's level


async def test_monitor_json_lines_are_the_log_files(logged: None, aiohttp_client: Any) -> None:
    client = await _client(aiohttp_client, cancels=False)
    resp = await client.get("/v1/sys/monitor?log_level=INFO&log_format=JSON", headers=HEAD)
    assert resp.status == 200
    await client.get("/v1/sys/health")
    event = orjson.loads((await _lines_until(resp, "/v1/sys/health"))[-1])
    assert {k: event[k] for k in ("event", "method", "path", "status", "level")} == {
        "event": "request", "method": "GET", "path": "/v1/sys/health", "status": 200, "level": "info"}
    assert set(event) >= {"request_id", "timestamp", "duration_ms", "remote_addr", "mount"}
    resp.close()  # nothing is logged at info from here on: the idle tick finds the client gone
    await _unsubscribed()


async def _unsubscribed() -> None:
    """A monitor whose client has gone leaves the hub within a few idle ticks."""
    for _ in range(40):
        if not LOG_HUB.monitors:
            break
        await asyncio.sleep(0.1)
    assert not LOG_HUB.monitors


async def test_monitor_refusals(logged: None, aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad values name the choices; without ``read`` on ``sys/monitor``, 403; a 17th monitor
    429; a stopping server ends every stream."""
    client = await _client(aiohttp_client)
    for query, message in [
        ("log_level=bogus", "unknown log level 'bogus': use trace, debug, info, warn or error"),
        ("log_format=xml", "unknown log format 'xml': use standard or json"),
    ]:
        resp = await client.get(f"/v1/sys/monitor?{query}", headers=HEAD)
        assert (resp.status, await resp.json()) == (400, {"errors": [message]})
    token = await _token(client, [])
    assert (await client.get("/v1/sys/monitor", headers={"X-Vault-Token": token})).status == 403
    monkeypatch.setattr(diagnostics, "MAX_MONITORS", 2)
    open_ = [await client.get("/v1/sys/monitor", headers=HEAD) for _ in range(2)]
    resp = await client.get("/v1/sys/monitor", headers=HEAD)
    assert resp.status == 429 and "2 log monitors are streaming" in (await resp.json())["errors"][0]
    assert (await client.get("/v1/sys/monitor", headers={**HEAD, "X-Vault-Wrap-TTL": "60"})).status == 400
    await client.server.app.shutdown()  # what a stopping server runs first
    for resp in open_:
        await asyncio.wait_for(resp.content.read(), 5)  # the stream ends
    assert LOG_HUB.monitors == ()


async def _token(client: Any, policies: list[str]) -> str:
    resp = await client.post("/v1/auth/token/create", headers=HEAD, json={"policies": policies or ["default"]})
    return str((await resp.json())["auth"]["client_token"])


# -- the other paths vault debug reads ----------------------------------------------------------
async def test_in_flight_requests(logged: None, aiohttp_client: Any) -> None:
    """The requests being answered, by request id, the bare JSON object Vault answers; a
    finished one is gone."""
    client = await _client(aiohttp_client)
    monitor = await client.get("/v1/sys/monitor", headers=HEAD)
    resp = await client.get("/v1/sys/in-flight-req", headers=HEAD)
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/json"
    body = await resp.json()
    paths = sorted(entry["request_path"] for entry in body.values())
    assert paths == ["/v1/sys/in-flight-req", "/v1/sys/monitor"]
    for entry in body.values():
        assert set(entry) == {"start_time", "client_remote_address", "request_path", "request_method", "client_id"}
        assert entry["start_time"].endswith("Z") and entry["client_remote_address"].startswith("127.0.0.1:")
        assert entry["request_method"] == "GET"
    monitor.close()
    await client.server.app.shutdown()
    for _ in range(50):
        if not diagnostics.IN_FLIGHT:
            break
        await asyncio.sleep(0.05)
    assert diagnostics.IN_FLIGHT == {}


async def test_in_flight_paths_are_redacted(aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A legacy path holds a token (``auth/token/lookup/<token>``): shown as the log shows it."""

    class Slow:
        path, method, transport = "/v1/auth/token/lookup/hvs.CAESIJ0123456789abcdefghijkl", "GET", None

    monkeypatch.setitem(diagnostics.IN_FLIGHT, "rid-slow", (Slow(), 0.0))
    client = await _client(aiohttp_client)
    body = await (await client.get("/v1/sys/in-flight-req", headers=HEAD)).json()
    assert body["rid-slow"]["request_path"] == "/v1/auth/token/lookup/<redacted>"
    assert body["rid-slow"]["client_remote_address"] == ""


@pytest.mark.skipif(sys.platform != "linux", reason="read from /proc")
async def test_host_info(aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """gopsutil's names, as ``vault debug`` writes them to host_info.json; a part that cannot
    be read is a warning and the rest is answered."""
    client = await _client(aiohttp_client)
    resp = await client.get("/v1/sys/host-info", headers=HEAD)
    body = await resp.json()
    data = body["data"]
    assert set(data) == {"cpu", "cpu_times", "disk", "host", "memory", "timestamp"} and body["warnings"] is None
    assert data["cpu"] and {"cpu", "vendorId", "modelName", "mhz", "flags", "cores"} <= set(data["cpu"][0])
    assert data["cpu_times"][0]["cpu"] == "cpu0" and data["cpu_times"][0]["user"] >= 0
    assert data["disk"][0]["path"] == "/" and data["disk"][0]["total"] > 0
    assert data["memory"]["total"] > data["memory"]["used"] > 0 and 0 < data["memory"]["usedPercent"] < 100
    assert data["host"]["os"] == "linux" and data["host"]["uptime"] > 0 and data["host"]["procs"] > 0

    def broken() -> Any:
        raise OSError("no /proc here")

    monkeypatch.setattr(diagnostics, "_HOST_PARTS", (("cpu", broken), *diagnostics._HOST_PARTS[1:]))
    body = await (await client.get("/v1/sys/host-info", headers=HEAD)).json()
    assert "cpu" not in body["data"] and "memory" in body["data"]
    assert body["warnings"] == ["host info: error collecting cpu information: no /proc here"]
    token = await _token(client, [])
    assert (await client.get("/v1/sys/host-info", headers={"X-Vault-Token": token})).status == 403


async def test_sanitized_config_shows_no_secret(aiohttp_client: Any, tmp_path: Any) -> None:
    """Settings as they are in effect; a DSN (a PostgreSQL password) and the bodies of seeded
    mounts, roles and audit devices (client secrets, HMAC options) are never shown."""
    settings = _settings(
        mounts=(MountSeed(path="corp", type="jwt",
                          config={"jwt_validation_hmac_secrets": ["s3cret-hmac-0123456789abcdefghijklmnopqrstuvwxyz"]}),),
        audit=(AuditSeed(path="file", type="file", options={"file_path": str(tmp_path / "a.log"), "prefix": "s3cret-prefix"}),),
        token_roles={"ci": {"allowed_policies": ["x"]}},
        policies={"ops": 'path "s3cret-path" { capabilities = ["read"] }'},
    )
    settings_pg = Settings(storage=StorageSettings(type="postgres", path="", dsn="postgresql://u:s3cret-pw@db/a"))
    pg = diagnostics.sanitized_settings(settings_pg)
    assert "dsn" not in pg["storage"] and pg["storage"]["type"] == "postgres"
    assert "s3cret" not in orjson.dumps(pg).decode()
    client = await _client(aiohttp_client, settings)
    data = (await (await client.get("/v1/sys/config/state/sanitized", headers=HEAD)).json())["data"]
    assert "s3cret" not in orjson.dumps(data).decode()
    assert data["mounts"] == [{"path": "corp", "type": "jwt"}] and data["audit"] == [{"path": "file", "type": "file"}]
    assert data["token_roles"] == ["ci"] and data["policies"] == ["ops"]
    assert data["storage"]["type"] == "memory" and data["listen_address"] == "127.0.0.1:8200" and data["dev"] is True
    assert "dev_root_token_id" not in data and ROOT not in orjson.dumps(data).decode()


async def test_every_stack_for_vault_debug(aiohttp_client: Any) -> None:
    """``sys/pprof/goroutine?debug=2`` (``vault debug`` writes it to ``goroutines.txt``): every
    thread's and asyncio task's stack, a stuck one with the line it waits on; Go's binary
    profiles are a 400 that says what is served instead (OpenBao serves Go's pprof)."""
    client = await _client(aiohttp_client)
    stuck = asyncio.Event()

    async def hanging_fetch() -> None:
        await stuck.wait()

    task = asyncio.get_running_loop().create_task(hanging_fetch(), name="hanging-fetch")
    try:
        resp = await client.get("/v1/sys/pprof/goroutine?debug=2", headers=HEAD)
        assert resp.status == 200 and resp.headers["Content-Type"] == "text/plain; charset=utf-8"
        text = await resp.text()
        assert "thread " in text and "'MainThread':" in text
        assert "task 'hanging-fetch' [pending]:" in text and "in hanging_fetch" in text
    finally:
        stuck.set()
        await task
    for path in ("sys/pprof/heap", "sys/pprof/goroutine", "sys/pprof/profile?seconds=5"):
        resp = await client.get(f"/v1/{path}", headers=HEAD)
        assert resp.status == 400 and "sys/pprof/goroutine?debug=2 gives every thread's and task's stack" in (
            await resp.json())["errors"][0]
    token = await _token(client, [])
    assert (await client.get("/v1/sys/pprof/goroutine?debug=2", headers={"X-Vault-Token": token})).status == 403


async def test_replication_status_needs_no_token(aiohttp_client: Any) -> None:
    """As Vault's community edition answers it (OpenBao 2.7.2: 404, which ends every other
    capture of a default ``vault debug`` run)."""
    client = await _client(aiohttp_client)
    body = await (await client.get("/v1/sys/replication/status")).json()
    assert body["data"] == {"dr": {"mode": "disabled"}, "performance": {"mode": "disabled"}}
