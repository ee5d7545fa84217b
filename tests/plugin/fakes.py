"""A test harness for the jwt backend: in-memory storage, a settable clock, a fake fetcher."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from plugin.backend import JWTAuthBackend
from plugin.framework import Connection, Operation, Request, Response, StaticSystemView
from plugin.storage import InMemoryStorage
from tests.plugin.keyfactory import FakeFetcher

__all__ = ["Clock", "Harness"]


@dataclass
class Clock:
    """A settable clock: ``clock()`` returns ``now``."""

    now: float = field(default_factory=lambda: float(int(time.time())))

    def __call__(self) -> float:
        return self.now


class Harness:
    """One mounted backend (Vault's test backend: default TTL 12h, max TTL 24h)."""

    def __init__(self, *, fetcher: FakeFetcher | None = None, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self.fetcher = fetcher or FakeFetcher()
        self.storage = InMemoryStorage()
        self.system = StaticSystemView(
            default_lease_ttl=12 * 3600,
            max_lease_ttl=24 * 3600,
            fetcher=self.fetcher,
            clock=self.clock,
        )
        self.backend = JWTAuthBackend()

    async def call(
        self, op: Operation, path: str, data: dict[str, Any] | None = None, *, remote_addr: str | None = None
    ) -> Response | None:
        """``handle_request`` with this harness's storage, system view and connection."""
        req = Request(
            operation=op,
            path=path,
            data=dict(data or {}),
            storage=self.storage,
            system=self.system,
            connection=Connection(remote_addr) if remote_addr else None,
        )
        return await self.backend.handle_request(req)

    async def write(self, path: str, data: dict[str, Any] | None = None, **kw: Any) -> Response | None:
        return await self.call(Operation.UPDATE, path, data, **kw)

    async def read(self, path: str) -> Response | None:
        return await self.call(Operation.READ, path)

    async def login(self, data: dict[str, Any], *, remote_addr: str | None = "127.0.0.1") -> Response:
        resp = await self.call(Operation.UPDATE, "login", data, remote_addr=remote_addr)
        assert resp is not None and resp.auth is not None
        return resp
