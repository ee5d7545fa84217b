"""The ``sys/`` backend: Vault's system paths as a ``plugin.framework.Backend``.

Every sys path is a PathSpec, as an auth method's are: its pattern, its fields (one
declaration for validation, the OpenAPI document and the docs), its handlers, and whether
it needs no token (``unauthenticated``) or ``sudo``. The HTTP edge
(``server.http.handlers.sys_handler``) resolves the path once (names made canonical), checks
the token and the ACL on ``server.sys.core.acl_path(route)``, then calls ``handle_request``.

One module per path group: ``status`` (health, seal-status, init, leader), ``auth`` (mounts
and tune), ``policies`` (acl and legacy), ``capabilities``, ``keys`` (rotate, key-status),
``leases`` (tokens' leases: revocation by creation path, lookup), ``fingerprint``
(fingerprints of secrets), ``audit`` (audit devices, audit-hash, audited headers),
``metrics``, ``openapi``, ``wrapping`` (wrap, lookup, unwrap, rewrap), ``tools`` (hash, random),
``versions`` (version-history), ``plugins`` (the plugin catalog's built-in methods), ``loggers`` (log levels at run time), ``seal`` (Vault's seal, unseal, rekey and root generation: what to do instead), ``debug`` (what ``vault debug`` and ``vault monitor``
read: monitor, in-flight-req, host-info, config/state/sanitized), ``snapshot``
(storage/raft/snapshot).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from plugin.framework import Backend, Route
from server.sys import (
    audit,
    auth,
    capabilities,
    cors,
    counters,
    debug,
    fingerprint,
    keys,
    leases,
    loggers,
    metrics,
    openapi,
    plugins,
    policies,
    quotas,
    remount,
    seal,
    snapshot,
    status,
    tools,
    versions,
    wrapping,
)
from server.sys.core import SysCore

__all__ = ["SysBackend"]


class SysBackend(Backend):
    """Vault's ``sys/`` paths served by authmount, over the running server's ``core``.

    Building it reads nothing from ``core``: handlers read it when a request comes, so the
    backend can be built with the routes, before the server's state exists.
    """

    type_name = "system"

    def __init__(self, core: SysCore, *, documented: Mapping[str, Backend] | None = None) -> None:
        super().__init__()
        self.core = core
        #: Other top-level backends (``identity``) whose paths the OpenAPI document lists.
        self.documented: dict[str, Backend] = dict(documented or {})
        self.paths = [
            *status.paths(self),
            *auth.paths(self),
            *policies.paths(self),
            *capabilities.paths(self),
            *keys.paths(self),
            *leases.paths(self),
            *remount.paths(self),
            *quotas.paths(self),
            *cors.paths(self),
            *fingerprint.paths(self),
            *audit.paths(self),
            *metrics.paths(self),
            *openapi.paths(self),
            *wrapping.paths(self),
            *tools.paths(self),
            *versions.paths(self),
            *counters.paths(self),
            *plugins.paths(self),
            *loggers.paths(self),
            *seal.paths(self),
            *debug.paths(self),
            *snapshot.paths(self),
        ]
        self._open_metrics: Route | None = None

    def resolve(self, path: str) -> Route:
        """``Backend.resolve``; ``metrics`` resolves to an unauthenticated twin of its path when
        the setting ``telemetry.unauthenticated_metrics_access`` is on (read per request)."""
        route = super().resolve(path)
        if route.path == "metrics" and self.core.settings.telemetry.unauthenticated_metrics_access:
            if self._open_metrics is None or self._open_metrics.spec.operations is not route.spec.operations:
                spec = dataclasses.replace(route.spec, unauthenticated=True)
                self._open_metrics = Route(spec, route.path, route.captures)
            return self._open_metrics
        return route
