"""Computed fields: sandboxed Jinja2 expressions over a record (``amount * probability / 100``).

The common expressions — names, constants, ``~`` concatenation, ``a if b else c`` and the four
arithmetic operators — are translated into plain Python closures with exactly Jinja's meaning
(a missing name is Jinja's Undefined: ``""`` in a concatenation, false as a test, an error in
arithmetic); anything else (filters, calls, attributes, comparisons ...) runs in Jinja's sandbox.
A Jinja expression call builds a template context per evaluation, which made the computed
``full_name`` about a tenth of an import's CPU; the closures cost a dictionary lookup per name.
"""

from __future__ import annotations

import decimal
import operator
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from jinja2 import nodes
from jinja2.exceptions import TemplateSyntaxError, UndefinedError
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

_env = ImmutableSandboxedEnvironment()
_ERRORS = (TypeError, ArithmeticError, decimal.InvalidOperation, ValueError, UndefinedError)


class _Undefined(Exception):
    """Arithmetic on a missing name (Jinja raises UndefinedError there): the value is None."""


_MISSING = object()  # a name the record does not have (Jinja's Undefined)
_ARITHMETIC = {nodes.Add: operator.add, nodes.Sub: operator.sub, nodes.Mul: operator.mul, nodes.Div: operator.truediv}


@lru_cache(maxsize=512)
def compile_expression(expr: str) -> Callable[..., Any]:
    """Compile once; the sandbox forbids attribute tricks, so YAML authors cannot run code."""
    return _env.compile_expression(expr, undefined_to_none=True)


@lru_cache(maxsize=512)
def _compiled(expr: str) -> Callable[[Mapping[str, Any]], Any]:
    """``record -> value`` for ``expr``: a closure where the expression allows, else Jinja's sandbox."""
    try:
        tree = Parser(_env, expr, state="variable").parse_expression()
        fast = _closure(tree)
    except (TemplateSyntaxError, _Unsupported):
        fast = None
    if fast is None:
        jinja = compile_expression(expr)
        return lambda record: jinja(**record)

    def run(record: Mapping[str, Any]) -> Any:
        try:
            value = fast(record)
        except _Undefined:
            return None
        return None if value is _MISSING else value

    return run


class _Unsupported(Exception):
    """The expression uses something the closures do not translate (Jinja evaluates it)."""


def _closure(node: nodes.Node) -> Callable[[Mapping[str, Any]], Any]:
    """A closure computing ``node`` like Jinja's generated code does (see the module docstring)."""
    if isinstance(node, nodes.Const) and isinstance(node.value, str | int | float | decimal.Decimal | None):
        value = node.value
        return lambda record: value
    if isinstance(node, nodes.Name) and node.ctx == "load":
        if node.name in _env.globals:  # Jinja would find the global when the record lacks the name
            raise _Unsupported(node.name)
        name = node.name
        return lambda record: record.get(name, _MISSING)
    if isinstance(node, nodes.Concat):
        parts = [_closure(n) for n in node.nodes]

        def concat(record: Mapping[str, Any]) -> str:
            out = []
            for part in parts:
                v = part(record)
                out.append("" if v is _MISSING else v if v.__class__ is str else str(v))
            return "".join(out)

        return concat
    if isinstance(node, nodes.CondExpr):
        test, then = _closure(node.test), _closure(node.expr1)
        otherwise = _closure(node.expr2) if node.expr2 is not None else (lambda record: _MISSING)

        def cond(record: Mapping[str, Any]) -> Any:
            v = test(record)
            return then(record) if v is not _MISSING and v else otherwise(record)

        return cond
    op = _ARITHMETIC.get(type(node))
    if op is not None:
        left, right = _closure(node.left), _closure(node.right)  # type: ignore[attr-defined]

        def arithmetic(record: Mapping[str, Any]) -> Any:
            a, b = left(record), right(record)
            if a is _MISSING or b is _MISSING:
                raise _Undefined
            return op(a, b)

        return arithmetic
    raise _Unsupported(type(node).__name__)


def evaluate(expr: str, record: Mapping[str, Any]) -> Any:
    """The expression's value for ``record``; None when an input is missing or the math fails."""
    try:
        value = _compiled(expr)(record)
    except _ERRORS:
        return None
    if isinstance(value, float):
        value = decimal.Decimal(str(value))
    return value
