"""A real, throw-away PostgreSQL server for tests: initdb in a temp dir, a free port, torn down after.

The pytest fixtures are available to every test (``tests/conftest.py``):
``postgres_server`` (session) starts one server; ``postgres_dsn`` gives each test a fresh
empty database. They skip only when no server binary exists and
``scripts/install-postgres.sh`` cannot install one. Run ``python -m tests.pg`` to start a
server by hand: it prints the DSN and stops on Ctrl-C.

PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user
(created by the Debian package; ``authmount-pg`` is created if it is missing).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

__all__ = ["PostgresServer", "PostgresUnavailable", "postgres_server", "postgres_dsn"]

REPO = Path(__file__).resolve().parent.parent
INSTALL_SCRIPT = REPO / "scripts" / "install-postgres.sh"
# Durability of the test server itself is not under test; these make initdb/tests faster.
FAST_OPTIONS = ("-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off")


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binary and it could not be installed (or it failed to start)."""


def find_bindir() -> str | None:
    """The newest ``/usr/lib/postgresql/<v>/bin`` holding ``postgres``, or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    return os.path.dirname(found[-1]) if found else None


def ensure_installed() -> str:
    """Return the server bin dir, running ``scripts/install-postgres.sh`` if it is missing.

    :raises PostgresUnavailable: with the reason, if it cannot be installed.
    """
    bindir = find_bindir()
    if bindir:
        return bindir
    try:
        proc = subprocess.run(
            ["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=900
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PostgresUnavailable(f"postgres binary missing and install failed: {exc}") from exc
    bindir = find_bindir()
    if not bindir:
        tail = (proc.stderr or proc.stdout).strip()[-500:]
        raise PostgresUnavailable(f"postgres binary missing and install failed: {tail}")
    return bindir


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_user() -> str | None:
    """The user to run the server as (None: the current, non-root user)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "authmount-pg"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "authmount-pg"],
        check=True,
        capture_output=True,
    )
    return "authmount-pg"


class PostgresServer:
    """One running PostgreSQL cluster in a temporary directory, listening on 127.0.0.1."""

    def __init__(self, bindir: str, extra_options: tuple[str, ...] = FAST_OPTIONS) -> None:
        self.bindir = bindir
        self.extra_options = extra_options
        self.user = _server_user()
        self.base = tempfile.mkdtemp(prefix="authmount-pg-")
        self.datadir = os.path.join(self.base, "data")
        self.logfile = os.path.join(self.base, "server.http.log")
        self.port = 0
        self.running = False

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [os.path.join(self.bindir, args[0]), *args[1:]]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(
            cmd, cwd=self.base, capture_output=True, text=True, timeout=timeout, check=False
        )

    def start(self, attempts: int = 3) -> PostgresServer:
        """initdb and start the server on a free port (retrying if the port got taken)."""
        if self.user:
            uid = pwd.getpwnam(self.user).pw_uid
            os.chown(self.base, uid, -1)
        proc = self._run("initdb", "-D", self.datadir, "-U", "postgres", "-A", "trust",
                         "-E", "UTF8", "--no-locale", "--no-sync")
        if proc.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {proc.stderr.strip()[-500:]}")
        for _ in range(attempts):
            self.port = _free_port()
            options = " ".join(
                (f"-p {self.port}", f"-k {self.base}", "-c listen_addresses=127.0.0.1",
                 *self.extra_options)
            )
            proc = self._run("pg_ctl", "-D", self.datadir, "-l", self.logfile, "-w",
                             "-t", "60", "-o", options, "start")
            if proc.returncode == 0:
                self.running = True
                return self
        log = Path(self.logfile).read_text(errors="replace")[-800:] if os.path.exists(
            self.logfile) else ""
        raise PostgresUnavailable(f"postgres did not start: {proc.stderr.strip()} {log}")

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq URL for ``dbname`` as the superuser ``postgres``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database and return its DSN."""
        name = name or "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def drop_database(self, dsn: str) -> None:
        """Drop a database made by ``create_database`` (disconnecting its clients)."""
        name = dsn.rsplit("/", 1)[1]
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """Stop the server (immediate shutdown) and delete its directory."""
        if self.running:
            self._run("pg_ctl", "-D", self.datadir, "-m", "immediate", "-w", "stop", timeout=60)
            self.running = False
        shutil.rmtree(self.base, ignore_errors=True)


def start_postgres() -> PostgresServer:
    """Install if needed, initdb and start a server. :raises PostgresUnavailable:"""
    server = PostgresServer(ensure_installed())
    try:
        return server.start()
    except BaseException:
        server.stop()
        raise


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session; skips if none can be installed."""
    try:
        bindir = ensure_installed()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    server = PostgresServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """The DSN of a fresh, empty database, dropped after the test."""
    dsn = postgres_server.create_database()
    yield dsn
    postgres_server.drop_database(dsn)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Start a server, print its DSN and wait for Ctrl-C / SIGTERM."""
    server = start_postgres()
    try:
        print(server.create_database("authmount"), flush=True)
        signal.signal(signal.SIGTERM, _interrupt)
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
