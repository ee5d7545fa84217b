"""What the durable engines' ``put_many`` share: every value is encoded before any write is
queued (a value that cannot be stored fails the whole call and writes nothing), and every
queued write is awaited before the first failure is raised (none is left running)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from plugin.storage import check_key, encode

__all__ = ["put_each"]


async def put_each(items: Sequence[tuple[str, object]], queue: Callable[[str, bytes], asyncio.Future[None]]) -> None:
    """Queue each (key, value) pair's encoded value with ``queue`` (the engine's batch), then
    wait for every one.

    :raises Exception: a key or value no engine can store (nothing queued), or the first
        write that failed (after all have finished).
    """
    encoded = []
    for key, value in items:
        check_key(key)
        encoded.append((key, encode(value)))
    futures = [queue(key, blob) for key, blob in encoded]
    error: BaseException | None = None
    for fut in futures:
        try:
            await fut
        except Exception as exc:  # noqa: BLE001 - wait for the others, then raise
            error = error or exc
    if error is not None:
        raise error
