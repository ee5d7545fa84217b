"""``sys/loggers`` (``vault write sys/loggers level=debug``): Vault's levels, texts and reset,
per process and not stored; the workers of one node share them through a file
(``SharedLevels``). docs/vault-differences.md, row 72."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from server.http import log
from server.sys import loggers
from tests.server.httpkit import Client, answer, dev_client

ROOT = "root-token-for-logger-tests"


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    c = await dev_client(aiohttp_client, ROOT, log_level="info")
    log.set_log_level("info")
    return c


async def call(client: Client, method: str, path: str, body: Any = None, token: str = ROOT) -> tuple[int, Any]:
    return await answer(client, method, path, body, token=token)


async def levels(client: Client) -> dict[str, str]:
    status, out = await call(client, "GET", "sys/loggers")
    assert status == 200
    return dict(out["data"])


async def test_every_logger_is_listed_at_the_configured_level(client: Client) -> None:
    assert await levels(client) == {name: "info" for name in loggers.LOGGER_NAMES}


def test_the_list_names_every_logger_of_the_code() -> None:
    """A logger added to the code is listed (and can be set by name)."""
    import re
    root = Path(__file__).resolve().parents[2]
    names = {m for f in [*root.glob("server/**/*.py"), *root.glob("plugin/**/*.py")]
             for m in re.findall(r'get_logger\("([^"]+)"\)', f.read_text())}
    assert names | {"authmount.request"} == set(loggers.LOGGER_NAMES)
    assert not any("get_logger(__name__)" in f.read_text() for f in root.glob("server/**/*.py"))


@pytest.mark.parametrize(("given", "shown", "level"), [
    ("trace", "trace", logging.DEBUG), (" TRACE ", "trace", logging.DEBUG), ("debug", "debug", logging.DEBUG),
    ("notice", "info", logging.INFO), ("info", "info", logging.INFO), ("warn", "warn", logging.WARNING),
    ("warning", "warn", logging.WARNING), ("err", "error", logging.ERROR), ("ERROR", "error", logging.ERROR),
    (" ", "info", logging.INFO),
])
async def test_vaults_level_names(client: Client, given: str, shown: str, level: int) -> None:
    assert (await call(client, "POST", "sys/loggers/authmount.keyring", {"level": given}))[0] == 204
    assert (await call(client, "GET", "sys/loggers/authmount.keyring"))[1]["data"] == {"authmount.keyring": shown}
    assert log.logger_levels()[1] == {"authmount.keyring": level}
    assert (await levels(client))["authmount.audit"] == "info"  # the others as they were


@pytest.mark.parametrize(("path", "body", "error"), [
    ("sys/loggers", {}, "level is required"),
    ("sys/loggers", {"level": ""}, "level is empty"),
    ("sys/loggers", {"level": "bogus"}, "invalid level provided: unknown log level: bogus"),
    ("sys/loggers/authmount.audit", {"level": 5}, "invalid level provided: unknown log level: 5"),
    ("sys/loggers/authmount.audit", {}, "level is required"),
    ("sys/loggers/nope", {"level": "debug"}, 'logger "nope" not found'),
])
async def test_vaults_refusals_change_nothing(client: Client, path: str, body: Any, error: str) -> None:
    assert await call(client, "POST", path, body) == (400, {"errors": [error]})
    assert set((await levels(client)).values()) == {"info"}


async def test_all_at_once_then_one_then_back_to_the_settings(client: Client) -> None:
    assert (await call(client, "POST", "sys/loggers", {"level": "debug"}))[0] == 204
    assert set((await levels(client)).values()) == {"debug"}
    assert (await call(client, "DELETE", "sys/loggers/authmount.request"))[0] == 204  # that one: the settings' level
    shown = await levels(client)
    assert shown.pop("authmount.request") == "info" and set(shown.values()) == {"debug"}
    assert (await call(client, "POST", "sys/loggers", {"level": "trace"}))[0] == 204  # all, even the one set alone
    assert set((await levels(client)).values()) == {"trace"}
    assert (await call(client, "DELETE", "sys/loggers"))[0] == 204
    assert set((await levels(client)).values()) == {"info"} and log.logger_levels() == (logging.INFO, {}, frozenset())
    assert await call(client, "DELETE", "sys/loggers/nope") == (400, {"errors": ['logger "nope" not found']})


async def test_put_back_to_a_configured_debug_reads_debug(aiohttp_client: AiohttpClient) -> None:
    client = await dev_client(aiohttp_client, ROOT, log_level="debug")
    assert (await call(client, "POST", "sys/loggers/plugin.login", {"level": "trace"}))[0] == 204
    assert (await call(client, "DELETE", "sys/loggers/plugin.login"))[0] == 204
    assert (await call(client, "GET", "sys/loggers/plugin.login"))[1]["data"] == {"plugin.login": "debug"}


async def test_an_unknown_name_reads_empty(client: Client) -> None:
    assert (await call(client, "GET", "sys/loggers/nope")) [1]["data"] == {}


async def test_setting_levels_needs_a_policy(client: Client) -> None:
    token = (await call(client, "POST", "auth/token/create", {"policies": ["default"]}))[1]["auth"]["client_token"]
    for method, path in (("GET", "sys/loggers"), ("POST", "sys/loggers"), ("DELETE", "sys/loggers/authmount.audit")):
        assert await call(client, method, path, {"level": "debug"}, token=token) == \
            (403, {"errors": ["permission denied"]})


async def test_a_worker_takes_another_workers_levels_at_its_next_look(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loggers.SharedLevels, "PERIOD", 0.01)
    follower, writer = loggers.SharedLevels(), loggers.SharedLevels()
    follower.start(str(tmp_path))  # nothing there yet: its levels stay
    writer.path = str(tmp_path / loggers.SharedLevels.FILE)
    try:
        assert log.logger_levels()[0] == logging.INFO
        log.set_logger_levels(logging.ERROR, {"plugin.login": logging.DEBUG})  # the other worker's write
        writer.publish()
        log.set_log_level("info")  # this worker's levels, until it looks again
        for _ in range(100):
            if log.logger_levels()[0] == logging.ERROR:
                break
            await asyncio.sleep(0.01)
        assert log.logger_levels() == (logging.ERROR, {"plugin.login": logging.DEBUG}, frozenset())
    finally:
        follower.stop()


async def test_workers_share_the_levels_through_the_directory(tmp_path: Path) -> None:
    """What one worker's write leaves in the supervisor's directory, another takes at its next
    look (here the same process stands for both: it reads the file after its levels changed)."""
    writer = loggers.SharedLevels()
    writer.start(str(tmp_path))
    log.set_logger_levels(logging.WARNING, {"authmount.keyring": logging.DEBUG}, frozenset({"authmount.keyring"}))
    writer.publish()
    writer.stop()
    log.set_log_level("info")
    reader = loggers.SharedLevels()
    reader.start(str(tmp_path))  # a worker (started again) reads the file at once
    reader.stop()
    assert log.logger_levels() == (logging.WARNING, {"authmount.keyring": logging.DEBUG},
                                   frozenset({"authmount.keyring"}))
    (tmp_path / "loggers.json").write_text("{not json")  # not ours: the levels stay
    reader.start(str(tmp_path))
    reader.stop()
    assert log.logger_levels()[0] == logging.WARNING
