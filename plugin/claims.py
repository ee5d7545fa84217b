"""Pure claim helpers of the login checks (``path_login.CHECKS``, which JWT login, explain
and the OIDC callback run).

Lookups follow Vault's ``getClaim`` (a leading ``/`` makes an RFC 6901 JSON pointer);
matching follows ``validateBoundClaims`` (type-strict, AND over entries, OR within one)
with go-glob patterns. Error messages keep Vault's leading phrases and add what the token
has; what the role expects goes to the error's ``expected`` (explain and the server log
show it, anonymous callers do not: docs/vault-differences.md row 2).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from plugin.errors import InvalidRequest

__all__ = [
    "Identity",
    "get_claim",
    "set_claim",
    "glob_match",
    "show",
    "stringify_claim",
    "extract_metadata",
    "extract_list_metadata",
    "get_groups",
    "get_user_claim",
    "normalize_list",
    "check_bound_claim",
    "audience_list",
    "check_audience",
]

_MISSING = object()


@dataclass(slots=True)
class Identity:
    """Who a token says the caller is: alias name, alias/token metadata and groups."""

    alias_name: str
    metadata: dict[str, str] = field(default_factory=dict)
    groups: list[str] = field(default_factory=list)


def show(value: Any, limit: int = 120) -> str:
    """A claim value for an error message: JSON, control characters escaped, truncated."""
    try:
        text = json.dumps(value, ensure_ascii=True, sort_keys=True)
    except (TypeError, ValueError):
        text = repr(type(value).__name__)
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------------------
# Lookup


def _pointer_parts(pointer: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]


def _step(node: Any, part: str) -> Any:
    if isinstance(node, dict):
        return node.get(part, _MISSING)
    if isinstance(node, list):
        if not part.isdigit() or (len(part) > 1 and part[0] == "0"):
            return _MISSING
        idx = int(part)
        return node[idx] if idx < len(node) else _MISSING
    return _MISSING


def get_claim(claims: dict[str, Any], name: str, *, truncate: bool = True) -> Any:
    """Look up ``name``: a literal top-level key, or a JSON pointer when it starts with ``/``.

    Returns None when absent (an unresolvable pointer is absent, never an error). With
    ``truncate`` a float found by the lookup becomes an int, as Vault's ``json.Number``
    conversion does.
    """
    if not name.startswith("/"):
        value = claims.get(name)
    else:
        node: Any = claims
        for part in _pointer_parts(name):
            node = _step(node, part)
            if node is _MISSING:
                return None
        value = node
    if truncate and isinstance(value, float) and math.isfinite(value):
        return int(value)
    return value


def set_claim(claims: dict[str, Any], name: str, value: Any) -> bool:
    """Set ``name`` (literal key or JSON pointer) to ``value``; False if the parent is absent."""
    if not name.startswith("/"):
        claims[name] = value
        return True
    parts = _pointer_parts(name)
    node: Any = claims
    for part in parts[:-1]:
        node = _step(node, part)
        if node is _MISSING:
            return False
    last = parts[-1]
    if isinstance(node, dict):
        node[last] = value
        return True
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = value
        return True
    return False


# ---------------------------------------------------------------------------
# Glob (ryanuber/go-glob: only "*" is special, whole-string anchored, case-sensitive)


def glob_match(pattern: str, subject: str) -> bool:
    """True when ``subject`` matches ``pattern`` with go-glob semantics: the text before the
    first ``*`` is a prefix, the text after the last one a suffix of what the middle parts,
    each found leftmost in turn, leave over."""
    parts = pattern.split("*")
    if len(parts) == 1:
        return subject == pattern
    first, last = parts[0], parts[-1]
    if not subject.startswith(first):
        return False
    rest = subject[len(first) :]
    for part in parts[1:-1]:
        idx = rest.find(part)
        if idx < 0:
            return False
        rest = rest[idx + len(part) :]
    return rest.endswith(last)


# ---------------------------------------------------------------------------
# Identity: user claim, claim mappings, groups


def stringify_claim(value: Any) -> str | None:
    """A scalar claim as metadata text (docs/vault-differences.md row 3); None for lists/objects."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else repr(value)
    return None


def get_user_claim(claims: dict[str, Any], user_claim: str, json_pointer: bool) -> str:
    """The alias name: the string value of ``user_claim`` (docs/reference/vault-api.md 5.2).

    :raises InvalidRequest: ``claim "<c>" not found in token`` / ``could not be converted to string``.
    """
    value = get_claim(claims, user_claim) if json_pointer and user_claim.startswith("/") else claims.get(user_claim)
    if value is None:
        raise InvalidRequest(f'claim "{user_claim}" not found in token')
    if not isinstance(value, str):
        raise InvalidRequest(f'claim "{user_claim}" could not be converted to string (it is {show(value)})')
    if value == "":
        raise InvalidRequest(f'claim "{user_claim}" is empty')
    return value


def extract_metadata(claims: dict[str, Any], mappings: dict[str, str] | None) -> dict[str, str]:
    """``claim_mappings``: absent sources are skipped; scalars are stringified.

    :raises InvalidRequest: ``error converting claim '<source>' to string`` for lists/objects.
    """
    out: dict[str, str] = {}
    for source, target in (mappings or {}).items():
        value = get_claim(claims, source, truncate=False)
        if value is None:
            continue
        text = stringify_claim(value)
        if text is None:
            raise InvalidRequest(f"error converting claim '{source}' to string (it is {show(value)})")
        out[target] = text
    return out


def extract_list_metadata(claims: dict[str, Any], mappings: dict[str, str] | None) -> dict[str, str]:
    """``list_claim_mappings`` (from Consul): list elements stringified and joined with ``,``.

    A scalar counts as a one-element list; absent sources are skipped.

    :raises InvalidRequest: ``error converting claim '<source>' to string list``.
    """
    out: dict[str, str] = {}
    for source, target in (mappings or {}).items():
        value = get_claim(claims, source, truncate=False)
        if value is None:
            continue
        items = value if isinstance(value, list) else [value]
        texts = [stringify_claim(item) for item in items]
        if any(t is None for t in texts):
            raise InvalidRequest(f"error converting claim '{source}' to string list (it is {show(value)})")
        out[target] = ",".join(t for t in texts if t is not None)
    return out


def get_groups(claims: dict[str, Any], groups_claim: str) -> list[str]:
    """Group names from ``groups_claim``: a string is one group, a list of strings is many.

    Empty strings are skipped (docs/reference/vault-api.md 5.4, docs/vault-differences.md row 4).

    :raises InvalidRequest: with Vault's messages (docs/reference/vault-api.md 5.4) for absent or malformed values.
    """
    value = get_claim(claims, groups_claim)
    if value is None:
        raise InvalidRequest(f'failed to fetch groups: "{groups_claim}" claim not found in token')
    items = value if isinstance(value, list) else [value]
    if isinstance(value, dict):
        raise InvalidRequest(f'"{groups_claim}" claim could not be converted to string list')
    groups: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise InvalidRequest(f"value {show(item)} in groups claim could not be parsed as string")
        if item:
            groups.append(item)
    return groups


# ---------------------------------------------------------------------------
# Bound claims


def normalize_list(value: Any) -> list[Any] | None:
    """Vault ``normalizeList``: scalars (string, bool, number) become one-element lists."""
    if isinstance(value, list):
        return value
    if isinstance(value, (str, bool, int, float)):
        return [value]
    return None


def _equal(a: Any, b: Any) -> bool:
    # Type-strict: "true" != true and "42" != 42; numbers compare by value.
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return False


def check_bound_claim(claims: dict[str, Any], name: str, expected: Any, *, glob: bool) -> None:
    """The token's claim ``name`` must match one of the ``expected`` values.

    The messages say what the token has; the role's values go to ``expected``.

    :raises InvalidRequest: ``error validating claims: <why>``.
    """
    actual = get_claim(claims, name, truncate=False)  # numbers compare exactly (docs/vault-differences.md row 81)
    if actual is None:
        raise InvalidRequest(f'error validating claims: claim "{name}" is missing')
    actual_list = normalize_list(actual)
    if actual_list is None:
        raise InvalidRequest(f"error validating claims: received claim is not a string, bool, int or list: {show(actual)}")
    expected_list = normalize_list(expected)
    if expected_list is None:
        raise InvalidRequest(
            "error validating claims: bound claim is not a string, bool, int or list", expected=f": {show(expected)}"
        )
    for exp in expected_list:
        for act in actual_list:
            if glob:
                if not isinstance(exp, str):
                    raise InvalidRequest(
                        "error validating claims: received claim is not a glob string", expected=f": {show(exp)}"
                    )
                if isinstance(act, str) and glob_match(exp, act):
                    return
            elif _equal(exp, act):
                return
    raise InvalidRequest(
        f"error validating claims: claim {show(name)} is {show(actual)}",
        expected=f", role expects one of {show(expected_list)}",
    )


# ---------------------------------------------------------------------------
# Audience


def audience_list(aud: Any) -> list[str] | None:
    """``aud`` as a list of strings (RFC 7519 4.1.3: a string or an array); None if malformed."""
    if aud is None:
        return []
    if isinstance(aud, str):
        return [aud] if aud else []
    if isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        return list(aud)
    return None


def check_audience(bound: list[str] | None, aud: Any, *, glob: bool) -> None:
    """``aud`` must satisfy the role's audience rule.

    With ``bound`` set, one audience must equal (or glob-match) one bound value. Without
    it, a non-empty ``aud`` is refused (CVE-2024-5798). The messages say what the token
    has; the bound audiences go to ``expected``.

    :raises InvalidRequest: Vault's phrases (``error validating token: invalid audience (aud)
        claim: ...``, ``audience claim found in JWT but no audiences bound to the role``).
    """
    auds = audience_list(aud)
    if auds is None:
        raise InvalidRequest(
            f"error validating token: invalid audience (aud) claim: must be a string or a list of strings, got {show(aud)}"
        )
    if not bound:
        if auds:
            raise InvalidRequest("audience claim found in JWT but no audiences bound to the role")
        return
    for want in bound:
        for have in auds:
            if (glob and glob_match(want, have)) or (not glob and want == have):
                return
    raise InvalidRequest(
        "error validating token: invalid audience (aud) claim: audience claim does not match any expected audience: "
        f"token has {show(auds)}",
        expected=f", role expects one of {show(list(bound))}",
    )
