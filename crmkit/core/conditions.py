"""The one condition language: YAML/JSON data compiled to a SQL WHERE clause or evaluated in Python.

A condition is a mapping; its keys are AND-ed::

    {status: won}                              # equality (None means IS NULL)
    {amount: {gte: 1000, lt: 5000}}            # operators
    {account.industry: {in: [it, finance]}}    # paths through ``reference`` fields
    {any: [{owner: $me}, {team: $my_team}]}    # all / any / not

Operators: eq ne in not_in gt gte lt lte contains startswith is_null between. ``{}`` and
``{all: []}`` are TRUE, ``{any: []}`` is FALSE. Special values: ``$me`` and ``$my_team`` (the
actor's user and team ids, from ``params["me"]`` / ``params["my_team"]``), ``$my_teams`` (a list,
for ``in``/``not_in``), ``$now`` and ``$today`` (``params["now"]`` / ``params["today"]`` when
given). Any other ``$name`` is an error (a typo must not become a literal); ``$$`` starts a literal
``$``, and strings like ``$`` or ``$100`` are plain text.

Semantics (identical in SQL and Python, NULLs included, so ``not`` is always the complement):

- A path whose reference is NULL or points at a missing record has the value NULL.
- ``eq``/``in``/``gt``/``contains``/... are FALSE on NULL; ``ne``/``not_in`` are TRUE on NULL (they
  are the negations, like IS DISTINCT FROM). ``eq: null`` is ``is_null: true``; ``in`` may list null.
- A special value that resolves to None (``$me`` for an anonymous actor) matches nothing:
  ``{owner: $me}`` is FALSE, ``{owner: {ne: $me}}`` TRUE. A missing params key is an error.
- ``eq``/``in`` on text are exact. ``contains``/``startswith`` ignore ASCII case only: SQLite's
  ``lower()`` folds only A-Z, so both sides fold only A-Z (``lower(x COLLATE "C")`` on PostgreSQL)
  to agree exactly. Wildcards in the value match literally. Accent/kana/width-insensitive
  matching is the job of the search text (:mod:`crmkit.core.text`), not of conditions.
- ``gt``/``lt``/``between`` on text compare code points (``COLLATE "C"`` on PostgreSQL, BINARY
  on SQLite), as Python does. ``between: [low, high]`` is inclusive.
- Values in a condition are coerced to the field's type: ISO strings to date/datetime, numbers
  and numeric strings to Decimal (money, decimal, percent) or int (integer, reference). Datetimes
  compare in UTC; naive ones are taken as UTC.
- ``multi_enum`` (a JSON list): ``contains: x`` and ``eq: x`` mean "x is one of the chosen
  options", ``in: [a, b]`` means "a or b is chosen", ``ne``/``not_in`` negate them, and
  ``is_null: true`` holds for NULL, JSON null and an empty list.
- ``json``/``address``/``file``/``image`` and unknown plugin types support ``is_null`` only;
  ``references`` (many-to-many) and ``password`` fields cannot be used.

SQL is generated for SQLite and PostgreSQL with bound parameters only; dotted paths compile to
correlated EXISTS subqueries, so the clause can be AND-ed into any select over the entity's table.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from crmkit.core.catalog import Catalog, Entity

__all__ = [
    "COMBINATORS",
    "OPERATORS",
    "ConditionError",
    "ParsedCondition",
    "check",
    "evaluate",
    "fields_used",
    "operators_for",
    "parse",
    "to_sql",
]

OPERATORS = (
    "eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "contains", "startswith", "is_null", "between",
)
COMBINATORS = ("all", "any", "not")
SPECIALS = ("$me", "$my_team", "$my_teams", "$now", "$today")

_KIND_BY_TYPE = {
    "string": "text", "text": "text", "email": "text", "phone": "text", "url": "text", "enum": "text",
    "integer": "int", "reference": "ref",
    "decimal": "dec", "money": "dec", "percent": "dec",
    "boolean": "bool", "date": "date", "datetime": "datetime",
    "multi_enum": "multi", "json": "json", "address": "json",
    "password": "secret", "references": "many",
}
_ORDERED = ("eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "between", "is_null")
_OPS_BY_KIND: dict[str, tuple[str, ...]] = {
    "text": OPERATORS,
    "int": _ORDERED, "dec": _ORDERED, "date": _ORDERED, "datetime": _ORDERED,
    "bool": ("eq", "ne", "in", "not_in", "is_null"),
    "ref": ("eq", "ne", "in", "not_in", "is_null"),
    "multi": ("eq", "ne", "in", "not_in", "contains", "is_null"),
    "json": ("is_null",),
    "opaque": ("is_null",),  # file, image and plugin types we know nothing about
    "secret": (),
    "many": (),
}
_UTC = dt.UTC
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_INT_RE = re.compile(r"\s*[+-]?\d+\s*")
_SPECIAL_RE = re.compile(r"\$[A-Za-z_]+")


def operators_for(field_type: str) -> tuple[str, ...]:
    """The condition operators a field type supports (for filter UIs)."""
    return _OPS_BY_KIND[_KIND_BY_TYPE.get(field_type, "opaque")]


class ConditionError(ValueError):
    """An invalid condition. ``path`` says where inside the condition (e.g. ``("all", 1, "amount",
    "gt")``); ``problems`` lists every (path, message) found, the first being ``(path, message)``."""

    def __init__(self, message: str, path: tuple = (), problems: list[tuple[tuple, str]] | None = None):
        self.message = message
        self.path = tuple(path)
        self.problems = problems or [(self.path, message)]
        where = "/".join(str(p) for p in self.path)
        super().__init__(f"{message} (at {where})" if where else message)


class _Bad(Exception):
    """A value that cannot be coerced to a field's type (internal)."""


# --------------------------------------------------------------------------------------------
# Values: coercion of condition values (strict) and of record values (lenient)
# --------------------------------------------------------------------------------------------


def _utc_naive(value: dt.datetime) -> dt.datetime:
    return value.astimezone(_UTC).replace(tzinfo=None) if value.tzinfo else value


_INT_LIMIT = 2**63  # BIGINT; beyond it the database would raise instead of answering
_DIGITS_LIMIT = 15  # significant digits a double (SQLite's storage of NUMERIC) compares exactly


def _coerce(kind: str, v: Any, strict: bool = True) -> Any:
    """A value as the Python type the field's values compare with; raises _Bad.

    ``strict`` (condition values, not stored ones) also refuses what a database cannot compare
    exactly or at all: NUL characters, integers beyond BIGINT, over-precise decimals.
    """
    if kind in ("text", "multi"):
        if isinstance(v, str):
            if strict and "\x00" in v:
                raise _Bad("text cannot contain a NUL character")
            return v
        if isinstance(v, int | Decimal) and not isinstance(v, bool):
            return str(v)
        raise _Bad(f"{v!r} is not text")
    if kind in ("int", "ref"):
        n: int | None = None
        if isinstance(v, int) and not isinstance(v, bool):
            n = v
        elif isinstance(v, float | Decimal):
            try:
                n = int(v) if v == int(v) else None
            except (ValueError, OverflowError, ArithmeticError):
                pass  # NaN, infinities
        elif isinstance(v, str) and _INT_RE.fullmatch(v):
            n = int(v)
        if n is None:
            raise _Bad(f"{v!r} is not a whole number")
        if strict and not -_INT_LIMIT <= n < _INT_LIMIT:
            raise _Bad(f"{v!r} is out of range")
        return n
    if kind == "dec":
        if isinstance(v, bool):
            raise _Bad(f"{v!r} is not a number")
        try:
            d = Decimal(repr(v)) if isinstance(v, float) else Decimal(v.strip() if isinstance(v, str) else v)
        except (InvalidOperation, TypeError, ValueError):
            raise _Bad(f"{v!r} is not a number") from None
        if not d.is_finite():
            raise _Bad(f"{v!r} is not a finite number")
        if strict and d and (len(d.normalize().as_tuple().digits) > _DIGITS_LIMIT or d.adjusted() >= 18):
            raise _Bad(f"{v!r} has more precision or magnitude than fields can compare "
                       f"({_DIGITS_LIMIT} significant digits)")
        return d
    if kind == "bool":
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.strip().lower() in ("true", "false"):
            return v.strip().lower() == "true"
        if isinstance(v, int) and v in (0, 1):
            return bool(v)
        raise _Bad(f"{v!r} is not true or false")
    if kind == "date":
        if isinstance(v, dt.datetime):
            return v.date()
        if isinstance(v, dt.date):
            return v
        if isinstance(v, str):
            try:
                return dt.date.fromisoformat(v.strip())
            except ValueError:
                pass
        raise _Bad(f"{v!r} is not a date (YYYY-MM-DD)")
    if kind == "datetime":
        if isinstance(v, dt.datetime):
            return _utc_naive(v)
        if isinstance(v, dt.date):
            return dt.datetime(v.year, v.month, v.day)
        if isinstance(v, str):
            try:
                return _utc_naive(dt.datetime.fromisoformat(v.strip()))
            except ValueError:
                pass
        raise _Bad(f"{v!r} is not a date and time (ISO 8601)")
    return v


def _record_value(kind: str, raw: Any) -> Any:
    """A stored/input value in comparable form; None when absent or not of the field's type."""
    if kind == "multi":
        if raw is None:
            return []
        if isinstance(raw, str):
            if raw.startswith("["):  # JSON text read without the JSON type
                try:
                    raw = json.loads(raw)
                except ValueError:
                    return [raw]
            else:
                return [raw]
        # SQLite's json_each and PostgreSQL's @> treat a JSON scalar as a one-element list.
        return list(raw) if isinstance(raw, list | tuple | set | frozenset) else [raw]
    if raw is None:
        return None
    if kind == "text":
        return raw if isinstance(raw, str) else str(raw)
    if kind in ("json", "opaque"):
        return raw
    if kind == "ref" and isinstance(raw, Mapping):
        raw = raw.get("id")
    if raw == "":
        return None  # an empty form input is no value for a non-text field
    try:
        return _coerce(kind, raw, strict=False)
    except _Bad:
        return None


def _fold(s: str) -> str:
    """ASCII-only lower case, exactly what SQLite's lower() does."""
    return s.lower() if s.isascii() else s.translate(_ASCII_LOWER)


def _like_escape(s: str) -> str:
    return s.replace("/", "//").replace("%", "/%").replace("_", "/_")


# --------------------------------------------------------------------------------------------
# SQL building blocks that differ between SQLite and PostgreSQL. Each is two-valued (never NULL
# for a non-NULL argument), which is what keeps NOT the exact complement.
# --------------------------------------------------------------------------------------------


class _ascii_lower(FunctionElement):
    type = sa.String()
    inherit_cache = True
    name = "ascii_lower"


class _bytewise(FunctionElement):
    type = sa.String()
    inherit_cache = True
    name = "bytewise"


class _json_has(FunctionElement):
    """multi_enum column contains a value: (column, value, value as JSON text)."""

    type = sa.Boolean()
    inherit_cache = True
    name = "json_has"


class _json_nonempty(FunctionElement):
    """multi_enum column holds at least one non-null item."""

    type = sa.Boolean()
    inherit_cache = True
    name = "json_nonempty"


class _json_present(FunctionElement):
    """JSON column is neither SQL NULL nor JSON null."""

    type = sa.Boolean()
    inherit_cache = True
    name = "json_present"


def _args(element: FunctionElement, compiler: Any, **kw: Any) -> list[str]:
    return [compiler.process(c, **kw) for c in element.clauses]


@compiles(_ascii_lower)
def _ascii_lower_default(element: Any, compiler: Any, **kw: Any) -> str:
    (arg,) = _args(element, compiler, **kw)
    return f"lower({arg})"


@compiles(_ascii_lower, "postgresql")
def _ascii_lower_pg(element: Any, compiler: Any, **kw: Any) -> str:
    # Under the "C" collation PostgreSQL's lower() folds only A-Z, like SQLite's.
    (arg,) = _args(element, compiler, **kw)
    return f'lower(({arg}) COLLATE "C")'


@compiles(_bytewise)
def _bytewise_default(element: Any, compiler: Any, **kw: Any) -> str:
    (arg,) = _args(element, compiler, **kw)
    return f"({arg}) COLLATE BINARY"


@compiles(_bytewise, "postgresql")
def _bytewise_pg(element: Any, compiler: Any, **kw: Any) -> str:
    (arg,) = _args(element, compiler, **kw)
    return f'({arg}) COLLATE "C"'


@compiles(_json_has)
def _json_has_default(element: Any, compiler: Any, **kw: Any) -> str:
    col, value, _json = _args(element, compiler, **kw)
    return f"EXISTS (SELECT 1 FROM json_each({col}) AS je WHERE je.value = {value})"


@compiles(_json_has, "postgresql")
def _json_has_pg(element: Any, compiler: Any, **kw: Any) -> str:
    col, _value, js = _args(element, compiler, **kw)
    # jsonb @> a scalar is true for an array holding it (and for that very scalar).
    return f"coalesce(CAST({col} AS JSONB) @> CAST({js} AS JSONB), false)"


@compiles(_json_nonempty)
def _json_nonempty_default(element: Any, compiler: Any, **kw: Any) -> str:
    (col,) = _args(element, compiler, **kw)
    return f"EXISTS (SELECT 1 FROM json_each({col}) AS je WHERE je.value IS NOT NULL)"


@compiles(_json_nonempty, "postgresql")
def _json_nonempty_pg(element: Any, compiler: Any, **kw: Any) -> str:
    (col,) = _args(element, compiler, **kw)
    j = f"CAST({col} AS JSONB)"
    return (
        f"EXISTS (SELECT 1 FROM jsonb_array_elements(CASE WHEN jsonb_typeof({j}) = 'array' THEN {j} "
        f"ELSE jsonb_build_array({j}) END) AS je(v) WHERE jsonb_typeof(je.v) <> 'null')"
    )


@compiles(_json_present)
def _json_present_default(element: Any, compiler: Any, **kw: Any) -> str:
    (col,) = _args(element, compiler, **kw)
    return f"({col} IS NOT NULL AND json_type({col}) <> 'null')"


@compiles(_json_present, "postgresql")
def _json_present_pg(element: Any, compiler: Any, **kw: Any) -> str:
    (col,) = _args(element, compiler, **kw)
    return f"coalesce(jsonb_typeof(CAST({col} AS JSONB)) <> 'null', false)"


# --------------------------------------------------------------------------------------------
# The parsed form
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Special:
    name: str


class _Nothing:
    """A special value that resolved to None: matches nothing."""

    def __repr__(self) -> str:
        return "<nothing>"


_NOTHING = _Nothing()


@dataclass(frozen=True, eq=False)
class _Leaf:
    where: tuple
    path: str
    steps: tuple[tuple[str, str], ...]  # (entity, field) pairs along the path
    type: str
    kind: str
    op: str
    arg: Any  # eq/ne/gt/...: value | None | _Special; in: tuple | _Special; between: (lo, hi); is_null: bool


@dataclass(frozen=True, eq=False)
class _All:
    children: tuple


@dataclass(frozen=True, eq=False)
class _Any:
    children: tuple


@dataclass(frozen=True, eq=False)
class _Not:
    child: Any


class _Parser:
    def __init__(self, entity: str, catalog: Catalog):
        self.entity = entity
        self.catalog = catalog
        self.problems: list[tuple[tuple, str]] = []

    def problem(self, where: tuple, message: str) -> None:
        self.problems.append((where, message))

    def node(self, cond: Any, where: tuple) -> Any:
        if cond is None:
            return _All(())
        if not isinstance(cond, Mapping):
            self.problem(where, f"a condition must be a mapping like {{field: value}}, got {cond!r}")
            return _All(())
        parts: list[Any] = []
        for key, value in cond.items():
            w = where + (key,)
            if not isinstance(key, str):
                self.problem(w, f"condition keys must be field names or all/any/not, got {key!r}")
            elif key in ("all", "any"):
                if not isinstance(value, list | tuple):
                    self.problem(w, f"{key!r} needs a list of conditions, got {value!r}")
                    continue
                kids = tuple(self.node(c, w + (i,)) for i, c in enumerate(value))
                parts.append(_All(kids) if key == "all" else _Any(kids))
            elif key == "not":
                parts.append(_Not(self.node(value, w)))
            else:
                parts.extend(self.field(key, value, w))
        return parts[0] if len(parts) == 1 else _All(tuple(parts))

    def resolve(self, path: str, where: tuple) -> list[tuple[Entity, Any]] | None:
        steps: list[tuple[Entity, Any]] = []
        current = self.catalog[self.entity]
        parts = path.split(".")
        for i, part in enumerate(parts):
            if part not in current.fields:
                close = difflib.get_close_matches(part, list(current.fields), 1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                within = f" (in path {path!r})" if len(parts) > 1 else ""
                self.problem(where, f"unknown field {part!r} on {current.name}{within}{hint}")
                return None
            f = current.fields[part]
            steps.append((current, f))
            if i < len(parts) - 1:
                if f.type != "reference" or not f.to:
                    self.problem(where, f"{current.name}.{part} is a {f.type} field, not a reference, so "
                                        f"{path!r} cannot go through it")
                    return None
                if f.to not in self.catalog:
                    self.problem(where, f"{current.name}.{part} points to unknown entity {f.to!r}")
                    return None
                current = self.catalog[f.to]
        return steps

    def field(self, path: str, value: Any, where: tuple) -> list[_Leaf]:
        steps = self.resolve(path, where)
        if steps is None:
            return []
        ent, f = steps[-1]
        kind = _KIND_BY_TYPE.get(f.type, "opaque")
        label = f"{f.type} field {ent.name}.{f.name}"
        if kind == "many":
            self.problem(where, f"{ent.name}.{f.name} is a many-to-many (references) field; conditions "
                                "cannot use it yet")
            return []
        if kind == "secret":
            self.problem(where, f"{ent.name}.{f.name} is a password field; conditions cannot use it")
            return []
        if isinstance(value, Mapping):
            if not value:
                valid = ", ".join(_OPS_BY_KIND[kind])
                self.problem(where, f"no operator given for {path!r} (valid: {valid})")
            ops = list(value.items())
        elif isinstance(value, list | tuple | set):
            self.problem(where, f"a list needs an operator: write {{{path}: {{in: [...]}}}}")
            return []
        else:
            ops = [("eq", value)]
        leaves = []
        key_steps = tuple((e.name, fl.name) for e, fl in steps)
        for op, arg in ops:
            w = where + (op,) if isinstance(value, Mapping) else where
            if op not in OPERATORS:
                self.problem(w, f"unknown operator {op!r} (valid: {', '.join(OPERATORS)})")
                continue
            if op not in _OPS_BY_KIND[kind]:
                self.problem(w, f"operator {op!r} does not apply to {label} "
                                f"(valid for it: {', '.join(_OPS_BY_KIND[kind])})")
                continue
            parsed = self.arg(kind, label, op, arg, w)
            if parsed is not _BAD:
                leaves.append(_Leaf(w, path, key_steps, f.type, kind, op, parsed))
        return leaves

    def arg(self, kind: str, label: str, op: str, arg: Any, where: tuple) -> Any:
        if op == "is_null":
            if not isinstance(arg, bool):
                self.problem(where, f"'is_null' needs true or false, got {arg!r}")
                return _BAD
            return arg
        if op in ("in", "not_in"):
            if arg == "$my_teams":
                return self.value(kind, label, op, arg, where)
            if not isinstance(arg, list | tuple):
                self.problem(where, f"{op!r} needs a list of values, got {arg!r}")
                return _BAD
            items = [self.value(kind, label, op, a, where + (i,), allow_null=True) for i, a in enumerate(arg)]
            return _BAD if _BAD in items else tuple(items)
        if op == "between":
            if not isinstance(arg, list | tuple) or len(arg) != 2 or None in arg:
                self.problem(where, f"'between' needs a list of two values [low, high], got {arg!r}")
                return _BAD
            pair = (self.value(kind, label, op, arg[0], where + (0,)),
                    self.value(kind, label, op, arg[1], where + (1,)))
            return _BAD if _BAD in pair else pair
        return self.value(kind, label, op, arg, where, allow_null=op in ("eq", "ne"))

    def value(self, kind: str, label: str, op: str, v: Any, where: tuple, allow_null: bool = False) -> Any:
        if v is None:
            if allow_null:
                return None
            self.problem(where, f"{op!r} needs a value, not null (use is_null for empty fields)")
            return _BAD
        if isinstance(v, list | tuple | set | Mapping):
            self.problem(where, f"{op!r} needs a single value, got {v!r}"
                         + (" (use 'in' for a list)" if op in ("eq", "ne") else ""))
            return _BAD
        if isinstance(v, str) and v.startswith("$"):
            if v.startswith("$$"):
                v = v[1:]
            elif not _SPECIAL_RE.fullmatch(v):
                pass  # "$", "$100 off": plain text
            elif v not in SPECIALS:
                self.problem(where, f"unknown special value {v!r} (valid: {', '.join(SPECIALS)}; "
                                    "write $$ for a literal $)")
                return _BAD
            elif v in ("$now", "$today") and kind not in ("date", "datetime"):
                self.problem(where, f"{v} only applies to date and datetime fields, not to the {label}")
                return _BAD
            elif v in ("$me", "$my_team", "$my_teams") and kind not in ("int", "ref"):
                self.problem(where, f"{v} is an id and only applies to reference or integer fields, "
                                    f"not to the {label}")
                return _BAD
            elif v == "$my_teams" and op not in ("in", "not_in"):
                self.problem(where, "$my_teams is a list: use it with 'in' or 'not_in'")
                return _BAD
            else:
                return _Special(v)
        if op in ("contains", "startswith") and kind == "text" and not isinstance(v, str):
            self.problem(where, f"{op!r} needs text, got {v!r}")
            return _BAD
        try:
            return _coerce(kind, v)
        except _Bad as exc:
            self.problem(where, f"{label}: {exc}")
            return _BAD


_BAD = object()


def _walk_leaves(node: Any) -> list[_Leaf]:
    if isinstance(node, _Leaf):
        return [node]
    if isinstance(node, _Not):
        return _walk_leaves(node.child)
    return [leaf for child in node.children for leaf in _walk_leaves(child)]


# --------------------------------------------------------------------------------------------
# Resolving special values ($me, $now, ...) at run time
# --------------------------------------------------------------------------------------------


def _special(leaf: _Leaf, sp: _Special, params: Mapping[str, Any]) -> Any:
    """The value of a special for ``leaf``: a coerced value, a list ($my_teams) or _NOTHING."""
    name = sp.name[1:]
    if name == "now":
        raw: Any = params.get("now") or dt.datetime.now(_UTC)
    elif name == "today":
        raw = params.get("today") or dt.date.today()
    elif name not in params:
        raise ConditionError(f"{sp.name} needs params[{name!r}] (the actor's ids)", leaf.where)
    else:
        raw = params[name]
    try:
        if name == "my_teams":
            return [_coerce(leaf.kind, t) for t in (raw or ()) if t is not None]
        return _NOTHING if raw is None else _coerce(leaf.kind, raw)
    except _Bad as exc:
        raise ConditionError(f"{sp.name} = {raw!r} does not fit the {leaf.type} field {leaf.path}: {exc}",
                             leaf.where) from None


def _resolved(leaf: _Leaf, params: Mapping[str, Any]) -> Any:
    """The leaf's argument with specials replaced; for in/not_in a (has_null, values) pair."""
    arg = leaf.arg
    if leaf.op in ("in", "not_in"):
        items = _special(leaf, arg, params) if isinstance(arg, _Special) else arg
        values: list[Any] = []
        has_null = False
        flat: list[Any] = []
        for item in items:
            item = _special(leaf, item, params) if isinstance(item, _Special) else item
            if isinstance(item, list):  # $my_teams inside a list
                flat.extend(item)
            elif item is not _NOTHING:
                flat.append(item)
        for item in flat:
            if item is None:
                has_null = True
            elif item not in values:
                values.append(item)
        return has_null, values
    if leaf.op == "between":
        return tuple(_special(leaf, a, params) if isinstance(a, _Special) else a for a in arg)
    return _special(leaf, arg, params) if isinstance(arg, _Special) else arg


# --------------------------------------------------------------------------------------------
# Python evaluation
# --------------------------------------------------------------------------------------------


def _as_mapping(obj: Any) -> Mapping[str, Any] | None:
    if obj is None or isinstance(obj, Mapping):
        return obj
    return getattr(obj, "_mapping", None)  # a SQLAlchemy Row


class _Evaluator:
    def __init__(self, catalog: Catalog, fetch: Callable[[str, Any], Any] | None, params: Mapping[str, Any]):
        self.catalog = catalog
        self.fetch = fetch
        self.params = params
        self.cache: dict[tuple[str, Any], Any] = {}

    def lookup(self, leaf: _Leaf, record: Mapping[str, Any]) -> Any:
        current: Mapping[str, Any] | None = record
        last = len(leaf.steps) - 1
        for i, (_ent, fname) in enumerate(leaf.steps):
            if current is None:
                return None
            raw = current.get(fname)
            if i == last:
                return raw
            if raw is None or raw == "":
                return None
            if isinstance(raw, Mapping):  # the referenced record itself, already at hand
                current = raw
                continue
            target = leaf.steps[i + 1][0]
            rid = _record_value("ref", raw)
            if rid is None:
                return None
            if self.fetch is None:
                raise ConditionError(
                    f"evaluating {leaf.path!r} needs a fetch function to read {target} records", leaf.where)
            key = (target, rid)
            if key not in self.cache:
                self.cache[key] = _as_mapping(self.fetch(target, rid))
            current = self.cache[key]
        return None

    def run(self, node: Any, record: Mapping[str, Any]) -> bool:
        if isinstance(node, _Leaf):
            return self.leaf(node, record)
        if isinstance(node, _All):
            return all(self.run(c, record) for c in node.children)
        if isinstance(node, _Any):
            return any(self.run(c, record) for c in node.children)
        return not self.run(node.child, record)

    def leaf(self, leaf: _Leaf, record: Mapping[str, Any]) -> bool:
        kind, op = leaf.kind, leaf.op
        v = _record_value(kind, self.lookup(leaf, record))
        present = any(x is not None for x in v) if kind == "multi" else v is not None
        if op == "is_null":
            return (not present) == leaf.arg
        arg = _resolved(leaf, self.params)

        def equal(c: Any) -> bool:
            return c in v if kind == "multi" else v == c

        if op in ("eq", "ne"):
            hit = (not present) if arg is None else (present and arg is not _NOTHING and equal(arg))
            return hit if op == "eq" else not hit
        if op in ("in", "not_in"):
            has_null, values = arg
            hit = (has_null and not present) or (present and any(equal(c) for c in values))
            return hit if op == "in" else not hit
        if not present or arg is _NOTHING or (op == "between" and _NOTHING in arg):
            return False
        if op == "gt":
            return v > arg
        if op == "gte":
            return v >= arg
        if op == "lt":
            return v < arg
        if op == "lte":
            return v <= arg
        if op == "between":
            return arg[0] <= v <= arg[1]
        if kind == "multi":  # contains
            return arg in v
        if op == "contains":
            return _fold(arg) in _fold(v)
        return _fold(v).startswith(_fold(arg))  # startswith


# --------------------------------------------------------------------------------------------
# SQL compilation
# --------------------------------------------------------------------------------------------


class _Compiler:
    def __init__(self, entity: str, tables: Mapping[str, Any], params: Mapping[str, Any]):
        self.entity = entity
        self.tables = tables
        self.params = params

    def table(self, name: str, leaf: _Leaf) -> Any:
        try:
            return self.tables[name]
        except KeyError:
            message = f"no table for entity {name!r} (needed by {leaf.path!r})"
            raise ConditionError(message, leaf.where) from None

    def column(self, table: Any, name: str, leaf: _Leaf) -> Any:
        try:
            return table.c[name]
        except KeyError:
            raise ConditionError(f"table {table.name} has no column {name!r} (needed by {leaf.path!r})",
                                 leaf.where) from None

    def run(self, node: Any) -> sa.ColumnElement[bool]:
        if isinstance(node, _Leaf):
            return self.leaf(node)
        if isinstance(node, _All):
            return sa.and_(sa.true(), *(self.run(c) for c in node.children))
        if isinstance(node, _Any):
            return sa.or_(sa.false(), *(self.run(c) for c in node.children))
        return sa.not_(self.run(node.child))

    def at(self, leaf: _Leaf, pred: Callable[[Any], sa.ColumnElement[bool]]) -> sa.ColumnElement[bool]:
        """``pred`` applied to the leaf's column, through correlated EXISTS for a dotted path.

        ``pred`` must be FALSE for a NULL value: a missing reference then also gives FALSE.
        """
        return self._chain(self.table(self.entity, leaf), leaf.steps, leaf, pred)

    def _chain(self, table: Any, steps: tuple, leaf: _Leaf, pred: Callable) -> sa.ColumnElement[bool]:
        col = self.column(table, steps[0][1], leaf)
        if len(steps) == 1:
            return pred(col)
        # An alias per hop, so self-references (account.parent.name) cannot be confused.
        target = self.table(steps[1][0], leaf).alias()
        inner = self._chain(target, steps[1:], leaf, pred)
        sub = (sa.select(sa.literal_column("1")).select_from(target)
               .where(self.column(target, "id", leaf) == col, inner).correlate_except(target))
        return sub.exists()

    def leaf(self, leaf: _Leaf) -> sa.ColumnElement[bool]:
        kind, op = leaf.kind, leaf.op

        def present(c: Any) -> sa.ColumnElement[bool]:
            if kind == "multi":
                return _json_nonempty(c)
            if kind == "json":
                return _json_present(c)
            return c.is_not(None)

        if op == "is_null":
            exists = self.at(leaf, present)
            return sa.not_(exists) if leaf.arg else exists
        arg = _resolved(leaf, self.params)

        def equal(values: list[Any]) -> Callable[[Any], sa.ColumnElement[bool]]:
            def pred(c: Any) -> sa.ColumnElement[bool]:
                if kind == "multi":
                    return sa.or_(*(
                        _json_has(c, sa.literal(x, sa.String()), sa.literal(json.dumps(x), sa.String()))
                        for x in values))
                bound = [self.bind(c, x) for x in values]
                return sa.and_(c.is_not(None), c == bound[0] if len(bound) == 1 else c.in_(bound))
            return pred

        if op in ("eq", "ne"):
            if arg is None:
                hit = sa.not_(self.at(leaf, present))
            elif arg is _NOTHING:
                hit = sa.false()
            else:
                hit = self.at(leaf, equal([arg]))
            return hit if op == "eq" else sa.not_(hit)
        if op in ("in", "not_in"):
            has_null, values = arg
            parts = [self.at(leaf, equal(values))] if values else []
            if has_null:
                parts.append(sa.not_(self.at(leaf, present)))
            hit = sa.or_(sa.false(), *parts)
            return hit if op == "in" else sa.not_(hit)
        if arg is _NOTHING or (op == "between" and _NOTHING in arg):
            return sa.false()
        if kind == "multi":  # contains
            return self.at(leaf, equal([arg]))
        if op in ("contains", "startswith"):
            pattern = ("%" if op == "contains" else "") + _like_escape(_fold(arg)) + "%"
            return self.at(leaf, lambda c: sa.and_(
                c.is_not(None), _ascii_lower(c).like(sa.literal(pattern, sa.String()), escape="/")))

        def ordered(c: Any) -> sa.ColumnElement[bool]:
            lhs = _bytewise(c) if kind == "text" else c
            if op == "between":
                cmp = sa.and_(lhs >= self.bind(c, arg[0]), lhs <= self.bind(c, arg[1]))
            else:
                rhs = self.bind(c, arg)
                cmp = {"gt": lhs > rhs, "gte": lhs >= rhs, "lt": lhs < rhs, "lte": lhs <= rhs}[op]
            return sa.and_(c.is_not(None), cmp)

        return self.at(leaf, ordered)

    def bind(self, col: Any, value: Any) -> Any:
        """A bound parameter of the column's type (never literal SQL)."""
        if isinstance(value, dt.datetime) and getattr(col.type, "timezone", False):
            value = value.replace(tzinfo=_UTC)  # values are naive UTC here
        if isinstance(value, str) and not isinstance(col.type, sa.String):
            return sa.literal(value, sa.String())
        return sa.literal(value, col.type)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ParsedCondition:
    """A checked condition for one entity, ready to run many times (parse once, use often)."""

    entity: str
    catalog: Catalog
    root: Any
    source: Any

    def to_sql(self, tables: Mapping[str, Any],
               params: Mapping[str, Any] | None = None) -> sa.ColumnElement[bool]:
        """The WHERE clause over ``tables[self.entity]``; see :func:`to_sql`."""
        return _Compiler(self.entity, tables, params or {}).run(self.root)

    def evaluate(self, record: Mapping[str, Any],
                 fetch: Callable[[str, Any], Mapping[str, Any] | None] | None = None,
                 params: Mapping[str, Any] | None = None) -> bool:
        """Whether ``record`` meets the condition; see :func:`evaluate`."""
        rec = _as_mapping(record) or {}
        return _Evaluator(self.catalog, fetch, params or {}).run(self.root, rec)


def _entity_name(entity: Entity | str) -> str:
    return entity if isinstance(entity, str) else entity.name


def _parse(condition: Any, entity: str, catalog: Catalog) -> tuple[Any, list[tuple[tuple, str]]]:
    if entity not in catalog:
        return None, [((), f"unknown entity {entity!r}")]
    parser = _Parser(entity, catalog)
    root = parser.node(condition, ())
    return root, parser.problems


def parse(condition: Any, entity: Entity | str, catalog: Catalog) -> ParsedCondition:
    """Check ``condition`` against ``entity`` and return its parsed form; ConditionError if invalid."""
    name = _entity_name(entity)
    if isinstance(condition, ParsedCondition):
        if condition.entity != name:
            raise ConditionError(f"condition was parsed for {condition.entity}, not {name}")
        return condition
    root, problems = _parse(condition, name, catalog)
    if problems:
        path, message = problems[0]
        raise ConditionError(message, path, problems)
    return ParsedCondition(name, catalog, root, condition)


def check(condition: Any, entity: Entity | str, catalog: Catalog) -> list[tuple[tuple, str]]:
    """All problems of ``condition`` for ``entity``: unknown fields (naming field and entity),
    unknown operators (listing the valid ones), operators that do not fit the field's type, wrong
    value shapes (``in`` needs a list, ``between`` two values, ``is_null`` a bool), values that
    do not fit the field's type, paths through non-references, unknown ``$`` specials.

    Returns (path inside the condition, message) pairs; an empty list means valid.
    """
    if isinstance(condition, ParsedCondition):
        return []
    return _parse(condition, _entity_name(entity), catalog)[1]


def to_sql(
    condition: Any,
    entity: Entity | str,
    catalog: Catalog,
    tables: Mapping[str, Any],
    params: Mapping[str, Any] | None = None,
) -> sa.ColumnElement[bool]:
    """Compile ``condition`` to a WHERE clause over ``tables[entity]`` (SQLite and PostgreSQL).

    ``tables`` maps entity names to Core tables (or aliases) whose columns are named after the
    fields; dotted paths become correlated EXISTS subqueries on aliases of the target tables.
    ``params`` supplies ``me``, ``my_team``, ``my_teams`` and optionally ``now``/``today``.
    Raises ConditionError on invalid input or a missing table, column or param.
    """
    return parse(condition, entity, catalog).to_sql(tables, params)


def evaluate(
    condition: Any,
    record: Mapping[str, Any],
    entity: Entity | str,
    catalog: Catalog,
    fetch: Callable[[str, Any], Mapping[str, Any] | None] | None = None,
    params: Mapping[str, Any] | None = None,
) -> bool:
    """Evaluate ``condition`` on ``record`` in Python, with exactly the SQL semantics.

    Missing keys count as NULL, "" as NULL for non-text fields. For a dotted path the reference
    value may be the referenced record itself (a mapping); otherwise ``fetch(entity_name, id)``
    returns it (None if missing) and is required. Fetches are cached for the call.
    """
    return parse(condition, entity, catalog).evaluate(record, fetch, params)


def fields_used(condition: Any) -> set[str]:
    """The field paths a condition reads, as written (``status``, ``account.industry``).

    Purely syntactic (no catalog needed) and tolerant of invalid input; for dependencies on the
    record's own fields take ``path.split(".")[0]``.
    """
    if isinstance(condition, ParsedCondition):
        return {leaf.path for leaf in _walk_leaves(condition.root)}
    out: set[str] = set()
    if isinstance(condition, Mapping):
        for key, value in condition.items():
            if key in ("all", "any") and isinstance(value, list | tuple):
                for c in value:
                    out |= fields_used(c)
            elif key == "not":
                out |= fields_used(value)
            elif isinstance(key, str):
                out.add(key)
    return out
