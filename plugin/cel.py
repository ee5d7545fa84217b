"""CEL programs of CEL roles (OpenBao's ``cel_program``: ordered named variables and a
main expression), on cel-python (``celpy``, the pure-Python CEL implementation; its
``matches`` uses RE2, linear in its input).

A program is compiled once, when its role is written (``compile_program``): every
expression is parsed, and refused with a 400 when it is too long or too deep, references a
name that is not declared (``claims``, ``now``, ``operation``, an earlier variable, a
comprehension's variable) or a function that does not exist, or builds a message other
than ``pb.Auth`` / ``logical.Alias`` / ``pb.LeaseOptions`` or sets a field of them the server
owns. Evaluation (``CompiledProgram.evaluate``) is metered: each evaluation step costs one
unit of a budget shared by the variables and the expression (``COST_LIMIT``), no string,
byte string, list or map may grow past ``MAX_VALUE``, and the whole program has
``TIME_LIMIT`` seconds of CPU; past any of them the login is refused (400), so a role cannot
make logins slow however its program nests comprehensions over a token's lists.
"""

from __future__ import annotations

import datetime
import gc
import operator
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import celpy
import lark
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import Activation, CELEvalError, Evaluator, base_functions

from plugin.errors import InvalidRequest

__all__ = [
    "COST_LIMIT",
    "MAX_EXPRESSION",
    "MAX_VALUE",
    "MAX_VARIABLES",
    "TIME_LIMIT",
    "AUTH_FIELDS",
    "AuthMessage",
    "AliasMessage",
    "LeaseOptionsMessage",
    "CelProgram",
    "CelVariable",
    "CompiledProgram",
    "compile_program",
    "to_python",
]

#: Characters of one expression (a variable's or the main one).
MAX_EXPRESSION = 4096
#: Variables of one program.
MAX_VARIABLES = 32
#: Parse-tree nodes of one expression, and how deep its tree may nest (each CEL
#: parenthesis, call or operator level is about ten tree levels).
MAX_NODES = 4000
MAX_DEPTH = 300
#: Evaluation steps (parse-tree nodes visited) of one login's whole program.
COST_LIMIT = 10_000
#: Seconds of CPU one login's program may take.
TIME_LIMIT = 0.05
#: Length of a string or byte string, and elements of a list or map, any step may produce.
MAX_VALUE = 65536
#: Names the program reads: the token's claims, the time of the login, the operation.
DECLARED = ("claims", "now", "operation")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MACROS = frozenset({"map", "filter", "all", "exists", "exists_one"})
_RESERVED = frozenset({*DECLARED, "pb", "logical", "google", "true", "false", "null", "in", *_MACROS})


class _OverBudget(BaseException):
    """Raised inside an evaluation past a limit. A BaseException: celpy turns Exceptions
    raised in its evaluation into CEL error values and carries on."""


# ---------------------------------------------------------------------------
# Messages a program may build (OpenBao's protobuf types, as dicts)

#: ``pb.Auth`` fields a program may set; the rest of OpenBao's are the server's.
AUTH_FIELDS = frozenset({
    "policies", "token_policies", "display_name", "metadata", "alias", "group_aliases", "lease_options",
    "period", "num_uses", "bound_cidrs", "explicit_max_ttl", "token_type", "no_default_policy",
})
_SERVER_FIELDS = frozenset({"client_token", "accessor", "entity_id", "identity_policies", "internal_data"})
_ALIAS_FIELDS = frozenset({"name", "metadata"})
_LEASE_FIELDS = frozenset({"TTL", "MaxTTL", "renewable"})


class _Message(celtypes.MessageType):
    """A message built by a program: a map of its fields (the allowed names checked at compile)."""

    def __init__(self, fields: Any = None) -> None:
        super().__init__(cast(Any, fields or {}))


class AuthMessage(_Message):
    """``pb.Auth{...}``: what a CEL role's program returns to log the caller in."""


class AliasMessage(_Message):
    """``logical.Alias{name: ..., metadata: ...}``: the entity alias or a group alias."""


class LeaseOptionsMessage(_Message):
    """``pb.LeaseOptions{TTL: ..., MaxTTL: ...}``."""


_TYPES: dict[str, tuple[type[_Message], frozenset[str]]] = {
    "pb.Auth": (AuthMessage, AUTH_FIELDS),
    "logical.Alias": (AliasMessage, _ALIAS_FIELDS),
    "pb.LeaseOptions": (LeaseOptionsMessage, _LEASE_FIELDS),
}


# ---------------------------------------------------------------------------
# A few of cel-go's string extensions that OpenBao enables (ext.Strings)


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("no such overload")
    return value


def _lower_ascii(s: Any) -> celtypes.StringType:
    return celtypes.StringType("".join(c.lower() if c.isascii() else c for c in _str(s)))


def _upper_ascii(s: Any) -> celtypes.StringType:
    return celtypes.StringType("".join(c.upper() if c.isascii() else c for c in _str(s)))


def _trim(s: Any) -> celtypes.StringType:
    return celtypes.StringType(_str(s).strip())


def _split(s: Any, sep: Any) -> celtypes.ListType:
    return celtypes.ListType([celtypes.StringType(p) for p in _str(s).split(_str(sep))])


def _join(items: Any, sep: Any = "") -> celtypes.StringType:
    if not isinstance(items, list):
        raise TypeError("no such overload")
    return celtypes.StringType(_str(sep).join(_str(i) for i in items))


def _replace(s: Any, old: Any, new: Any) -> celtypes.StringType:
    return celtypes.StringType(_str(s).replace(_str(old), _str(new)))


def _index_of(s: Any, sub: Any) -> celtypes.IntType:
    return celtypes.IntType(_str(s).find(_str(sub)))


EXTENSIONS: dict[str, Callable[..., Any]] = {
    "lowerAscii": _lower_ascii, "upperAscii": _upper_ascii, "trim": _trim, "split": _split, "join": _join,
    "replace": _replace, "indexOf": _index_of,
}
_FUNCTIONS = frozenset(base_functions) | frozenset(EXTENSIONS) | {"has", "dyn"}


# ---------------------------------------------------------------------------
# Equality and ordering as cel-go's (the CEL specification since 2021): celpy 0.5 refuses
# ``1 == "a"`` and ``1 < 1.5`` with "no matching overload", where cel-go (OpenBao) answers
# false and true. Claims are dynamic, so a program written for OpenBao meets these at login:
# ``claims.groups.exists(g, g == "ops")`` over a list that also holds a number.

_NUMBERS = (celtypes.IntType, celtypes.UintType, celtypes.DoubleType)


def _kind(value: Any) -> Any:
    """The CEL type family equality compares within (the three number types are one)."""
    if isinstance(value, celtypes.BoolType):  # an int subclass: before the numbers
        return celtypes.BoolType
    if isinstance(value, _NUMBERS):
        return _NUMBERS
    if isinstance(value, celtypes.MapType):  # messages too
        return celtypes.MapType
    return type(value)


def _equal(a: Any, b: Any) -> bool:
    """Heterogeneous equality: values of two families are unequal (not an error); numbers
    by value across int, uint and double; lists and maps element by element."""
    kind = _kind(a)
    if kind is not _kind(b):
        return False
    if kind is _NUMBERS:
        return _number(a) == _number(b)
    if kind is celtypes.ListType:
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if kind is celtypes.MapType:
        if len(a) != len(b):
            return False
        keyed = {_key(k): v for k, v in b.items()}  # one pass each: a claim's map may be large
        return all(_key(k) in keyed and _equal(v, keyed[_key(k)]) for k, v in a.items())
    return bool(a == b)


def _number(value: Any) -> int | float:
    return float(value) if isinstance(value, celtypes.DoubleType) else int(value)


def _key(value: Any) -> Any:
    """A map key as plain Python compares it within its family (1 and 1.0 are one key)."""
    kind = _kind(value)
    if kind is _NUMBERS:
        return ("number", _number(value))
    if kind is celtypes.BoolType:
        return ("bool", bool(value))
    if kind is celtypes.StringType:
        return ("string", str(value))
    return (kind, value)


def _errors(a: Any, b: Any) -> Any:
    """The first of two operands that is an evaluation error (it is the answer), else None."""
    return a if isinstance(a, CELEvalError) else b if isinstance(b, CELEvalError) else None


def _eq(a: Any, b: Any) -> Any:
    error = _errors(a, b)
    return error if error is not None else celtypes.BoolType(_equal(a, b))


def _ne(a: Any, b: Any) -> Any:
    error = _errors(a, b)
    return error if error is not None else celtypes.BoolType(not _equal(a, b))


def _ordered(compare: Callable[[Any, Any], bool]) -> Callable[[Any, Any], Any]:
    """An ordering: numbers by value across their three types, else within one type (a
    ``TypeError`` across two, celpy's "no matching overload")."""

    def ordered(a: Any, b: Any) -> Any:
        error = _errors(a, b)
        if error is not None:
            return error
        kind = _kind(a)
        if kind is not _kind(b) or kind in (celtypes.ListType, celtypes.MapType):
            raise TypeError("no such overload")
        if kind is _NUMBERS:
            return celtypes.BoolType(compare(_number(a), _number(b)))
        return celtypes.BoolType(compare(a, b))

    return ordered


def _in(item: Any, container: Any) -> Any:
    """Membership by heterogeneous equality: ``"a" in [1, 2]`` is false."""
    error = _errors(item, container)
    if error is not None:
        return error
    if isinstance(container, celtypes.MapType):
        return celtypes.BoolType(any(_key(item) == _key(k) for k in container))
    if not isinstance(container, celtypes.ListType):
        raise TypeError("no such overload")
    return celtypes.BoolType(any(_equal(item, member) for member in container))


OPERATORS: dict[str, Callable[..., Any]] = {
    "_==_": _eq, "_!=_": _ne, "_in_": _in, "_<_": _ordered(operator.lt), "_<=_": _ordered(operator.le),
    "_>_": _ordered(operator.gt), "_>=_": _ordered(operator.ge),
}


# ---------------------------------------------------------------------------
# Programs


@dataclass(frozen=True, slots=True)
class CelVariable:
    """A named expression; later ones and the main expression read its value by name."""

    name: str
    expression: str


@dataclass(frozen=True, slots=True)
class CelProgram:
    """OpenBao's ``cel_program``: ``{"variables": [{"name", "expression"}...], "expression"}``."""

    expression: str
    variables: tuple[CelVariable, ...] = ()

    @classmethod
    def from_raw(cls, raw: Any) -> CelProgram:
        """The program of a role write's ``cel_program`` (an object).

        :raises InvalidRequest: with OpenBao's messages where it has them.
        """
        if not isinstance(raw, dict):
            raise InvalidRequest("failed to decode 'cel_program': expected an object")
        unknown = sorted(set(raw) - {"expression", "variables"})
        if unknown:
            raise InvalidRequest(f"failed to decode 'cel_program': unknown keys {unknown}")
        expression = raw.get("expression", "")
        if not isinstance(expression, str):
            raise InvalidRequest("failed to decode 'cel_program': expression must be a string")
        if not expression:
            raise InvalidRequest("cel_program.expression cannot be empty")
        items = raw.get("variables")
        if items is None:  # absent or null: no variables (OpenBao's nil slice)
            items = []
        if not isinstance(items, list):
            raise InvalidRequest("failed to decode 'cel_program': variables must be a list")
        if len(items) > MAX_VARIABLES:
            raise InvalidRequest(f"cel_program: at most {MAX_VARIABLES} variables")
        variables: list[CelVariable] = []
        for i, item in enumerate(items):
            if not isinstance(item, dict) or set(item) - {"name", "expression"}:
                raise InvalidRequest(f"failed to decode 'cel_program': variables[{i}] must be {{name, expression}}")
            name, expr = item.get("name"), item.get("expression")
            if not isinstance(name, str) or not _NAME.fullmatch(name) or name in _RESERVED:
                raise InvalidRequest(f"cel_program: variables[{i}]: invalid or reserved variable name {name!r}")
            if any(v.name == name for v in variables):
                raise InvalidRequest(f"cel_program: variables[{i}]: variable {name!r} is defined twice")
            if not isinstance(expr, str) or not expr:
                raise InvalidRequest(f"cel_program: variables[{i}].{name}: expression cannot be empty")
            variables.append(CelVariable(name, expr))
        return cls(expression, tuple(variables))

    def to_json(self) -> dict[str, Any]:
        """The stored and read form (OpenBao's: ``variables`` left out when empty)."""
        out: dict[str, Any] = {}
        if self.variables:
            out["variables"] = [{"name": v.name, "expression": v.expression} for v in self.variables]
        out["expression"] = self.expression
        return out


@dataclass(slots=True)
class _Budget:
    steps: int
    deadline: float


class _Metered(Evaluator):
    """celpy's evaluator, charged one budget unit per parse-tree node it visits, and every
    value it produces checked against ``MAX_VALUE``."""

    def __init__(self, ast: lark.Tree[Any], activation: Activation, budget: _Budget) -> None:
        super().__init__(ast, activation)
        self.budget = budget

    def sub_evaluator(self, ast: lark.Tree[Any]) -> Evaluator:
        return _Metered(ast, self.activation, self.budget)

    def _visit_tree(self, tree: lark.Tree[Any]) -> Any:
        budget = self.budget
        budget.steps -= 1
        if budget.steps < 0:
            raise _OverBudget(f"the program exceeded its cost limit ({COST_LIMIT} evaluation steps)")
        if (budget.steps & 0x3F) == 0 and time.thread_time() > budget.deadline:
            raise _OverBudget(f"the program exceeded its time limit ({TIME_LIMIT}s)")
        value = super()._visit_tree(tree)
        if isinstance(value, (str, bytes, list, dict)) and len(value) > MAX_VALUE:
            raise _OverBudget(f"the program built a value larger than {MAX_VALUE} elements")
        return value


class _Runner(celpy.InterpretedRunner):
    _base: Activation | None = None

    def run(self, context: dict[str, Any], budget: _Budget) -> Any:
        # The base activation (annotations, functions) is built once: each evaluation
        # clones it before binding the context (``Evaluator.set_activation``).
        base = self._base
        if base is None:
            base = self._base = self.new_activation()
        return _Metered(self.ast, base, budget).evaluate(context)


_ENV = celpy.Environment(
    annotations={name: cls for name, (cls, _) in _TYPES.items()},
    runner_class=_Runner,
)


def _walk(tree: lark.Tree[Any]) -> Iterator[tuple[lark.Tree[Any], int]]:
    """Every subtree with its depth, iteratively (deep trees are what it checks)."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        yield node, depth
        stack.extend((c, depth + 1) for c in node.children if isinstance(c, lark.Tree))


def _bare_ident(tree: lark.Tree[Any]) -> str | None:
    """The name, when ``tree`` (an ``expr``) is nothing but one identifier."""
    node: Any = tree
    while isinstance(node, lark.Tree) and len(node.children) == 1:
        if node.data == "ident":
            token = node.children[0]
            return str(token) if isinstance(token, lark.Token) else None
        node = node.children[0]
    return None


def _dotted(tree: lark.Tree[Any]) -> str | None:
    """``pb.Auth`` for the ``member`` of a message literal, else None."""
    parts: list[str] = []
    node: Any = tree
    while isinstance(node, lark.Tree):
        if node.data == "member_dot":
            parts.append(str(node.children[1]))
            node = node.children[0]
        elif node.data in ("member", "primary") and len(node.children) == 1:
            node = node.children[0]
        elif node.data == "ident":
            parts.append(str(node.children[0]))
            return ".".join(reversed(parts))
        else:
            return None
    return None


def _check_names(tree: lark.Tree[Any], scope: frozenset[str], where: str) -> None:
    """Refuse undeclared references, unknown functions and message types or fields."""
    stack: list[tuple[Any, frozenset[str]]] = [(tree, scope)]
    while stack:
        node, names = stack.pop()
        if not isinstance(node, lark.Tree):
            continue
        kind, children = node.data, node.children
        if kind == "ident":
            name = str(children[0])
            if name not in names:
                raise InvalidRequest(f"{where}: undeclared reference to '{name}'")
            continue
        if kind == "dot_ident":
            raise InvalidRequest(f"{where}: undeclared reference to '.{children[0]}'")
        if kind == "ident_arg" or kind == "dot_ident_arg":
            function = str(children[0])
            if function not in _FUNCTIONS:
                raise InvalidRequest(f"{where}: undeclared reference to function '{function}'")
            stack.extend((c, names) for c in children[1:])
            continue
        if kind == "member_dot_arg":
            target, method = children[0], str(children[1])
            args = children[2] if len(children) > 2 else None
            if method in _MACROS:
                exprs = args.children if isinstance(args, lark.Tree) else []
                var = _bare_ident(exprs[0]) if exprs else None
                if var is None or len(exprs) != 2:
                    raise InvalidRequest(f"{where}: {method}() takes a variable name and an expression")
                stack.append((target, names))
                stack.append((exprs[1], names | {var}))
                continue
            if method not in _FUNCTIONS:
                raise InvalidRequest(f"{where}: undeclared reference to function '{method}'")
            stack.append((target, names))
            if args is not None:
                stack.append((args, names))
            continue
        if kind == "member_object":
            type_name = _dotted(children[0])
            spec = _TYPES.get(type_name or "")
            if spec is None:
                raise InvalidRequest(f"{where}: unknown message type '{type_name}' (pb.Auth, logical.Alias, "
                                     "pb.LeaseOptions)")
            inits = children[1] if len(children) > 1 else None
            if isinstance(inits, lark.Tree):
                labels = [str(c) for c in inits.children[0::2]]
                for label in labels:
                    if label in _SERVER_FIELDS:
                        raise InvalidRequest(f"{where}: {type_name}.{label} is set by the server")
                    if label not in spec[1]:
                        raise InvalidRequest(f"{where}: {type_name} has no field '{label}'")
                if len(set(labels)) != len(labels):
                    raise InvalidRequest(f"{where}: a field of {type_name} is set twice")
                stack.extend((c, names) for c in inits.children[1::2])
            continue
        if kind == "member_dot":
            if _dotted(node) in _TYPES:
                continue
            stack.append((children[0], names))
            continue
        stack.extend((c, names) for c in children)


def _compile_one(expression: str, scope: frozenset[str], where: str) -> _Runner:
    if len(expression) > MAX_EXPRESSION:
        raise InvalidRequest(f"{where}: longer than {MAX_EXPRESSION} characters")
    try:
        ast = _ENV.compile(expression)
    except CELParseError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "syntax error"
        raise InvalidRequest(f"{where}: invalid CEL syntax: {first[:300]}") from None
    except RecursionError:
        raise InvalidRequest(f"{where}: nested too deep") from None
    nodes = 0
    for _node, depth in _walk(ast):
        nodes += 1
        if depth > MAX_DEPTH:
            raise InvalidRequest(f"{where}: nested too deep (more than {MAX_DEPTH} parse levels)")
        if nodes > MAX_NODES:
            raise InvalidRequest(f"{where}: too large (more than {MAX_NODES} parse nodes)")
    _check_names(ast, scope, where)
    return cast(_Runner, _ENV.program(ast, functions={**EXTENSIONS, **OPERATORS}))


@dataclass(slots=True)
class CompiledProgram:
    """A program ready to run: one runner per variable, then the main expression."""

    program: CelProgram
    variables: list[tuple[str, _Runner]]
    main: _Runner

    def evaluate(self, claims: dict[str, Any], now: float, operation: str) -> Any:
        """Run the program over ``claims``; return its value (celpy types).

        :raises InvalidRequest: ``CEL program failed: <why>`` (an evaluation error, or a limit).
        """
        context: dict[str, Any] = {
            "claims": json_to_cel(claims),
            "now": celtypes.TimestampType(datetime.datetime.fromtimestamp(now, datetime.UTC)),
            "operation": celtypes.StringType(operation),
        }
        where = "expression"
        # The CPU limit measures the program, not a garbage collection of the whole process
        # that happens to start during it (a long pause in a big server): no collection
        # runs while the program does (at most COST_LIMIT steps and MAX_VALUE-sized values).
        collecting = gc.isenabled()
        gc.disable()
        budget = _Budget(COST_LIMIT, time.thread_time() + TIME_LIMIT)
        try:
            for name, runner in self.variables:
                where = f"variable {name!r}"
                context[name] = runner.run(context, budget)
            where = "expression"
            return self.main.run(context, budget)
        except _OverBudget as exc:
            raise InvalidRequest(f"CEL program failed: {exc}") from None
        except RecursionError:
            raise InvalidRequest(f"CEL program failed: {where}: nested too deep") from None
        except Exception as exc:  # an evaluation error of the program (celpy's or a value's)
            raise InvalidRequest(f"CEL program failed: {where}: {_reason(exc)}") from None
        finally:
            if collecting:
                gc.enable()


def _reason(exc: BaseException) -> str:
    """An evaluation error, short: celpy's message without the activation it appends
    (which would list every claim and function)."""
    text = str(exc.args[0]) if exc.args else type(exc).__name__
    text = text.split(" (in activation", 1)[0]
    return text[:300]


def compile_program(program: CelProgram) -> CompiledProgram:
    """Compile every expression of ``program`` (at role write, and when a stored role is
    first used by this process).

    :raises InvalidRequest: naming the variable or the main expression and why.
    """
    scope = frozenset(DECLARED)
    variables: list[tuple[str, _Runner]] = []
    for v in program.variables:
        variables.append((v.name, _compile_one(v.expression, scope, f"cel_program: variable {v.name!r}")))
        scope = scope | {v.name}
    main = _compile_one(program.expression, scope, "cel_program: expression")
    return CompiledProgram(program, variables, main)


def to_python(value: Any) -> Any:
    """A CEL value as plain Python (messages as dicts, durations as seconds)."""
    if isinstance(value, celtypes.BoolType):
        return bool(value)
    if isinstance(value, celtypes.DurationType):
        return int(value.total_seconds())
    if isinstance(value, celtypes.TimestampType):
        return value.isoformat()
    if isinstance(value, (celtypes.IntType, celtypes.UintType)):
        return int(value)
    if isinstance(value, celtypes.DoubleType):
        return float(value)
    if isinstance(value, celtypes.StringType):
        return str(value)
    if isinstance(value, celtypes.BytesType):
        return bytes(value)
    if isinstance(value, dict):
        return {str(to_python(k)): to_python(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_python(v) for v in value]
    return value
