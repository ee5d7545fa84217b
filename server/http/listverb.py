"""The HTTP ``LIST`` verb on aiohttp's fast C parser.

llhttp (aiohttp's C parser) rejects the method ``LIST`` that hvac and the Vault CLI send.
Rather than falling back to the slow pure-Python parser, each connection gets a tiny
framer that follows request boundaries (headers, ``Content-Length`` and chunked bodies)
and rewrites a request line ``LIST /p HTTP/1.1`` into ``GET /p HTTP/1.1`` plus a marker
header carrying a per-process secret. The handler treats a marked GET as LIST. A client
cannot forge the marker (any client-sent marker header is removed, and the value is
secret); even if it could, a marked GET only does what ``GET ?list=true`` already does.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from server.appkeys import REQUEST_HANDLER
from server.http.connguard import ConnectionGuard
from server.http.errors import error_response

if TYPE_CHECKING:
    from aiohttp.test_utils import TestServer

__all__ = [
    "MARKER_HEADER",
    "MARKER_VALUE",
    "RequestFramer",
    "ListVerbAppRunner",
    "is_list_verb",
    "make_test_server",
]

log = structlog.get_logger("authmount.http")

MARKER_HEADER = "X-Authmount-List"
MARKER_VALUE = secrets.token_hex(16)
_MARKER_LINE = f"{MARKER_HEADER}: {MARKER_VALUE}\r\n".encode()
_MARKER_LOWER = MARKER_HEADER.lower().encode()

_HEAD, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _TRAILER, _PASSTHROUGH = range(6)
_MAX_HEAD = 64 * 1024
_MAX_LINE = 4096
#: A request's header block must be complete this many seconds after its first byte
#: (Vault's listener uses Go's ReadHeaderTimeout of 10 s); a client trickling headers
#: (slowloris) otherwise holds a connection until the idle timeout.
HEADER_TIMEOUT = 10.0


#: Where a parser message starts quoting the request's bytes (``b'...'``, ``bytearray(b'...')``).
_QUOTED_BYTES = re.compile(r"""bytearray\(|\bb['"]""")


def malformed_reason(exc: HttpProcessingError) -> str:
    """The parser's reason for refusing a request, without the request's bytes: the first
    line of its message (``Invalid header token``, ``Bad status line``), at most 80 characters."""
    first = _QUOTED_BYTES.split(str(exc.message).split("\n", 1)[0], 1)[0].strip().rstrip(":").strip()
    return (first or "unparseable request")[:80]


def is_list_verb(headers: Mapping[str, str]) -> bool:
    """True when the framer marked this request as a ``LIST``."""
    return headers.get(MARKER_HEADER) == MARKER_VALUE


class RequestFramer:
    """Follows HTTP/1.1 request boundaries in one connection's byte stream.

    ``feed(data)`` returns the bytes to hand to the real parser: identical to the input
    except for rewritten ``LIST`` request lines and removed client marker headers. Header
    blocks are held back until complete. On anything it does not understand the framer
    steps aside for good (passthrough) and lets the real parser reject the stream.
    """

    __slots__ = ("state", "buf", "remaining", "cuts")

    def __init__(self) -> None:
        self.state = _HEAD
        self.buf = b""
        self.remaining = 0
        #: Offsets in the last ``feed``'s output where a request after the first begins (a
        #: pipeline): the connection hands the parser one request at a time, so a malformed
        #: request does not take the answers to the whole requests before it down with it.
        self.cuts: list[int] = []

    def head_pending(self) -> bool:
        """True while an incomplete request header block is held back."""
        return self.state == _HEAD and bool(self.buf)

    def feed(self, data: bytes) -> bytes:
        """Consume ``data``; return what the HTTP parser should see now."""
        if self.cuts:
            self.cuts = []
        if self.state == _PASSTHROUGH:
            return data
        if self.buf:
            data = self.buf + data
            self.buf = b""
        out: list[bytes] = []
        i, n = 0, len(data)
        if self.state == _HEAD:
            end = data.find(b"\r\n\r\n")
            if end >= 0 and end + 4 == n:
                # Fast path: one whole bodyless request (the common GET/LIST/DELETE).
                head, body_len = self._head(data)
                if body_len == 0:
                    return head
                # fall through to the general loop with the state already set
                self._set_body(body_len)
                return head
            if end >= 0:
                i = end + 4
                head, body_len = self._head(data[:i])
                if self.state == _PASSTHROUGH or i + body_len == n:
                    # Fast path: one whole request with its Content-Length body (a login).
                    return head + data[i:]
                out.append(head)
                self._set_body(body_len)
        done = sum(map(len, out))  # bytes of output so far
        while i < n:
            state = self.state
            if state == _HEAD:
                end = data.find(b"\r\n\r\n", i)
                if end < 0:
                    rest = data[i:]
                    if len(rest) > _MAX_HEAD or b"\n\n" in rest:
                        self.state = _PASSTHROUGH
                        if done:
                            self.cuts.append(done)
                        out.append(rest)
                    else:
                        self.buf = rest
                    break
                head, body_len = self._head(data[i : end + 4])
                if done and head:
                    self.cuts.append(done)
                out.append(head)
                done += len(head)
                i = end + 4
                if self.state != _PASSTHROUGH:
                    self._set_body(body_len)
            elif state == _BODY or state == _CHUNK_DATA:
                take = min(self.remaining, n - i)
                out.append(data[i : i + take])
                done += take
                i += take
                self.remaining -= take
                if self.remaining == 0:
                    self.state = _HEAD if state == _BODY else _CHUNK_SIZE
            elif state == _CHUNK_SIZE or state == _TRAILER:
                end = data.find(b"\r\n", i)
                if end < 0:
                    rest = data[i:]
                    if len(rest) > _MAX_LINE:
                        self.state = _PASSTHROUGH
                        out.append(rest)
                    else:
                        self.buf = rest
                    break
                line = data[i:end]
                out.append(data[i : end + 2])
                done += end + 2 - i
                i = end + 2
                if state == _TRAILER:
                    if not line:
                        self.state = _HEAD
                    continue
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    self.state = _PASSTHROUGH
                    continue
                if size == 0:
                    self.state = _TRAILER
                else:
                    self.state = _CHUNK_DATA
                    self.remaining = size + 2  # chunk data plus its CRLF
            else:  # passthrough
                out.append(data[i:])
                break
        return b"".join(out)

    def _set_body(self, body_len: int) -> None:
        if body_len == -1:
            self.state = _CHUNK_SIZE
        elif body_len > 0:
            self.state = _BODY
            self.remaining = body_len

    def _head(self, head: bytes) -> tuple[bytes, int]:
        """Rewrite one complete header block; return it and its body length (-1: chunked)."""
        if head.startswith(b"\r\n"):
            # RFC 9112 2.2: empty lines before a request line are ignored; drop them here so
            # that a LIST after a stray CRLF is still recognised.
            head = head.lstrip(b"\r\n")
            if not head.endswith(b"\r\n\r\n"):  # nothing but empty lines
                return b"", 0
        lower = head.lower()
        if _MARKER_LOWER in lower:
            lines = head.split(b"\r\n")
            head = b"\r\n".join(
                ln for j, ln in enumerate(lines) if j == 0 or not ln.lower().startswith(_MARKER_LOWER)
            )
            lower = head.lower()
        if head.startswith(b"LIST "):
            eol = head.find(b"\r\n") + 2
            head = b"GET " + head[5:eol] + _MARKER_LINE + head[eol:]
        body_len = 0
        te = lower.find(b"\r\ntransfer-encoding:")
        cl = lower.find(b"\r\ncontent-length:")
        if b"\r\nupgrade:" in lower:
            self.state = _PASSTHROUGH
        elif te >= 0:
            value = lower[te + 20 : lower.find(b"\r\n", te + 2)].strip()
            if cl >= 0 or not value.endswith(b"chunked"):
                self.state = _PASSTHROUGH
            else:
                body_len = -1
        elif cl >= 0:
            value = lower[cl + 17 : lower.find(b"\r\n", cl + 2)].strip()
            if not value.isdigit() or lower.find(b"\r\ncontent-length:", cl + 2) >= 0:
                self.state = _PASSTHROUGH
            else:
                body_len = int(value)
        return head, body_len


class ListVerbRequestHandler(RequestHandler):
    """aiohttp's connection protocol with a ``RequestFramer`` in front of the C parser, the
    header deadline (from accept, and from the first byte of each later request) and the
    server's ``ConnectionGuard`` (``server.http.connguard``)."""

    __slots__ = ("_framer", "_head_timer", "_guard", "_header_timeout")

    def __init__(
        self, *args: Any, guard: ConnectionGuard | None = None, header_timeout: float | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._framer = RequestFramer()
        self._head_timer: asyncio.TimerHandle | None = None
        self._guard = guard
        self._header_timeout = HEADER_TIMEOUT if header_timeout is None else header_timeout

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard = self._guard
        admitted = True
        if guard is not None:
            peer = transport.get_extra_info("peername")
            admitted = guard.admit(self, peer[0] if isinstance(peer, tuple) and peer else "")
        super().connection_made(transport)
        if not admitted:
            self.drop()
            return
        # A connection that never sends a byte would otherwise live until the idle timeout.
        self._head_timer = self._loop.call_later(self._header_timeout, self._head_timed_out)

    def is_idle(self) -> bool:
        """No request is being handled (a connection waiting for, or reading, a header)."""
        return not self._request_in_progress

    def drop(self) -> None:
        """Close at once, without waiting to flush (an idle or refused connection)."""
        transport = self.transport
        self.force_close()
        if transport is not None:
            transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._payload_parser is None and not self._upgraded:
            data = self._framer.feed(data)
            if self._framer.head_pending():
                if self._head_timer is None:
                    self._head_timer = self._loop.call_later(self._header_timeout, self._head_timed_out)
            elif self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            if not data:
                return
            cuts = self._framer.cuts
            if cuts:  # a pipeline: one request at a time (see RequestFramer.cuts)
                start = 0
                for cut in cuts:
                    self._feed(data[start:cut])
                    start = cut
                data = data[start:]
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        if (self._close or self._force_close) and self._request_in_progress:
            # Graceful shutdown marks every connection closing, and aiohttp then drops all
            # incoming bytes, including the rest of the body of the request being handled,
            # which would wait for a body that never comes. Let that request finish; the
            # flags are back before the connection's loop looks at them again.
            was_close, was_force = self._close, self._force_close
            self._close = self._force_close = False
            try:
                super().data_received(data)
            finally:
                self._close = self._close or was_close
                self._force_close = self._force_close or was_force
            return
        super().data_received(data)

    async def shutdown(self, timeout: float | None = 15.0) -> None:
        # aiohttp's pre_shutdown marks every connection closing and wakes the idle ones; a
        # connection whose first turn had not run yet then waits for a request, which
        # aiohttp drops while closing, and shutdown waited for that wait the whole timeout
        # (the client's request unanswered meanwhile). An idle connection has nothing to
        # finish: wake it now, and it closes.
        if not self._request_in_progress and self._waiter is not None:
            self._waiter.cancel()
        await super().shutdown(timeout)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """A body whose framing broke (a chunk cut short) was answered 400 by the handler;
        aiohttp then meets the same error again while it reads the rest of the body, and
        closes the connection. That is one log line, not a traceback any caller could fill
        the log with."""
        if isinstance(kw.get("exc_info"), RequestPayloadError):
            log.info("http_malformed", reason="request body could not be decoded", status=400)
            return
        super().log_exception(*args, **kw)

    def handle_error(
        self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        """aiohttp's answer to a request its parser refused (or to an error nothing else
        caught), as Vault's JSON error body and one log line. aiohttp's own answer is
        ``text/plain`` quoting the offending bytes, logged with a traceback at error level:
        a client's malformed header line may hold its token, and any anonymous caller could
        fill the log with tracebacks. The reason given is the parser's, without the bytes."""
        if request.writer.output_size > 0:  # aiohttp's rule: a reply was started, the connection is broken
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        if isinstance(exc, HttpProcessingError) and 400 <= status < 500:
            reason = malformed_reason(exc)
            log.info("http_malformed", reason=reason, status=status, remote_addr=request.remote or "")
            reply = error_response(status, [f"malformed HTTP request: {reason}"])
        elif status == 500:
            log.error("internal_error", where="http", exc_info=exc)
            reply = error_response(500, ["internal error"])
        else:  # aiohttp's 504 for a handler's unhandled TimeoutError
            log.warning("http_error", status=status, error=type(exc).__name__ if exc is not None else None)
            reply = error_response(status, [HTTPStatus(status).phrase.lower()])
        reply.force_close()
        return reply

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._guard is not None:
            self._guard.release(self)
        super().connection_lost(exc)


class _ListVerbServer(web.Server):
    guard: ConnectionGuard | None = None
    header_timeout: float | None = None

    def __call__(self) -> RequestHandler:
        # Bodies are decoded by ``handlers.read_body`` (``decoded_body``), which refuses a
        # stream cut short; aiohttp's own decoding took one as the part it held.
        return ListVerbRequestHandler(
            self, loop=self._loop, guard=self.guard, header_timeout=self.header_timeout,
            **{**self._kwargs, "auto_decompress": False},
        )


class ListVerbAppRunner(web.AppRunner):
    """An ``AppRunner`` whose connections understand the ``LIST`` verb, obey ``guard`` and
    must send each request header within ``header_timeout`` (default ``HEADER_TIMEOUT``).

    An application that sets ``REQUEST_HANDLER`` (``server.http.routes.PrefixRouter``) and
    has no middlewares gets its requests through that handler instead of aiohttp's router.
    """

    def __init__(
        self, app: web.Application, *, guard: ConnectionGuard | None = None, header_timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self.guard = guard
        self.header_timeout = header_timeout

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _ListVerbServer
        handler = self._app.get(REQUEST_HANDLER)
        if handler is not None and not self._app.middlewares:
            server.request_handler = handler  # type: ignore[assignment]  # the app's request factory makes web.Requests
        server.guard = self.guard  # type: ignore[attr-defined]
        server.header_timeout = self.header_timeout  # type: ignore[attr-defined]
        return server


def make_test_server(app: web.Application, **kwargs: Any) -> TestServer:
    """An ``aiohttp.test_utils.TestServer`` using ``ListVerbAppRunner`` (for test clients)."""
    from aiohttp.test_utils import TestServer

    class _Server(TestServer):
        async def _make_runner(self, **kw: Any) -> web.AppRunner:
            return ListVerbAppRunner(self.app, **kw)

    return _Server(app, **kwargs)
