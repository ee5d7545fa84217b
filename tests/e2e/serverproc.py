"""Start a REAL ``authmount server`` process for end-to-end tests.

Usage::

    from tests.e2e.serverproc import start_server

    with start_server(dev=True) as srv:                # in-memory, random root token
        client = srv.client()                          # hvac.Client(url, token=root)
        ...
    assert srv.returncode == 0                         # stopped with SIGTERM

    with start_server(config={"storage": {"type": "sqlite", "path": str(tmp / "db")}},
                      workdir=tmp) as srv:             # a YAML config (dict, text or path)
        ...

The server listens on ``127.0.0.1:0`` unless the config says otherwise; the real port is
read from its ``Listen Address:`` banner line, so there is no free-port race (and the scheme
from ``Api Address:``: with TLS, pass ``ssl_context=`` trusting the server's CA, and holding
a client certificate if the server requires one, for the health check). ``start``
waits for ``GET /v1/sys/health`` to answer 200. ``root_token`` is the ``Root Token:``
printed on a first start (or in dev mode), else None: pass ``root_token=`` to reuse one
from an earlier start. ``stop()`` sends SIGTERM and returns the exit code; the process is
killed if it does not stop in time. stderr (the JSON log) is kept in ``<workdir>/server-N.log``
(``srv.log_text()``). The child gets no ``VAULT_TOKEN``/``VAULT_ADDR``.

``dev_server`` is a ready pytest fixture (function scope), available to every test (``tests/conftest.py``).
"""

from __future__ import annotations

import base64
import itertools
import os
import resource
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

if TYPE_CHECKING:
    import hvac

__all__ = ["ServerProc", "ServerStartError", "start_server", "dev_server", "as_json", "wait_for", "REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parents[2]
_counter = itertools.count(1)


def wait_for(probe: Callable[[], Any], timeout: float = 30.0) -> Any:
    """The first truthy answer of ``probe``, asked every 50 ms (a line a process printed, a
    file it wrote); AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("timed out")


def as_json(answer: object) -> dict[str, Any]:
    """An hvac call's answer as the JSON object hvac's default adapter returns (its stubs
    also allow the raw ``requests.Response`` of the raw adapter, or None)."""
    assert isinstance(answer, dict), f"not a JSON object: {answer!r}"
    return answer


class ServerStartError(RuntimeError):
    """The server exited or never became healthy; carries the exit code and output."""

    def __init__(self, message: str, returncode: int | None, stdout: str, stderr: str) -> None:
        super().__init__(f"{message}\n--- stdout ---\n{stdout[-4000:]}\n--- stderr ---\n{stderr[-4000:]}")
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


class ServerProc:
    """A running authmount process (see the module docstring)."""

    def __init__(self, proc: subprocess.Popen[str], log_path: Path, ssl_context: ssl.SSLContext | None = None) -> None:
        self.proc = proc
        self.log_path = log_path
        self.ssl_context = ssl_context
        self.scheme = "http"
        self.address = ""
        self.root_token: str | None = None
        self.stdout_lines: list[str] = []
        # The reader thread owns the pipe (and closes it at EOF); ``proc.stdout`` is cleared so
        # nobody closes it under the thread's feet (that would block on the buffer lock).
        self._stdout = proc.stdout
        proc.stdout = None
        self._started = threading.Event()
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()

    # -- properties --------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:40123``."""
        return f"{self.scheme}://{self.address}"

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def stdout_text(self) -> str:
        return "".join(self.stdout_lines)

    def log_text(self) -> str:
        """Everything the server wrote to stderr so far (its log)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def client(self, token: str | None = None, **kwargs: Any) -> hvac.Client:
        """An ``hvac.Client`` for this server, with the root token unless ``token`` is given."""
        import hvac

        return hvac.Client(url=self.url, token=token if token is not None else self.root_token, **kwargs)

    # -- lifecycle ---------------------------------------------------------------------
    def _read_stdout(self) -> None:
        assert self._stdout is not None
        try:
            for line in self._stdout:
                self.stdout_lines.append(line)
                text = line.strip()
                if text.startswith("Listen Address:") and not self.address:
                    self.address = text.split(":", 1)[1].strip()
                elif text.startswith("Api Address:"):
                    self.scheme = text.split(":", 1)[1].strip().split(":", 1)[0]
                elif text.startswith("Root Token:"):
                    self.root_token = text.split(":", 1)[1].strip()
                elif "server started!" in text:
                    self._started.set()
        finally:
            self._started.set()
            self._stdout.close()

    def wait_ready(self, timeout: float) -> None:
        """Wait for the banner and a 200 from ``/v1/sys/health``."""
        deadline = time.monotonic() + timeout
        if not self._started.wait(timeout):
            self._fail(f"no startup banner within {timeout:.0f}s")
        if self.proc.poll() is not None or not self.address:
            self._reader.join(2)
            self._fail(f"server exited with code {self.proc.wait(5)}")
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/v1/sys/health", timeout=2, context=self.ssl_context) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if self.proc.poll() is not None:
                self._fail(f"server exited with code {self.proc.returncode}")
            time.sleep(0.05)
        self._fail(f"health check did not pass within {timeout:.0f}s")

    def _fail(self, message: str) -> None:
        self.kill()
        code = self.proc.returncode
        raise ServerStartError(message, code, self.stdout_text(), self.log_text())

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait, and return the exit code (SIGKILL after ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_pipe()
        return int(self.proc.returncode)

    def kill(self) -> None:
        """SIGKILL (for crash tests)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._close_pipe()

    def _close_pipe(self) -> None:
        self._reader.join(5)  # the reader closes the pipe at EOF


def _write_config(config: Mapping[str, Any] | str | Path, workdir: Path) -> Path:
    if isinstance(config, Path):
        return config
    if isinstance(config, str) and "\n" not in config and config.endswith((".yaml", ".yml")) and Path(config).exists():
        return Path(config)
    if isinstance(config, Mapping):
        data = dict(config)
        data.setdefault("listen_address", "127.0.0.1:0")
        text = yaml.safe_dump(data, sort_keys=False)
    else:
        text = config
    path = workdir / f"authmount-{os.getpid()}-{next(_counter)}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def launch(
    *,
    config: Mapping[str, Any] | str | Path | None = None,
    dev: bool = False,
    root_token_id: str | None = None,
    workdir: Path | None = None,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    nofile: int | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> ServerProc:
    """Start the process without waiting (see ``start_server``). ``nofile`` sets the child's
    soft and hard ``RLIMIT_NOFILE`` (file descriptors)."""
    workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="authmount-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "server.cli", "server"]
    if dev:
        cmd += ["--dev", "--dev-listen-address", "127.0.0.1:0"]
        if root_token_id:
            cmd += ["--dev-root-token-id", root_token_id]
    if config is not None:
        cmd += ["--config", str(_write_config(config, workdir))]
    cmd += list(args)
    child_env = {k: v for k, v in os.environ.items() if k not in ("VAULT_TOKEN", "VAULT_ADDR")}
    child_env["PYTHONUNBUFFERED"] = "1"
    if _uses_postgres(config):
        # Nodes sharing a database share the storage key: as an operator of several nodes
        # would, give them one through the environment (a test may pass its own env).
        child_env.setdefault(STORAGE_KEY_ENV, TEST_STORAGE_KEY)
    child_env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + child_env.get("PYTHONPATH", "")
    if env:
        child_env.update(env)
    log_path = workdir / f"server-{next(_counter)}.log"
    with open(log_path, "w", encoding="utf-8") as log_file:
        proc = subprocess.Popen(
            cmd, cwd=str(workdir), env=child_env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=log_file, text=True, bufsize=1,
            preexec_fn=None if nofile is None else lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile)),
        )
    return ServerProc(proc, log_path, ssl_context)


#: The storage key every PostgreSQL node of the test suite shares (``launch``).
TEST_STORAGE_KEY = base64.b64encode(bytes(range(32))).decode()
STORAGE_KEY_ENV = "AUTHMOUNT_STORAGE_KEY"


def _uses_postgres(config: Mapping[str, Any] | str | Path | None) -> bool:
    if isinstance(config, Mapping):
        storage = config.get("storage")
        return isinstance(storage, Mapping) and storage.get("type") == "postgres" and not storage.get("key_file")
    if isinstance(config, Path) or (isinstance(config, str) and "\n" not in config and Path(config).is_file()):
        config = Path(config).read_text(encoding="utf-8")
    return isinstance(config, str) and "type: postgres" in config and "key_file" not in config


@contextmanager
def start_server(
    *,
    config: Mapping[str, Any] | str | Path | None = None,
    dev: bool = False,
    root_token_id: str | None = None,
    root_token: str | None = None,
    workdir: Path | None = None,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    nofile: int | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Iterator[ServerProc]:
    """Run an authmount server for the ``with`` block; stop it with SIGTERM afterwards.

    ``config`` is a dict (dumped to YAML, ``listen_address`` defaulting to
    ``127.0.0.1:0``), YAML text, or a path. Relative storage paths resolve against
    ``workdir`` (the process's cwd; a fresh temp dir by default).

    :raises ServerStartError: the process exited or did not become healthy in ``timeout``.
    """
    srv = launch(config=config, dev=dev, root_token_id=root_token_id, workdir=workdir, args=args, env=env,
                 nofile=nofile, ssl_context=ssl_context)
    try:
        srv.wait_ready(timeout)
        if srv.root_token is None and root_token is not None:
            srv.root_token = root_token
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def dev_server(tmp_path: Path) -> Iterator[ServerProc]:
    """A dev-mode authmount (in-memory storage) with its root token."""
    with start_server(dev=True, workdir=tmp_path) as srv:
        yield srv
