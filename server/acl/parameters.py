"""What a policy path asks of a request beyond its capabilities: parameter constraints
(``allowed_parameters``, ``denied_parameters``, ``required_parameters``) and response wrapping
(``min_wrapping_ttl``, ``max_wrapping_ttl``: the request must be wrapped, for that long).
Vault's, with its order of checks and its merge of several policies.

Vault compares a request's raw values with the policy's: a list against each listed value as
a whole, a string by glob (``prefix*``, ``*suffix``), anything else by type and value. So on
Vault a ``denied_parameters = { "token_policies" = ["root"] }`` does not stop
``{"token_policies": ["root"]}`` (a list is no string), nor ``"root,x"``; an allowed
``["team-*"]`` lets ``"team-a,admin"`` through (one string that the backend then splits);
the alias ``policies`` passes where ``token_policies`` is denied; ``"60m"`` is not ``"1h"``.

Here a value is judged as the backend will take it (the field's own coercion: the ACL
judges what is stored, never what was spelled): a list field's values one by one (a
comma-separated string split as the backend splits it), durations in seconds, booleans and
integers as such, a lower-case field lower-cased. A parameter sent under a field's legacy
name is judged under the field's name too. Every value of a list must be allowed, and one
denied value denies it; an empty list is allowed only where the policy allows any value or
lists an empty value (``""``), and denied where it lists one. A denied string matches in any
case (``Admin`` is the policy ``admin`` at login). Parameters a path does not declare are
judged as Vault judges them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from plugin.errors import InvalidRequest
from plugin.schema import FieldSet, FieldType, coerce, parse_duration

__all__ = ["KEYS", "Params", "merge_params", "parse_params"]

#: The keys of a ``path`` block this module reads.
KEYS = ("allowed_parameters", "denied_parameters", "required_parameters", "min_wrapping_ttl", "max_wrapping_ttl")
_LISTS = (FieldType.COMMA_STRING_SLICE, FieldType.SLICE)
#: What a field's coercion raises for a value it does not take.
_NOT_TAKEN = (InvalidRequest, ValueError, TypeError)


class Params:
    """The constraints of one path: names (lower-case) to the values allowed or denied (an
    empty tuple: any value), the names a request must carry, and the least and most seconds
    a request must ask its response wrapped for (0: no bound)."""

    __slots__ = ("allowed", "denied", "required", "min_wrap", "max_wrap")

    def __init__(self, allowed: dict[str, tuple[Any, ...]], denied: dict[str, tuple[Any, ...]],
                 required: tuple[str, ...], min_wrap: int = 0, max_wrap: int = 0) -> None:
        self.allowed, self.denied, self.required = allowed, denied, required
        self.min_wrap, self.max_wrap = min_wrap, max_wrap

    def __bool__(self) -> bool:
        return bool(self.allowed or self.denied or self.required or self.min_wrap or self.max_wrap)

    def shown(self) -> dict[str, Any]:
        """The constraints as ``sys/internal/ui/resultant-acl`` shows them (OpenBao's keys)."""
        out: dict[str, Any] = {}
        if self.min_wrap:
            out["min_wrapping_ttl"] = self.min_wrap
        if self.max_wrap:
            out["max_wrapping_ttl"] = self.max_wrap
        if self.allowed:
            out["allowed_parameters"] = {k: list(v) for k, v in self.allowed.items()}
        if self.denied:
            out["denied_parameters"] = {k: list(v) for k, v in self.denied.items()}
        if self.required:
            out["required_parameters"] = list(self.required)
        return out

    def wraps(self, wrap_ttl: int | None) -> bool:
        """Whether a request asking its response wrapped for ``wrap_ttl`` seconds (None: not
        wrapped) is within the wrapping bounds (Vault: both bounds, when several policies
        gave a maximum below the minimum, refuse everything)."""
        if self.max_wrap and (wrap_ttl is None or wrap_ttl > self.max_wrap):
            return False
        if self.min_wrap and (wrap_ttl is None or wrap_ttl < self.min_wrap):
            return False
        return not (self.min_wrap and self.max_wrap and self.max_wrap < self.min_wrap)

    def admit(self, data: Mapping[str, Any], fields: FieldSet | None) -> bool:
        """Whether a read or write with these parameters passes, in Vault's order: every
        required name sent (under the name the backend reads); no parameters at all passes;
        ``*`` denied refuses any; no value denied; then, when names are allowed, every
        parameter allowed by name and value."""
        judged = [_Judged(key, value, fields) for key, value in data.items()]
        sent = {name for one in judged for name in one.sent}
        if any(name.lower() not in sent for name in self.required):
            return False
        if not judged:
            return True
        if self.denied:
            if "*" in self.denied:
                return False
            if any(one.listed_in(self.denied[name], denied=True) for one in judged for name in one.names
                   if name in self.denied):
                return False
        if not self.allowed or (len(self.allowed) == 1 and "*" in self.allowed):
            return True
        for one in judged:
            listed = [self.allowed[name] for name in one.names if name in self.allowed]
            if not listed and "*" not in self.allowed:
                return False
            if listed and not any(one.listed_in(values, denied=False) for values in listed):
                return False
        return True


class _Judged:
    """One parameter of a request as the backend takes it (``spec``: its field, or None)."""

    __slots__ = ("key", "names", "sent", "spec", "whole", "values", "is_list")

    def __init__(self, key: str, value: Any, fields: FieldSet | None) -> None:
        spec = fields.fields.get(key) if fields is not None else None
        target = spec.alias_of if spec is not None else None
        self.key = key
        # Judged under its own name and its field's (Vault: the name lower-cased); sent under
        # the exact names the backend reads (a required name must be one of them).
        self.sent = (key,) if target is None else (key, target)
        self.names = tuple(dict.fromkeys(name.lower() for name in self.sent))
        if target is not None and fields is not None:
            spec = fields.fields.get(target, spec)
        self.spec, self.whole = spec, value
        if spec is not None:
            try:
                self.whole = coerce(key, spec, value)
            except _NOT_TAKEN:  # the backend refuses it: judged as sent, as Vault judges it
                self.spec = None
        self.is_list = isinstance(self.whole, list)
        self.values: list[Any] = self.whole if self.is_list else [self.whole]

    def _listed(self, values: tuple[Any, ...]) -> tuple[list[Any], bool]:
        """A policy's values in the form this parameter's are judged: for a list field each
        listed value taken as the field takes it (``"a,b"`` is two, ``""`` none), with
        whether an empty one is listed; for another field each coerced (a glob of a string
        field kept as written)."""
        spec, out, empty = self.spec, [], False
        for listed in values:
            if spec is not None and spec.type in _LISTS:
                try:
                    taken = coerce(self.key, spec, listed)
                except _NOT_TAKEN:
                    continue
                empty |= not taken
                out.extend(taken)
            elif spec is not None and not (isinstance(listed, str) and "*" in listed and spec.type is FieldType.STRING):
                try:
                    out.append(coerce(self.key, spec, listed))
                except _NOT_TAKEN:  # a value the field never takes matches nothing
                    continue
            else:
                out.append(listed)
        return out, empty

    def listed_in(self, values: tuple[Any, ...], *, denied: bool) -> bool:
        """Whether ``values`` (empty: any value) lists this value, or an empty list's empty
        value; of a list's values, ``denied``: any one (strings in any case: a policy name
        sent as ``Admin`` is the policy ``admin`` at login), else every one."""
        if not values:
            return True
        listed, empty = self._listed(values)
        if any(_matches(item, self.whole, fold=denied) for item in listed):
            return True
        if self.is_list and not self.values:
            return empty
        found = (any(_matches(item, one, fold=denied) for item in listed) for one in self.values)
        return any(found) if denied else all(found)


def _matches(listed: Any, value: Any, *, fold: bool = False) -> bool:
    """Vault's ``valueInSlice`` for one pair: strings by glob (``fold``: in any case),
    others by type and value."""
    if isinstance(listed, str) and isinstance(value, str):
        return _glob(listed.casefold(), value.casefold()) if fold else _glob(listed, value)
    if isinstance(listed, bool) or isinstance(value, bool):
        return type(listed) is type(value) and listed == value
    return bool(listed == value)


def _glob(pattern: str, value: str) -> bool:
    """Vault's ``GlobbedStringsMatch``: ``*`` at the start, the end or both; else equality
    (a lone ``*`` too)."""
    if len(pattern) < 2:
        return pattern == value
    if pattern[0] == "*" and pattern[-1] == "*":
        return pattern[1:-1] in value
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    return pattern == value


def _name_map(value: Any, key: str, path: str) -> dict[str, tuple[Any, ...]]:
    """``allowed_parameters``/``denied_parameters``: an object of names to lists (repeated
    blocks merged), names lower-cased."""
    blocks = value if isinstance(value, list) and value and all(isinstance(v, dict) for v in value) else [value]
    out: dict[str, tuple[Any, ...]] = {}
    for block in blocks:
        if not isinstance(block, dict):
            raise ValueError(f'path "{path}": {key} must be an object of parameter names to lists of values')
        for name, values in block.items():
            if not isinstance(values, list):
                raise ValueError(f'path "{path}": {key} "{name}" must be a list of values (an empty list: any value)')
            out[str(name).lower()] = (*out.get(str(name).lower(), ()), *values)
    return out


def _required(value: Any, path: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
        raise ValueError(f'path "{path}": required_parameters must be a list of parameter names')
    return tuple(dict.fromkeys(str(v) for v in value))


def _wrap_ttl(body: Mapping[str, Any], key: str, path: str) -> int:
    if key not in body:
        return 0
    try:
        return parse_duration(body[key])
    except ValueError as exc:
        raise ValueError(f'path "{path}": error parsing {key}: {exc}') from None


def parse_params(body: Mapping[str, Any], path: str) -> Params | None:
    """The constraints a ``path`` block's ``body`` sets, or None.

    :raises ValueError: a constraint of the wrong shape; the message names the path and key
        (OpenBao's texts for the wrapping bounds).
    """
    min_wrap, max_wrap = _wrap_ttl(body, "min_wrapping_ttl", path), _wrap_ttl(body, "max_wrapping_ttl", path)
    if min_wrap and max_wrap and max_wrap < min_wrap:
        raise ValueError(f'path "{path}": max_wrapping_ttl cannot be less than min_wrapping_ttl')
    allowed = _name_map(body["allowed_parameters"], "allowed_parameters", path) if "allowed_parameters" in body else {}
    denied = _name_map(body["denied_parameters"], "denied_parameters", path) if "denied_parameters" in body else {}
    required = _required(body["required_parameters"], path) if "required_parameters" in body else ()
    params = Params(allowed, denied, required, min_wrap, max_wrap)
    return params if params else None


def merge_params(found: Iterable[Params]) -> Params | None:
    """The constraints of one path granted by several policies (Vault's ``NewACL``): allowed
    and denied values of a name add up, and any value of a name in one makes it any value;
    the required names add up; of the wrapping bounds each policy sets, the least minimum
    and the least maximum."""
    merged: Params | None = None
    for params in found:
        if merged is None:
            merged = Params(dict(params.allowed), dict(params.denied), params.required, params.min_wrap,
                            params.max_wrap)
            continue
        merged.min_wrap = min(filter(None, (merged.min_wrap, params.min_wrap)), default=0)
        merged.max_wrap = min(filter(None, (merged.max_wrap, params.max_wrap)), default=0)
        for mine, theirs in ((merged.allowed, params.allowed), (merged.denied, params.denied)):
            for name, values in theirs.items():
                before = mine.get(name)
                mine[name] = () if not values or before == () else (*values, *(before or ()))
        merged.required = tuple(dict.fromkeys((*merged.required, *params.required)))
    return merged
