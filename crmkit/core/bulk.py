"""Creating many records at once (imports): the RecordStore write path, batched.

:meth:`crmkit.core.records.Tx.create_many` runs every row through the same steps as
``Tx.create`` — permission check, field coercion (``RecordStore._coerce``), defaults, owner/team,
computed fields, the normalised search text, required / required_if / unique / reference checks,
``validate_record``, ``before_save``, the insert, ``after_save``, field-level audit and
``record.created`` events — but does the database work per batch instead of per row: reference
and uniqueness checks are one ``IN`` query per field, the rows are one multi-row ``INSERT ...
RETURNING id``, the audit rows one ``executemany``. That is what lets an import of a million rows
run at tens of thousands of rows a second rather than a few hundred.

Rows that fail validation are not written and come back as :class:`ValidationError` objects in
their place. When anything unexpected happens after a write began (a ``before_save``/``after_save``
hook raising, a unique index refusing a value a hook changed), the batch's savepoint is rolled
back and the batch is redone one row at a time through ``Tx.create`` (each in its own savepoint),
so a failing row never leaves half of itself behind and the good rows are still created.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from crmkit.core import compute, conditions, permissions, text
from crmkit.core.audit import audited_fields, snapshot
from crmkit.core.errors import CRMError, ValidationError
from crmkit.core.events import Event
from crmkit.core.fieldtypes import InvalidValue
from crmkit.core.tables import SEARCH_COLUMN, fts_table_name
from crmkit.plugins import PluginError

if TYPE_CHECKING:
    from crmkit.core.actors import Actor
    from crmkit.core.catalog import Entity, Field
    from crmkit.core.records import RecordStore, Tx

IN_CHUNK = 500  # ids per IN (...) list: well under every driver's parameter limit
BULK_CACHE_KIB = 256 * 1024  # SQLite page cache while a batch is written (see _large_page_cache)
FTS_BATCH_HASH_BYTES = 64 * 1024 * 1024  # FTS5's buffer of new terms while a batch is indexed
FTS_DEFAULT_HASH_BYTES = 1024 * 1024  # FTS5's own default (and what ordinary writes use)

Outcome = dict[str, Any] | ValidationError


_MANY, _NOTHING = object(), object()  # markers in _Plan.fills


class _Abort(Exception):
    """Internal: the fast path hit something it cannot isolate; redo the batch row by row."""


class _Plan:
    """What one entity's bulk create needs, worked out once per call instead of once per row."""

    def __init__(self, store: RecordStore, ent: Entity, actor: Actor):
        crm = store.crm
        self.store, self.ent, self.actor = store, ent, actor
        self.table = store.tables[ent.name]
        self.columns = [c.name for c in self.table.c if c.name != "id"]
        self.user_fields: tuple[Field, ...] = ent.user_fields
        self.visible_fields = ent.visible_fields
        self.access = store.field_access(actor, ent.name)
        self.defaults: dict[str, Any] = {}
        for f in self.user_fields:
            if f.default is not None and not f.is_many:
                try:
                    self.defaults[f.name] = crm.field_types[f.type].coerce(f, f.default)
                except InvalidValue:
                    self.defaults[f.name] = None
        self.many = [f for f in self.user_fields if f.is_many]
        # what a field left out of a row gets: its default, an empty list (to-many) or nothing
        self.fills = [(f.name, self.defaults[f.name] if f.name in self.defaults else _MANY if f.is_many else _NOTHING)
                      for f in self.user_fields]
        self.computed = [(f, crm.field_types[f.type].coerce) for f in self.user_fields if f.compute]
        self.search_paths = ent.search_paths if SEARCH_COLUMN in self.table.c else ()
        self.unique = [f for f in self.visible_fields if f.unique]
        # only the fields _validate can say something about (the others would just be skipped per row)
        self.checks = [(f, f.required, _parsed(f.required_if, ent, store.catalog), bool(f.compute))
                       for f in self.visible_fields
                       if f.required or f.required_if is not None or f.type in ("reference", "references")]
        self.search_getters = [_search_getter(store.catalog, ent, path) for path in self.search_paths]
        self.audit_names = audited_fields(ent)
        hook = crm.pm.hook
        self.validate_hooks = bool(hook.validate_record.get_hookimpls())
        # per-record hooks only for plugins without the batch version (which replaces them here)
        self.before_rows = _RowHook(crm, "before_save", "before_create_many")
        self.after_rows = _RowHook(crm, "after_save", "after_create_many")
        self.before_batch = _RowHook(crm, "before_create_many")
        self.after_batch = _RowHook(crm, "after_create_many")
        self.create_scope = permissions.scope(ent, actor, "create") if ent.ownable and not actor.system else "all"
        self.coercers = self._coercers(crm, ent, actor)

    def _coercers(self, crm: Any, ent: Entity, actor: Actor) -> dict[str, tuple[str, Any, Any]]:
        """RecordStore._coerce decided once per field: ``name -> (verdict, field, coerce)``."""
        from crmkit.core.records import SYSTEM_WRITABLE

        out: dict[str, tuple[str, Any, Any]] = {}
        for name in ("id", "version", "created_at", "updated_at", "created_by", SEARCH_COLUMN):
            out[name] = ("skip", None, None)
        for name, f in ent.fields.items():
            if name in out:
                continue
            if f.system and name not in SYSTEM_WRITABLE:
                out[name] = ("skip", f, None)
            elif self.access.get(name, "write") not in ("write", "write-only"):
                out[name] = ("denied", f, None)
            elif (f.compute or f.spec.get("readonly")) and not actor.system:
                out[name] = ("readonly", f, None)
            else:
                out[name] = ("ok", f, crm.field_types[f.type].coerce)
        return out

    def coerce(self, values: Mapping[str, Any]) -> tuple[dict[str, Any], list[dict[str, str]]]:
        """Exactly ``RecordStore._coerce(..., creating=True)`` (same values, same messages)."""
        out: dict[str, Any] = {}
        errors: list[dict[str, str]] = []
        coercers = self.coercers
        for name, value in values.items():
            spec = coercers.get(name)
            if spec is None:
                errors.append({"field": name, "message": f"unknown field of {self.ent.name}"})
                continue
            verdict, f, coerce = spec
            if verdict == "ok":
                try:
                    out[name] = coerce(f, value)
                except InvalidValue as exc:
                    errors.append({"field": name, "message": str(exc)})
                except (TypeError, ValueError, ArithmeticError) as exc:  # a type's bug must not be a 500
                    errors.append({"field": name, "message": f"invalid value ({exc})"})
            elif verdict == "denied":
                errors.append({"field": name, "message": "you may not change this field"})
            elif verdict == "readonly":
                errors.append({"field": name, "message": "this field is read-only"})
        return out, errors


class _RowHook:
    """The implementations of one record hook, looked up once per bulk call instead of once per row.

    ``without`` names the batch version of the hook: plugins implementing it get that call
    instead, once per batch. Errors name the plugin (:class:`PluginError`), like ``call_each``.
    """

    def __init__(self, crm: Any, name: str, without: str | None = None):
        pm = crm.pm
        skip = {i.plugin_name for i in getattr(pm.hook, without).get_hookimpls()} if without else set()
        self.name = name
        self.impls = [
            (impl.plugin_name, impl.function, impl.argnames)
            for impl in reversed(getattr(pm.hook, name).get_hookimpls())
            if not (impl.hookwrapper or getattr(impl, "wrapper", False)) and impl.plugin_name not in skip
        ]

    def __bool__(self) -> bool:
        return bool(self.impls)

    def __call__(self, **kwargs: Any) -> None:
        for plugin, function, argnames in self.impls:
            try:
                function(**{k: kwargs[k] for k in argnames if k in kwargs})
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(plugin, self.name, exc) from exc


class _Fetch:
    """``fetch(entity, id)`` for conditions and search paths, filled a whole batch at a time."""

    def __init__(self, store: RecordStore, conn: sa.Connection):
        self.store, self.conn = store, conn
        self.cache: dict[tuple[str, Any], dict[str, Any] | None] = {}

    def load(self, entity: str, ids: Iterable[Any]) -> None:
        """Read every record of ``entity`` in ``ids`` not read yet (one query per IN_CHUNK ids)."""
        wanted = sorted({i for i in ids if isinstance(i, int) and (entity, i) not in self.cache})
        table = self.store.tables[entity]
        for start in range(0, len(wanted), IN_CHUNK):
            chunk = wanted[start : start + IN_CHUNK]
            for key in chunk:
                self.cache[(entity, key)] = None
            for row in self.conn.execute(sa.select(table).where(table.c.id.in_(chunk))).mappings():
                self.cache[(entity, row["id"])] = dict(row)

    def __call__(self, entity: str, id: Any) -> dict[str, Any] | None:
        if id is None:
            return None
        key = (entity, id)
        if key not in self.cache:
            self.load(entity, [id])
            if key not in self.cache:  # not an int id: look it up the slow way
                table = self.store.tables[entity]
                row = self.conn.execute(sa.select(table).where(table.c.id == id)).mappings().first()
                self.cache[key] = dict(row) if row else None
        return self.cache[key]


def create_many(
    tx: Tx, entity: str, rows: Sequence[Mapping[str, Any]], actor: Actor, *, present: bool = True
) -> list[Outcome]:
    """Create ``rows`` in ``tx``; one outcome per row, in order (see the module docstring).

    An outcome is the created record (as the actor sees it; only ``{"id": ...}`` when
    ``present`` is False) or the :class:`ValidationError` that kept the row out.
    Raises PermissionDenied when the actor may not create ``entity`` records at all.
    """
    store = tx.store
    ent = store._entity(entity)
    store._require(actor, "create", ent, None)
    if not rows:
        return []
    plan = _Plan(store, ent, actor)
    savepoint = tx.conn.begin_nested()
    events_before = len(tx.events)
    try:
        with _large_page_cache(tx.conn):
            outcomes = _fast(tx, plan, rows, present)
    except (_Abort, PluginError, sa.exc.IntegrityError, CRMError):
        savepoint.rollback()
        del tx.events[events_before:]
        return _careful(tx, entity, rows, actor, present)
    except BaseException:
        savepoint.rollback()
        raise
    savepoint.commit()
    return outcomes


def _careful(tx: Tx, entity: str, rows: Sequence[Mapping[str, Any]], actor: Actor, present: bool) -> list[Outcome]:
    """One row at a time through ``Tx.create``, each in a savepoint: exact per-row isolation."""
    out: list[Outcome] = []
    for values in rows:
        savepoint = tx.conn.begin_nested()
        events_before = len(tx.events)
        try:
            record = tx.create(entity, values, actor=actor)
        except ValidationError as exc:
            savepoint.rollback()
            del tx.events[events_before:]
            out.append(exc)
            continue
        except (CRMError, PluginError, sa.exc.IntegrityError) as exc:
            savepoint.rollback()
            del tx.events[events_before:]
            message = str(exc.orig) if isinstance(exc, sa.exc.IntegrityError) else str(exc)
            out.append(ValidationError([{"field": "", "message": message}]))
            continue
        savepoint.commit()
        out.append(record if present else {"id": record["id"]})
    return out


def _fast(tx: Tx, plan: _Plan, rows: Sequence[Mapping[str, Any]], present: bool) -> list[Outcome]:
    store, ent, actor = plan.store, plan.ent, plan.actor
    conn = tx.conn
    fetch = _Fetch(store, conn)
    params = actor.params()
    outcomes: list[Outcome | None] = [None] * len(rows)
    records: dict[int, dict[str, Any]] = {}
    errors: dict[int, list[dict[str, str]]] = {}

    # 1. coerce, defaults, owner/team (RecordStore._create, per row: pure Python)
    fills = plan.fills
    for i, values in enumerate(rows):
        coerced, errs = plan.coerce(values)
        record: dict[str, Any] = {}
        for name, fill in fills:
            if name in coerced:
                record[name] = coerced[name]
            elif fill is _MANY:
                record[name] = []
            elif fill is not _NOTHING:
                record[name] = fill
        if ent.ownable:
            record["owner"] = coerced.get("owner", actor.id)
            record["team"] = coerced.get("team", actor.primary_team)
            if plan.create_scope == "own" and record["owner"] != actor.id:
                errs.append({"field": "owner", "message": "you may only create records you own"})
        if errs:
            errors[i] = errs
        else:
            records[i] = record

    # 2. every record referenced by a surviving row, in one query per target entity
    _prefetch(plan, fetch, records.values())
    for record in records.values():
        _finish(plan, record, fetch)

    # 3. required / required_if / references / owner, team (RecordStore._validate), then unique
    taken: dict[str, set[Any]] = {f.name: set() for f in plan.unique}
    existing = _existing_unique(plan, conn, records.values())
    for i in list(records):
        record = records[i]
        errs = _validate(plan, record, fetch, params)
        for f in plan.unique:
            value = record.get(f.name)
            if value is None or value == "" or value == []:
                continue
            if value in existing[f.name] or value in taken[f.name]:
                errs.append({"field": f.name, "message": f"another {ent.name} already has this value"})
        if plan.validate_hooks:
            errs += store._hook_errors(tx, ent, record, None, actor)
        if errs:
            errors[i] = errs
            del records[i]
            continue
        for f in plan.unique:
            if record.get(f.name) not in (None, "", []):
                taken[f.name].add(record[f.name])

    # 4. before_save (before_create_many for plugins with the batch hook), then the derived
    # values again where a hook changed a record (they are a function of the other values)
    if (plan.before_rows or plan.before_batch) and records:
        originals = {i: dict(record) for i, record in records.items()}
        if plan.before_rows:
            for record in records.values():
                plan.before_rows(crm=store.crm, entity=ent, record=record, old=None, conn=conn, actor=actor)
        if plan.before_batch:
            plan.before_batch(crm=store.crm, entity=ent, records=list(records.values()), conn=conn, actor=actor)
        changed = [record for i, record in records.items() if record != originals[i]]
        _prefetch(plan, fetch, changed)
        for record in changed:
            _finish(plan, record, fetch)

    for i, errs in errors.items():
        outcomes[i] = ValidationError(errs)
    if not records:
        return outcomes  # type: ignore[return-value]

    # 5. ids reserved up front, then one executemany of plain INSERTs
    now = _now()
    order = list(records)
    insert_rows = []
    for i in order:
        record = records[i]
        row = dict.fromkeys(plan.columns)
        for k, v in record.items():
            if k in row:
                row[k] = v
        row.update(created_at=now, updated_at=now, created_by=actor.id, version=1)
        insert_rows.append(row)
    ids = _reserve_ids(conn, plan.table, len(insert_rows))
    for new_id, row in zip(ids, insert_rows, strict=True):
        row["id"] = new_id
    with _deferred_search_index(conn, plan, ids):
        _RawInsert(conn, plan.table, ["id", *plan.columns]).run(insert_rows)
    stored: dict[int, dict[str, Any]] = {}
    for i, new_id, row in zip(order, ids, insert_rows, strict=True):
        row.pop(SEARCH_COLUMN, None)
        stored[i] = row
        if plan.many:
            store._write_many(tx, ent, new_id, records[i])
            for f in plan.many:
                row[f.name] = [dict(item) for item in records[i].get(f.name) or []]

    # 6. after_save, then what the hooks left in the table; after_create_many once (it may not
    # change the created rows, so nothing is read back for it)
    if plan.after_rows:
        for i in order:
            plan.after_rows(crm=store.crm, entity=ent, record=stored[i], old=None, conn=conn, actor=actor)
        fresh = _read_back(store, conn, ent, ids)
        for i, new_id in zip(order, ids, strict=True):
            stored[i] = fresh.get(new_id, stored[i])
    if plan.after_batch:
        plan.after_batch(crm=store.crm, entity=ent, records=[stored[i] for i in order], conn=conn, actor=actor)

    # 7. audit (one executemany) and events
    if ent.audit:
        _audit(tx, plan, [stored[i] for i in order], now)
    for i in order:
        tx.events.append(Event("record.created", ent.name, stored[i]["id"], actor, {"record": stored[i]}, tx.source))
        outcomes[i] = store._present(ent, stored[i], plan.access) if present else {"id": stored[i]["id"]}
    return outcomes  # type: ignore[return-value]


def _now():
    from crmkit.core.records import utcnow

    return utcnow()


def _prefetch(plan: _Plan, fetch: _Fetch, records: Iterable[dict[str, Any]]) -> None:
    """Load every referenced record (references, many-to-many targets, owner, team) at once."""
    records = list(records)
    wanted: dict[str, set[Any]] = {}
    for f in plan.user_fields:
        if f.is_reference and f.to:
            ids = wanted.setdefault(f.to, set())
            ids.update(r.get(f.name) for r in records)
        elif f.is_many and f.to:
            ids = wanted.setdefault(f.to, set())
            for r in records:
                ids.update(item["id"] for item in r.get(f.name) or [])
    if plan.ent.ownable:
        wanted.setdefault("user", set()).update(r.get("owner") for r in records)
        wanted.setdefault("team", set()).update(r.get("team") for r in records)
    for entity, ids in wanted.items():
        if entity in plan.store.tables:
            fetch.load(entity, ids - {None})


def _finish(plan: _Plan, record: dict[str, Any], fetch: _Fetch) -> None:
    """Computed fields and the search text (RecordStore._finish_values)."""

    for f, coerce in plan.computed:
        value = compute.evaluate(f.compute, record)
        try:
            record[f.name] = coerce(f, value)
        except InvalidValue:
            record[f.name] = None
    if plan.search_paths:
        values: list[Any] = []
        for getter in plan.search_getters:
            value = getter(record, fetch)
            if isinstance(value, list):
                values.extend(value)
            else:
                values.append(value)
        record[SEARCH_COLUMN] = text.search_text(values)


def _parsed(condition: Any, ent: Entity, catalog: Any) -> Any:
    """A required_if condition parsed once per bulk call (an invalid one fails per row, as before)."""
    if condition is None:
        return None
    try:
        return conditions.parse(condition, ent, catalog)
    except conditions.ConditionError:
        return condition


def _search_getter(catalog: Any, ent: Entity, path: str) -> Any:
    """``(record, fetch) -> value`` of one search path, like ``records._path_value``.

    A path on the record's own fields needs no walking; an enum's value and labels are
    worked out once per option instead of once per row.
    """
    from crmkit.core.records import _path_value

    if "." not in path:
        f = ent.fields[path]
        if f.type == "enum":
            forms = {o.value: [o.value, *o.label.values()] for o in f.options}

            def enum_value(record: Mapping[str, Any], fetch: Any) -> Any:
                value = record.get(path)
                if value is None:
                    return None
                found = forms.get(value)
                return list(found) if found is not None else [value]

            return enum_value
        return lambda record, fetch: record.get(path)
    return lambda record, fetch: _path_value(catalog, ent, record, path, fetch)


def _validate(plan: _Plan, record: dict[str, Any], fetch: _Fetch, params: dict[str, Any]) -> list[dict[str, str]]:
    """RecordStore._validate for a new record, minus uniqueness (checked for the batch at once)."""
    ent, catalog = plan.ent, plan.store.catalog
    errors: list[dict[str, str]] = []
    for f, required, required_if, computed in plan.checks:
        value = record.get(f.name)
        empty = value is None or value == "" or value == []
        needed = required or (
            required_if is not None
            and conditions.evaluate(required_if, record, ent.name, catalog, fetch=fetch, params=params)
        )
        if needed and empty and not computed:
            errors.append({"field": f.name, "message": "is required"})
            continue
        if empty:
            continue
        if f.type == "reference" and fetch(f.to, value) is None:
            errors.append({"field": f.name, "message": f"no {f.to} with id {value}"})
        if f.type == "references":
            for item in value:
                if fetch(f.to, item["id"]) is None:
                    errors.append({"field": f.name, "message": f"no {f.to} with id {item['id']}"})
    for sysref, target in (("owner", "user"), ("team", "team")):
        value = record.get(sysref)
        if value is not None and ent.ownable and fetch(target, value) is None:
            errors.append({"field": sysref, "message": f"no {target} with id {value}"})
    return errors


def _existing_unique(plan: _Plan, conn: sa.Connection, records: Iterable[dict[str, Any]]) -> dict[str, set[Any]]:
    """Values of the batch's unique fields that some stored record already has."""
    out: dict[str, set[Any]] = {f.name: set() for f in plan.unique}
    if not plan.unique:
        return out
    records = list(records)
    table = plan.table
    for f in plan.unique:
        values = sorted({r[f.name] for r in records if r.get(f.name) not in (None, "", [])}, key=str)
        col = table.c[f.name]
        for start in range(0, len(values), IN_CHUNK):
            chunk = values[start : start + IN_CHUNK]
            out[f.name].update(conn.execute(sa.select(col).where(col.in_(chunk))).scalars())
    return out


def _read_back(store: RecordStore, conn: sa.Connection, ent: Entity, ids: list[int]) -> dict[int, dict[str, Any]]:
    """The rows as stored (after ``after_save`` hooks), like RecordStore._fetch_row, for many ids."""
    from crmkit.core.records import _as_utc

    table = store.tables[ent.name]
    out: dict[int, dict[str, Any]] = {}
    for start in range(0, len(ids), IN_CHUNK):
        chunk = ids[start : start + IN_CHUNK]
        for row in conn.execute(sa.select(table).where(table.c.id.in_(chunk))).mappings():
            out[row["id"]] = {k: _as_utc(v) for k, v in row.items() if k != SEARCH_COLUMN}
    many = [f for f in ent.user_fields if f.is_many]
    if many and out:
        store._attach_many(conn, ent, list(out.values()), many)
    return out


def _audit(tx: Tx, plan: _Plan, stored: list[dict[str, Any]], now: Any) -> None:
    """RecordStore._audit for many created records: one snapshot row each, one executemany."""
    actor = plan.actor
    table = tx.store.audit_table
    columns = ["entity", "record_id", "action", "field", "old_value", "new_value", "actor_id", "actor_name",
               "source", "at"]
    insert = _RawInsert(tx.conn, table, columns)
    # the constant columns are bound once per batch, not once per row
    ent_name, actor_id, actor_name, source, at = (
        insert.bind(c, v) for c, v in (("entity", plan.ent.name), ("actor_id", actor.id),
                                       ("actor_name", actor.display_name or actor.username),
                                       ("source", tx.source), ("at", now)))
    names = plan.audit_names
    insert.run_tuples([
        (ent_name, record["id"], "create", None, None, snapshot(record, names), actor_id, actor_name, source, at)
        for record in stored
    ])


@contextmanager
def _large_page_cache(conn: sa.Connection, kib: int = BULK_CACHE_KIB) -> Iterator[None]:
    """On SQLite, a page cache big enough for a batch's index pages while the batch is written.

    With SQLite's default 2 MB cache, a batch inserting thousands of rows into a table with many
    indexes evicts dirty index pages mid-transaction and writes them to the WAL more than once;
    at a million rows that doubled the batch's wall time. The connection's own size is restored
    afterwards (shrinking frees the memory), so pooled connections stay small.
    """
    if conn.dialect.name != "sqlite":
        yield
        return
    before = conn.exec_driver_sql("PRAGMA cache_size").scalar()
    conn.exec_driver_sql(f"PRAGMA cache_size = -{int(kib)}")
    try:
        yield
    finally:
        conn.exec_driver_sql(f"PRAGMA cache_size = {int(before)}")


@contextmanager
def _deferred_search_index(conn: sa.Connection, plan: _Plan, ids: list[int]) -> Iterator[None]:
    """On SQLite, index the batch's search texts with one INSERT ... SELECT after the rows are in.

    The FTS5 trigger indexes row by row, interleaved with the table writes, several times slower
    than indexing the same rows in one statement afterwards. The trigger is dropped and recreated
    inside the batch's transaction (SQLite DDL is transactional), so no other connection ever sees
    the table without it and a rolled-back batch leaves it as it was.
    """
    if conn.dialect.name != "sqlite" or not plan.search_paths or len(ids) < 50:
        yield
        return
    fts = fts_table_name(plan.ent.name)
    trigger = f"{fts}_ai"
    exists = conn.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?", (trigger,)
    ).scalar()
    if exists is None:  # no index to maintain (or a layout this code does not know): leave it alone
        yield
        return
    conn.exec_driver_sql(f'DROP TRIGGER "{trigger}"')
    yield
    # FTS5 gathers new terms in memory and writes them out as a segment whenever that buffer is
    # full; with its default 1 MB a batch's trigrams became dozens of small segments, merged again
    # and again. A bigger buffer for the batch: a quarter less time indexing a million leads, and
    # the same search speed (fewer, larger segments). Back to the default for ordinary writes.
    conn.exec_driver_sql(f"INSERT INTO \"{fts}\"(\"{fts}\", rank) VALUES ('hashsize', {FTS_BATCH_HASH_BYTES})")
    conn.exec_driver_sql(
        f'INSERT INTO "{fts}"(rowid, {SEARCH_COLUMN}) SELECT id, {SEARCH_COLUMN} FROM "{plan.ent.name}" '
        f"WHERE id BETWEEN ? AND ?",
        (min(ids), max(ids)),
    )
    conn.exec_driver_sql(f"INSERT INTO \"{fts}\"(\"{fts}\", rank) VALUES ('hashsize', {FTS_DEFAULT_HASH_BYTES})")
    conn.exec_driver_sql(exists)


def _reserve_ids(conn: sa.Connection, table: sa.Table, n: int) -> list[int]:
    """``n`` new ids for ``table``, taken before inserting so one executemany can write the rows.

    SQLite: the writer holds the database's write lock from BEGIN IMMEDIATE (RecordStore's write
    connections), so ``max(id) + 1 ...`` cannot be taken by anyone else before we commit.
    PostgreSQL: ``nextval`` of the id column's sequence, which is safe under concurrency.
    """
    if conn.dialect.name == "postgresql":
        seq = conn.execute(
            sa.select(sa.func.pg_get_serial_sequence(conn.dialect.identifier_preparer.quote(table.name), "id"))
        ).scalar()
        if seq is not None:
            return list(
                conn.execute(
                    sa.select(sa.func.nextval(seq)).select_from(sa.func.generate_series(1, n))
                ).scalars()
            )
    top = conn.execute(sa.select(sa.func.coalesce(sa.func.max(table.c.id), 0))).scalar_one()
    return list(range(top + 1, top + 1 + n))


class _RawInsert:
    """``INSERT`` through the driver's executemany, with the columns' own bind processing.

    SQLAlchemy's executemany spends most of its time building each parameter set; here each
    value goes through the same ``bind_processor`` of its column type (dates to SQLite text,
    JSON serialisation ...) and the driver gets plain tuples.
    """

    def __init__(self, conn: sa.Connection, table: sa.Table, columns: list[str]):
        dialect = conn.dialect
        self.conn, self.table, self.columns = conn, table, columns
        self.processors = [
            (i, proc)
            for i, c in enumerate(columns)
            if (proc := table.c[c].type.dialect_impl(dialect).bind_processor(dialect)) is not None
        ]
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        quote = dialect.identifier_preparer.quote
        self.sql = (
            f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in columns)}) "
            f"VALUES ({', '.join([mark] * len(columns))})"
        )

    def run(self, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows`` (dicts keyed by column name; missing keys are NULL)."""
        columns = self.columns
        try:  # rows with every column (create_many's): picked in C, one call per row
            pick = operator.itemgetter(*columns)
            values = [list(pick(row)) for row in rows] if len(columns) > 1 else [[row[columns[0]]] for row in rows]
        except KeyError:
            values = [[row.get(c) for c in columns] for row in rows]
        self.run_values(values)

    def run_values(self, rows: list[list[Any]]) -> None:
        """Insert ``rows`` given as lists of values in ``columns`` order (changed in place)."""
        params = []
        procs = self.processors
        last: dict[int, tuple[Any, Any]] = {}  # column -> (input, output): timestamps repeat row after row
        for values in rows:
            for i, proc in procs:
                value = values[i]
                if value is None:
                    continue
                seen = last.get(i)
                if seen is not None and seen[0] is value:
                    values[i] = seen[1]
                else:
                    values[i] = out = proc(value)
                    last[i] = (value, out)
            params.append(tuple(values))
        self.run_tuples(params)

    def bind(self, column: str, value: Any) -> Any:
        """``value`` as the driver gets it for ``column`` (its type's bind processing)."""
        i = self.columns.index(column)
        for j, proc in self.processors:
            if j == i and value is not None:
                return proc(value)
        return value

    def run_tuples(self, params: list[tuple[Any, ...]]) -> None:
        """Insert rows already bound for the driver (see :meth:`bind`), in ``columns`` order."""
        if not params:
            return
        if self.conn.dialect.name == "postgresql" and self.conn.dialect.driver == "psycopg":
            # psycopg's executemany is a round trip per row; COPY streams them all in one.
            quote = self.conn.dialect.identifier_preparer.quote
            cols = ", ".join(quote(c) for c in self.columns)
            cursor = self.conn.connection.driver_connection.cursor()
            with cursor.copy(f"COPY {quote(self.table.name)} ({cols}) FROM STDIN") as copy:
                for values in params:
                    copy.write_row(values)
            return
        self.conn.exec_driver_sql(self.sql, params)


__all__ = ["Outcome", "create_many"]
