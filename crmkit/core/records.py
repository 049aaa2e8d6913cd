"""RecordStore: the one path every read and write of a record goes through.

A write is one transaction: coerce and validate -> ``validate_record`` -> ``before_save`` ->
write -> ``after_save`` -> audit; events reach ``track_event`` only after the commit. Admin, API,
import, export and plugins all use this class, so they all give the same answers.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from crmkit.core import compute, conditions, permissions, queries, text
from crmkit.core.actors import SYSTEM, Actor
from crmkit.core.audit import AUDIT_TABLE, audited_fields, changes, encode, snapshot
from crmkit.core.audit import entries as audit_entries
from crmkit.core.catalog import Entity, Field
from crmkit.core.db import ReadConnections, write_connection
from crmkit.core.errors import BadRequest, ConflictError, NotFound, PermissionDenied, ValidationError
from crmkit.core.events import Event, dispatch
from crmkit.core.fieldtypes import InvalidValue
from crmkit.core.queries import Page
from crmkit.core.tables import SEARCH_COLUMN
from crmkit.plugins import PluginError, call_each

if TYPE_CHECKING:
    from crmkit.app import CRM

SYSTEM_WRITABLE = ("owner", "team")  # system columns a user may set (if permitted)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _as_utc(value: Any) -> Any:
    # SQLite hands back naive datetimes; everything crmkit stores is UTC.
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


class Tx:
    """Writes and reads inside one transaction (``RecordStore.transaction``).

    Multi-record workflows (lead conversion, merges, imports) use it so that all of their
    writes commit together or not at all; events are delivered after the commit.
    """

    def __init__(self, store: RecordStore, conn: sa.Connection, actor: Actor, source: str):
        self.store, self.conn, self.actor, self.source = store, conn, actor, source
        self.events: list[Event] = []

    def create(self, entity: str, values: Mapping[str, Any], *, actor: Actor | None = None) -> dict[str, Any]:
        """Create a record in this transaction (see :meth:`RecordStore.create`)."""
        return self.store._create(self, entity, values, actor or self.actor)

    def update(
        self, entity: str, id: int, values: Mapping[str, Any], *, version: int | None = None,
        actor: Actor | None = None,
    ) -> dict[str, Any]:
        """Update a record in this transaction (see :meth:`RecordStore.update`)."""
        return self.store._update(self, entity, id, values, version, actor or self.actor)

    def delete(self, entity: str, id: int, *, version: int | None = None, actor: Actor | None = None) -> None:
        """Delete a record in this transaction."""
        self.store._delete(self, entity, id, version, actor or self.actor)

    def get(self, entity: str, id: int, *, actor: Actor | None = None) -> dict[str, Any]:
        """Read a record as this transaction sees it."""
        return self.store._get(self.conn, entity, id, actor or self.actor)

    def create_many(
        self, entity: str, rows: list[Mapping[str, Any]], *, actor: Actor | None = None, present: bool = True
    ) -> list[Any]:
        """Create many records (imports): the ``create`` path with batched queries.

        Returns one outcome per row, in order: the created record, or the
        :class:`ValidationError` that kept that row out (nothing of it is written).
        See :mod:`crmkit.core.bulk`.
        """
        from crmkit.core.bulk import create_many

        return create_many(self, entity, rows, actor or self.actor, present=present)


def _as_utc_column(values: Sequence[Any]) -> Sequence[Any]:
    """:func:`_as_utc` of every value, converting each distinct value once (rows share timestamps)."""
    distinct = dict.fromkeys(values)
    naive = [isinstance(v, dt.datetime) and v.tzinfo is None for v in distinct if v is not None]
    if not any(naive):
        return values
    if not all(naive):  # mixed: equal aware values must keep their own zones, so one by one
        return [_as_utc(v) for v in values]
    return list(map({v: _as_utc(v) for v in distinct}.__getitem__, values))


def _title_text(id: int, title: Any) -> str:
    """A record's display title; ``#id`` when the title field is empty."""
    return str(title) if title not in (None, "") else f"#{id}"


def _shape_key(plan: _ListPlan, *parts: Any) -> tuple[Any, ...] | None:
    """A hashable key for a list query's statements; None when it must not be kept.

    Not kept: parts that do not serialise, and conditions using ``$now``/``$today``, whose value
    is bound when the statement is built.
    """
    if not plan.kept:
        return None
    try:
        text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        return None
    if '"$now"' in text or '"$today"' in text:
        return None
    return (id(plan), text)


@dataclass(frozen=True)
class _ListPlan:
    keys: tuple[queries.SortKey, ...]
    names: tuple[str, ...]
    select: sa.Select
    many: tuple[Field, ...]
    present: Any  # row -> dict as the role may see it
    kept: bool = True  # False: not in the plan cache, so its id() may be reused (no statement caching)


@dataclass(frozen=True)
class _RowReader:
    """The statements reading one record of an entity by id (``crmkit_id``), built once.

    Building and hashing a fresh ``select(...).where(id == ...)`` costs several times what SQLite
    needs to run it; a kept statement with a bound id is found in SQLAlchemy's compiled cache
    without either, and its result columns need no adapting to a new statement.
    """

    names: tuple[str, ...]  # every column but the search text, in table order
    select: sa.Select
    locked: sa.Select  # the same, FOR UPDATE (PostgreSQL writes)
    many: tuple[Field, ...]  # many-to-many fields: their links are read afterwards


class RecordStore:
    """Create, update, delete, get and list records of any catalog entity."""

    def __init__(self, crm: CRM):
        self.crm = crm
        self.catalog = crm.catalog
        self.tables = crm.schema.tables
        self.audit_table = crm.system_tables[AUDIT_TABLE]
        self._open: dict[int, Tx] = {}  # id(connection) -> its open transaction (see tx_for)
        # Built list queries by shape (see list()):
        self._list_plans: dict[tuple[Any, ...], _ListPlan] = {}
        self._list_statements: dict[tuple[Any, ...], tuple[sa.Select, sa.Select | None]] = {}
        self._field_access: dict[tuple[Any, ...], dict[str, str]] = {}
        # Single-record and title reads by entity, link reads by (entity, field): see _RowReader.
        self._row_readers: dict[str, _RowReader] = {}
        self._title_statements: dict[str, sa.Select] = {}
        self._link_statements: dict[tuple[str, str], tuple[sa.Select, tuple[str, ...]]] = {}
        self._hidden: dict[tuple[Any, ...], tuple[frozenset[str], frozenset[str]]] = {}
        self._parsed: dict[tuple[str, Any], conditions.ParsedCondition] = {}  # see _parse
        self.reads = ReadConnections(crm.engine)
        # Entities whose search text includes a path through a reference to the key entity:
        # renaming an account must refresh its contacts' search text.
        self._search_dependents: dict[str, list[tuple[str, str]]] = {}
        for e in self.catalog:
            for path in e.search_paths:
                if "." in path:
                    ref = path.split(".")[0]
                    target = e.field(ref).to
                    if target and (e.name, ref) not in self._search_dependents.get(target, []):
                        self._search_dependents.setdefault(target, []).append((e.name, ref))

    # ------------------------------------------------------------------------------------------
    # Public API
    # ------------------------------------------------------------------------------------------
    @contextmanager
    def transaction(self, *, actor: Actor = SYSTEM, source: str = "api") -> Iterator[Tx]:
        """One transaction for several writes; events fire after it commits."""
        with write_connection(self.crm.engine) as conn:
            tx = Tx(self, conn, actor, source)
            self._open[id(conn)] = tx
            try:
                with conn.begin():
                    yield tx
            finally:
                self._open.pop(id(conn), None)
        dispatch(self.crm, tx.events)

    def tx_for(self, conn: sa.Connection) -> Tx:
        """The open transaction that ``conn`` (as passed to the record hooks) belongs to.

        ``after_save`` and friends create or update related records through it (a reviewer's
        follow-up task, a recurring task's next occurrence), so those writes are validated,
        audited and committed or rolled back with the write that triggered them, and their
        events fire after the same commit.
        """
        tx = self._open.get(id(conn))
        if tx is None or tx.conn is not conn:
            raise RuntimeError("this connection has no open crmkit transaction")
        return tx

    @contextmanager
    def joined(self, conn: sa.Connection, *, actor: Actor = SYSTEM, source: str = "system") -> Iterator[Tx]:
        """A :class:`Tx` over a transaction its caller owns and commits (a job handler's ``conn``).

        Record writes through it (and through ``tx_for(conn)``) join that transaction; the owner
        dispatches ``tx.events`` after committing it, as the job worker does.
        """
        tx = Tx(self, conn, actor, source)
        self._open[id(conn)] = tx
        try:
            yield tx
        finally:
            self._open.pop(id(conn), None)

    def create(self, entity: str, values: Mapping[str, Any], *, actor: Actor, source: str = "api") -> dict[str, Any]:
        """Validate and insert a record; returns it as stored (with id and version 1)."""
        with self.transaction(actor=actor, source=source) as tx:
            return tx.create(entity, values)

    def create_many(
        self, entity: str, rows: list[Mapping[str, Any]], *, actor: Actor, source: str = "import"
    ) -> list[Any]:
        """Create many records in one transaction; valid rows are created, see :meth:`Tx.create_many`."""
        with self.transaction(actor=actor, source=source) as tx:
            return tx.create_many(entity, rows)

    def update(
        self, entity: str, id: int, values: Mapping[str, Any], *, actor: Actor, version: int | None = None,
        source: str = "api",
    ) -> dict[str, Any]:
        """Change some fields of a record. A ``version`` other than the stored one is a conflict."""
        with self.transaction(actor=actor, source=source) as tx:
            return tx.update(entity, id, values, version=version)

    def delete(self, entity: str, id: int, *, actor: Actor, version: int | None = None, source: str = "api") -> None:
        """Delete a record (references decide: restrict refuses, cascade deletes, set_null clears)."""
        with self.transaction(actor=actor, source=source) as tx:
            tx.delete(entity, id, version=version)

    def get(self, entity: str, id: int, *, actor: Actor) -> dict[str, Any]:
        """One record as the actor may see it; NotFound when missing or outside their scope."""
        ent = self._entity(entity)
        self._require(actor, "read", ent, None)
        record_id = _int_id(id)
        conds = self._read_conditions(ent, actor)
        if self._row_reader(ent).many or _reads_references(conds):
            # Several statements (the record's links, or records its scope reaches through a
            # reference): one snapshot for all of them.
            with self.crm.engine.connect() as conn:
                return self._get_visible(conn, ent, id, record_id, actor, conds)
        # One SELECT: no BEGIN/ROLLBACK around it (on SQLite they cost as much as the read).
        with self.reads.connect() as conn:
            return self._get_visible(conn, ent, id, record_id, actor, conds)

    def list(
        self,
        entity: str,
        *,
        actor: Actor,
        filter: Any = None,
        q: str | None = None,
        sort: str | list[str] | None = None,
        cursor: str | None = None,
        limit: int | None = None,
        columns: Iterable[str] | None = None,
        with_count: bool = True,
        action: str = "read",
    ) -> Page:
        """A page of records: filtered, searched, sorted, keyset-paginated, permission-restricted."""
        ent = self._entity(entity)
        self._require(actor, action, ent, None)
        plan = self._list_plan(ent, actor, sort, columns)
        # The page and its count are one statement, so no snapshot across statements is needed.
        with self.reads.connect() as conn:
            raw, next_cursor, count, capped = self._list_rows(
                conn, ent, plan, actor, filter, q, cursor, limit, with_count, action
            )
            rows = [plan.present(row) for row in raw]
            if plan.many:
                self._attach_many(conn, ent, rows, list(plan.many))
        return Page(rows, next_cursor, count, capped)

    def list_by_column(
        self,
        entity: str,
        *,
        actor: Actor,
        filter: Any = None,
        q: str | None = None,
        sort: str | list[str] | None = None,
        cursor: str | None = None,
        limit: int | None = None,
        columns: Iterable[str] | None = None,
        action: str = "read",
    ) -> queries.ColumnPage:
        """The page :meth:`list` would return (without a count), stored by column.

        Same query, permission check, scope, ``restrict_query`` hooks, cursor, hidden fields
        (left out), masks and UTC datetimes; for callers that go through every row of a large
        list, such as export, where building one dict per row costs more than reading it.
        """
        ent = self._entity(entity)
        self._require(actor, action, ent, None)
        plan = self._list_plan(ent, actor, sort, columns)
        access = self.field_access(actor, ent.name)
        table = self.tables[ent.name]
        with self.reads.connect() as conn:
            raw, next_cursor, _count, _capped = self._list_rows(
                conn, ent, plan, actor, filter, q, cursor, limit, False, action
            )
            stored = list(zip(*raw, strict=True)) if raw else [()] * len(plan.names)
            names: list[str] = []
            out: list[Sequence[Any]] = []
            for name, values in zip(plan.names, stored):  # noqa: B905
                level = access.get(name, "read")
                if level in ("none", "write-only") or name == SEARCH_COLUMN:
                    continue  # selected only as a sort key: never shown
                if level == "mask":
                    values = [permissions.mask_value(v) for v in values]
                elif isinstance(table.c[name].type, sa.DateTime):
                    values = _as_utc_column(values)
                names.append(name)
                out.append(values)
            if plan.many:
                ids = stored[plan.names.index("id")]
                for f in plan.many:
                    by_source = self._many_values(conn, ent, ids, f)
                    names.append(f.name)
                    out.append([by_source.get(i, []) for i in ids])
        return queries.ColumnPage(tuple(names), out, len(raw), next_cursor)

    def _list_rows(
        self, conn: sa.Connection, ent: Entity, plan: _ListPlan, actor: Actor, filter: Any, q: str | None,
        cursor: str | None, limit: int | None, with_count: bool, action: str,
    ) -> tuple[Sequence[Any], str | None, int | None, bool]:
        """The stored rows of one list page (columns ``plan.names``), the next cursor and the count."""
        table = self.tables[ent.name]
        limit = max(1, min(int(limit or ent.list.page_size), queries.MAX_LIMIT))
        keys = list(plan.keys)
        restrictions = self.restrictions(actor, ent, action)
        values = queries.decode_cursor(keys, cursor) if cursor else None
        # A list page runs two small indexed queries; building and hashing their SQLAlchemy
        # statements costs more than running them, so each query shape is built once. The search
        # words are bound parameters: every query with the same words-per-form shares one shape
        # (autocomplete sends a new query on each keystroke).
        search, search_params = (
            queries.search_terms(conn.dialect.name, q) if q and q.strip() else (None, {})
        )
        shape = _shape_key(plan, conn.dialect.name, filter, search, restrictions, actor.params(), limit,
                           with_count, None if values is None else tuple(v is None for v in values))
        stmts = self._list_statements.get(shape) if shape is not None else None
        if stmts is None:
            where = queries.build_where(
                conn, self.catalog, self.tables, ent, filter, q, restrictions, actor.params()
            )
            page_where = where
            if values is not None:
                nulls_high = conn.dialect.name != "sqlite"
                page_where = sa.and_(where, queries.keyset_condition(table, keys, values, nulls_high))
            count_stmt = queries.capped_count_statement(table, where) if with_count else None
            page_stmt = plan.select.where(page_where).limit(limit + 1)
            if count_stmt is not None:
                # The count rides along as an uncorrelated scalar subquery: both databases run it
                # once per statement, and the page costs one round trip instead of two.
                page_stmt = page_stmt.add_columns(count_stmt.scalar_subquery().label("crmkit_count"))
            stmts = (page_stmt, count_stmt)
            if shape is not None:
                if len(self._list_statements) >= 1024:  # many distinct searches: start afresh
                    self._list_statements.clear()
                self._list_statements[shape] = stmts
        params = {**search_params, **queries.cursor_params(values)} if values is not None else search_params
        raw = conn.execute(stmts[0], params).fetchall()
        count, capped = None, False
        if with_count:  # no rows: ask on its own
            n = raw[0][-1] if raw else conn.execute(stmts[1], search_params).scalar_one()
            count, capped = queries.count_result(n)  # (the presenter ignores that extra column)
        has_more = len(raw) > limit
        raw = raw[:limit]
        # The cursor comes from the stored values, not from what a masked column shows.
        next_cursor = (
            queries.encode_cursor(keys, dict(zip(plan.names, raw[-1]))) if has_more and raw else None  # noqa: B905
        )
        return raw, next_cursor, count, capped

    def titles(self, entity: str, ids: Iterable[int]) -> dict[int, str]:
        """Display titles for record ids, in one query (reference columns, breadcrumbs)."""
        ids = {int(i) for i in ids if i is not None}
        if not ids:
            return {}
        ent = self._entity(entity)
        stmt = self._title_statements.get(entity)
        if stmt is None:  # built once per entity (see _RowReader), the ids bound per call
            table = self.tables[entity]
            title_col = table.c[ent.title_field] if ent.title_field in table.c else table.c.id
            stmt = self._title_statements[entity] = sa.select(table.c.id, title_col).where(
                table.c.id.in_(sa.bindparam("crmkit_ids", expanding=True))
            )
        with self.reads.connect() as conn:
            rows = conn.execute(stmt, {"crmkit_ids": sorted(ids)})
            return {row[0]: _title_text(row[0], row[1]) for row in rows}

    def search_titles(self, entity: str, q: str, *, actor: Actor, limit: int = 10) -> list[tuple[int, str]]:
        """Records matching ``q`` as (id, title) pairs, for reference autocomplete."""
        ent = self._entity(entity)
        if queries.SEARCH_COLUMN not in self.tables[entity].c:
            flt = {ent.title_field: {"contains": q}} if q and ent.title_field != "id" else None
            page = self.list(entity, actor=actor, filter=flt, limit=limit, with_count=False,
                             columns=[ent.title_field])
        else:
            page = self.list(entity, actor=actor, q=q or None, limit=limit, with_count=False,
                             columns=[ent.title_field])
        if ent.title_field in self.tables[entity].c:  # the list already read the title column
            return [(r["id"], _title_text(r["id"], r.get(ent.title_field))) for r in page.items]
        titles = self.titles(entity, [r["id"] for r in page.items])
        return [(r["id"], titles.get(r["id"], f"#{r['id']}")) for r in page.items]

    def history(self, entity: str, id: int, *, actor: Actor) -> list[dict[str, Any]]:
        """Field-level history of a record, oldest first (masked fields stay masked)."""
        self.get(entity, id, actor=actor)  # permission check: no history of records you can't see
        access = self.field_access(actor, entity)
        t = self.audit_table
        with self.crm.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t).where(t.c.entity == entity, t.c.record_id == id).order_by(t.c.id)
            ).mappings().all()
        return audit_entries(rows, access)

    def can(self, actor: Actor, action: str, entity: str, record: Mapping[str, Any] | None = None) -> bool:
        """Whether ``actor`` may do ``action`` on the entity (or on this record)."""
        ent = self._entity(entity)
        try:
            self._require(actor, action, ent, dict(record) if record is not None else None)
        except PermissionDenied:
            return False
        return True

    def field_access(self, actor: Actor, entity: str) -> dict[str, str]:
        """Field -> write | read | mask | none (and write-only for passwords an admin may set)."""
        # It depends on the role only (and whether the actor is the system or an admin): keep it.
        key = (entity, actor.role, actor.system, actor.is_admin)
        access = self._field_access.get(key)
        if access is None:
            access = self._field_access[key] = permissions.field_access(self._entity(entity), actor)
        return dict(access)

    def restrictions(self, actor: Actor, entity: Entity, action: str = "read") -> list[Any]:
        """Conditions AND-ed into every query of this actor (role scope + ``restrict_query`` hooks)."""
        out: list[Any] = []
        if action != "read":
            out.append(permissions.scope_condition(entity, actor, action))
        for _plugin, cond in call_each(self.crm.pm, "restrict_query", crm=self.crm, entity=entity.name, actor=actor):
            out.append(cond)
        return [c for c in out if c is not None]

    # ------------------------------------------------------------------------------------------
    # Internals: reading
    # ------------------------------------------------------------------------------------------
    def _entity(self, name: str) -> Entity:
        if name not in self.catalog:
            raise NotFound(f"no entity {name!r}")
        return self.catalog[name]

    def _require(self, actor: Actor, action: str, ent: Entity, record: dict[str, Any] | None) -> None:
        for _plugin, allowed in call_each(
            self.crm.pm, "permission_allowed", crm=self.crm, actor=actor, action=action, entity=ent.name,
            record=record,
        ):
            if allowed is False:
                what = f"{action} this {ent.text(actor.locale)}" if record else f"{action} {ent.name} records"
                raise PermissionDenied(f"you may not {what}")

    def _columns(self, ent: Entity, columns: Iterable[str] | None, access: dict[str, str],
                 keys: list[queries.SortKey]) -> list[str]:
        table = self.tables[ent.name]
        if columns is None:
            names = [f for f in ent.fields if f != SEARCH_COLUMN]
        else:
            names = ["id", "version"] + [c for c in columns if c not in ("id", "version")]
        names += [k.field for k in keys if k.field not in names]
        out = []
        for name in names:
            if name not in ent.fields:
                raise BadRequest(f"{ent.name} has no field {name!r}")
            f = ent.fields[name]
            if access.get(name) in ("none", "write-only") and not any(k.field == name for k in keys):
                continue
            if f.is_many or name in table.c:
                out.append(name)
        return list(dict.fromkeys(out))

    def _list_plan(self, ent: Entity, actor: Actor, sort: Any, columns: Iterable[str] | None) -> _ListPlan:
        """The parts of a list query that depend only on entity, role, columns and sort, built once.

        Building SELECT/ORDER BY clause objects costs more than running a 50-row keyset query on
        an index, so each shape is kept (clause objects are immutable; SQLAlchemy caches the SQL).
        """
        columns = None if columns is None else tuple(columns)
        cache_key = (ent.name, actor.role, actor.system, actor.is_admin,
                     sort if not isinstance(sort, list) else tuple(sort), columns)
        try:
            plan = self._list_plans.get(cache_key)
        except TypeError:  # an unhashable argument: build without keeping
            plan, cache_key = None, None
        if plan is None:
            table = self.tables[ent.name]
            keys = queries.parse_sort(ent, sort)
            access = self.field_access(actor, ent.name)
            wanted = self._columns(ent, columns, access, keys)
            names = tuple(c for c in wanted if c in table.c)  # many-to-many fields: attached afterwards
            select = sa.select(*[table.c[c] for c in names]).order_by(*queries.order_by(table, keys))
            many = tuple(f for f in ent.user_fields if f.is_many and f.name in wanted)
            keep = cache_key is not None and len(self._list_plans) < 1024  # shapes come from the catalog
            plan = _ListPlan(tuple(keys), names, select, many, self._row_presenter(ent, names, access), keep)
            if keep:
                self._list_plans[cache_key] = plan
        return plan

    def _row_presenter(self, ent: Entity, names: tuple[str, ...], access: dict[str, str]):
        """A function turning a result row (columns ``names``) into the dict the actor may see."""
        table = self.tables[ent.name]
        datetimes = [i for i, n in enumerate(names) if isinstance(table.c[n].type, sa.DateTime)]
        hidden = {n for n in names if access.get(n, "read") in ("none", "write-only") or n == SEARCH_COLUMN}
        masked = [n for n in names if access.get(n, "read") == "mask"]
        if not hidden and not masked:
            # zip() stops at the last name: a trailing count column (see list()) is left out.
            if not datetimes:
                return lambda row: dict(zip(names, row))  # noqa: B905

            dt_names = [names[i] for i in datetimes]

            def plain(row: Sequence[Any]) -> dict[str, Any]:
                out = dict(zip(names, row))  # noqa: B905
                for name in dt_names:
                    v = out[name]
                    if v is not None and v.tzinfo is None:  # SQLite hands back naive UTC datetimes
                        out[name] = v.replace(tzinfo=dt.UTC)
                return out

            return plain
        return lambda row: self._present(ent, dict(zip(names, row)), access)  # noqa: B905

    def _present(self, ent: Entity, row: Mapping[str, Any], access: dict[str, str]) -> dict[str, Any]:
        """A row as the actor sees it: hidden fields dropped, masked ones masked, UTC datetimes."""
        out: dict[str, Any] = {}
        for name, value in row.items():
            if name == SEARCH_COLUMN:
                continue
            level = access.get(name, "read")
            if level in ("none", "write-only"):
                continue
            out[name] = permissions.mask_value(value) if level == "mask" else _as_utc(value)
        return out

    def _row_reader(self, ent: Entity) -> _RowReader:
        """The kept statements reading one record of ``ent`` (built on first use)."""
        reader = self._row_readers.get(ent.name)
        if reader is None:
            table = self.tables[ent.name]
            names = tuple(c.key for c in table.c if c.key != SEARCH_COLUMN)  # never shown: not read
            select = sa.select(*[table.c[n] for n in names]).where(table.c.id == sa.bindparam("crmkit_id"))
            many = tuple(f for f in ent.user_fields if f.is_many)
            reader = self._row_readers[ent.name] = _RowReader(names, select, select.with_for_update(), many)
        return reader

    def _fetch_row(self, conn: sa.Connection, ent: Entity, id: int, lock: bool = False) -> dict[str, Any] | None:
        reader = self._row_reader(ent)
        stmt = reader.locked if lock and conn.dialect.name == "postgresql" else reader.select
        row = conn.execute(stmt, {"crmkit_id": id}).first()
        if row is None:
            return None
        record = dict(zip(reader.names, map(_as_utc, row), strict=True))
        if reader.many:
            self._attach_many(conn, ent, [record], list(reader.many))
        return record

    def _attach_many(self, conn: sa.Connection, ent: Entity, items: list[dict[str, Any]], many: list[Field]) -> None:
        ids = [r["id"] for r in items]
        for f in many:
            by_source = self._many_values(conn, ent, ids, f)
            for item in items:
                item[f.name] = by_source.get(item["id"], [])

    def _many_values(
        self, conn: sa.Connection, ent: Entity, ids: Sequence[int], f: Field
    ) -> dict[int, list[dict[str, Any]]]:
        """Record id -> the entries of many-to-many field ``f`` (``{"id": target, ...link columns}``)."""
        kept = self._link_statements.get((ent.name, f.name))
        if kept is None:  # built once per field (see _RowReader), the ids bound per call
            link = self.crm.schema.link_tables[(ent.name, f.name)]
            extra = [c for c in link.c if c.name not in ("id", "source_id", "target_id")]
            stmt = (
                sa.select(link.c.source_id, link.c.target_id, *extra)
                .where(link.c.source_id.in_(sa.bindparam("crmkit_ids", expanding=True))).order_by(link.c.id)
            )
            kept = self._link_statements[(ent.name, f.name)] = (stmt, tuple(c.name for c in extra))
        stmt, extra_names = kept
        by_source: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
        for source_id, target_id, *values in conn.execute(stmt, {"crmkit_ids": list(ids)}):
            entry = {"id": target_id}
            entry.update(zip(extra_names, values, strict=True))
            by_source[source_id].append(entry)
        return by_source

    def _fetcher(self, conn: sa.Connection):
        cache: dict[tuple[str, Any], Any] = {}

        def fetch(entity: str, id: Any) -> dict[str, Any] | None:
            if id is None:
                return None
            key = (entity, id)
            if key not in cache:
                table = self.tables[entity]
                row = conn.execute(sa.select(table).where(table.c.id == id)).mappings().first()
                cache[key] = dict(row) if row else None
            return cache[key]

        return fetch

    def _visible(self, conn: sa.Connection, ent: Entity, record: dict[str, Any], actor: Actor, action: str) -> bool:
        conds = [permissions.scope_condition(ent, actor, action)] + self.restrictions(actor, ent)
        return self._meets(conn, ent, record, actor, [c for c in conds if c is not None])

    def _read_conditions(self, ent: Entity, actor: Actor) -> list[Any]:
        """What a record must meet to be read by the actor (as :meth:`_visible` checks for "read")."""
        conds = [permissions.scope_condition(ent, actor, "read")] + self.restrictions(actor, ent)
        return [c for c in conds if c is not None]

    def _meets(self, conn: sa.Connection, ent: Entity, record: dict[str, Any], actor: Actor,
               conds: list[Any]) -> bool:
        """Whether ``record`` meets every condition; referenced records are read through ``conn``."""
        fetch = self._fetcher(conn)
        return all(self._parse(ent, c).evaluate(record, fetch, actor.params()) for c in conds)

    def _parse(self, ent: Entity, condition: Any) -> conditions.ParsedCondition:
        """``conditions.parse``, kept per condition: scopes recur on every read and parsing
        costs more than evaluating. The key holds every value (own/team ids included) with its
        type; ``$me`` and friends stay unresolved until evaluated with the actor's params."""
        key = _frozen(condition)
        if key is None:
            return conditions.parse(condition, ent, self.catalog)
        parsed = self._parsed.get((ent.name, key))
        if parsed is None:
            parsed = conditions.parse(condition, ent, self.catalog)
            if len(self._parsed) >= 1024:  # conditions from many distinct ids: start afresh
                self._parsed.clear()
            self._parsed[(ent.name, key)] = parsed
        return parsed

    def _get(self, conn: sa.Connection, entity: str, id: int, actor: Actor) -> dict[str, Any]:
        ent = self._entity(entity)
        self._require(actor, "read", ent, None)
        record_id = _int_id(id)
        return self._get_visible(conn, ent, id, record_id, actor, self._read_conditions(ent, actor))

    def _get_visible(self, conn: sa.Connection, ent: Entity, id: Any, record_id: int, actor: Actor,
                     conds: list[Any]) -> dict[str, Any]:
        """The record as the actor sees it, given its read conditions; NotFound outside them."""
        record = self._fetch_row(conn, ent, record_id)
        if record is None or not self._meets(conn, ent, record, actor, conds):
            raise NotFound(f"{ent.text(actor.locale)} #{id} not found")
        self._require(actor, "read", ent, record)
        hidden, masked = self._hidden_masked(actor, ent.name)
        if not hidden and not masked:
            # What _present would return: _fetch_row already left out the search text and made
            # datetimes UTC, and every field is readable.
            return dict(record)
        return self._present(ent, record, self.field_access(actor, ent.name))

    def _hidden_masked(self, actor: Actor, entity: str) -> tuple[frozenset[str], frozenset[str]]:
        """The fields the actor may not read, and those shown masked (kept per role, as field_access)."""
        key = (entity, actor.role, actor.system, actor.is_admin)
        found = self._hidden.get(key)
        if found is None:
            access = self.field_access(actor, entity)
            found = self._hidden[key] = (
                frozenset(n for n, level in access.items() if level in ("none", "write-only")),
                frozenset(n for n, level in access.items() if level == "mask"),
            )
        return found

    # ------------------------------------------------------------------------------------------
    # Internals: writing
    # ------------------------------------------------------------------------------------------
    def _coerce(self, ent: Entity, values: Mapping[str, Any], actor: Actor, access: dict[str, str],
                creating: bool) -> tuple[dict[str, Any], list[dict[str, str]]]:
        out: dict[str, Any] = {}
        errors: list[dict[str, str]] = []
        for name, value in values.items():
            if name in ("id", "version", "created_at", "updated_at", "created_by", SEARCH_COLUMN):
                continue  # system-managed; callers may echo them back harmlessly
            f = ent.fields.get(name)
            if f is None:
                errors.append({"field": name, "message": f"unknown field of {ent.name}"})
                continue
            if f.system and name not in SYSTEM_WRITABLE:
                continue
            level = access.get(name, "write")
            if level not in ("write", "write-only"):
                errors.append({"field": name, "message": "you may not change this field"})
                continue
            if (f.compute or f.spec.get("readonly")) and not actor.system:
                errors.append({"field": name, "message": "this field is read-only"})
                continue
            try:
                out[name] = self.crm.field_types[f.type].coerce(f, value)
            except InvalidValue as exc:
                errors.append({"field": name, "message": str(exc)})
            except (TypeError, ValueError, ArithmeticError) as exc:  # a type's bug must not be a 500
                errors.append({"field": name, "message": f"invalid value ({exc})"})
        return out, errors

    def _validate(self, conn: sa.Connection, ent: Entity, record: dict[str, Any], old: dict[str, Any] | None,
                  actor: Actor) -> list[dict[str, str]]:
        errors: list[dict[str, str]] = []
        fetch = self._fetcher(conn)
        table = self.tables[ent.name]
        for f in ent.visible_fields:
            value = record.get(f.name)
            empty = value is None or value == "" or value == []
            needed = f.required or (
                f.required_if is not None
                and conditions.evaluate(f.required_if, record, ent.name, self.catalog, fetch=fetch,
                                        params=actor.params())
            )
            if needed and empty and not f.compute:
                errors.append({"field": f.name, "message": "is required"})
                continue
            if empty:
                continue
            if f.unique and (old is None or old.get(f.name) != value):
                dupe = conn.execute(
                    sa.select(table.c.id).where(table.c[f.name] == value, table.c.id != record.get("id", 0)).limit(1)
                ).first()
                if dupe:
                    errors.append({"field": f.name, "message": f"another {ent.name} already has this value"})
            if f.is_reference and (old is None or old.get(f.name) != value):
                if fetch(f.to, value) is None:
                    errors.append({"field": f.name, "message": f"no {f.to} with id {value}"})
            if f.is_many:
                for item in value:
                    if fetch(f.to, item["id"]) is None:
                        errors.append({"field": f.name, "message": f"no {f.to} with id {item['id']}"})
        for sysref, target in (("owner", "user"), ("team", "team")):
            value = record.get(sysref)
            if value is not None and ent.ownable and (old is None or old.get(sysref) != value):
                if fetch(target, value) is None:
                    errors.append({"field": sysref, "message": f"no {target} with id {value}"})
        return errors

    def _hook_errors(self, tx: Tx, ent: Entity, record: dict[str, Any], old: dict[str, Any] | None,
                     actor: Actor) -> list[dict[str, str]]:
        errors: list[dict[str, str]] = []
        for plugin, result in call_each(
            self.crm.pm, "validate_record", crm=self.crm, entity=ent, record=record, old=old, conn=tx.conn,
            actor=actor,
        ):
            items = result if isinstance(result, list) else [result]
            for item in items:
                if isinstance(item, dict) and "message" in item:
                    errors.append({"field": item.get("field", ""), "message": item["message"]})
                elif isinstance(item, dict):
                    errors += [{"field": k, "message": str(v)} for k, v in item.items()]
                elif item:
                    errors.append({"field": "", "message": f"{item} ({plugin})"})
        return errors

    def _finish_values(self, tx: Tx, ent: Entity, record: dict[str, Any]) -> None:
        """Computed fields and the normalised search text, derived from the record."""
        for f in ent.user_fields:
            if f.compute:
                value = compute.evaluate(f.compute, record)
                try:
                    record[f.name] = self.crm.field_types[f.type].coerce(f, value)
                except InvalidValue:
                    record[f.name] = None
        if ent.search_paths and SEARCH_COLUMN in self.tables[ent.name].c:
            record[SEARCH_COLUMN] = self._search_text(tx.conn, ent, record)

    def _search_text(self, conn: sa.Connection, ent: Entity, record: Mapping[str, Any]) -> str:
        fetch = self._fetcher(conn)
        values: list[Any] = []
        for path in ent.search_paths:
            value = _path_value(self.catalog, ent, record, path, fetch)
            values.extend(value if isinstance(value, list) else [value])
        return text.search_text(values)

    def _write_many(self, tx: Tx, ent: Entity, record_id: int, values: dict[str, Any]) -> None:
        for f in ent.user_fields:
            if f.is_many and f.name in values:
                link = self.crm.schema.link_tables[(ent.name, f.name)]
                tx.conn.execute(sa.delete(link).where(link.c.source_id == record_id))
                seen = set()
                rows = []
                for item in values[f.name] or []:
                    if item["id"] in seen:
                        continue
                    seen.add(item["id"])
                    row = {"source_id": record_id, "target_id": item["id"]}
                    for c in link.c:
                        if c.name not in ("id", "source_id", "target_id"):
                            row[c.name] = None  # executemany needs the same keys in every row
                        if c.name not in ("id", "source_id", "target_id") and item.get(c.name) is not None:
                            tf = _through_field(f, c.name)
                            try:
                                row[c.name] = self.crm.field_types[tf.type].coerce(tf, item[c.name])
                            except InvalidValue as exc:
                                raise ValidationError([{"field": f"{f.name}.{c.name}", "message": str(exc)}]) from None
                    rows.append(row)
                if rows:
                    tx.conn.execute(sa.insert(link), rows)

    def _audit(self, tx: Tx, ent: Entity, actor: Actor, action: str, record_id: int,
               old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if not ent.audit:
            return
        now = utcnow()
        base = {"entity": ent.name, "record_id": record_id, "actor_id": actor.id,
                "actor_name": actor.display_name or actor.username, "source": tx.source, "at": now}
        rows = []
        if action == "create":
            rows.append({**base, "action": "create", "field": None, "old_value": None,
                         "new_value": snapshot(new or {}, audited_fields(ent))})
        elif action == "update":
            names = audited_fields(ent)
            for name, before, after in changes(old, new or {}, [n for n in names if n in (new or {})]):
                rows.append({**base, "action": action, "field": name, "old_value": encode(before),
                             "new_value": encode(after)})
        else:
            rows.append({**base, "action": action, "field": None, "old_value": None,
                         "new_value": json.dumps({"title": str((old or {}).get(ent.title_field))}, ensure_ascii=False)})
        if rows:
            tx.conn.execute(sa.insert(self.audit_table), rows)

    def _run_hooks(self, hook: str, **kwargs: Any) -> None:
        for _ in call_each(self.crm.pm, hook, crm=self.crm, **kwargs):
            pass

    def _create(self, tx: Tx, entity: str, values: Mapping[str, Any], actor: Actor) -> dict[str, Any]:
        ent = self._entity(entity)
        self._require(actor, "create", ent, None)
        access = self.field_access(actor, entity)
        coerced, errors = self._coerce(ent, values, actor, access, creating=True)
        record: dict[str, Any] = {}
        for f in ent.user_fields:
            if f.name in coerced:
                record[f.name] = coerced[f.name]
            elif f.default is not None and not f.is_many:
                try:
                    record[f.name] = self.crm.field_types[f.type].coerce(f, f.default)
                except InvalidValue:
                    record[f.name] = None
            elif f.is_many:
                record[f.name] = []
        if ent.ownable:
            record["owner"] = coerced.get("owner", actor.id)
            record["team"] = coerced.get("team", actor.primary_team)
        if ent.ownable and not actor.system:
            scope = permissions.scope(ent, actor, "create")
            if scope == "own" and record["owner"] != actor.id:
                errors.append({"field": "owner", "message": "you may only create records you own"})
        if errors:
            raise ValidationError(errors)
        self._finish_values(tx, ent, record)
        errors = self._validate(tx.conn, ent, record, None, actor) + self._hook_errors(tx, ent, record, None, actor)
        if errors:
            raise ValidationError(errors)
        self._run_hooks("before_save", entity=ent, record=record, old=None, conn=tx.conn, actor=actor)
        self._finish_values(tx, ent, record)
        now = utcnow()
        table = self.tables[entity]
        row = {k: v for k, v in record.items() if k in table.c and not ent.fields.get(k, Field(k, "x", {})).is_many}
        row.update(created_at=now, updated_at=now, created_by=actor.id, version=1)
        new_id = tx.conn.execute(sa.insert(table).values(row).returning(table.c.id)).scalar_one()
        self._write_many(tx, ent, new_id, record)
        stored = self._fetch_row(tx.conn, ent, new_id)
        self._run_hooks("after_save", entity=ent, record=stored, old=None, conn=tx.conn, actor=actor)
        stored = self._fetch_row(tx.conn, ent, new_id) or stored
        self._audit(tx, ent, actor, "create", new_id, None, stored)
        tx.events.append(Event("record.created", entity, new_id, actor, {"record": stored}, tx.source))
        return self._present(ent, stored, access)

    def _update(self, tx: Tx, entity: str, id: int, values: Mapping[str, Any], version: int | None,
                actor: Actor) -> dict[str, Any]:
        ent = self._entity(entity)
        id = _int_id(id)
        old = self._fetch_row(tx.conn, ent, id, lock=True)
        if old is None or not self._visible(tx.conn, ent, old, actor, "read"):
            raise NotFound(f"{ent.text(actor.locale)} #{id} not found")
        if not self._visible(tx.conn, ent, old, actor, "update"):
            raise PermissionDenied(f"you may not change this {ent.text(actor.locale)}")
        self._require(actor, "update", ent, old)
        access = self.field_access(actor, entity)
        if version is not None and int(version) != old["version"]:
            raise ConflictError(
                f"this {ent.text(actor.locale)} was changed by someone else (you edited version {version}, "
                f"it is now version {old['version']}); reload to see their changes",
                current=self._present(ent, old, access),
            )
        coerced, errors = self._coerce(ent, values, actor, access, creating=False)
        if errors:
            raise ValidationError(errors)
        record = {**old, **coerced}
        self._finish_values(tx, ent, record)
        errors = self._validate(tx.conn, ent, record, old, actor) + self._hook_errors(tx, ent, record, old, actor)
        if errors:
            raise ValidationError(errors)
        self._run_hooks("before_save", entity=ent, record=record, old=old, conn=tx.conn, actor=actor)
        self._finish_values(tx, ent, record)
        table = self.tables[entity]
        row = {
            k: v for k, v in record.items()
            if k in table.c and k not in ("id", "created_at", "created_by", "version")
            and (k == SEARCH_COLUMN or old.get(k) != v)
        }
        row.update(updated_at=utcnow(), version=old["version"] + 1)
        result = tx.conn.execute(
            sa.update(table).where(table.c.id == id, table.c.version == old["version"]).values(row)
        )
        if result.rowcount != 1:  # someone else committed between our read and write (SQLite)
            raise ConflictError(f"this {ent.text(actor.locale)} was changed by someone else; reload")
        self._write_many(tx, ent, id, coerced)
        stored = self._fetch_row(tx.conn, ent, id)
        self._run_hooks("after_save", entity=ent, record=stored, old=old, conn=tx.conn, actor=actor)
        stored = self._fetch_row(tx.conn, ent, id) or stored
        self._refresh_dependent_search(tx, ent, old, stored)
        self._audit(tx, ent, actor, "update", id, old, stored)
        changed = [k for k in stored if k not in ("updated_at", "version") and old.get(k) != stored.get(k)]
        tx.events.append(Event("record.updated", entity, id, actor,
                               {"record": stored, "old": old, "changed": changed}, tx.source))
        return self._present(ent, stored, access)

    def _refresh_dependent_search(self, tx: Tx, ent: Entity, old: dict[str, Any], new: dict[str, Any]) -> None:
        for dep_name, ref in self._search_dependents.get(ent.name, []):
            dep = self.catalog[dep_name]
            paths = [p for p in dep.search_paths if p.startswith(ref + ".")]
            fields = {p.split(".")[1] for p in paths}
            if not any(old.get(f) != new.get(f) for f in fields):
                continue
            table = self.tables[dep_name]
            rows = tx.conn.execute(sa.select(table).where(table.c[ref] == new["id"])).mappings().all()
            for row in rows:
                tx.conn.execute(
                    sa.update(table).where(table.c.id == row["id"])
                    .values({SEARCH_COLUMN: self._search_text(tx.conn, dep, dict(row))})
                )

    def _delete(self, tx: Tx, entity: str, id: int, version: int | None, actor: Actor) -> None:
        ent = self._entity(entity)
        id = _int_id(id)
        old = self._fetch_row(tx.conn, ent, id, lock=True)
        if old is None or not self._visible(tx.conn, ent, old, actor, "read"):
            raise NotFound(f"{ent.text(actor.locale)} #{id} not found")
        if not self._visible(tx.conn, ent, old, actor, "delete"):
            raise PermissionDenied(f"you may not delete this {ent.text(actor.locale)}")
        self._require(actor, "delete", ent, old)
        if version is not None and int(version) != old["version"]:
            raise ConflictError(f"this {ent.text(actor.locale)} was changed by someone else; reload")
        self._check_restrict(tx, ent, id)
        self._run_hooks("before_delete", entity=ent, record=old, conn=tx.conn, actor=actor)
        table = self.tables[entity]
        tx.conn.execute(sa.delete(table).where(table.c.id == id))
        self._run_hooks("after_delete", entity=ent, record=old, conn=tx.conn, actor=actor)
        self._audit(tx, ent, actor, "delete", id, old, None)
        tx.events.append(Event("record.deleted", entity, id, actor, {"record": old}, tx.source))

    def _check_restrict(self, tx: Tx, ent: Entity, id: int) -> None:
        """Refuse a delete that ``on_delete: restrict`` references forbid, naming them (not a DB error)."""
        blockers = []
        for rel in self.catalog.relations_to(ent.name):
            if rel.many or rel.on_delete != "restrict":
                continue
            t = self.tables[rel.entity]
            n = tx.conn.execute(
                sa.select(sa.func.count()).select_from(
                    sa.select(t.c.id).where(t.c[rel.field] == id).limit(1000).subquery()
                )
            ).scalar_one()
            if n:
                blockers.append(f"{n} {self.catalog[rel.entity].text(plural=True).lower()} ({rel.field})")
        if blockers:
            raise ValidationError([{
                "field": "",
                "message": f"cannot delete: still referenced by {', '.join(blockers)}; move or delete those first",
            }])


_SCALARS = (str, int, float, bool, type(None))


def _frozen(value: Any) -> Any:
    """A hashable key equal only for the same condition data (dicts, lists, scalars, each with its
    type, so ``1``, ``1.0`` and ``True`` differ); None when it holds anything else."""
    kind = type(value)
    if kind in _SCALARS:
        return (kind, value)
    if kind is dict:
        items = []
        for k, v in value.items():
            frozen = _frozen(v)
            if frozen is None or type(k) is not str:
                return None
            items.append((k, frozen))
        return (dict, tuple(items))
    if kind is list:
        frozen_items = tuple(_frozen(v) for v in value)
        return None if None in frozen_items else (list, frozen_items)
    return None


def _reads_references(conds: list[Any]) -> bool:
    """Whether checking a record against ``conds`` reads other records (a path through a reference)."""
    return any("." in path for c in conds for path in conditions.fields_used(c))


def _int_id(id: Any) -> int:
    try:
        return int(id)
    except (TypeError, ValueError):
        raise NotFound(f"no record {id!r}") from None


def _through_field(f: Field, name: str) -> Field:
    spec = (f.spec.get("through") or {}).get(name) or {}
    return Field(name, spec.get("type", "string"), {"en": name, "ja": name}, spec)


def _path_value(catalog, ent: Entity, record: Mapping[str, Any], path: str, fetch) -> Any:
    current: Mapping[str, Any] | None = record
    entity = ent
    parts = path.split(".")
    for i, part in enumerate(parts):
        if current is None:
            return None
        value = current.get(part)
        if i == len(parts) - 1:
            if entity.fields[part].type in ("enum",) and value is not None:
                opt = entity.fields[part].option(value)
                return [value] + (list(opt.label.values()) if opt else [])
            return value
        target = entity.fields[part].to
        current = fetch(target, value)
        entity = catalog[target]
    return None


__all__ = ["RecordStore", "Tx", "Page", "PluginError"]
