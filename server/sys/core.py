"""What every sys path module shares: ``SysPath`` (a PathSpec with the sys extras), ``SysCore``
(the running server as the sys paths see it) and ``acl_path`` (the path the ACL judges)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from plugin.framework import PathSpec, Response, Route
from server.acl.policies import PolicyStore
from server.audit import AuditBroker
from server.http.cors import Cors
from server.keyring import Keyring
from server.mounts import MountTable
from server.nodes import Node
from server.quotas import Quotas
from server.settings import Settings
from server.storage import Engine
from server.tokens.store import TokenStore

__all__ = ["SysPath", "SysCore", "acl_path", "raw_json"]


@dataclass(slots=True)
class SysPath(PathSpec):
    """One ``sys/`` path.

    ``copy_top``: the reply also carries the keys of ``data`` at the top level of the
    envelope, as Vault's older sys endpoints do (``sys/auth``, tune, ``sys/policy``,
    ``sys/capabilities*``). ``acl_path``: the path the ACL judges when it is not the
    request's own (``sys/openapi`` is judged as ``sys/internal/specs/openapi``).
    """

    copy_top: bool = False
    acl_path: str = ""


class SysCore(Protocol):
    """The running server as the sys paths read it (in production: the aiohttp app's state,
    ``server.http.handlers.AppCore``)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def mounts(self) -> MountTable: ...

    @property
    def policies(self) -> PolicyStore: ...

    @property
    def tokens(self) -> TokenStore: ...

    @property
    def cluster_id(self) -> str: ...

    @property
    def keyring(self) -> Keyring: ...

    @property
    def storage(self) -> Engine: ...

    @property
    def audit(self) -> AuditBroker: ...

    @property
    def node(self) -> Node: ...

    @property
    def quotas(self) -> Quotas: ...

    @property
    def cors(self) -> Cors: ...


def acl_path(route: Route) -> str:
    """The path the ACL judges for a request resolved to ``route``: ``sys/`` + its canonical
    path without a trailing ``/`` (a policy on ``sys/auth/jwt`` also governs the Vault CLI's
    ``sys/auth/jwt/``), or the path's declared ``acl_path``."""
    spec = route.spec
    if isinstance(spec, SysPath) and spec.acl_path:
        return spec.acl_path
    return "sys/" + route.path.rstrip("/")


def raw_json(body: dict[str, Any]) -> Response:
    """A bare JSON reply without Vault's envelope (``sys/health`` and its siblings, the
    OpenAPI document), ``Content-Type: application/json`` exactly."""
    return Response(raw_body=orjson.dumps(body), content_type="application/json")
