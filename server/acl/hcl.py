"""A small HCL (v1 subset) parser for Vault policies: blocks, attributes, lists, objects.

Supported: ``key = value``, ``key "label" ... { body }``, strings with escapes, numbers,
booleans, lists, inline objects, ``#``/``//``/``/* */`` comments. Not supported: heredocs,
interpolation. Every error names the line.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["HCLError", "parse"]

_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r\n]+)
  | (?P<comment>\#[^\n]*|//[^\n]*|/\*.*?\*/)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<number>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_\-.]*)
  | (?P<punct>[{}\[\]=,:])
    """,
    re.VERBOSE | re.DOTALL,
)
_MAX_DEPTH = 32


class HCLError(ValueError):
    """Malformed HCL text; the message names the line."""


class _Tok:
    __slots__ = ("kind", "value", "line")

    def __init__(self, kind: str, value: Any, line: int) -> None:
        self.kind, self.value, self.line = kind, value, line


def _tokenize(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos, line = 0, 1
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            if text.startswith("/*", pos):
                raise HCLError(f"unterminated comment on line {line}")
            if text[pos] == '"':
                raise HCLError(f"unterminated string on line {line}")
            if text.startswith("<<", pos):
                raise HCLError(f"heredocs are not supported (line {line})")
            raise HCLError(f"unexpected character {text[pos]!r} on line {line}")
        kind = m.lastgroup or ""
        raw = m.group()
        if kind == "string":
            try:
                value: Any = json.loads(raw)
            except ValueError:
                raise HCLError(f"invalid string escape on line {line}") from None
            out.append(_Tok("string", value, line))
        elif kind == "number":
            try:
                number: Any = float(raw) if any(c in raw for c in ".eE") else int(raw)
            except ValueError:  # more digits than Python converts (4300): no policy needs such a number
                raise HCLError(f"number too long on line {line}") from None
            out.append(_Tok("number", number, line))
        elif kind == "ident":
            if raw in ("true", "false"):
                out.append(_Tok("bool", raw == "true", line))
            else:
                out.append(_Tok("ident", raw, line))
        elif kind == "punct":
            out.append(_Tok(raw, raw, line))
        line += raw.count("\n")
        pos = m.end()
    out.append(_Tok("eof", None, line))
    return out


class _Parser:
    def __init__(self, tokens: list[_Tok]) -> None:
        self.toks = tokens
        self.i = 0

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def body(self, end: str, depth: int) -> dict[str, Any]:
        """``key = value`` and ``key "label"* { ... }`` items until ``end``."""
        if depth > _MAX_DEPTH:
            raise HCLError(f"nesting too deep on line {self.peek().line}")
        out: dict[str, Any] = {}
        while True:
            tok = self.peek()
            if tok.kind == end:
                self.take()
                return out
            if tok.kind == ",":  # tolerated between object items
                self.take()
                continue
            if tok.kind not in ("ident", "string"):
                raise HCLError(f"expected a key but found {_show(tok)} on line {tok.line}")
            key = self.take().value
            labels: list[str] = []
            while self.peek().kind == "string":
                labels.append(self.take().value)
            nxt = self.take()
            if nxt.kind in ("=", ":") and not labels:
                value = self.value(depth + 1)
                _merge(out, [key], value, nxt.line)
            elif nxt.kind == "{":
                value = self.body("}", depth + 1)
                _merge(out, [key, *labels], value, nxt.line)
            else:
                raise HCLError(f"expected '=' or '{{' after {key!r} but found {_show(nxt)} on line {nxt.line}")

    def value(self, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise HCLError(f"nesting too deep on line {self.peek().line}")
        tok = self.take()
        if tok.kind in ("string", "number", "bool"):
            return tok.value
        if tok.kind == "[":
            items: list[Any] = []
            while True:
                if self.peek().kind == "]":
                    self.take()
                    return items
                items.append(self.value(depth + 1))
                sep = self.take()
                if sep.kind == "]":
                    return items
                if sep.kind != ",":
                    raise HCLError(f"expected ',' or ']' but found {_show(sep)} on line {sep.line}")
        if tok.kind == "{":
            return self.body("}", depth + 1)
        raise HCLError(f"expected a value but found {_show(tok)} on line {tok.line}")


def _show(tok: _Tok) -> str:
    if tok.kind == "eof":
        return "end of input"
    return repr(tok.value) if tok.kind in ("string", "ident") else f"'{tok.value}'"


def _merge(out: dict[str, Any], keys: list[str], value: Any, line: int) -> None:
    """Nest ``value`` under ``keys``; repeated blocks become a list (as HCL v1 does)."""
    node = out
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise HCLError(f"key {k!r} is both a value and a block on line {line}")
        node = child
    last = keys[-1]
    if last not in node:
        node[last] = value
    elif isinstance(node[last], list) and isinstance(value, dict) and all(isinstance(v, dict) for v in node[last]):
        node[last].append(value)
    elif isinstance(node[last], dict) and isinstance(value, dict):
        node[last] = [node[last], value]
    else:
        raise HCLError(f"duplicate key {last!r} on line {line}")


def parse(text: str) -> dict[str, Any]:
    """Parse HCL (or JSON, which starts with ``{``) into plain dicts and lists.

    A block repeated with the same labels (``path "a" {}`` twice) gives a list of bodies.

    :raises HCLError: with the line of the first problem.
    """
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            if isinstance(exc, json.JSONDecodeError) and exc.msg == "Extra data":
                # OpenBao stores such a text and ignores the rest: its rules too
                raise HCLError(f"invalid JSON: text follows the policy's JSON object (line {exc.lineno} column "
                               f"{exc.colno}): a policy is one JSON object, or HCL") from None
            raise HCLError(f"invalid JSON: {exc}") from None
        except RecursionError:
            raise HCLError("invalid JSON: nesting too deep") from None
        if not isinstance(data, dict):
            raise HCLError("invalid JSON: expected an object")
        return data
    return _Parser(_tokenize(text)).body("eof", 0)
