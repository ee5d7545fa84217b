"""Field schemas: declared once per path, they drive coercion, defaults, GET output and OpenAPI.

Coercion follows Vault's ``framework.FieldData`` (see docs/reference/vault-api.md section 1.2): weak
string conversion, comma string slices trimmed per element, durations as seconds, Go
duration strings or ``<n>d``, key/value pairs as an object or a list of ``k=v``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, ItemsView, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from plugin import jsonlimits
from plugin.errors import InvalidRequest
from plugin.sealing import Sealer, is_sealed

__all__ = [
    "FieldType",
    "Field",
    "FieldSet",
    "parse_duration",
    "format_duration",
    "coerce",
]


class FieldType(Enum):
    """Wire types, named after Vault's ``framework.FieldType``."""

    STRING = "string"
    LOWER_STRING = "lowercase_string"
    BOOL = "bool"
    INT = "int"
    FLOAT = "float"
    COMMA_STRING_SLICE = "comma_string_slice"
    DURATION = "duration_second"
    SIGNED_DURATION = "signed_duration_second"
    MAP = "map"
    KV_PAIRS = "kv_pairs"
    SLICE = "slice"
    NAME = "name"  # a value captured from the URL path


_DURATION_PATTERN = r"^([-+]?(\d+d?|((\d+(\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h))+))?$"
_OPENAPI_TYPES: dict[FieldType, dict[str, Any]] = {
    FieldType.STRING: {"type": "string"},
    FieldType.LOWER_STRING: {"type": "string"},
    FieldType.NAME: {"type": "string"},
    FieldType.BOOL: {"type": "boolean"},
    FieldType.INT: {"type": "integer"},
    FieldType.FLOAT: {"type": "number"},
    FieldType.COMMA_STRING_SLICE: {"type": "array", "items": {"type": "string"}},
    # Seconds, or a Go duration ("1h30m", "90s") or days ("2d"); not JSON Schema's ISO 8601
    # "duration" format ("PT1H"), which the server does not read.
    FieldType.DURATION: {"type": "string", "pattern": _DURATION_PATTERN},
    FieldType.SIGNED_DURATION: {"type": "string", "pattern": _DURATION_PATTERN},
    FieldType.MAP: {"type": "object"},
    FieldType.KV_PAIRS: {"type": "object", "additionalProperties": {"type": "string"}},
    FieldType.SLICE: {"type": "array"},
}

_MISSING = object()


@dataclass(frozen=True, slots=True)
class Field:
    """One request/response field: type, user-facing description and default.

    ``sensitive`` fields are accepted on write and never returned on read.
    ``alias_of`` marks a deprecated legacy name for another field. ``canonical`` (path
    captures only) maps a captured name to the one spelling that is stored, or raises
    ``InvalidRequest`` when the name has none; the server applies it before the ACL check,
    so the ACL judges the name that is stored (``Backend.resolve``). ``parse``, when set,
    replaces the type's coercion for values with a meaning of their own (a TTL of
    ``"system"``, a choice of names): it returns the value to use, raises ``InvalidRequest``
    with its own message, or ``ValueError`` for the standard ``Field validation failed``
    one; ``type`` still names the wire type in OpenAPI and the docs.
    """

    type: FieldType
    description: str
    default: Any = None
    required: bool = False
    sensitive: bool = False
    deprecated: bool = False
    alias_of: str | None = None
    canonical: Callable[[str], str] | None = None
    parse: Callable[[Any], Any] | None = None

    def default_value(self) -> Any:
        """A fresh copy of the default (lists and dicts are not shared)."""
        if isinstance(self.default, (list, dict)):
            return json.loads(json.dumps(self.default))
        return self.default

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI property object for this field."""
        out: dict[str, Any] = dict(_OPENAPI_TYPES[self.type])
        out["description"] = self.description
        if self.default is not None:
            is_duration = self.type in (FieldType.DURATION, FieldType.SIGNED_DURATION)
            # a duration is documented as a string: its default too ("0s", not 0)
            out["default"] = format_duration(self.default) if is_duration and isinstance(self.default, int) \
                else self.default
        if self.deprecated:
            out["deprecated"] = True
        if self.sensitive:
            out["x-sensitive"] = True
        return out


@dataclass(slots=True)
class FieldSet:
    """An ordered mapping of field name to ``Field`` with helpers used by path handlers."""

    fields: dict[str, Field] = field(default_factory=dict)

    def __iter__(self) -> Iterator[str]:
        return iter(self.fields)

    def __getitem__(self, name: str) -> Field:
        return self.fields[name]

    def __contains__(self, name: object) -> bool:
        return name in self.fields

    def items(self) -> ItemsView[str, Field]:
        return self.fields.items()

    def parse(self, data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """Coerce every known key present in ``data``; return (values, unknown keys).

        :raises InvalidRequest: ``Field validation failed: ...`` on the first bad value.
        """
        values: dict[str, Any] = {}
        unknown: list[str] = []
        for key, raw in data.items():
            spec = self.fields.get(key)
            if spec is None:
                unknown.append(key)
                continue
            values[key] = coerce(key, spec, raw)
        return values, sorted(unknown)

    def defaults(self) -> dict[str, Any]:
        """Every non-alias field with its default value."""
        return {n: f.default_value() for n, f in self.fields.items() if f.alias_of is None}

    def public(self, values: dict[str, Any]) -> dict[str, Any]:
        """GET output: every non-sensitive, non-alias field, defaulted when absent."""
        out: dict[str, Any] = {}
        for name, spec in self.fields.items():
            if spec.sensitive or spec.alias_of is not None or spec.type is FieldType.NAME:
                continue
            out[name] = values.get(name, spec.default_value())
        return out

    def sealed(self, stored: dict[str, Any], sealer: Sealer, key: str) -> dict[str, Any]:
        """``stored`` with every non-empty sensitive field sealed, for writing under storage
        ``key`` (each field's context is ``<key>#<field>``)."""
        out = dict(stored)
        for name, spec in self.fields.items():
            value = out.get(name)
            if spec.sensitive and value:
                out[name] = sealer.seal(json.dumps(value).encode("utf-8"), f"{key}#{name}")
        return out

    def unsealed(self, stored: dict[str, Any], sealer: Sealer, key: str) -> dict[str, Any]:
        """The inverse of ``sealed``; a value an older version stored in the clear is kept.

        :raises SealError: a sealed value that does not open here.
        """
        out = dict(stored)
        for name, spec in self.fields.items():
            value = out.get(name)
            if spec.sensitive and isinstance(value, str) and is_sealed(value):
                out[name] = json.loads(sealer.unseal(value, f"{key}#{name}"))
        return out

    def openapi(self) -> dict[str, Any]:
        """OpenAPI ``properties`` for a request body."""
        return {n: f.openapi() for n, f in self.fields.items() if f.type is not FieldType.NAME}


# ---------------------------------------------------------------------------
# Durations

_GO_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
#: The longest duration: what Go's ``time.Duration`` (int64 nanoseconds) holds, about 292 years,
#: as Vault refuses longer ones (an expiry then always has a four-digit year).
_MAX_SECONDS = (2**63 - 1) // 1_000_000_000
#: An int field holds what Vault's (Go's) int holds, and what storage can encode.
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


def parse_duration(value: Any, *, signed: bool = False) -> int:
    """Parse a Vault duration into whole seconds.

    Accepts an int (seconds), a numeric string (seconds), ``"<n>d"`` (days) or a Go
    duration (``"1h30m"``, ``"5s"``, ``"-1s"``). ``""`` is 0.

    :raises ValueError: with a short reason on anything else, or a negative value when
        ``signed`` is false.
    """
    if isinstance(value, bool):
        raise ValueError("boolean is not a duration")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("not a finite number")
        if not value.is_integer():  # it was cut to whole seconds: 1.5 was 1 (OpenBao refuses it too)
            raise ValueError(f"a duration in seconds must be a whole number, got {value}")
        seconds = int(value)
    elif isinstance(value, str):
        seconds = _parse_duration_string(value.strip())
    else:
        raise ValueError(f"expected a duration, got {_json_type(value)}")
    if abs(seconds) > _MAX_SECONDS:
        raise ValueError("duration out of range")
    if seconds < 0 and not signed:
        raise ValueError(f"cannot provide negative value '{value}'")
    return seconds


#: Longer duration strings are refused before parsing: no real TTL needs more, and a
#: number of hundreds of digits would overflow the float arithmetic (OverflowError, a 500).
_MAX_DURATION_TEXT = 64


def _parse_duration_string(text: str) -> int:
    if text == "":
        return 0
    if len(text) > _MAX_DURATION_TEXT:
        raise ValueError("duration out of range")
    if re.fullmatch(r"[-+]?\d+", text):
        return int(text)
    sign = 1
    body = text
    if body[0] in "+-":
        sign = -1 if body[0] == "-" else 1
        body = body[1:]
    if re.fullmatch(r"\d+d", body):
        return sign * int(body[:-1]) * 86400
    if body == "0":
        return 0
    pos = 0
    total = 0.0
    while pos < len(body):
        m = _GO_PART.match(body, pos)
        if m is None:
            raise ValueError(f"time: invalid duration \"{text}\"")
        total += float(m.group(1)) * _GO_UNITS[m.group(2)]
        pos = m.end()
    if not math.isfinite(total):
        raise ValueError("duration out of range")
    if pos == 0:
        raise ValueError(f"time: invalid duration \"{text}\"")
    return sign * int(total)


def format_duration(seconds: int) -> str:
    """Go-style ``time.Duration.String`` for whole seconds, e.g. ``25h0m0s``."""
    if seconds == 0:
        return "0s"
    sign = "-" if seconds < 0 else ""
    s = abs(seconds)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{sign}{h}h{m}m{sec}s"
    if m:
        return f"{sign}{m}m{sec}s"
    return f"{sign}{sec}s"


# ---------------------------------------------------------------------------
# Coercion


#: How much of a refused input an error message repeats.
_SHOWN_INPUT = 200


def _fail(name: str, raw: Any, reason: str, sensitive: bool = False) -> InvalidRequest:
    # a sensitive value (a JWT, a client secret) is never echoed, whatever its shape
    if sensitive:
        shown = "(sensitive value)"
    else:
        # as the caller wrote it: JSON for everything but a string (``true``, not Python's
        # ``True``); a long one cut, so an answer never repeats a whole large body
        text = raw if isinstance(raw, str) else json.dumps(raw)
        shown = text if len(text) <= _SHOWN_INPUT else f"{text[:_SHOWN_INPUT]}… ({len(text)} characters)"
    return InvalidRequest(
        f'Field validation failed: error converting input {shown} for field "{name}": {reason}'
    )


def _weak_string(raw: Any) -> str:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bool):
        return "1" if raw else "0"
    if isinstance(raw, int):
        return str(raw)
    if isinstance(raw, float):
        if not math.isfinite(raw):
            raise ValueError("not a finite number")
        return str(int(raw)) if raw.is_integer() else repr(raw)
    raise ValueError(f"expected a string, got {_json_type(raw)}")


def _json_type(raw: Any) -> str:
    if raw is None:
        return "null"
    if isinstance(raw, bool):
        return "boolean"
    if isinstance(raw, (int, float)):
        return "number"
    if isinstance(raw, str):
        return "string"
    if isinstance(raw, list):
        return "array"
    if isinstance(raw, dict):
        return "object"
    return type(raw).__name__


def coerce(name: str, spec: Field, raw: Any) -> Any:
    """Coerce one raw request value to the field's type (or through its ``parse``).

    :raises InvalidRequest: ``Field validation failed: error converting input ...``, or
        the message of the field's own ``parse``.
    """
    try:
        return spec.parse(raw) if spec.parse is not None else _coerce(spec.type, raw)
    except ValueError as exc:
        raise _fail(name, raw, str(exc), spec.sensitive) from None


_GO_TRUE = frozenset(("1", "t", "T", "TRUE", "true", "True"))
_GO_FALSE = frozenset(("0", "f", "F", "FALSE", "false", "False", ""))


def _coerce(ftype: FieldType, raw: Any) -> Any:
    if ftype in (FieldType.STRING, FieldType.NAME):
        return _weak_string(raw)
    if ftype is FieldType.LOWER_STRING:
        return _weak_string(raw).lower()
    if ftype is FieldType.BOOL:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return raw != 0
        if isinstance(raw, str):  # Go's strconv.ParseBool (Vault's weak decoding), "" is false
            if raw in _GO_TRUE:
                return True
            if raw in _GO_FALSE:
                return False
        raise ValueError("cannot parse as a boolean")
    if ftype is FieldType.INT:
        if isinstance(raw, bool):
            raise ValueError("boolean is not an integer")
        if isinstance(raw, int):
            number = raw
        elif isinstance(raw, float) and raw.is_integer():
            number = int(raw)
        elif isinstance(raw, str) and re.fullmatch(r"\s*[-+]?\d{1,18}\s*", raw):
            number = int(raw)
        else:
            raise ValueError("cannot parse as an integer")
        if not _INT_MIN <= number <= _INT_MAX:
            raise ValueError("integer out of range")
        return number
    if ftype is FieldType.FLOAT:  # Vault's TypeFloat: a number, or a string that parses as one
        if isinstance(raw, bool):
            raise ValueError("boolean is not a number")
        if isinstance(raw, (int, float)):
            real = float(raw)
        elif isinstance(raw, str) and re.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d{1,3})?\s*", raw):
            real = float(raw)
        else:
            raise ValueError("cannot parse as a number")
        if not math.isfinite(real):
            raise ValueError("number out of range")
        return real
    if ftype is FieldType.COMMA_STRING_SLICE:
        if raw is None:
            return []
        if isinstance(raw, list):
            return [_weak_string(x).strip() for x in raw]
        text = _weak_string(raw)
        if text == "":
            return []
        return [part.strip() for part in text.split(",")]
    if ftype is FieldType.DURATION:
        return parse_duration(raw)
    if ftype is FieldType.SIGNED_DURATION:
        return parse_duration(raw, signed=True)
    if ftype is FieldType.MAP:
        if raw is None or raw == "":
            return {}
        if isinstance(raw, str):
            try:
                raw = jsonlimits.loads(raw)  # nested too deeply: a ValueError too, not a RecursionError
            except ValueError:
                raise ValueError("expected a JSON object") from None
        if not isinstance(raw, dict):
            raise ValueError(f"expected an object, got {_json_type(raw)}")
        return raw
    if ftype is FieldType.KV_PAIRS:
        if raw is None or raw == "":
            return {}
        if isinstance(raw, dict):
            return {str(k): _weak_string(v) for k, v in raw.items()}
        items = raw if isinstance(raw, list) else [raw]
        out: dict[str, str] = {}
        for item in items:
            text = _weak_string(item)
            if "=" not in text:
                raise ValueError(f'invalid key pair "{text}"')
            k, v = text.split("=", 1)
            out[k.strip()] = v.strip()
        return out
    if ftype is FieldType.SLICE:
        if raw is None or raw == {}:  # Go weak decoding: an empty object is an empty list
            return []
        if isinstance(raw, str):
            try:
                raw = jsonlimits.loads(raw)  # nested too deeply: a ValueError too, not a RecursionError
            except ValueError:
                raise ValueError("expected a JSON array") from None
        if not isinstance(raw, list):
            raise ValueError(f"expected an array, got {_json_type(raw)}")
        return raw
    raise ValueError(f"unknown field type {ftype}")  # pragma: no cover
