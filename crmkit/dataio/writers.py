"""Writing spreadsheets row by row: CSV (UTF-8 with BOM for Excel, or CP932) and XLSX.

Both writers take an iterator of rows and never hold more than one buffer of them, so an export
of a million records uses as much memory as one of a hundred. XLSX goes through openpyxl's
write-only mode, which streams rows into the workbook's XML parts on disk.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import re
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO, Any

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_ILLEGAL_XML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")  # characters XML 1.0 cannot carry
FLUSH_EVERY = 1000


def csv_safe(value: Any) -> Any:
    """Prefix a text cell a spreadsheet would run as a formula (``=HYPERLINK(...)``) with a quote."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def csv_chunks(header: list[str], rows: Iterable[list[Any]], *, encoding: str = "utf-8-sig",
               defuse: bool = False) -> Iterator[bytes]:
    """The CSV file as byte chunks: header first, then rows.

    ``utf-8-sig`` (the default) starts with a BOM so Excel opens Japanese text correctly;
    ``cp932`` writes what older Japanese Excel expects (characters it lacks are refused by the
    codec with an error naming them, never replaced silently). ``defuse`` quotes formula-looking
    text cells (the Exporter already does it, knowing which cells are text and which numbers).
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(header)
    first = True
    n = 0
    for row in rows:
        writer.writerow([csv_safe(v) for v in row] if defuse else row)
        n += 1
        if n % FLUSH_EVERY == 0:
            yield _take(buf, encoding, first)
            first = False
    yield _take(buf, encoding, first)


def _take(buf: io.StringIO, encoding: str, first: bool) -> bytes:
    text = buf.getvalue()
    buf.seek(0)
    buf.truncate()
    if encoding == "utf-8-sig" and not first:
        return text.encode("utf-8")  # the BOM belongs at the very start only
    return text.encode(encoding)


def write_csv(out: IO[bytes], header: list[str], rows: Iterable[list[Any]], *, encoding: str = "utf-8-sig") -> int:
    """Write a CSV file to the binary stream ``out``; returns the number of data rows."""
    counter = _Counter(rows)
    for chunk in csv_chunks(header, counter, encoding=encoding):
        out.write(chunk)
    return counter.n


def write_xlsx(out: IO[bytes] | str, header: list[str], rows: Iterable[list[Any]], *, title: str = "Export") -> int:
    """Write an XLSX workbook (one sheet, bold header row, frozen) in write-only mode; returns the row count."""
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.styles import Font

    wb = Workbook(write_only=True)
    ws = wb.create_sheet(title=_sheet_title(title))
    ws.freeze_panes = "A2"
    bold = Font(bold=True)
    head = []
    for name in header:
        cell = WriteOnlyCell(ws, value=_xlsx_value(name))
        cell.font = bold
        head.append(cell)
    ws.append(head)
    n = 0
    for row in rows:
        ws.append([_xlsx_cell(ws, v, WriteOnlyCell) for v in row])
        n += 1
    wb.save(out)
    return n


def xlsx_chunks(header: list[str], rows: Iterable[list[Any]], *, title: str = "Export") -> Iterator[bytes]:
    """An XLSX workbook as byte chunks (written to a temporary file first: a zip needs seeking)."""
    with tempfile.TemporaryFile() as tmp:
        write_xlsx(tmp, header, rows, title=title)
        tmp.seek(0)
        while chunk := tmp.read(1 << 16):
            yield chunk


def _sheet_title(title: str) -> str:
    cleaned = re.sub(r"[\[\]:*?/\\]", " ", title).strip() or "Export"
    return cleaned[:31]


def _xlsx_value(value: Any) -> Any:
    if isinstance(value, str):
        return _ILLEGAL_XML.sub("", value)
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.replace(tzinfo=None)  # Excel has no zones; callers pass local times
    if isinstance(value, decimal.Decimal):
        return value  # openpyxl writes Decimal as a number
    return value


def _xlsx_cell(ws: Any, value: Any, cell_class: Any) -> Any:
    value = _xlsx_value(value)
    if isinstance(value, str) and value.startswith("="):
        cell = cell_class(ws, value=value)
        cell.data_type = "s"  # text, never a formula
        return cell
    return value


class _Counter:
    def __init__(self, rows: Iterable[list[Any]]):
        self.rows, self.n = rows, 0

    def __iter__(self) -> Iterator[list[Any]]:
        for row in self.rows:
            self.n += 1
            yield row


__all__ = ["csv_chunks", "csv_safe", "write_csv", "write_xlsx", "xlsx_chunks"]
