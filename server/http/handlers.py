"""HTTP → plugin adapter: operation, request data, token + ACL check, Vault envelope."""

from __future__ import annotations

import asyncio
import ipaddress
import zlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, NoReturn
from urllib.parse import parse_qsl

import orjson
from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestPayloadError

from plugin.backend import JWTAuthBackend
from plugin.cidrutil import cidr_allows
from plugin.errors import (
    InvalidRequest,
    PermissionDenied,
    PluginError,
    UnsupportedMediaType,
    UnsupportedOperation,
    UnsupportedPath,
    quoted,
)
from plugin.framework import Backend, Connection, Operation, Request, Response, Route
from plugin.jsonlimits import MAX_JSON_DEPTH, too_deep
from plugin.schema import parse_duration
from server.acl.policies import PolicyStore
from server.appkeys import (
    AUDIT,
    CLUSTER_ID,
    CORS,
    ISSUED,
    KEYRING,
    MOUNT,
    MOUNTS,
    NODE,
    POLICIES,
    QUOTAS,
    REMOTE_ADDR,
    REQUEST_ID,
    SETTINGS,
    STORAGE,
    TOKEN_RAW,
    TOKENS,
)
from server.audit import AuditBroker
from server.credentials import carries_credential
from server.http.audited import Exchange
from server.http.cors import Cors
from server.http.errors import error_response, foreign_namespace
from server.http.inline import FAILED_HEADER, NOT_LOGIN, PATH_HEADER, InlineLogin, read_inline
from server.http.inline import refused as inline_refused
from server.http.listverb import MARKER_HEADER, is_list_verb
from server.http.ratelimit import LIMITER, limited
from server.http.reply import NO_STORE, JSONReply
from server.keyring import Keyring
from server.mounts import Mount, MountTable
from server.nodes import Node
from server.quotas import Quotas
from server.settings import Settings
from server.storage import Engine
from server.sys.backend import SysBackend
from server.sys.core import SysPath, acl_path
from server.tokens.entry import InlineEntry, TokenEntry
from server.tokens.store import TokenStore
from server.tokens.wrapping import Wrapping, wrap_envelope

__all__ = [
    "auth_handler",
    "sys_handler",
    "identity_handler",
    "builtin_handler",
    "AppCore",
    "envelope",
    "json_response",
    "read_operation",
    "remote_addr",
    "request_token",
    "caller",
    "authorize",
    "no_route",
    "refuse_namespace",
    "help_reply",
    "requested_wrap_ttl",
    "refuse_unwrappable",
    "wrap_reply",
]

_BOOL = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
         "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}
_CAPABILITY = {
    Operation.READ: "read", Operation.LIST: "list", Operation.DELETE: "delete",
    Operation.CREATE: "create", Operation.UPDATE: "update", Operation.PATCH: "patch",
}
#: The only body a ``PATCH`` takes (OpenBao's rule): a JSON merge patch (RFC 7396).
MERGE_PATCH = "application/merge-patch+json"
#: Bodies read as a form (unless they start with ``{``). Vault reads ``multipart/form-data``
#: as JSON too (OpenBao 2.7.2 answers ``failed to decode JSON input``): so does authmount.
_FORM_TYPES = ("application/x-www-form-urlencoded",)
#: Seconds a client gets to send a whole request body; a trickled body (slowloris) would
#: otherwise hold a handler and a connection for as long as the client likes.
BODY_READ_TIMEOUT = 10.0
# Never handed to backends: credentials of the caller.
_MARKER = MARKER_HEADER.lower()


#: The methods that write (Vault's UPDATE, or CREATE by existence).
WRITES = frozenset({"POST", "PUT"})


def json_response(body: dict[str, Any], status: int = 200) -> web.Response:
    """A JSON body with ``Content-Type: application/json`` exactly."""
    return JSONReply(orjson.dumps(body), status)


def envelope(
    request: web.Request,
    data: dict[str, Any] | None,
    *,
    auth: dict[str, Any] | None = None,
    warnings: Sequence[str] | None = None,
    mount_type: str = "",
    copy_top: bool = False,
) -> web.Response:
    """Vault's success envelope; ``copy_top`` also copies ``data`` keys to the top (sys/auth)."""
    body: dict[str, Any] = {
        "request_id": request.get(REQUEST_ID, ""),
        "lease_id": "",
        "renewable": False,
        "lease_duration": 0,
        "data": data,
        "wrap_info": None,
        "warnings": list(warnings) if warnings else None,
        "auth": auth,
        "mount_type": mount_type,
    }
    if copy_top and data:
        for key, value in data.items():
            body.setdefault(key, value)
    return json_response(body)


def no_route(path: str) -> PluginError:
    """Vault's 404 for a path no mount or sys route serves. A path with a line break, which
    no route pattern of the router matches, gets the bare ``{"errors": []}`` of a path
    outside ``/v1/``."""
    if "\n" in path:
        return UnsupportedPath(messages=[])
    return UnsupportedPath(f'no handler for route "{path}". route entry not found.')


# -- request decoding -------------------------------------------------------------------
def _multi(pairs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            prev = out[key]
            if isinstance(prev, list):
                prev.append(value)
            else:
                out[key] = [prev, value]
        else:
            out[key] = value
    return out


def _joined(pairs: Any) -> dict[str, str]:
    """A form body's fields: a key given more than once is its values joined with commas, as
    Vault reads forms (every list field splits them again); a query string keeps a list."""
    out: dict[str, str] = {}
    for key, value in pairs:
        out[key] = f"{out[key]},{value}" if key in out else value
    return out


#: ``Content-Encoding`` values a body may have, and the zlib window bits that decode them
#: (``deflate``: the zlib format, or raw deflate as many clients send it).
_ENCODINGS = {"gzip": 31, "x-gzip": 31, "deflate": 15}


def decoded_body(raw: bytes, encoding: str, limit: int) -> bytes:
    """``raw`` decoded from its ``Content-Encoding`` (none, ``identity`` and values that are
    no encoding pass as they are: Vault reads such bodies as they come). A stream must be
    whole: cut short, with bytes after its end, or not of that encoding at all, it is refused
    (aiohttp's own decoding took a truncated gzip stream as the part it held, and a few bytes
    of garbage as an empty body). The decoded body is bounded by ``limit`` too (0: none).

    :raises InvalidRequest: the body is not a whole stream of its encoding, or the encoding
        is one authmount does not read (``br``, ``zstd``, ``compress``).
    :raises web.HTTPRequestEntityTooLarge: decoded, it is larger than ``limit``.
    """
    name = encoding.strip().lower()
    if name in ("", "identity"):
        return raw
    bits = _ENCODINGS.get(name)
    if bits is None:
        if name in ("br", "zstd", "compress", "x-compress"):
            raise InvalidRequest(f"error reading the request body: Content-Encoding {name!r} is not supported "
                                 "(gzip and deflate are)")
        return raw
    out = _inflate(raw, bits, limit)
    if out is None and name == "deflate":
        out = _inflate(raw, -15, limit)  # raw deflate, without the zlib header
    if out is None:
        raise InvalidRequest(f"error reading the request body: it is not valid {name!r}")
    return out


def _inflate(raw: bytes, bits: int, limit: int) -> bytes | None:
    """The one whole stream ``raw`` holds, or None."""
    stream = zlib.decompressobj(wbits=bits)
    try:
        out = stream.decompress(raw, limit + 1 if limit > 0 else 0)
    except zlib.error:
        return None
    if 0 < limit < len(out):
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(out))
    if not stream.eof or stream.unused_data or stream.unconsumed_tail:
        return None
    return out


async def read_body(request: web.Request) -> dict[str, Any]:
    """The JSON object (or form) body of a write; ``{}`` when empty.

    :raises InvalidRequest: ``error parsing JSON`` for malformed or non-object JSON; a body
        its ``Content-Encoding`` does not decode (``decoded_body``).
    """
    if not request.body_exists:
        return {}
    content = request.content
    if content.is_eof():
        # The whole body has arrived: take it in one call (aiohttp's read() loops over
        # readany() and the flow control around it).
        raw = content.read_nowait()
        if 0 < request.client_max_size < len(raw):
            raise web.HTTPRequestEntityTooLarge(max_size=request.client_max_size, actual_size=len(raw))
    else:
        try:
            async with asyncio.timeout(BODY_READ_TIMEOUT):
                raw = await request.read()  # over client_max_size: HTTPRequestEntityTooLarge → 413
        except TimeoutError:
            raise web.HTTPRequestTimeout(reason="request body not received in time") from None
        except RequestPayloadError:  # the body's framing broke (a chunk cut short): nothing more can be read
            refused = InvalidRequest("error reading the request body")
            refused.headers = {"Connection": "close"}  # type: ignore[attr-defined]
            raise refused from None
    encoding = request.headers.get("Content-Encoding")
    if encoding is not None:
        raw = decoded_body(raw, encoding[:32], request.client_max_size)
    stripped = raw.lstrip()
    if not stripped:
        return {}
    # A JSON object needs no look at the Content-Type (aiohttp parses it with the email package).
    if not stripped.startswith(b"{") and request.content_type in _FORM_TYPES:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequest("error parsing form: invalid UTF-8") from exc
        return _joined(parse_qsl(text, keep_blank_values=True))
    # Nested deeper than anything the API takes: orjson would read it, then fail to write it to
    # storage or the audit log (its limit is 255 levels). A login's body, one object of strings,
    # passes the first test with two memchr scans, without counting.
    nested = b"[" in raw or raw.find(b"{", 1) >= 0
    if nested and raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and too_deep(raw.decode("utf-8", "replace")):
        raise InvalidRequest(f"error parsing JSON: nested too deeply (more than {MAX_JSON_DEPTH} levels)")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest("error parsing JSON") from exc
    if data is None:
        return {}  # the Vault CLI sends `null` for a write without data (`vault unwrap`)
    if not isinstance(data, dict):
        raise InvalidRequest("error parsing JSON")
    return data


async def read_operation(request: web.Request) -> tuple[Operation, dict[str, Any]]:
    """Map the HTTP method (and ``?list=``) to an Operation and collect the request data.

    :raises InvalidRequest: a non-boolean ``list`` value, bad JSON.
    :raises UnsupportedOperation: an HTTP method Vault does not map.
    """
    method = request.method
    if method == "GET" or method == "HEAD":
        is_list = is_list_verb(request.headers)
        data = _multi(request.query.items()) if request.query_string else {}
        if "list" in data:
            value = data.pop("list")
            if not is_list:
                flag = _BOOL.get(value) if isinstance(value, str) else None
                if flag is None:
                    raise InvalidRequest(f"invalid value for 'list' parameter: {str(value)[:32]!r} is not a boolean")
                is_list = flag
        return (Operation.LIST if is_list else Operation.READ), data
    if method == "POST" or method == "PUT":
        return Operation.UPDATE, await read_body(request)
    if method == "DELETE":
        return Operation.DELETE, _multi(request.query.items()) if request.query_string else {}
    if method == "PATCH":
        if "Content-Type" not in request.headers:
            raise InvalidRequest("mime: no media type")  # OpenBao's (Go's) text
        if request.content_type != MERGE_PATCH:
            raise UnsupportedMediaType(f"PATCH requires Content-Type of {MERGE_PATCH}, provided {request.content_type}")
        return Operation.PATCH, await read_body(request)
    raise UnsupportedOperation()


def request_token(request: web.Request) -> str | None:
    """The caller's token from ``X-Vault-Token`` or ``Authorization: Bearer``."""
    headers = request.headers
    token = headers.get("X-Vault-Token")
    if token:
        return token
    authz = headers.get("Authorization")
    if authz and authz[:7].lower() == "bearer ":
        return authz[7:].strip() or None
    return None


def remote_addr(request: web.Request) -> str:
    """The effective client IP: the socket peer, or X-Forwarded-For from a trusted proxy.

    Vault's rule: only when the peer is a trusted proxy, take the XFF entry at
    ``len - 1 - hop_skips`` (rightmost-based; never the client-controlled leftmost one).

    :raises InvalidRequest: the chain is shorter than the hop skips, or the entry is no IP.
    """
    try:
        known = request[REMOTE_ADDR]  # "" until found (``handled`` sets it: a miss would raise)
    except KeyError:  # a request that did not pass ``handled`` (tests)
        known = ""
    if known:
        return known
    peer = request.remote or ""
    settings = request.app[SETTINGS]
    addr = peer
    if settings.trusted_proxies:
        try:
            peer_ip = ipaddress.ip_address(peer)
        except ValueError:
            peer_ip = None
        if peer_ip is not None and any(peer_ip in net for net in settings.trusted_proxies):
            chain = [p.strip() for h in request.headers.getall("X-Forwarded-For", ()) for p in h.split(",")]
            chain = [p for p in chain if p]
            if chain:
                skips = settings.x_forwarded_for_hop_skips
                idx = len(chain) - 1 - skips
                if idx < 0:
                    raise InvalidRequest(
                        f"malformed x-forwarded-for configuration or request, hops to skip ({skips}) "
                        f"would skip before earliest chain link (chain length {len(chain)})"
                    )
                try:
                    addr = str(ipaddress.ip_address(chain[idx]))
                except ValueError as exc:
                    raise InvalidRequest("invalid x-forwarded-for address") from exc
    request[REMOTE_ADDR] = addr
    return addr


async def caller(request: web.Request) -> tuple[TokenEntry, str]:
    """The caller's token (and the raw token it sent): ``X-Vault-Token`` or ``Authorization:
    Bearer`` looked up (and a use consumed), or the token of the login its inline
    authentication headers ask for (``server.http.inline``; the raw token is then ``""``).

    :raises PermissionDenied: no token, an unknown, expired or exhausted one, or one whose
        bound CIDRs do not take the caller's address.
    :raises PluginError: the inline login's refusal, with ``X-Vault-Inline-Auth-Failed``.
    """
    raw = request_token(request)
    if PATH_HEADER in request.headers:
        try:
            if raw:
                raise inline_refused("cannot layer inline authentication with token authentication")
            login = read_inline(request.headers, request.client_max_size)
            assert login is not None
            return await inline_login(request, login, remote_addr(request)), ""
        except PluginError as exc:
            exc.headers = {**(getattr(exc, "headers", None) or {}), FAILED_HEADER: "true"}  # type: ignore[attr-defined]
            raise
    if not raw:
        raise PermissionDenied()
    return await request.app[TOKENS].authenticate(raw, remote_addr(request)), raw


async def inline_login(request: web.Request, login: InlineLogin, remote: str) -> InlineEntry:
    """Run an inline authentication's login for ``request`` (from ``remote``), as a login
    request of its own runs (quotas, login limits, its own audit entries, the login
    metrics), and return the token it stands for, which nothing stores.

    :raises PermissionDenied: the path is no login path of an enabled auth mount; the token's
        bound CIDRs do not take ``remote``.
    :raises PluginError: the login's own refusal.
    """
    path, app = login.path, request.app
    found = await app[MOUNTS].match_fresh(path[len("auth/"):]) if path.startswith("auth/") else None
    if found is None:
        raise PermissionDenied(NOT_LOGIN)
    mount, rel = found
    req = mount_request(request, mount, login.operation, rel, login.data, remote)
    backend = mount.backend
    try:
        route = req.route = backend.resolve(rel)
    except UnsupportedPath:
        raise PermissionDenied(NOT_LOGIN) from None
    if not (route.spec.unauthenticated and route.spec.issues_token):
        raise PermissionDenied(NOT_LOGIN)
    rel = req.path = route.path
    full = "auth/" + mount.entry.path + rel
    quotas = app[QUOTAS]
    if quotas.active:
        quotas.check(full, "auth/" + mount.entry.path, await _quota_role(quotas, mount, req), remote)
    exchange = Exchange(request, req, full, mount=mount.entry, login=True, inline=True)
    try:
        await exchange.requested(None)
        resp = await limited(request, backend, req, full)
        if resp is None or resp.auth is None:
            raise inline_refused(f"{full} answered without a token (a login of more than one step cannot be inline)")
        entry, resp.auth_block, warnings = await app[TOKENS].inline(resp.auth, mount=mount.token_info(), path=full)
    except Exception as exc:
        await exchange.failed(exc)
        raise
    resp.warnings = [*resp.warnings, *warnings]
    await exchange.responded(resp, None)
    if entry.bound_cidrs and not cidr_allows(entry.bound_cidrs, remote):
        raise PermissionDenied()  # as the token's use from this address would be
    return entry


async def authorize(
    request: web.Request, path: str, capabilities: Sequence[str] = (), *, allowed: Any = None,
    judged: Request | None = None,
) -> Any:
    """Authenticate the caller's token and check every capability on ``path``.

    ``allowed``, when given, is an async callable ``(acl) -> bool`` that decides instead of
    ``capabilities`` (writes: create vs update). ``judged``: the request whose wrapping
    and (for a read or write) parameters the governing rule's constraints judge too
    (``ACL.permits``, with the route's fields). Returns the TokenEntry. The caller must
    ``release`` it after the request when ``num_uses == -1`` (its last use); ``authorize``
    does so itself on denial.

    :raises PermissionDenied: missing/invalid token or an ACL denial.
    """
    entry, raw = await caller(request)
    tokens = request.app[TOKENS]
    if tokens.entity_disabled(entry):  # as Vault: a disabled entity's tokens do nothing
        granted = False
    else:
        acl = await tokens.acl(entry, request.app[POLICIES], path)
        if allowed is not None:
            granted = await allowed(acl)
        else:
            listing = "list" in capabilities  # a LIST's sudo is judged on the LIST's rule
            granted = all(acl.allows(path, cap, listing=listing) for cap in capabilities)
        if granted and judged is not None and acl.constrained:
            op, route = judged.operation, judged.route
            # Vault judges the parameters of reads and writes only (not of a LIST or a DELETE).
            data = judged.data if op is Operation.READ or op is Operation.UPDATE or op is Operation.PATCH else None
            granted = acl.permits(path, data, route.spec.fields if route is not None else None,
                                  wrap_ttl=requested_wrap_ttl(request), listing=op is Operation.LIST)
    if not granted:
        await release(request, entry)
        raise PermissionDenied()
    request[TOKEN_RAW] = raw
    return entry


async def refuse_unknown(request: web.Request, path: str, op: Operation) -> NoReturn:
    """No handler serves ``path``. Vault checks the token and the ACL before it routes, so a
    caller without a token, or one its policies do not allow ``path``, is told ``403
    permission denied``, not which paths exist; only an allowed caller learns ``404``.

    :raises PermissionDenied: as ``authorize``.
    :raises UnsupportedPath: Vault's ``no handler for route``.
    """
    if "\n" not in path:  # a line break: no path of any server, so a 404 tells nothing
        entry = await authorize(request, path, (_CAPABILITY[op],))
        await release(request, entry)
    raise no_route(path)


async def release(request: web.Request, entry: Any) -> None:
    """Revoke a token whose last use this request was."""
    if entry is not None and getattr(entry, "num_uses", 0) == -1:
        await request.app[TOKENS].release(entry)


class BackendHeaders(Mapping[str, str]):
    """The request headers a backend may see: lower-case names, the caller's credentials
    (token, cookies, inline authentication, the LIST marker) hidden. A view built per request at no cost; no
    backend reads headers on the login path, so nothing is copied unless one does."""

    __slots__ = ("_headers", "_copy")

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._headers = headers
        self._copy: dict[str, str] | None = None

    def _dict(self) -> dict[str, str]:
        if self._copy is None:
            self._copy = {k.lower(): v for k, v in self._headers.items()
                          if k.lower() != _MARKER and not carries_credential(k.lower())}
        return self._copy

    def __getitem__(self, key: str) -> str:
        return self._dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())


async def _write_capability(backend: Backend, req: Request) -> str:
    """``create`` or ``update`` for a write, decided by the path's existence check (Vault)."""
    route = req.route
    if route is None or route.spec.existence_check is None:
        return "update"
    try:
        values, _ = route.spec.fields.parse(dict(route.captures))
        return "update" if await route.spec.existence_check(req, values) else "create"
    except PluginError:
        return "update"


# -- the mount route ----------------------------------------------------------------------
def mount_request(request: web.Request, mount: Mount, op: Operation, rel: str, data: dict[str, Any],
                  remote: str) -> Request:
    """The plugin ``Request`` of ``op`` on ``rel`` of ``mount`` from a caller at ``remote``: the
    mount's storage and system view, the headers a backend may see (``BackendHeaders``)."""
    return Request(
        operation=op, path=rel, data=data, storage=mount.storage, system=mount.system,
        connection=Connection(remote), headers=BackendHeaders(request.headers),
        refuse_unknown=request.app[SETTINGS].refuse_unknown_parameters,
    )


async def auth_handler(request: web.Request) -> web.StreamResponse:
    """``/v1/auth/{path}``: find the mount, check the token, call the backend."""
    path = request.match_info["path"]
    refuse_namespace(request)
    wrap_ttl = requested_wrap_ttl(request)
    op, data = await read_operation(request)
    found = await request.app[MOUNTS].match_fresh(path)
    if found is None:
        await refuse_unknown(request, "auth/" + path, op)
    mount, rel = found
    entry_path = mount.entry.path
    request[MOUNT] = entry_path
    if op is Operation.LIST and rel and not rel.endswith("/"):
        rel += "/"
    remote = remote_addr(request)
    req = mount_request(request, mount, op, rel, data, remote)
    backend = mount.backend
    try:
        # Names in the path take their canonical spelling here, before the ACL check, so
        # the ACL judges the name the handler will use (role/ADMIN is role/admin).
        route = req.route = backend.resolve(rel)
        rel = req.path = route.path
    except UnsupportedPath:
        route = None  # the ACL judges the raw path; the backend then answers 404
    if request.query.get("help"):
        return await help_reply(request, backend, route, rel, "auth/" + entry_path)
    quotas = request.app[QUOTAS]
    if quotas.active:
        quotas.check("auth/" + entry_path + rel, "auth/" + entry_path, await _quota_role(quotas, mount, req), remote)
    if wrap_ttl is not None:
        refuse_unwrappable(route, "auth/" + entry_path + rel)
    login = route is not None and route.spec.unauthenticated
    exchange = Exchange(request, req, "auth/" + entry_path + rel, mount=mount.entry, login=login)
    entry = None
    try:
        if not login:
            sudo = route is not None and route.spec.sudo
            entry = await _check_token(request, backend, req, "auth/" + entry_path + rel, sudo)
        try:
            await exchange.requested(entry)
            resp = await (backend.handle_request(req) if entry is not None else limited(request, backend, req))
        finally:
            await release(request, entry)
        out = await respond(request, resp, mount, op, rel)
        if wrap_ttl is not None:
            out = await wrap_reply(request, out, wrap_ttl, "auth/" + entry_path + rel)
    except Exception as exc:
        await exchange.failed(exc)
        raise
    await exchange.responded(resp, out)
    return out


async def _check_token(request: web.Request, backend: Backend, req: Request, full: str, sudo: bool) -> Any:
    """Authenticate the caller and check the ACL on ``full`` (the canonical path) for the
    request's operation, and ``sudo`` too when the path requires it; hand the token to the
    request. A write needs ``create`` or ``update`` as the path's existence check decides.

    :raises PermissionDenied: missing/invalid token or an ACL denial.
    """
    op = req.operation
    if op is Operation.LIST and not full.endswith("/"):
        full += "/"  # as Vault judges a LIST: the directory (sys/policies/acl/)
    if op is Operation.UPDATE:

        async def may_write(acl: Any) -> bool:
            can_update, can_create = acl.allows(full, "update"), acl.allows(full, "create")
            # Only when exactly one of the two is granted does existence matter.
            granted = bool(can_update and can_create) or (
                (can_update or can_create) and acl.allows(full, await _write_capability(backend, req))
            )
            return granted and (not sudo or acl.allows(full, "sudo"))

        entry = await authorize(request, full, allowed=may_write, judged=req)
    else:
        entry = await authorize(request, full, (_CAPABILITY[op], "sudo") if sudo else (_CAPABILITY[op],),
                                judged=req)
    req.token = {"entry": entry, "raw": request[TOKEN_RAW]}
    return entry


# -- the sys route ------------------------------------------------------------------------
class AppCore:
    """``server.sys.core.SysCore`` over the application's state, read when a request needs it
    (the sys backend is built with the routes, before that state exists)."""

    __slots__ = ("_app",)

    def __init__(self, app: web.Application) -> None:
        self._app = app

    @property
    def settings(self) -> Settings:
        return self._app[SETTINGS]

    @property
    def mounts(self) -> MountTable:
        return self._app[MOUNTS]

    @property
    def policies(self) -> PolicyStore:
        policies: PolicyStore = self._app[POLICIES]
        return policies

    @property
    def tokens(self) -> TokenStore:
        tokens: TokenStore = self._app[TOKENS]
        return tokens

    @property
    def cluster_id(self) -> str:
        return self._app[CLUSTER_ID]

    @property
    def keyring(self) -> Keyring:
        return self._app[KEYRING]

    @property
    def storage(self) -> Engine:
        return self._app[STORAGE]

    @property
    def audit(self) -> AuditBroker:
        return self._app[AUDIT]

    @property
    def node(self) -> Node:
        return self._app[NODE]

    @property
    def quotas(self) -> Quotas:
        return self._app[QUOTAS]

    @property
    def cors(self) -> Cors:
        return self._app[CORS]


async def _quota_role(quotas: Quotas, mount: Mount, req: Request) -> str:
    """The role a request names for the rate limit quotas: its ``role``, lower-cased as the
    login takes it; without one, on a mount some role quota names, the mount's
    ``default_role`` (the role the login will use, as Vault resolves it for its quotas)."""
    role = req.data.get("role")
    if isinstance(role, str) and role:
        return role.lower()
    if "auth/" + mount.entry.path not in quotas.role_mounts or not isinstance(mount.backend, JWTAuthBackend):
        return ""
    config = await mount.backend.config(req)
    return config.default_role.lower() if config is not None else ""


def builtin_handler(
    backend: Backend, point: str, kind: str, acl: Callable[[Route], str]
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """``/v1/<point>{path}`` served by a backend built into the server (``sys/``,
    ``identity/``), the way ``auth_handler`` serves a mount: a namespace or a wrap refused,
    ``?help=1``, one resolve (names made canonical), then the token and the ACL on ``acl(route)``
    (with ``sudo`` where the path requires it) unless the path needs no token, then the
    handler. ``point`` and ``kind`` name the backend in audit entries and metrics."""

    async def builtin_route(request: web.Request) -> web.StreamResponse:
        rel = request.match_info["path"]
        refuse_namespace(request)
        wrap_ttl = requested_wrap_ttl(request)
        data: dict[str, Any]
        if request.method in WRITES and _ignores_body(backend, rel):
            op, data = Operation.UPDATE, {}
        else:
            op, data = await read_operation(request)
        if op is Operation.LIST and rel and not rel.endswith("/"):
            rel += "/"  # as Vault's HTTP layer: a LIST names a directory (sys/leases/lookup/*)
        req = Request(operation=op, path=rel, data=data, headers=BackendHeaders(request.headers),
                      refuse_unknown=request.app[SETTINGS].refuse_unknown_parameters)
        try:
            route = req.route = backend.resolve(rel)
        except UnsupportedPath:
            if request.query.get("help"):
                return await help_reply(request, backend, None, rel, point)
            await refuse_unknown(request, point + rel, op)
        if request.query.get("help"):
            return await help_reply(request, backend, route, rel, point)
        if wrap_ttl is not None:
            refuse_unwrappable(route, point + rel)
        req.path = route.path
        quotas = request.app[QUOTAS]
        if quotas.active:
            quotas.check(point + req.path, point, "", remote_addr(request))
        spec = route.spec
        # The status paths that need no token are not audited (as in Vault).
        exchange = Exchange(request, req, point + req.path, mount=None, login=False,
                            audited=not spec.unauthenticated or spec.login_like, point=point, kind=kind)
        entry = None
        try:
            if not spec.unauthenticated:
                entry = await _check_token(request, backend, req, acl(route), spec.sudo)
            else:
                # What the caller sent as its token, for a path that reads it without using it
                # (``sys/wrapping/lookup`` of the calling wrapping token).
                # The Authorization header as sent, for a path that authenticates its caller itself
                # (the OIDC provider's token endpoint: client_secret_basic; its userinfo: Bearer).
                req.token = {"entry": None, "raw": request_token(request) or "",
                             "authorization": request.headers.get("Authorization", "")}
            try:
                await exchange.requested(entry)
                if spec.free_form and wrap_ttl is None:  # it answers what it was sent: only ever wrapped
                    raise InvalidRequest("endpoint requires response wrapping to be used")
                limiter = request.app.get(LIMITER) if spec.login_like else None
                if limiter is not None:
                    resp = await limiter.run(point + req.path, remote_addr(request), backend, req)
                else:
                    resp = await backend.handle_request(req)
            finally:
                await release(request, entry)
            if resp is not None and resp.stream is not None:
                out = await stream_reply(request, resp.stream, resp.content_type)
            else:
                out = _reply(request, resp, copy_top=isinstance(spec, SysPath) and spec.copy_top, mount_type=kind)
            if wrap_ttl is not None:
                out = await wrap_reply(request, out, wrap_ttl, point + req.path, data=spec.free_form)
        except Exception as exc:
            await exchange.failed(exc)
            raise
        await exchange.responded(resp, out)
        return out

    return builtin_route


def _ignores_body(backend: Backend, rel: str) -> bool:
    """Whether a write to ``rel`` goes to a path that does not read its body."""
    try:
        return backend.resolve(rel).spec.ignores_body
    except PluginError:
        return False


def sys_handler(backend: SysBackend) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """``/v1/sys/{path}``: the ACL judges ``sys/`` + the canonical path, or the path's own
    ``acl_path`` (``server.sys.core.acl_path``)."""
    return builtin_handler(backend, "sys/", "system", acl_path)


def identity_handler(backend: Backend) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """``/v1/identity/{path}`` served by ``server.identity.backend``: the ACL judges
    ``identity/`` + the canonical path."""
    return builtin_handler(backend, "identity/", "identity", lambda route: "identity/" + route.path.rstrip("/"))


def _reply(request: web.Request, resp: Response | None, *, copy_top: bool, mount_type: str) -> web.StreamResponse:
    """A sys or identity Response as HTTP: 204, a bare body, or the envelope (``mount_type``
    ``system`` or ``identity``, the types Vault's built-in mounts have)."""
    if resp is None:
        return web.Response(status=204)
    if resp.raw_body is not None:
        return _raw(resp)
    out = envelope(request, resp.data, warnings=resp.warnings, copy_top=copy_top, mount_type=mount_type)
    if resp.status:
        out.set_status(resp.status)
    for key, value in resp.headers.items():
        out.headers[key] = value
    return out


async def stream_reply(request: web.Request, stream: AsyncGenerator[bytes, None], content_type: str | None) -> web.StreamResponse:
    """A Response's ``stream`` written as it comes (``sys/monitor``), chunked; it ends when the
    stream does (the server stopping) or when the client has gone, which an empty chunk lets
    it see while there is nothing to write."""
    out = web.StreamResponse(headers={hdrs.CONTENT_TYPE: content_type or "application/octet-stream",
                                      hdrs.CACHE_CONTROL: NO_STORE})
    try:
        await out.prepare(request)
        async for chunk in stream:
            transport = request.transport
            if transport is None or transport.is_closing():
                break
            if chunk:
                await out.write(chunk)
    except ConnectionError:  # the client went away mid-write (aiohttp's reset error is one)
        pass
    finally:
        await stream.aclose()
    return out


def _raw(resp: Response) -> web.Response:
    """A Response's ``raw_body`` (HTML of the OIDC callback, a bare JSON body) as it is."""
    headers = dict(resp.headers)
    headers["Content-Type"] = resp.content_type or "application/octet-stream"
    return web.Response(body=resp.raw_body, status=resp.status or 200, headers=headers)


async def respond(
    request: web.Request, resp: Response | None, mount: Mount, op: Operation, rel: str = ""
) -> web.StreamResponse:
    """Turn a backend Response into HTTP (minting the token for logins)."""
    if resp is None:
        return web.Response(status=204)
    if resp.raw_body is not None:
        return _raw(resp)
    if op is Operation.LIST and not (resp.data or {}).get("keys"):
        return error_response(404, [])
    warnings = list(resp.warnings)
    auth_block = resp.auth_block
    if resp.auth is not None:
        auth_block, issue_warnings = await request.app[TOKENS].issue(
            resp.auth,
            mount=mount.token_info(),
            path="auth/" + mount.entry.path + rel if rel else None,
        )
        warnings.extend(issue_warnings)
        request[ISSUED] = auth_block  # the audit log's response entry (server.http.audited)
        if resp.auth.response_metadata:
            # Secrets for the caller only (a role's oauth2_metadata): in this envelope, never
            # in the token store's entry or block (the audit log records them hashed, from
            # resp.auth: server.http.audited).
            auth_block = {**auth_block, "metadata": {**(auth_block.get("metadata") or {}),
                                                     **resp.auth.response_metadata}}
    out = envelope(request, resp.data, auth=auth_block, warnings=warnings, mount_type=mount.entry.type)
    if resp.status:
        out.set_status(resp.status)
    for key, value in resp.headers.items():
        out.headers[key] = value
    return out


# -- what the edge answers itself: namespaces, help, response wrapping ------------------------
def refuse_namespace(request: web.Request) -> None:
    """authmount has only the root namespace: ``X-Vault-Namespace`` other than empty or
    ``root`` (``BAO_NAMESPACE``/``VAULT_NAMESPACE`` of the CLI) is refused, not ignored, so a
    request meant for a namespace never changes the root one.

    :raises InvalidRequest: naming the namespace asked for.
    """
    name = foreign_namespace(request.headers.get("X-Vault-Namespace"))
    if name is None:
        return
    raise InvalidRequest(
        f"namespace {quoted(name)} is not supported: authmount serves only the root namespace "
        '(send no X-Vault-Namespace header, or "root")'
    )


async def help_reply(
    request: web.Request, backend: Backend, route: Route | None, rel: str, prefix: str
) -> web.StreamResponse:
    """``<path>?help=1`` (``vault path-help``): Vault's help document built from the path's
    schema. Any valid token may read it (no ACL check, as in Vault); a path that needs no
    token needs none for its help either.

    :raises PermissionDenied: no valid token for a path that needs one.
    :raises UnsupportedPath: no path of the backend matches.
    """
    if route is None or not route.spec.unauthenticated:
        entry, _ = await caller(request)
        await release(request, entry)
    if route is None:
        raise UnsupportedPath("unsupported path")
    return json_response(backend.help(route, rel, prefix))


def requested_wrap_ttl(request: web.Request) -> int | None:
    """The ``X-Vault-Wrap-TTL`` asked for (seconds), or None.

    :raises InvalidRequest: not a duration, negative, or above the server's ``max_lease_ttl``.
    """
    value = request.headers.get("X-Vault-Wrap-TTL", "").strip()
    if not value:
        return None  # absent or empty: no wrapping (Go's Header.Get does not tell them apart)
    try:
        ttl = parse_duration(value)
    except ValueError as exc:
        raise InvalidRequest(f"invalid X-Vault-Wrap-TTL: {exc}") from None
    if ttl == 0:
        return None  # Vault: a zero TTL asks for no wrapping
    ceiling = request.app[SETTINGS].max_lease_ttl
    if ttl > ceiling:
        raise InvalidRequest(f"invalid X-Vault-Wrap-TTL: {ttl}s is above max_lease_ttl ({ceiling}s)")
    return ttl


def refuse_unwrappable(route: Route | None, path: str) -> None:
    """Only responses that carry a new token (logins, token creation) are wrapped; a wrap
    asked of any other path is refused before it runs, never answered unwrapped.

    :raises InvalidRequest: ``<path>: this response cannot be wrapped ...``.
    """
    if route is None or not route.spec.issues_token:
        raise InvalidRequest(_UNWRAPPABLE.format(path))


_UNWRAPPABLE = ("{}: this response cannot be wrapped (X-Vault-Wrap-TTL): only logins, token creation and "
                "sys/wrapping/wrap are wrapped")


async def wrap_reply(request: web.Request, out: web.StreamResponse, ttl: int, path: str, *,
                     data: bool = False) -> web.StreamResponse:
    """Keep ``out``, the response a login or a token creation would have sent (``data``: or the
    data ``sys/wrapping/wrap`` answers), behind a new single-use wrapping token
    (``server.tokens.wrapping``) and answer with its ``wrap_info``.

    :raises InvalidRequest: ``out`` carries no token (nor, with ``data``, data): nothing is
        answered unwrapped.
    """
    body = out.body if isinstance(out, web.Response) else None
    parsed = orjson.loads(body) if isinstance(body, bytes) and out.content_type == "application/json" else None
    sent = parsed if isinstance(parsed, dict) and out.status == 200 else {}
    auth = sent.get("auth")
    if not isinstance(body, bytes) or not (isinstance(auth, dict) or data and isinstance(sent.get("data"), dict)):
        raise InvalidRequest(_UNWRAPPABLE.format(path))
    auth = auth if isinstance(auth, dict) else {}
    wrapping = Wrapping(request.app[TOKENS], request.app[KEYRING])
    info = await wrapping.wrap(body, ttl=ttl, creation_path=path, path=path,
                               wrapped_accessor=str(auth.get("accessor") or ""))
    return json_response(wrap_envelope(info, request.get(REQUEST_ID, "")))
