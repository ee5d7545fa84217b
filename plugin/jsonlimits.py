"""A nesting limit for JSON from outside (tokens, IdP documents) that does not depend on
the interpreter's recursion limit, which a host application may raise and so let a deep
document reach the C stack."""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["MAX_JSON_DEPTH", "too_deep", "loads"]

#: Deepest nesting of arrays/objects accepted.
MAX_JSON_DEPTH = 64

# A JSON string (skipped whole: brackets inside it do not nest; an escaped quote does not
# end it) or one bracket. The string branch is "unrolled" so long strings cost one step, and
# its closing quote is optional: a string left open runs to the end of the text once, instead
# of being scanned again from each of its quotes (quadratic: 40 KB of escaped quotes took 5 s).
_NESTING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]')


def too_deep(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when ``text`` nests arrays/objects deeper than ``limit``.

    The common case costs two ``str.count`` calls: fewer opening brackets than the limit
    cannot nest deeper than it. Only then are the brackets walked, strings skipped.
    """
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for m in _NESTING.finditer(text):
        c = m.group()
        if c == "[" or c == "{":
            depth += 1
            if depth > limit:
                return True
        elif c == "]" or c == "}":
            depth -= 1
    return False


def loads(text: str) -> Any:
    """``json.loads`` that refuses documents nested deeper than ``MAX_JSON_DEPTH``.

    :raises ValueError: invalid JSON, or nested too deeply.
    """
    if too_deep(text):
        raise ValueError(f"nested too deeply (more than {MAX_JSON_DEPTH} levels)")
    return json.loads(text)
