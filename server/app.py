"""``create_app(settings)``: the aiohttp application, its resources and startup seeding."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog
from aiohttp import web, web_response

from plugin.errors import PluginError
from plugin.framework import Backend, Connection, Operation, Request
from server import telemetry
from server.acl.policies import PolicyStore
from server.appkeys import (
    AUDIT,
    CLUSTER_ID,
    FETCHER,
    KEYRING,
    MOUNTS,
    POLICIES,
    ROOT_TOKEN,
    SETTINGS,
    STARTED_AT,
    STORAGE,
    TOKENS,
)
from server.audit import AuditBroker
from server.http.fetcher import AiohttpFetcher
from server.http.ratelimit import setup_ratelimit
from server.http.routes import setup_routes
from server.keyring import ENV_KEY, KEYRING_KEY, Keyring, StorageKeyError, key_fingerprint, load_storage_key
from server.mounts import MountEntry, MountTable, normalize_path
from server.settings import Settings, SettingsError
from server.storage import Engine, open_storage
from server.tokens.backend import TokenBackend
from server.tokens.store import ACCESSOR_PREFIX, ID_PREFIX, PARENT_PREFIX, TokenStore

__all__ = ["create_app", "seed", "StartupError", "SettingsError", "INIT_KEY", "CLUSTER_KEY", "WORKER_ENV"]

INIT_KEY = "core/init"
#: Set by ``authmount server --workers N`` in each worker's environment: its index.
WORKER_ENV = "AUTHMOUNT_WORKER_INDEX"
CLUSTER_KEY = "core/cluster"

log = structlog.get_logger("authmount.app")


class StartupError(RuntimeError):
    """The server cannot start (bad seed config, storage in use, ...); message names why."""


#: The ``Server`` header of every response, the parser's own error replies included. aiohttp
#: sends ``Python/<version> aiohttp/<version>``, which tells a scanner which CVEs to try;
#: it sets the header with ``setdefault`` from this module constant when a response is
#: prepared, so replacing the constant (in ``create_app``) covers every response at no
#: per-request cost.
SERVER_HEADER = "authmount"


def create_app(settings: Settings, *, storage: Engine | None = None) -> web.Application:
    """Build the application. ``storage`` (tests) replaces ``settings.storage`` and is
    not closed by the app."""
    vars(web_response)["SERVER_SOFTWARE"] = SERVER_HEADER  # the module's global (imported, not re-exported)
    app = web.Application(client_max_size=settings.max_request_size)
    app[SETTINGS] = settings
    setup_ratelimit(app)
    setup_routes(app)  # each handler wrapped with the request log + JSON errors: no middleware
    app.cleanup_ctx.append(_core_context(storage))
    return app


def _core_context(given_storage: Engine | None) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        storage: Engine
        if given_storage is not None:
            storage = given_storage
        else:
            try:
                storage = await open_storage(settings.storage.as_mapping())
            except (ValueError, RuntimeError, OSError) as exc:
                raise StartupError(f"storage: {exc}") from exc
        try:
            keyring = await _open_keyring(settings, storage)
        except StorageKeyError as exc:
            if given_storage is None:
                await storage.close()
            raise StartupError(f"storage key: {exc}") from exc
        mounts_ref: list[MountTable] = []
        tokens = TokenStore(
            storage, default_lease_ttl=settings.default_lease_ttl, max_lease_ttl=settings.max_lease_ttl,
            sealer=keyring, mount_exists=lambda accessor: not mounts_ref or mounts_ref[0].has_accessor(accessor),
            on_mint=lambda entry: telemetry.token_created(entry, mounts_ref[0] if mounts_ref else None),
        )
        policies = PolicyStore(storage)
        fetcher = AiohttpFetcher()
        audit = AuditBroker(storage, keyring)
        mounts: MountTable | None = None
        gauges: asyncio.Task[None] | None = None
        try:
            await tokens.start()
            await audit.load()
            app[AUDIT] = audit

            async def revoke(entry: MountEntry) -> None:
                await tokens.revoke_mount(entry.accessor)

            mounts = MountTable(
                storage, default_lease_ttl=settings.default_lease_ttl, max_lease_ttl=settings.max_lease_ttl,
                fetcher=fetcher, token_factory=_token_backend_factory(tokens, policies, lambda: app[MOUNTS]),
                on_disable=revoke, verbose_login_errors=settings.login_errors_show_expected, sealer=keyring,
            )
            mounts_ref.append(mounts)
            await mounts.load()
            app[STORAGE], app[TOKENS], app[POLICIES], app[MOUNTS], app[FETCHER] = storage, tokens, policies, mounts, fetcher
            app[KEYRING] = keyring
            app[STARTED_AT] = time.time()
            cluster = await storage.update(CLUSTER_KEY, lambda old: old or {"id": str(uuid.uuid4())})
            app[CLUSTER_ID] = cluster["id"]
            _watch(storage, mounts, policies, tokens, keyring, audit)
            await seed(app)
            app[ROOT_TOKEN] = await _initial_root_token(settings, storage, tokens)
            period = settings.telemetry.usage_gauge_period
            if period > 0 and os.environ.get(WORKER_ENV, "0") == "0":  # one process computes them
                gauges = asyncio.get_running_loop().create_task(telemetry.usage_gauges(tokens, mounts, period))
            log.info("server_started", mounts=sorted(mounts.mounts), storage=settings.storage.type,
                     audit_devices=sorted(audit.devices))
            yield
        finally:
            if gauges is not None:
                gauges.cancel()
            await audit.close()
            if mounts is not None:
                await mounts.close()
            await fetcher.close()
            await tokens.close()
            if given_storage is None:
                await storage.close()
            log.info("server_stopped", storage_closed=given_storage is None)

    return ctx


def _token_backend_factory(
    tokens: TokenStore, policies: PolicyStore, mounts: Callable[[], MountTable]
) -> Callable[[], Backend]:
    """The backend of the built-in ``token/`` mount (renewal looks mounts up lazily)."""
    def factory() -> Backend:
        return TokenBackend(tokens, policies=policies, mounts=mounts)

    return factory


#: Keys of the token store that no node caches (every use reads the row), see _watch.
UNCACHED_TOKEN_PREFIXES = (ID_PREFIX, ACCESSOR_PREFIX, PARENT_PREFIX)


def _watch(
    storage: Engine, mounts: MountTable, policies: PolicyStore, tokens: TokenStore, keyring: Keyring,
    audit: AuditBroker,
) -> None:
    """Route other nodes' writes to the caches that depend on them."""
    reloads: set[asyncio.Task[None]] = set()

    def invalidate(key: str) -> None:
        mounts.invalidate(key)
        policies.invalidate(key)
        tokens.invalidate(key)
        audit.invalidate(key)
        if key in (KEYRING_KEY, ""):  # another node rotated the keyring
            task = asyncio.get_running_loop().create_task(keyring.reload(storage))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

    storage.set_invalidation_callback(invalidate)
    # Token rows are read from the table on every use (no node caches them), so their
    # writes need no announcement; mount epochs are cached and stay announced.
    storage.set_unannounced_prefixes(UNCACHED_TOKEN_PREFIXES)


async def _open_keyring(settings: Settings, storage: Engine) -> Keyring:
    """The keyring, opened with the storage key (created with the keyring at first start).

    ``memory`` storage without ``AUTHMOUNT_STORAGE_KEY`` gets a key that lives as long as the
    process (as does the storage).

    :raises StorageKeyError: the key is missing, malformed or not the keyring's.
    """
    if settings.storage.type == "memory" and not os.environ.get(ENV_KEY):
        return await Keyring.open(storage, secrets.token_bytes(32))
    first = not await Keyring.exists(storage)
    key, where = load_storage_key(key_file=settings.storage.key_path or None, create=first)
    keyring = await Keyring.open(storage, key)
    log.info("storage_key_loaded", source=where, created=first, fingerprint=key_fingerprint(key))
    return keyring


async def _initial_root_token(settings: Settings, storage: Engine, tokens: TokenStore) -> str | None:
    """Create the root token on the very first start (always in dev mode)."""
    if settings.dev:
        await storage.put(INIT_KEY, {"initialized_at": time.time()})
        return await tokens.create_root(settings.dev_root_token_id or None)
    claim = str(uuid.uuid4())
    # Claim initialisation atomically so that only one of several nodes mints the token.
    stored = await storage.update(INIT_KEY, lambda old: old or {"initialized_at": time.time(), "claim": claim})
    if stored.get("claim") != claim:
        return None
    return await tokens.create_root()


async def seed(app: web.Application) -> None:
    """Create configured mounts, configs, roles and policies through the normal write path.

    :raises StartupError: naming the seed entry (``mounts[0].roles.ci: ...``).
    """
    settings = app[SETTINGS]
    table = app[MOUNTS]
    for i, spec in enumerate(settings.mounts):
        where = f"mounts[{i}]"
        try:
            norm = normalize_path(spec.path)
            mount = table.mounts.get(norm)
            if mount is None:
                await table.enable(norm, spec.type, description=spec.description, config=dict(spec.tune))
            elif mount.entry.type != spec.type:
                raise StartupError(f"{where}.type: {norm} is already mounted with type {mount.entry.type}")
            elif spec.tune or spec.description != mount.entry.description:
                await table.tune(norm, {**spec.tune, "description": spec.description})
        except PluginError as exc:
            raise StartupError(f"{where}: {exc}") from exc
        mount = table.mounts[norm]
        writes: list[tuple[str, str, dict[str, Any]]] = []
        if spec.config is not None:
            writes.append((f"{where}.config", "config", dict(spec.config)))
        for name, role in spec.roles.items():
            writes.append((f"{where}.roles.{name}", f"role/{name}", dict(role)))
        for label, path, data in writes:
            req = Request(
                operation=Operation.UPDATE, path=path, data=data, storage=mount.storage,
                system=mount.system, connection=Connection("127.0.0.1"),
            )
            try:
                await mount.backend.handle_request(req)
            except PluginError as exc:
                raise StartupError(f"{label}: {exc}") from exc
    broker = app[AUDIT]
    for i, device in enumerate(settings.audit):
        try:
            existing = broker.devices.get(normalize_path(device.path))
            wanted = {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in device.options.items()}
            if existing is None or (existing.type, existing.options, existing.description) != (
                device.type, wanted, device.description
            ):
                await broker.enable(device.path, device.type, description=device.description,
                                    options=dict(device.options), replace=True)
        except PluginError as exc:
            raise StartupError(f"audit[{i}]: {exc}") from exc
    store = app[POLICIES]
    for name, text in settings.policies.items():
        try:
            await store.put(name, text)
        except PluginError as exc:
            raise StartupError(f"policies.{name}: {exc}") from exc

