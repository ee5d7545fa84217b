"""The ``identity/`` paths and the identity store (entities, groups, group aliases)."""
