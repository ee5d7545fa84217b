"""The ``authmount`` command: ``authmount server --config F`` or ``authmount server --dev``."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from server import telemetry
from server.app import WORKER_ENV, StartupError, create_app
from server.appkeys import AUDIT, ROOT_TOKEN
from server.http.connguard import ConnectionGuard, descriptor_budget, raise_descriptor_limit
from server.http.listverb import ListVerbAppRunner
from server.http.log import configure_logging, flush_request_log
from server.keyring import StorageKeyError
from server.operator import rekey
from server.settings import Settings, SettingsError, dev_settings, load_settings
from server.sys.status import VERSION

__all__ = ["main", "serve"]

#: prometheus-client's multi-process directory (``--workers``): set by the supervisor.
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


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
    srv.add_argument("--dev-listen-address", "-dev-listen-address", default="127.0.0.1:8200", metavar="HOST:PORT",
                     help="listen address in dev mode (port 0 picks a free port)")
    srv.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="override log_level")
    srv.add_argument("--workers", type=int, metavar="N",
                     help="serve with N processes sharing the port (SO_REUSEPORT; PostgreSQL storage only)")
    op = sub.add_parser("operator", help="maintenance with the server stopped")
    ops = op.add_subparsers(dest="operation", required=True)
    rk = ops.add_parser("rekey", help="seal the keyring under a new storage key")
    rk.add_argument("--config", "-config", metavar="FILE", required=True, help="the server's YAML settings file")
    rk.add_argument("--new-key-file", "-new-key-file", metavar="PATH", required=True,
                    help="where to write the new storage key (must not exist)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"authmount v{VERSION}")
        return 0
    if args.command == "operator":
        return _operator(args)
    try:
        if args.dev:
            settings = dev_settings(args.dev_root_token_id, args.dev_listen_address)
        elif args.config:
            settings = load_settings(args.config)
        else:
            print("Error: either --config FILE or --dev is required", file=sys.stderr)
            return 2
    except SettingsError as exc:
        print(f"Error loading configuration: {exc}", file=sys.stderr)
        return 1
    if args.log_level:
        settings = replace(settings, log_level=args.log_level)
    if args.workers is not None:
        settings = replace(settings, workers=args.workers)
    problem = _workers_problem(settings)
    if problem:
        print(f"Error loading configuration: workers: {problem}", file=sys.stderr)
        return 1
    worker = os.environ.get(WORKER_ENV)
    if settings.workers > 1 and worker is None:
        return _supervise(settings.workers, list(argv) if argv is not None else sys.argv[1:])
    configure_logging(settings.log_level, settings.log_format)
    with asyncio.Runner(loop_factory=_loop_factory(settings.event_loop)) as runner:
        try:
            return runner.run(serve(settings, reuse_port=worker is not None, worker=int(worker or 0)))
        except (StartupError, SettingsError) as exc:
            print(f"Error starting server: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"Error starting server: {settings.listen_address}: {exc.strerror or exc}", file=sys.stderr)
            return 1


def _operator(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
        print(asyncio.run(rekey(settings, args.new_key_file)))
    except SettingsError as exc:
        print(f"Error loading configuration: {exc}", file=sys.stderr)
        return 1
    except (StorageKeyError, OSError, RuntimeError, ValueError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


async def serve(settings: Settings, *, reuse_port: bool = False, worker: int = 0) -> int:
    """Run until SIGTERM/SIGINT; finish in-flight requests, then close storage. Returns 0."""
    from aiohttp import web

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Bind before the app starts: a busy port must fail before a first start mints (and
    # would then never show) the root token.
    sock = _bind(*settings.host_port, reuse_port=reuse_port)
    app = create_app(settings)

    def reopen_audit() -> None:  # SIGHUP: logrotate moved the audit files
        broker = app.get(AUDIT)
        if broker is not None:
            broker.reopen()

    loop.add_signal_handler(signal.SIGHUP, reopen_audit)
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
        site = web.SockSite(runner, sock, backlog=LISTEN_BACKLOG)
        await site.start()
        root = app.get(ROOT_TOKEN)
        if worker == 0 or root:
            _banner(settings, _format_address(sock), root)
        await stop.wait()
        print("==> authmount shutdown triggered", file=sys.stderr, flush=True)
    finally:
        await runner.cleanup()
        sock.close()
        flush_request_log()
        telemetry.process_exit()
    return 0


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


def _workers_problem(settings: Settings) -> str | None:
    if settings.workers < 1:
        return "must be at least 1"
    if settings.workers == 1:
        return None
    if settings.storage.type != "postgres":
        return "more than one worker needs postgres storage (sqlite has one owner process, memory is per process)"
    if settings.host_port[1] == 0:
        return "more than one worker needs a fixed listen port"
    return None


def _supervise(count: int, argv: list[str]) -> int:
    """Start ``count`` worker processes on the same port; forward SIGTERM/SIGINT; wait.

    Returns 0 when every worker exited cleanly, else the first non-zero exit code.
    """
    # One metrics directory for all workers (prometheus-client's multi-process mode), unless
    # the operator chose one; a directory made here is removed when the workers are done.
    metrics_dir = os.environ.get(METRICS_DIR_ENV) or ""
    made_dir = not metrics_dir
    if made_dir:
        metrics_dir = tempfile.mkdtemp(prefix="authmount-metrics-")
    try:
        return _run_workers(count, argv, metrics_dir)
    finally:
        if made_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _run_workers(count: int, argv: list[str], metrics_dir: str) -> int:
    children = []
    for i in range(count):
        env = dict(os.environ, **{WORKER_ENV: str(i), METRICS_DIR_ENV: metrics_dir})
        children.append(subprocess.Popen([sys.executable, "-m", "server.cli", *argv], env=env))

    stopping: set[int] = set()

    def forward(signum: int, _frame: object) -> None:
        stopping.add(signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    def hangup(signum: int, _frame: object) -> None:  # reopen audit files: every worker
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, hangup)
    first_error = 0
    pending = list(children)
    while pending:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries os.wait
            continue
        code = os.waitstatus_to_exitcode(status)
        if code < 0 and -code in stopping:
            code = 0  # a worker still starting when asked to stop dies of that very signal
        for child in pending:
            if child.pid == pid:
                child.returncode = code
                pending.remove(child)
                break
        if code != 0 and not first_error:
            first_error = code if code > 0 else 1
            forward(signal.SIGTERM, None)  # one worker failed: stop the others too
    return first_error


def _banner(settings: Settings, bound: str, root_token: str | None) -> None:
    storage = settings.storage.type + (f" ({settings.storage.path})" if settings.storage.type == "sqlite" else "")
    lines = [
        "==> authmount server configuration:",
        "",
        f"             Api Address: http://{bound}",
        f"          Listen Address: {bound}",
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
            f"    $ export VAULT_ADDR='http://{bound}'",
            "",
        ]
    if root_token:
        if not settings.dev:
            lines += ["Initial root token (shown only once; it is stored hashed):", ""]
        lines += [f"Root Token: {root_token}", ""]
    lines.append("==> authmount server started! Log data will stream in below:")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
