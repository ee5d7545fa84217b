"""Every ``web.AppKey`` of the application, declared once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from server.acl.policies import PolicyStore
    from server.audit import AuditBroker
    from server.http.cors import Cors
    from server.http.fetcher import AiohttpFetcher
    from server.http.routes import PrefixRouter
    from server.identity.store import IdentityStore
    from server.keyring import Keyring
    from server.mounts import MountTable
    from server.nodes import Node
    from server.quotas import Quotas
    from server.settings import Settings
    from server.storage import Engine
    from server.tokens.store import TokenStore

__all__ = [
    "SETTINGS", "STORAGE", "KEYRING", "TOKENS", "POLICIES", "IDENTITY", "MOUNTS", "FETCHER", "ROOT_TOKEN", "STARTED_AT", "QUOTAS", "CORS",
    "CLUSTER_ID", "LISTEN_ADDRESS", "NODE", "AUDIT", "RELOAD_HOOKS", "REQUEST_HANDLER", "REQUEST_ID", "MOUNT", "REMOTE_ADDR", "TOKEN_RAW", "ISSUED",
]

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
STORAGE: web.AppKey[Engine] = web.AppKey("storage")
KEYRING: web.AppKey[Keyring] = web.AppKey("keyring")
TOKENS: web.AppKey[TokenStore] = web.AppKey("tokens")
POLICIES: web.AppKey[PolicyStore] = web.AppKey("policies")
IDENTITY: web.AppKey[IdentityStore] = web.AppKey("identity")
MOUNTS: web.AppKey[MountTable] = web.AppKey("mounts")
#: The rate limit quotas (server.quotas.Quotas).
QUOTAS: web.AppKey[Quotas] = web.AppKey("quotas")
#: The CORS settings (server.http.cors.Cors): made with the routes, loaded with the storage.
CORS: web.AppKey[Cors] = web.AppKey("cors")
FETCHER: web.AppKey[AiohttpFetcher] = web.AppKey("fetcher")
#: The root token created at this start (first start or dev mode), else None. Never logged.
ROOT_TOKEN: web.AppKey[str | None] = web.AppKey("root_token")
STARTED_AT: web.AppKey[float] = web.AppKey("started_at")
CLUSTER_ID: web.AppKey[str] = web.AppKey("cluster_id")
#: The (host, port) the server's socket is bound to (set by ``authmount server`` before the
#: start; without it, the settings' ``listen_address``).
LISTEN_ADDRESS: web.AppKey[tuple[str, int]] = web.AppKey("listen_address")
#: This node, and the others serving the storage (server.nodes.Node: sys/ha-status).
NODE: web.AppKey[Node] = web.AppKey("node")
#: The audit devices (server.audit.AuditBroker).
AUDIT: web.AppKey[AuditBroker] = web.AppKey("audit")
#: What SIGHUP runs: ``(server.reload.ReloadHook, names of the settings it applies)``, in
#: order. Append with ``server.reload.add_reload_hook``.
RELOAD_HOOKS: web.AppKey[list[tuple[Any, frozenset[str]]]] = web.AppKey("reload_hooks")
#: What the server's connections hand each request to, in place of aiohttp's
#: ``Application._handle`` (``server.http.routes.PrefixRouter``).
REQUEST_HANDLER: web.AppKey[PrefixRouter] = web.AppKey("request_handler")

# -- per-request storage ---------------------------------------------------------------
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id")
#: The mount path serving the request (for the request log line).
MOUNT: web.RequestKey[str | None] = web.RequestKey("mount")
#: The effective client address (after trusted-proxy handling), computed once.
REMOTE_ADDR: web.RequestKey[str] = web.RequestKey("remote_addr")
#: The caller's raw token once authenticated (handed to the token/ backend only).
TOKEN_RAW: web.RequestKey[str] = web.RequestKey("token_raw")
#: The token a login issued: its Vault ``auth`` block (for the audit log's response entry).
ISSUED: web.RequestKey[dict[str, Any]] = web.RequestKey("issued")
