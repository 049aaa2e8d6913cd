"""The import journal: every import batch, what it created and changed, and saved mappings.

Three plugin-owned tables (registered by :mod:`crmkit.plugins.import_export` through
``register_tables``, so ``crmkit migrate`` creates them):

- ``dataio_import``: one row per import (entity, file, mapping, options, status, counts, who);
- ``dataio_import_item``: written in the same transaction as the records of each batch: the ids
  it created (one row per batch) and, per updated record, the values it replaced and the version
  it left — which is what :func:`undo_import` needs to put everything back;
- ``dataio_mapping``: mappings saved under a name per entity, reusable from the admin and the CLI.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from crmkit.core.audit import encode
from crmkit.core.errors import CRMError, NotFound

if TYPE_CHECKING:
    from crmkit.app import CRM
    from crmkit.core.actors import Actor

IMPORTS = "dataio_import"
ITEMS = "dataio_import_item"
MAPPINGS = "dataio_mapping"
UNDO_BATCH = 500


@contextmanager
def _writing(crm: CRM) -> Iterator[sa.Connection]:
    """A write transaction that takes SQLite's write lock up front (as RecordStore's do)."""
    from crmkit.core.db import write_connection

    with write_connection(crm.engine) as conn, conn.begin():
        yield conn


def define_tables(metadata: sa.MetaData) -> list[sa.Table]:
    """The journal's tables on ``metadata`` (see the module docstring)."""
    imports = sa.Table(
        IMPORTS,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("entity", sa.String(64), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("file_path", sa.String(500)),
        sa.Column("format", sa.String(8)),
        sa.Column("encoding", sa.String(32)),
        sa.Column("status", sa.String(16), nullable=False),  # uploaded, running, done, failed, undone, ...
        sa.Column("dry_run", sa.Boolean, nullable=False, default=False),
        sa.Column("actor_id", sa.Integer),
        sa.Column("actor_name", sa.String(150)),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("mapping", sa.JSON),
        sa.Column("options", sa.JSON),
        sa.Column("total", sa.Integer, nullable=False, default=0),
        sa.Column("processed", sa.Integer, nullable=False, default=0),
        sa.Column("created", sa.Integer, nullable=False, default=0),
        sa.Column("updated", sa.Integer, nullable=False, default=0),
        sa.Column("failed", sa.Integer, nullable=False, default=0),
        sa.Column("error_path", sa.String(500)),
        sa.Column("message", sa.Text),
        sa.Column("undo_report", sa.JSON),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("undone_at", sa.DateTime(timezone=True)),
        sa.Index("ix_dataio_import_entity_id", "entity", "id"),
    )
    items = sa.Table(
        ITEMS,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("import_id", sa.Integer, sa.ForeignKey(f"{IMPORTS}.id", ondelete="CASCADE"), nullable=False),
        sa.Column("action", sa.String(8), nullable=False),  # create | update
        sa.Column("record_ids", sa.JSON),  # create: the ids of one batch
        sa.Column("record_id", sa.Integer),  # update: the record
        sa.Column("before", sa.JSON),  # update: the values it replaced (encoded as in the audit)
        sa.Column("version", sa.Integer),  # update: the version it left
        sa.Index("ix_dataio_import_item_import_id", "import_id", "id"),
    )
    mappings = sa.Table(
        MAPPINGS,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("entity", sa.String(64), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("columns", sa.JSON, nullable=False),
        sa.Column("owner_id", sa.Integer),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("entity", "name", name="uq_dataio_mapping_entity_name"),
    )
    return [imports, items, mappings]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def has_journal(crm: CRM) -> bool:
    """True when the import/export plugin's tables exist in this CRM (the plugin is on)."""
    return IMPORTS in crm.system_tables


def _t(crm: CRM, name: str) -> sa.Table:
    return crm.system_tables[name]


# ---------------------------------------------------------------------------------------------
# Imports
# ---------------------------------------------------------------------------------------------
def start(crm: CRM, *, entity: str, filename: str, actor: Actor, source: str, status: str = "running",
          file_path: str | None = None, fmt: str | None = None, encoding: str | None = None,
          mapping: Mapping[str, Any] | None = None, options: Mapping[str, Any] | None = None,
          total: int = 0, dry_run: bool = False) -> int:
    """Record a new import and return its id."""
    t = _t(crm, IMPORTS)
    with _writing(crm) as conn:
        return conn.execute(
            sa.insert(t).values(
                entity=entity, filename=filename[:255], file_path=file_path, format=fmt, encoding=encoding,
                status=status, dry_run=dry_run, actor_id=actor.id, actor_name=actor.display_name or actor.username,
                source=source, mapping=dict(mapping or {}), options=dict(options or {}), total=total,
                processed=0, created=0, updated=0, failed=0, created_at=_now(),
            ).returning(t.c.id)
        ).scalar_one()


def update(crm: CRM, import_id: int, **values: Any) -> None:
    """Change fields of an import row (status, counts, progress) in its own short transaction."""
    t = _t(crm, IMPORTS)
    with _writing(crm) as conn:
        conn.execute(sa.update(t).where(t.c.id == import_id).values(**values))


def get(crm: CRM, import_id: int) -> dict[str, Any]:
    """One import as a dict; NotFound when there is none."""
    t = _t(crm, IMPORTS)
    with crm.engine.connect() as conn:
        row = conn.execute(sa.select(t).where(t.c.id == import_id)).mappings().first()
    if row is None:
        raise NotFound(f"no import #{import_id}")
    return dict(row)


def recent(crm: CRM, *, entity: str | None = None, actor_id: int | None = None, limit: int = 50) -> list[dict]:
    """The latest imports (newest first), optionally of one entity or one person."""
    t = _t(crm, IMPORTS)
    stmt = sa.select(t).order_by(t.c.id.desc()).limit(limit)
    if entity:
        stmt = stmt.where(t.c.entity == entity)
    if actor_id is not None:
        stmt = stmt.where(t.c.actor_id == actor_id)
    with crm.engine.connect() as conn:
        return [dict(r) for r in conn.execute(stmt).mappings()]


def record_created(conn: sa.Connection, crm: CRM, import_id: int, ids: list[int]) -> None:
    """Journal the ids one batch created (same transaction as the records)."""
    if ids:
        conn.execute(sa.insert(_t(crm, ITEMS)).values(import_id=import_id, action="create", record_ids=ids))


def record_updated(conn: sa.Connection, crm: CRM, import_id: int, items: list[dict[str, Any]]) -> None:
    """Journal updated records: ``[{"record_id", "before": {field: old}, "version"}]``."""
    if items:
        conn.execute(
            sa.insert(_t(crm, ITEMS)),
            [{"import_id": import_id, "action": "update", "record_ids": None, **i} for i in items],
        )


def journal_before(old: Mapping[str, Any], new: Mapping[str, Any], fields: list[str]) -> dict[str, Any]:
    """The old values of ``fields`` that an update changed, encoded like the audit (JSON-safe)."""
    out = {}
    for name in fields:
        if encode(old.get(name)) != encode(new.get(name)):
            value = old.get(name)
            out[name] = value if isinstance(value, list | dict) else encode(value)
    return out


# ---------------------------------------------------------------------------------------------
# Undo
# ---------------------------------------------------------------------------------------------
@dataclass
class UndoReport:
    """What undoing an import did: records deleted and restored, and what could not be undone."""

    deleted: int = 0
    restored: int = 0
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"deleted": self.deleted, "restored": self.restored, "problems": self.problems[:200],
                "problem_count": len(self.problems)}


def undo_import(crm: CRM, import_id: int, actor: Actor,
                on_progress: Callable[[int, int], None] | None = None) -> UndoReport:
    """Undo an import: delete the records it created, restore the values it overwrote.

    Every step goes through RecordStore as ``actor`` (permissions, ``restrict`` references, hooks
    and audit apply). A record deleted or changed since the import is left as it is and reported
    (an update is reverted only while the record is still at the version the import left).
    """
    info = get(crm, import_id)
    if info["status"] == "undone":
        raise CRMError(f"import #{import_id} was already undone")
    if info["status"] == "running":
        raise CRMError(f"import #{import_id} is still running")
    if info["dry_run"]:
        raise CRMError(f"import #{import_id} was a dry run: there is nothing to undo")
    entity = info["entity"]
    t = _t(crm, ITEMS)
    with crm.engine.connect() as conn:
        items = [dict(r) for r in conn.execute(
            sa.select(t).where(t.c.import_id == import_id).order_by(t.c.id.desc())
        ).mappings()]
    report = UndoReport()
    updates = [i for i in items if i["action"] == "update"]
    created = [rid for i in items if i["action"] == "create" for rid in (i["record_ids"] or [])]
    total = len(updates) + len(created)
    done = 0
    store = crm.records
    for start_at in range(0, len(updates), UNDO_BATCH):
        with store.transaction(actor=actor, source="import") as tx:
            for item in updates[start_at : start_at + UNDO_BATCH]:
                _revert(tx, entity, item, report)
        done += len(updates[start_at : start_at + UNDO_BATCH])
        if on_progress:
            on_progress(done, total)
    created.sort(reverse=True)
    for start_at in range(0, len(created), UNDO_BATCH):
        chunk = created[start_at : start_at + UNDO_BATCH]
        with store.transaction(actor=actor, source="import") as tx:
            for rid in chunk:
                savepoint = tx.conn.begin_nested()
                try:
                    tx.delete(entity, rid)
                except NotFound:
                    savepoint.rollback()
                    report.problems.append(f"#{rid}: already deleted")
                    continue
                except CRMError as exc:
                    savepoint.rollback()
                    report.problems.append(f"#{rid}: {exc}")
                    continue
                savepoint.commit()
                report.deleted += 1
        done += len(chunk)
        if on_progress:
            on_progress(done, total)
    update(crm, import_id, status="undone", undone_at=_now(), undo_report=report.as_dict())
    return report


def _revert(tx: Any, entity: str, item: dict[str, Any], report: UndoReport) -> None:
    rid = item["record_id"]
    savepoint = tx.conn.begin_nested()
    try:
        tx.update(entity, rid, dict(item["before"] or {}), version=item["version"])
    except CRMError as exc:
        savepoint.rollback()
        status = getattr(exc, "status", 400)
        reason = "changed since the import, left as it is" if status == 409 else str(exc)
        if status == 404:
            reason = "deleted since the import"
        report.problems.append(f"#{rid}: {reason}")
        return
    savepoint.commit()
    report.restored += 1


# ---------------------------------------------------------------------------------------------
# Saved mappings
# ---------------------------------------------------------------------------------------------
def save_mapping(crm: CRM, entity: str, name: str, columns: Mapping[str, str | None], owner_id: int | None) -> None:
    """Save (or replace) the mapping ``name`` of ``entity``."""
    name = name.strip()[:100]
    if not name:
        raise CRMError("a saved mapping needs a name")
    t = _t(crm, MAPPINGS)
    with _writing(crm) as conn:
        found = conn.execute(sa.select(t.c.id).where(t.c.entity == entity, t.c.name == name)).scalar()
        values = {"columns": dict(columns), "owner_id": owner_id, "updated_at": _now()}
        if found is None:
            conn.execute(sa.insert(t).values(entity=entity, name=name, **values))
        else:
            conn.execute(sa.update(t).where(t.c.id == found).values(**values))


def load_mapping(crm: CRM, entity: str, name: str) -> dict[str, str | None]:
    """The saved mapping ``name`` of ``entity``; NotFound names the ones that exist."""
    t = _t(crm, MAPPINGS)
    with crm.engine.connect() as conn:
        found = conn.execute(sa.select(t.c.columns).where(t.c.entity == entity, t.c.name == name)).scalar()
    if found is None:
        names = ", ".join(m["name"] for m in mappings(crm, entity)) or "none"
        raise NotFound(f"no saved mapping {name!r} for {entity} (saved: {names})")
    return dict(found if isinstance(found, dict) else json.loads(found))


def mappings(crm: CRM, entity: str) -> list[dict[str, Any]]:
    """Saved mappings of ``entity``, by name."""
    t = _t(crm, MAPPINGS)
    with crm.engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            sa.select(t).where(t.c.entity == entity).order_by(t.c.name)
        ).mappings()]


__all__ = [
    "IMPORTS", "ITEMS", "MAPPINGS", "UndoReport", "define_tables", "get", "has_journal", "journal_before",
    "load_mapping", "mappings", "recent", "record_created", "record_updated", "save_mapping", "start",
    "undo_import", "update",
]
