"""Connections that never send a byte cannot exhaust the server (hardening issue, item 2).

Before: the header deadline started at the first byte, so a silent connection lived for
aiohttp's keep-alive timeout (an hour); 300 of them against a 256-descriptor limit made
``/v1/sys/health`` time out (``Too many open files`` in accept). Now the deadline starts at
accept (``http_read_header_timeout``), one client IP holds at most 256 connections
(``max_connections_per_ip``), and the process keeps descriptors in reserve, closing the
oldest idle connection to admit a new one.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
import requests

from tests.e2e.serverproc import ServerProc, start_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    """A server limited to 256 file descriptors, with a 2 s header deadline."""
    config = {"storage": {"type": "memory"}, "http_read_header_timeout": "2s"}
    with start_server(config=config, workdir=tmp_path_factory.mktemp("conns"), nofile=256) as srv:
        yield srv


def _port(srv: ServerProc) -> int:
    return int(srv.address.rsplit(":", 1)[1])


def _silent(port: int, source: str, n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((source, 0))
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        out.append(s)
    return out


def _closed_by_server(s: socket.socket, wait: float) -> bool:
    s.settimeout(wait)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_silent_connections_do_not_starve_the_server(small: ServerProc) -> None:
    port = _port(small)
    attackers = _silent(port, "127.0.0.2", 300)
    try:
        t0 = time.monotonic()
        for _ in range(3):
            resp = requests.get(f"http://127.0.0.1:{port}/v1/sys/health", timeout=5)
            assert resp.status_code == 200
        assert time.monotonic() - t0 < 5
        # Every silent connection is gone within the header deadline (2 s) of its accept.
        deadline = time.monotonic() + 5
        for s in attackers:
            assert _closed_by_server(s, max(0.1, deadline - time.monotonic())), "a silent connection outlived 5 s"
    finally:
        for s in attackers:
            s.close()
    log = small.log_text()
    assert "connection_evicted" in log or "connection_refused" in log


def test_one_client_holds_at_most_256_connections(dev_server: ServerProc) -> None:
    port = _port(dev_server)
    conns = _silent(port, "127.0.0.3", 260)
    try:
        refused = [s for s in conns[256:] if _closed_by_server(s, 2)]
        assert len(refused) == 4
        assert not _closed_by_server(conns[0], 0.2)  # the first ones are still open
        # Another address is not affected.
        assert requests.get(f"http://127.0.0.1:{port}/v1/sys/health", timeout=5).status_code == 200
    finally:
        for s in conns:
            s.close()
    assert "connection_refused" in dev_server.log_text()


def test_keep_alive_connection_still_works_across_requests(dev_server: ServerProc) -> None:
    """The deadline at accept does not touch a client that sends its request in time."""
    with requests.Session() as http:
        for _ in range(3):
            assert http.get(f"{dev_server.url}/v1/sys/health", timeout=5).status_code == 200
            time.sleep(0.2)
