"""Secondary indexes built once after a large load instead of row by row during it.

An import of a million leads into an (almost) empty table spends most of its database time in
the indexes, not the rows: every row goes into each of the table's secondary indexes, and an
index on a value that arrives in random order (e-mail, phone, company, the duplicate keys) dirties
about one page per row, so each batch's commit rewrites most of those indexes. Building an index
from a full table is one sort instead.

So when an import brings at least as many rows as a table already holds (and at least
``MIN_ROWS``), :func:`deferred` drops that table's non-unique secondary indexes — never a unique
one (a constraint), nor the ones the import itself reads through (its upsert key) or the list
page's default sort — and builds them again when the import ends, however it ends. Queries stay
correct meanwhile (an index only makes them faster). Which indexes are deferred is written to
``crmkit_deferred_index`` in the same transaction that drops them, so a process that dies
mid-import leaves a record, and :func:`restore` (run at the end of every import, by
``crm.startup()`` and by ``crmkit migrate``) builds them again.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import sqlalchemy as sa

from crmkit.core.db import write_connection

if TYPE_CHECKING:
    from crmkit.app import CRM

log = logging.getLogger(__name__)

DEFERRED_INDEX_TABLE = "crmkit_deferred_index"
MIN_ROWS = 50_000  # smaller imports keep every index: rebuilding would cost more than it saves


def define_deferred_index_table(md: sa.MetaData) -> sa.Table:
    """Add ``crmkit_deferred_index`` (one row per index dropped for a load) to ``md``."""
    return sa.Table(
        DEFERRED_INDEX_TABLE,
        md,
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("table_name", sa.String(128), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
    )


def deferrable(table: sa.Table, keep_columns: Iterable[str] = ()) -> list[sa.Index]:
    """The indexes of ``table`` a load may build afterwards: non-unique, not led by a kept column."""
    keep = set(keep_columns)
    return sorted(
        (ix for ix in table.indexes
         if not ix.unique and ix.name and not (ix.columns and next(iter(ix.columns)).name in keep)),
        key=lambda ix: str(ix.name),
    )


@contextmanager
def deferred(crm: CRM, tables: Sequence[tuple[sa.Table, Iterable[str]]], incoming: int) -> Iterator[list[str]]:
    """Load ``incoming`` rows with the deferrable indexes of each large-enough table dropped.

    ``tables`` pairs each table with the columns whose indexes must stay (see :func:`deferrable`).
    Yields the names of the indexes dropped (often none); on leaving, builds every deferred index
    of those tables again, also when the load failed.
    """
    names = [t.name for t, _keep in tables]
    dropped: list[str] = []
    if incoming >= MIN_ROWS:
        try:
            dropped = _drop(crm, tables, incoming)
        except sa.exc.DBAPIError as exc:  # e.g. crmkit_deferred_index is not there until `crmkit migrate`
            log.warning("import: keeping every index (%s)", exc)
    try:
        yield dropped
    finally:
        if dropped:
            restore(crm, names)


def _drop(crm: CRM, tables: Sequence[tuple[sa.Table, Iterable[str]]], incoming: int) -> list[str]:
    record = crm.system_tables[DEFERRED_INDEX_TABLE]
    dropped: list[str] = []
    with write_connection(crm.engine) as conn, conn.begin():
        inspector = sa.inspect(conn)
        already = set(conn.execute(sa.select(record.c.name)).scalars())
        now = dt.datetime.now(dt.UTC)
        for table, keep in tables:
            # a table already holding as many rows as the load brings keeps its indexes: adding to
            # them costs less than building them again over the whole table
            held = conn.execute(
                sa.select(sa.func.count()).select_from(sa.select(sa.literal(1)).select_from(table)
                                                       .limit(incoming).subquery())
            ).scalar_one()
            if held >= incoming:
                continue
            present = {ix["name"] for ix in inspector.get_indexes(table.name)}
            for ix in deferrable(table, keep):
                if ix.name in already or ix.name not in present:
                    continue  # deferred by another load, or not built (a migration is pending)
                conn.execute(sa.insert(record).values(name=ix.name, table_name=table.name, since=now))
                conn.execute(sa.schema.DropIndex(ix))
                dropped.append(str(ix.name))
    if dropped:
        log.info("import: building %d indexes after the load: %s", len(dropped), ", ".join(dropped))
    return dropped


def restore(crm: CRM, tables: Iterable[str] | None = None) -> list[str]:
    """Build again every deferred index (of ``tables``, or of all); returns their names.

    Each index is built in its own transaction, which also deletes its record, so other writers
    wait for one index at a time, not for all of them.
    """
    record = crm.system_tables[DEFERRED_INDEX_TABLE]
    wanted = None if tables is None else set(tables)
    try:
        with crm.engine.connect() as conn:
            pending = conn.execute(sa.select(record.c.name, record.c.table_name)).all()
    except sa.exc.DBAPIError:  # the table is not there yet: nothing was ever deferred
        return []
    by_name = {ix.name: ix for t in crm.metadata.tables.values() for ix in t.indexes}
    built: list[str] = []
    for name, table_name in pending:
        if wanted is not None and table_name not in wanted:
            continue
        try:
            with write_connection(crm.engine) as conn, conn.begin():
                ix = by_name.get(name)
                if ix is not None and ix.table is not None and ix.table.name == table_name:
                    conn.execute(sa.schema.CreateIndex(ix, if_not_exists=True))
                    built.append(name)
                conn.execute(sa.delete(record).where(record.c.name == name))
        except sa.exc.DBAPIError as exc:  # e.g. its column is not there until a pending migration
            log.warning("could not build the deferred index %s yet (crmkit migrate builds it): %s", name, exc)
    if built:
        log.info("built %d deferred indexes: %s", len(built), ", ".join(built))
    return built


__all__ = ["DEFERRED_INDEX_TABLE", "MIN_ROWS", "deferrable", "deferred", "define_deferred_index_table", "restore"]
