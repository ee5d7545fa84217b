"""The nodes serving one storage, for ``sys/ha-status`` (``vault operator members``).

On storage several nodes share (PostgreSQL), every node (its first worker) writes a row
``core/nodes/<host>-<port>`` at start and every ``ECHO_INTERVAL`` seconds after: its host name,
the address it serves, the version it runs, when it started and when it last wrote
(``last_echo``). A node that stops deletes its row; one that died is no longer listed once its
row is ``STALE_AFTER`` seconds old, and its row is deleted by the next node start after
``FORGET_AFTER``. So during a rolling upgrade the list shows which node runs which version
(docs/operations.md, "Upgrade").

On SQLite (one node, however many workers) and in memory nothing is written: the node lists
itself. An idle embedded server writes nothing, and a flood of anonymous requests commits
nothing (tests/e2e/test_anonymous_exhaustion.py).

authmount has no active and standby nodes: every node serves every request, so each one is
listed with ``active_node: true``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from typing import Any

import structlog

from plugin.storage import Storage
from server.tokens.ttl import rfc3339

__all__ = ["ECHO_INTERVAL", "FORGET_AFTER", "NODES_PREFIX", "STALE_AFTER", "Node", "live_rows"]

log = structlog.get_logger("authmount.nodes")

NODES_PREFIX = "core/nodes/"
#: Seconds between a node's writes of its row.
ECHO_INTERVAL = 10.0
#: A row older than this is a node that stopped without deleting it.
STALE_AFTER = 3 * ECHO_INTERVAL
#: A node's start deletes the rows of nodes that stopped this long ago (pods come and go).
FORGET_AFTER = 3600.0


def _wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::", "[::]")


def _echoed(row: Any) -> float:
    """When a row was last written (0: not a row this module wrote)."""
    echo = row.get("last_echo") if isinstance(row, dict) else None
    return float(echo) if isinstance(echo, (int, float)) and not isinstance(echo, bool) else 0.0


def _shown(row: dict[str, Any]) -> dict[str, Any]:
    """A row as ``sys/ha-status`` lists it (OpenBao's fields)."""
    return {"hostname": row.get("hostname", ""), "api_address": row.get("api_address", ""), "cluster_address": "",
            "active_node": True, "last_echo": rfc3339(_echoed(row)), "version": row.get("version", "")}


class Node:
    """This node, and the others on storage they share (``shared``: PostgreSQL).

    ``address`` is the ``host:port`` the node listens on; a wildcard host is shown as the
    machine's host name, as a client would reach it. ``version``: what ``sys/health`` reports.
    ``start`` (the node's first worker) writes its row, echoes it and ``stop`` deletes it, on
    shared storage only.
    """

    def __init__(self, storage: Storage, address: tuple[str, int], *, tls: bool, version: str, shared: bool) -> None:
        self.storage, self.version, self.shared = storage, version, shared
        self.hostname = socket.gethostname()
        host, port = address
        shown = self.hostname if _wildcard(host) else host
        shown = f"[{shown}]" if ":" in shown else shown
        self.api_address = f"{'https' if tls else 'http'}://{shown}:{port}"
        self.key = NODES_PREFIX + f"{self.hostname}-{port}".replace("/", "_")
        self.started = time.time()
        self._task: asyncio.Task[None] | None = None

    def row(self) -> dict[str, Any]:
        return {"hostname": self.hostname, "api_address": self.api_address, "version": self.version,
                "started": self.started, "last_echo": time.time()}

    async def start(self) -> None:
        """Write the row now, then every ``ECHO_INTERVAL`` seconds in the background; forget
        the nodes that stopped over ``FORGET_AFTER`` seconds ago."""
        if not self.shared:
            return
        await self.storage.put(self.key, self.row())
        now = time.time()
        for key in await self.storage.list(NODES_PREFIX):
            if now - _echoed(await self.storage.get(NODES_PREFIX + key)) > FORGET_AFTER:
                await self.storage.delete(NODES_PREFIX + key)
        self._task = asyncio.get_running_loop().create_task(self._echo())

    async def _echo(self) -> None:
        while True:
            await asyncio.sleep(ECHO_INTERVAL)
            try:
                await self.storage.put(self.key, self.row())
            except Exception as exc:  # storage down: the next echo tries again; requests report it
                log.warning("node_echo_failed", error=str(exc))

    async def stop(self) -> None:
        """Stop echoing and delete the row (best effort: a failure leaves it to go stale)."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        try:
            await self.storage.delete(self.key)
        except Exception as exc:
            log.warning("node_row_not_deleted", error=str(exc))

    async def members(self) -> list[dict[str, Any]]:
        """``sys/ha-status``'s ``nodes``: on shared storage every row younger than
        ``STALE_AFTER``, by host and address; else this node."""
        if not self.shared:
            return [_shown(self.row())]
        live = await live_rows(self.storage)
        return [_shown(r) for r in sorted(live, key=lambda r: (str(r.get("hostname")), str(r.get("api_address"))))]


async def live_rows(storage: Storage) -> list[dict[str, Any]]:
    """The rows of the nodes that echoed in the last ``STALE_AFTER`` seconds (shared storage;
    ``authmount operator restore`` refuses while there is one)."""
    now = time.time()
    rows = [await storage.get(NODES_PREFIX + key) for key in await storage.list(NODES_PREFIX)]
    return [r for r in rows if isinstance(r, dict) and now - _echoed(r) <= STALE_AFTER]
