"""Start pinned server processes, wait for their port, read their RSS, and stop them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A port the kernel says is free right now (bind to port 0, then release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Block until something accepts on 127.0.0.1:port, or fail if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


def _children(pid: int) -> list[int]:
    """Direct children of pid (all threads), from /proc."""
    kids: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    try:
        for task in task_dir.iterdir():
            text = (task / "children").read_text().split()
            kids.extend(int(k) for k in text)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return kids


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (a multi-worker server forks its workers)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(_children(current))
    return out


def rss_fields(pid: int, fields: tuple[str, ...] = ("VmRSS", "RssAnon", "RssFile")) -> dict[str, int]:
    """Memory fields of /proc/<pid>/status summed over pid and its descendants, in bytes."""
    totals = dict.fromkeys(fields, 0)
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in totals:
                    totals[key] += int(value.split()[0]) * 1024
        except (FileNotFoundError, ProcessLookupError):
            continue
    return totals


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of pid and its descendants so far, in seconds (from /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / ticks


def rss_bytes(pid: int) -> int:
    """Resident set size of pid plus its descendants, in bytes (0 if gone)."""
    return rss_fields(pid, ("VmRSS",))["VmRSS"]


@dataclass
class Server:
    """A server process started by the harness (pinned with taskset), with its log file."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://127.0.0.1:{self.port}"

    def rss(self) -> int:
        """Current RSS of the server's process tree in bytes."""
        return rss_bytes(self.proc.pid)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server's process tree used so far, in seconds."""
        return cpu_seconds(self.proc.pid)

    def rss_anon(self) -> int:
        """Anonymous (heap) part of the RSS: what a leak grows, unlike cached file pages."""
        return rss_fields(self.proc.pid, ("RssAnon",))["RssAnon"]

    def log_text(self) -> str:
        """Everything the server wrote to stdout/stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the server's process group, then SIGKILL if it does not exit in time."""
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=timeout)


def start_pinned(
    name: str,
    argv: list[str],
    *,
    cpus: str,
    port: int,
    log_dir: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    wait: bool = True,
) -> Server:
    """Start argv under ``taskset -c cpus`` in its own process group, output to a log file.

    The output goes to a file, never a pipe: a server logging one line per request would
    block on a full pipe nobody reads.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        ["taskset", "-c", cpus, *argv],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        start_new_session=True,  # own process group: stop() reaches forked workers too
    )
    log.close()
    server = Server(name, port, proc, log_path)
    if wait:
        try:
            wait_for_port(port, proc)
        except Exception:
            server.stop()
            raise
    return server
