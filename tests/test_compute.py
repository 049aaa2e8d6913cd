"""Computed-field expressions: the Python closures give exactly what Jinja's sandbox gives."""

from __future__ import annotations

import decimal
import itertools

import pytest

from crmkit.core import compute

EXPRESSIONS = [
    # the shipped schemas' expressions
    "last_name ~ (' ' ~ first_name if first_name else '')",
    "amount * probability / 100",
    "quantity * unit_price * (100 - discount) / 100",
    # more of what the closures translate
    "a ~ b", "a ~ ' / ' ~ b", "a if b", "a if b else 'none'", "a + b", "a - b * 2", "(a + b) / 3",
    "a ~ 1.5", "a * 0.5", "'x' ~ a ~ none ~ true",
    # left to Jinja (filters, comparisons, calls, attributes, globals)
    "a | default('zz')", "a ~ (b | upper if b else '')", "a > b", "range(3) | list", "a.b", "a ~ range",
]
VALUES = [None, "", "佐藤", "Smith", 0, 3, decimal.Decimal("12.50"), True]


def jinja(expr, record):
    """The reference: the Jinja sandbox's own compiled expression (what evaluate ran before)."""
    try:
        value = compute.compile_expression(expr)(**record)
    except (TypeError, ArithmeticError, decimal.InvalidOperation, ValueError, compute.UndefinedError):
        return None
    return decimal.Decimal(str(value)) if isinstance(value, float) else value


@pytest.mark.parametrize("expr", EXPRESSIONS)
def test_every_expression_gives_what_jinja_gives_for_every_kind_of_value(expr):
    records = [{}]
    for a, b in itertools.product([*VALUES, "missing"], repeat=2):
        record = {k: v for k, v in (("a", a), ("b", b)) if v != "missing"}
        records.append(record)
    records += [
        {"last_name": "佐藤", "first_name": "太郎"}, {"last_name": "Smith"}, {"last_name": None, "first_name": ""},
        {"amount": decimal.Decimal("1000000"), "probability": 35}, {"amount": None, "probability": 35},
        {"quantity": 3, "unit_price": decimal.Decimal("980"), "discount": 10}, {"quantity": 3, "unit_price": 5},
    ]
    for record in records:
        got, want = compute.evaluate(expr, record), jinja(expr, record)
        assert (type(got), got) == (type(want), want), (expr, record)


def test_the_common_expressions_do_not_build_a_jinja_context():
    translated, left_to_jinja = EXPRESSIONS[:13], EXPRESSIONS[13:]
    assert all(compute._compiled(e).__name__ == "run" for e in translated)
    assert all(compute._compiled(e).__name__ == "<lambda>" for e in left_to_jinja)


def test_arithmetic_on_a_missing_name_or_a_failing_operation_is_none():
    assert compute.evaluate("amount * probability / 100", {"amount": decimal.Decimal("200")}) is None
    assert compute.evaluate("a / b", {"a": 1, "b": 0}) is None
    assert compute.evaluate("a * b", {"a": "x", "b": None}) is None
    assert compute.evaluate("amount * probability / 100", {"amount": decimal.Decimal("200"), "probability": 30}) \
        == decimal.Decimal("60")
