"""``Refresh``: re-read a cached table when another node announces a change, losing none.

The mount table, the audit devices and the identity groups are cached in memory and
re-read when storage announces that another node (or worker) changed them. A re-read reads
storage at some point while it runs, so an announcement that arrives after that point is for
a change the re-read may have missed. Dropping such an announcement because a re-read was
already running left the node stale until the next change: a group alias written right after
its group (two announcements, moments apart) was never seen by the other node.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

__all__ = ["Refresh"]

log = structlog.get_logger("authmount.storage")

_T = TypeVar("_T")


class Refresh:
    """Runs ``reload`` after announcements, one run at a time, on the running event loop.

    ``request()`` starts a run, or, while one runs, makes another follow it, so the last
    run always starts after the last announcement. Any number of announcements during a
    run make one more run, not one each. A failing run is logged (``event``); the next
    announcement tries again.
    """

    __slots__ = ("_reload", "_event", "_task", "_again", "_error")

    def __init__(self, reload: Callable[[], Awaitable[None]], event: str) -> None:
        self._reload = reload
        self._event = event
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self._error: Exception | None = None  # what the last run raised

    def request(self) -> asyncio.Task[None]:
        """Re-read soon (a run that starts after this call); the task of the runs."""
        task = self._task
        if task is not None and not task.done():
            self._again = True
            return task
        task = self._task = asyncio.get_running_loop().create_task(self._run())
        return task

    async def now(self) -> None:
        """Re-read, and return once a run that started after this call is done. Cancelling
        the caller does not cancel the runs other callers wait for.

        :raises Exception: what that run raised (a storage failure).
        """
        await asyncio.shield(self.request())
        if self._error is not None:
            raise self._error

    async def unless(self, lookup: Callable[[], _T | None], *, shared: bool) -> _T | None:
        """``lookup()``; on a miss with storage that other nodes or workers write (``shared``),
        re-read (``now``) and look again: what another node wrote a moment ago is found
        before its announcement arrives. With one node a miss is a miss and reads nothing.
        Concurrent misses share one re-read."""
        found = lookup()
        if found is None and shared:
            await self.now()
            found = lookup()
        return found

    def cancel(self) -> None:
        """Stop (the owner closes)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()

    async def _run(self) -> None:
        again = True
        while again:
            self._again = False
            try:
                await self._reload()
                self._error = None
            except Exception as exc:  # the next announcement tries again
                self._error = exc
                log.exception(self._event)
            again = self._again
