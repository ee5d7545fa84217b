"""The route table: the sys backend, one greedy route for every auth mount, then the 404s."""

from __future__ import annotations

from aiohttp import web

from server.appkeys import IDENTITY, TOKENS
from server.http.errors import error_response
from server.http.handlers import AppCore, auth_handler, identity_handler, no_route, sys_handler
from server.http.log import handled
from server.identity.backend import IdentityBackend
from server.sys.backend import SysBackend

__all__ = ["setup_routes"]


def setup_routes(app: web.Application) -> None:
    """Register every route (the router freezes at startup, so the sys paths share one route
    into ``SysBackend`` and the mounts one route into the mount table).

    Every handler is wrapped by ``server.http.log.handled`` (request id, log line, JSON errors)
    and the last route catches every other path, so no middleware is needed: a request
    never reaches aiohttp's own 404/405 handlers.
    """
    r = app.router
    identity = IdentityBackend(lambda: app[IDENTITY], lambda accessor, name: app[TOKENS].entity_id(accessor, name))
    sys_backend = SysBackend(AppCore(app), documented={"identity": identity})
    r.add_route("*", r"/v1/sys/{path:[\s\S]*}", handled(sys_handler(sys_backend)))
    r.add_route("*", r"/v1/identity/{path:[\s\S]*}", handled(identity_handler(identity)))
    r.add_route("*", "/v1/auth/{path:.+}", handled(auth_handler))
    r.add_route("*", "/v1/{tail:.*}", handled(_no_handler))
    r.add_route("*", r"/{tail:[\s\S]*}", handled(_not_found))  # "." would miss a %0a


async def _no_handler(request: web.Request) -> web.StreamResponse:
    """Any other ``/v1/...`` path: Vault's "no handler for route" 404."""
    raise no_route(request.match_info.get("tail", ""))


async def _not_found(request: web.Request) -> web.StreamResponse:
    """Outside ``/v1/``: the 404 the error middleware used to make of aiohttp's own."""
    return error_response(404, [])
