"""Fixtures shared by the server tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from plugin.storage import InMemoryStorage
from server.tokens.store import TokenStore
from tests.server.tokenkit import Clock


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
