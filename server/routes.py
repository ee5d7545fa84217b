"""The route table: sys endpoints first, then one greedy route for every auth mount."""

from __future__ import annotations

from aiohttp import web

from server import sys_endpoints as sys_ep
from server.handlers import auth_handler

__all__ = ["setup_routes"]


def setup_routes(app: web.Application) -> None:
    """Register every route (the router freezes at startup, so mounts share one route)."""
    r = app.router
    r.add_get("/v1/sys/health", sys_ep.health)
    r.add_route("*", "/v1/sys/auth", sys_ep.auth_list)
    r.add_route("*", "/v1/sys/auth/{path:.+}", sys_ep.auth_path)
    r.add_route("*", "/v1/sys/policies/acl", sys_ep.policies_acl)
    r.add_route("*", "/v1/sys/policies/acl/{name:.+}", sys_ep.policies_acl)
    r.add_route("*", "/v1/sys/policy", sys_ep.policy_legacy)
    r.add_route("*", "/v1/sys/policy/{name:.+}", sys_ep.policy_legacy)
    r.add_get("/v1/sys/internal/specs/openapi", sys_ep.openapi)
    r.add_get("/v1/sys/openapi", sys_ep.openapi)
    r.add_route("*", "/v1/auth/{path:.+}", auth_handler)
    r.add_route("*", "/v1/{tail:.*}", sys_ep.sys_fallback)
