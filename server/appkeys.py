"""Every ``web.AppKey`` of the application, declared once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from server.mounts import MountTable
    from server.settings import Settings

__all__ = [
    "SETTINGS", "STORAGE", "TOKENS", "POLICIES", "MOUNTS", "FETCHER", "ROOT_TOKEN", "STARTED_AT", "CLUSTER_ID",
]

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
STORAGE: web.AppKey[Any] = web.AppKey("storage")
TOKENS: web.AppKey[Any] = web.AppKey("tokens")
POLICIES: web.AppKey[Any] = web.AppKey("policies")
MOUNTS: web.AppKey[MountTable] = web.AppKey("mounts")
FETCHER: web.AppKey[Any] = web.AppKey("fetcher")
#: The root token created at this start (first start or dev mode), else None. Never logged.
ROOT_TOKEN: web.AppKey[str | None] = web.AppKey("root_token")
STARTED_AT: web.AppKey[float] = web.AppKey("started_at")
CLUSTER_ID: web.AppKey[str] = web.AppKey("cluster_id")
