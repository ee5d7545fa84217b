"""Auth method types by name: a new type is one module that calls ``register``."""

from __future__ import annotations

from collections.abc import Callable

from plugin.framework import Backend

__all__ = ["register", "factory_for", "registered_types"]

BackendFactory = Callable[[], Backend]

_FACTORIES: dict[str, BackendFactory] = {}


def register(type_name: str, factory: BackendFactory) -> None:
    """Make ``type_name`` mountable; ``factory()`` builds one backend per mount."""
    _FACTORIES[type_name] = factory


def factory_for(type_name: str) -> BackendFactory | None:
    """The factory registered for ``type_name``, or None."""
    return _FACTORIES.get(type_name)


def registered_types() -> list[str]:
    """Every mountable type name, sorted."""
    return sorted(_FACTORIES)
