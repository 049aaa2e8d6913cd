"""Reading spreadsheets: CSV (UTF-8, UTF-8 with BOM, UTF-16, Shift_JIS/CP932) and XLSX.

A file is opened with :func:`open_table`, which returns a :class:`Table`: its header, the
detected format and encoding, an estimate of the row count for progress bars, and an iterator
of ``(row_number, cells)`` that streams the file (memory stays flat for a million rows).

Encodings are decoded **strictly**: a file that is neither valid UTF-8 nor valid CP932 is
refused with a message naming the line and the bytes that do not fit, and never imported as
mojibake. The order of the checks matters: a BOM decides; then UTF-8 (which almost never
validates by accident); then CP932, the superset of Shift_JIS that Japanese Excel writes.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import decimal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHUNK = 1 << 20
ZIP_MAGIC = b"PK\x03\x04"
OLE_MAGIC = b"\xd0\xcf\x11\xe0"  # the old binary .xls format
ENCODING_LABELS = {"utf-8": "UTF-8", "utf-8-sig": "UTF-8 (BOM)", "utf-16": "UTF-16", "cp932": "Shift_JIS (CP932)"}


class ReadError(ValueError):
    """The file cannot be read as a table; the message says why and what to do."""


@dataclass
class Table:
    """An opened spreadsheet: header, format, encoding and a streaming row iterator."""

    header: list[str]
    format: str  # "csv" or "xlsx"
    encoding: str | None
    estimated_rows: int
    _rows: Iterator[tuple[int, list[Any]]] = field(repr=False)
    _close: Any = field(default=None, repr=False)

    def rows(self) -> Iterator[tuple[int, list[Any]]]:
        """``(row_number, cells)`` for every data row; row 1 is the header, so data starts at 2."""
        return self._rows

    def close(self) -> None:
        """Release the file (XLSX keeps it open while streaming)."""
        if self._close is not None:
            self._close()
            self._close = None

    def __enter__(self) -> Table:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def encoding_label(self) -> str:
        """The encoding as people call it ("Shift_JIS (CP932)")."""
        return ENCODING_LABELS.get(self.encoding or "", self.encoding or "")


def open_table(path: str | Path, *, filename: str | None = None, sheet: str | None = None,
               encoding: str | None = None) -> Table:
    """Open a CSV or XLSX file (decided by content, then by name) for reading.

    ``encoding`` forces an encoding for CSV instead of detecting it (still decoded strictly).
    Raises :class:`ReadError` for an empty file, an unknown encoding, an old ``.xls`` file or a
    header row with blank or repeated names.
    """
    path = Path(path)
    name = (filename or path.name).lower()
    with path.open("rb") as fh:
        head = fh.read(8)
    if not head:
        raise ReadError("the file is empty")
    if head.startswith(OLE_MAGIC):
        raise ReadError("this is an old Excel (.xls) file: save it as .xlsx or CSV and try again")
    if head.startswith(ZIP_MAGIC) or name.endswith((".xlsx", ".xlsm")):
        return _open_xlsx(path, sheet)
    return _open_csv(path, encoding)


# ---------------------------------------------------------------------------------------------
# CSV
# ---------------------------------------------------------------------------------------------
def detect_encoding(path: Path) -> tuple[str, int]:
    """The file's encoding and its number of lines, by decoding it strictly from start to end.

    Decoding the whole file once costs well under a second per 100 MB and is the only way to be
    sure: a Shift_JIS file can look like UTF-8 for its first thousand rows.
    """
    with path.open("rb") as fh:
        start = fh.read(4)
    if start.startswith(codecs.BOM_UTF8):
        candidates = ["utf-8-sig"]
    elif start.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        candidates = ["utf-16"]
    else:
        candidates = ["utf-8", "cp932"]
    failures: list[_Undecodable] = []
    for enc in candidates:
        try:
            return enc, _count_lines(path, enc)
        except _Undecodable as exc:
            failures.append(exc)
    first = failures[0]
    tried = " or ".join(ENCODING_LABELS[c] for c in candidates)
    raise ReadError(
        f"cannot read the file as {tried}: line {first.line} has bytes ({first.sample}) that are not text in "
        "any of them. Save it from your spreadsheet as \"CSV UTF-8\" and import it again."
    )


class _Undecodable(Exception):
    """Bytes at ``offset`` do not decode; ``line`` and ``sample`` say where and what for messages."""

    def __init__(self, path: Path, offset: int):
        with path.open("rb") as fh:
            before = fh.read(offset)
            self.sample = fh.read(4).hex(" ")
        self.offset, self.line = offset, before.count(b"\n") + 1
        super().__init__(f"undecodable bytes at line {self.line}")


def _count_lines(path: Path, encoding: str) -> int:
    """Lines in the file, decoding every byte strictly (raises _Undecodable)."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    lines = 0
    offset = 0
    last = ""
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            try:
                text = decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                raise _Undecodable(path, max(0, offset + exc.start)) from None
            lines += text.count("\n")
            if text:
                last = text[-1]
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise _Undecodable(path, max(0, offset - 1)) from None
    return lines + (1 if last and last != "\n" else 0)


def _open_csv(path: Path, forced: str | None) -> Table:
    if forced:
        try:
            codecs.lookup(forced)
        except LookupError:
            raise ReadError(f"unknown encoding {forced!r}") from None
        encoding = forced
        try:
            lines = _count_lines(path, encoding)
        except _Undecodable as exc:
            raise ReadError(
                f"the file is not valid {forced}: line {exc.line} has bytes ({exc.sample}) that do not decode"
            ) from None
    else:
        encoding, lines = detect_encoding(path)
    fh = path.open("r", encoding=encoding, errors="strict", newline="")
    try:
        sample = fh.read(64 * 1024)
        fh.seek(0)
        dialect = _sniff(sample)
        reader = csv.reader(fh, dialect)
        try:
            header = next(reader)
        except StopIteration:
            raise ReadError("the file is empty") from None
        header = check_header([h.lstrip("\ufeff") for h in header])
    except BaseException:
        fh.close()
        raise

    def rows() -> Iterator[tuple[int, list[Any]]]:
        try:
            for number, cells in enumerate(reader, start=2):
                # a row with a first cell is kept without looking further (most rows)
                if cells and (cells[0].strip() or any(c.strip() for c in cells)):
                    yield number, cells
        except csv.Error as exc:
            raise ReadError(f"line {reader.line_num}: {exc}") from None
        finally:
            fh.close()

    return Table(header, "csv", encoding, max(0, lines - 1), rows(), fh.close)


def _sniff(sample: str) -> type[csv.Dialect] | csv.Dialect:
    """Comma, tab or semicolon, from the first line (csv.Sniffer guesses badly on Japanese text)."""
    first = sample.split("\n", 1)[0]
    counts = {d: first.count(d) for d in (",", "\t", ";")}
    delimiter = max(counts, key=lambda d: counts[d]) if any(counts.values()) else ","

    class Dialect(csv.excel):
        pass

    Dialect.delimiter = delimiter
    return Dialect


def check_header(header: list[Any]) -> list[str]:
    """Header names stripped; blank or repeated names are refused (a column must be nameable)."""
    names = ["" if h is None else str(h).strip() for h in header]
    while names and not names[-1]:
        names.pop()  # trailing empty columns are a spreadsheet artefact, not data
    if not names:
        raise ReadError("the first row must name the columns, but it is empty")
    blank = [i + 1 for i, n in enumerate(names) if not n]
    if blank:
        raise ReadError(f"column {blank[0]} has no name in the first row: every column needs a header")
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        if n in seen:
            raise ReadError(f"the column name {n!r} appears twice (columns {seen[n] + 1} and {i + 1})")
        seen[n] = i
    return names


# ---------------------------------------------------------------------------------------------
# XLSX
# ---------------------------------------------------------------------------------------------
def _open_xlsx(path: Path, sheet: str | None) -> Table:
    import zipfile

    from openpyxl import load_workbook

    try:
        wb = load_workbook(path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:
        raise ReadError(f"cannot open the file as an Excel workbook (.xlsx): {exc}") from None
    try:
        if sheet is not None:
            if sheet not in wb.sheetnames:
                raise ReadError(f"the workbook has no sheet {sheet!r} (it has: {', '.join(wb.sheetnames)})")
            ws = wb[sheet]
        else:
            ws = wb.worksheets[0]
        it = ws.iter_rows(values_only=True)
        try:
            header = check_header(list(next(it)))
        except StopIteration:
            raise ReadError("the sheet is empty") from None
        width = len(header)
        estimated = max(0, (ws.max_row or 1) - 1)
    except BaseException:
        wb.close()
        raise

    def rows() -> Iterator[tuple[int, list[Any]]]:
        try:
            for number, values in enumerate(it, start=2):
                cells = [_cell(v) for v in values[:width]]
                if any(c not in (None, "") for c in cells):
                    cells += [None] * (width - len(cells))
                    yield number, cells
        finally:
            wb.close()

    return Table(header, "xlsx", None, estimated, rows(), wb.close)


def _cell(value: Any) -> Any:
    """A typed Excel value as the importer wants it: whole floats as int, text stripped."""
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 2**53:
            return int(value)
        return decimal.Decimal(repr(value))
    if isinstance(value, dt.datetime) and value.time() == dt.time(0):
        return value  # the field type decides between a date and a midnight datetime
    if isinstance(value, str):
        return value.strip()
    return value


def sniff_bytes(data: bytes) -> str:
    """``"xlsx"`` or ``"csv"`` for uploaded bytes (the browser's name and type are not trusted)."""
    if data.startswith(ZIP_MAGIC):
        return "xlsx"
    if data.startswith(OLE_MAGIC):
        return "xls"
    return "csv"


__all__ = ["ReadError", "Table", "check_header", "detect_encoding", "open_table", "sniff_bytes"]
