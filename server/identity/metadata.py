"""What identity metadata may hold: Vault's limits, refused as 400s that name the pair.

Two sets of rules, as in Vault (OpenBao 2.7.2 answers both with a 500 wrapping the message):

- ``metadata`` of an entity or a group (``validateMetadata`` in Vault's identity store): at
  most 64 pairs; a key of 1 to 128 bytes of ``[a-zA-Z0-9=/+_-]``, not starting with the
  reserved ``vault-``; a value of at most 512 bytes (UTF-8).
- ``custom_metadata`` of an entity alias (Vault's ``custommetadata.Validate``): at most 64
  keys; keys of 1 to 128 bytes and values of 1 to 512, printable.

Only writes are checked: what is stored already reads as it was.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from plugin.errors import InvalidRequest, quoted

__all__ = ["MAX_PAIRS", "checked_custom_metadata", "checked_metadata"]

MAX_PAIRS = 64
_MAX_KEY = 128
_MAX_VALUE = 512
_KEY = re.compile(r"[a-zA-Z0-9=/+_-]+")
_RESERVED = "vault-"


def _size(text: str) -> int:
    """Bytes, as Go's ``len`` counts them."""
    return len(text.encode("utf-8", "surrogatepass"))


def _pair_problem(key: str, value: str) -> str:
    if not key:
        return "key cannot be blank"
    if not _KEY.fullmatch(key):
        return "key contains invalid characters (letters, digits and = / + _ - only)"
    if _size(key) > _MAX_KEY:
        return f"key is too long (limit: {_MAX_KEY} bytes)"
    if key.startswith(_RESERVED):
        return f'key prefix "{_RESERVED}" is reserved for internal use'
    if _size(value) > _MAX_VALUE:
        return f"value is too long (limit: {_MAX_VALUE} bytes)"
    return ""


def checked_metadata(what: str, raw: Mapping[str, str]) -> dict[str, str]:
    """``raw`` as the ``metadata`` of an entity or group (``what``: ``entity``, ``group``).

    :raises InvalidRequest: ``invalid <what> metadata: ...``, naming the first pair at fault.
    """
    if len(raw) > MAX_PAIRS:
        raise InvalidRequest(f"invalid {what} metadata: metadata cannot contain more than {MAX_PAIRS} key/value "
                             f"pairs (given {len(raw)})")
    for key, value in raw.items():
        problem = _pair_problem(key, value)
        if problem:
            raise InvalidRequest(f"invalid {what} metadata: failed to load metadata pair ({quoted(key)}, "
                                 f"{quoted(value)}): {problem}")
    return dict(raw)


def checked_custom_metadata(raw: Mapping[str, str]) -> dict[str, str]:
    """``raw`` as an entity alias's ``custom_metadata``.

    :raises InvalidRequest: ``custom_metadata validation failed: ...``, naming the first key at
        fault (Vault's texts).
    """
    prefix = "custom_metadata validation failed"
    if len(raw) > MAX_PAIRS:
        raise InvalidRequest(f"{prefix}: payload must contain at most {MAX_PAIRS} keys, provided {len(raw)}")
    for key, value in raw.items():
        size = _size(key)
        if not 0 < size <= _MAX_KEY:
            raise InvalidRequest(f"{prefix}: length of key {quoted(key)} is {size} but must be 0 < len(key) <= "
                                 f"{_MAX_KEY}")
        size = _size(value)
        if not 0 < size <= _MAX_VALUE:
            raise InvalidRequest(f"{prefix}: length of value for key {quoted(key)} is {size} but must be "
                                 f"0 < len(value) <= {_MAX_VALUE}")
        if not key.isprintable():
            raise InvalidRequest(f"{prefix}: key {quoted(key)} contains unprintable characters")
        if not value.isprintable():
            raise InvalidRequest(f"{prefix}: value for key {quoted(key)} contains unprintable characters")
    return dict(raw)
