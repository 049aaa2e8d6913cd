"""Generate SQLAlchemy Core tables from the Catalog.

One table per entity (named after it, columns named after fields), one link table per
many-to-many field, indexes derived from the schema (list sort and filters, unique, references),
and a normalised ``search_text`` column with a trigram index: FTS5 on SQLite, pg_trgm on PostgreSQL.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa

from crmkit.core.catalog import Catalog, Entity, Field
from crmkit.core.fieldtypes import FieldTypeRegistry

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s",
    "pk": "pk_%(table_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
}
ON_DELETE = {"restrict": "RESTRICT", "cascade": "CASCADE", "set_null": "SET NULL"}
SEARCH_COLUMN = "search_text"


def short_name(name: str, limit: int = 60) -> str:
    """Keep generated names under PostgreSQL's 63-byte limit, stable and unique (hash suffix)."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9]}_{digest}"


def fts_table_name(entity: str) -> str:
    """Name of the SQLite FTS5 index table of an entity's search text."""
    return f"{entity}__fts"


def link_table_name(entity: str, field: str) -> str:
    """Name of the link table of a many-to-many field."""
    return f"{entity}__{field}"


@dataclass(frozen=True)
class Schema:
    """The generated MetaData plus lookups by entity name."""

    metadata: sa.MetaData
    tables: dict[str, sa.Table]
    link_tables: dict[tuple[str, str], sa.Table]

    def table(self, entity: str) -> sa.Table:
        return self.tables[entity]


def _column_for(field: Field, types: FieldTypeRegistry, catalog: Catalog) -> sa.Column | None:
    ftype = types[field.type]
    sa_type = ftype.column(field)
    if sa_type is None:
        return None
    args: list = []
    if field.type == "reference" and field.to:
        args.append(
            sa.ForeignKey(f"{field.to}.id", ondelete=ON_DELETE[field.on_delete], use_alter=True)
        )
    # NOT NULL only where every row is guaranteed a value: required fields can be added to a
    # table full of data later, so the database keeps them nullable and RecordStore enforces them.
    return sa.Column(field.name, sa_type, *args, nullable=True, comment=None)


def _system_columns(entity: Entity) -> list[sa.Column]:
    cols = [
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.Integer, sa.ForeignKey("user.id", ondelete="SET NULL", use_alter=True)),
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),
    ]
    if entity.ownable:
        cols += [
            sa.Column("owner", sa.Integer, sa.ForeignKey("user.id", ondelete="SET NULL", use_alter=True)),
            sa.Column("team", sa.Integer, sa.ForeignKey("team.id", ondelete="SET NULL", use_alter=True)),
        ]
    if entity.search_paths:
        cols.append(sa.Column(SEARCH_COLUMN, sa.Text, nullable=True))
    return cols


def index_plan(entity: Entity) -> list[tuple[tuple[str, ...], bool]]:
    """The (columns, unique) indexes an entity gets, derived from its schema, deduplicated.

    Sorts (default, views, sortable columns) get ``(column, id)`` so keyset pagination is an index
    range scan; filters, references,
    owner/team (permission scopes) and ``index: true`` get single-column indexes.
    """
    plan: list[tuple[tuple[str, ...], bool]] = []

    def add(cols: Iterable[str], unique: bool = False) -> None:
        cols = tuple(cols)
        if any(c not in entity.fields or entity.fields[c].is_many for c in cols):
            return  # dotted paths and link-table fields have no column here
        for i, (have, u) in enumerate(plan):
            if have == cols:
                plan[i] = (have, u or unique)
                return
            if not unique and have[: len(cols)] == cols:
                return  # an existing index already starts with these columns
        plan.append((cols, unique))

    for f in entity.user_fields:
        if f.unique:
            add([f.name], unique=True)
    # Every order a list page can ask for is an index range scan: the default sort, each view's
    # sort and each sortable column, as (column, id) so keyset pagination needs no sort step.
    for sort in (entity.list.sort, *(v.sort for v in entity.list.views if v.sort)):
        col = sort[0].lstrip("-") if sort else "id"
        if col != "id":
            add([col, "id"])
    for col in entity.sortable_columns:
        if col != "id":
            add([col, "id"])
    for f in entity.user_fields:
        if f.type == "reference" or f.spec.get("index"):
            add([f.name])
    for name in entity.list.filters:
        add([name])
    if entity.ownable:
        add(["owner"])
        add(["team"])
    for ix in entity.indexes:
        add(ix)
    return plan


def build_schema(catalog: Catalog, types: FieldTypeRegistry, metadata: sa.MetaData | None = None) -> Schema:
    """Add every entity's table (and link tables) to ``metadata`` and return the lookups."""
    md = metadata if metadata is not None else sa.MetaData(naming_convention=NAMING_CONVENTION)
    tables: dict[str, sa.Table] = {}
    links: dict[tuple[str, str], sa.Table] = {}
    for entity in catalog:
        cols = _system_columns(entity)
        for f in entity.user_fields:
            col = _column_for(f, types, catalog)
            if col is not None:
                cols.append(col)
        table = sa.Table(entity.table_name, md, *cols)
        for cols_, unique in index_plan(entity):
            name = short_name(("uq_" if unique else "ix_") + entity.table_name + "_" + "_".join(cols_))
            sa.Index(name, *[table.c[c] for c in cols_], unique=unique)
        if entity.search_paths:
            for ddl in search_ddl(entity.name):
                sa.event.listen(table, "after_create", ddl)
        tables[entity.name] = table
    for entity in catalog:
        for f in entity.user_fields:
            if f.is_many and f.to:
                links[(entity.name, f.name)] = _link_table(md, entity, f, types, catalog)
    return Schema(md, tables, links)


def search_index_name(entity: str) -> str:
    """Name of the PostgreSQL trigram index over an entity's search text."""
    return short_name(f"ix_{entity}_{SEARCH_COLUMN}_trgm")


def postgresql_search_ddl(entity: str) -> list[str]:
    """A trigram GIN index: ``search_text LIKE '%...%'`` becomes an index lookup on PostgreSQL."""
    return [
        "CREATE EXTENSION IF NOT EXISTS pg_trgm",
        f'CREATE INDEX IF NOT EXISTS "{search_index_name(entity)}" ON "{entity}" '
        f"USING gin ({SEARCH_COLUMN} gin_trgm_ops)",
    ]


def search_ddl(entity: str) -> list[sa.DDL]:
    """Dialect-specific search index DDL, run after the entity's table is created.

    Kept out of the MetaData's Index objects because SQLite needs a virtual table and triggers
    instead of an index; migrations call :func:`sqlite_search_ddl`/:func:`postgresql_search_ddl`.
    """
    out = [sa.DDL(stmt).execute_if(dialect="sqlite") for stmt in sqlite_search_ddl(entity)]
    out += [sa.DDL(stmt).execute_if(dialect="postgresql") for stmt in postgresql_search_ddl(entity)]
    return out


def is_search_object(name: str | None) -> bool:
    """True for the search index objects this module creates outside the MetaData."""
    return bool(name) and (name.endswith("_trgm") or "__fts" in name)


def _link_table(md: sa.MetaData, entity: Entity, f: Field, types: FieldTypeRegistry, catalog: Catalog) -> sa.Table:
    name = link_table_name(entity.name, f.name)
    cols: list = [
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("source_id", sa.Integer, sa.ForeignKey(f"{entity.name}.id", ondelete="CASCADE"), nullable=False),
        sa.Column("target_id", sa.Integer, sa.ForeignKey(f"{f.to}.id", ondelete="CASCADE"), nullable=False),
    ]
    for tname, tdef in (f.spec.get("through") or {}).items():
        tfield = Field(tname, tdef.get("type", "string"), {"en": tname, "ja": tname}, tdef)
        col = _column_for(tfield, types, catalog)
        if col is not None:
            cols.append(col)
    table = sa.Table(name, md, *cols)
    sa.Index(short_name(f"uq_{name}_source_id_target_id"), table.c.source_id, table.c.target_id, unique=True)
    sa.Index(short_name(f"ix_{name}_target_id"), table.c.target_id)
    return table


def sqlite_search_ddl(entity: str) -> list[str]:
    """Statements that create the FTS5 trigram index over ``entity.search_text`` and keep it in sync.

    An external-content FTS5 table stores only the index, and triggers mirror every write, so a
    substring search is an index lookup without storing the text twice.
    """
    fts = fts_table_name(entity)
    col = SEARCH_COLUMN
    return [
        f'CREATE VIRTUAL TABLE IF NOT EXISTS "{fts}" USING fts5({col}, content=\'{entity}\', '
        f"content_rowid='id', tokenize='trigram')",
        f'CREATE TRIGGER IF NOT EXISTS "{fts}_ai" AFTER INSERT ON "{entity}" BEGIN '
        f'INSERT INTO "{fts}"(rowid, {col}) VALUES (new.id, new.{col}); END',
        f'CREATE TRIGGER IF NOT EXISTS "{fts}_ad" AFTER DELETE ON "{entity}" BEGIN '
        f'INSERT INTO "{fts}"("{fts}", rowid, {col}) VALUES (\'delete\', old.id, old.{col}); END',
        f'CREATE TRIGGER IF NOT EXISTS "{fts}_au" AFTER UPDATE OF {col} ON "{entity}" BEGIN '
        f'INSERT INTO "{fts}"("{fts}", rowid, {col}) VALUES (\'delete\', old.id, old.{col}); '
        f'INSERT INTO "{fts}"(rowid, {col}) VALUES (new.id, new.{col}); END',
    ]


def drop_sqlite_search_ddl(entity: str) -> list[str]:
    """Statements that remove an entity's FTS5 index and triggers (before a batch table rebuild)."""
    fts = fts_table_name(entity)
    return [f'DROP TRIGGER IF EXISTS "{fts}_{s}"' for s in ("ai", "ad", "au")] + [f'DROP TABLE IF EXISTS "{fts}"']


def rebuild_sqlite_search(entity: str) -> str:
    """Statement that re-reads all rows into the FTS5 index (after a rebuild or bulk load)."""
    fts = fts_table_name(entity)
    return f"INSERT INTO \"{fts}\"(\"{fts}\") VALUES ('rebuild')"
