"""``token_policies`` as templates over the token's claims (OpenBao's role flag
``token_policies_template_claims``): ``project-{{ .project }}``, ``{{ .gitlab.namespace }}``.

Only claim references are templates here: ``{{ .name }}`` and nested ``{{ .a.b.c }}`` (Go
template syntax, spaces inside the braces optional). OpenBao runs a whole Go template
(functions, conditionals, pipelines); authmount refuses anything else when the role is
written. At login (``render``) each reference is replaced by the claim's value, which must
be a string, an integer or a boolean; the result is a policy name made only of
``[A-Za-z0-9_.-]`` (so no glob, no ``/``, no space), at most 128 characters, and never
``root`` (``refuse_root`` after it). An empty result is dropped, as in OpenBao. Every refusal
is a 400 naming the claim or the template (OpenBao answers 500): docs/vault-differences.md
row 31.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from plugin import claims as cl
from plugin.errors import InvalidRequest
from plugin.policyutil import refuse_root

__all__ = ["PolicyTemplate", "compile_templates", "render_policies", "POLICY_NAME_RE"]

#: What a templated policy name may be made of (and its literal parts).
POLICY_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_LITERAL = re.compile(r"[A-Za-z0-9_.-]*")
_REFERENCE = re.compile(r"\{\{-?\s*((?:\.[A-Za-z_][A-Za-z0-9_]*)+)\s*-?\}\}")
_MAX_NAME = 128
#: References per template, and nesting depth of one reference: more is no policy name.
_MAX_REFERENCES = 8
_MAX_DEPTH = 8


@dataclass(frozen=True, slots=True)
class PolicyTemplate:
    """One ``token_policies`` entry: literal parts and claim paths, in order."""

    source: str
    parts: tuple[str | tuple[str, ...], ...]

    @property
    def claims(self) -> list[str]:
        """The claim paths it references, as written (``project``, ``a.b``)."""
        return [".".join(p) for p in self.parts if isinstance(p, tuple)]


def _compile(index: int, text: str) -> PolicyTemplate:
    parts: list[str | tuple[str, ...]] = []
    pos = 0
    for m in _REFERENCE.finditer(text):
        parts.append(text[pos : m.start()])
        path = tuple(m.group(1)[1:].split("."))
        if len(path) > _MAX_DEPTH:
            raise InvalidRequest(f"failed to parse template policy [{index}]: claim reference nested too deep")
        parts.append(path)
        pos = m.end()
    parts.append(text[pos:])
    literals = [p for p in parts if isinstance(p, str)]
    for literal in literals:
        if "{{" in literal or "}}" in literal:
            raise InvalidRequest(
                f"failed to parse template policy [{index}]: only claim references like {{{{ .claim }}}} or "
                f"{{{{ .claim.nested }}}} are supported: {text!r}"
            )
        if not _LITERAL.fullmatch(literal):
            raise InvalidRequest(
                f"failed to parse template policy [{index}]: the text around claim references may only "
                f"contain A-Z a-z 0-9 _ . -: {text!r}"
            )
    if len(parts) - len(literals) > _MAX_REFERENCES:
        raise InvalidRequest(f"failed to parse template policy [{index}]: more than {_MAX_REFERENCES} claim references")
    return PolicyTemplate(text, tuple(p for p in parts if p != ""))


def compile_templates(policies: list[str]) -> list[PolicyTemplate]:
    """Parse a role's ``token_policies`` as templates (at role write and at login).

    :raises InvalidRequest: ``failed to parse template policy [<i>]: <why>``.
    """
    return [_compile(i, p) for i, p in enumerate(policies)]


def _value(claims: dict[str, Any], path: tuple[str, ...]) -> str:
    node: Any = claims
    for step in path:
        if not isinstance(node, dict) or step not in node:
            raise InvalidRequest(f'error templating token_policies: claim "{".".join(path)}" not found in token')
        node = node[step]
    text = cl.stringify_claim(node) if not isinstance(node, float) else None
    if text is None:
        raise InvalidRequest(
            f'error templating token_policies: claim "{".".join(path)}" must be a string, an integer or a '
            f"boolean (it is {cl.show(node)})"
        )
    return text


def render_policies(policies: list[str], claims: dict[str, Any]) -> list[str]:
    """The role's ``token_policies`` rendered over ``claims``, in the policy normal form.

    :raises InvalidRequest: a missing claim or one that is not a scalar (named), a result
        outside ``[A-Za-z0-9_.-]`` or longer than 128 characters, or root.
    """
    out: list[str] = []
    for template in compile_templates(policies):
        name = "".join(p if isinstance(p, str) else _value(claims, p) for p in template.parts)
        if not name:
            continue  # an empty result is ignored (OpenBao)
        if len(name) > _MAX_NAME or not POLICY_NAME_RE.fullmatch(name):
            raise InvalidRequest(
                f"error templating token_policies: {template.source!r} gives {cl.show(name)}, which is not a policy "
                f"name (A-Z a-z 0-9 _ . - only, at most {_MAX_NAME} characters)"
            )
        out.append(name)
    return refuse_root(out)
