"""The ``authmount`` command: ``server`` (``--config F``, ``--dev``, both: the file on top of
dev defaults), ``apply``/``export`` (configuration as code, ``server.gitops``) and
``operator`` (maintenance with the server stopped: ``rekey``, ``generate-root``, ``restore``;
and ``diagnose``, which may run beside the server)."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog

from server import telemetry
from server.app import StartupError, create_app
from server.appkeys import LISTEN_ADDRESS, ROOT_TOKEN
from server.diagnose import diagnose, render
from server.gitops.command import add_commands, run_apply, run_export
from server.http.connguard import ConnectionGuard, descriptor_budget, raise_descriptor_limit
from server.http.listverb import ListVerbAppRunner
from server.http.log import configure_logging, flush_request_log
from server.http.tls import reload_certificate, server_context
from server.keyring import StorageKeyError
from server.operator import generate_root, rekey
from server.reload import ReloadHook, add_reload_hook, reload_settings
from server.settings import Settings, SettingsError, dev_settings, load_settings, parse_workers, split_host_port
from server.snapshot import restore
from server.storage import shared_memory
from server.supervisor import REPLACEMENT_ENV, WORKER_ENV, Supervisor, follow_supervisor, report_ready
from server.sys.status import VERSION

__all__ = ["main", "serve"]

#: Overrides ``listen_address`` (``--listen-address`` wins over it).
LISTEN_ENV = "AUTHMOUNT_LISTEN_ADDRESS"

log = structlog.get_logger("authmount.server")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="authmount", description="A Vault-compatible JWT/OIDC auth server.")
    parser.add_argument("--version", "-version", action="version", version=f"authmount v{VERSION}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("version", help="print the version (as `vault version`)")
    srv = sub.add_parser("server", help="run the server")
    srv.add_argument("--config", "-config", metavar="FILE", help="YAML settings file")
    srv.add_argument("--dev", "-dev", action="store_true", help="in-memory dev server with a printed root token")
    srv.add_argument("--dev-root-token-id", "-dev-root-token-id", default="", metavar="ID",
                     help="root token id in dev mode (default: random)")
    srv.add_argument("--dev-listen-address", "-dev-listen-address", default=None, metavar="HOST:PORT",
                     help="listen address in dev mode (default 127.0.0.1:8200; port 0 picks a free port)")
    srv.add_argument("--listen-address", "-listen-address", default=None, metavar="HOST:PORT",
                     help=f"override listen_address (also {LISTEN_ENV}; the flag wins)")
    srv.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="override log_level")
    srv.add_argument("--workers", type=_workers_arg, metavar="N|auto",
                     help="serve with N processes sharing the port (SO_REUSEPORT) and the storage (SQLite or "
                          "PostgreSQL); auto: one per usable core")
    op = sub.add_parser("operator", help="maintenance with the server stopped, and its checks")
    ops = op.add_subparsers(dest="operation", required=True)
    rk = ops.add_parser("rekey", help="seal the keyring under a new storage key")
    rk.add_argument("--config", "-config", metavar="FILE", required=True, help="the server's YAML settings file")
    rk.add_argument("--new-key-file", "-new-key-file", metavar="PATH", required=True,
                    help="where to write the new storage key (must not exist)")
    gr = ops.add_parser("generate-root", help="create a new root token (a lost one's recovery) and print it once")
    gr.add_argument("--config", "-config", metavar="FILE", required=True, help="the server's YAML settings file")
    dg = ops.add_parser("diagnose", help="check a settings file as a start would, without serving (vault operator "
                                         "diagnose); the server may be running")
    dg.add_argument("--config", "-config", metavar="FILE", required=True, help="the server's YAML settings file")
    rs = ops.add_parser("restore", help="replace the whole storage with a snapshot (vault operator raft snapshot save)")
    rs.add_argument("--config", "-config", metavar="FILE", required=True, help="the server's YAML settings file")
    rs.add_argument("snapshot", metavar="SNAPSHOT", help="the snapshot file (checked whole before anything is written)")
    rs.add_argument("--check", "-check", action="store_true",
                    help="check the snapshot whole and write nothing (the server may run)")
    add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"authmount v{VERSION}")
        return 0
    if args.command == "operator":
        return _operator(args)
    if args.command == "apply":
        return run_apply(args)
    if args.command == "export":
        return run_export(args)
    if not args.dev and not args.config:
        print("Error: either --config FILE or --dev is required", file=sys.stderr)
        return 2
    loader = _settings_loader(args)
    try:
        settings = loader()
    except SettingsError as exc:
        print(f"Error loading configuration: {exc}", file=sys.stderr)
        return 1
    problem = _workers_problem(settings)
    if problem:
        print(f"Error loading configuration: workers: {problem}", file=sys.stderr)
        return 1
    worker = os.environ.get(WORKER_ENV)
    configure_logging(settings.log_level, settings.log_format)
    if settings.workers > 1 and worker is None:
        args_list = list(argv) if argv is not None else sys.argv[1:]
        if settings.storage.type == "memory":
            return _supervise_memory(settings.workers, args_list)
        sqlite_path = settings.storage.path if settings.storage.type == "sqlite" else None
        return Supervisor(settings.workers, args_list, sqlite_path=sqlite_path).run()
    if worker is not None:
        follow_supervisor()
    with asyncio.Runner(loop_factory=_loop_factory(settings.event_loop)) as runner:
        try:
            return runner.run(serve(settings, reuse_port=worker is not None, worker=int(worker or 0), loader=loader))
        except (StartupError, SettingsError) as exc:
            print(f"Error starting server: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"Error starting server: {settings.listen_address}: {exc.strerror or exc}", file=sys.stderr)
            return 1


def _settings_loader(args: argparse.Namespace) -> Callable[[], Settings]:
    """How the settings are built from the options (again on SIGHUP): the file (on top of
    the dev defaults with ``--dev``), then ``AUTHMOUNT_LISTEN_ADDRESS``, then the flags.

    The loader raises ``SettingsError`` naming the bad key.
    """

    def load() -> Settings:
        if args.dev:
            settings = dev_settings(args.dev_root_token_id, args.dev_listen_address, config=args.config)
        else:
            settings = load_settings(args.config)
        listen = args.listen_address or os.environ.get(LISTEN_ENV) or ""
        if listen:
            try:
                split_host_port(listen)
            except ValueError as exc:
                where = "--listen-address" if args.listen_address else LISTEN_ENV
                raise SettingsError(f"{where}: {exc}") from None
            settings = replace(settings, listen_address=listen)
        if args.log_level:
            settings = replace(settings, log_level=args.log_level)
        if args.workers is not None:
            settings = replace(settings, workers=args.workers)
        return settings

    return load


def _operator(args: argparse.Namespace) -> int:
    if args.operation == "diagnose":
        checks = diagnose(args.config)
        print(render(checks))
        return 1 if any(c.status == "fail" for c in checks) else 0
    try:
        settings = load_settings(args.config)
        if args.operation == "generate-root":
            token = asyncio.run(generate_root(settings))
            print("New root token (shown only once; it is stored hashed). Older root tokens stay valid.")
            print()
            print(f"Root Token: {token}")
            return 0
        if args.operation == "restore":
            print(restore(settings, Path(args.snapshot), check_only=args.check))
            return 0
        print(asyncio.run(rekey(settings, args.new_key_file)))
    except SettingsError as exc:
        print(f"Error loading configuration: {exc}", file=sys.stderr)
        return 1
    except (StorageKeyError, OSError, RuntimeError, ValueError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


async def serve(
    settings: Settings, *, reuse_port: bool = False, worker: int = 0, loader: Callable[[], Settings] | None = None
) -> int:
    """Run until SIGTERM/SIGINT; finish in-flight requests, then close storage. Returns 0.

    SIGHUP builds the settings again with ``loader`` and applies what can change while
    running (``server.reload``), logging what it did.
    """
    from aiohttp import web

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tls = server_context(settings)  # a bad certificate stops the start before anything else
    # Bind before the app starts: a busy port must fail before a first start mints (and
    # would then never show) the root token.
    sock = _bind(*settings.host_port, reuse_port=reuse_port)
    app = create_app(settings)
    app[LISTEN_ADDRESS] = sock.getsockname()[:2]  # the port a ":0" listen address got
    if tls is not None:
        add_reload_hook(app, _tls_reloader(tls), settings=frozenset({"tls_cert_file", "tls_key_file"}))
    current = [settings]
    reloads: set[asyncio.Task[None]] = set()

    def hangup() -> None:
        task = loop.create_task(_sighup(app, current, loader))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, hangup)
    guard = ConnectionGuard(
        per_ip=settings.max_connections_per_ip,
        max_total=descriptor_budget(raise_descriptor_limit(), settings.max_connections),
        exempt=settings.trusted_proxies,
    )
    runner = ListVerbAppRunner(
        app, guard=guard, header_timeout=settings.http_read_header_timeout, access_log=None,
        shutdown_timeout=settings.shutdown_timeout, keepalive_timeout=settings.http_idle_timeout,
    )
    try:
        await runner.setup()
        # The event loop calls listen() again with the site's backlog (aiohttp's default
        # is 128): pass ours, or a storm of new connections overflows the accept queue.
        site = web.SockSite(runner, sock, backlog=LISTEN_BACKLOG, ssl_context=tls)
        await site.start()
        root = app.get(ROOT_TOKEN)
        if (worker == 0 and not os.environ.get(REPLACEMENT_ENV)) or root:
            _banner(settings, _format_address(sock), root)
        report_ready()
        await stop.wait()
        print("==> authmount shutdown triggered", file=sys.stderr, flush=True)
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        for task in list(reloads):
            task.cancel()
        await runner.cleanup()
        sock.close()
        flush_request_log()
        telemetry.process_exit()
    return 0


async def _sighup(app: Any, current: list[Settings], loader: Callable[[], Settings] | None) -> None:
    """Reload: build the settings again, run the reload hooks, log what changed."""
    old = current[0]
    if loader is None:
        log.info("sighup_reload", changes=[], note="no settings loader: nothing to reload")
        return
    try:
        new = loader()
    except SettingsError as exc:
        log.error("sighup_reload_failed", error=str(exc), note="the running settings stay in effect")
        return
    changes = await reload_settings(app, old, new)
    current[0] = new
    log.info("sighup_reload", source=new.source or "(dev defaults)", changes=changes)


def _tls_reloader(context: ssl.SSLContext) -> ReloadHook:
    async def reload_tls_certificate(app: Any, old: Settings, new: Settings) -> list[str]:
        if not new.tls:
            return ["tls: turning TLS off needs a restart; the certificate in use stays"]
        reload_certificate(context, new)  # SettingsError: the old certificate stays in use
        return [f"tls certificate reloaded from {new.tls_cert_file}"]

    return reload_tls_certificate


def _loop_factory(name: str) -> Any:
    """The event loop constructor for the ``event_loop`` setting (None: asyncio's)."""
    if name == "uvloop":
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
            print("warning: event_loop uvloop is not installed; using asyncio", file=sys.stderr)
            return None
        return uvloop.new_event_loop
    return None


#: Pending connections the kernel queues for accept() (capped by net.core.somaxconn): a
#: fleet restarting opens many at once, and a full queue drops SYNs (1 s, 3 s retries).
LISTEN_BACKLOG = 1024


def _bind(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``OSError`` when it is taken)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family = infos[0][0]
    sock = socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG, reuse_port=reuse_port)
    sock.setblocking(False)
    return sock


def _format_address(sock: socket.socket) -> str:
    addr = sock.getsockname()
    host = addr[0]
    return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"


def _workers_arg(text: str) -> int:
    """``--workers``: an integer >= 1 or ``auto`` (the usable cores)."""
    try:
        return parse_workers(int(text) if text.strip().isdigit() else text, "--workers")
    except SettingsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _supervise_memory(count: int, argv: list[str]) -> int:
    """Memory storage with several workers: they share one database in a private directory
    in shared memory (``server.storage.shared_memory``), deleted when the server stops."""
    for stale in shared_memory.remove_stale():
        print(f"Removed the shared-memory directory of a server no longer running: {stale}", file=sys.stderr)
    try:
        directory = shared_memory.make_dir()
    except OSError as exc:
        print(f"Error starting server: storage: shared memory for the workers: {exc}", file=sys.stderr)
        return 1
    os.environ[shared_memory.MEMORY_DIR_ENV] = directory  # the workers inherit it
    try:
        return Supervisor(count, argv, sqlite_path=shared_memory.db_path(directory)).run()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _workers_problem(settings: Settings) -> str | None:
    if settings.workers < 1:
        return "must be at least 1"
    if settings.workers == 1:
        return None
    if settings.dev:
        return ("dev mode runs one process (each worker would make its own root token); for several workers "
                "use a config file, with storage type memory for an in-memory server")
    if settings.host_port[1] == 0:
        return "more than one worker needs a fixed listen port"
    return None


def _banner(settings: Settings, bound: str, root_token: str | None) -> None:
    storage = settings.storage.type + (f" ({settings.storage.path})" if settings.storage.type == "sqlite" else "")
    shared = shared_memory.shared_dir() if settings.storage.type == "memory" else None
    if shared:
        storage += f" (shared by the workers in {shared})"
    scheme = "https" if settings.tls else "http"
    lines = [
        "==> authmount server configuration:",
        "",
        f"             Api Address: {scheme}://{bound}",
        f"          Listen Address: {bound}",
        f"                     TLS: {'enabled' if settings.tls else 'disabled'}",
        f"                 Storage: {storage}",
        f"               Log Level: {settings.log_level}",
        "",
    ]
    if settings.dev:
        lines += [
            "WARNING! dev mode is enabled! In this mode, authmount runs entirely in-memory",
            "and starts with a root token already set. Do not run dev mode in production!",
            "",
            "You may need to set the following environment variables:",
            "",
            f"    $ export VAULT_ADDR='{scheme}://{bound}'",
            "",
        ]
    if root_token and settings.initial_root_token_file and not settings.dev:
        lines += [f"Initial root token written to {settings.initial_root_token_file} (mode 0600); it is stored "
                  "hashed: keep that file safe, or delete it once the token is stored elsewhere.", ""]
    elif root_token:
        if not settings.dev:
            lines += ["Initial root token (shown only once; it is stored hashed):", ""]
        lines += [f"Root Token: {root_token}", ""]
    lines.append("==> authmount server started! Log data will stream in below:")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
