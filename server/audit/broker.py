"""The audit devices of one server: the table (``core/audit``), salts, and writing entries.

The table holds each device's path, type, description, options and salt; the salt (32
random bytes, the HMAC key of its entries) is sealed by the keyring under the context
``core/audit#salt``. Every node opens every device of the table (each writes to its own
file or connection); a change on one node reaches the others through the storage's
invalidation (``invalidate``).

Fail closed, as Vault: ``log_request`` and ``log_response`` write the entry to every device
and raise ``AuditUnavailable`` (503) when devices are enabled but none recorded it; one
working device is enough. File devices are written as a group: the entries of every request
that logs during one turn of the event loop go out together right after that turn, one
``write(2)`` per device, and each of those requests waits for that write (no lock: a slow
request never holds up another's entry).
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from prometheus_client import Counter

from plugin.errors import InvalidRequest, PluginError
from plugin.sealing import Sealer
from plugin.storage import Storage
from server import telemetry
from server.audit.devices import Sink, build_sink, option_bool
from server.audit.entry import Format, Hasher, Record, probe_record, request_line, response_line, stamp
from server.credentials import carries_credential
from server.mounts import normalize_path
from server.storage.refresh import Refresh
from server.telemetry import Observer

__all__ = ["AUDIT_KEY", "HEADERS_KEY", "SALT_CONTEXT", "AuditBroker", "AuditDevice", "AuditUnavailable"]

AUDIT_KEY = "core/audit"
#: Request headers written to the audit log (``sys/config/auditing/request-headers``).
HEADERS_KEY = "core/audited-headers"
SALT_CONTEXT = AUDIT_KEY + "#salt"

log = structlog.get_logger("authmount.audit")
#: Builds one entry line: (record, device format, time).
Line = Callable[[Record, Format, str], bytes]


class AuditUnavailable(PluginError):
    """No enabled audit device could record the request: it fails (fail closed). HTTP 503."""

    status = 503
    default_message = "audit unavailable: no audit device could record the request"

    def __init__(self) -> None:
        super().__init__()
        self.headers = {"Retry-After": "1"}


@dataclass(slots=True)
class AuditDevice:
    """One enabled device: its table entry, its sink and how it formats entries."""

    path: str
    type: str
    description: str
    options: dict[str, str]
    local: bool
    uuid: str
    salt: bytes
    sink: Sink
    fmt: Format
    #: The last write failed (and none succeeded since).
    failing: str = ""
    last_probe: float = field(default=0.0)

    def public(self) -> dict[str, Any]:
        """The ``sys/audit`` view (no salt)."""
        return {"type": self.type, "description": self.description, "options": dict(self.options),
                "path": self.path, "local": self.local}

    def put(self, data: bytes) -> bool:
        """Write one line to an ``immediate`` sink (a file); False when it did not land."""
        try:
            self.sink.write_now(data)
        except OSError as exc:
            return self._failed(exc)
        if self.failing:
            self._recovered()
        return True

    async def write(self, data: bytes) -> bool:
        """Write one line (any sink); False (counted, logged on the first failure) when it did not land."""
        if self.sink.immediate:
            return self.put(data)
        try:
            await self.sink.write(data)
        except (OSError, TimeoutError) as exc:
            return self._failed(exc)
        if self.failing:
            self._recovered()
        return True

    def _failed(self, exc: OSError | TimeoutError) -> bool:
        telemetry.AUDIT_DEVICE_FAILURES.labels(self.path).inc()
        reason = exc.strerror or str(exc) if isinstance(exc, OSError) else "timed out"
        if not self.failing:
            log.error("audit_device_failed", device=self.path, type=self.type, reason=reason)
        self.failing = reason or type(exc).__name__
        return False

    def _recovered(self) -> None:
        log.info("audit_device_recovered", device=self.path, type=self.type)
        self.failing = ""


def _options(raw: Any) -> dict[str, str]:
    """Vault's device options: a map of strings (booleans and numbers are written as strings)."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise InvalidRequest("'options' must be an object")
    out: dict[str, str] = {}
    for key, value in raw.items():
        if isinstance(value, bool):
            out[str(key)] = "true" if value else "false"
        elif isinstance(value, (str, int, float)):
            out[str(key)] = str(value)
        else:
            raise InvalidRequest(f"invalid value for option {str(key)[:32]!r}: must be a string")
    return out


def _format(options: Mapping[str, str], salt: bytes) -> Format:
    return Format(
        Hasher(salt),
        hmac_accessor=option_bool(options, "hmac_accessor", True),
        log_raw=option_bool(options, "log_raw", False),
        elide_list_responses=option_bool(options, "elide_list_responses", False),
        prefix=options.get("prefix", ""),
    )


def device_path(raw: str) -> str:
    """The one spelling of a device path: ``normalize_path``'s (``file`` is ``file/``)."""
    return normalize_path(raw)


class _Batch:
    """The file entries of one event-loop turn, per device, and the futures of the requests
    waiting for their write (one each: a request cancelled cancels only its own)."""

    __slots__ = ("devices", "lines", "waiters", "flushed")

    def __init__(self, devices: tuple[AuditDevice, ...]) -> None:
        self.devices = devices
        self.lines: list[list[bytes]] = [[] for _ in devices]
        self.waiters: list[asyncio.Future[bool]] = []
        self.flushed = False


class AuditBroker:
    """The devices of one server. ``sealer`` seals the salts (the keyring)."""

    def __init__(self, storage: Storage, sealer: Sealer) -> None:
        self.storage = storage
        self.sealer = sealer
        #: path -> device, in the order they were enabled.
        self.devices: dict[str, AuditDevice] = {}
        #: The devices entries are written to (a snapshot: changes replace it).
        self.active: tuple[AuditDevice, ...] = ()
        #: ``{lower-case header name: hash it}``
        self.headers: dict[str, bool] = {}
        self._immediate = True
        self._batch: _Batch | None = None
        self._lock = asyncio.Lock()
        self._refresh = Refresh(self.reload, "audit_reload_failed")
        #: False once ``close`` ran: a request still logging then fails closed.
        self._open = True

    # -- the table ----------------------------------------------------------------------------
    async def load(self) -> None:
        """Open every device of the stored table (a device that cannot be opened now is kept,
        failing: requests fail closed until it works or another device is enabled)."""
        async with self._lock:
            await self._apply(await self.storage.get(AUDIT_KEY))
            self.headers = _header_table(await self.storage.get(HEADERS_KEY))

    async def _apply(self, stored: Any) -> None:
        entries = [e for e in (stored or {}).get("entries", []) if isinstance(e, dict)]
        new: dict[str, AuditDevice] = {}
        for e in entries:
            current = self.devices.get(e.get("path", ""))
            if current is not None and current.uuid == e.get("uuid") and current.options == e.get("options"):
                new[current.path] = current
                continue
            try:
                device = self._device(e)
            except (PluginError, ValueError, KeyError, TypeError) as exc:
                log.error("audit_device_unusable", device=e.get("path"), reason=str(exc))
                continue
            try:
                device.sink.open()
            except OSError as exc:
                device.failing = exc.strerror or str(exc)
                log.error("audit_device_failed", device=device.path, type=device.type, reason=device.failing)
            new[device.path] = device
        gone = [d for p, d in self.devices.items() if new.get(p) is not d]
        if self._batch is not None:
            # Entries of this turn were built for the devices enabled when their requests
            # started: write them there before a removed device's sink closes (otherwise
            # those requests would fail closed on a device that was merely disabled).
            self._flush(self._batch)
        self._install(new)
        for device in gone:
            await device.sink.close()

    def _device(self, e: Mapping[str, Any]) -> AuditDevice:
        salt = self.sealer.unseal(e["salt"], SALT_CONTEXT)
        options = dict(e.get("options") or {})
        return AuditDevice(
            path=e["path"], type=e["type"], description=e.get("description", ""), options=options,
            local=bool(e.get("local", False)), uuid=e.get("uuid", ""), salt=salt,
            sink=build_sink(e["type"], options), fmt=_format(options, salt),
        )

    async def enable(
        self, path: str, kind: Any, *, description: Any = "", options: Any = None, local: Any = False,
        replace: bool = False,
    ) -> AuditDevice:
        """Enable a device after a test entry reached it (Vault writes the same test).

        ``replace`` (a device declared in the settings): an existing device at ``path`` takes
        the new type, description and options and keeps its salt.

        :raises InvalidRequest: a bad path, type or option, ``path already in use``, or
            ``audit device "<path>" cannot write: <reason>``.
        """
        norm = device_path(path)
        if not isinstance(kind, str) or not kind:
            raise InvalidRequest("missing audit device type")
        if not isinstance(description, str):
            raise InvalidRequest("'description' must be a string")
        opts = _options(options)
        sink = build_sink(kind, opts)
        async with self._lock:
            existing = self.devices.get(norm)
            if existing is not None and not replace:
                raise InvalidRequest("path already in use")
            salt = existing.salt if existing is not None else secrets.token_bytes(32)
            device = AuditDevice(
                path=norm, type=kind, description=description, options=opts, local=bool(local),
                uuid=existing.uuid if existing is not None else str(uuid.uuid4()), salt=salt, sink=sink,
                fmt=_format(opts, salt),
            )
            try:
                await sink.connect()
                sink.open()
                await self._test(device)
            except OSError as exc:
                await sink.close()
                raise InvalidRequest(f'audit device "{norm}" cannot write: {exc.strerror or exc}') from None
            stored_entry = {
                "path": norm, "type": kind, "description": description, "options": opts, "local": bool(local),
                "uuid": device.uuid, "salt": self.sealer.seal(salt, SALT_CONTEXT),
            }

            def add(old: Any) -> Any:
                entries = [e for e in (old or {}).get("entries", []) if isinstance(e, dict)]
                if any(e.get("path") == norm for e in entries):
                    if not replace:
                        raise InvalidRequest("path already in use")
                    entries = [e if e.get("path") != norm else stored_entry for e in entries]
                else:
                    entries.append(stored_entry)
                return {"entries": entries}

            try:
                await self.storage.update(AUDIT_KEY, add)
            except BaseException:
                await sink.close()
                raise
            devices = dict(self.devices)
            devices[norm] = device
            self._install(devices)
        if existing is not None:
            await existing.sink.close()
        log.info("audit_device_enabled", device=norm, type=kind)
        return device

    async def _test(self, device: AuditDevice) -> None:
        data = request_line(probe_record(), device.fmt, stamp())
        if device.sink.immediate:
            device.sink.write_now(data)
        else:
            await device.sink.write(data)

    async def disable(self, path: str) -> bool:
        """Disable the device at ``path``; False when there was none."""
        norm = device_path(path)
        async with self._lock:

            def remove(old: Any) -> Any:
                entries = [e for e in (old or {}).get("entries", []) if isinstance(e, dict)]
                return {"entries": [e for e in entries if e.get("path") != norm]}

            await self.storage.update(AUDIT_KEY, remove)
            device = self.devices.get(norm)
            if device is None:
                return False
            if self._batch is not None:  # this turn's entries were built for it: write them before it closes
                self._flush(self._batch)
            devices = {p: d for p, d in self.devices.items() if p != norm}
            self._install(devices)
        await device.sink.close()
        log.info("audit_device_disabled", device=norm)
        return True

    def listing(self) -> dict[str, Any]:
        """``sys/audit``: every device by path."""
        return {path: device.public() for path, device in self.devices.items()}

    def hash(self, path: str, value: str) -> str:
        """``sys/audit-hash``: the device's HMAC of ``value``.

        Always hashed, as Vault's ``GetHash``, also on a ``log_raw`` device (whose entries
        still hash what is hashed whatever ``log_raw`` says: the IdP tokens of a login).

        :raises InvalidRequest: no such device.
        """
        device = self.devices.get(device_path(path))
        if device is None:
            raise InvalidRequest("unknown audit backend")
        return device.fmt.hmac(value)

    # -- audited request headers --------------------------------------------------------------
    async def set_header(self, name: str, hashed: bool) -> None:
        """Write ``name`` (case-insensitive) to the ``headers`` of request entries."""
        key = name.lower()
        value = hashed or carries_credential(key)

        def put(old: Any) -> Any:
            table = dict(old or {})
            table[key] = {"hmac": value}
            return table

        self.headers = _header_table(await self.storage.update(HEADERS_KEY, put))

    async def delete_header(self, name: str) -> None:
        key = name.lower()

        def drop(old: Any) -> Any:
            table = dict(old or {})
            table.pop(key, None)
            return table

        self.headers = _header_table(await self.storage.update(HEADERS_KEY, drop))

    def audited_headers(self, headers: Mapping[str, str]) -> dict[str, tuple[list[str], bool]] | None:
        """The request's audited headers: ``{name: ([values], hash them)}``; None when none."""
        table = self.headers
        if not table:
            return None
        out: dict[str, tuple[list[str], bool]] = {}
        getall = getattr(headers, "getall", None)
        for name, hashed in table.items():
            values = list(getall(name, ())) if getall is not None else ([headers[name]] if name in headers else [])
            if values:
                out[name] = (values, hashed)
        return out or None

    # -- writing ------------------------------------------------------------------------------
    def log_request(self, rec: Record) -> Awaitable[None] | None:
        """Write the request entry of ``rec`` to every device. None when no device is
        enabled; else an awaitable that ends once the entry is written (files: the group
        write after this turn of the event loop; a socket device: its own write).

        :raises AuditUnavailable: devices are enabled and none recorded it.
        """
        return self._log(rec, request_line, telemetry.AUDIT_LOG_REQUEST, telemetry.AUDIT_LOG_REQUEST_FAILURE)

    def log_response(self, rec: Record) -> Awaitable[None] | None:
        """Write the response entry of ``rec`` to every device (as ``log_request``).

        :raises AuditUnavailable: devices are enabled and none recorded it.
        """
        return self._log(rec, response_line, telemetry.AUDIT_LOG_RESPONSE, telemetry.AUDIT_LOG_RESPONSE_FAILURE)

    def _log(self, rec: Record, build: Line, timer: Observer, failures: Counter) -> Awaitable[None] | None:
        devices = self.active
        if not devices:
            return None
        if not self._immediate:
            return self._log_async(devices, rec, build, timer, failures)
        # Files only: group write. The entries of every request that reaches this point in one
        # turn of the event loop go out together, one write(2) per device, after that turn;
        # each request waits for it (fail closed) and nothing waits for another's lock.
        loop = asyncio.get_running_loop()
        batch = self._batch
        if batch is None or batch.devices is not devices:
            batch = self._batch = _Batch(devices)
            loop.call_soon(self._flush, batch)
        when = stamp()
        for lines, device in zip(batch.lines, devices, strict=True):
            lines.append(build(rec, device.fmt, when))
        waiter = loop.create_future()
        batch.waiters.append(waiter)
        return self._group_wait(waiter, timer, failures)

    @staticmethod
    async def _group_wait(waiter: asyncio.Future[bool], timer: Observer, failures: Counter) -> None:
        start = time.perf_counter()
        ok = await waiter
        timer.observe(telemetry.ms_since(start))
        if not ok:
            failures.inc()
            raise AuditUnavailable()

    def _flush(self, batch: _Batch) -> None:
        """Write one turn's entries: each device's lines in one write; ``ok`` when any device
        took them."""
        if self._batch is batch:
            self._batch = None
        if batch.flushed:
            return  # flushed early (the device table changed meanwhile)
        batch.flushed = True
        ok = False
        try:
            active = self.active
            for lines, device in zip(batch.lines, batch.devices, strict=True):
                if not lines or not any(d is device for d in active):
                    continue  # no entry (its building failed), or disabled since: its sink is closed
                if device.put(b"".join(lines) if len(lines) > 1 else lines[0]):
                    ok = True
        finally:  # whatever a sink raised, no request is left waiting
            for waiter in batch.waiters:
                if not waiter.done():  # a request cancelled while it waited
                    waiter.set_result(ok)

    async def _log_async(
        self, devices: Iterable[AuditDevice], rec: Record, build: Line, timer: Observer, failures: Counter
    ) -> None:
        start = time.perf_counter()
        when = stamp()
        ok = needed = False
        for device in devices:
            if not any(d is device for d in self.active):
                # Disabled since the request started: its sink is closed, and a write would
                # open it again for a device nobody reads. The entry is no longer owed to it,
                # unless the server is stopping (then the request fails closed).
                needed = needed or not self._open
                continue
            needed = True
            if await device.write(build(rec, device.fmt, when)):
                ok = True
        timer.observe(telemetry.ms_since(start))
        if needed and not ok:
            failures.inc()
            raise AuditUnavailable()

    def _install(self, devices: dict[str, AuditDevice]) -> None:
        """Make ``devices`` the enabled devices (``active`` is the snapshot writes use)."""
        self.devices, self.active = devices, tuple(devices.values())
        self._immediate = all(d.sink.immediate for d in self.active)

    # -- upkeep -----------------------------------------------------------------------------------
    def reopen(self) -> None:
        """Open every file again (SIGHUP, after logrotate moved them)."""
        for device in self.active:
            device.last_probe = 0.0  # readiness tests a failing device again at once
            try:
                device.sink.reopen()
            except OSError as exc:
                device.failing = exc.strerror or str(exc)
                log.error("audit_device_reopen_failed", device=device.path, reason=device.failing)
        if self.active:
            log.info("audit_devices_reopened", devices=len(self.active))

    async def problem(self) -> str | None:
        """Readiness: why requests would fail closed now, or None. A failing device gets a
        test entry (at most every second), so a repaired device is seen without traffic."""
        devices = self.active
        if not devices:
            return None
        now = time.monotonic()
        for device in devices:
            if device.failing and now - device.last_probe >= 1.0:
                device.last_probe = now
                await device.write(request_line(probe_record(), device.fmt, stamp()))
        if all(d.failing for d in devices):
            return "audit: no audit device can write (" + "; ".join(f"{d.path} {d.failing}" for d in devices) + ")"
        return None

    def invalidate(self, key: str) -> None:
        """Another node changed the device table or the audited headers: reload."""
        if key not in (AUDIT_KEY, HEADERS_KEY, ""):
            return
        self._refresh.request()  # a re-read running now may have read before this change

    async def reload(self) -> None:
        async with self._lock:
            await self._apply(await self.storage.get(AUDIT_KEY))
            self.headers = _header_table(await self.storage.get(HEADERS_KEY))

    async def close(self) -> None:
        self._open = False
        self._refresh.cancel()
        for device in self.active:
            await device.sink.close()
        self._install({})


def _header_table(stored: Any) -> dict[str, bool]:
    if not isinstance(stored, dict):
        return {}
    return {str(k): bool(v.get("hmac")) or carries_credential(str(k)) for k, v in stored.items() if isinstance(v, dict)}
