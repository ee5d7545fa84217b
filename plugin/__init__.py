"""authmount's auth methods: framework-free backends behind ``handle_request``.

Importing this package registers the built-in ``jwt`` and ``oidc`` types.
"""

from __future__ import annotations

from plugin.errors import (
    InvalidRequest,
    NotFound,
    PermissionDenied,
    PluginError,
    RateLimited,
    UnsupportedOperation,
    UnsupportedPath,
    UpstreamError,
)
from plugin.framework import (
    Alias,
    Auth,
    Backend,
    Connection,
    Fetcher,
    FetchResult,
    Operation,
    PathSpec,
    Request,
    Response,
    StaticSystemView,
    SystemView,
)
from plugin.registry import factory_for, register, registered_types
from plugin.storage import InMemoryStorage, PrefixedStorage, Storage

__all__ = [
    "Alias",
    "Auth",
    "Backend",
    "Connection",
    "FetchResult",
    "Fetcher",
    "InMemoryStorage",
    "InvalidRequest",
    "NotFound",
    "Operation",
    "PathSpec",
    "PermissionDenied",
    "PluginError",
    "PrefixedStorage",
    "RateLimited",
    "Request",
    "Response",
    "StaticSystemView",
    "Storage",
    "SystemView",
    "UnsupportedOperation",
    "UnsupportedPath",
    "UpstreamError",
    "factory_for",
    "register",
    "registered_types",
]

import importlib.util as _ilu

if _ilu.find_spec("plugin.backend") is not None:  # registers "jwt" and "oidc"
    import plugin.backend  # noqa: F401
