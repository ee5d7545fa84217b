"""HTTP connections pinned to one worker of a ``--workers N`` server.

The kernel spreads new connections over the workers (``SO_REUSEPORT``), so a test cannot
choose one; it can find out which one it got. After a first request on a keep-alive
connection, the server's end of it is a socket some worker accepted: its inode is in
``/proc/net/tcp`` (by the two ports) and that worker holds it in ``/proc/<pid>/fd``.
``pinned(srv)`` opens connections until it has one to each live worker (Linux only).
"""

from __future__ import annotations

import http.client
import json
import os
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from tests.e2e.serverproc import ServerProc

__all__ = ["Pinned", "pinned", "worker_pids", "wait_for_workers"]


def worker_pids(srv: ServerProc) -> list[int]:
    """The supervisor's live children (its workers)."""
    pid = srv.proc.pid
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(c) for c in (task / "children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []
    return sorted(set(out))


def wait_for_workers(srv: ServerProc, count: int, *, exclude: Collection[int] = (), timeout: float = 60.0) -> list[int]:
    """Wait until the supervisor has ``count`` workers, none of them in ``exclude``, each
    answering on a pinned connection; their pids."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = worker_pids(srv)
        if len(pids) == count and not set(pids) & set(exclude):
            try:
                conns = pinned(srv, timeout=max(1.0, deadline - time.monotonic()))
            except AssertionError:
                continue
            for conn in conns.values():
                conn.close()
            if sorted(conns) == pids:
                return pids
        time.sleep(0.1)
    raise AssertionError(f"no {count} serving workers (besides {sorted(exclude)}) within {timeout}s")


def _inode(server_port: int, client_port: int) -> str | None:
    want_local, want_remote = f":{server_port:04X}", f":{client_port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[1].endswith(want_local) and fields[2].endswith(want_remote):
                return fields[9]
    return None


def _owner(inode: str, pids: list[int]) -> int | None:
    target = f"socket:[{inode}]"
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return pid
                except OSError:
                    continue
        except OSError:
            continue
    return None


class Pinned:
    """One keep-alive HTTP connection and the worker that serves it."""

    def __init__(self, host: str, port: int, token: str | None) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=30)
        self.token = token
        self.pid = 0

    def call(self, method: str, path: str, *, token: str | None = None, body: Any = None) -> tuple[int, Any]:
        """One API call (``token`` defaults to the root token, "" sends none): status, JSON."""
        tok = self.token if token is None else token
        headers = {"X-Vault-Token": tok} if tok else {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        self.conn.request(method, f"/v1/{path}", body=data, headers=headers)
        resp = self.conn.getresponse()
        raw = resp.read()
        return resp.status, (json.loads(raw) if raw else None)

    def ok(self, method: str, path: str, **kw: Any) -> Any:
        status, body = self.call(method, path, **kw)
        assert status in (200, 204), (self.pid, method, path, status, body)
        return body

    def close(self) -> None:
        self.conn.close()


def pinned(srv: ServerProc, *, timeout: float = 30.0) -> dict[int, Pinned]:
    """A connection to each live worker, keyed by pid (the others opened meanwhile are closed)."""
    host, _, port_text = srv.address.rpartition(":")
    port = int(port_text)
    found: dict[int, Pinned] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = worker_pids(srv)
        if pids and set(pids) <= set(found):
            break
        conn = Pinned(host, port, srv.root_token)
        try:
            status, _ = conn.call("GET", "sys/health")
            inode = _inode(port, conn.conn.sock.getsockname()[1]) if status == 200 and conn.conn.sock else None
        except (OSError, http.client.HTTPException):
            inode = None
        owner = _owner(inode, pids) if inode else None
        if owner is None or owner in found:
            conn.close()
            continue
        conn.pid = owner
        found[owner] = conn
    else:
        for conn in found.values():
            conn.close()
        raise AssertionError(f"could not reach every worker of {worker_pids(srv)} within {timeout}s")
    for pid in set(found) - set(pids):  # exited meanwhile
        found.pop(pid).close()
    return found
