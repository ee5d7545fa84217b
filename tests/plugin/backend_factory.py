"""The backend under test for OIDC flow tests: the real JWTAuthBackend when it exists."""

from __future__ import annotations

from typing import Any

from plugin.framework import Backend
from plugin.keys import build_key_source
from plugin.path_config import CONFIG_KEY, JWTConfig, path_config
from plugin.path_oidc import paths as oidc_paths
from plugin.path_role import ROLE_PREFIX, Role, path_role, path_role_list


class _StandIn(Backend):
    """Minimal stand-in used only until plugin/backend.py lands."""

    type_name = "jwt"

    def __init__(self) -> None:
        super().__init__()
        self.paths = [path_config(self), path_role_list(self), path_role(self), *oidc_paths(self)]

    async def config(self, storage: Any) -> JWTConfig | None:
        raw = await storage.get(CONFIG_KEY)
        return None if raw is None else JWTConfig.from_storage(raw)

    async def role(self, storage: Any, name: str) -> Role | None:
        raw = await storage.get(ROLE_PREFIX + name)
        return None if raw is None else Role.from_storage(raw)

    def build_key_source(self, config: JWTConfig, system: Any) -> Any:
        return build_key_source(config.to_storage(), system.fetcher, clock=system.now)

    async def key_source(self, config: JWTConfig, system: Any) -> Any:
        if getattr(self, "_source", None) is None:
            self._source = self.build_key_source(config, system)
        return self._source

    async def install_config(self, config: Any, source: Any) -> None:
        self._source = source

    def install_role(self, name: str, role: Any) -> None:
        pass


def new_backend() -> Backend:
    """A fresh backend with the oidc paths."""
    try:
        from plugin.backend import JWTAuthBackend  # type: ignore[attr-defined]
    except ImportError:
        return _StandIn()
    return JWTAuthBackend()
