"""The ``identity/`` backend: Vault's identity paths that JWT/OIDC logins need, as a
``plugin.framework.Backend``, served by ``server.http.handlers.identity_handler`` like the sys
paths (one resolve, the token and the ACL on ``identity/<canonical path>``, then the handler).

One module per path group: ``groups`` (groups with policies), ``aliases`` (group aliases:
IdP group name + mount accessor), ``entities`` (entities, entity aliases, lookups). The
store behind them is ``server.identity.store.IdentityStore``.
"""

from __future__ import annotations

from collections.abc import Callable

from plugin.framework import Backend
from server.identity import aliases, entities, groups
from server.identity.store import IdentityStore

__all__ = ["IdentityBackend"]


class IdentityBackend(Backend):
    """The identity paths over the running server's identity store.

    ``store`` and ``entity_id`` are read when a request comes (the backend is built with the
    routes, before the server's state exists): ``entity_id(accessor, alias name)`` is the
    token store's derivation of an entity's id.
    """

    type_name = "identity"

    def __init__(self, store: Callable[[], IdentityStore], entity_id: Callable[[str, str], str]) -> None:
        super().__init__()
        self._store = store
        self.entity_id = entity_id
        self.paths = [*groups.paths(self), *aliases.paths(self), *entities.paths(self)]

    @property
    def store(self) -> IdentityStore:
        return self._store()
