"""Spreadsheet import and export on top of RecordStore.

- :func:`import_file`: read a CSV (UTF-8, UTF-8 with BOM, UTF-16, Shift_JIS/CP932) or XLSX file,
  map its columns, validate every row like a form submission, import the good rows in batches,
  write the bad ones to an error file, and journal the batch so it can be undone.
- :func:`export_file`: write a list view (filters, search, columns; the actor's permissions and
  masks applied) to CSV or XLSX, page by page with flat memory.

The admin pages and the ``crmkit import`` / ``crmkit export`` commands
(:mod:`crmkit.plugins.import_export`) are thin layers over these two functions.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from crmkit.dataio import journal
from crmkit.dataio.exporter import Exporter, build_exporter, export_fields
from crmkit.dataio.importer import Importer, ImportOptions, ImportRefused, ImportResult, RowError
from crmkit.dataio.mapping import Column, map_columns
from crmkit.dataio.readers import ReadError, Table, open_table
from crmkit.dataio.writers import csv_chunks, write_csv, write_xlsx, xlsx_chunks

if TYPE_CHECKING:
    from crmkit.app import CRM
    from crmkit.core.actors import Actor


def import_file(
    crm: CRM,
    entity: str,
    path: str | Path,
    *,
    actor: Actor,
    mapping: Mapping[str, str | None] | None = None,
    mapping_name: str | None = None,
    upsert_key: str | None = None,
    dry_run: bool = False,
    blank: str = "keep",
    errors_to: str | Path | None = None,
    tz: dt.tzinfo | None = None,
    lang: str = "en",
    source: str = "import",
    filename: str | None = None,
    sheet: str | None = None,
    encoding: str | None = None,
    batch_size: int | None = None,
    limit: int | None = None,
    sample: int = 0,
    import_id: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> ImportResult:
    """Import ``path`` into ``entity`` as ``actor``; see the module docstring.

    ``mapping`` (header -> field, None to ignore a column) overrides ``mapping_name`` (a saved
    mapping), which overrides matching headers to field names and labels. With the import
    journal available (the import_export plugin is on), a real run is recorded under
    ``result.import_id`` and can be undone with :func:`crmkit.dataio.journal.undo_import`.
    Raises :class:`ReadError` (unreadable file) or :class:`ImportRefused` (unmapped columns,
    bad upsert key) before anything is written.
    """
    path = Path(path)
    given: dict[str, str | None] = {}
    if mapping_name:
        given.update(journal.load_mapping(crm, entity, mapping_name))
    given.update(mapping or {})
    options = ImportOptions(
        entity=entity, mapping=given or None, upsert_key=upsert_key or None, dry_run=dry_run, blank=blank,
        tz=tz or _zone(crm), lang=lang, limit=limit, sample=sample,
    )
    if batch_size:
        options.batch_size = batch_size
    with open_table(path, filename=filename, sheet=sheet, encoding=encoding) as table:
        importer = Importer(crm, actor, options, source=source,
                            errors_to=Path(errors_to) if errors_to else None, on_progress=on_progress)
        importer.plan(table.header)  # refuse unmapped columns before journaling anything
        journaled = journal.has_journal(crm) and not dry_run
        if journaled and import_id is None:
            import_id = journal.start(
                crm, entity=entity, filename=filename or path.name, actor=actor, source=source,
                fmt=table.format, encoding=table.encoding, mapping=given,
                options={"upsert_key": upsert_key, "blank": blank}, total=table.estimated_rows,
            )
        elif journaled:
            journal.update(crm, import_id, status="running", total=table.estimated_rows,
                           format=table.format, encoding=table.encoding)
        importer.import_id = import_id if journaled else None
        if journaled and on_progress is None:
            importer.on_progress = lambda done, total: journal.update(crm, import_id, processed=done, total=total)
        elif journaled:
            def both(done: int, total: int, inner=on_progress) -> None:
                inner(done, total)
                journal.update(crm, import_id, processed=done, total=total)

            importer.on_progress = both
        try:
            result = importer.run(table)
        except Exception as exc:
            if journaled:
                journal.update(crm, import_id, status="failed", message=str(exc)[:2000],
                               finished_at=dt.datetime.now(dt.UTC))
            raise
    result.import_id = import_id if journaled else None
    if journaled:
        journal.update(
            crm, import_id, status="done", total=result.total, processed=result.total, created=result.created,
            updated=result.updated, failed=result.failed,
            error_path=str(result.error_path) if result.error_path else None,
            finished_at=dt.datetime.now(dt.UTC),
        )
    return result


def export_file(
    crm: CRM,
    entity: str,
    out: IO[bytes] | str | Path,
    *,
    actor: Actor,
    format: str = "csv",
    columns: Iterable[str] | str | None = None,
    filter: Any = None,
    q: str | None = None,
    sort: str | None = None,
    view: str | None = None,
    lang: str | None = None,
    tz: dt.tzinfo | None = None,
    encoding: str = "utf-8-sig",
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Export ``entity`` as ``actor`` sees it to ``out`` (a path or binary stream); returns the row count.

    ``format`` is ``csv`` or ``xlsx``; ``columns`` is ``"list"`` (the list view's columns), field
    names, or None for every field the actor may see.
    """
    if format not in ("csv", "xlsx"):
        raise ImportRefused(f"unknown export format {format!r} (csv or xlsx)")
    exporter = build_exporter(crm, entity, actor, columns=columns, filter=filter, q=q, sort=sort, view=view,
                              lang=lang, tz=tz, typed=format == "xlsx")
    first = exporter.first_page()
    rows = exporter.rows(first)
    if on_progress is not None:
        rows = _counting(rows, on_progress)
    if isinstance(out, str | Path):
        with Path(out).open("wb") as fh:
            return _write(fh, exporter, rows, format, encoding)
    return _write(out, exporter, rows, format, encoding)


def _write(fh: IO[bytes], exporter: Exporter, rows: Iterable[list[Any]], fmt: str, encoding: str) -> int:
    if fmt == "xlsx":
        return write_xlsx(fh, exporter.header(), rows, title=exporter.entity.text(exporter.lang, plural=True))
    return write_csv(fh, exporter.header(), rows, encoding=encoding)


def _counting(rows: Iterable[list[Any]], on_progress: Callable[[int], None]) -> Iterable[list[Any]]:
    n = 0
    for row in rows:
        n += 1
        if n % 1000 == 0:
            on_progress(n)
        yield row
    on_progress(n)


def _zone(crm: CRM) -> dt.tzinfo:
    from crmkit.web.templating import zone

    return zone(None, crm.config.time_zone)


__all__ = [
    "Column", "Exporter", "ImportOptions", "ImportRefused", "ImportResult", "Importer", "ReadError", "RowError",
    "Table", "build_exporter", "csv_chunks", "export_fields", "export_file", "import_file", "journal",
    "map_columns", "open_table", "write_csv", "write_xlsx", "xlsx_chunks",
]
