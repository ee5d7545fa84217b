"""The claims template of an identity token role (``identity/oidc/role/<name>``'s
``template``): JSON with ``{{ ... }}`` directives filled from the calling token's entity,
Vault's ``identitytpl`` in its JSON mode.

A directive is replaced by its value encoded as JSON, so a template writes ``"email":
{{identity.entity.metadata.email}}`` without quotes around the directive:

- ``identity.entity.id``, ``.name`` (strings), ``.metadata`` (an object), ``.metadata.<key>``
  (a string, ``""`` when the entity has no such key);
- ``identity.entity.groups.names``, ``.groups.ids`` (lists of strings: every group the entity
  is in, through nested groups too; ``null`` for none, as Vault's);
- ``identity.entity.aliases.<mount accessor>.id|name|metadata|metadata.<key>|
  custom_metadata|custom_metadata.<key>`` (empty when the entity has no alias there);
- ``time.now``, ``time.now.plus.<duration>``, ``time.now.minus.<duration>`` (seconds since the
  epoch, a number).

Every value, group values included, is encoded as JSON (Vault writes the values of
``identity.groups.*`` directives raw, so a group name holding a ``"`` breaks the token's claims
or adds claims of its own; those directives are refused here, as Vault's role write refuses
them too, and ``identity.entity.groups.names`` gives the names). A template is checked when the
role is written: its braces balance, every directive names something above, and with every
value empty, and again with something in every list and object, it is a JSON object without a
reserved claim. So the template of a stored role always fills in; Vault logs a template that
fails at use and issues the token without any of its claims.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any

from plugin.errors import InvalidRequest
from plugin.jsonlimits import MAX_JSON_DEPTH, too_deep
from plugin.schema import parse_duration
from server.acl.templating import AliasView, GroupView, IdentityView, TemplateError
from server.acl.templating import pieces as split_templates

__all__ = ["RESERVED_CLAIMS", "check_template", "fill", "stored_template"]

#: An entity without anything, and one with something in every list and map (an alias on
#: every mount): the values a template is checked with, so that a directive whose value may be
#: a list or an object, placed inside a JSON string, is refused at the write.
_NOBODY = IdentityView("", "")
_NO_ALIAS = AliasView("", "")
_SAMPLE_ALIAS = AliasView("x", "x", metadata=(("k", "v"),), custom_metadata=(("k", "v"),))
_SAMPLE = IdentityView("x", "x", metadata=(("k", "v"),), groups=(GroupView("x", "x"),))

#: Claims an identity token's template may not set (Vault's ``ReservedClaims``, in its order).
RESERVED_CLAIMS = ("iat", "aud", "exp", "iss", "sub", "namespace", "nonce", "auth_time", "at_hash", "c_hash")
#: A template's text, at most (the claims end up in every token the role issues).
MAX_TEMPLATE = 16384


def stored_template(raw: str) -> str:
    """The template as it is kept: text that decodes as standard base64 is its decoding (as
    Vault takes it), anything else is the text itself."""
    try:
        return base64.b64decode(raw, validate=True).decode("utf-8") if raw else raw
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return raw


_KNOWN = ("identity.entity.id", "identity.entity.name", "identity.entity.metadata[.<key>]",
          "identity.entity.groups.names", "identity.entity.groups.ids",
          "identity.entity.aliases.<mount accessor>.id|name|metadata[.<key>]|custom_metadata[.<key>]",
          "time.now", "time.now.plus.<duration>", "time.now.minus.<duration>")


def _value(name: str, who: IdentityView, now: int, absent: AliasView) -> Any:
    """The value of a directive (``ValueError`` naming the problem for an unknown one);
    ``absent`` stands for the entity's alias on a mount where it has none."""
    if name.startswith("time."):
        parts = name.split(".", 3)
        if parts[1] != "now":
            raise ValueError(f'invalid time selector "{parts[1]}"')
        if len(parts) == 2:
            return now
        if len(parts) == 3:
            raise ValueError("missing time operand")
        if parts[2] not in ("plus", "minus"):
            raise ValueError(f'invalid time operator "{parts[2]}"')
        try:
            seconds = parse_duration(parts[3])
        except (InvalidRequest, ValueError):
            raise ValueError(f'invalid duration "{parts[3]}"') from None
        return now + seconds if parts[2] == "plus" else now - seconds
    if name.startswith("identity.groups."):
        raise ValueError(f'the directive "{name}" is not supported in identity token templates: '
                         "use identity.entity.groups.names or identity.entity.groups.ids")
    if not name.startswith("identity.entity."):
        raise ValueError(f'unknown template "{name}" (known: {", ".join(_KNOWN)})')
    rest = name[len("identity.entity."):]
    simple: dict[str, Callable[[], Any]] = {
        "id": lambda: who.id, "name": lambda: who.name, "metadata": lambda: dict(who.metadata),
        # no groups: null, as Vault writes an empty Go slice
        "groups.names": lambda: [g.name for g in who.groups] or None,
        "groups.ids": lambda: [g.id for g in who.groups] or None,
    }
    if rest in simple:
        return simple[rest]()
    if rest.startswith("metadata.") and len(rest) > len("metadata."):
        return dict(who.metadata).get(rest[len("metadata."):], "")
    if rest.startswith("aliases."):
        accessor, _, leaf = rest[len("aliases."):].partition(".")
        if accessor and leaf:
            alias = dict(who.aliases).get(accessor, absent)
            for kind in ("metadata", "custom_metadata"):
                values = dict(getattr(alias, kind))
                if leaf == kind:
                    return dict(values)
                if leaf.startswith(kind + ".") and len(leaf) > len(kind) + 1:
                    return values.get(leaf[len(kind) + 1:], "")
            if leaf in ("id", "name"):
                return alias.id if leaf == "id" else alias.name
    raise ValueError(f'unknown template "{name}" (known: {", ".join(_KNOWN)})')


def fill(template: str, who: IdentityView, now: int, *, absent: AliasView = _NO_ALIAS) -> dict[str, Any]:
    """The claims ``template`` gives for ``who`` at ``now`` (``{}`` for no template);
    ``absent`` is the alias read on a mount where ``who`` has none.

    :raises InvalidRequest: the template does not parse, names an unknown directive, is not a
        JSON object, or sets a reserved claim (Vault's texts where it has them).
    """
    if not template:
        return {}
    try:
        pieces = split_templates(template)
    except TemplateError as exc:
        raise InvalidRequest(f"error parsing template: {exc}") from None
    out = [template.split("{{", 1)[0]]
    for name, after in pieces:
        try:
            value = _value(name, who, now, absent)
        except ValueError as exc:
            raise InvalidRequest(f"error parsing template: {exc}") from None
        out += [json.dumps(value), after]
    text = "".join(out)
    if too_deep(text):
        raise InvalidRequest(f"error parsing template JSON: nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        claims = json.loads(text)
    except ValueError as exc:
        raise InvalidRequest(f"error parsing template JSON: {exc}") from None
    if not isinstance(claims, dict):
        raise InvalidRequest("error parsing template JSON: the template must be a JSON object")
    for key in claims:
        if key in RESERVED_CLAIMS:
            raise InvalidRequest(f'top level key "{key}" not allowed. Restricted keys: {", ".join(RESERVED_CLAIMS)}')
    return claims


def check_template(raw: str) -> str:
    """The template to store for a role write's ``template`` (base64 decoded), checked.

    :raises InvalidRequest: too long, or see ``fill``.
    """
    template = stored_template(raw)
    if len(template) > MAX_TEMPLATE:
        raise InvalidRequest(f"template is longer than the maximum of {MAX_TEMPLATE} characters")
    fill(template, _NOBODY, 0)
    try:
        fill(template, _SAMPLE, 0, absent=_SAMPLE_ALIAS)
    except InvalidRequest as exc:
        raise InvalidRequest(f"{exc.messages[0]} (with a value in every directive: a list or an object, such as "
                             "identity.entity.groups.names or .metadata, cannot stand inside a JSON string)") from None
    return template
