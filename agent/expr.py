"""A small, safe expression language for command preconditions and feedback conditions.

    Vehicle.Speed == 0
    Vehicle.Powertrain.TractionBattery.StateOfCharge.Current >= 20
    Vehicle.Cabin.HVAC.IsAirConditioningActive == true and not Vehicle.Speed > 5
    Vehicle.Cabin.HVAC.Station.Row1.Driver.Temperature == $target_temp_c

Operands: signal paths, numbers, 'strings', true/false, and `$param` (a command parameter).
Operators: == != < <= > >=, and, or, not, parentheses; in `compute` expressions arithmetic
+ - * / and the functions abs(x), min(a, b, ...), max(a, b, ...). Parsed once at load into a
tree of tuples and evaluated against a dict of current values; nothing is ever passed to
`eval`. A comparison with a value not known yet is false (and reported as such); arithmetic
on an unknown value, a non-number or a division by zero is unknown.

`compute:` paths use `parse_arithmetic`: one arithmetic expression over signal paths.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<num>\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
      | (?P<str>'[^']*'|"[^"]*")
      | (?P<op>==|!=|<=|>=|<|>|\(|\)|[-+*/,])
      | (?P<param>\$[A-Za-z_][A-Za-z0-9_]*)
      | (?P<word>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    )""",
    re.VERBOSE,
)
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_ARITH: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
}
_FUNCTIONS: dict[str, Callable[..., Any]] = {"abs": abs, "min": min, "max": max}


class ExprError(ValueError):
    """The text is not a valid expression."""


Node = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Expression:
    text: str
    tree: Node
    paths: frozenset[str]
    params: frozenset[str]
    # An arithmetic tree as nested closures (`compute:` values are worked out on the live
    # path, for every change of an input): the same results as walking the tree.
    arithmetic: Callable[[Mapping[str, Any]], Any] | None = None

    def evaluate(self, values: Mapping[str, Any], params: Mapping[str, Any]) -> bool:
        """True only when it definitely holds; unknown signals make it not hold."""
        return _eval(self.tree, values, params) is True

    def number(self, values: Mapping[str, Any]) -> float | int | None:
        """The arithmetic value, or None when an input is unknown, not a number, or the
        result is not a finite number (a division by zero)."""
        if self.arithmetic is not None:
            result = self.arithmetic(values)
        else:
            result = _value(self.tree, values, {})
        try:
            if not _numeric(result) or not math.isfinite(result):
                return None
        except OverflowError:  # an integer too large for a float: no number to publish
            return None
        return result  # type: ignore[no-any-return]

    def explain(self, values: Mapping[str, Any]) -> str:
        """The current values of the paths it reads, for a rejection's detail: in JSON terms
        (`false`, `"OFF"`), as the back end reading the detail writes them; `unknown` for a
        path not seen yet."""
        shown = ", ".join(
            f"{p}={json.dumps(values[p]) if p in values else 'unknown'}" for p in sorted(self.paths)
        )
        return f"{self.text} ({shown})"


def parse(text: str) -> Expression:
    tokens = _tokenize(text)
    parser = _Parser(tokens)
    tree = parser.or_expr()
    if parser.pos != len(tokens):
        raise ExprError(f"unexpected {tokens[parser.pos][1]!r}")
    paths: set[str] = set()
    params: set[str] = set()
    _collect(tree, paths, params)
    return Expression(text, tree, frozenset(paths), frozenset(params))


def parse_arithmetic(text: str) -> Expression:
    """One arithmetic expression over signal paths (no comparisons, no $params)."""
    tokens = _tokenize(text)
    parser = _Parser(tokens, arithmetic=True)
    tree = parser.sum()
    if parser.pos != len(tokens):
        raise ExprError(f"unexpected {tokens[parser.pos][1]!r}")
    paths: set[str] = set()
    params: set[str] = set()
    _collect(tree, paths, params)
    if params:
        raise ExprError("a computed value takes no $parameters")
    if not paths:
        raise ExprError("a computed value reads at least one signal path")
    return Expression(text, tree, frozenset(paths), frozenset(params), _closure(tree))


def _closure(node: Node) -> Callable[[Mapping[str, Any]], Any]:
    """`_value` of an arithmetic tree, as closures: the node kinds are looked at once here,
    not at every evaluation. Unknown inputs, non-numbers and a division by zero give
    _UNKNOWN, as in `_arith`."""
    kind = node[0]
    if kind == "const":
        constant = node[1] if _numeric(node[1]) else _UNKNOWN  # 'text' or true: no number
        return lambda values: constant
    if kind == "path":
        path = node[1]

        def read(values: Mapping[str, Any]) -> Any:
            value = values.get(path)
            kind = value.__class__
            return value if kind is float or kind is int else _UNKNOWN

        return read
    if kind not in ("arith", "call"):  # a condition in parentheses: a truth value, no number
        return lambda values: _UNKNOWN
    operands = [_closure(arg) for arg in node[2:]]
    function = _FUNCTIONS[node[1]] if kind == "call" else _ARITH[node[1]]
    if kind == "call" or len(operands) != 2:

        def call(values: Mapping[str, Any]) -> Any:
            args = [operand(values) for operand in operands]
            if any(arg is _UNKNOWN for arg in args):
                return _UNKNOWN
            try:
                return function(*args)
            except ArithmeticError:  # a division by zero, a number too large
                return _UNKNOWN

        return call
    left, right = operands

    def binary(values: Mapping[str, Any]) -> Any:
        a = left(values)
        if a is _UNKNOWN:
            return _UNKNOWN
        b = right(values)
        if b is _UNKNOWN:
            return _UNKNOWN
        try:
            return function(a, b)
        except ArithmeticError:  # a division by zero, a number too large
            return _UNKNOWN

    return binary


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise ExprError(f"cannot read {text[pos : pos + 12]!r}")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    if not tokens:
        raise ExprError("empty expression")
    return tokens


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], *, arithmetic: bool = False) -> None:
        self.tokens = tokens
        self.pos = 0
        # Conditions compare values; only `compute` expressions do arithmetic.
        self.arithmetic = arithmetic

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise ExprError("expression ends too early")
        self.pos += 1
        return token

    def or_expr(self) -> Node:
        node = self.and_expr()
        while self.peek() == ("word", "or"):
            self.take()
            node = ("or", node, self.and_expr())
        return node

    def and_expr(self) -> Node:
        node = self.not_expr()
        while self.peek() == ("word", "and"):
            self.take()
            node = ("and", node, self.not_expr())
        return node

    def not_expr(self) -> Node:
        if self.peek() == ("word", "not"):
            self.take()
            return ("not", self.not_expr())
        return self.comparison()

    def comparison(self) -> Node:
        left = self.sum()
        token = self.peek()
        if token is not None and token[0] == "op" and token[1] in _COMPARE:
            self.take()
            return ("cmp", token[1], left, self.sum())
        return left

    def sum(self) -> Node:
        if not self.arithmetic:
            return self.operand()
        node = self.product()
        while self.peek() in (("op", "+"), ("op", "-")):
            node = ("arith", self.take()[1], node, self.product())
        return node

    def product(self) -> Node:
        node = self.unary()
        while self.peek() in (("op", "*"), ("op", "/")):
            node = ("arith", self.take()[1], node, self.unary())
        return node

    def unary(self) -> Node:
        if self.peek() == ("op", "-"):
            self.take()
            inner = self.unary()
            if inner[0] == "const" and _numeric(inner[1]):
                return ("const", -inner[1])
            return ("arith", "-", ("const", 0), inner)
        return self.operand()

    def call(self, name: str) -> Node:
        self.take()  # "("
        args = [self.sum()]
        while self.peek() == ("op", ","):
            self.take()
            args.append(self.sum())
        if self.take() != ("op", ")"):
            raise ExprError(f"missing ')' after the arguments of {name}")
        if name == "abs" and len(args) != 1:
            raise ExprError("abs takes one argument")
        if name != "abs" and len(args) < 2:  # Python's min(5) would fail at every evaluation
            raise ExprError(f"{name} takes two or more arguments")
        return ("call", name, *args)

    def operand(self) -> Node:
        kind, text = self.take()
        if kind == "op" and text == "-" and not self.arithmetic and self.peek() is not None:
            inner = self.operand()  # a negative number in a condition: `Vehicle.X > -5`
            if inner[0] != "const" or not _numeric(inner[1]):
                raise ExprError("'-' only before a number in a condition")
            return ("const", -inner[1])
        if kind == "word" and text in _FUNCTIONS and self.arithmetic and self.peek() == ("op", "("):
            return self.call(text)
        if kind == "op" and text == "(":
            node = self.or_expr()
            if self.take() != ("op", ")"):
                raise ExprError("missing ')'")
            return node
        if kind == "num":
            value = float(text)
            return ("const", int(value) if value.is_integer() and "." not in text else value)
        if kind == "str":
            return ("const", text[1:-1])
        if kind == "param":
            return ("param", text[1:])
        if kind == "word":
            if text in ("true", "false"):
                return ("const", text == "true")
            if text in ("and", "or", "not"):
                raise ExprError(f"{text!r} where a value was expected")
            if "." not in text:
                raise ExprError(f"{text!r} is not a signal path (Vehicle....), $param or value")
            return ("path", text)
        raise ExprError(f"unexpected {text!r}")


def _collect(node: Node, paths: set[str], params: set[str]) -> None:
    kind = node[0]
    if kind == "path":
        paths.add(node[1])
    elif kind == "param":
        params.add(node[1])
    elif kind in ("and", "or"):
        _collect(node[1], paths, params)
        _collect(node[2], paths, params)
    elif kind == "not":
        _collect(node[1], paths, params)
    elif kind in ("cmp", "arith"):
        _collect(node[2], paths, params)
        _collect(node[3], paths, params)
    elif kind == "call":
        for arg in node[2:]:
            _collect(arg, paths, params)


_UNKNOWN = object()


def _value(node: Node, values: Mapping[str, Any], params: Mapping[str, Any]) -> Any:
    kind = node[0]
    if kind == "const":
        return node[1]
    if kind == "path":
        value = values.get(node[1], _UNKNOWN)
        return _UNKNOWN if value is None else value
    if kind == "param":
        return params.get(node[1], _UNKNOWN)
    if kind in ("arith", "call"):
        return _arith(node, values, params)
    result = _eval(node, values, params)
    return _UNKNOWN if result is None else result


def _eval(node: Node, values: Mapping[str, Any], params: Mapping[str, Any]) -> bool | None:
    """Three-valued: True, False, or None for 'not known' (a signal not seen yet). Only a
    definite True passes a precondition, so `not Vehicle.Speed > 5` with no speed known
    is not known, and fails safe."""
    kind = node[0]
    if kind == "and":
        left, right = _eval(node[1], values, params), _eval(node[2], values, params)
        if left is False or right is False:
            return False
        return None if left is None or right is None else True
    if kind == "or":
        left, right = _eval(node[1], values, params), _eval(node[2], values, params)
        if left is True or right is True:
            return True
        return None if left is None or right is None else False
    if kind == "not":
        inner = _eval(node[1], values, params)
        return None if inner is None else not inner
    if kind == "cmp":
        left, right = _value(node[2], values, params), _value(node[3], values, params)
        if left is _UNKNOWN or right is _UNKNOWN:
            return None
        return _compare(node[1], left, right)
    value = _value(node, values, params)
    if value is _UNKNOWN:
        return None
    return value if isinstance(value, bool) else bool(value)


def _arith(node: Node, values: Mapping[str, Any], params: Mapping[str, Any]) -> Any:
    operands = node[2:]
    args = [_value(arg, values, params) for arg in operands]
    if not all(_numeric(arg) for arg in args):
        return _UNKNOWN  # unknown inputs, booleans and strings give no number
    try:
        if node[0] == "call":
            return _FUNCTIONS[node[1]](*args)
        return _ARITH[node[1]](*args)
    except ArithmeticError:  # a division by zero, a number too large
        return _UNKNOWN


def _compare(op: str, left: Any, right: Any) -> bool:
    if _numeric(left) and _numeric(right):
        if op in ("==", "!="):
            equal = math.isclose(left, right, rel_tol=1e-9, abs_tol=1e-6)
            return equal if op == "==" else not equal
        return _COMPARE[op](left, right)
    if type(left) is not type(right):  # a boolean is not the number 1, a string not a number
        return op == "!="
    try:
        return _COMPARE[op](left, right)
    except TypeError:
        return False


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
