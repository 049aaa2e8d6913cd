"""Bring a live database in line with the Catalog, keeping every value by default (DESIGN §4).

The plan is the difference between the Catalog and two things: the **last applied catalog snapshot**
(a JSON row in ``crmkit_schema_snapshot``: what each field was, which columns were deprecated) and the
**live tables** (Alembic's ``compare_metadata`` plus the inspector). Steps run through Alembic's
``Operations`` (batch mode on SQLite for what ``ALTER TABLE`` cannot do) in ONE transaction, then
the new snapshot is stored in that same transaction, so a failed migration leaves nothing behind.

The SQL shown by ``crmkit migrate --plan`` is not predicted: the plan is executed inside a
transaction that is rolled back, and every statement the driver received is recorded per step.

Rules: additive changes apply; ``renamed_from`` renames (data kept); a field removed from the YAML
is deprecated (column and data kept) until ``prune``; a type change previews the rows its new type
refuses and, when there are any, needs ``allow_destructive`` (those values become NULL).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.operations import Operations

from crmkit.core import deferred_indexes
from crmkit.core.catalog import Entity, Field
from crmkit.core.db import write_connection
from crmkit.core.fieldtypes import InvalidValue
from crmkit.core.system_tables import SNAPSHOT_TABLE
from crmkit.core.tables import (
    NAMING_CONVENTION,
    SEARCH_COLUMN,
    drop_sqlite_search_ddl,
    fts_table_name,
    is_search_object,
    link_table_name,
    postgresql_search_ddl,
    rebuild_sqlite_search,
    search_index_name,
    sqlite_search_ddl,
)

if TYPE_CHECKING:
    from crmkit.app import CRM

__all__ = [
    "MigrationError",
    "Plan",
    "Step",
    "apply_migration",
    "catalog_snapshot",
    "load_snapshot",
    "plan_migration",
]

SNAPSHOT_FORMAT = 1
PREVIEW_ROWS = 5
# Steps that --prune itself consents to: it names exactly these drops, listed in the plan beforehand.
PRUNE_KINDS = ("drop_column", "drop_table")
# Alembic diff kinds this module acts on (columns and tables are planned from the snapshot too).
_HANDLED_DIFFS = ("add_index", "remove_index", "add_fk", "remove_fk", "add_column", "remove_column")
# Serialises concurrent `crmkit migrate` runs on PostgreSQL (SQLite: BEGIN IMMEDIATE does it).
_PG_LOCK_KEY = 0x63726D6B  # "crmk"


class MigrationError(Exception):
    """A migration was refused or failed; the message says what and why. The database is unchanged."""


@dataclass
class Step:
    """One change of the plan, with the exact SQL it runs (filled by executing it)."""

    kind: str
    table: str
    description: str
    sql: list[str] = field(default_factory=list)
    destructive: bool = False
    preview: str | None = None
    action: Callable[[_Runner], None] | None = field(default=None, repr=False, compare=False)


@dataclass
class Plan:
    """The steps that bring the database in line with the Catalog, plus warnings."""

    steps: list[Step]
    warnings: list[str]
    dialect: str

    @property
    def is_empty(self) -> bool:
        return not self.steps

    @property
    def destructive(self) -> list[Step]:
        """Steps that can lose data."""
        return [s for s in self.steps if s.destructive]

    def render(self) -> str:
        """Human-readable plan: numbered steps with their SQL, previews, then warnings."""
        lines = [f"Migration plan ({self.dialect}): {len(self.steps)} step(s)." if self.steps
                 else f"Migration plan ({self.dialect}): no changes."]
        for i, step in enumerate(self.steps, 1):
            flag = " [DESTRUCTIVE]" if step.destructive else ""
            lines.append(f"{i:>3}. {step.kind} {step.table}{flag}: {step.description}")
            if step.preview:
                lines += [f"       ! {line}" for line in step.preview.splitlines()]
            for stmt in step.sql or ["-- (no SQL: recorded in the schema snapshot)"]:
                lines += [f"       {line}" for line in stmt.strip().splitlines()]
        if self.warnings:
            lines.append("Warnings:")
            lines += [f"  - {w}" for w in self.warnings]
        return "\n".join(lines)


# -- public API --------------------------------------------------------------------------------------


def plan_migration(crm: CRM, *, prune: bool = False, allow_destructive: bool = False) -> Plan:
    """The migration plan with its exact SQL; the database is left unchanged.

    The steps are executed in a transaction that is rolled back, so the SQL is what would run. A
    step that would fail is reported in the warnings (the plan stops there).
    """
    return _migrate(crm, prune=prune, allow_destructive=allow_destructive, commit=False)


def apply_migration(crm: CRM, *, prune: bool = False, allow_destructive: bool = False) -> Plan:
    """Apply the plan in one transaction and store the new catalog snapshot; return the plan.

    Raises :class:`MigrationError` (database unchanged) when a step needs ``allow_destructive``
    and it was not given, or when any step fails. Indexes an interrupted import left for later
    are among the missing indexes the plan creates; their records are cleared afterwards.
    """
    plan = _migrate(crm, prune=prune, allow_destructive=allow_destructive, commit=True)
    deferred_indexes.restore(crm)
    return plan


def catalog_snapshot(crm: CRM, dialect: sa.Dialect) -> dict[str, Any]:
    """The snapshot of the current Catalog (what the next migration compares against).

    Per entity its fields (type, column signature, renamed_from, deprecated, enum options), per
    table its columns. Deprecated and removed things are merged in by the migration itself.
    """
    entities: dict[str, Any] = {}
    for ent in crm.catalog:
        table = crm.schema.tables[ent.name]
        fields = {}
        for f in ent.user_fields:
            col = table.c.get(f.name)
            entry: dict[str, Any] = {
                "type": f.type,
                "column": _signature(col.type, dialect) if col is not None else None,
                "renamed_from": f.renamed_from,
                "deprecated": f.deprecated,
            }
            if f.options:
                entry["options"] = [o.value for o in f.options]
            fields[f.name] = entry
        entities[ent.name] = {"table": ent.table_name, "fields": fields}
    tables = {
        name: {"columns": {c.name: _signature(c.type, dialect) for c in t.columns}}
        for name, t in crm.metadata.tables.items()
    }
    return {"format": SNAPSHOT_FORMAT, "dialect": dialect.name, "entities": entities, "tables": tables}


# -- driver ----------------------------------------------------------------------------------------


def _migrate(crm: CRM, *, prune: bool, allow_destructive: bool, commit: bool) -> Plan:
    with _migration_connection(crm.engine) as conn:
        trans = conn.begin()
        try:
            if conn.dialect.name == "postgresql":
                # Per schema: migrations of different schemas in one database do not wait for each other.
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k, hashtext(current_schema()))"),
                             {"k": _PG_LOCK_KEY})
            planner = _Planner(crm, conn, prune=prune)
            plan, snapshot = planner.plan()
            refused = [s for s in plan.destructive if not _consented(s, prune, allow_destructive)]
            if refused and commit:
                raise MigrationError(_refusal(plan, refused))
            if refused:
                numbers = ", ".join(str(plan.steps.index(s) + 1) for s in refused)
                plan.warnings.append(f"step(s) {numbers} can lose data: applying needs --allow-destructive")
            runner = _Runner(crm, conn, planner)
            failure = runner.run(plan)
            if failure is not None:
                n, step, error = failure
                where = f"step {n} ({step.kind} {step.table}: {step.description})"
                if commit:
                    raise MigrationError(f"{where} failed, so nothing was applied:\n{error}")
                plan.warnings.append(f"{where} would fail, so this plan cannot be applied as it is: {error}")
            if commit:
                runner.check_foreign_keys()
                if plan.steps or snapshot != planner.old:
                    _store_snapshot(crm, conn, snapshot, plan)
                trans.commit()
            else:
                trans.rollback()
            return plan
        except BaseException:
            if trans.is_active:
                trans.rollback()
            raise


@contextmanager
def _migration_connection(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A write connection; on SQLite with foreign keys off for the migration.

    A batch rebuild drops and recreates a table: with foreign keys on, that DROP would cascade or
    set-null into child tables. The pragma is a no-op inside a transaction, so it is set on the
    DBAPI connection before BEGIN; ``PRAGMA foreign_key_check`` runs before commit instead.
    """
    conn = write_connection(engine)
    sqlite = conn.dialect.name == "sqlite"
    try:
        if sqlite:
            conn.connection.dbapi_connection.execute("PRAGMA foreign_keys=OFF")
        yield conn
    finally:
        if sqlite and not conn.invalidated:
            conn.connection.dbapi_connection.execute("PRAGMA foreign_keys=ON")
        conn.close()


def _consented(step: Step, prune: bool, allow_destructive: bool) -> bool:
    return allow_destructive or (prune and step.kind in PRUNE_KINDS)


def _refusal(plan: Plan, refused: list[Step]) -> str:
    lines = ["These steps can lose data and need --allow-destructive:"]
    for s in refused:
        n = plan.steps.index(s) + 1
        lines.append(f"  {n}. {s.kind} {s.table}: {s.description}")
        if s.preview:
            lines += [f"       {line}" for line in s.preview.splitlines()]
    return "\n".join(lines)


def _store_snapshot(crm: CRM, conn: sa.Connection, snapshot: dict[str, Any], plan: Plan) -> None:
    table = crm.system_tables[SNAPSHOT_TABLE]
    summary = "; ".join(f"{s.kind} {s.table}" for s in plan.steps)[:4000] or "snapshot only"
    conn.execute(table.insert().values(applied_at=dt.datetime.now(dt.UTC), catalog=snapshot, summary=summary))


def load_snapshot(conn: sa.Connection) -> dict[str, Any] | None:
    """The last applied catalog snapshot, or None on a database never migrated."""
    if not sa.inspect(conn).has_table(SNAPSHOT_TABLE):
        return None
    t = sa.table(SNAPSHOT_TABLE, sa.column("id"), sa.column("catalog", sa.JSON))
    row = conn.execute(sa.select(t.c.catalog).order_by(t.c.id.desc()).limit(1)).first()
    if row is None:
        return None
    value = row[0]
    return json.loads(value) if isinstance(value, str) else value


# -- helpers -----------------------------------------------------------------------------------


def _signature(type_: sa.types.TypeEngine, dialect: sa.Dialect) -> str:
    """The column type as the dialect spells it: ``VARCHAR(100)``, ``NUMERIC(18, 2)``."""
    return str(type_.compile(dialect=dialect))


def _q(conn: sa.Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote(name)


def _python_type(type_: sa.types.TypeEngine) -> type:
    try:
        return type_.python_type
    except NotImplementedError:
        return object


def _is_text(type_: sa.types.TypeEngine) -> bool:
    return isinstance(type_, sa.String) and not isinstance(type_, sa.Enum)


def _text_form(value: Any) -> str:
    """A value spelled so PostgreSQL's cast to its new type reads it back exactly."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _internal_table(name: str) -> bool:
    """Tables the migration never touches: SQLite internals, FTS5 index tables, batch leftovers."""
    return name.startswith(("sqlite_", "_alembic_tmp_")) or "__fts" in name


@dataclass
class _Conversion:
    """What a type change does to the rows: NULL the failing ones, rewrite some to canonical form."""

    failing: list[int]
    rewrites: list[tuple[int, Any]]
    new_type: sa.types.TypeEngine
    bind_type: sa.types.TypeEngine
    ddl: bool  # False when only the field type changed (string -> email): values only
    using: bool  # PostgreSQL needs USING CAST(...) unless text stays text


# -- planning ----------------------------------------------------------------------------------


class _Planner:
    """Works out the steps from the snapshot, the Catalog and the live database."""

    def __init__(self, crm: CRM, conn: sa.Connection, *, prune: bool):
        self.crm = crm
        self.conn = conn
        self.dialect = conn.dialect
        self.sqlite = conn.dialect.name == "sqlite"
        self.prune = prune
        self.old = load_snapshot(conn)
        self.insp = sa.inspect(conn)
        self.live: dict[str, dict[str, dict[str, Any]]] = {
            t: {c["name"]: c for c in self.insp.get_columns(t)}
            for t in self.insp.get_table_names()
            if not _internal_table(t)
        }
        self.metadata = crm.metadata
        self.steps: list[Step] = []
        self.warnings: list[str] = []
        self.new_tables: list[sa.Table] = []
        self.renamed: dict[tuple[str, str], str] = {}  # (table, new) -> old
        self.deprecated: dict[str, dict[str, str]] = {}  # table -> {column: signature}, after migration
        self.dropped_tables: set[str] = set()
        self.added_columns: set[tuple[str, str]] = set()
        self.renamed_tables: dict[str, str] = {}  # new -> old
        self.rebuilt: set[str] = set()

    # -- lookups
    def _old_entities(self) -> dict[str, Any]:
        return (self.old or {}).get("entities", {})

    def _old_tables(self) -> dict[str, Any]:
        return (self.old or {}).get("tables", {})

    def _old_field(self, entity: str, name: str) -> dict[str, Any] | None:
        return self._old_entities().get(entity, {}).get("fields", {}).get(name)

    def _entity_of(self, table: str) -> Entity | None:
        for ent in self.crm.catalog:
            if ent.table_name == table:
                return ent
        return None

    def add(self, kind: str, table: str, description: str, action: Callable[[_Runner], None] | None = None,
            *, destructive: bool = False, preview: str | None = None) -> Step:
        step = Step(kind, table, description, destructive=destructive, preview=preview, action=action)
        self.steps.append(step)
        return step

    # -- the plan, in the order it runs
    def plan(self) -> tuple[Plan, dict[str, Any]]:
        self._extension()
        self._renames()  # first: a renamed link table is not a new table
        self._create_tables()
        diffs = self._compare()
        self._drop_indexes(diffs)
        self._add_columns()
        self._type_changes()
        self._removed_columns()
        self._removed_tables()
        self._search_objects()
        self._add_indexes(diffs)
        self._foreign_keys(diffs)
        self._snapshot_only_changes()
        return Plan(self.steps, self.warnings, self.dialect.name), self._new_snapshot()

    def _extension(self) -> None:
        if self.sqlite or not any(e.search_paths for e in self.crm.catalog):
            return
        have = self.conn.execute(sa.text("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'")).first()
        if have is None:
            self.add("add_extension", "-", "Install pg_trgm (trigram search indexes)",
                     lambda r: r.exec("CREATE EXTENSION IF NOT EXISTS pg_trgm"))

    def _create_tables(self) -> None:
        self.new_tables = [t for t in self.metadata.sorted_tables if t.name not in self.live]
        if not self.new_tables:
            return
        steps = {}
        for t in self.new_tables:
            ent = self._entity_of(t.name)
            what = f"entity {ent.name}" if ent else ("link table" if "__" in t.name else "system table")
            extra = " with its search index" if ent and ent.search_paths else ""
            steps[t.name] = self.add("add_table", t.name, f"Create table {t.name} ({what}, "
                                     f"{len(t.columns)} columns){extra}")
        tables = list(self.new_tables)

        def create(r: _Runner) -> None:
            # create_all (not Table.create) so use_alter foreign keys and after_create search DDL run.
            with r.routed(steps):
                self.metadata.create_all(r.conn, tables=tables, checkfirst=False)

        first = steps[tables[0].name]
        first.action = create

    def _renames(self) -> None:
        for ent in self.crm.catalog:
            table = ent.table_name
            cols = self.live.get(table)
            if cols is None:
                continue
            for f in ent.user_fields:
                old = f.renamed_from
                if not old or old == f.name:
                    continue
                if f.is_many:
                    self._rename_link_table(ent, f, old)
                    continue
                if old in cols and f.name not in cols:
                    self.add("rename_column", table, f"Rename column {old} to {f.name} (data kept)",
                             lambda r, t=table, o=old, n=f.name: r.op.alter_column(t, o, new_column_name=n))
                    cols[f.name] = cols.pop(old)
                    self.renamed[(table, f.name)] = old
                elif old in cols and f.name in cols:
                    self.warnings.append(
                        f"{table}.{f.name} has renamed_from: {old}, but both columns exist; nothing renamed "
                        f"(the data of {old} stays in {old})."
                    )

    def _rename_link_table(self, ent: Entity, f: Field, old: str) -> None:
        old_name, new_name = link_table_name(ent.name, old), link_table_name(ent.name, f.name)
        if old_name in self.live and new_name not in self.live:
            self.add("rename_table", old_name, f"Rename link table {old_name} to {new_name} (links kept)",
                     lambda r: r.op.rename_table(old_name, new_name))
            self.live[new_name] = self.live.pop(old_name)
            self.renamed_tables[new_name] = old_name
            # Alembic compares before anything runs, so it cannot see the renamed table: align its
            # indexes here (their names follow the table name).
            target = self.metadata.tables[new_name]
            want = {ix.name for ix in target.indexes}
            for ix in self.insp.get_indexes(old_name):
                if ix["name"] not in want:
                    self.add("drop_index", new_name, f"Drop index {ix['name']} (named after the old table)",
                             lambda r, n=ix["name"], t=new_name: r.op.drop_index(n, table_name=t))
            have = {ix["name"] for ix in self.insp.get_indexes(old_name)}
            for ix in sorted(target.indexes, key=lambda i: i.name):
                if ix.name not in have:
                    self.add("add_index", new_name, f"Create index {ix.name}",
                             lambda r, i=ix: r.exec(sa.schema.CreateIndex(i)))

    def _compare(self) -> list[Any]:
        """Alembic's diff of indexes and foreign keys, on tables that exist on both sides."""
        both = {t for t in self.metadata.tables if t in self.live and t not in self.renamed_tables}

        def include_name(name: str | None, type_: str, parent: dict[str, Any]) -> bool:
            if type_ == "table":
                return name in both
            return not is_search_object(name)

        def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
            if type_ == "table":
                return name in both
            return not is_search_object(name)

        ctx = MigrationContext.configure(
            self.conn,
            opts={"compare_type": False, "include_name": include_name, "include_object": include_object,
                  "target_metadata": self.metadata},
        )
        flat: list[Any] = []
        for d in compare_metadata(ctx, self.metadata):
            flat += d if isinstance(d, list) else [d]
        for d in flat:
            if d[0] not in _HANDLED_DIFFS:  # never skip a difference silently
                self.warnings.append(f"not migrated automatically: {d[0]} {d[1:]}")
        return flat

    def _drop_indexes(self, diffs: list[Any]) -> None:
        for d in diffs:
            if d[0] != "remove_index":
                continue
            ix: sa.Index = d[1]
            table = ix.table.name
            self.add("drop_index", table, f"Drop index {ix.name} (no longer derived from the schema)",
                     lambda r, n=ix.name, t=table: r.op.drop_index(n, table_name=t))

    def _add_columns(self) -> None:
        for table in self.metadata.sorted_tables:
            cols = self.live.get(table.name)
            if cols is None:
                continue
            for col in table.columns:
                if col.name in cols:
                    continue
                fk = " (reference)" if col.foreign_keys else ""
                sig = _signature(col.type, self.dialect)
                self.add("add_column", table.name,
                         f"Add column {col.name} {sig}{fk}, nullable: existing rows keep their data",
                         lambda r, c=col: r.add_column(c))
                cols[col.name] = {"name": col.name, "type": col.type, "nullable": col.nullable}
                self.added_columns.add((table.name, col.name))

    def _type_changes(self) -> None:
        for ent in self.crm.catalog:
            table = self.metadata.tables[ent.table_name]
            live = self.live.get(table.name)
            if live is None or table in self.new_tables:
                continue
            for f in ent.user_fields:
                col = table.c.get(f.name)
                if col is None or f.name not in live:
                    continue
                old_name = self.renamed.get((table.name, f.name), f.name)
                old = self._old_field(ent.name, old_name)
                if old is None and old_name != f.name:
                    old = self._old_field(ent.name, f.name)
                if old is None:
                    continue
                sig = _signature(col.type, self.dialect)
                if old.get("column") == sig and old.get("type") in (f.type, None):
                    continue
                if old.get("column") is None:
                    continue  # had no column before (a many-to-many field): nothing to convert
                self._plan_conversion(ent, f, col, old, live[f.name]["type"])

    def _plan_conversion(self, ent: Entity, f: Field, col: sa.Column, old: dict[str, Any],
                         live_type: sa.types.TypeEngine) -> None:
        """Check every stored value with the new type's ``coerce``; plan NULLs and rewrites."""
        table = ent.table_name
        ftype = self.crm.field_types[f.type]
        new_type = col.type
        sig = _signature(new_type, self.dialect)
        # A new field type (text -> date, string -> enum) rewrites values into the new type's canonical
        # form; a resize (string(100) -> string(200)) leaves every value exactly as it is. PostgreSQL
        # can only take rewrites through a text column (then cast); other columns convert by CAST.
        rewrite = old.get("type") != f.type and (self.sqlite or _is_text(live_type))
        t = sa.table(table, sa.column("id", sa.Integer), sa.column(f.name, live_type))
        c = t.c[f.name]
        failing: list[tuple[int, Any, str]] = []
        rewrites: list[tuple[int, Any]] = []
        total = 0
        for rid, value in self.conn.execute(sa.select(t.c.id, c).where(c.is_not(None)).order_by(t.c.id)):
            total += 1
            try:
                new = ftype.coerce(f, value)
            except InvalidValue as exc:
                failing.append((rid, value, str(exc)))
                continue
            if new is None and not (isinstance(value, str) and not value.strip()):
                failing.append((rid, value, "has no value of the new type"))
            elif rewrite and new != value:
                rewrites.append((rid, new if self.sqlite or new is None else _text_form(new)))
        was = f"{old.get('type') or '?'} ({old.get('column')})"
        preview = None
        if failing:
            shown = "; ".join(f"id {rid}: {_short(v)} ({why})" for rid, v, why in failing[:PREVIEW_ROWS])
            more = f"; … {len(failing) - PREVIEW_ROWS} more" if len(failing) > PREVIEW_ROWS else ""
            preview = (f"{len(failing)} of {total} stored values cannot be converted to {f.type}: "
                       f"{shown}{more}.\nWith --allow-destructive these values become NULL.")
        description = f"Change {f.name} from {was} to {f.type} ({sig}): {total} stored value(s) checked"
        description += f", {len(failing)} would become NULL" if failing else ", all convert"
        conv = _Conversion(
            failing=[rid for rid, _, _ in failing],
            rewrites=rewrites,
            new_type=new_type,
            bind_type=new_type if self.sqlite else sa.String(),
            ddl=old.get("column") != sig,
            using=not (_is_text(live_type) and _is_text(new_type)),
        )
        self.add("alter_type", table, description, lambda r: r.alter_type(table, f.name, conv),
                 destructive=bool(failing), preview=preview)
        if self.sqlite and conv.ddl:
            self.rebuilt.add(table)

    def _removed_columns(self) -> None:
        old_tables = self._old_tables()
        for table in self.metadata.sorted_tables:
            live = self.live.get(table.name)
            if live is None:
                continue
            previously = set(old_tables.get(table.name, {}).get("deprecated_columns", {}))
            ent = self._entity_of(table.name)
            for name, info in list(live.items()):
                if name in table.c:
                    continue
                sig = _signature(info["type"], self.dialect)
                if self.prune:
                    self.add("drop_column", table.name,
                             f"Drop deprecated column {name} and its data (--prune)",
                             lambda r, t=table.name, c=name: r.drop_column(t, c), destructive=True)
                    if self.sqlite:
                        self.rebuilt.add(table.name)
                    del live[name]
                    continue
                self.deprecated.setdefault(table.name, {})[name] = sig
                nullable = info.get("nullable", True)
                if name in previously and nullable:
                    continue  # already deprecated and reported before
                what = f"field {ent.name}.{name}" if ent else f"column {name}"
                action = None
                if not nullable:
                    action = lambda r, t=table.name, c=name, ty=info["type"]: r.make_nullable(t, c, ty)  # noqa: E731
                    if self.sqlite:
                        self.rebuilt.add(table.name)
                self.add("deprecate_column", table.name,
                         f"Deprecate {what} (removed from the schemas): column and data kept, hidden"
                         f"{'; made nullable' if not nullable else ''}; `crmkit migrate --prune` drops it",
                         action)

    def _removed_tables(self) -> None:
        known = set(self._old_tables())
        gone = [t for t in self.live if t not in self.metadata.tables and t in known]
        if not gone:
            return
        if not self.prune:
            for t in sorted(gone):
                n = self.conn.execute(sa.select(sa.func.count()).select_from(sa.table(t))).scalar()
                self.warnings.append(f"table {t} is no longer in the schemas: kept with its {n} row(s); "
                                     "`crmkit migrate --prune` drops it")
            return
        # Children first: a link table references its entity's table.
        refs = {t: {fk["referred_table"] for fk in self.insp.get_foreign_keys(t)} for t in gone}
        ordered: list[str] = []
        remaining = set(gone)
        while remaining:
            free = sorted(t for t in remaining if not any(t in refs[o] for o in remaining if o != t))
            ordered += free or sorted(remaining)
            remaining -= set(free or remaining)
        for t in ordered:
            n = self.conn.execute(sa.select(sa.func.count()).select_from(sa.table(t))).scalar()
            self.add("drop_table", t, f"Drop table {t} of a removed entity and its {n} row(s) (--prune)",
                     lambda r, name=t: r.drop_table(name), destructive=True)
            self.dropped_tables.add(t)

    def _search_objects(self) -> None:
        for ent in self.crm.catalog:
            table = ent.table_name
            if table not in self.live or any(t.name == table for t in self.new_tables):
                continue
            want = bool(ent.search_paths)
            have = self._search_state(table)
            if want and have != "complete":
                how = "FTS5 trigram" if self.sqlite else "pg_trgm GIN"
                self.add("add_search_index", table, f"Create the search index of {table} ({how})",
                         lambda r, t=table: r.add_search(t))
                if table in self.live and SEARCH_COLUMN in self.live[table] and have == "none":
                    self.warnings.append(
                        f"{table}: rows saved before the search index existed get their search text "
                        "when they are next saved"
                    )
            elif not want and have != "none":
                self.add("drop_search_index", table, f"Drop the search index of {table} (no search fields)",
                         lambda r, t=table: r.drop_search(t))

    def _search_state(self, table: str) -> str:
        if self.sqlite:
            fts = fts_table_name(table)
            names = {fts, f"{fts}_ai", f"{fts}_ad", f"{fts}_au"}
            rows = self.conn.execute(
                sa.text("SELECT name FROM sqlite_master WHERE name IN (:a, :b, :c, :d)"),
                dict(zip("abcd", sorted(names), strict=True)),
            ).scalars().all()
            return "complete" if len(rows) == 4 else ("none" if not rows else "partial")
        row = self.conn.execute(
            sa.text("SELECT 1 FROM pg_indexes WHERE schemaname = current_schema() AND indexname = :n"),
            {"n": search_index_name(table)},
        ).first()
        return "complete" if row else "none"

    def _add_indexes(self, diffs: list[Any]) -> None:
        for d in diffs:
            if d[0] != "add_index":
                continue
            ix: sa.Index = d[1]
            cols = ", ".join(c.name for c in ix.columns)
            kind = "unique index" if ix.unique else "index"
            self.add("add_index", ix.table.name, f"Create {kind} {ix.name} on ({cols})",
                     lambda r, i=ix: r.exec(sa.schema.CreateIndex(i)))

    def _foreign_keys(self, diffs: list[Any]) -> None:
        for d in diffs:
            if d[0] not in ("add_fk", "remove_fk"):
                continue
            fkc: sa.ForeignKeyConstraint = d[1]
            table = fkc.table.name
            cols = [c.name for c in fkc.columns] if d[0] == "add_fk" else list(fkc.column_keys)
            if any(c not in self.metadata.tables[table].c for c in cols):
                continue  # a deprecated column keeps its foreign key
            if any((table, c) in self.added_columns for c in cols):
                continue  # created together with its column
            if self.sqlite:
                self.warnings.append(f"{table}.{', '.join(cols)}: foreign key differs from the schema; "
                                     "SQLite cannot change it in place (left as is)")
                continue
            if d[0] == "add_fk":
                self.add("add_foreign_key", table, f"Add foreign key {fkc.name} on ({', '.join(cols)})",
                         lambda r, c=fkc: r.exec(sa.schema.AddConstraint(c)))
            elif fkc.name:
                self.add("drop_foreign_key", table, f"Drop foreign key {fkc.name}",
                         lambda r, t=table, n=fkc.name: r.op.drop_constraint(n, t, type_="foreignkey"))

    def _snapshot_only_changes(self) -> None:
        """Changes that need no DDL but are recorded: enum options, fields deprecated in YAML."""
        if self.old is None:
            return
        for ent in self.crm.catalog:
            if ent.table_name not in self.live:
                continue
            for f in ent.user_fields:
                old = self._old_field(ent.name, self.renamed.get((ent.table_name, f.name), f.name))
                if old is None or old.get("removed"):
                    continue
                before, after = old.get("options") or [], [o.value for o in f.options]
                if before != after and f.options:
                    added = [v for v in after if v not in before]
                    removed = [v for v in before if v not in after]
                    parts = ([f"add {', '.join(added)}"] if added else []) + (
                        [f"remove {', '.join(removed)}"] if removed else [])
                    desc = f"Options of {f.name}: {'; '.join(parts) or 'reordered'} (no DDL)"
                    self.add("update_options", ent.table_name, desc)
                    if removed and f.name in self.live[ent.table_name]:
                        self._warn_removed_options(ent.table_name, f.name, removed)
                if bool(old.get("deprecated")) != f.deprecated:
                    state = "deprecated (hidden; column and data kept)" if f.deprecated else "in use again"
                    self.add("deprecate_column" if f.deprecated else "restore_column", ent.table_name,
                             f"Field {f.name} is {state} (no DDL)")

    def _warn_removed_options(self, table: str, column: str, removed: list[str]) -> None:
        t = sa.table(table, sa.column(column))
        query = sa.select(sa.func.count()).select_from(t).where(t.c[column].in_(removed))
        n = self.conn.execute(query).scalar()
        if n:
            self.warnings.append(f"{table}.{column}: {n} row(s) hold removed option(s) "
                                 f"{', '.join(removed)}; their values are kept")

    # -- the snapshot after this migration
    def _new_snapshot(self) -> dict[str, Any]:
        snap = catalog_snapshot(self.crm, self.dialect)
        old_entities, old_tables = self._old_entities(), self._old_tables()
        for table, cols in self.deprecated.items():
            snap["tables"][table]["deprecated_columns"] = dict(sorted(cols.items()))
            ent = self._entity_of(table)
            if ent is None:
                continue
            fields = snap["entities"][ent.name]["fields"]
            for name, sig in cols.items():
                prev = dict(old_entities.get(ent.name, {}).get("fields", {}).get(name) or {})
                entry = {"type": prev.get("type"), "column": sig, "renamed_from": prev.get("renamed_from"),
                         "deprecated": True, "removed": True}
                if prev.get("options"):
                    entry["options"] = prev["options"]
                fields[name] = entry
        for table in self.live:
            if table in self.metadata.tables or table in self.dropped_tables or table not in old_tables:
                continue
            snap["tables"][table] = {**old_tables[table], "removed": True}
            for name, ent in old_entities.items():
                if ent.get("table") == table and name not in snap["entities"]:
                    snap["entities"][name] = {**ent, "removed": True}
        return snap


# -- execution ---------------------------------------------------------------------------------


_SKIP_SQL = re.compile(r"^\s*(SELECT|PRAGMA|WITH|SHOW|BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE)\b", re.I)
_TABLE_SQL = re.compile(r'\b(?:TABLE|ON)\s+(?:IF\s+(?:NOT\s+)?EXISTS\s+)?"?([A-Za-z_][A-Za-z0-9_]*)"?', re.I)


class _Runner:
    """Runs the steps on one connection, recording each statement under the step that sent it."""

    def __init__(self, crm: CRM, conn: sa.Connection, planner: _Planner):
        self.crm = crm
        self.conn = conn
        self.sqlite = conn.dialect.name == "sqlite"
        self.planner = planner
        ctx = MigrationContext.configure(conn, opts={"target_metadata": crm.metadata})
        self.op = Operations(ctx)
        self.current: Step | None = None
        self.routes: dict[str, Step] | None = None
        self.fk_check_needed = False

    def run(self, plan: Plan) -> tuple[int, Step, str] | None:
        """Run every step; return (number, step, error) for a step that failed, or None."""
        sa.event.listen(self.conn, "before_cursor_execute", self._capture)
        try:
            for i, step in enumerate(plan.steps, 1):
                self.current = step
                if step.action is None:
                    continue
                try:
                    step.action(self)
                except (sa.exc.SQLAlchemyError, NotImplementedError) as exc:
                    orig = getattr(exc, "orig", None) or exc
                    return i, step, str(orig).strip()
            return None
        finally:
            sa.event.remove(self.conn, "before_cursor_execute", self._capture)
            self.current = None

    def _capture(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if _SKIP_SQL.match(statement):
            return
        text = statement.strip()
        if executemany and parameters:
            text += f"  -- executed for {len(parameters)} row(s)"
        step = self.current
        if self.routes is not None:
            for name in _TABLE_SQL.findall(statement):
                name = name[: -len("__fts")] if name.endswith("__fts") else name
                if name in self.routes:
                    step = self.current = self.routes[name]
                    break
        if step is not None:
            step.sql.append(text)

    @contextmanager
    def routed(self, routes: dict[str, Step]) -> Iterator[None]:
        """Attribute statements of a multi-table operation to the step of the table they name."""
        self.routes = routes
        try:
            yield
        finally:
            self.routes = None

    def exec(self, stmt: str | sa.schema.ExecutableDDLElement) -> None:
        self.conn.execute(sa.text(stmt) if isinstance(stmt, str) else stmt)

    # -- operations
    def add_column(self, col: sa.Column) -> None:
        table = col.table.name
        fks = [fk for fk in col.table.foreign_key_constraints if col.name in fk.column_keys]
        if self.sqlite and fks:
            # SQLite cannot ALTER in a constraint, but ADD COLUMN accepts an inline REFERENCES.
            fk = next(iter(fks[0].elements))
            spec = str(sa.schema.CreateColumn(col).compile(dialect=self.conn.dialect))
            ondelete = f" ON DELETE {fks[0].ondelete}" if fks[0].ondelete else ""
            name = f"CONSTRAINT {_q(self.conn, fks[0].name)} " if fks[0].name else ""
            self.exec(f"ALTER TABLE {_q(self.conn, table)} ADD COLUMN {spec} {name}REFERENCES "
                      f"{_q(self.conn, fk.column.table.name)} ({_q(self.conn, fk.column.name)}){ondelete}")
            return
        default = col.server_default.arg if isinstance(col.server_default, sa.DefaultClause) else None
        # A plain ADD COLUMN (nullable, no volatile default): PostgreSQL does not rewrite the table.
        bare = sa.Column(col.name, col.type, nullable=col.nullable, server_default=default)
        self.op.add_column(table, bare)
        for fkc in fks:
            self.exec(sa.schema.AddConstraint(fkc))

    def alter_type(self, table: str, column: str, conv: _Conversion) -> None:
        t = sa.table(table, sa.column("id", sa.Integer), sa.column(column, conv.bind_type))
        by_id = t.c.id == sa.bindparam("_id")
        if conv.failing:
            params = [{"_id": i} for i in conv.failing]
            self.conn.execute(t.update().where(by_id).values({column: None}), params)
        if conv.rewrites:
            self.conn.execute(
                t.update().where(by_id).values({column: sa.bindparam("_v", type_=conv.bind_type)}),
                [{"_id": i, "_v": v} for i, v in conv.rewrites],
            )
        if not conv.ddl:
            return
        if self.sqlite:
            self.sqlite_rebuild(table, types={column: conv.new_type})
            return
        # Text to wider text stays a catalog-only change; other conversions cast each value.
        using = f"CAST({_q(self.conn, column)} AS {_signature(conv.new_type, self.conn.dialect)})"
        self.op.alter_column(table, column, type_=conv.new_type,
                             postgresql_using=using if conv.using else None)

    def make_nullable(self, table: str, column: str, existing_type: sa.types.TypeEngine) -> None:
        if self.sqlite:
            self.sqlite_rebuild(table, nullable=[column])
        else:
            self.op.alter_column(table, column, nullable=True, existing_type=existing_type)

    def drop_column(self, table: str, column: str) -> None:
        if self.sqlite:
            self.sqlite_rebuild(table, drop=[column])
        else:
            self.op.drop_column(table, column)

    def drop_table(self, table: str) -> None:
        if self.sqlite:
            for stmt in drop_sqlite_search_ddl(table):
                self.exec(stmt)
            self.fk_check_needed = True
        self.op.drop_table(table)

    def add_search(self, table: str) -> None:
        if self.sqlite:
            for stmt in sqlite_search_ddl(table) + [rebuild_sqlite_search(table)]:
                self.exec(stmt)
        else:
            for stmt in postgresql_search_ddl(table):
                self.exec(stmt)

    def drop_search(self, table: str) -> None:
        if self.sqlite:
            for stmt in drop_sqlite_search_ddl(table):
                self.exec(stmt)
        else:
            self.exec(f"DROP INDEX IF EXISTS {_q(self.conn, search_index_name(table))}")

    def sqlite_rebuild(self, table: str, *, types: dict[str, sa.types.TypeEngine] | None = None,
                       nullable: list[str] = (), drop: list[str] = ()) -> None:
        """Alembic batch mode: copy the table into a new one with the change, keeping every row.

        ``copy_from`` is the live table with the new types already set, so the copy is a plain
        ``INSERT ... SELECT``: batch mode's own ``CAST`` would turn '2024-05-01' into 2024 when the
        target type has NUMERIC affinity (SQLite's DATE). Values were converted beforehand.
        """
        searched = self.conn.execute(
            sa.text("SELECT 1 FROM sqlite_master WHERE name = :n"), {"n": fts_table_name(table)}
        ).first() is not None
        if searched:  # the triggers go with the old table; the index is rebuilt from the copy
            for stmt in drop_sqlite_search_ddl(table):
                self.exec(stmt)
        reflected = sa.Table(table, sa.MetaData(naming_convention=NAMING_CONVENTION), autoload_with=self.conn)
        for name, type_ in (types or {}).items():
            reflected.c[name].type = type_
        with self.op.batch_alter_table(table, recreate="always", copy_from=reflected) as batch:
            for name in drop:
                batch.drop_column(name)
            for name in nullable:
                batch.alter_column(name, nullable=True, existing_type=reflected.c[name].type)
        if searched:
            for stmt in sqlite_search_ddl(table) + [rebuild_sqlite_search(table)]:
                self.exec(stmt)
        self.fk_check_needed = True

    def check_foreign_keys(self) -> None:
        """SQLite ran with foreign keys off: refuse to commit if a rebuild broke a reference."""
        if not (self.sqlite and self.fk_check_needed):
            return
        bad = self.conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        if bad:
            shown = ", ".join(f"{r[0]} rowid {r[1]} -> {r[2]}" for r in bad[:PREVIEW_ROWS])
            raise MigrationError(f"the migration would break {len(bad)} reference(s): {shown}")
