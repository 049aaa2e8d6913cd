"""JSON in and out of the REST API.

Out: Decimal (money, decimal, percent) is a **string** in fixed-point notation (``"1500000.00"``)
because a JSON number becomes a binary float in JavaScript and loses cents beyond 2**53; dates
are ``YYYY-MM-DD``; datetimes are ISO 8601 with their UTC offset (``2026-11-23T09:30:00+00:00``).
In: numbers and numeric strings are both accepted; NaN/Infinity, NUL characters and unpaired
surrogates are refused up front (PostgreSQL cannot store them, and no CRM value contains them).
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse


def to_jsonable(value: Any) -> Any:
    """``json.dumps`` ``default=``: the API's encoding of non-JSON Python values."""
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:  # crmkit stores UTC; a naive value is UTC without its label
            value = value.replace(tzinfo=dt.UTC)
        return value.isoformat()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON with the API's encoding."""
    return json.dumps(
        value, default=to_jsonable, ensure_ascii=False, allow_nan=False, separators=(",", ":")
    ).encode("utf-8")


class APIResponse(JSONResponse):
    """A JSONResponse that knows Decimal, date and datetime."""

    def render(self, content: Any) -> bytes:
        return dumps(content)


class BadJSON(ValueError):
    """The request body is not acceptable JSON; ``field`` is where (``""`` for the whole body)."""

    def __init__(self, message: str, field: str = ""):
        self.field = field
        super().__init__(message)


def _refuse_constant(name: str) -> Any:
    raise BadJSON(f"{name} is not a valid JSON value")


def loads(data: bytes) -> Any:
    """Parse a request body strictly; raises :class:`BadJSON`."""
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise BadJSON("the body must be UTF-8 encoded JSON") from None
    except json.JSONDecodeError as exc:
        raise BadJSON(
            f"the body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except RecursionError:
        raise BadJSON("the body is nested too deeply") from None
    check_text(value)
    return value


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored, or None: NUL characters and unpaired surrogates."""
    if "\x00" in text:
        return "must not contain NUL (\\u0000) characters"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains an unpaired surrogate (invalid Unicode)"
    return None


def check_text(value: Any, path: str = "") -> None:
    """Raise :class:`BadJSON` naming the first string (key or value) that cannot be stored."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            problem = text_problem(item)
            if problem:
                raise BadJSON(problem, where)
        elif isinstance(item, dict):
            for k, v in item.items():
                sub = f"{where}.{k}" if where else str(k)
                problem = text_problem(k)
                if problem:
                    raise BadJSON(f"field name {problem}", where)
                stack.append((v, sub))
        elif isinstance(item, list):
            stack.extend((v, f"{where}.{i}" if where else str(i)) for i, v in enumerate(item))
