"""The route table: the sys backend, one greedy route for every auth mount, the sign-in page
(``/ui/``, ``server.http.ui``), then the 404s.

The routes are registered in aiohttp's router, and ``PrefixRouter`` finds them for each
request. aiohttp's router walks the path's parent paths and matches each candidate's
regular expression; for this table of five prefixes that walk cost about 9 us of CPU per
request on the serving process (docs/performance.md, issue 11 round five). The
``PrefixRouter`` gives the same route and the same match value by a prefix test and the
same pattern on the rest of the path (tests/server/test_routes.py checks it against
aiohttp's own resolution).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.web_urldispatcher import AbstractRoute, UrlMappingMatchInfo, _unquote_path_safe

from plugin.errors import quoted
from server.appkeys import CORS, REQUEST_HANDLER
from server.http.errors import error_response
from server.http.handlers import (
    WRITES,
    AppCore,
    auth_handler,
    identity_handler,
    read_operation,
    refuse_unknown,
    sys_handler,
)
from server.http.log import handled
from server.http.ui import ui_handler
from server.identity.backend import app_identity_backend
from server.sys.backend import SysBackend

__all__ = ["ROUTES", "PrefixRouter", "setup_routes"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: ``(prefix, match key, pattern of the rest of the path)``, tried in this order. The
#: prefixes nest, so this order is the order aiohttp's router finds them in: it walks from
#: the longest parent path down, and each route is indexed by its prefix.
ROUTES: tuple[tuple[str, str, str], ...] = (
    ("/v1/sys/", "path", r"[\s\S]*"),
    ("/v1/identity/", "path", r"[\s\S]*"),
    ("/v1/auth/", "path", r".+"),
    ("/v1/", "tail", r".*"),
    ("/ui/", "tail", r"[\s\S]*"),
    ("/", "tail", r"[\s\S]*"),  # "." would miss a %0a
)


def setup_routes(app: web.Application) -> None:
    """Register every route (the router freezes at startup, so the sys paths share one route
    into ``SysBackend`` and the mounts one route into the mount table), and the
    ``PrefixRouter`` the server's connections hand requests to (``REQUEST_HANDLER``).

    Every handler is wrapped by ``server.http.log.handled`` (request id, log line, JSON errors)
    and the last route catches every other path, so no middleware is needed: a request
    never reaches aiohttp's own 404/405 handlers.
    """
    identity = app_identity_backend(app)
    sys_backend = SysBackend(AppCore(app), documented={"identity": identity})
    handlers: tuple[Handler, ...] = (
        *(_clean_paths_only(h) for h in (sys_handler(sys_backend), identity_handler(identity), auth_handler,
                                         _no_handler, ui_handler)),
        _not_found,
    )
    table = []
    for (prefix, key, pattern), handler in zip(ROUTES, handlers, strict=True):
        route = app.router.add_route("*", prefix + "{" + key + ":" + pattern + "}", handled(handler, app[CORS]))
        table.append((prefix, key, re.compile(pattern), route))
    app[REQUEST_HANDLER] = PrefixRouter(app, table)


class PrefixRouter:
    """The request handler of the server (in place of ``Application._handle``): finds the
    route by prefix, then does what aiohttp's application does with it.

    A target no route takes (``*``, an authority) is answered by ``_no_route``.
    Middlewares are not run: ``ListVerbAppRunner`` uses this handler only for an
    application without them (ours has none).
    """

    __slots__ = ("_app", "_table", "_expect_refused", "_no_route", "_version_refused")

    def __init__(self, app: web.Application, table: list[tuple[str, str, re.Pattern[str], AbstractRoute]]) -> None:
        self._app = app
        self._table = tuple(table)
        #: An ``Expect`` other than ``100-continue``: 417, logged and in JSON like every refusal.
        self._expect_refused = handled(_expect_refused, app[CORS])
        #: A target no route takes (``*``, an authority): Vault's JSON 404, logged.
        self._no_route = handled(_no_route, app[CORS])
        #: A request line of another HTTP version than 1.0 and 1.1: 505, logged and in JSON.
        self._version_refused = handled(_version_refused, app[CORS])

    def resolve(self, path: str) -> UrlMappingMatchInfo | None:
        """The route of ``path`` (a request's ``rel_url.path_safe``) and its match value."""
        for prefix, key, pattern, route in self._table:
            if path.startswith(prefix) and pattern.fullmatch(path, len(prefix)) is not None:
                # The router's own decoding of a match value (path_safe keeps %2F and %25).
                return UrlMappingMatchInfo({key: _unquote_path_safe(path[len(prefix):])}, route)
        return None

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        if request._version not in _HTTP_1:  # not .version: that caches its first value
            # aiohttp's parser takes "HTTP/0.9" and "HTTP/2.0" (no other version) and the
            # reply would echo it. The refusal is an HTTP/1.1 reply, as Go's server (OpenBao) sends.
            request._version = HttpVersion11
            return await self._version_refused(request)
        match_info = self.resolve(request.rel_url.path_safe)
        if match_info is None:
            return await self._no_route(request)
        match_info.add_app(self._app)
        match_info.freeze()
        request._match_info = match_info
        if expect := request.headers.get(hdrs.EXPECT):  # Expect: 100-continue, as aiohttp answers it
            if expect.lower() != "100-continue":
                return await self._expect_refused(request)
            resp = await match_info.expect_handler(request)
            await request.writer.drain()
            if resp is not None:
                return resp
        return await match_info.handler(request)


#: The HTTP versions a request line may name.
_HTTP_1 = (HttpVersion11, HttpVersion10)


#: What a redirect's path keeps unescaped: RFC 3986 path characters, and "%" of escapes already there.
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"


async def _answer(reply: web.StreamResponse) -> web.StreamResponse:
    return reply


def _clean_paths_only(handler: Handler) -> Handler:
    """``handler`` for a clean path; a path with an empty, ``.`` or ``..`` segment
    (``/v1//sys/auth``, ``/v1/auth/jwt//login``) is redirected (307: the method and body are
    kept) to its clean form, as Vault's HTTP server does, before anything reads it: so no
    such path is routed one way here and another way there. A write to a path ending in
    ``/`` is refused, as Vault refuses it."""

    def clean(request: web.Request) -> Awaitable[web.StreamResponse]:
        # A plain function handing back the handler's coroutine: no coroutine of its own per request.
        url = request.rel_url  # the path alone, also of an absolute-form target
        raw = url.raw_path
        if "//" in raw or "/." in raw:
            # One leading slash, whatever the path held: "//host" would send the client to another
            # host. A last "." or ".." segment names a directory: the slash stays (URL resolution).
            tail = "/" if raw.endswith(("/", "/.", "/..")) and raw != "/" else ""
            body = posixpath.normpath(raw).strip("/")
            # Escaped as a URL path (existing escapes kept): a "\\" must not reach a browser raw.
            cleaned = quote("/" + body + (tail if body else ""), safe=_PATH_SAFE)
            if cleaned != raw:
                query = url.raw_query_string
                return _answer(web.Response(status=307, headers={hdrs.LOCATION: cleaned + ("?" + query if query else "")}))
        if raw.endswith("/") and request.method in WRITES:
            # Vault refuses these before it looks at the token (a key or a directory?).
            return _answer(error_response(400, ["cannot write to a path ending in '/'"]))
        if "%" in raw and is_relative_path(url.path.removeprefix("/v1/")):
            # Dot segments spelt with escapes (%2e%2e, ..%2f) survive the redirect above; as
            # the decoded path they would name another path than the one the ACL is shown.
            return _answer(error_response(400, ["relative paths not supported"]))
        return handler(request)

    clean.__name__ = getattr(handler, "__name__", "handler")
    clean.__doc__ = handler.__doc__
    return clean


def is_relative_path(path: str) -> bool:
    """Whether the decoded request path (after ``/v1/``) has a ``.`` or ``..`` segment:
    OpenBao's ``logical.IsRelativePath``, which ignores empty segments (``//``)."""
    if path in (".", "..") or path.startswith(("./", "../")) or path.endswith(("/.", "/..")):
        return True
    return "/./" in path or "/../" in path


async def _no_handler(request: web.Request) -> web.StreamResponse:
    """Any other ``/v1/...`` path: Vault's "no handler for route" 404, to a caller whose
    token allows the path (``refuse_unknown``)."""
    op, _ = await read_operation(request)
    await refuse_unknown(request, request.match_info.get("tail", ""), op)


async def _no_route(request: web.Request) -> web.StreamResponse:
    """A request target that is no path (``OPTIONS *``, ``CONNECT host:port``): aiohttp's router
    answered ``404: Not Found`` in plain text. ``OPTIONS *`` asks about the server itself
    (RFC 9110 9.3.7): 200 without a body, as Go's server (OpenBao) answers it."""
    if request.method == hdrs.METH_OPTIONS and request.raw_path == "*":
        return web.Response(status=200)
    return error_response(404, [])


async def _expect_refused(request: web.Request) -> web.StreamResponse:
    """What aiohttp answered in plain text, unlogged (``Unknown Expect: x``); Go's server
    answers 417 too (OpenBao, without a body)."""
    return error_response(417, [f"unsupported Expect header {quoted(request.headers[hdrs.EXPECT])}: "
                                "only 100-continue is understood"])


async def _version_refused(request: web.Request) -> web.StreamResponse:
    """A request line of HTTP/0.9 or HTTP/2.0 (the other versions the parser refuses with 400):
    OpenBao answers ``505 HTTP Version Not Supported`` in plain text and closes the connection."""
    sent = request._message.version  # the request's own (its _version is already 1.1)
    reply = error_response(505, [f"unsupported protocol version HTTP/{sent.major}.{sent.minor}: "
                                 "this server speaks HTTP/1.0 and HTTP/1.1"])
    reply.force_close()
    return reply


async def _not_found(request: web.Request) -> web.StreamResponse:
    """Outside ``/v1/``: the 404 the error middleware used to make of aiohttp's own."""
    return error_response(404, [])
