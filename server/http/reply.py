"""``JSONReply``: a JSON response whose status line and headers are written as one string
(``Content-Type: application/json`` and ``Cache-Control: no-store``).

aiohttp prepares a response through a chain of coroutines (``prepare``, ``_start`` twice,
``_prepare_headers``, ``_write_headers``, the writer's ``write_headers``) that consult a
header multidict for compression, chunking, cookies, ``Date``, ``Server`` and
``Connection``, then serialise it. A JSON reply of this server has none of those choices
to make: it is ``Content-Type: application/json`` with a length. ``JSONReply`` writes the
bytes aiohttp would write, from one format string, and hands anything else (a header set
by the caller, ``HEAD``, a status without a body, cookies, compression, chunking) to
aiohttp's own path. On a bare hello server this took a reply from 68 to 51 us of CPU
(docs/performance.md, issue 11 round five); tests/server/test_reply.py compares the bytes
on the wire with ``web.Response``'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from aiohttp import hdrs, web, web_response
from aiohttp.compression_utils import MAX_SYNC_CHUNK_SIZE
from aiohttp.helpers import must_be_empty_body, rfc822_formatted_time
from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.http_writer import StreamWriter
from multidict import CIMultiDict

if TYPE_CHECKING:
    from aiohttp.abc import AbstractStreamWriter
    from aiohttp.web_request import BaseRequest

__all__ = ["JSON", "NO_STORE", "JSONReply"]

JSON = "application/json"
#: Every reply of the server says ``Cache-Control: no-store``, as Vault's do: a reply may hold
#: a token, and no cache between the client and the server may keep it.
NO_STORE = "no-store"
#: aiohttp's response module, whose ``SERVER_SOFTWARE`` is the ``Server`` header at the time
#: a response is prepared (``server.app.create_app`` replaces it).
_AIOHTTP = vars(web_response)


class JSONReply(web.Response):
    """``web.Response(body=body, status=status, content_type="application/json")``, prepared
    in one step when nothing but the body and the status was set."""

    _lean = False  # True once prepared by the one-step path (write_eof then writes the body)

    def __init__(self, body: bytes, status: int = 200) -> None:
        # web.Response.__init__ sorts out text/body/charset/content_type combinations; this
        # reply has one of each, so it sets what that __init__ would have set.
        headers: CIMultiDict[str] = CIMultiDict()
        headers[hdrs.CONTENT_TYPE] = JSON
        headers[hdrs.CACHE_CONTROL] = NO_STORE
        web.StreamResponse.__init__(self, status=status, _real_headers=headers)
        self._body = body
        self._zlib_executor_size = MAX_SYNC_CHUNK_SIZE
        self._zlib_executor = None

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        if self._eof_sent or self._payload_writer is not None:
            return await super().prepare(request)
        headers = self._headers
        body = self._body
        writer = cast(StreamWriter, request._payload_writer)
        if (
            len(headers) != 2 or headers.get(hdrs.CONTENT_TYPE) is not JSON
            or headers.get(hdrs.CACHE_CONTROL) is not NO_STORE
            or type(body) is not bytes or must_be_empty_body(request.method, self._status)
            or self._cookies or self._compression or self._chunked
            or type(writer) is not StreamWriter or writer._on_headers_sent is not None
        ):
            return await super().prepare(request)
        self._req = request
        self._payload_writer = writer
        self._must_be_empty_body = False
        keep_alive = self._keep_alive
        if keep_alive is None:
            keep_alive = self._keep_alive = request.keep_alive
        version = request.version
        if keep_alive:
            connection = "Connection: keep-alive\r\n" if version == HttpVersion10 else ""
        else:
            connection = "Connection: close\r\n" if version == HttpVersion11 else ""
        # The order of web.Response's headers: Content-Type and Cache-Control (as set),
        # Content-Length (its _start), Date and Server (_prepare_headers), Connection.
        head = (
            f"HTTP/{version[0]}.{version[1]} {self._status} {self._reason}\r\n"
            f"Content-Type: {JSON}\r\nCache-Control: {NO_STORE}\r\nContent-Length: {len(body)}\r\n"
            f"Date: {rfc822_formatted_time()}\r\nServer: {_AIOHTTP['SERVER_SOFTWARE']}\r\n{connection}\r\n"
        )
        await request._prepare_hook(self)
        writer.length = len(body)
        writer._headers_buf = head.encode()  # what writer.write_headers leaves for write_eof
        writer._headers_written = False
        self._lean = True
        return writer

    async def write_eof(self, data: bytes = b"") -> None:
        if not self._lean or self._eof_sent:
            return await super().write_eof(data)
        writer = self._payload_writer
        assert writer is not None and type(self._body) is bytes
        await writer.write_eof(self._body)  # headers and body in one write, as aiohttp does
        self._eof_sent = True
        self._req = None
        self._body_length = writer.output_size
        self._payload_writer = None
