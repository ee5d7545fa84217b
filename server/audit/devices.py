"""Where audit entries go: a file (``file``) or a socket (``socket``), Vault's two device types.

A file device appends whole lines with one ``write(2)`` on a descriptor opened ``O_APPEND``
(the broker hands it the entries of one event-loop turn at once): no lock and no flush, so
entries of concurrent requests (and of several ``--workers`` processes sharing the file)
never interleave; the write returns once the kernel has the lines, which is what a request
waits for. The file is opened again on ``reopen`` (SIGHUP, after logrotate moved it) and,
after a failed write, by the next write (at most every ``RETRY_SECONDS``).

A socket device keeps one connection (TCP, a Unix socket, or UDP datagrams) and reconnects
when it was lost; a write that cannot be handed to the kernel within ``write_timeout``
fails.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from plugin.errors import InvalidRequest
from plugin.schema import parse_duration
from server.settings import split_host_port

__all__ = ["Sink", "FileSink", "SocketSink", "build_sink", "COMMON_OPTIONS", "DEVICE_TYPES", "RETRY_SECONDS"]

#: A failed device is retried (file reopened, socket reconnected) at most this often.
RETRY_SECONDS = 0.5
#: Options every device type takes (Vault's), read by the broker's ``Format``.
COMMON_OPTIONS = ("hmac_accessor", "log_raw", "elide_list_responses", "format", "prefix")
DEVICE_TYPES = ("file", "socket")


def option_bool(options: Mapping[str, Any], name: str, default: bool) -> bool:
    """A boolean option given as a bool or Vault's string form (``"true"``, ``"false"``, ``"1"``...).

    :raises InvalidRequest: another value.
    """
    raw = options.get(name)
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("true", "1", "t", "yes"):
        return True
    if text in ("false", "0", "f", "no"):
        return False
    raise InvalidRequest(f"invalid value for option {name!r}: {str(raw)[:32]!r} is not a boolean")


class Sink:
    """One device's destination. ``write`` raises ``OSError`` (or ``TimeoutError``) when the
    entry did not reach it."""

    #: Writes complete without awaiting (``write_now``); else ``await write``.
    immediate = True

    def open(self) -> None:
        """Open (or check) the destination. :raises OSError: it cannot be opened."""

    async def connect(self) -> None:
        """Connect now (a socket device; enable checks the address this way).

        :raises OSError: it cannot.
        """

    def write_now(self, data: bytes) -> None:
        raise NotImplementedError

    async def write(self, data: bytes) -> None:
        self.write_now(data)

    def reopen(self) -> None:
        """Open the destination again (SIGHUP)."""

    async def close(self) -> None:
        """Release the destination."""


class FileSink(Sink):
    """``file_path``: a file (created with ``mode``, default ``0600``; ``0000`` leaves an
    existing file's mode alone), ``stdout``, or ``discard``."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        path = options.get("file_path")
        if not isinstance(path, str) or not path:
            raise InvalidRequest("file_path is required")
        self.path = path
        mode = str(options.get("mode") or "0600")
        try:
            self.mode = int(mode, 8)
        except ValueError:
            raise InvalidRequest(f"invalid value for option 'mode': {mode[:16]!r} is not an octal file mode") from None
        if not 0 <= self.mode <= 0o777:
            raise InvalidRequest(f"invalid value for option 'mode': {mode[:16]!r} is not an octal file mode")
        self._fd: int | None = None
        #: The open destination is a regular file: it takes each line whole or is full.
        self._regular = False
        self._retry_at = 0.0

    def open(self) -> None:
        if self.path in ("stdout", "discard"):
            return
        target = Path(self.path)
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, self.mode or 0o600)
        try:
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
            if self.mode and regular:
                os.fchmod(fd, self.mode)
        except OSError:
            os.close(fd)
            raise
        old, self._fd, self._regular = self._fd, fd, regular
        if old is not None:
            os.close(old)

    def write_now(self, data: bytes) -> None:
        if self.path == "discard":
            return
        fd = 1 if self.path == "stdout" else self._fd
        if fd is None:
            now = time.monotonic()
            if now < self._retry_at:
                raise OSError("audit file not open (retrying shortly)")
            self._retry_at = now + RETRY_SECONDS
            self.open()
            fd = self._fd
            assert fd is not None
        try:
            written = os.write(fd, data)
            if written != len(data):
                if self._regular:  # never for stdout, which open() leaves alone
                    # A regular file takes a line whole unless it is full. Writing the rest
                    # later could land after another worker's line: end the cut line here
                    # (best effort) so the next line starts on its own, and fail the request.
                    os.write(fd, b"\n")
                    raise OSError(errno.ENOSPC, f"audit line cut at {written} of {len(data)} bytes (file full?)")
                view = memoryview(data)[written:]  # a pipe or terminal: one writer, the rest follows
                while view:
                    view = view[os.write(fd, view):]
        except OSError:
            if fd != 1:
                self._drop()
            raise

    def _drop(self) -> None:
        fd, self._fd = self._fd, None
        self._retry_at = time.monotonic() + RETRY_SECONDS
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def reopen(self) -> None:
        if self.path in ("stdout", "discard"):
            return
        try:
            self.open()
        except OSError:
            self._drop()  # the next write says why (and tries again)
            raise

    async def close(self) -> None:
        self._drop()


class SocketSink(Sink):
    """``address`` (``host:port``, or a path for ``unix``), ``socket_type`` (``tcp``, ``udp``,
    ``unix``; default ``tcp``), ``write_timeout`` (default ``2s``)."""

    immediate = False
    #: Bytes a connection may hold unsent before a write waits for the peer to read.
    HIGH_WATER = 1 << 20

    def __init__(self, options: Mapping[str, Any]) -> None:
        address = options.get("address")
        if not isinstance(address, str) or not address:
            raise InvalidRequest("address is required")
        kind = str(options.get("socket_type") or "tcp")
        if kind not in ("tcp", "udp", "unix"):
            raise InvalidRequest(f"invalid value for option 'socket_type': {kind[:16]!r} (tcp, udp or unix)")
        if kind != "unix":
            try:
                split_host_port(address)
            except ValueError as exc:
                raise InvalidRequest(f"invalid value for option 'address': {exc}") from None
        try:
            self.timeout = float(parse_duration(options.get("write_timeout") or "2s")) or 2.0
        except ValueError as exc:
            raise InvalidRequest(f"invalid value for option 'write_timeout': {exc}") from None
        self.address, self.kind = address, kind
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.StreamReader | None = None
        self._datagram: asyncio.DatagramTransport | None = None
        self._lock = asyncio.Lock()
        self._retry_at = 0.0

    async def connect(self) -> None:
        async with self._lock:
            if self._connected():
                return
            now = time.monotonic()
            if now < self._retry_at:
                raise OSError(f"cannot connect to {self.address} (retrying shortly)")
            self._retry_at = now + RETRY_SECONDS
            try:
                async with asyncio.timeout(self.timeout):
                    await self._open()
            except TimeoutError:
                raise OSError(f"connecting to {self.address} timed out") from None
            self._retry_at = 0.0

    async def _open(self) -> None:
        await self.close()
        if self.kind == "unix":
            self._reader, self._writer = await asyncio.open_unix_connection(self.address)
        elif self.kind == "tcp":
            host, port = split_host_port(self.address)
            self._reader, self._writer = await asyncio.open_connection(host, port)
        else:
            host, port = split_host_port(self.address)
            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=(host, port))
            self._datagram = transport

    def _connected(self) -> bool:
        if self._datagram is not None:
            return not self._datagram.is_closing()
        writer, reader = self._writer, self._reader
        # A peer that closed its end shows as EOF on our reading side.
        return writer is not None and not writer.is_closing() and reader is not None and not reader.at_eof()

    async def write(self, data: bytes) -> None:
        if not self._connected():
            await self.connect()
        try:
            if self._datagram is not None:
                self._datagram.sendto(data)
                return
            writer = self._writer
            assert writer is not None
            writer.write(data)
            if writer.transport.get_write_buffer_size() > self.HIGH_WATER:
                async with asyncio.timeout(self.timeout):
                    await writer.drain()
        except (OSError, TimeoutError, RuntimeError) as exc:
            await self.close()
            if isinstance(exc, OSError):
                raise
            raise OSError(f"writing to {self.address} failed: {type(exc).__name__}") from None

    def write_now(self, data: bytes) -> None:  # pragma: no cover - the broker awaits write()
        raise RuntimeError("a socket device is written with write()")

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        datagram, self._datagram = self._datagram, None
        if datagram is not None:
            datagram.close()
        if writer is not None:
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            except (OSError, TimeoutError, RuntimeError):
                pass


def build_sink(kind: str, options: Mapping[str, Any]) -> Sink:
    """The sink of a device of type ``kind``.

    :raises InvalidRequest: an unknown type, an unknown option, a missing or bad option.
    """
    if kind == "file":
        known: tuple[str, ...] = ("file_path", "path", "mode")
    elif kind == "socket":
        known = ("address", "socket_type", "write_timeout")
    else:
        raise InvalidRequest(f"unknown audit device type {str(kind)[:32]!r} (file or socket)")
    unknown = sorted(k for k in options if k not in known and k not in COMMON_OPTIONS)
    if unknown:
        raise InvalidRequest(f"unknown options for a {kind} audit device: {', '.join(unknown)}")
    if str(options.get("format") or "json") != "json":
        raise InvalidRequest("invalid value for option 'format': only json is supported")
    if kind == "file":
        opts = dict(options)
        if "file_path" not in opts and "path" in opts:  # Vault's older name of the option
            opts["file_path"] = opts["path"]
        return FileSink(opts)
    return SocketSink(options)
