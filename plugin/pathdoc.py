"""What a path tells its callers about itself, from its field schema: the warning (or the
refusal) for parameters it does not declare, with the closest declared field, and Vault's
help document (``GET <path>?help=1``, ``vault path-help``).
"""

from __future__ import annotations

import difflib
import textwrap
from collections.abc import Iterable, Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any

from plugin.errors import InvalidRequest
from plugin.schema import FieldSet, FieldType

if TYPE_CHECKING:
    from plugin.framework import PathSpec

__all__ = ["IGNORED_WARNING", "REPLACED_WARNING", "closest", "suggestions", "ignored_warnings", "refusal", "help_text", "help_document",
           "VERSION", "OPENAPI_COMPONENTS", "OPENAPI_ERRORS_REF", "openapi_document"]

try:  # the installed distribution's version (pyproject.toml), the one source of truth
    VERSION = metadata.version("authmount")
except metadata.PackageNotFoundError:  # a source tree on sys.path without an install
    VERSION = "0.0.0+unknown"

#: The ``components`` every OpenAPI document carries: Vault's error body, which every
#: documented operation may answer with (its ``default`` response).
OPENAPI_COMPONENTS: dict[str, Any] = {"schemas": {"Errors": {
    "type": "object",
    "properties": {"errors": {"type": "array", "items": {"type": "string"}}},
    "required": ["errors"],
}}}
OPENAPI_ERRORS_REF = "#/components/schemas/Errors"

#: Vault's own warning, kept word for word: clients match it.
IGNORED_WARNING = "Endpoint ignored these unrecognized parameters: [{}]"
#: Vault's warning when a body parameter is also captured from the path (the path's wins).
REPLACED_WARNING = "Endpoint replaced the value of these parameters with the values captured from the endpoint's path: [{}]"
#: How alike a name must be to be suggested (difflib's ratio; "bound_claim" and
#: "bound_claims" score 0.96, "token_policy" and "token_policies" 0.85).
SIMILARITY = 0.6
#: Suggestions are computed for at most this many unknown keys of one request, each at most
#: this long (no field name comes near): a body of thousands of junk keys, on a login that
#: needs no token, must not buy seconds of CPU.
MAX_SUGGESTIONS = 16
MAX_NAME = 64

#: Vault's names of the field types in help documents (``framework.FieldType.String``).
_TYPE_NAMES = {
    FieldType.STRING: "string",
    FieldType.LOWER_STRING: "lowercase string",
    FieldType.NAME: "string",
    FieldType.BOOL: "bool",
    FieldType.INT: "int",
    FieldType.FLOAT: "float",
    FieldType.COMMA_STRING_SLICE: "slice",
    FieldType.DURATION: "duration (sec)",
    FieldType.SIGNED_DURATION: "signed duration (sec)",
    FieldType.MAP: "map",
    FieldType.KV_PAIRS: "keypair",
    FieldType.SLICE: "slice",
}
_WIDTH = 88


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name most like ``name`` (a different case counts as the same), or None."""
    names = list(known)
    lowered = {n.lower(): n for n in names}
    if name.lower() in lowered:
        return lowered[name.lower()]
    found = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=SIMILARITY)
    return lowered[found[0]] if found else None


def _candidates(fields: FieldSet) -> list[str]:
    """The names worth suggesting: body parameters, current names only (not path captures,
    not deprecated aliases)."""
    return [n for n, f in fields.items() if f.type is not FieldType.NAME and f.alias_of is None and not f.deprecated]


def suggestions(unknown: Sequence[str], fields: FieldSet | Iterable[str]) -> list[str]:
    """``<key>: did you mean <field>?`` for each unknown key that resembles a field (the
    first ``MAX_SUGGESTIONS`` keys of at most ``MAX_NAME`` characters)."""
    known = _candidates(fields) if isinstance(fields, FieldSet) else list(fields)
    out: list[str] = []
    for key in [k for k in unknown if len(k) <= MAX_NAME][:MAX_SUGGESTIONS]:
        match = closest(key, known)
        if match is not None:
            out.append(f"{key}: did you mean {match}?")
    return out


def ignored_warnings(unknown: Sequence[str], fields: FieldSet | Iterable[str]) -> list[str]:
    """The warnings of a request whose ``unknown`` keys were ignored: Vault's line, then a
    suggestion per key that resembles a field."""
    return [IGNORED_WARNING.format(" ".join(unknown)), *suggestions(unknown, fields)]


def refusal(unknown: Sequence[str], fields: FieldSet | Iterable[str]) -> InvalidRequest:
    """The 400 of a request refused for its ``unknown`` keys (setting
    ``refuse_unknown_parameters``, and every seeded object)."""
    first = f"unrecognized parameters: [{' '.join(unknown)}]"
    return InvalidRequest(messages=[first, *suggestions(unknown, fields)])


# -- help ----------------------------------------------------------------------------------
def _indent(text: str, width: int) -> str:
    pad = " " * width
    return "\n".join(
        textwrap.fill(p, _WIDTH, initial_indent=pad, subsequent_indent=pad) if p.strip() else ""
        for p in text.split("\n")
    )


def help_text(spec: PathSpec, path: str) -> str:
    """Vault's help text of ``spec`` for a request to ``path`` (relative to the mount):
    the path, its pattern, the summary, each field (sorted, with its type) and the
    description (``sdk/framework`` ``pathHelpTemplate``)."""
    blocks = [f"Request:        {path}\nMatching Route: ^{spec.pattern}$", spec.summary or path]
    if spec.fields.fields:
        blocks.append("## PARAMETERS")
        for name in sorted(spec.fields):
            f = spec.fields[name]
            description = ("(DEPRECATED) " if f.deprecated else "") + f.description
            blocks.append(f"    {name} ({_TYPE_NAMES[f.type]})")
            blocks.append(_indent(description, 8))
    blocks.append("## DESCRIPTION")
    blocks.append(spec.description or spec.summary)
    return "\n\n".join(blocks).strip()


def openapi_document(paths: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI 3.0 document of ``paths`` (entries built by ``framework``), with its
    ``components``: valid against the OpenAPI 3.0 schema (tests/server/test_sys_backend.py,
    ``test_openapi_document_is_valid_openapi_3``)."""
    return {
        "openapi": "3.0.2",
        "info": {
            "title": "authmount",
            "description": "HTTP API of authmount, a Vault-compatible JWT/OIDC auth server. "
                           "All API routes are prefixed with `/v1/`.",
            "version": VERSION,
            "license": {"name": "MPL-2.0"},
        },
        "paths": paths,
        "components": OPENAPI_COMPONENTS,
    }


def help_document(spec: PathSpec, path: str, openapi: dict[str, Any]) -> dict[str, Any]:
    """The body of ``<path>?help=1``: Vault's ``{"help", "openapi", "see_also"}``."""
    return {"help": help_text(spec, path), "openapi": openapi, "see_also": None}
