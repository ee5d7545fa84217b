"""The ``identity/`` backend: Vault's identity paths that JWT/OIDC logins need, as a
``plugin.framework.Backend``, served by ``server.http.handlers.identity_handler`` like the sys
paths (one resolve, the token and the ACL on ``identity/<canonical path>``, then the handler).

One module per path group: ``groups`` (groups with policies), ``aliases`` (group aliases:
IdP group name + mount accessor), ``entities`` (entities, entity aliases, lookups). The
store behind them is ``server.identity.store.IdentityStore``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from plugin.framework import Backend
from plugin.sealing import Sealer
from server.appkeys import IDENTITY, KEYRING, LISTEN_ADDRESS, SETTINGS, TOKENS
from server.identity import aliases, entities, groups, oidc, provider, provider_flow
from server.identity.store import IdentityStore

if TYPE_CHECKING:
    from aiohttp import web

    from server.settings import Settings
    from server.tokens.store import TokenStore

__all__ = ["IdentityBackend", "api_addr", "app_identity_backend", "settings_api_addr"]


class IdentityBackend(Backend):
    """The identity paths over the running server's identity store.

    ``store``, ``derived``, ``sealer`` and ``api_addr`` are read when a request comes (the
    backend is built with the routes, before the server's state exists): ``derived(accessor,
    alias name)`` is the token store's derivation of the (entity id, entity alias id) a login
    makes; ``sealer`` seals the identity tokens' private keys; ``api_addr`` is the server's
    address as its clients reach it (the identity tokens' default issuer).
    """

    type_name = "identity"

    def __init__(self, store: Callable[[], IdentityStore], derived: Callable[[str, str], tuple[str, str]],
                 sealer: Callable[[], Sealer], api_addr: Callable[[], str],
                 tokens: Callable[[], TokenStore] | None = None) -> None:
        super().__init__()
        self._store = store
        self.derived = derived
        self.sealer = sealer
        self.api_addr = api_addr
        self._tokens = tokens
        self.oidc_keys = oidc.IdentityKeys(self)
        self.provider_objects = provider.ProviderObjects(self)
        self.paths = [*groups.paths(self), *aliases.paths(self), *entities.paths(self), *oidc.paths(self),
                      *provider.paths(self), *provider_flow.paths(self)]

    @property
    def store(self) -> IdentityStore:
        return self._store()

    def tokens(self) -> TokenStore:
        """The token store (the OIDC provider's access tokens).

        :raises RuntimeError: the backend was built without one (a caller bug).
        """
        if self._tokens is None:
            raise RuntimeError("the identity backend has no token store")
        return self._tokens()

    def entity_of(self, accessor: str, name: str) -> tuple[str, str]:
        """The (entity id, entity alias id) a login through ``accessor`` named ``name`` gets:
        an operator's entity alias decides, else the derived pair (``TokenStore.entity_of``)."""
        written = self.store.login_alias(accessor, name)
        return (written.canonical_id, written.id) if written is not None else self.derived(accessor, name)


def app_identity_backend(app: web.Application) -> IdentityBackend:
    """The identity backend of a running application: its store, the token store's
    derivation, the keyring and the API address, read when a request comes (the routes are
    built before the state exists)."""
    return IdentityBackend(lambda: app[IDENTITY], lambda accessor, name: (
        app[TOKENS].entity_id(accessor, name), app[TOKENS].entity_alias_id(accessor, name)),
        lambda: app[KEYRING], lambda: api_addr(app), lambda: app[TOKENS])


def api_addr(app: web.Application) -> str:
    """The running server's address as its clients reach it (``settings_api_addr`` with the
    address its socket is bound to)."""
    settings = app[SETTINGS]
    return settings_api_addr(settings, app[LISTEN_ADDRESS] if LISTEN_ADDRESS in app else None)


def settings_api_addr(settings: Settings, bound: tuple[str, int] | None = None) -> str:
    """The setting ``api_addr``, else ``http(s)://`` + the address the server listens on
    (``bound``, else ``listen_address``); ``""`` when that is every address (no one address
    reaches it)."""
    if settings.api_addr:
        return settings.api_addr
    host, port = bound or settings.host_port
    if host in ("", "0.0.0.0", "::"):
        return ""
    scheme = "https" if settings.tls else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"
