"""Cross-origin requests from browsers (``sys/config/cors``): Vault's CORS handling, so a web
application on another origin can call the API (start an OIDC login, read its token).

Off until an operator enables it, as in Vault. Enabled, a request that carries an
``Origin`` is refused (``403 origin not allowed``) unless the origin is one of
``allowed_origins`` (or they are ``*``); an allowed one gets ``Access-Control-Allow-Origin``
(the origin itself) and ``Vary: Origin``, and a preflight (``OPTIONS`` with
``Access-Control-Request-Method``) is answered here with the methods, the headers Vault allows
plus ``allowed_headers``, and ``Access-Control-Max-Age: 300``. A request without ``Origin``
(the CLI, hvac, curl) is served as always.

Unlike Vault (docs/vault-differences.md row 69): ``allow_credentials`` is refused together
with ``*`` (Vault then answers every page's origin with credentials allowed), and an origin
must be ``scheme://host[:port]`` (Vault stores ``https://app.example.com/``, which no browser
sends, and refuses that application's every request).

Stored at ``sys/config/cors``; each process holds it in memory and reads it again when this
node or another writes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import hdrs, web

from plugin.errors import InvalidRequest
from server.http.errors import error_response
from server.settings import is_origin
from server.storage import Engine
from server.storage.refresh import Refresh

__all__ = ["CORS_KEY", "STANDARD_HEADERS", "METHODS", "Cors", "CorsConfig", "checked_origins"]

CORS_KEY = "sys/config/cors"
#: Vault's ``StdAllowedHeaders``, in its order: allowed on every cross-origin request.
STANDARD_HEADERS = ("Content-Type", "Authorization", "X-Vault-Token", "X-Vault-MFA", "X-Vault-No-Request-Forwarding",
                    "X-Vault-Wrap-Format", "X-Vault-Wrap-TTL", "X-Requested-With", "X-Vault-AWS-IAM-Server-ID",
                    "X-Vault-Policy-Override")
#: The methods a preflight may ask for: the server's (Vault's list without SCAN, which it lacks).
METHODS = ("DELETE", "GET", "OPTIONS", "POST", "PUT", "LIST", "HEAD")


@dataclass(frozen=True, slots=True)
class CorsConfig:
    enabled: bool = False
    allowed_origins: tuple[str, ...] = ()
    allowed_headers: tuple[str, ...] = ()
    allow_credentials: bool = False

    def public(self) -> dict[str, Any]:
        """Vault's read: only ``enabled`` while it is off."""
        if not self.enabled:
            return {"enabled": False}
        return {"allow_credentials": self.allow_credentials, "allowed_headers": list(self.allowed_headers),
                "allowed_origins": list(self.allowed_origins), "enabled": True}

    def allows(self, origin: str) -> bool:
        return self.allowed_origins == ("*",) or origin in self.allowed_origins


def checked_origins(origins: list[str], allow_credentials: bool) -> tuple[str, ...]:
    """``allowed_origins`` as stored.

    :raises InvalidRequest: none given, ``*`` among others, an origin that is not
        ``scheme://host[:port]``, or credentials for every origin.
    """
    if not origins:
        raise InvalidRequest("at least one origin or the wildcard must be provided")
    if "*" in origins:
        if len(origins) > 1:
            raise InvalidRequest("to allow all origins the '*' must be the only value for allowed_origins")
        if allow_credentials:
            raise InvalidRequest("allow_credentials cannot be true when every origin ('*') is allowed: any web page "
                                 "could then make credentialed requests; list the origins")
        return ("*",)
    for origin in origins:
        if not is_origin(origin):
            raise InvalidRequest(f'invalid origin "{origin}": an origin is scheme://host[:port], as a browser sends it '
                                 "(no path, no trailing /)")
    return tuple(origins)


class Cors:
    """The CORS settings of one server process, and their application to a request."""

    def __init__(self) -> None:
        self.config = CorsConfig()
        #: Read per request: the one test a request pays while CORS is off.
        self.enabled = False
        self._storage: Engine | None = None
        self._refresh = Refresh(self.load, "cors_reload_failed")

    async def start(self, storage: Engine) -> None:
        self._storage = storage
        await self.load()

    async def load(self) -> None:
        raw = await self._storage.get(CORS_KEY) if self._storage is not None else None
        config = CorsConfig()
        if isinstance(raw, dict) and raw.get("enabled"):
            config = CorsConfig(True, tuple(raw.get("allowed_origins") or ()), tuple(raw.get("allowed_headers") or ()),
                                bool(raw.get("allow_credentials")))
        self.config, self.enabled = config, config.enabled

    async def store(self, config: CorsConfig) -> None:
        if self._storage is None:
            raise RuntimeError("CORS settings written before the storage opened")
        await self._storage.put(CORS_KEY, {"enabled": config.enabled, "allowed_origins": list(config.allowed_origins),
                                           "allowed_headers": list(config.allowed_headers),
                                           "allow_credentials": config.allow_credentials})
        self.config, self.enabled = config, config.enabled

    def invalidate(self, key: str) -> None:
        if not key or key == CORS_KEY:
            self._refresh.request()

    async def close(self) -> None:
        self._refresh.cancel()

    def gate(self, request: web.Request, origin: str) -> tuple[web.StreamResponse | None, dict[str, str]]:
        """A request with ``Origin`` while CORS is on: ``(the answer, None to serve the
        request, the headers to add to whatever answers it, an error too)``."""
        config = self.config
        if not config.allows(origin):
            return error_response(403, ["origin not allowed"]), {}
        headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        if config.allow_credentials:
            headers["Access-Control-Allow-Credentials"] = "true"
        if request.method != hdrs.METH_OPTIONS:
            return None, headers
        if request.headers.get("Access-Control-Request-Method", "") not in METHODS:
            return web.Response(status=405), {}
        headers.update({"Access-Control-Allow-Methods": ",".join(METHODS),
                        "Access-Control-Allow-Headers": ",".join(config.allowed_headers),
                        "Access-Control-Max-Age": "300"})
        return web.Response(status=200), headers
