"""Fixtures shared by the server tests."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

import pytest
import structlog

from plugin.storage import InMemoryStorage
from server.http import log
from server.tokens.store import TokenStore
from tests.server.tokenkit import Clock


@pytest.fixture(autouse=True)
def log_state_restored(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The logging module's state as each test found it: a test that sets a level
    (``sys/loggers``, SIGHUP) or configures the format also decides whether request lines
    are pre-rendered (``_request_sink``) and so whether a later test's ``capture_logs``
    sees them; the outcome of a test must not depend on which files ran before it."""
    for name in ("_request_sink", "_level", "_format", "_base", "_by_name", "_traced", "_request_level"):
        monkeypatch.setattr(log, name, getattr(log, name))
    monkeypatch.setattr(logging.getLogger(), "level", logging.getLogger().level)
    configured = structlog.is_configured()
    config = structlog.get_config()
    yield
    if configured:
        structlog.configure(**config)
    else:
        structlog.reset_defaults()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(clock: Clock) -> AsyncIterator[TokenStore]:
    """A started TokenStore on in-memory storage, on ``clock``, without the sweeper."""
    s = TokenStore(InMemoryStorage(), clock=clock)
    await s.start(sweep=False)
    yield s
    await s.close()
