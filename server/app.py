"""``create_app(settings)``: the aiohttp application, its resources and startup seeding."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable

import structlog
from aiohttp import web, web_response

from plugin.errors import PluginError
from plugin.framework import Backend
from server import telemetry
from server.acl.policies import PolicyStore
from server.appkeys import (
    AUDIT,
    CLUSTER_ID,
    CORS,
    FETCHER,
    IDENTITY,
    KEYRING,
    LISTEN_ADDRESS,
    MOUNTS,
    NODE,
    POLICIES,
    QUOTAS,
    RELOAD_HOOKS,
    ROOT_TOKEN,
    SETTINGS,
    STARTED_AT,
    STORAGE,
    TOKENS,
)
from server.audit import AuditBroker
from server.diagnostics import LOG_HUB, LogRelay
from server.gitops import AppServer, GitopsError, Plan, ServerError, apply_plan, from_settings, make_plan
from server.http.cors import Cors
from server.http.fetcher import AiohttpFetcher
from server.http.ratelimit import setup_ratelimit
from server.http.ratelimit_shared import inherited_table
from server.http.routes import setup_routes
from server.identity.store import IdentityStore, MountRef
from server.keyring import ENV_KEY, KEYRING_KEY, Keyring, StorageKeyError, key_fingerprint, load_storage_key
from server.mounts import MountEntry, MountTable, normalize_path
from server.nodes import Node
from server.quotas import Quotas
from server.reload import ReloadHook, reload_log_level, reload_rate_limits
from server.settings import Settings, SettingsError
from server.storage import Engine, open_storage, shared_memory
from server.storage.sqlite import SQLiteStorage
from server.supervisor import MONITOR_DIR_ENV, WORKER_ENV
from server.sys import keys, loggers, remount, versions
from server.sys.status import REPORTED_VERSION
from server.tokens.backend import TokenBackend
from server.tokens.store import ACCESSOR_PREFIX, ID_PREFIX, PARENT_PREFIX, TokenStore

__all__ = ["create_app", "seed", "seed_audit", "StartupError", "SettingsError", "INIT_KEY", "CLUSTER_KEY", "WORKER_ENV"]

INIT_KEY = "core/init"
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
    hooks: list[tuple[ReloadHook, frozenset[str]]] = [
        (reload_log_level, frozenset()), (reload_rate_limits, frozenset()), (_reseed, frozenset()),
        (_reload_audit, frozenset({"audit"})),
    ]
    app[RELOAD_HOOKS] = hooks
    setup_ratelimit(app)
    app[CORS] = Cors()
    setup_routes(app)  # each handler wrapped with the request log + JSON errors: no middleware
    app.cleanup_ctx.append(_core_context(storage))
    app.on_startup.append(_relay_monitors)
    app.on_shutdown.append(_end_monitors)
    return app


async def _relay_monitors(app: web.Application) -> None:
    """A worker of ``--workers N`` relays log lines to the other workers' monitors, and follows
    the log levels they set (``sys/loggers``)."""
    directory = os.environ.get(MONITOR_DIR_ENV)
    if directory and LOG_HUB.relay is None:
        LOG_HUB.relay = LogRelay(LOG_HUB, directory, int(os.environ.get(WORKER_ENV, "0")))
    if directory:
        loggers.SHARED.start(directory)  # the levels sys/loggers set, in every worker


async def _end_monitors(app: web.Application) -> None:
    """A stopping server ends its log monitors' streams (else shutdown would wait for them)."""
    LOG_HUB.close_all()
    loggers.SHARED.stop()


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
        identity = IdentityStore(storage, mounts=lambda accessor: _mount_ref(mounts_ref, accessor))
        tokens = TokenStore(
            storage, default_lease_ttl=settings.default_lease_ttl, max_lease_ttl=settings.max_lease_ttl,
            sealer=keyring, mount_exists=lambda accessor: not mounts_ref or mounts_ref[0].has_accessor(accessor),
            on_mint=lambda entry: telemetry.token_created(entry, mounts_ref[0] if mounts_ref else None),
            # Workers sharing a SQLite file (on disk, or memory storage's in /dev/shm) read a
            # mount's revocation epoch at every use: the read is local. PostgreSQL nodes cache it.
            identity=identity, fresh_epochs=storage.shared and isinstance(storage, SQLiteStorage),
        )
        policies = PolicyStore(storage)
        policies.identity = identity.template_view  # fills the identity templates of policies
        fetcher = AiohttpFetcher()
        audit = AuditBroker(storage, keyring)
        quotas = Quotas(storage, shared_fd=inherited_table())
        mounts: MountTable | None = None
        gauges: asyncio.Task[None] | None = None
        rotation: asyncio.Task[None] | None = None
        node: Node | None = None
        try:
            await tokens.start()
            await audit.load()
            app[AUDIT] = audit

            async def revoke(entry: MountEntry) -> None:
                await tokens.revoke_mount(entry.accessor)

            mounts = MountTable(
                storage, default_lease_ttl=settings.default_lease_ttl, max_lease_ttl=settings.max_lease_ttl,
                fetcher=fetcher, token_factory=_token_backend_factory(tokens, policies, lambda: app[MOUNTS]),
                on_disable=revoke, retired=tokens.accessor_retired,
                verbose_login_errors=settings.login_errors_show_expected, sealer=keyring,
            )
            mounts_ref.append(mounts)
            await mounts.load()
            await identity.load()
            await quotas.load()
            app[QUOTAS] = quotas
            await app[CORS].start(storage)
            app[STORAGE], app[TOKENS], app[POLICIES], app[MOUNTS], app[FETCHER] = storage, tokens, policies, mounts, fetcher
            app[IDENTITY] = identity
            app[KEYRING] = keyring
            app[STARTED_AT] = time.time()
            cluster = await storage.update(CLUSTER_KEY, lambda old: old or {"id": str(uuid.uuid4())})
            app[CLUSTER_ID] = cluster["id"]
            await versions.record(storage)
            _watch(storage, mounts, policies, tokens, keyring, identity, audit, quotas, app[CORS])
            await seed(app)
            await seed_audit(app, settings)
            app[ROOT_TOKEN] = await _initial_root_token(settings, storage, tokens)
            period = settings.telemetry.usage_gauge_period
            # Nodes share only PostgreSQL storage (SQLite's workers are one node's).
            node = app[NODE] = Node(storage, app.get(LISTEN_ADDRESS) or settings.host_port, tls=settings.tls,
                                    version=REPORTED_VERSION,
                                    shared=storage.shared and not isinstance(storage, SQLiteStorage))
            if os.environ.get(WORKER_ENV, "0") == "0":  # one process of a node does these
                await node.start()
                remount.resume(mounts, tokens, storage)  # mount moves whose revocation a stop cut short
                if period > 0:
                    gauges = asyncio.get_running_loop().create_task(telemetry.usage_gauges(tokens, mounts, period))
                rotation = asyncio.get_running_loop().create_task(keys.auto_rotate(storage, keyring, tokens))
            log.info("server_started", mounts=sorted(mounts.mounts), storage=settings.storage.type,
                     audit_devices=sorted(audit.devices))
            yield
        finally:
            for task in (gauges, rotation):
                if task is not None:
                    task.cancel()
            if node is not None:
                await node.stop()
            await audit.close()
            if mounts is not None:
                await mounts.close()
            await fetcher.close()
            await tokens.close()
            await identity.close()
            await quotas.close()
            await app[CORS].close()
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


def _mount_ref(table: list[MountTable], accessor: str) -> MountRef | None:
    """The auth mount with ``accessor``, as the identity store shows it."""
    if not table:
        return None
    for mount in table[0].mounts.values():
        if mount.entry.accessor == accessor:
            return MountRef(accessor, "auth/" + mount.entry.path, mount.entry.type)
    return None


def _watch(
    storage: Engine, mounts: MountTable, policies: PolicyStore, tokens: TokenStore, keyring: Keyring,
    identity: IdentityStore, audit: AuditBroker, quotas: Quotas, cors: Cors,
) -> None:
    """Route other nodes' writes to the caches that depend on them."""
    reloads: set[asyncio.Task[None]] = set()

    def invalidate(key: str) -> None:
        mounts.invalidate(key)
        policies.invalidate(key)
        tokens.invalidate(key)
        audit.invalidate(key)
        identity.invalidate(key)
        quotas.invalidate(key)
        cors.invalidate(key)
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
    process (as does the storage); its workers share one in their shared-memory directory.

    :raises StorageKeyError: the key is missing, malformed or not the keyring's.
    """
    key_file = settings.storage.key_path
    if settings.storage.type == "memory" and not os.environ.get(ENV_KEY):
        directory = shared_memory.shared_dir()
        if directory is None:
            return await Keyring.open(storage, secrets.token_bytes(32))
        key_file = shared_memory.key_path(directory)
    first = not await Keyring.exists(storage)
    key, where = load_storage_key(key_file=key_file or None, create=first)
    keyring = await Keyring.open(storage, key)
    log.info("storage_key_loaded", source=where, created=first, fingerprint=key_fingerprint(key))
    return keyring


async def _initial_root_token(settings: Settings, storage: Engine, tokens: TokenStore) -> str | None:
    """Create the root token on the very first start (always in dev mode); with
    ``initial_root_token_file`` also write it there (mode 0600).

    :raises StartupError: the token file exists (outside dev mode) or cannot be created;
        this is found before the token is made, so no token is lost.
    """
    path = settings.initial_root_token_file
    if settings.dev:
        await storage.put(INIT_KEY, {"initialized_at": time.time()})
        token = await tokens.create_root(settings.dev_root_token_id or None)
        if path:
            _replace_secret_file(path, token)
        return token
    fd = None
    if path and await storage.get(INIT_KEY) is None:
        fd = _create_secret_file(path)
    claim = str(uuid.uuid4())
    # Claim initialisation atomically so that only one of several nodes mints the token.
    stored = await storage.update(INIT_KEY, lambda old: old or {"initialized_at": time.time(), "claim": claim})
    if stored.get("claim") != claim:
        if fd is not None:
            os.close(fd)
            os.unlink(path)
        return None
    token = await tokens.create_root()
    if fd is not None:
        try:
            os.write(fd, token.encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        log.info("root_token_written", path=path)
    return token


def _create_secret_file(path: str) -> int:
    """A new file for a secret, mode 0600 (its directory made 0700 when missing).

    :raises StartupError: it exists or cannot be created.
    """
    try:
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise StartupError(
            f"initial_root_token_file: {path} exists; the first start writes a new root token there: move the "
            "old file away (or choose another path)"
        ) from None
    except OSError as exc:
        raise StartupError(f"initial_root_token_file: {path}: {exc.strerror}") from None


def _replace_secret_file(path: str, text: str) -> None:
    """Write ``text`` to ``path`` (mode 0600) in place of what was there (dev mode)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = _create_secret_file(tmp)
    try:
        os.write(fd, text.encode() + b"\n")
    finally:
        os.close(fd)
    os.replace(tmp, path)


async def _reseed(app: web.Application, old: Settings, new: Settings) -> list[str]:
    """SIGHUP: apply the file's mounts, policies, token roles, groups and entities again
    (drift made through the API is corrected, as at start)."""
    plan = await seed(app, new)
    return [f"seed: {c.action} {c.address}" for c in plan.changes] or ["seed: no changes"]


async def seed(app: web.Application, settings: Settings | None = None) -> Plan:
    """Apply the settings' declared sections (``mounts``, ``policies``, ``token_roles``,
    ``groups``, ``entities``, ``identity_token_keys``, ``identity_token_roles``,
    ``rate_limit_quotas``, ``cors``, ``oidc_*``) to this server: ``authmount apply`` without prune, through the same
    write paths as the API (``server.gitops``). Only what differs is written; a mount whose config or a role fails is
    not left half-made. Returns the plan that was applied (SIGHUP logs it).

    :raises StartupError: naming the file, the object and the field
        (``seed.yaml: role jwt/ci (mounts[0].roles.ci.token_ttl): ...``).
    """
    settings = settings if settings is not None else app[SETTINGS]
    server = AppServer(app)
    try:
        desired = from_settings(settings, source=settings.source or "settings")
        plan = await make_plan(desired, server)
        await apply_plan(plan, server)
    except (GitopsError, ServerError) as exc:
        raise StartupError(str(exc)) from exc
    for change in plan.changes:
        log.info("seed_applied", object=change.address, action=change.action,
                 fields=[f.name for f in change.fields])
    return plan


async def seed_audit(app: web.Application, settings: Settings) -> list[str]:
    """Enable the settings' ``audit`` devices (a device at the same path takes the declared
    type, description and options and keeps its salt); returns what changed.

    :raises StartupError: ``audit[<i>]: <why>`` (a device that cannot write, a bad option).
    """
    broker = app[AUDIT]
    changes = []
    for i, device in enumerate(settings.audit):
        try:
            existing = broker.devices.get(normalize_path(device.path))
            wanted = {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in device.options.items()}
            if existing is None or (existing.type, existing.options, existing.description) != (
                device.type, wanted, device.description
            ):
                enabled = await broker.enable(device.path, device.type, description=device.description,
                                              options=dict(device.options), replace=True)
                changes.append(f"audit: {'changed' if existing else 'enabled'} {enabled.path}")
        except PluginError as exc:
            raise StartupError(f"audit[{i}]: {exc}") from exc
    return changes


async def _reload_audit(app: web.Application, old: Settings, new: Settings) -> list[str]:
    """SIGHUP: open every audit file again (logrotate moved it) and apply the ``audit`` setting."""
    broker = app.get(AUDIT)
    if broker is None:
        return []
    reopened = [f"audit: reopened {', '.join(d.path for d in broker.active)}"] if broker.active else []
    broker.reopen()
    return reopened + await seed_audit(app, new)
