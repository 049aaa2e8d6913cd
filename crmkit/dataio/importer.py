"""Importing a spreadsheet into an entity through RecordStore, in batches.

Every row is validated exactly like a record typed into the admin (``Tx.create_many`` /
``Tx.update``: coercion, required fields, references, uniqueness, plugin hooks, audit), and the
batch's records and its journal entry commit together. Bad rows do not stop the import: they are
written to an *error file* — the original columns plus ``_row`` (its row number in the file),
``_column`` and ``_error`` — which the user fixes and imports again (those three columns are
ignored on the way back in).

Cells are prepared before validation the way people fill spreadsheets: references by id
(``12``, ``#12``) or by title (``株式会社テスト`` for an account, a username for an owner),
several references separated by ``;``, enum options by value or label, dates and datetimes in the
importer's time zone. With an upsert key, a row whose key matches an existing record updates it
(blank cells keep the stored value unless ``blank="clear"``); otherwise it creates one.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import decimal
import gc
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from crmkit.core import deferred_indexes
from crmkit.core.errors import CRMError, PermissionDenied, ValidationError
from crmkit.dataio import journal
from crmkit.dataio.mapping import ERROR_COLUMNS, Column, map_columns
from crmkit.dataio.readers import Table
from crmkit.dataio.writers import FORMULA_START
from crmkit.plugins import PluginError, call_each

if TYPE_CHECKING:
    from crmkit.app import CRM
    from crmkit.core.actors import Actor
    from crmkit.core.catalog import Entity, Field

# Rows per batch when the caller does not fix it: the first batch is small (quick progress, and a
# file whose rows all fail says so at once), then each batch is sized to take about BATCH_SECONDS
# at the rate measured so far, up to MAX_BATCH. A batch is one write transaction: on SQLite other
# writers queue behind it, so it must stay short; within that, bigger batches are much cheaper per
# row at scale, because every random-key index (email, phone, duplicate keys) dirties about one
# page per row and a batch's commit writes each dirty page once (1,000,000 leads: 5,000-row
# batches took 16 % more CPU than 20,000-row ones).
FIRST_BATCH = 1000
MAX_BATCH = 50_000
BATCH_SECONDS = 3.0
IN_CHUNK = 500
MAX_KEPT_ERRORS = 200  # error rows kept in memory for the report; all of them go to the error file
USER_KEYS = ("username", "email", "display_name")


class ImportRefused(CRMError):
    """The import cannot start (unmapped columns, a bad upsert key ...); nothing was written."""

    status = 422


@dataclass
class RowError:
    """One rejected row: its number in the file, its cells, and the problems found."""

    row: int
    cells: list[Any]
    problems: list[tuple[str, str]]  # (column header or "", message)

    @property
    def columns(self) -> str:
        return ", ".join(dict.fromkeys(c for c, _m in self.problems if c))

    @property
    def message(self) -> str:
        return "; ".join(f"{c}: {m}" if c else m for c, m in self.problems)


@dataclass
class ImportResult:
    """What an import did (or, in a dry run, would do)."""

    entity: str
    dry_run: bool
    total: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    columns: list[Column] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    error_path: Path | None = None
    import_id: int | None = None
    sample: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return self.created + self.updated + self.unchanged


@dataclass
class ImportOptions:
    """How to import: the entity, the mapping, the upsert key and the rest."""

    entity: str
    mapping: dict[str, str | None] | None = None
    upsert_key: str | None = None
    dry_run: bool = False
    blank: str = "keep"  # on update: "keep" the stored value for blank cells, or "clear" it
    batch_size: int | None = None  # rows per batch (one transaction); None: sized as it goes (_BatchSizer)
    tz: dt.tzinfo = dt.UTC
    lang: str = "en"
    limit: int | None = None  # only the first N data rows (admin preview)
    sample: int = 0  # keep the first N prepared rows for a preview


class Importer:
    """Runs one import of a :class:`Table` into an entity as an actor."""

    def __init__(
        self,
        crm: CRM,
        actor: Actor,
        options: ImportOptions,
        *,
        source: str = "import",
        errors_to: Path | None = None,
        import_id: int | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ):
        if options.entity not in crm.catalog:
            raise ImportRefused(f"no entity {options.entity!r}")
        if options.blank not in ("keep", "clear"):
            raise ImportRefused("blank must be 'keep' or 'clear'")
        self.crm, self.actor, self.options = crm, actor, options
        self.entity: Entity = crm.catalog[options.entity]
        self.source = source
        self.errors_to = errors_to
        self.import_id = import_id
        self.on_progress = on_progress
        self.store = crm.records

    # -- set-up ----------------------------------------------------------------------------------
    def plan(self, header: list[str]) -> list[Column]:
        """Map the header; raise ImportRefused naming every column that maps to nothing."""
        columns = map_columns(self.entity, header, self.options.mapping)
        unmapped = [c for c in columns if c.problem]
        if unmapped:
            listed = "; ".join(f"{c.header!r} ({c.reason})" for c in unmapped)
            raise ImportRefused(
                f"{len(unmapped)} column(s) map to no field: {listed}. Map them to a field or ignore them."
            )
        if not any(c.field for c in columns):
            raise ImportRefused("no column maps to a field of " + self.entity.name)
        key = self.options.upsert_key
        if key is not None:
            f = self.entity.fields.get(key)
            if f is None or f.is_many or f.type in ("json", "address", "multi_enum", "password", "file", "image"):
                raise ImportRefused(f"{key!r} cannot be an upsert key of {self.entity.name}")
            if key not in {c.field for c in columns}:
                raise ImportRefused(f"the upsert key {key!r} is not one of the mapped columns")
        return columns

    # -- running ---------------------------------------------------------------------------------
    def run(self, table: Table) -> ImportResult:
        """Import every data row of ``table``; returns the counts and the rejected rows."""
        opts = self.options
        columns = self.plan(table.header)
        if not opts.dry_run and not self.store.can(self.actor, "create", self.entity.name) and not (
            opts.upsert_key or "id" in {c.field for c in columns}
        ):
            raise PermissionDenied(f"you may not create {self.entity.name} records")
        result = ImportResult(self.entity.name, opts.dry_run, columns=columns)
        result.import_id = self.import_id
        key = opts.upsert_key or ("id" if "id" in {c.field for c in columns} else None)
        prep = _Preparer(self, columns, key)
        writer = _ErrorWriter(self.errors_to, table.header) if self.errors_to else None
        total = table.estimated_rows if opts.limit is None else min(opts.limit, table.estimated_rows)
        seen_rows = 0
        sizer = _BatchSizer(opts.batch_size)
        try:
            with _fewer_collections(), self._indexes_deferred(total, key, columns):
                for batch in _sized_batches(table.rows(), sizer, opts.limit):
                    seen_rows += len(batch)
                    started = perf_counter()
                    self._batch(batch, prep, result, writer)
                    sizer.took(len(batch), perf_counter() - started)
                    result.total = seen_rows
                    if self.on_progress:
                        self.on_progress(seen_rows, max(total, seen_rows))
        finally:
            if writer is not None:
                writer.close()
        if writer is not None and result.failed:
            result.error_path = self.errors_to
        elif self.errors_to is not None and self.errors_to.exists() and not result.failed:
            self.errors_to.unlink()
        return result

    def _indexes_deferred(self, incoming: int, key: str | None, columns: list[Column]) -> Any:
        """A large real import builds the secondary indexes of the tables it fills afterwards.

        See :mod:`crmkit.core.deferred_indexes`. The entity's table keeps the indexes the import
        reads through (its upsert key, titles of the entity itself) and the list's default sort;
        plugins name the other tables an import fills (``bulk_load_tables``).
        """
        if self.options.dry_run:
            return contextlib.nullcontext([])
        ent = self.entity
        keep = {key} if key else set()
        if ent.list.sort:
            keep.add(ent.list.sort[0].lstrip("-"))
        for c in columns:
            f = ent.fields.get(c.field or "")
            if f is not None and f.to == ent.name and ent.title_field:
                keep.add(ent.title_field)  # self-references are looked up by title
        tables: list[tuple[sa.Table, set[str]]] = [(self.crm.table(ent.name), keep)]
        for _plugin, names in call_each(self.crm.pm, "bulk_load_tables", crm=self.crm, entity=ent):
            for name in names:
                table = self.crm.metadata.tables.get(name)
                if table is not None and all(t is not table for t, _k in tables):
                    tables.append((table, set()))
        return deferred_indexes.deferred(self.crm, tables, incoming)

    def _batch(self, batch: list[tuple[int, list[Any]]], prep: _Preparer, result: ImportResult,
               writer: _ErrorWriter | None) -> None:
        rows = prep.prepare(batch)  # (number, cells, values | None, problems, existing id | None)
        if self.options.sample and len(result.sample) < self.options.sample:
            result.sample += [
                {"row": r.number, "values": r.values, "update": r.existing is not None, "problems": r.problems}
                for r in rows[: self.options.sample - len(result.sample)]
            ]
        try:
            if self.options.dry_run:
                try:
                    with self.store.transaction(actor=self.actor, source=self.source) as tx:
                        self._write(tx, rows)
                        raise _RollBack
                except _RollBack:
                    pass
            else:
                with self.store.transaction(actor=self.actor, source=self.source) as tx:
                    self._write(tx, rows)
        except PermissionDenied:
            raise
        except (CRMError, PluginError, sa.exc.SQLAlchemyError) as exc:
            # the batch as a whole failed (nothing of it was committed): every row says why
            for r in rows:
                r.counted = None
                if not r.problems:
                    r.problems.append(("", f"not imported: {exc}"))
        for r in rows:
            if r.counted == "created":
                result.created += 1
            elif r.counted == "updated":
                result.updated += 1
            elif r.counted == "unchanged":
                result.unchanged += 1
        for r in rows:
            if r.problems:
                result.failed += 1
                error = RowError(r.number, r.cells, r.problems)
                if len(result.errors) < MAX_KEPT_ERRORS:
                    result.errors.append(error)
                if writer is not None:
                    writer.write(error, self.options.lang)

    def _write(self, tx: Any, rows: list[_Row]) -> None:
        creates = [r for r in rows if not r.problems and r.existing is None]
        updates = [r for r in rows if not r.problems and r.existing is not None]
        if creates:
            outcomes = tx.create_many(self.entity.name, [r.values for r in creates], present=False)
            created_ids = []
            for r, outcome in zip(creates, outcomes, strict=True):
                if isinstance(outcome, ValidationError):
                    r.problems += [(r.header_of(e["field"]), e["message"]) for e in outcome.errors]
                else:
                    created_ids.append(outcome["id"])
                    r.counted = "created"
            if self.import_id is not None and not self.options.dry_run:
                journal.record_created(tx.conn, self.crm, self.import_id, created_ids)
        journal_items = []
        for r in updates:
            savepoint = tx.conn.begin_nested()
            events = len(tx.events)
            try:
                old = tx.get(self.entity.name, r.existing)
                changes = self._changes(old, r.values)
                if not changes:
                    savepoint.commit()
                    r.counted = "unchanged"
                    continue
                new = tx.update(self.entity.name, r.existing, changes)
            except ValidationError as exc:
                savepoint.rollback()
                del tx.events[events:]
                r.problems += [(r.header_of(e["field"]), e["message"]) for e in exc.errors]
                continue
            except (CRMError, PluginError) as exc:
                savepoint.rollback()
                del tx.events[events:]
                r.problems.append(("", str(exc)))
                continue
            savepoint.commit()
            r.counted = "updated"
            journal_items.append({
                "record_id": r.existing, "version": new["version"],
                "before": journal.journal_before(old, new, list(changes)),
            })
        if journal_items and self.import_id is not None and not self.options.dry_run:
            journal.record_updated(tx.conn, self.crm, self.import_id, journal_items)

    def _changes(self, old: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
        """The cells that would change the stored record (an unchanged row is not rewritten).

        A cell the field type refuses is kept, so that the update reports it like any other error.
        """
        from crmkit.core.audit import encode

        out = {}
        for name, value in values.items():
            f = self.entity.fields[name]
            try:
                coerced = self.crm.field_types[f.type].coerce(f, value)
            except (ValueError, TypeError):
                out[name] = value
                continue
            if f.is_many:
                now = sorted(i["id"] for i in coerced or [])
                if now != sorted(i["id"] for i in old.get(name) or []):
                    out[name] = value
            elif encode(coerced) != encode(old.get(name)):
                out[name] = value
        return out


_GC_LOCK = threading.Lock()
_GC_RUNNING: dict[str, Any] = {"imports": 0, "thresholds": None}  # what _fewer_collections restores
GC_IMPORT_THRESHOLD = 50_000


@contextmanager
def _fewer_collections() -> Iterator[None]:
    """Python's cyclic garbage collector run less often while an import runs.

    A batch holds tens of thousands of fresh dicts and lists (rows, records, parameters), none of
    them cyclic garbage; with the default thresholds the collector walked them over and over:
    about a sixth of an import's CPU at 300,000 rows, under 5 % with collections every 50,000
    allocations. The thresholds are process-wide, so concurrent imports share one change and
    the last to finish restores them.
    """
    with _GC_LOCK:
        if not _GC_RUNNING["imports"]:
            _GC_RUNNING["thresholds"] = gc.get_threshold()
            gc.set_threshold(GC_IMPORT_THRESHOLD, 20, 100)
        _GC_RUNNING["imports"] += 1
    try:
        yield
    finally:
        with _GC_LOCK:
            _GC_RUNNING["imports"] -= 1
            if not _GC_RUNNING["imports"]:
                gc.set_threshold(*_GC_RUNNING["thresholds"])


class _BatchSizer:
    """How many rows the next batch takes: fixed when asked for, else aimed at BATCH_SECONDS."""

    def __init__(self, fixed: int | None):
        self.fixed = fixed
        self.size = fixed or FIRST_BATCH

    def took(self, rows: int, seconds: float) -> None:
        """Learn from a finished batch: ``rows`` in ``seconds`` (at most 4x growth per batch)."""
        if self.fixed or rows < self.size:
            return  # a short (last) batch says little about the rate
        wanted = int(rows * BATCH_SECONDS / max(seconds, 1e-3))
        self.size = max(FIRST_BATCH, min(MAX_BATCH, wanted, self.size * 4))


def _sized_batches(rows: Iterator[tuple[int, list[Any]]], sizer: _BatchSizer,
                   limit: int | None) -> Iterator[list[tuple[int, list[Any]]]]:
    """``rows`` in lists of ``sizer.size`` (read again before each batch), stopping after ``limit``."""
    batch: list[tuple[int, list[Any]]] = []
    n = 0
    for item in rows:
        if limit is not None and n >= limit:
            break
        batch.append(item)
        n += 1
        if len(batch) >= sizer.size:
            yield batch
            batch = []
    if batch:
        yield batch


class _RollBack(Exception):
    """Raised inside a dry run's transaction so it rolls back (and no events fire)."""


@dataclass
class _Row:
    number: int
    cells: list[Any]
    values: dict[str, Any]
    problems: list[tuple[str, str]]
    headers: dict[str, str]
    existing: int | None = None
    counted: str | None = None

    def header_of(self, field_name: str) -> str:
        """The column a field's error belongs to (its header), or the field name itself."""
        if not field_name:
            return ""
        return self.headers.get(field_name.split(".")[0], field_name)


class _Preparer:
    """Turns raw cells into RecordStore values; resolves titles and upsert keys per batch."""

    def __init__(self, importer: Importer, columns: list[Column], key: str | None):
        self.importer = importer
        self.crm = importer.crm
        self.entity = importer.entity
        self.columns = [c for c in columns if c.field]
        self.headers = {c.field: c.header for c in self.columns}
        self.key = key
        self.blank_clear = importer.options.blank == "clear"
        self.tz = importer.options.tz
        self.seen_keys: dict[Any, int] = {}
        self.seen_unique: dict[str, dict[Any, int]] = {
            f.name: {} for f in self.entity.visible_fields if f.unique and f.name in self.headers
        }

    def prepare(self, batch: list[tuple[int, list[Any]]]) -> list[_Row]:
        # the cell conversion of each column is chosen once per batch, not once per cell
        fields = [(c.index, c.field, c.header, self._converter(self.entity.fields[c.field]),
                   _is_plain(self.entity.fields[c.field]))
                  for c in self.columns]
        blank_clear = self.blank_clear
        headers = self.headers
        rows: list[_Row] = []
        for number, cells in batch:
            values: dict[str, Any] = {}
            problems: list[tuple[str, str]] = []
            width = len(cells)
            for index, name, header, convert, plain in fields:
                raw = cells[index] if index < width else None
                if raw.__class__ is str:
                    if not raw.strip():
                        if blank_clear and name != "id":
                            values[name] = None
                        continue
                    if plain and raw[0] != "'":  # plain text comes back as it is (see _converter)
                        values[name] = raw
                        continue
                elif raw is None or (isinstance(raw, str) and not raw.strip()):
                    if blank_clear and name != "id":
                        values[name] = None
                    continue
                try:
                    values[name] = convert(raw)
                except ValueError as exc:
                    problems.append((header, str(exc)))
            rows.append(_Row(number, cells, values, problems, headers))
        self._resolve_titles(rows)
        self._within_file(rows)
        if self.key:
            self._match_existing(rows)
        for r in rows:
            if r.existing is not None:
                r.values.pop("id", None)
            else:
                if None in r.values.values():  # (rarely: blank cells with blank="clear")
                    r.values = {k: v for k, v in r.values.items() if v is not None or k == "id"}
                if "id" in r.values and not r.problems:
                    r.problems.append((self.headers["id"], f"no {self.entity.name} with id {r.values['id']}"))
        return rows

    # -- cells -----------------------------------------------------------------------------------
    def _converter(self, f: Field) -> Callable[[Any], Any]:
        """``raw cell -> value`` for one column: :meth:`_cell`, with the common text case inline."""
        if not _is_plain(f):
            return lambda raw: self._cell(f, raw)
        cell = self._cell

        def text(raw: Any) -> Any:
            # plain text that is not a quoted formula comes back as it is (see _cell's last lines)
            if raw.__class__ is str and not (raw[:1] == "'" and raw[1:2] in FORMULA_START and raw[1:2]):
                return raw
            return cell(f, raw)

        return text

    def _cell(self, f: Field, raw: Any) -> Any:
        t = f.type
        if t == "reference" or f.name == "id":
            return _Ref(raw) if not _is_id(raw) else _as_id(raw)
        if t == "references":
            parts = [p.strip() for p in str(raw).split(";") if p.strip()]
            return [_as_id(p) if _is_id(p) else _Ref(p) for p in parts]
        if t == "datetime":
            return _local_datetime(raw, self.tz)
        if t == "date":
            if isinstance(raw, dt.datetime):
                return raw.date()
            return raw if isinstance(raw, dt.date) else str(raw).strip()
        if t in ("integer", "decimal", "money", "percent"):
            return raw if isinstance(raw, int | decimal.Decimal) and not isinstance(raw, bool) else str(raw).strip()
        if t == "boolean":
            return raw if isinstance(raw, bool) else str(raw).strip()
        if isinstance(raw, dt.datetime):
            return raw.isoformat(sep=" ")
        if isinstance(raw, dt.date):
            return raw.isoformat()
        if isinstance(raw, str) and raw.startswith("'") and raw[1:2] in FORMULA_START and raw[1:2]:
            return raw[1:]  # the quote our exports put before formula-like text (csv_safe) is not data
        return raw if isinstance(raw, str) else str(raw)

    # -- references by title -----------------------------------------------------------------------
    def _resolve_titles(self, rows: list[_Row]) -> None:
        # only reference columns (and the id column) can hold a title to look up
        names = [c.field for c in self.columns
                 if c.field == "id" or self.entity.fields[c.field].type in ("reference", "references")]
        if not names:
            return
        wanted: dict[str, set[str]] = {}
        for r in rows:
            for name in names:
                value = r.values.get(name)
                if value is None:
                    continue
                f = self.entity.fields[name]
                items = value if isinstance(value, list) else [value]
                for item in items:
                    if isinstance(item, _Ref):
                        wanted.setdefault(f.to or "", set()).add(item.text)
        found = {target: self._lookup(target, titles) for target, titles in wanted.items() if target}
        for r in rows:
            for name in names:
                if name not in r.values:
                    continue
                value = r.values[name]
                f = self.entity.fields[name]
                if isinstance(value, _Ref):
                    resolved = self._pick(f, value, found, r)
                    r.values[name] = resolved
                elif isinstance(value, list) and any(isinstance(v, _Ref) for v in value):
                    ids = []
                    for v in value:
                        ids.append(self._pick(f, v, found, r) if isinstance(v, _Ref) else v)
                    r.values[name] = [i for i in ids if i is not None]
            if any(r.values.get(name) is _FAILED for name in names):
                r.values = {k: v for k, v in r.values.items() if v is not _FAILED}

    def _pick(self, f: Field, ref: _Ref, found: dict[str, dict[str, list[int]]], r: _Row) -> Any:
        ids = found.get(f.to or "", {}).get(ref.text, [])
        header = self.headers.get(f.name, f.name)
        target = self.crm.catalog[f.to] if f.to in self.crm.catalog else None
        label = target.text("en").lower() if target is not None else f.to
        if len(ids) == 1:
            return ids[0]
        if not ids:
            r.problems.append((header, f"no {label} named {ref.text!r}"))
        else:
            r.problems.append((header, f"{len(ids)} {label} records are named {ref.text!r}: use the id instead"))
        return _FAILED

    def _lookup(self, target: str, titles: set[str]) -> dict[str, list[int]]:
        """title -> ids of ``target`` records, one query per IN_CHUNK titles (usernames for users)."""
        if target not in self.crm.catalog:
            return {}
        ent = self.crm.catalog[target]
        table = self.crm.table(target)
        keys = [k for k in (USER_KEYS if target == "user" else (ent.title_field,)) if k in table.c]
        out: dict[str, list[int]] = {}
        values = sorted(titles)
        with self.crm.engine.connect() as conn:
            for key in keys:
                col = table.c[key]
                todo = [v for v in values if v not in out]
                for start in range(0, len(todo), IN_CHUNK):
                    chunk = todo[start : start + IN_CHUNK]
                    for rid, title in conn.execute(sa.select(table.c.id, col).where(col.in_(chunk))):
                        out.setdefault(str(title), []).append(rid)
        return out

    # -- duplicates inside the file and upsert keys ------------------------------------------------
    def _within_file(self, rows: list[_Row]) -> None:
        for name, seen in self.seen_unique.items():
            f = self.entity.fields[name]
            for r in rows:
                value = r.values.get(name)
                if value is None or r.problems:
                    continue
                norm = _key_of(f, value)
                if norm in seen:
                    r.problems.append((self.headers[name], f"same value as row {seen[norm]} of this file"))
                else:
                    seen[norm] = r.number

    def _match_existing(self, rows: list[_Row]) -> None:
        f = self.entity.fields[self.key]
        header = self.headers[self.key]
        keyed: dict[Any, list[_Row]] = {}
        for r in rows:
            value = r.values.get(self.key)
            if value is None or r.problems:
                continue
            try:
                value = self.crm.field_types[f.type].coerce(f, value) if f.name != "id" else value
            except ValueError as exc:
                r.problems.append((header, str(exc)))
                continue
            norm = _key_of(f, value)
            if norm in self.seen_keys and f.name not in self.seen_unique:
                r.problems.append((header, f"same {f.text('en').lower()} as row {self.seen_keys[norm]} of this file"))
                continue
            self.seen_keys[norm] = r.number
            keyed.setdefault(norm, []).append(r)
        if not keyed:
            return
        table = self.crm.table(self.entity.name)
        col = table.c[self.key]
        folded = f.type == "email"
        expr = sa.func.lower(col) if folded else col
        matches: dict[Any, list[int]] = {}
        keys = list(keyed)
        with self.crm.engine.connect() as conn:
            for start in range(0, len(keys), IN_CHUNK):
                chunk = keys[start : start + IN_CHUNK]
                for rid, value in conn.execute(sa.select(table.c.id, col).where(expr.in_(chunk))):
                    matches.setdefault(_key_of(f, value), []).append(rid)
        for norm, group in keyed.items():
            ids = matches.get(norm, [])
            for r in group:
                if len(ids) == 1:
                    r.existing = ids[0]
                elif len(ids) > 1:
                    r.problems.append(
                        (header, f"{len(ids)} existing records have this {f.text('en').lower()}: cannot choose one")
                    )


def _is_plain(f: Field) -> bool:
    """Whether :meth:`_Preparer._cell` treats the field's cells as text (no references, numbers, dates ...)."""
    return f.name != "id" and f.type not in ("reference", "references", "datetime", "date", "integer", "decimal",
                                             "money", "percent", "boolean")


class _Ref:
    """A reference cell given as a title, to resolve per batch."""

    __slots__ = ("text",)

    def __init__(self, text: Any):
        self.text = str(text).strip()


_FAILED = object()


def _is_id(raw: Any) -> bool:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return True
    text = str(raw).strip()
    return text.lstrip("#").isdigit() and (text.startswith("#") or text.isdigit())


def _as_id(raw: Any) -> int:
    return int(str(raw).strip().lstrip("#"))


def _key_of(f: Field, value: Any) -> Any:
    """Keys compare like people expect: e-mail addresses case-insensitively."""
    if f.type == "email" and isinstance(value, str):
        return value.lower()
    return value


def _local_datetime(raw: Any, tz: dt.tzinfo) -> Any:
    """A naive date and time in a spreadsheet means the importer's local time, not UTC."""
    value = raw
    if isinstance(raw, str):
        text = raw.strip().replace("/", "-")
        try:
            value = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
        except ValueError:
            return raw  # the field type reports it
    elif isinstance(raw, dt.date) and not isinstance(raw, dt.datetime):
        value = dt.datetime(raw.year, raw.month, raw.day)
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return value


class _ErrorWriter:
    """The error file: the original columns of each rejected row plus ``_row``, ``_column``, ``_error``."""

    def __init__(self, path: Path, header: list[str]):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fh = path.open("w", encoding="utf-8-sig", newline="")
        self.writer = csv.writer(self.fh, lineterminator="\r\n")
        self.width = len([h for h in header if h not in ERROR_COLUMNS])
        keep = [i for i, h in enumerate(header) if h not in ERROR_COLUMNS]
        self.keep = keep
        self.writer.writerow([header[i] for i in keep] + list(ERROR_COLUMNS))

    def write(self, error: RowError, lang: str) -> None:
        from crmkit.web.forms import translate_message

        cells = [_plain(error.cells[i]) if i < len(error.cells) else "" for i in self.keep]
        message = "; ".join(
            f"{c}: {translate_message(m, lang)}" if c else translate_message(m, lang) for c, m in error.problems
        )
        self.writer.writerow(cells + [error.row, error.columns, message])

    def close(self) -> None:
        self.fh.close()


def _plain(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def error_file_text(path: Path) -> str:
    """The error file's text (tests and the admin read it back)."""
    return path.read_text(encoding="utf-8-sig")


__all__ = ["ImportOptions", "ImportRefused", "ImportResult", "Importer", "RowError", "error_file_text"]
