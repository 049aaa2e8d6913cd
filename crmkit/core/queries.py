"""List queries: filter, sort, search, keyset pagination and a capped count.

Built for a million rows: pages are found by keyset (``WHERE (sort, id) > (:last)``) instead of
OFFSET, only the needed columns are selected, the count stops at a cap, and search is a trigram
index lookup (FTS5 on SQLite, pg_trgm on PostgreSQL) over the normalised ``search_text``.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from crmkit.core import conditions, text
from crmkit.core.catalog import Catalog, Entity
from crmkit.core.errors import BadRequest
from crmkit.core.tables import SEARCH_COLUMN, fts_table_name

COUNT_CAP = 10_000
MAX_LIMIT = 500
# Columns that can never be NULL: their keyset needs no NULL handling.
NOT_NULL = {"id", "created_at", "updated_at", "version"}


@dataclass(frozen=True)
class SortKey:
    field: str
    desc: bool


@dataclass
class Page:
    """One page of a list: ``count`` is exact up to COUNT_CAP, then ``count_capped`` is True."""

    items: list[dict[str, Any]]
    next_cursor: str | None
    count: int | None = None
    count_capped: bool = False

    @property
    def count_label(self) -> str:
        if self.count is None:
            return ""
        return f"{self.count:,}+" if self.count_capped else f"{self.count:,}"

    def count_json(self) -> int | str | None:
        """The count as the API shows it: a number, or ``"10000+"`` past the cap."""
        if self.count is None:
            return None
        return f"{self.count}+" if self.count_capped else self.count


@dataclass
class ColumnPage:
    """One page of a list stored by column, for readers that touch every row (export).

    ``columns[i]`` holds the value of field ``names[i]`` for each of the page's ``size`` rows, as
    :class:`Page` items would show it (same hidden fields, masks and UTC datetimes). Reading by
    column skips building a dict per row and lets a caller handle a whole column in one pass.
    """

    names: tuple[str, ...]
    columns: list[Sequence[Any]]
    size: int
    next_cursor: str | None

    def column(self, name: str) -> Sequence[Any]:
        """The values of field ``name``; all None when the page does not hold it (a hidden field)."""
        try:
            return self.columns[self.names.index(name)]
        except ValueError:
            return (None,) * self.size


def parse_sort(entity: Entity, sort: str | Sequence[str] | None) -> list[SortKey]:
    """``"-close_date,name"`` -> sort keys, always ending with ``id`` for a stable order."""
    if sort is None or sort == "" or sort == []:
        items = list(entity.list.sort)
    elif isinstance(sort, str):
        items = [s.strip() for s in sort.split(",") if s.strip()]
    else:
        items = list(sort)
    keys: list[SortKey] = []
    for item in items:
        desc = item.startswith("-")
        name = item.lstrip("-+")
        f = entity.fields.get(name)
        if f is None:
            raise BadRequest(f"cannot sort by {name!r}: {entity.name} has no such field")
        if not f.sortable:
            raise BadRequest(f"cannot sort by {name!r} (a {f.type} field)")
        if any(k.field == name for k in keys):
            continue
        keys.append(SortKey(name, desc))
    if not any(k.field == "id" for k in keys):
        keys.append(SortKey("id", keys[-1].desc if keys else True))
    else:  # nothing after id matters: id is unique
        keys = keys[: [k.field for k in keys].index("id") + 1]
    return keys


def _encode_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return {"dt": value.isoformat()}
    if isinstance(value, dt.date):
        return {"d": value.isoformat()}
    if isinstance(value, decimal.Decimal):
        return {"n": str(value)}
    return value


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        if "dt" in value:
            return dt.datetime.fromisoformat(value["dt"])
        if "d" in value:
            return dt.date.fromisoformat(value["d"])
        if "n" in value:
            return decimal.Decimal(value["n"])
        raise ValueError("bad cursor value")
    if isinstance(value, list):
        raise ValueError("bad cursor value")
    return value


def encode_cursor(keys: list[SortKey], row: dict[str, Any]) -> str:
    """An opaque cursor: the last row's sort values (url-safe base64 JSON)."""
    payload = [[k.field, _encode_value(row.get(k.field))] for k in keys]
    return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(keys: list[SortKey], cursor: str) -> list[Any]:
    """The sort values inside a cursor; BadRequest when it was tampered with or the sort changed."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload = json.loads(raw)
        if [p[0] for p in payload] != [k.field for k in keys]:
            raise ValueError("sort changed")
        return [_decode_value(p[1]) for p in payload]
    except (ValueError, TypeError, IndexError, KeyError, json.JSONDecodeError):
        raise BadRequest("invalid cursor (it belongs to another sort, or was changed)") from None


def keyset_condition(
    table: sa.Table, keys: list[SortKey], values: list[Any], nulls_high: bool
) -> sa.ColumnElement[bool]:
    """Rows strictly after ``values`` in the order given by ``keys``.

    ``nulls_high`` says where the database sorts NULLs (PostgreSQL: after every value in
    ascending order; SQLite: before). Where no key column can be NULL, this is a plain row-value
    comparison that both databases answer with one index range scan.

    The values are bound parameters named ``cursor_0``, ``cursor_1``…, so a statement built for one
    cursor runs for any other cursor with the same NULL pattern (``cursor_params``).
    """

    def bind(i: int, key: SortKey) -> sa.BindParameter:
        return sa.bindparam(f"cursor_{i}", values[i], type_=table.c[key.field].type)

    if all(k.field in NOT_NULL for k in keys) and len({k.desc for k in keys}) == 1:
        cols = sa.tuple_(*[table.c[k.field] for k in keys])
        vals = sa.tuple_(*[bind(i, k) for i, k in enumerate(keys)])
        return cols < vals if keys[0].desc else cols > vals
    ors = []
    for i, key in enumerate(keys):
        eqs = [_equal(table.c[k.field], values[j], bind(j, k)) for j, k in enumerate(keys[:i])]
        ors.append(sa.and_(*eqs, _after(table.c[key.field], values[i], bind(i, key), key.desc, nulls_high)))
    return sa.or_(*ors)


def cursor_params(values: list[Any]) -> dict[str, Any]:
    """Execution parameters for a statement made by :func:`keyset_condition` (None values are not bound)."""
    return {f"cursor_{i}": v for i, v in enumerate(values) if v is not None}


def _equal(col: sa.ColumnElement, value: Any, param: sa.BindParameter) -> sa.ColumnElement[bool]:
    return col.is_(None) if value is None else col == param


def _after(
    col: sa.ColumnElement, value: Any, param: sa.BindParameter, desc: bool, nulls_high: bool
) -> sa.ColumnElement[bool]:
    """``col`` comes strictly after ``value`` in this key's direction."""
    # Effective direction on the "NULL is the greatest value" scale.
    greater = not desc
    null_last = nulls_high == greater  # NULLs come after every value in this direction
    if value is None:
        return sa.false() if null_last else col.is_not(None)
    beyond = col > param if greater else col < param
    return sa.or_(beyond, col.is_(None)) if null_last else beyond


def order_by(table: sa.Table, keys: list[SortKey]) -> list[sa.ColumnElement]:
    return [table.c[k.field].desc() if k.desc else table.c[k.field].asc() for k in keys]


def search_condition(conn: sa.Connection, entity: Entity, table: sa.Table, q: str) -> sa.ColumnElement[bool]:
    """Every word of ``q`` must appear in the record's normalised search text.

    Words of three or more characters use the trigram index; shorter ones fall back to LIKE
    (a trigram index cannot answer them), still on the normalised text.

    The words are bound parameters named as in :func:`search_terms`, holding this ``q``'s values:
    a statement built for one query runs for any other of the same shape when given that query's
    parameters.
    """
    if SEARCH_COLUMN not in table.c:
        raise BadRequest(f"{entity.name} has no searchable fields")
    shape, params = search_terms(conn.dialect.name, q)
    variants = []
    # Each folded form of the query (plain, and company-name folded so "(株)テスト" finds
    # "テスト株式会社") is tried; within a form, every word must match.
    for v, kinds in enumerate(shape):
        names = [_search_param(v, w) for w in range(len(kinds))]
        variants.append(sa.and_(*[
            _word_condition(entity, table, name, params[name], fts) for name, fts in zip(names, kinds, strict=True)
        ]))
    return sa.or_(*variants) if variants else sa.true()


def search_terms(dialect: str, q: str) -> tuple[tuple[tuple[bool, ...], ...], dict[str, str]]:
    """The shape of the search for ``q`` on ``dialect`` and the values of its parameters.

    The shape has one entry per non-empty folded form of ``q`` and, in it, one flag per word:
    True for a trigram full-text match (SQLite, three or more characters), False for LIKE.
    Queries with the same shape give the same statement from :func:`search_condition`; only the
    values (``crmkit_q<form>_<word>``: the FTS phrase or the LIKE pattern) differ.
    """
    shape: list[tuple[bool, ...]] = []
    params: dict[str, str] = {}
    forms = ([w for w in form.split(" ") if w] for form in text.query_variants(q))
    for v, words in enumerate(f for f in forms if f):
        kinds = []
        for w, word in enumerate(words):
            fts = dialect == "sqlite" and len(word) >= 3
            kinds.append(fts)
            params[_search_param(v, w)] = '"' + word.replace('"', '""') + '"' if fts else "%" + _escape_like(word) + "%"
        shape.append(tuple(kinds))
    return tuple(shape), params


def _search_param(variant: int, word: int) -> str:
    return f"crmkit_q{variant}_{word}"


def _word_condition(entity: Entity, table: sa.Table, name: str, value: str, fts: bool) -> sa.ColumnElement[bool]:
    param = sa.bindparam(name, value, type_=sa.String())
    if fts:
        fts_name = fts_table_name(entity.name)
        fts_table = sa.table(fts_name, sa.column("rowid"))
        match = sa.text(f'"{fts_name}" MATCH :{name}').bindparams(param)
        return table.c.id.in_(sa.select(fts_table.c.rowid).where(match))
    return table.c[SEARCH_COLUMN].like(param, escape="\\")


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def capped_count(conn: sa.Connection, table: sa.Table, where: sa.ColumnElement[bool]) -> tuple[int, bool]:
    """Count matching rows, but stop at COUNT_CAP: ``(count, capped)``."""
    return count_result(conn.execute(capped_count_statement(table, where)).scalar_one())


def capped_count_statement(table: sa.Table, where: sa.ColumnElement[bool]) -> sa.Select:
    """``SELECT count(*)`` over at most COUNT_CAP + 1 matching rows (never a full-table count)."""
    inner = sa.select(sa.literal(1)).select_from(table).where(where).limit(COUNT_CAP + 1).subquery()
    return sa.select(sa.func.count()).select_from(inner)


def count_result(n: int) -> tuple[int, bool]:
    """``(count, capped)`` from the result of :func:`capped_count_statement`."""
    return (COUNT_CAP, True) if n > COUNT_CAP else (n, False)


def build_where(
    conn: sa.Connection,
    catalog: Catalog,
    tables: dict[str, sa.Table],
    entity: Entity,
    filter: Any,
    q: str | None,
    restrictions: list[Any],
    params: dict[str, Any],
) -> sa.ColumnElement[bool]:
    """The WHERE clause of a list: the user's filter, search and every permission restriction."""
    table = tables[entity.name]
    clauses: list[sa.ColumnElement[bool]] = []
    if isinstance(filter, str) and filter.strip():
        try:
            filter = json.loads(filter)
        except json.JSONDecodeError as exc:
            raise BadRequest(f"filter is not valid JSON: {exc.msg}") from None
    if filter:
        if not isinstance(filter, dict):
            raise BadRequest("filter must be a JSON object (a condition)")
        problems = conditions.check(filter, entity, catalog)
        if problems:
            raise BadRequest("invalid filter: " + "; ".join(m for _p, m in problems))
        clauses.append(conditions.to_sql(filter, entity.name, catalog, tables, params))
    for cond in restrictions:
        if cond is not None:
            clauses.append(conditions.to_sql(cond, entity.name, catalog, tables, params))
    if q and q.strip():
        clauses.append(search_condition(conn, entity, table, q))
    return sa.and_(*clauses) if clauses else sa.true()
