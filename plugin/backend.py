"""The ``jwt``/``oidc`` auth method: JWTAuthBackend, its caches and renewal (the types are
declared in ``plugin.registry``)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import structlog

from plugin import path_cel, path_oidc
from plugin.cel import CompiledProgram, compile_program
from plugin.errors import InvalidRequest
from plugin.framework import Auth, Backend, Request, SystemView
from plugin.keys import KeySource, build_key_source
from plugin.path_config import CONFIG_KEY, JWTConfig, path_config
from plugin.path_login import path_explain, path_login
from plugin.path_role import ROLE_PREFIX, Role, path_role, path_role_list
from plugin.policyutil import refuse_root
from plugin.storage import Storage

__all__ = ["JWTAuthBackend"]

log = structlog.get_logger("plugin.backend")



class JWTAuthBackend(Backend):
    """One mounted JWT/OIDC auth method: its paths, config/key/role caches and renewal.

    The OIDC flow (``path_oidc``) uses ``config``, ``role`` and ``key_source`` from here,
    and caches the IdP's discovery document in ``oidc_discovery``; the flow's state travels
    in its ``state`` parameter (``plugin/oidc_state.py``), never in this object.
    """

    def __init__(self, type_name: str = "jwt") -> None:
        super().__init__()
        self.type_name = type_name
        self._config: JWTConfig | None = None
        self._source: KeySource | None = None
        self._source_for: JWTConfig | None = None
        self._roles: dict[str, Role] = {}
        #: CEL roles with their programs, compiled once (at write, or at first use here).
        self._cel_roles: dict[str, tuple[path_cel.CelRole, CompiledProgram]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        #: The OIDC discovery document by (URL, CA PEM): (monotonic expiry, document).
        self.oidc_discovery: dict[tuple[str, str | None], tuple[float, dict[str, Any]]] = {}
        self.paths = [
            path_config(self),
            path_role_list(self),
            path_role(self),
            path_explain(self),
            path_login(self),
            *path_oidc.paths(self),
            *path_cel.paths(self),
        ]

    # -- entities ----------------------------------------------------------------------
    async def config(self, req: Request) -> JWTConfig | None:
        """The mount's config (cached; its secrets unsealed with ``req.system.sealer``), or
        None when it was never written."""
        if self._config is not None:
            return self._config
        raw = await req.require_storage().get(CONFIG_KEY)
        if raw is None:
            return None
        config = JWTConfig.unsealed(raw, req.system.sealer)
        if self._config is None:
            self._config = config
        return self._config

    async def role(self, storage: Storage, name: str) -> Role | None:
        """The role ``name`` (cached), or None. Callers must not mutate it.

        ``name`` is already canonical: role paths lower-case it before the ACL check
        (``ROLE_NAME``), the login's ``role`` and ``default_role`` are lower-case fields.
        """
        cached = self._roles.get(name)
        if cached is not None:
            return cached
        raw = await storage.get(ROLE_PREFIX + name)
        if raw is None:
            return None
        role = Role.from_storage(raw)
        self._roles.setdefault(name, role)
        return self._roles[name]

    def install_role(self, name: str, role: Role) -> None:
        """Cache a role that was just written."""
        self._roles[name] = role

    async def cel_role(self, storage: Storage, name: str) -> tuple[path_cel.CelRole, CompiledProgram] | None:
        """The CEL role ``name`` and its compiled program (cached), or None.

        :raises InvalidRequest: a stored program that no longer compiles (written by a
            version with other rules).
        """
        cached = self._cel_roles.get(name)
        if cached is not None:
            return cached
        raw = await storage.get(path_cel.CEL_ROLE_PREFIX + name)
        if not isinstance(raw, dict):
            return None
        role = path_cel.CelRole.from_storage(raw)
        self._cel_roles.setdefault(name, (role, compile_program(role.cel_program)))
        return self._cel_roles[name]

    def install_cel_role(self, name: str, role: path_cel.CelRole, program: CompiledProgram) -> None:
        """Cache a CEL role that was just written, with the program its write compiled."""
        self._cel_roles[name] = (role, program)

    # -- keys --------------------------------------------------------------------------
    def build_key_source(self, config: JWTConfig, system: SystemView | Any) -> KeySource:
        """A fresh, uncached KeySource for ``config`` (used by config writes to check it).

        :raises InvalidRequest: unparseable keys (``error parsing public key: ...``).
        """
        return build_key_source(config.to_storage(), system.fetcher, clock=system.now, events=system.events)

    async def key_source(self, config: JWTConfig, system: SystemView | Any) -> KeySource:
        """The cached KeySource for ``config``, built on first use.

        :raises InvalidRequest: ``error configuring token validator: <reason>``.
        """
        if self._source is not None and self._source_for is config:
            return self._source
        try:
            source = self.build_key_source(config, system)
        except InvalidRequest as exc:
            raise InvalidRequest("error configuring token validator: " + "; ".join(exc.messages)) from None
        if config is self._config:
            self._retire(self._source)
            self._source, self._source_for = source, config
        return source

    async def install_config(self, config: JWTConfig, source: KeySource | None) -> None:
        """Cache a config that was just written, with the KeySource its write checked."""
        self._retire(self._source)
        self._config = config
        self._source, self._source_for = source, (config if source is not None else None)

    def _retire(self, source: KeySource | None) -> None:
        if source is None:
            return
        try:
            task = asyncio.get_running_loop().create_task(source.close())
        except RuntimeError:  # no loop (invalidate from sync code at shutdown): nothing to cancel
            return
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    # -- hooks -------------------------------------------------------------------------
    def invalidate(self, key: str) -> None:
        """Drop caches derived from storage ``key`` (``config`` or ``role/<name>``)."""
        if key == CONFIG_KEY:
            self._retire(self._source)
            self._config, self._source, self._source_for = None, None, None
        elif key.startswith(ROLE_PREFIX):
            self._roles.pop(key[len(ROLE_PREFIX) :], None)
        elif key.startswith(path_cel.CEL_ROLE_PREFIX):
            self._cel_roles.pop(key[len(path_cel.CEL_ROLE_PREFIX) :], None)
        elif key == "":
            self.invalidate(CONFIG_KEY)
            self._roles.clear()
            self._cel_roles.clear()

    async def renew(self, req: Request, auth: Auth) -> Auth:
        """Renewal: the role must still exist; its current TTLs and policies apply.

        :raises InvalidRequest: ``role <name> does not exist during renewal``.
        """
        name = str(auth.internal_data.get("role", ""))
        if auth.internal_data.get("role_type") == "cel":
            # OpenBao: the CEL role must still exist; the token keeps what its login gave it.
            if not name or await self.cel_role(req.require_storage(), name) is None:
                raise InvalidRequest(f"CEL role {name} does not exist during renewal")
            return dataclasses.replace(auth, policies=refuse_root(auth.policies))
        role = await self.role(req.require_storage(), name) if name else None
        if role is None:
            raise InvalidRequest(f"role {name} does not exist during renewal")
        templates = auth.internal_data.get("policy_templates")
        if templates is not None and role.token_policies_template_claims and templates == role.token_policies:
            policies = refuse_root(auth.policies)  # rendered at login from the templates the role still has
        else:
            policies = refuse_root(role.token_policies)
        return dataclasses.replace(
            auth,
            ttl=role.token_ttl,
            max_ttl=role.token_max_ttl,
            period=role.token_period,
            policies=policies,
        )

    async def initialize(self, req: Request) -> None:
        """Seal config secrets that a version without sealing stored in the clear."""
        storage, sealer = req.require_storage(), req.system.sealer
        raw = await storage.get(CONFIG_KEY)
        if not isinstance(raw, dict) or not JWTConfig.has_clear_secrets(raw):
            return

        def seal_clear(old: Any) -> Any:
            if isinstance(old, dict) and JWTConfig.has_clear_secrets(old):
                return JWTConfig.unsealed(old, sealer).sealed(sealer)
            return old

        await storage.update(CONFIG_KEY, seal_clear)
        log.info("config_secrets_sealed", mount=req.system.mount_path)

    async def cleanup(self) -> None:
        """Stop key-source background work."""
        source, self._source, self._source_for = self._source, None, None
        if source is not None:
            await source.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

