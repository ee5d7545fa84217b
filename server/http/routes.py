"""The route table: sys endpoints first, then one greedy route for every auth mount."""

from __future__ import annotations

from aiohttp import web

from server.http.errors import error_response
from server.http.handlers import auth_handler
from server.http.log import handled
from server.sys import capabilities as sys_caps
from server.sys import endpoints as sys_ep

__all__ = ["setup_routes"]


def setup_routes(app: web.Application) -> None:
    """Register every route (the router freezes at startup, so mounts share one route).

    Every handler is wrapped by ``server.http.log.handled`` (request id, log line, JSON errors)
    and the last route catches every other path, so no middleware is needed: a request
    never reaches aiohttp's own 404/405 handlers.
    """
    r = app.router
    r.add_get("/v1/sys/health", handled(sys_ep.health))
    r.add_route("*", "/v1/sys/seal-status", handled(sys_ep.seal_status))
    r.add_route("*", "/v1/sys/init", handled(sys_ep.init_status))
    r.add_route("*", "/v1/sys/leader", handled(sys_ep.leader))
    r.add_route("*", "/v1/sys/capabilities-self", handled(sys_caps.capabilities_self))
    r.add_route("*", "/v1/sys/capabilities", handled(sys_caps.capabilities_token))
    r.add_route("*", "/v1/sys/capabilities-accessor", handled(sys_caps.capabilities_accessor))
    r.add_route("*", "/v1/sys/auth", handled(sys_ep.auth_list))
    r.add_route("*", r"/v1/sys/auth/{path:[\s\S]+}", handled(sys_ep.auth_path))
    r.add_route("*", "/v1/sys/policies/acl", handled(sys_ep.policies_acl))
    r.add_route("*", r"/v1/sys/policies/acl/{name:[\s\S]+}", handled(sys_ep.policies_acl))
    r.add_route("*", "/v1/sys/policy", handled(sys_ep.policy_legacy))
    r.add_route("*", r"/v1/sys/policy/{name:[\s\S]+}", handled(sys_ep.policy_legacy))
    r.add_get("/v1/sys/internal/specs/openapi", handled(sys_ep.openapi))
    r.add_get("/v1/sys/openapi", handled(sys_ep.openapi))
    r.add_route("*", "/v1/auth/{path:.+}", handled(auth_handler))
    r.add_route("*", "/v1/{tail:.*}", handled(sys_ep.sys_fallback))
    r.add_route("*", r"/{tail:[\s\S]*}", handled(_not_found))  # "." would miss a %0a


async def _not_found(request: web.Request) -> web.StreamResponse:
    """Outside ``/v1/``: the 404 the error middleware used to make of aiohttp's own."""
    return error_response(404, [])
