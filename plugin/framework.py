"""The small request/response protocol between the server and auth method backends.

A backend never sees HTTP. The server strips the mount prefix, builds a ``Request`` and
awaits ``backend.handle_request(request)``; the backend returns a ``Response`` holding
``data``, ``auth`` (for logins: the server mints the token) and ``warnings``, or raises a
``PluginError``. This mirrors Vault's ``logical.Request``/``logical.Response``.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from http import HTTPStatus
from types import MappingProxyType
from typing import Any, Protocol

from plugin import pathdoc
from plugin.errors import NotFound, PluginError, UnsupportedOperation, UnsupportedPath
from plugin.schema import FieldSet, FieldType
from plugin.sealing import EphemeralSealer, Sealer
from plugin.storage import Storage

__all__ = [
    "Operation",
    "Connection",
    "SystemView",
    "StaticSystemView",
    "Events",
    "NoEvents",
    "FetchResult",
    "ClientCert",
    "Fetcher",
    "Request",
    "Alias",
    "Auth",
    "Response",
    "PathSpec",
    "Route",
    "Handler",
    "Backend",
]

#: Raw paths whose Route each Backend remembers.
_MATCH_CACHE_SIZE = 1024


class Operation(str, Enum):
    """What the caller wants to do; the server maps HTTP methods onto these."""

    READ = "read"
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    LIST = "list"
    RENEW = "renew"
    #: HTTP ``PATCH`` with a JSON merge patch: change only the fields sent (OpenBao's).
    PATCH = "patch"


@dataclass(frozen=True, slots=True)
class Connection:
    """Who is calling: the effective client IP (after trusted-proxy handling)."""

    remote_addr: str


@dataclass(frozen=True, slots=True)
class FetchResult:
    """An HTTP answer from an identity provider, already size-capped."""

    status: int
    headers: dict[str, str]
    body: bytes


#: A TLS client certificate for outbound calls: (certificate chain PEM, private key PEM).
ClientCert = tuple[str, str]


class Fetcher(Protocol):
    """Outbound HTTP used by backends (JWKS, discovery, token and userinfo endpoints).

    Implementations enforce the timeout and ``max_bytes``, trust only ``ca_pem`` when it is
    given, present ``client_cert`` (``(certificate chain PEM, private key PEM)``) when the
    server asks for a client certificate (mTLS), accept a certificate for any host of
    ``server_names`` (when given) instead of the URL's host, never follow a redirect to another host,
    and raise ``UpstreamError`` with a short reason (no response body) on network, TLS,
    timeout or size failures.
    """

    async def fetch(
        self,
        method: str,
        url: str,
        *,
        ca_pem: str | None = None,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
        max_bytes: int = 1 << 20,
        client_cert: ClientCert | None = None,
        server_names: tuple[str, ...] = (),
    ) -> FetchResult: ...


class Events(Protocol):
    """What a backend reports for the server's metrics (per mount; ``NoEvents`` drops it).

    ``kind`` of a key fetch: ``jwks`` or ``discovery``. ``stage`` of an OIDC flow:
    ``started`` (auth_url), ``completed`` (the callback or ``oidc/poll`` issued a token),
    ``failed`` (the callback, its page or the poll refused), ``expired`` (a callback or poll
    whose state expired, was forged or was used).
    """

    def key_fetch(self, kind: str, ok: bool) -> None: ...

    def key_cache_hit(self) -> None: ...

    def key_set_fetched(self, url: str, at: float) -> None: ...

    def oidc_flow(self, stage: str) -> None: ...


class NoEvents:
    """``Events`` that go nowhere (tests, tools)."""

    __slots__ = ()

    def key_fetch(self, kind: str, ok: bool) -> None:
        pass

    def key_cache_hit(self) -> None:
        pass

    def key_set_fetched(self, url: str, at: float) -> None:
        pass

    def oidc_flow(self, stage: str) -> None:
        pass


NO_EVENTS = NoEvents()


class SystemView(Protocol):
    """What a backend may ask of the server about its mount."""

    @property
    def default_lease_ttl(self) -> int: ...

    @property
    def max_lease_ttl(self) -> int: ...

    @property
    def mount_path(self) -> str: ...

    @property
    def mount_accessor(self) -> str: ...

    @property
    def fetcher(self) -> Fetcher: ...

    @property
    def verbose_login_errors(self) -> bool:
        """Whether refused logins tell anonymous callers what the role expects (development only)."""
        ...

    @property
    def sealer(self) -> Sealer:
        """Seals this mount's secrets at rest (contexts are relative to the mount)."""
        ...

    @property
    def events(self) -> Events:
        """Where this mount reports key fetches, cache hits and OIDC flows (metrics)."""
        ...

    def now(self) -> float: ...


@dataclass(slots=True)
class StaticSystemView:
    """A fixed SystemView for tests and tools (Vault's ``StaticSystemView``)."""

    default_lease_ttl: int = 768 * 3600
    max_lease_ttl: int = 768 * 3600
    mount_path: str = "auth/jwt/"
    mount_accessor: str = "auth_jwt_00000000"
    fetcher: Any = None
    clock: Callable[[], float] = time.time
    verbose_login_errors: bool = False
    sealer: Sealer = field(default_factory=EphemeralSealer)
    events: Events = NO_EVENTS

    def now(self) -> float:
        return self.clock()


@dataclass(slots=True)
class Request:
    """One call into a backend. ``path`` is relative to the mount (no leading slash)."""

    operation: Operation
    path: str
    data: dict[str, Any] = field(default_factory=dict)
    storage: Storage | None = None
    system: SystemView | Any = None
    connection: Connection | None = None
    #: Request headers (lower-case names, without the caller's credentials); read-only.
    headers: Mapping[str, str] = field(default_factory=dict)
    #: For RENEW: the token being renewed, as the Auth it was issued from.
    auth: Auth | None = None
    #: On authenticated paths: ``{"entry": server.tokens.TokenEntry, "raw": "<the caller's
    #: token>"}`` (the entry after this request's use was consumed); None on login paths.
    #: Only the built-in ``token/`` backend reads it; auth methods must not store it.
    token: dict[str, Any] | None = None
    #: Values captured from the path pattern, canonical (filled by ``Backend.handle_request``).
    captures: dict[str, str] = field(default_factory=dict)
    #: The resolved path, when the server resolved it before the ACL check (else
    #: ``handle_request`` resolves ``path`` itself).
    route: Route | None = None
    #: Refuse (400) a write to a path that needs a token when it carries parameters the
    #: path does not declare, instead of ignoring them with a warning (the setting
    #: ``refuse_unknown_parameters``; always on for seeded objects). Logins are never
    #: refused for them: an IdP may add parameters of its own to a callback.
    refuse_unknown: bool = False

    def require_storage(self) -> Storage:
        """The mount's storage, for handlers that read or write it.

        The server passes storage with every mount request; only hand-built requests
        (tests, the token backend's own calls) may leave it out.

        :raises RuntimeError: when the request carries no storage (a caller bug: a 500).
        """
        if self.storage is None:
            raise RuntimeError(f"request for {self.path!r} has no storage")
        return self.storage


@dataclass(slots=True)
class Alias:
    """The identity a login maps to (Vault entity alias): name plus metadata."""

    name: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Auth:
    """What a successful login returns; the server turns it into a token.

    TTL fields are seconds; 0 means "use the mount default/maximum". ``token_type`` is
    ``default``, ``service`` or ``batch``. ``internal_data`` is kept server-side with the
    token and handed back on renewal (it holds the role name). ``response_metadata`` are
    secrets for the caller only (a role's ``oauth2_metadata``: the IdP's tokens): the login
    response's ``auth.metadata`` shows them next to ``metadata`` (the HTTP edge adds them to
    the envelope); they are never stored with the token, never put into a batch token, and
    never in the token store's ``auth`` block, which is what the audit log records.
    """

    display_name: str = ""
    policies: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    alias: Alias | None = None
    group_aliases: list[str] = field(default_factory=list)
    internal_data: dict[str, Any] = field(default_factory=dict)
    ttl: int = 0
    max_ttl: int = 0
    explicit_max_ttl: int = 0
    period: int = 0
    num_uses: int = 0
    bound_cidrs: list[str] = field(default_factory=list)
    token_type: str = "default"
    no_default_policy: bool = False
    renewable: bool = True
    response_metadata: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Response:
    """What a backend returns. ``raw_body`` (with ``status``/``content_type``) is for the
    rare non-JSON answers such as the OIDC callback's HTML page."""

    data: dict[str, Any] | None = None
    auth: Auth | None = None
    warnings: list[str] = field(default_factory=list)
    status: int | None = None
    content_type: str | None = None
    raw_body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: A finished Vault ``auth`` object, put verbatim into the envelope. Only the built-in
    #: ``token/`` backend sets it (token create/renew); logins return ``auth`` instead.
    auth_block: dict[str, Any] | None = None
    #: A login refused with a page rather than an error (the OIDC callback's HTML pages),
    #: its ``login`` set by ``path_login.refused``: the audit log and the login metrics
    #: record it as they record a raised refusal.
    refused: PluginError | None = None
    #: A body written as it comes (``sys/monitor``'s log lines), with ``content_type``: the
    #: server writes each chunk at once and ends when the iterator does or the client leaves.
    #: An empty chunk writes nothing; it lets the server check that the client is still there.
    stream: AsyncGenerator[bytes, None] | None = None

    def add_warning(self, message: str) -> None:
        self.warnings.append(message)


Handler = Callable[[Request, dict[str, Any]], Awaitable[Response | None]]


@dataclass(slots=True)
class PathSpec:
    """One API path of a backend: its pattern, field schema and handlers.

    ``pattern`` is a regex matched against the whole relative path; named groups become
    fields (declare them in ``fields`` with ``FieldType.NAME``). Handlers receive the
    request and the coerced values of the fields that were present. The server reads
    ``unauthenticated`` and ``sudo`` from the resolved Route before the handler runs.
    """

    pattern: str
    fields: FieldSet
    operations: dict[Operation, Handler]
    summary: str = ""
    description: str = ""
    #: No token needed (login-type paths; Vault's ``PathsSpecial.Unauthenticated``).
    unauthenticated: bool = False
    #: Its responses carry a new token (logins, token creation), or exist to be wrapped
    #: (``sys/wrapping/wrap``): the only responses the server wraps for ``X-Vault-Wrap-TTL``;
    #: a wrap asked of any other path is refused.
    issues_token: bool = False
    #: The handler takes the request's data as it is (``req.data``): no field is declared
    #: for it, and no parameter is unknown (``sys/wrapping/wrap`` wraps whatever it is sent).
    free_form: bool = False
    #: A write's body is not read (nor parsed as JSON): the handler answers without it
    #: (``sys/storage/raft/snapshot``'s restore, a gzipped tar, refused with advice).
    ignores_body: bool = False
    #: Needs no token yet issues tokens or reads one, as a login does (the OIDC provider's
    #: ``token`` and ``userinfo`` of a built-in backend): audited, and run under the server's
    #: login limits (the per-IP bucket, the login slots). The other built-in paths that need
    #: no token (``sys/health``) are neither, as in Vault.
    login_like: bool = False
    #: The token's policy must also grant ``sudo`` on the path (Vault's ``PathsSpecial.Root``).
    sudo: bool = False
    #: If set, CREATE vs UPDATE is decided by this; else writes are UPDATE.
    existence_check: Callable[[Request, dict[str, Any]], Awaitable[bool]] | None = None
    #: Success statuses besides 200/204 a handler answers (``auth/token/tidy``: 202), for the
    #: OpenAPI document.
    statuses: tuple[int, ...] = ()
    compiled: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.compiled = re.compile(self.pattern)


@dataclass(frozen=True, slots=True)
class Route:
    """A relative path resolved against a backend's path table.

    ``path`` is the canonical spelling: every captured name passed through its field's
    ``canonical`` (role names lower-cased). The server judges the ACL on ``path`` and the
    handler receives ``captures``, so no name is normalised after the check. Routes are
    cached and shared: ``captures`` is a read-only view.
    """

    spec: PathSpec
    path: str
    captures: Mapping[str, str]


#: The operations ``Request.refuse_unknown`` applies to.
_WRITES = frozenset({Operation.CREATE, Operation.UPDATE, Operation.DELETE, Operation.PATCH})

#: Characters that make a pattern more than one literal path.
_REGEX_CHARS = frozenset(".^$*+?{}[]()|\\")


@dataclass(slots=True)
class _PathTable:
    """A backend's path table, built once per ``paths`` list.

    ``fixed`` holds the Route of every literal pattern (``login``, ``oidc/callback``,
    ``config``), computed when the table is built, so those paths (and whether they need a
    token) are read, never matched, per request; ``routes`` remembers the other paths
    resolved so far (bounded: they carry caller-chosen names).
    """

    specs: list[PathSpec]
    fixed: dict[str, Route]
    routes: dict[str, Route] = field(default_factory=dict)

    @classmethod
    def build(cls, specs: list[PathSpec]) -> _PathTable:
        fixed: dict[str, Route] = {}
        for spec in specs:
            path = spec.pattern
            if path in fixed or any(c in _REGEX_CHARS for c in path):
                continue
            found = _match(specs, path)  # the first spec in table order, as for any path
            if found is not None:
                fixed[path] = found
        return cls(specs, fixed)


class Backend:
    """Base class of every auth method: a path table plus request dispatch.

    Subclasses set ``paths`` in ``__init__`` and may override ``renew``, ``invalidate``
    and ``cleanup``.
    """

    type_name: str = ""

    def __init__(self) -> None:
        self.paths: list[PathSpec] = []

    # -- routing -----------------------------------------------------------------------
    def resolve(self, path: str) -> Route:
        """The Route for ``path``: its PathSpec and the canonical path and captures.

        :raises UnsupportedPath: when no pattern matches.
        :raises InvalidRequest: a captured name that has no canonical spelling.
        """
        table: _PathTable | None = self.__dict__.get("_path_table")
        if table is None or table.specs is not self.paths:
            table = self.__dict__["_path_table"] = _PathTable.build(self.paths)
        hit = table.fixed.get(path) or table.routes.get(path)
        if hit is not None:
            return hit
        route = _match(self.paths, path)
        if route is None:
            raise UnsupportedPath()
        if len(table.routes) >= _MATCH_CACHE_SIZE:
            table.routes.clear()  # bounded: paths carry caller-chosen names
        table.routes[path] = route
        return route

    def is_unauthenticated(self, path: str) -> bool:
        """True for login-type paths that need no token (``login``, ``oidc/*``)."""
        try:
            return self.resolve(path).spec.unauthenticated
        except PluginError:
            return False

    async def handle_request(self, req: Request) -> Response | None:
        """Dispatch ``req`` to the matching path handler.

        Returns None for "no content" (writes/deletes: HTTP 204).

        :raises PluginError: for every refusal (bad input, not found, unsupported ...).
        """
        if req.operation is Operation.RENEW:
            if req.auth is None:
                raise UnsupportedOperation()
            auth = await self.renew(req, req.auth)
            return Response(auth=auth)
        route = req.route
        if route is None:
            route = req.route = self.resolve(req.path)
        spec = route.spec
        req.path = route.path
        captures = req.captures = dict(route.captures)
        data = dict(req.data)
        # Body values the path's own captures win over (Vault warns of them; null is no value).
        replaced = sorted(k for k in captures if data.get(k) is not None) if captures else None
        data.update(captures)
        values, unknown = spec.fields.parse(data)
        if spec.free_form:
            unknown = []
        op = req.operation
        if unknown and req.refuse_unknown and op in _WRITES and not spec.unauthenticated:
            raise pathdoc.refusal(unknown, spec.fields)
        if op in (Operation.CREATE, Operation.UPDATE):
            if spec.existence_check is not None:
                op = Operation.UPDATE if await spec.existence_check(req, values) else Operation.CREATE
            handler = spec.operations.get(op) or spec.operations.get(
                Operation.UPDATE if op is Operation.CREATE else Operation.CREATE
            )
        else:
            handler = spec.operations.get(op)
        if handler is None:
            raise UnsupportedOperation()
        resp = await handler(req, values)
        if resp is None and op is Operation.READ:
            raise NotFound()
        if unknown:
            # Vault warns only when the response has a body, so a write (204) that ignored a
            # misspelt field was silent: here it answers 200 with the warning.
            if resp is None:
                resp = Response()
            if resp.raw_body is None:
                resp.warnings.extend(pathdoc.ignored_warnings(unknown, spec.fields))
        if replaced and resp is not None and resp.raw_body is None:
            resp.warnings.append(pathdoc.REPLACED_WARNING.format(" ".join(replaced)))
        return resp

    # -- hooks -------------------------------------------------------------------------
    async def renew(self, req: Request, auth: Auth) -> Auth:
        """Re-check a token issued by this backend before it is renewed.

        Return the Auth with updated TTL parameters. The default refuses renewal.
        """
        raise UnsupportedOperation("this auth method does not support renewal")

    def invalidate(self, key: str) -> None:
        """Drop caches derived from storage ``key`` (called after writes by other nodes)."""

    async def initialize(self, req: Request) -> None:
        """Once per start, with the mount's storage and SystemView (Vault's
        ``InitializeFunc``): bring stored data up to date, e.g. seal secrets an older
        version stored in the clear. ``req`` is a READ of ``""`` carrying both."""

    async def cleanup(self) -> None:
        """Release resources when the mount is disabled or the server stops."""

    # -- documentation -----------------------------------------------------------------
    def help(self, route: Route, path: str, mount_prefix: str) -> dict[str, Any]:
        """Vault's help document of ``route`` (``GET <path>?help=1``): the help text from
        the PathSpec's summary, description and fields, and an OpenAPI document of the one
        path, keyed relative to the mount as Vault keys it (``/role/{name}``)."""
        full, entry = _openapi_path(route.spec, mount_prefix)
        relative = "/" + full.removeprefix("/" + mount_prefix.strip("/")).lstrip("/")
        return pathdoc.help_document(route.spec, path, pathdoc.openapi_document({relative: entry}))

    def openapi_paths(self, mount_prefix: str) -> dict[str, Any]:
        """OpenAPI ``paths`` entries for this backend under ``/v1/<mount_prefix>``."""
        return dict(_openapi_path(spec, mount_prefix) for spec in self.paths)


#: What each documented verb does, in Vault's words (the first part of an ``operationId``).
_OPENAPI_VERBS = {
    Operation.READ: ("get", "read"),
    Operation.CREATE: ("post", "write"),
    Operation.UPDATE: ("post", "write"),
    Operation.DELETE: ("delete", "delete"),
    Operation.LIST: ("get", "list"),
    Operation.PATCH: ("patch", "patch"),
}
#: Every documented operation may answer with Vault's error body (``pathdoc.OPENAPI_COMPONENTS``).
_OPENAPI_ERROR = {"description": "An error: the status names its kind, the body every message.",
                  "content": {"application/json": {"schema": {"$ref": pathdoc.OPENAPI_ERRORS_REF}}}}
_OPENAPI_RESPONSES = {
    "get": {"200": {"description": "OK"}, "default": _OPENAPI_ERROR},
    "post": {"200": {"description": "OK, with a body"}, "204": {"description": "OK, no body"},
             "default": _OPENAPI_ERROR},
    # 200: with warnings (an ignored parameter, say)
    "delete": {"200": {"description": "OK, with warnings"}, "204": {"description": "OK, no body"},
               "default": _OPENAPI_ERROR},
    "patch": {"200": {"description": "OK, with a body"}, "204": {"description": "OK, no body"},
              "default": _OPENAPI_ERROR},
}
_NAMED_GROUP = re.compile(r"\(\?P<(\w+)>")


def _openapi_path(spec: PathSpec, mount_prefix: str) -> tuple[str, dict[str, Any]]:
    """The OpenAPI ``paths`` entry (route, operations) of one PathSpec.

    Valid OpenAPI 3.0: each ``{capture}`` of the route is a path parameter, each operation
    has its ``responses`` and an ``operationId`` that is unique in the document (the verb
    and the route, so two mounts of one type never share one, which Vault's do)."""
    route = "/" + mount_prefix.rstrip("/") + "/" + _pattern_to_route(spec.pattern)
    slug = re.sub(r"[^a-z0-9]+", "-", route.lower()).strip("-")
    entry: dict[str, Any] = {}
    captures = re.findall(r"\{(\w+)\}", route)
    if captures:
        groups = _group_patterns(spec.pattern)
        entry["parameters"] = [{
            "name": name, "in": "path", "required": True,
            "schema": {"type": "string", **({"pattern": f"^{groups[name]}$"} if name in groups else {})},
            "description": spec.fields[name].description if name in spec.fields else "",
        } for name in captures]
    schema: dict[str, Any] = {"type": "object", "properties": spec.fields.openapi()}
    required = [n for n, f in spec.fields.items() if f.required and f.type is not FieldType.NAME]
    if required:
        schema["required"] = required
    body = {"content": {"application/json": {"schema": schema}}}
    for op in spec.operations:
        if op not in _OPENAPI_VERBS or _OPENAPI_VERBS[op][0] in entry:
            continue
        verb, word = _OPENAPI_VERBS[op]
        operation: dict[str, Any] = {"summary": spec.summary, "description": spec.description,
                                     "operationId": f"{word}-{slug}", "tags": [route.split("/")[1]]}
        if verb == "post":
            operation["requestBody"] = body
        elif verb == "patch":
            operation["requestBody"] = {"content": {"application/merge-patch+json": {"schema": schema}}}
        if op is Operation.LIST:
            # a LIST takes its fields from the query string (role/?after=a&limit=50)
            operation["parameters"] = [
                {"name": "list", "in": "query", "required": True, "schema": {"type": "string", "enum": ["true"]}},
                *({"name": name, "in": "query", "description": prop.pop("description"), "schema": prop}
                  for name, prop in spec.fields.openapi().items() if name not in captures)]
        operation["responses"] = _OPENAPI_RESPONSES[verb]
        if spec.statuses and verb == "post":
            extra = {str(code): {"description": HTTPStatus(code).phrase} for code in spec.statuses}
            operation["responses"] = {**_OPENAPI_RESPONSES[verb], **extra}
        entry[verb] = operation
    if spec.unauthenticated:
        entry["x-vault-unauthenticated"] = True
    if spec.sudo:
        entry["x-vault-sudo"] = True
    return route, entry


def _match(specs: list[PathSpec], path: str) -> Route | None:
    """The Route of the first spec whose pattern matches all of ``path``."""
    for spec in specs:
        m = spec.compiled.fullmatch(path)
        if m is not None:
            return _route(spec, m)
    return None


def _route(spec: PathSpec, m: re.Match[str]) -> Route:
    """The Route of a pattern match: captures through their fields' ``canonical``, and the
    path with each changed capture spliced in (right to left, so spans stay valid)."""
    captures = {k: v for k, v in m.groupdict().items() if v is not None}
    path = m.string
    changes: list[tuple[int, int, str]] = []
    for name, value in captures.items():
        canonical = spec.fields[name].canonical if name in spec.fields else None
        if canonical is None:
            continue
        fixed = canonical(value)
        if fixed != value:
            captures[name] = fixed
            changes.append((*m.span(name), fixed))
    for start, end, fixed in sorted(changes, reverse=True):
        path = path[:start] + fixed + path[end:]
    return Route(spec, path, MappingProxyType(captures))


def _named_groups(pattern: str) -> list[tuple[str, int, int, int]]:
    """Each named group of ``pattern``: its name, where ``(?P<name>`` starts, where the group's
    own pattern starts, and the end of its closing parenthesis (escaped parentheses skipped)."""
    out: list[tuple[str, int, int, int]] = []
    for m in _NAMED_GROUP.finditer(pattern):
        depth, j = 1, m.end()
        while j < len(pattern) and depth:
            if pattern[j] == "\\":
                j += 2
                continue
            depth += {"(": 1, ")": -1}.get(pattern[j], 0)
            j += 1
        out.append((m.group(1), m.start(), m.end(), j))
    return out


def _group_patterns(pattern: str) -> dict[str, str]:
    """Each named group's own pattern: ``role/(?P<name>\\w+)`` → ``{"name": "\\w+"}``."""
    return {name: pattern[inner:end - 1] for name, _, inner, end in _named_groups(pattern)}


def _pattern_to_route(pattern: str) -> str:
    """Turn ``role/(?P<name>\\w(...)?)`` into ``role/{name}`` for documentation."""
    out: list[str] = []
    i = 0
    for name, start, _, end in _named_groups(pattern):
        if start < i:
            continue  # a group inside the one just replaced
        out += [pattern[i:start], "{" + name + "}"]
        i = end
    out.append(pattern[i:])
    route = "".join(out)
    return route.replace("/?$", "").replace("$", "").replace("^", "").replace("/?", "").removesuffix("/*")
