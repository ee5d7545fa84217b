"""What a running server shows about itself to an operator troubleshooting it: its log as it
is written (``sys/monitor``, ``vault monitor``), the requests it is answering
(``sys/in-flight-req``), the host it runs on (``sys/host-info``) and its settings without
secrets (``sys/config/state/sanitized``), which is what ``vault debug`` collects.

With ``--workers N`` a monitor on any worker streams every worker's lines (``LogRelay``);
the rest is per process: each worker has its own requests in flight, as each Vault node has
its own (docs/operations.md, "Watching a running server").
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import os
import re
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import AsyncGenerator, Callable, Mapping
from pathlib import Path
from typing import Any

import orjson

from server.tokens.ttl import rfc3339

__all__ = [
    "LOG_HUB", "IN_FLIGHT", "LogHub", "LogRelay", "Monitor", "TooManyMonitors", "MONITOR_LEVELS", "MONITOR_FORMATS",
    "MAX_MONITORS", "MONITOR_BUFFER", "render_standard", "in_flight", "host_info", "sanitized_settings", "stacks",
]

#: Vault's monitor levels to the log's (authmount logs nothing below debug: trace is debug).
MONITOR_LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO,
                  "warn": logging.WARNING, "warning": logging.WARNING, "error": logging.ERROR}
MONITOR_FORMATS = ("standard", "json")
#: Monitors one process streams at once; one more is refused (each holds a connection and a buffer).
MAX_MONITORS = 16
#: Lines a monitor holds for a client that reads slowly; beyond, lines are counted and dropped.
MONITOR_BUFFER = 512
#: A monitor with nothing to send checks this often that its client is still there.
IDLE_TICK = 1.0
#: The log level numbers of an event's ``level`` name.
_LEVEL_NUMBERS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
                  "error": logging.ERROR, "critical": logging.CRITICAL, "exception": logging.ERROR}
#: hclog's level names, as ``vault monitor`` prints them.
_HCLOG_NAMES = {"debug": "DEBUG", "info": "INFO", "warning": "WARN", "error": "ERROR",
                "critical": "ERROR", "exception": "ERROR"}


class TooManyMonitors(Exception):
    """``MAX_MONITORS`` are streaming already."""


# -- sys/monitor: the log as it is written -----------------------------------------------------
_QUOTE = re.compile(r'[\s"=\\]|[\x00-\x1f\x7f-\x9f]')
_C1 = re.compile(r"[\x7f-\x9f]")


def _value(value: Any) -> str:
    """One ``key=value``'s value as hclog writes it: bare when it can be, else quoted, never
    a raw control character (a caller's path reaches the operator's terminal)."""
    if isinstance(value, str):
        if value and not _QUOTE.search(value):
            return value
        text = orjson.dumps(value).decode()
    elif value is None or isinstance(value, (bool, int, float)):
        return orjson.dumps(value).decode()
    else:
        text = orjson.dumps(value, default=str).decode()
    return _C1.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def render_standard(event: Mapping[str, Any]) -> str:
    """An event as ``vault monitor`` prints a line of Vault's (hclog's standard format):
    ``<time> [INFO]  <event>: key=value ...``."""
    level = str(event.get("level", "info"))
    head = f"[{_HCLOG_NAMES.get(level, level.upper())}]".ljust(7)
    rest = " ".join(f"{key}={_value(value)}" for key, value in event.items()
                    if key not in ("timestamp", "level", "event"))
    name = _value(str(event.get("event", "")))
    return f"{event.get('timestamp', '')} {head} {name}:{' ' + rest if rest else ''}"


class Monitor:
    """One ``sys/monitor`` client: the lines at ``level`` and above, rendered as they are
    logged (on whichever thread logs them), waiting in a bounded buffer for ``lines()``."""

    __slots__ = ("level", "json", "_hub", "_lines", "_dropped", "_wake", "_loop", "_thread", "_closed")

    def __init__(self, hub: LogHub, level: int, json: bool) -> None:
        self.level, self.json, self._hub = level, json, hub
        self._lines: deque[str] = deque()
        self._dropped = 0
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._closed = False

    def offer(self, event: Mapping[str, Any]) -> None:
        """Take one event (any thread)."""
        if len(self._lines) >= MONITOR_BUFFER:
            self._dropped += 1
            return
        self._lines.append(orjson.dumps(event, default=str).decode() if self.json else render_standard(event))
        self._notify()

    def close(self) -> None:
        """End ``lines()`` (the server is stopping)."""
        self._closed = True
        self._notify()

    def _notify(self) -> None:
        if threading.get_ident() == self._thread:
            self._wake.set()
            return
        try:
            self._loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:  # the loop is closed: nobody is reading
            pass

    async def lines(self) -> AsyncGenerator[bytes, None]:
        """The lines as they come, a chunk per wake-up; ``b""`` after ``IDLE_TICK`` seconds
        without any, so the writer can see a client that has gone. Ends when closed; leaving
        (or closing) the iterator unsubscribes."""
        try:
            while not self._closed:
                self._wake.clear()
                if not self._lines and not self._dropped:
                    try:
                        await asyncio.wait_for(self._wake.wait(), IDLE_TICK)
                    except TimeoutError:
                        yield b""
                    continue
                out = []
                if self._dropped:
                    dropped, self._dropped = self._dropped, 0
                    out.append(self._dropped_line(dropped))
                while self._lines:
                    out.append(self._lines.popleft())
                yield ("\n".join(out) + "\n").encode()
        finally:
            self._hub.remove(self)

    def _dropped_line(self, count: int) -> str:
        event = {"event": "monitor_dropped_lines", "dropped": count, "level": "warning",
                 "timestamp": rfc3339(time.time()),
                 "note": f"the client read too slowly: {count} lines were dropped (at most {MONITOR_BUFFER} wait)"}
        return orjson.dumps(event).decode() if self.json else render_standard(event)


_NONE = logging.CRITICAL + 10  # above every level: no monitor wants anything


class LogHub:
    """The monitors of this process. ``level`` is the lowest level any of them asks for, or
    a monitor of another worker (``relay``); above every level when there is none: the log's
    gate lets those events through to ``publish`` even when the log file takes only higher
    ones."""

    def __init__(self) -> None:
        self.monitors: tuple[Monitor, ...] = ()
        self.level = _NONE
        self.relay: LogRelay | None = None

    def open(self, level: int, json: bool) -> Monitor:
        """A new monitor. :raises TooManyMonitors: ``MAX_MONITORS`` are open."""
        if len(self.monitors) >= MAX_MONITORS:
            raise TooManyMonitors(f"{MAX_MONITORS} log monitors are streaming from this server already")
        monitor = Monitor(self, level, json)
        self._set((*self.monitors, monitor))
        return monitor

    def remove(self, monitor: Monitor) -> None:
        self._set(tuple(m for m in self.monitors if m is not monitor))

    def close_all(self) -> None:
        for monitor in self.monitors:
            monitor.close()
        if self.relay is not None:
            self.relay.close()
            self.relay = None
            self.refresh()

    def _set(self, monitors: tuple[Monitor, ...]) -> None:
        # One tuple, replaced whole: a thread that publishes iterates a snapshot.
        self.monitors = monitors
        if self.relay is not None:
            self.relay.listen(min((m.level for m in monitors), default=None))
        self.refresh()

    def refresh(self) -> None:
        """``level`` again, from this process's monitors and the other workers' (``relay``)."""
        remote = min((level for _, level in self.relay.peers), default=_NONE) if self.relay is not None else _NONE
        self.level = min(min((m.level for m in self.monitors), default=_NONE), remote)

    def publish(self, event: Mapping[str, Any]) -> None:
        """Hand one rendered-to-be event (its ``level`` a name) to every monitor that wants it,
        here and, through ``relay``, in the other workers."""
        number = _LEVEL_NUMBERS.get(str(event.get("level", "info")), logging.INFO)
        relay = self.relay
        if relay is not None:
            event = {**event, "worker": relay.worker}
            relay.send(event, number)
        self.publish_here(event, number)

    def publish_here(self, event: Mapping[str, Any], number: int) -> None:
        for monitor in self.monitors:
            if number >= monitor.level:
                monitor.offer(event)


class LogRelay:
    """How the workers of one server (``--workers N``) see each other's log lines, so that a
    monitor on any worker streams all of them.

    A worker with a monitor binds a Unix datagram socket in the supervisor's directory, named
    after its pid and the lowest level its monitors want (``<pid>-<level>.sock``). Every
    worker lists the directory once a second (``scan``) and sends each line at or above a
    peer's level to it, one datagram a line, never waiting: a line that finds the peer's
    buffer full, or a peer gone, is dropped. Received lines are handed to this worker's
    monitors only (never sent on)."""

    SCAN_INTERVAL = 1.0

    def __init__(self, hub: LogHub, directory: str, worker: int, *, ident: int | None = None) -> None:
        self.hub, self.directory, self.worker = hub, directory, worker
        self.ident = os.getpid() if ident is None else ident  # the pid (tests: two relays in one process)
        self.peers: tuple[tuple[str, int], ...] = ()
        self._out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._out.setblocking(False)
        self._in: socket.socket | None = None
        self._in_path = ""
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self.dropped = 0
        self.scan()

    def scan(self) -> None:
        """The peers listening now (their socket files), then again in ``SCAN_INTERVAL``."""
        mine, peers = f"{self.ident}-", []
        try:
            names = os.listdir(self.directory)
        except OSError:
            names = []
        for name in names:
            pid, _, rest = name.partition("-")
            level = rest.removesuffix(".sock")
            if name.startswith(mine) or not (pid.isdigit() and level.isdigit() and rest.endswith(".sock")):
                continue
            peers.append((os.path.join(self.directory, name), int(level)))
        self.peers = tuple(peers)
        self.hub.refresh()
        self._timer = self._loop.call_later(self.SCAN_INTERVAL, self.scan)

    def send(self, event: Mapping[str, Any], number: int) -> None:
        """One line to every peer that wants its level (any thread)."""
        data = b""
        for path, level in self.peers:
            if number < level:
                continue
            data = data or orjson.dumps(event, default=str)
            try:
                self._out.sendto(data, path)
            except OSError:  # full (a slow peer), gone (a worker restarted), too long
                self.dropped += 1

    def listen(self, level: int | None) -> None:
        """Receive the other workers' lines at ``level`` and above (None: stop)."""
        path = os.path.join(self.directory, f"{self.ident}-{level}.sock") if level is not None else ""
        if path == self._in_path:
            return
        self._stop_listening()
        if not path:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(path)
        except OSError:
            sock.close()
            return  # this worker's monitors then see its own lines only
        sock.setblocking(False)
        self._in, self._in_path = sock, path
        self._loop.add_reader(sock.fileno(), self._received)

    def _received(self) -> None:
        sock = self._in
        while sock is not None:
            try:
                data = sock.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            try:
                event = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(event, dict):
                self.hub.publish_here(event, _LEVEL_NUMBERS.get(str(event.get("level", "info")), logging.INFO))

    def _stop_listening(self) -> None:
        if self._in is not None:
            self._loop.remove_reader(self._in.fileno())
            self._in.close()
            self._in = None
            try:
                os.unlink(self._in_path)
            except OSError:
                pass
            self._in_path = ""

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._stop_listening()
        self._out.close()


#: This process's monitors (the log is configured per process: ``server.http.log``).
LOG_HUB = LogHub()


# -- sys/in-flight-req -------------------------------------------------------------------------
#: The requests this process is answering: request id -> (the aiohttp request, its
#: ``time.perf_counter()`` start). ``server.http.log.handled`` adds and removes them.
IN_FLIGHT: dict[str, tuple[Any, float]] = {}


def _peer(request: Any) -> str:
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return ""


def in_flight(redact: Callable[[str], str]) -> dict[str, Any]:
    """Vault's ``sys/in-flight-req`` body: each request by its id, with ``start_time``,
    ``client_remote_address`` (the peer, ``host:port``), ``request_path`` (through ``redact``,
    as the log shows it: a legacy path may hold a token), ``request_method`` and
    ``client_id`` (empty: authmount counts no clients)."""
    offset = time.time() - time.perf_counter()
    return {rid: {"start_time": rfc3339(offset + start), "client_remote_address": _peer(request),
                  "request_path": redact(request.path), "request_method": request.method, "client_id": ""}
            for rid, (request, start) in list(IN_FLIGHT.items())}


# -- sys/pprof/goroutine?debug=2 --------------------------------------------------------------
def stacks() -> str:
    """Every thread's stack and every asyncio task's, as text (Go's ``goroutine?debug=2``, which
    ``vault debug`` writes to ``goroutines.txt``): where a stuck request or a hanging fetch waits."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    parts = []
    for ident, frame in sorted(sys._current_frames().items()):
        lines = "".join(traceback.format_stack(frame))
        parts.append(f"thread {ident} {names.get(ident, '?')!r}:\n{lines}")
    try:
        tasks = sorted(asyncio.all_tasks(), key=lambda t: t.get_name())
    except RuntimeError:  # no running loop
        tasks = []
    for task in tasks:
        buffer = io.StringIO()
        task.print_stack(file=buffer)
        state = "done" if task.done() else "pending"
        parts.append(f"task {task.get_name()!r} [{state}]:\n{buffer.getvalue()}")
    return "\n".join(parts)


# -- sys/host-info ----------------------------------------------------------------------------
def _read(path: str) -> str:
    return Path(path).read_text(errors="replace")


def _cpus() -> list[dict[str, Any]]:
    cpus, cur = [], None
    names = {"vendor_id": "vendorId", "cpu family": "family", "model": "model", "physical id": "physicalId",
             "core id": "coreId", "model name": "modelName", "microcode": "microcode"}
    for line in _read("/proc/cpuinfo").splitlines():
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not sep:
            continue
        if key == "processor":
            cur = {"cpu": int(value), "vendorId": "", "family": "", "model": "", "stepping": 0, "physicalId": "",
                   "coreId": "", "cores": 1, "modelName": "", "mhz": 0.0, "cacheSize": 0, "flags": [], "microcode": ""}
            cpus.append(cur)
        elif cur is None:
            continue
        elif key in names:
            cur[names[key]] = value
        elif key == "stepping" and value.isdigit():
            cur["stepping"] = int(value)
        elif key == "cpu MHz":
            cur["mhz"] = float(value)
        elif key == "cache size":
            cur["cacheSize"] = int(value.split()[0]) if value.split() and value.split()[0].isdigit() else 0
        elif key in ("flags", "Features"):
            cur["flags"] = value.split()
    return cpus


_STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest", "guestNice")


def _cpu_times() -> list[dict[str, Any]]:
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    out = []
    for line in _read("/proc/stat").splitlines():
        parts = line.split()
        if not parts or not parts[0].startswith("cpu") or parts[0] == "cpu":
            continue
        times = dict(zip(_STAT_FIELDS, (int(v) / tick for v in parts[1:]), strict=False))
        out.append({"cpu": parts[0], **{k: round(times.get(k, 0.0), 2) for k in _STAT_FIELDS}})
    return out


def _disk(path: str = "/") -> list[dict[str, Any]]:
    st = os.statvfs(path)
    total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    inodes_used = st.f_files - st.f_ffree
    return [{"path": path, "total": total, "free": free, "used": used,
             "usedPercent": 100.0 * used / (used + free) if used + free else 0.0,
             "inodesTotal": st.f_files, "inodesUsed": inodes_used, "inodesFree": st.f_ffree,
             "inodesUsedPercent": 100.0 * inodes_used / st.f_files if st.f_files else 0.0}]


_MEMINFO = {"MemTotal": "total", "MemAvailable": "available", "MemFree": "free", "Active": "active",
            "Inactive": "inactive", "Buffers": "buffers", "Cached": "cached", "Dirty": "dirty",
            "Writeback": "writeback", "Shmem": "shared", "Slab": "slab", "SReclaimable": "sreclaimable",
            "SUnreclaim": "sunreclaim", "PageTables": "pagetables", "SwapCached": "swapcached",
            "CommitLimit": "commitlimit", "Committed_AS": "committedas", "SwapTotal": "swaptotal",
            "SwapFree": "swapfree", "Mapped": "mapped", "Hugepagesize": "hugepagesize"}


def _memory() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for line in _read("/proc/meminfo").splitlines():
        key, _, value = line.partition(":")
        if key in _MEMINFO and value.split():
            number = int(value.split()[0])
            out[_MEMINFO[key]] = number * 1024 if value.strip().endswith("kB") else number
    total = out.get("total", 0)
    # gopsutil's "used": what neither the free list, the buffers nor the page cache hold.
    out["used"] = max(total - out.get("free", 0) - out.get("buffers", 0) - out.get("cached", 0), 0)
    out["usedPercent"] = 100.0 * out["used"] / total if total else 0.0
    return out


def _os_release() -> dict[str, str]:
    values = {}
    for line in _read("/etc/os-release").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key] = value.strip().strip('"')
    return values


def _host() -> dict[str, Any]:
    uptime = float(_read("/proc/uptime").split()[0])
    try:
        release = _os_release()
    except OSError:
        release = {}
    try:
        hostid = _read("/etc/machine-id").strip()
    except OSError:
        hostid = ""
    uname = os.uname()
    return {"hostname": socket.gethostname(), "uptime": int(uptime), "bootTime": int(time.time() - uptime),
            "procs": sum(1 for p in os.listdir("/proc") if p.isdigit()), "os": sys.platform,
            "platform": release.get("ID", ""), "platformFamily": release.get("ID_LIKE", release.get("ID", "")),
            "platformVersion": release.get("VERSION_ID", ""), "kernelVersion": uname.release,
            "kernelArch": uname.machine, "hostid": hostid}


#: Each part of ``sys/host-info`` and how it is read; one that fails is a warning, as in Vault.
_HOST_PARTS: tuple[tuple[str, Callable[[], Any]], ...] = (
    ("cpu", _cpus), ("cpu_times", _cpu_times), ("disk", _disk), ("host", _host), ("memory", _memory),
)


def host_info() -> tuple[dict[str, Any], list[str]]:
    """Vault's ``sys/host-info`` data (gopsutil's names, from ``/proc`` on Linux) and a
    warning for each part that could not be read."""
    data: dict[str, Any] = {}
    warnings = []
    for name, read in _HOST_PARTS:
        try:
            data[name] = read()
        except (OSError, ValueError, IndexError) as exc:
            warnings.append(f"host info: error collecting {name} information: {exc}")
    data["timestamp"] = rfc3339(time.time())
    return data, warnings


# -- sys/config/state/sanitized ---------------------------------------------------------------
#: Settings whose values may hold credentials (a PostgreSQL password in the DSN): never shown.
_SECRET_SETTINGS = frozenset({"dsn"})
#: Seeded objects (mounts, roles, policies ...): shown by name (and type), never their bodies,
#: which may hold client secrets.
_NAMED_SEEDS = ("policies", "token_roles", "groups", "entities", "identity_token_keys", "identity_token_roles",
                "rate_limit_quotas", "oidc_scopes", "oidc_assignments", "oidc_clients", "oidc_providers")


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _section(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)  # networks of trusted_proxies


def _section(section: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(section):
        if "setting" not in f.metadata or f.name in _SECRET_SETTINGS:
            continue
        value = getattr(section, f.name)
        if f.name in ("mounts", "audit"):
            out[f.name] = [{"path": seed.path, "type": seed.type} for seed in value]
        elif f.name in _NAMED_SEEDS:
            out[f.name] = sorted(value)
        else:
            out[f.name] = _plain(value)
    return out


def sanitized_settings(settings: Any) -> dict[str, Any]:
    """The settings in effect (``server.settings.Settings``), as ``sys/config/state/sanitized``
    shows them: every setting of the table, a storage DSN left out, seeded mounts and audit
    devices by path and type, seeded policies, token roles, groups and entities by name."""
    out = _section(settings)
    out["dev"] = bool(getattr(settings, "dev", False))
    out["source"] = str(getattr(settings, "source", ""))
    return out
