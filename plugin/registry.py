"""Auth method types by name: the built-in ones are declared here, once.

``register`` adds a type at run time (tests mount their own backends this way); nothing
registers itself as a side effect of being imported.
"""

from __future__ import annotations

from collections.abc import Callable

from plugin.backend import JWTAuthBackend
from plugin.framework import Backend

__all__ = ["BUILTIN", "register", "factory_for", "registered_types"]

BackendFactory = Callable[[], Backend]

#: The auth method types every server can mount.
BUILTIN: dict[str, BackendFactory] = {
    "jwt": lambda: JWTAuthBackend("jwt"),
    "oidc": lambda: JWTAuthBackend("oidc"),
}

_FACTORIES: dict[str, BackendFactory] = dict(BUILTIN)


def register(type_name: str, factory: BackendFactory) -> None:
    """Make ``type_name`` mountable; ``factory()`` builds one backend per mount."""
    _FACTORIES[type_name] = factory


def factory_for(type_name: str) -> BackendFactory | None:
    """The factory registered for ``type_name``, or None."""
    return _FACTORIES.get(type_name)


def registered_types() -> list[str]:
    """Every mountable type name, sorted."""
    return sorted(_FACTORIES)
