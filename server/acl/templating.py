"""Identity templates in ACL policy paths: ``path "identity/entity/id/{{identity.entity.id}}"``
(Vault's ``identitytpl`` in its ACL mode, as OpenBao 2.7.2 applies it).

A policy path with templates is checked when the policy is written: its braces balance and
every template names something a token's identity has (Vault stores any template and
leaves the path out at every use when it names nothing; here a typo is a 400 naming it).
At each use of a token, the templates are filled from its entity (``IdentityView``):

- ``identity.entity.id``, ``.name``, ``.metadata.<key>``;
- ``identity.entity.aliases.<mount accessor>.id``, ``.name``, ``.metadata.<key>``,
  ``.custom_metadata.<key>``;
- ``identity.groups.ids.<group id>.id|name|metadata.<key>`` and
  ``identity.groups.names.<group name>.id|name|metadata.<key>`` (groups the entity is in).

A template without a value (no entity, no such alias, group or key, an empty value), or
whose value holds a character the policy does not allow (``/`` unless
``allow_slashes_in_identity_templates``, ``*`` and ``+`` unless
``allow_wildcards_in_identity_templates``: OpenBao's flags and defaults), leaves that path
out of the token's ACL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["AliasView", "GroupView", "IdentityView", "TemplateError", "blocked_by", "has_templates", "pieces",
           "populate", "template_names"]

#: What a template may name (``<...>`` is any text without ``}}``).
KNOWN = ("identity.entity.id", "identity.entity.name", "identity.entity.metadata.<key>",
         "identity.entity.aliases.<mount accessor>.id|name|metadata.<key>|custom_metadata.<key>",
         "identity.groups.ids.<group id>.id|name|metadata.<key>",
         "identity.groups.names.<group name>.id|name|metadata.<key>")


class TemplateError(ValueError):
    """A path whose templates do not parse or name nothing a token's identity has."""


@dataclass(frozen=True, slots=True)
class AliasView:
    id: str
    name: str
    metadata: tuple[tuple[str, str], ...] = ()
    custom_metadata: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class GroupView:
    id: str
    name: str
    metadata: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class IdentityView:
    """What templates read of a token's entity: those of policy paths and of identity token roles
    (``server.identity.token_template``); hashable, it keys the cache of filled ACLs."""

    id: str
    name: str
    metadata: tuple[tuple[str, str], ...] = ()
    #: By mount accessor (one alias per mount).
    aliases: tuple[tuple[str, AliasView], ...] = ()
    groups: tuple[GroupView, ...] = ()

    @staticmethod
    def items(mapping: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((mapping or {}).items()))


def has_templates(pattern: str) -> bool:
    return "{{" in pattern or "}}" in pattern


def pieces(pattern: str) -> list[tuple[str, str]]:
    """``(template, text after it)`` after the leading text, Vault's split: ``{{`` then ``}}``
    (identity templates of policies and of identity token roles).

    :raises TemplateError: unbalanced braces (Vault's text).
    """
    split = pattern.split("{{")
    if "}}" in split[0]:
        raise TemplateError("unbalanced templating characters")
    out = []
    for piece in split[1:]:
        inner = piece.split("}}")
        if len(inner) != 2:
            raise TemplateError("unbalanced templating characters")
        out.append((inner[0].strip(), inner[1]))
    return out


def _check(name: str) -> None:
    if name in ("identity.entity.id", "identity.entity.name"):
        return
    if name.startswith("identity.entity.metadata.") and name[len("identity.entity.metadata."):]:
        return
    if name.startswith("identity.entity.aliases."):
        selector = name[len("identity.entity.aliases."):].split(".", 1)
        if len(selector) == 2 and selector[0] and _leaf(selector[1], ("id", "name"), ("metadata.", "custom_metadata.")):
            return
    if name.startswith(("identity.groups.ids.", "identity.groups.names.")):
        rest = name.split(".", 3)[3].split(".", 1)
        if len(rest) == 2 and rest[0] and _leaf(rest[1], ("id", "name"), ("metadata.",)):
            return
    if name.split(".", 1)[0] == "time":
        raise TemplateError(f'the template "{name}" is not supported: only identity templates are')
    raise TemplateError(f'unknown template "{name}" (known: {", ".join(KNOWN)})')


def _leaf(rest: str, exact: tuple[str, ...], prefixes: tuple[str, ...]) -> bool:
    return rest in exact or any(rest.startswith(p) and len(rest) > len(p) for p in prefixes)


def template_names(pattern: str) -> list[str]:
    """The templates of a policy path, checked.

    :raises TemplateError: unbalanced braces, or a template that names nothing.
    """
    names = [name for name, _ in pieces(pattern)]
    for name in names:
        _check(name)
    return names


def blocked_by(allow_slashes: bool, allow_wildcards: bool) -> str:
    """The characters a filled-in value may not hold, by the policy's flags."""
    return ("" if allow_slashes else "/") + ("" if allow_wildcards else "*+")


def populate(pattern: str, who: IdentityView | None, blocked: str) -> str | None:
    """``pattern`` with its templates filled from ``who``; None when one has no value (or a
    value holding a character of ``blocked``): the path is left out for that token."""
    if who is None:
        return None
    out = [pattern.split("{{", 1)[0]]
    for name, after in pieces(pattern):
        value = _value(name, who)
        if value is None or any(ch in value for ch in blocked) or has_templates(value):
            return None
        out += [value, after]
    return "".join(out)


def _value(name: str, who: IdentityView) -> str | None:
    """The value of a checked template, or None. As Vault's: an empty id or name is no
    value; a metadata key that is there is its value, even empty."""
    if name == "identity.entity.id":
        return who.id or None
    if name == "identity.entity.name":
        return who.name or None
    if name.startswith("identity.entity.metadata."):
        return dict(who.metadata).get(name[len("identity.entity.metadata."):])
    if name.startswith("identity.entity.aliases."):
        accessor, _, leaf = name[len("identity.entity.aliases."):].partition(".")
        alias = dict(who.aliases).get(accessor)
        if alias is None:
            return None
        if leaf in ("id", "name"):
            return (alias.id if leaf == "id" else alias.name) or None
        if leaf.startswith("metadata."):
            return dict(alias.metadata).get(leaf[len("metadata."):])
        return dict(alias.custom_metadata).get(leaf[len("custom_metadata."):])
    kind, rest = name[len("identity.groups."):].split(".", 1)
    key, _, leaf = rest.partition(".")
    group = next((g for g in who.groups if (g.id if kind == "ids" else g.name) == key), None)
    if group is None:
        return None
    if leaf in ("id", "name"):
        return (group.id if leaf == "id" else group.name) or None
    return dict(group.metadata).get(leaf[len("metadata."):])
