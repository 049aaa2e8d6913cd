"""Computed fields: sandboxed Jinja2 expressions over a record (``amount * probability / 100``)."""

from __future__ import annotations

import decimal
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from jinja2.exceptions import UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

_env = ImmutableSandboxedEnvironment()


@lru_cache(maxsize=512)
def compile_expression(expr: str) -> Callable[..., Any]:
    """Compile once; the sandbox forbids attribute tricks, so YAML authors cannot run code."""
    return _env.compile_expression(expr, undefined_to_none=True)


def evaluate(expr: str, record: Mapping[str, Any]) -> Any:
    """The expression's value for ``record``; None when an input is missing or the math fails."""
    try:
        value = compile_expression(expr)(**record)
    except (TypeError, ArithmeticError, decimal.InvalidOperation, ValueError, UndefinedError):
        return None
    if isinstance(value, float):
        value = decimal.Decimal(str(value))
    return value
