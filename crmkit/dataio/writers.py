"""Writing spreadsheets row by row: CSV (UTF-8 with BOM for Excel, or CP932) and XLSX.

Both writers take an iterator of rows and never hold more than one buffer of them, so an export
of a million records uses as much memory as one of a hundred. XLSX is a zip whose sheet XML is
written as the rows arrive (see :func:`write_xlsx`); openpyxl reads it back.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import itertools
import re
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_ILLEGAL_XML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")  # characters XML 1.0 cannot carry
FLUSH_EVERY = 1000


def csv_safe(value: Any) -> Any:
    """Prefix a text cell a spreadsheet would run as a formula (``=HYPERLINK(...)``) with a quote."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def csv_chunks(header: list[str], rows: Iterable[Sequence[Any]], *, encoding: str = "utf-8-sig",
               defuse: bool = False) -> Iterator[bytes]:
    """The CSV file as byte chunks: header first, then rows.

    ``utf-8-sig`` (the default) starts with a BOM so Excel opens Japanese text correctly;
    ``cp932`` writes what older Japanese Excel expects (characters it lacks are refused by the
    codec with an error naming them, never replaced silently). ``defuse`` quotes formula-looking
    text cells (the Exporter already does it, knowing which cells are text and which numbers).

    Rows are taken a batch at a time: the pages of an :class:`~crmkit.dataio.exporter.ExportRows`,
    or up to FLUSH_EVERY rows of any other iterable (see ``_write_rows`` for how they are written).
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(header)
    first = True
    pending = 0
    for batch in _batches(rows):
        _write_rows(buf, writer, [[csv_safe(v) for v in row] for row in batch] if defuse else batch)
        pending += len(batch)
        if pending >= FLUSH_EVERY:
            yield _take(buf, encoding, first)
            first = False
            pending = 0
    yield _take(buf, encoding, first)


def _write_rows(buf: io.StringIO, writer: Any, batch: Sequence[Sequence[Any]]) -> None:
    """Append ``batch`` to ``buf`` as CSV, byte for byte what ``writer.writerows(batch)`` writes.

    Most cells need no quoting, and a row of such text cells is just ``",".join(row)``: joining
    a page that way, and checking the joined text once for a comma, quote or line break beyond the
    separators, costs a fraction of the csv writer's per-character work. Rows with a cell that needs
    quoting, with a cell that is not text, or with fewer than two cells (a lone empty cell is
    written as ``""``) go through ``writer``, in order.
    """
    try:
        lines = list(map(",".join, batch))
    except TypeError:  # a cell that is not text: csv formats it
        writer.writerows(batch)
        return
    n = len(lines)
    widths = set(map(len, batch))
    text = "\r\n".join(lines)
    if (len(widths) == 1 and min(widths) >= 2 and text.count(",") == n * (min(widths) - 1)
            and '"' not in text and text.count("\n") == n - 1 and text.count("\r") == n - 1):
        if n:
            buf.write(text)
            buf.write("\r\n")
        return
    for row, line in zip(batch, lines, strict=True):
        if len(row) < 2 or line.count(",") != len(row) - 1 or '"' in line or "\n" in line or "\r" in line:
            writer.writerow(row)
        else:
            buf.write(line)
            buf.write("\r\n")


def _batches(rows: Iterable[Sequence[Any]]) -> Iterator[Sequence[Sequence[Any]]]:
    """Lists of rows: the source's own pages when it offers them (``pages()``), else FLUSH_EVERY at a time."""
    pages = getattr(rows, "pages", None)
    if callable(pages):
        return pages()
    it = iter(rows)
    return iter(lambda: list(itertools.islice(it, FLUSH_EVERY)), [])


def _take(buf: io.StringIO, encoding: str, first: bool) -> bytes:
    text = buf.getvalue()
    buf.seek(0)
    buf.truncate()
    if encoding == "utf-8-sig" and not first:
        return text.encode("utf-8")  # the BOM belongs at the very start only
    return text.encode(encoding)


def write_csv(out: IO[bytes], header: list[str], rows: Iterable[Sequence[Any]], *, encoding: str = "utf-8-sig") -> int:
    """Write a CSV file to the binary stream ``out``; returns the number of data rows."""
    counter = _Counter(rows)
    for chunk in csv_chunks(header, counter, encoding=encoding):
        out.write(chunk)
    return counter.n


def write_xlsx(out: IO[bytes] | str, header: list[str], rows: Iterable[Sequence[Any]], *, title: str = "Export") -> int:
    """Write an XLSX workbook (one sheet, bold header row, frozen); returns the row count.

    The sheet's XML is written as the rows arrive, a batch at a time, with one string template per
    cell type (openpyxl's write-only mode builds an element per cell: an export through it took
    over ten times the CPU). The cells are what openpyxl writes: text as inline strings (so
    ``=...`` stays text, never a formula), numbers, booleans, and dates and datetimes as serial
    numbers with a date format; None and "" leave the cell out.

    The XML goes to a temporary file and then into the zip, as openpyxl does: with its size known,
    the zip uses ZIP64 records only for a sheet over 2 GiB (streaming into the zip would force them
    on every file, and Excel is reported to offer a "repair" of small files carrying them).
    """
    counter = _Counter(rows)
    with tempfile.TemporaryDirectory(prefix="crmkit-xlsx-") as tmp:
        sheet_path = Path(tmp) / "sheet1.xml"
        with sheet_path.open("wb") as sheet:
            sheet.write(_XLSX_SHEET_START.encode())
            sheet.write(_XlsxCells(style=' s="1"').row(1, header).encode())
            cells = _XlsxCells()
            n = 1
            for batch in _batches(counter):
                sheet.write(cells.rows(n + 1, batch).encode())
                n += len(batch)
            sheet.write(_XLSX_SHEET_END.encode())
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=XLSX_COMPRESSION) as zf:
            for name, text in _XLSX_PARTS.items():
                zf.writestr(name, text)
            zf.writestr("xl/workbook.xml", _XLSX_WORKBOOK.format(title=_xml_text(_sheet_title(title), attribute=True)))
            zf.write(sheet_path, "xl/worksheets/sheet1.xml")
    return counter.n


def xlsx_chunks(header: list[str], rows: Iterable[Sequence[Any]], *, title: str = "Export") -> Iterator[bytes]:
    """An XLSX workbook as byte chunks (written to a temporary file first: a zip needs seeking)."""
    with tempfile.TemporaryFile() as tmp:
        write_xlsx(tmp, header, rows, title=title)
        tmp.seek(0)
        while chunk := tmp.read(1 << 16):
            yield chunk


def _sheet_title(title: str) -> str:
    cleaned = re.sub(r"[\[\]:*?/\\]", " ", title).strip() or "Export"
    return cleaned[:31]


XLSX_COMPRESSION = 1  # deflate level: the fastest keeps most of the gain (sheet XML repeats itself)
_MAIN_NS = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_REL_NS = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_PKG_REL_NS = "http://schemas.openxmlformats.org/package/2006/relationships"
_XML_DECL = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
_XLSX_PARTS = {
    "[Content_Types].xml": _XML_DECL
    + '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    '<Default Extension="xml" ContentType="application/xml"/>'
    '<Override PartName="/xl/workbook.xml" '
    'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
    '<Override PartName="/xl/worksheets/sheet1.xml" '
    'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
    '<Override PartName="/xl/styles.xml" '
    'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.styles+xml"/>'
    "</Types>",
    "_rels/.rels": _XML_DECL
    + f'<Relationships xmlns="{_PKG_REL_NS}">'
    f'<Relationship Id="rId1" Type="{_REL_NS}/officeDocument" Target="xl/workbook.xml"/>'
    "</Relationships>",
    "xl/_rels/workbook.xml.rels": _XML_DECL
    + f'<Relationships xmlns="{_PKG_REL_NS}">'
    f'<Relationship Id="rId1" Type="{_REL_NS}/worksheet" Target="worksheets/sheet1.xml"/>'
    f'<Relationship Id="rId2" Type="{_REL_NS}/styles" Target="styles.xml"/>'
    "</Relationships>",
    # Cell styles (the s attribute): 0 plain, 1 bold (header), 2 datetime, 3 date.
    "xl/styles.xml": _XML_DECL
    + f'<styleSheet xmlns="{_MAIN_NS}">'
    '<numFmts count="2"><numFmt numFmtId="164" formatCode="yyyy-mm-dd h:mm:ss"/>'
    '<numFmt numFmtId="165" formatCode="yyyy-mm-dd"/></numFmts>'
    '<fonts count="2"><font><sz val="11"/><name val="Calibri"/><family val="2"/></font>'
    '<font><b/><sz val="11"/><name val="Calibri"/><family val="2"/></font></fonts>'
    '<fills count="2"><fill><patternFill patternType="none"/></fill>'
    '<fill><patternFill patternType="gray125"/></fill></fills>'
    '<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>'
    '<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs>'
    '<cellXfs count="4"><xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/>'
    '<xf numFmtId="0" fontId="1" fillId="0" borderId="0" xfId="0" applyFont="1"/>'
    '<xf numFmtId="164" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>'
    '<xf numFmtId="165" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/></cellXfs>'
    '<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles>'
    "</styleSheet>",
}
_XLSX_WORKBOOK = (
    _XML_DECL + f'<workbook xmlns="{_MAIN_NS}" xmlns:r="{_REL_NS}">'
    '<sheets><sheet name="{title}" sheetId="1" r:id="rId1"/></sheets></workbook>'
)
_XLSX_SHEET_START = (
    _XML_DECL + f'<worksheet xmlns="{_MAIN_NS}">'
    '<sheetViews><sheetView workbookViewId="0">'
    '<pane ySplit="1" topLeftCell="A2" activePane="bottomLeft" state="frozen"/>'
    '<selection pane="bottomLeft" activeCell="A2" sqref="A2"/>'
    "</sheetView></sheetViews><sheetData>"
)
_XLSX_SHEET_END = "</sheetData></worksheet>"
_XML_SPECIAL = re.compile(r"[&<>\x00-\x08\x0b\x0c\x0e-\x1f]")  # text that _xml_text changes
_XML_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
_XML_ATTRIBUTE_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"})


def _xml_text(text: str, attribute: bool = False) -> str:
    """Text for XML content (or a double-quoted attribute), without the characters XML 1.0 cannot carry."""
    text = _ILLEGAL_XML.sub("", text)
    return text.translate(_XML_ATTRIBUTE_ESCAPES if attribute else _XML_ESCAPES)


def _column_letters(n: int) -> list[str]:
    """A, B, …, Z, AA, AB, … for the first ``n`` columns."""
    out = []
    for i in range(1, n + 1):
        name = ""
        while i:
            i, rest = divmod(i - 1, 26)
            name = chr(65 + rest) + name
        out.append(name)
    return out


class _XlsxCells:
    """Writes rows of cells, remembering column letters and the serial numbers of repeated dates."""

    def __init__(self, style: str = ""):
        self.letters: list[str] = []
        self.serials: dict[Any, str] = {}
        self.style = style  # the header row's cells are bold

    def rows(self, first: int, batch: Sequence[Sequence[Any]]) -> str:
        """The ``<row>`` elements of ``batch``, numbered from ``first``, built a column at a time.

        A column whose cells are all text (or all numbers, or all dates) becomes its cells in one
        comprehension, escaped only when the joined column holds a character that needs it.
        """
        numbers = list(map(str, range(first, first + len(batch))))  # as text once, for every column
        widths = set(map(len, batch))
        if len(widths) != 1:  # ragged rows: one at a time
            return "".join([self.row(int(n), row) for n, row in zip(numbers, batch, strict=True)])
        self._letters(widths.pop())
        columns = [self._column(letter, values, numbers)
                   for letter, values in zip(self.letters, zip(*batch, strict=True), strict=False)]
        rows = zip(numbers, zip(*columns, strict=True), strict=True)
        return "".join([f'<row r="{n}">{"".join(cells)}</row>' for n, cells in rows])

    def row(self, number: int, values: Sequence[Any]) -> str:
        """The ``<row>`` element for row ``number`` (1-based)."""
        self._letters(len(values))
        cells = [self._cell(f"{letter}{number}", v) for letter, v in zip(self.letters, values, strict=False)]
        return f'<row r="{number}">{"".join(cells)}</row>'

    def _letters(self, width: int) -> None:
        if width > len(self.letters):
            self.letters = _column_letters(width)

    def _column(self, letter: str, values: Sequence[Any], numbers: list[str]) -> list[str]:
        """The cells of one column of a batch ("" where the value is None or ""); ``numbers``: row numbers."""
        style = self.style
        head = f'<c r="{letter}'  # each cell is head + row number + the rest
        kinds = set(map(type, values))
        kinds.discard(type(None))
        if kinds <= {str}:
            if not any(values):  # an empty column: nothing to write
                return [""] * len(values)
            if _XML_SPECIAL.search("".join(filter(None, values))):
                values = [_xml_text(v) if v else v for v in values]
            mid = f'" t="inlineStr"{style}><is><t xml:space="preserve">'
            return [f"{head}{n}{mid}{v}</t></is></c>" if v else "" for v, n in zip(values, numbers, strict=True)]
        if kinds <= {str, int, float, decimal.Decimal}:  # numbers (str(float) is its repr), "" when empty
            mid = f'"{style}><v>'
            return [("" if v == "" else self._cell(letter + n, v)) if v is None or v.__class__ is str
                    else f"{head}{n}{mid}{v}</v></c>" for v, n in zip(values, numbers, strict=True)]
        if kinds <= {str, dt.datetime}:  # datetimes, "" when empty: repeated values share a serial
            serials = self.serials
            return [f'{head}{n}" s="2"><v>{serials[v]}</v></c>' if v in serials and v.__class__ is not str
                    else self._cell(letter + n, v) for v, n in zip(values, numbers, strict=True)]
        return ["" if v is None or v == "" else self._cell(letter + n, v) for v, n in zip(values, numbers, strict=True)]

    def _cell(self, ref: str, v: Any) -> str:
        """One ``<c>`` element ("" for None and "")."""
        style = self.style
        if v is None or v == "":
            return ""
        if isinstance(v, str):
            return f'<c r="{ref}" t="inlineStr"{style}><is><t xml:space="preserve">{_xml_text(v)}</t></is></c>'
        if isinstance(v, bool):
            return f'<c r="{ref}" t="b"{style}><v>{int(v)}</v></c>'
        if isinstance(v, float):
            return f'<c r="{ref}"{style}><v>{v!r}</v></c>'
        if isinstance(v, int | decimal.Decimal):
            return f'<c r="{ref}"{style}><v>{v}</v></c>'
        if isinstance(v, dt.date):
            serial = self.serials.get(v)
            if serial is None:
                serial = _excel_serial(v)
                # Equal aware datetimes may show different wall times (the cell's): only naive ones are kept.
                if not isinstance(v, dt.datetime) or v.tzinfo is None:
                    if len(self.serials) > 4096:  # keep memory flat when every value differs
                        self.serials.clear()
                    self.serials[v] = serial
            return f'<c r="{ref}" s="{2 if isinstance(v, dt.datetime) else 3}"><v>{serial}</v></c>'
        raise ValueError(f"cannot write {type(v).__name__} value to an XLSX cell")


def _excel_serial(value: dt.date) -> str:
    """An Excel serial number for a date or datetime (local time: Excel has no zones)."""
    from openpyxl.utils.datetime import to_excel

    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        value = value.replace(tzinfo=None)
    return repr(float(to_excel(value)))


class _Counter:
    """Counts the rows passing through, whether they are taken one by one or in batches."""

    def __init__(self, rows: Iterable[Sequence[Any]]):
        self.rows, self.n = rows, 0

    def __iter__(self) -> Iterator[Sequence[Any]]:
        for row in self.rows:
            self.n += 1
            yield row

    def pages(self) -> Iterator[Sequence[Sequence[Any]]]:
        """The rows in batches (see ``_batches``), counted."""
        for batch in _batches(self.rows):
            self.n += len(batch)
            yield batch


__all__ = ["csv_chunks", "csv_safe", "write_csv", "write_xlsx", "xlsx_chunks"]
