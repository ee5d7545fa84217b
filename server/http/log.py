"""structlog setup, the per-request log wrapper (`handled`), and redaction of anything token-like."""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextvars
import io
import logging
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import orjson
import structlog
from aiohttp import hdrs, web

from plugin.sealing import NewerTermError
from server.appkeys import MOUNT, REMOTE_ADDR, REQUEST_ID
from server.diagnostics import IN_FLIGHT, LOG_HUB
from server.http.errors import reload_keyring, response_for
from server.http.reply import NO_STORE

if TYPE_CHECKING:
    from server.http.cors import Cors

__all__ = ["configure_logging", "set_log_level", "set_logger_levels", "logger_levels", "level_number", "redact", "handled", "flush_request_log", "REQUEST_ID"]


#: Field names whose values are never logged.
SECRET_KEYS = frozenset({
    "token", "client_token", "jwt", "id_token", "access_token", "refresh_token", "code",
    "secret", "client_secret", "oidc_client_secret", "password", "authorization",
    "x-vault-token", "root_token", "state", "nonce", "client_nonce",
})
# Vault-style tokens (hvs./hvb./hvr. and legacy s./b.), JWTs, and Bearer values.
_TOKEN_RE = re.compile(
    r"\bhv[sbr]\.[A-Za-z0-9_\-.]{8,}"
    r"|\b[sb]\.[A-Za-z0-9]{20,}"
    r"|\beyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*"
    r"|(?i:bearer)\s+\S+"
)
REDACTED = "<redacted>"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def redact(value: Any, _depth: int = 0) -> Any:
    """Return ``value`` with token-like substrings and secret-named fields replaced."""
    if isinstance(value, str):
        if len(value) < 10 or ("." not in value and "bearer" not in value.lower()):
            return value  # every pattern needs a "." or the word bearer
        return _TOKEN_RE.sub(REDACTED, value)
    if _depth > 4:
        return value
    if isinstance(value, dict):
        return {
            k: (REDACTED if isinstance(k, str) and k.lower() in SECRET_KEYS else redact(v, _depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact(v, _depth + 1) for v in value]
    return value


# Fields the server itself fills with non-secret values: not worth a regex pass.
_SAFE_KEYS = frozenset({"timestamp", "level", "request_id", "method", "status", "duration_ms", "mount", "remote_addr"})


def _redact_processor(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        if key in _SAFE_KEYS:
            continue
        if key.lower() in SECRET_KEYS:
            event_dict[key] = REDACTED
        else:
            event_dict[key] = redact(event_dict[key])
    return event_dict


#: The level of every logger ``sys/loggers`` has not set on its own (``set_log_level``:
#: settings, SIGHUP, ``sys/loggers``), the levels it set by logger name, and what follows
#: from them: the lowest level any logger takes (the gate's first check) and the request
#: lines' (``authmount.request``).
_base = logging.INFO
_by_name: dict[str, int] = {}
#: The loggers ``sys/loggers`` set to Vault's ``trace`` (logged as debug; "" for every logger).
_traced: frozenset[str] = frozenset()
_level = logging.INFO
_request_level = logging.INFO
_format = "json"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "warn": logging.WARNING,
           "error": logging.ERROR, "exception": logging.ERROR, "critical": logging.CRITICAL, "msg": logging.INFO}


#: The id of the request being handled, added to every structlog line logged while it runs
#: (``_add_request_id``). One ContextVar set per request: structlog's ``clear_contextvars`` +
#: ``bind_contextvars`` walked the context and built a token mapping on every request.
_REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("authmount_request_id", default=None)


def _add_request_id(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    rid = _REQUEST_ID.get()
    if rid is not None:
        event_dict.setdefault("request_id", rid)
    return event_dict


def _level_gate(_logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Drop events below the level in effect and below every log monitor's
    (``server.diagnostics``). Loggers are cached on first use, so the level is checked here
    (one lookup per event) instead of being built into the cached logger, which a later level
    change could not reach."""
    level = _LEVELS.get(name, logging.INFO)
    if level < _level and level < LOG_HUB.level:
        raise structlog.DropEvent
    return event_dict


def _monitor_tap(logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Hand the finished event (redacted) to the log monitors (``sys/monitor``), then drop it
    if it is below the level its logger takes (a monitor asked for more)."""
    level = _LEVELS.get(name, logging.INFO)
    if level >= LOG_HUB.level:  # a monitor here or in another worker wants it
        LOG_HUB.publish(event_dict)
    if level < (_by_name.get(getattr(logger, "logger_name", ""), _base) if _by_name else _base):
        raise structlog.DropEvent
    return event_dict


def set_log_level(level: str) -> None:
    """Change the log level of the running process: every logger, cached ones included, and
    any level ``sys/loggers`` set by name is forgotten (as Vault's SIGHUP does)."""
    set_logger_levels(level_number(level), {})


def level_number(level: str) -> int:
    """The ``logging`` number of a settings level (``log_level``: debug, info, ...; info when unknown)."""
    return int(getattr(logging, level.upper(), logging.INFO))


def set_logger_levels(base: int, by_name: dict[str, int], traced: frozenset[str] = frozenset()) -> None:
    """Every logger at ``base``, but those ``by_name`` names (``sys/loggers``); ``traced``:
    the loggers set to ``trace`` ("" for every logger not named)."""
    global _base, _by_name, _level, _request_level, _request_sink, _traced
    _base, _by_name, _traced = base, dict(by_name), traced
    _level = min(base, *by_name.values()) if by_name else base
    _request_level = _by_name.get(_access_name, base)
    logging.getLogger().setLevel(max(base, logging.WARNING))
    # Request lines are info: pre-rendered in the JSON format only while info is logged.
    _request_sink = _json_stream() if _format == "json" and _request_level <= logging.INFO else None


def logger_levels() -> tuple[int, dict[str, int], frozenset[str]]:
    """The level of every logger, those set by name, and those set to trace (``set_logger_levels``)."""
    return _base, dict(_by_name), _traced


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Configure structlog (and stdlib logging for aiohttp's own messages) to stderr."""
    global _format
    _format = fmt
    numeric = level_number(level)
    logging.basicConfig(stream=sys.stderr, level=max(numeric, logging.WARNING), format="%(name)s: %(message)s")
    processors: list[Any] = [
        _level_gate,
        structlog.contextvars.merge_contextvars,
        _add_request_id,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _redact_processor,
        _monitor_tap,
    ]
    if fmt == "console":
        processors.append(_escape_controls)
        processors.append(structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback))

        def factory(*args: Any) -> Any:
            return _NamedPrintLogger(sys.stderr, args[0] if args else "")
    else:
        processors.append(structlog.processors.JSONRenderer(serializer=orjson.dumps))
        # BytesLogger calls only write and flush.
        stream = cast(BinaryIO, _OrderedStream(_json_stream()))

        def factory(*args: Any) -> Any:
            return _NamedBytesLogger(stream, args[0] if args else "")
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),  # _level_gate filters
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    # The per-request line is pre-rendered (same fields, order and redaction as the
    # structlog chain above): structlog's processor chain cost ~40 us per request.
    set_log_level(level)
    if _request_sink is not None:
        atexit.unregister(flush_request_log)  # configured more than once (tests): flush once
        atexit.register(flush_request_log)


_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _escape_controls(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Control characters in logged values (a caller's path or role name) as ``\\xNN``: the
    console renderer writes a value without spaces as it is, and an escape sequence from an
    anonymous caller would reach the operator's terminal. Tracebacks keep their lines."""
    for key, value in event.items():
        if key != "exception" and isinstance(value, str) and _CONTROLS.search(value):
            event[key] = _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", value)
    return event


def _json_stream() -> Any:
    """stderr as a buffered binary stream (request lines are flushed within FLUSH_DELAY).

    ``sys.stderr.buffer`` is an unbuffered ``FileIO`` (one write(2) per line); structlog's
    own lines go through the same writer and flush it, so the order of lines is kept.
    """
    global _stream
    out = sys.stderr.buffer
    if not isinstance(out, io.FileIO):
        return out  # already buffered (or a test's replacement)
    if _stream is None or _stream.fileno() != out.fileno():
        _stream = io.BufferedWriter(io.FileIO(out.fileno(), "wb", closefd=False), buffer_size=65536)
    return _stream


_stream: io.BufferedWriter | None = None


class _NamedBytesLogger(structlog.BytesLogger):
    """structlog's logger with the name it was got by, which ``_monitor_tap`` judges."""

    __slots__ = ("logger_name",)

    def __init__(self, file: BinaryIO, logger_name: str) -> None:
        super().__init__(file)
        self.logger_name = logger_name


class _NamedPrintLogger(structlog.PrintLogger):
    """The console format's logger with the name it was got by."""

    __slots__ = ("logger_name",)

    def __init__(self, file: Any, logger_name: str) -> None:
        super().__init__(file)
        self.logger_name = logger_name


_access_name = "authmount.request"
_access = structlog.get_logger(_access_name)
#: Where ``configure_logging`` sends pre-rendered JSON request lines; None: go through
#: structlog (console format, tests capturing logs, or before configuration).
_request_sink: Any = None
_flush_pending = False
#: Seconds a request line may sit in the buffer before it is written. Flushing once per
#: event-loop turn cost one write(2) per one to three requests (~10 us each under load);
#: a time bound makes it one per FLUSH_DELAY (or per 64 KiB). Lines still go out in order,
#: structlog's own lines flush the buffer at once, and exit flushes it (``flush_request_log``).
FLUSH_DELAY = 0.05
_HEX_VARIANT = "89ab"
# Random hex for request ids, drawn 256 ids at a time (one getrandom call, not one each).
_rand_hex = ""
_rand_pos = 0


def new_request_id() -> str:
    """A random (version 4) UUID string, as ``str(uuid.uuid4())`` but cheaper."""
    global _rand_hex, _rand_pos
    if _rand_pos >= len(_rand_hex):
        _rand_hex, _rand_pos = os.urandom(16 * 256).hex(), 0
    h = _rand_hex[_rand_pos : _rand_pos + 32]
    _rand_pos += 32
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_HEX_VARIANT[int(h[16], 16) & 3]}{h[17:20]}-{h[20:32]}"


def _flush(sink: Any) -> None:
    global _flush_pending
    _flush_pending = False
    try:
        if _pending_lines:
            _render_pending(sink)
        sink.flush()
    except (OSError, ValueError):  # a closed or broken stderr must not fail requests
        pass


#: (second, its ISO text): one tuple, so a thread never pairs a second with another's text.
_stamp: tuple[int, str] = (-1, "")


def _timestamp(now: float) -> str:
    """``datetime.fromtimestamp(now, UTC).isoformat()`` with ``Z`` (as structlog's
    TimeStamper), the seconds part formatted once per second."""
    global _stamp
    second = int(now)
    stamp_second, prefix = _stamp
    if second != stamp_second:
        prefix = datetime.fromtimestamp(second, UTC).isoformat().removesuffix("+00:00")
        _stamp = (second, prefix)
    micro = int((now - second) * 1_000_000)
    return f"{prefix}.{micro:06d}Z" if micro else prefix + "Z"


#: Request lines taken but not yet rendered: (request id, method, path, mount, remote,
#: status, seconds taken, time.time() at the end). Rendering them in a batch, when the
#: buffer is flushed, runs the same code for many lines while it is hot in the CPU's caches;
#: rendered one at a time between two requests' work it cost 12-15 us per request on the
#: server (2-3 us in a loop of its own). A deque: a structlog line logged on another thread
#: (the SQLite writer's) renders the waiting lines too, and ``append``/``popleft`` never lose
#: one between two threads.
_RequestLine = tuple[str, str, str, Any, str, int, float, float]
_pending_lines: collections.deque[_RequestLine] = collections.deque()
#: Lines rendered at once at the latest (about 64 KiB of JSON, the buffer's size).
MAX_PENDING_LINES = 256


def _render_pending(sink: Any) -> None:
    """Render the waiting request lines into ``sink``, in the order they were taken."""
    pending, dumps, newline = _pending_lines, orjson.dumps, orjson.OPT_APPEND_NEWLINE
    try:
        while pending:
            try:
                line = pending.popleft()
            except IndexError:  # another thread took the last one
                break
            sink.write(dumps(_request_event(*line), option=newline))
    except (OSError, ValueError):  # a closed or broken stderr must not fail requests
        pass


def _request_event(rid: str, method: str, path: str, mount: Any, remote: str, status: int, took: float,
                   now: float) -> dict[str, Any]:
    """A request line's fields, in the log's order (the file's lines and the monitors')."""
    return {
        "method": method,
        "path": redact(path),
        "mount": mount,  # server-set, never redacted (_SAFE_KEYS)
        "remote_addr": remote,
        "status": status,
        "duration_ms": round(took * 1000, 3),
        "event": "request",
        "request_id": rid,
        "level": "info",
        "timestamp": _timestamp(now),
    }


def _take_request_line(sink: Any, line: _RequestLine) -> None:
    global _flush_pending
    _pending_lines.append(line)
    if len(_pending_lines) >= MAX_PENDING_LINES:
        _render_pending(sink)
    if not _flush_pending:
        # One write(2) for all the lines of the next FLUSH_DELAY seconds.
        _flush_pending = True
        asyncio.get_running_loop().call_later(FLUSH_DELAY, _flush, sink)


class _OrderedStream:
    """structlog's stream: waiting request lines are rendered before a structlog line, so
    the file keeps the order in which things happened."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, data: bytes) -> Any:
        if _pending_lines:
            _render_pending(self._stream)
        return self._stream.write(data)

    def flush(self) -> None:
        self._stream.flush()


def flush_request_log() -> None:
    """Write out buffered request lines now (server shutdown, exit)."""
    sink = _request_sink
    if sink is not None:
        _flush(sink)


def handled(handler: Handler, cors: Cors | None = None) -> Handler:
    """``handler`` with a request id, one log line and JSON error replies around it, and the
    ``cors`` settings applied to a request with an ``Origin`` while they are on.

    The server wraps every route's handler with this instead of installing middlewares,
    avoiding aiohttp's middleware chain
    (its lru-cached chain lookup, a ``partial`` frame per middleware and the
    ``current_app`` middleware it adds whenever any middleware is installed).
    """
    async def wrapped(request: web.Request) -> web.StreamResponse:
        rid = new_request_id()
        request[REQUEST_ID] = rid
        request[REMOTE_ADDR] = ""  # found by handlers.remote_addr when a handler needs it
        request[MOUNT] = None  # set by auth_handler once the mount is found (no KeyError to catch for the rest)
        _REQUEST_ID.set(rid)
        start = time.perf_counter()
        IN_FLIGHT[rid] = (request, start)  # sys/in-flight-req
        status = 500
        try:
            cors_headers: dict[str, str] | None = None
            try:
                answer = None
                if cors is not None and cors.enabled and (origin := request.headers.get(hdrs.ORIGIN)):
                    answer, cors_headers = cors.gate(request, origin)
                resp = answer if answer is not None else await handler(request)
            except Exception as exc:  # CancelledError is a BaseException: it passes through
                if isinstance(exc, NewerTermError):
                    await reload_keyring(request)
                reply = response_for(request, exc)
                if reply is None:
                    raise
                resp = reply
            status = resp.status
            if cors_headers and not resp.prepared:  # (a streamed reply has sent its headers already)
                resp.headers.update(cors_headers)
            if hdrs.CACHE_CONTROL not in resp.headers:  # a JSONReply has it already
                resp.headers[hdrs.CACHE_CONTROL] = NO_STORE
            return resp
        finally:
            del IN_FLIGHT[rid]
            _log_request(request, rid, status, start)

    wrapped.__name__ = getattr(handler, "__name__", "handler")
    wrapped.__doc__ = handler.__doc__
    return wrapped


def _log_request(request: web.Request, rid: str, status: int, start: float) -> None:
    sink = _request_sink
    if sink is None and _request_level > logging.INFO:
        if LOG_HUB.level <= logging.INFO:
            _monitor_request(request, rid, status, start)
        return  # request lines are info (structlog's chain would drop the line after building it)
    # The client as the request's checks saw it (after trusted-proxy handling), else the peer.
    remote = request[REMOTE_ADDR] or request.remote or ""
    if sink is not None:
        if LOG_HUB.level <= logging.INFO:  # (through structlog below, the chain's tap hands it over)
            _monitor_request(request, rid, status, start)
        _take_request_line(sink, (
            rid, request.method, request.path, request[MOUNT], remote, status,
            time.perf_counter() - start, time.time(),
        ))
    else:
        _access.info(
            "request",
            method=request.method,
            path=request.path,
            mount=request[MOUNT],
            remote_addr=remote,
            status=status,
            duration_ms=round((time.perf_counter() - start) * 1000, 3),
        )


def _monitor_request(request: web.Request, rid: str, status: int, start: float) -> None:
    """A request line for the log monitors, with the fields and redaction of the log file's."""
    LOG_HUB.publish(_request_event(rid, request.method, request.path, request[MOUNT],
                                   request[REMOTE_ADDR] or request.remote or "", status,
                                   time.perf_counter() - start, time.time()))
