"""Pure claim helpers shared by JWT login, login explain and the OIDC callback.

Lookups follow Vault's ``getClaim`` (a leading ``/`` makes an RFC 6901 JSON pointer);
matching follows ``validateBoundClaims`` (type-strict, AND over entries, OR within one)
with go-glob patterns. Error messages keep Vault's leading phrases and add what was
found and what the role expects (decisions.md item 2).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Protocol

from plugin.errors import InvalidRequest

__all__ = [
    "ClaimRules",
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
    "bound_claim_error",
    "bound_claim_errors",
    "validate_bound_claims",
    "audience_list",
    "audience_error",
    "resolve_identity",
    "validate_role_claims",
]

_MISSING = object()


class ClaimRules(Protocol):
    """The role attributes the claim steps read (``path_role.Role`` satisfies it)."""

    user_claim: str
    user_claim_json_pointer: bool
    claim_mappings: dict[str, str] | None
    list_claim_mappings: dict[str, str] | None
    groups_claim: str
    bound_claims: dict[str, Any] | None
    bound_claims_type: str


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
    """True when ``subject`` matches ``pattern`` with go-glob semantics."""
    if pattern == "":
        return subject == ""
    if pattern == "*":
        return True
    parts = pattern.split("*")
    if len(parts) == 1:
        return subject == pattern
    leading = pattern.startswith("*")
    trailing = pattern.endswith("*")
    end = len(parts) - 1
    for i in range(end):
        idx = subject.find(parts[i])
        if i == 0:
            if not leading and idx != 0:
                return False
        elif idx < 0:
            return False
        subject = subject[idx + len(parts[i]) :]
    return trailing or subject.endswith(parts[end])


# ---------------------------------------------------------------------------
# Identity: user claim, claim mappings, groups


def stringify_claim(value: Any) -> str | None:
    """A scalar claim as metadata text (decisions.md item 3); None for lists/objects."""
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
    """The alias name: the string value of ``user_claim`` (5.2).

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

    Empty strings are skipped (5.4, decisions.md item 4).

    :raises InvalidRequest: with Vault's 5.4 messages for absent or malformed values.
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


def resolve_identity(role: ClaimRules, claims: dict[str, Any]) -> Identity:
    """User claim, claim mappings, list claim mappings and groups, in Vault's order.

    The ``role`` metadata key is added by the caller (it holds the role name).

    :raises InvalidRequest: the first failing step.
    """
    name = get_user_claim(claims, role.user_claim, role.user_claim_json_pointer)
    metadata = extract_metadata(claims, role.claim_mappings)
    metadata.update(extract_list_metadata(claims, role.list_claim_mappings))
    groups = get_groups(claims, role.groups_claim) if role.groups_claim else []
    return Identity(alias_name=name, metadata=metadata, groups=groups)


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


def bound_claim_error(claims: dict[str, Any], name: str, expected: Any, *, glob: bool) -> str | None:
    """Why the token fails the bound claim ``name`` (message without prefix), or None."""
    actual = get_claim(claims, name)
    if actual is None:
        return f'claim "{name}" is missing'
    actual_list = normalize_list(actual)
    if actual_list is None:
        return f"received claim is not a string, bool, int or list: {show(actual)}"
    if isinstance(expected, float) and math.isfinite(expected):
        expected = int(expected)
    expected_list = normalize_list(expected)
    if expected_list is None:
        return f"bound claim is not a string, bool, int or list: {show(expected)}"
    for exp in expected_list:
        for act in actual_list:
            if glob:
                if not isinstance(exp, str):
                    return f"received claim is not a glob string: {show(exp)}"
                if isinstance(act, str) and glob_match(exp, act):
                    return None
            elif _equal(exp, act):
                return None
    return f"claim {show(name)} is {show(actual)}, role expects one of {show(expected_list)}"


def bound_claim_errors(role: ClaimRules, claims: dict[str, Any]) -> list[tuple[str, str | None]]:
    """Every bound claim with its failure message or None (used by login explain)."""
    glob = role.bound_claims_type == "glob"
    return [(n, bound_claim_error(claims, n, exp, glob=glob)) for n, exp in (role.bound_claims or {}).items()]


def validate_bound_claims(role: ClaimRules, claims: dict[str, Any]) -> None:
    """All bound claims must match.

    :raises InvalidRequest: ``error validating claims: <why>`` for the first mismatch.
    """
    for _name, error in bound_claim_errors(role, claims):
        if error is not None:
            raise InvalidRequest(f"error validating claims: {error}")


def validate_role_claims(role: ClaimRules, claims: dict[str, Any]) -> Identity:
    """The claim steps shared by JWT login and the OIDC callback: identity, then bound claims.

    :raises InvalidRequest: the first failing step (identity errors win, as in Vault).
    """
    identity = resolve_identity(role, claims)
    validate_bound_claims(role, claims)
    return identity


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


def audience_error(bound: list[str] | None, aud: Any, *, glob: bool) -> str | None:
    """Why ``aud`` fails the role's audience rule, or None.

    With ``bound`` set, one audience must equal (or glob-match) one bound value. Without
    it, a non-empty ``aud`` is refused (CVE-2024-5798).
    """
    auds = audience_list(aud)
    if auds is None:
        return f"invalid audience (aud) claim: must be a string or a list of strings, got {show(aud)}"
    if not bound:
        if auds:
            return "audience claim found in JWT but no audiences bound to the role"
        return None
    for want in bound:
        for have in auds:
            if (glob and glob_match(want, have)) or (not glob and want == have):
                return None
    return (
        "invalid audience (aud) claim: audience claim does not match any expected audience: "
        f"token has {show(auds)}, role expects one of {show(list(bound))}"
    )
