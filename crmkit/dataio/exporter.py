"""Exporting a list view: the records an actor may export, in the columns asked for, as text
that the importer reads back (labels, titles, ISO dates), page by page with flat memory.

Everything is read through ``RecordStore.list(action="export")``, so the export scope of the
actor's role, ``restrict_query`` hooks, hidden fields and masks apply exactly as on screen.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crmkit.core import queries
from crmkit.core.errors import BadRequest
from crmkit.core.tables import SEARCH_COLUMN
from crmkit.dataio.writers import FORMULA_START

if TYPE_CHECKING:
    from crmkit.app import CRM
    from crmkit.core.actors import Actor
    from crmkit.core.catalog import Entity, Field

NOT_EXPORTED = ("password", "file", "image")
PLAIN_TEXT = ("string", "text", "email", "phone", "url")
DANGER = frozenset(FORMULA_START)  # first characters a spreadsheet reads as a formula
YES_NO = {"en": ("Yes", "No"), "ja": ("はい", "いいえ")}
ADDRESS_KEYS = ("postal_code", "prefecture", "city", "street", "building", "country")


def export_fields(crm: CRM, entity: Entity, actor: Actor, columns: Iterable[str] | str | None = None) -> list[Field]:
    """The fields to export: ``"list"`` (the list view's columns), names, or None for every field.

    Fields the actor may not see, passwords and uploaded files are left out; an unknown name is
    a BadRequest naming it.
    """
    access = crm.records.field_access(actor, entity.name)
    if columns == "list":
        names = [c.split(".")[0] for c in entity.list.columns] or [entity.title_field]
    elif columns is None or columns == "all":
        names = [n for n, f in entity.fields.items() if not f.deprecated and n != SEARCH_COLUMN]
    else:
        names = [c.strip() for c in columns if c.strip()] if not isinstance(columns, str) else [
            c.strip() for c in columns.split(",") if c.strip()
        ]
        unknown = [n for n in names if n not in entity.fields or n == SEARCH_COLUMN]
        if unknown:
            raise BadRequest(f"{entity.name} has no field {unknown[0]!r}")
    out: list[Field] = []
    for name in dict.fromkeys(names):
        f = entity.fields[name]
        if f.type in NOT_EXPORTED or access.get(name) in ("none", "write-only"):
            continue
        out.append(f)
    return out


@dataclass
class Exporter:
    """Rows of one entity for one actor: ``header()`` then ``rows()`` (or ``pages()``).

    ``lang`` picks the labels (headers, options, yes/no); ``tz`` the zone datetimes are shown in;
    ``typed`` keeps numbers, dates and datetimes as Python values (for XLSX cells) instead of text.

    Records are read a page at a time by column (:meth:`RecordStore.list_by_column`) and formatted
    a column at a time: one formatter call per column of a page instead of one per cell, and
    columns that are empty, or text with nothing to quote, cost a few C-level passes.
    """

    crm: CRM
    entity: Entity
    actor: Actor
    fields: list[Field]
    filter: Any = None
    q: str | None = None
    sort: str | None = None
    lang: str = "en"
    tz: dt.tzinfo = dt.UTC
    typed: bool = False
    page_size: int = queries.MAX_LIMIT

    def header(self) -> list[str]:
        """Column headers: the field labels in ``lang`` (the importer maps them back)."""
        return [f.text(self.lang) for f in self.fields]

    def first_page(self) -> queries.ColumnPage:
        """Read the first page now, so permission and query errors surface before streaming starts."""
        return self._page(None)

    def _page(self, cursor: str | None) -> queries.ColumnPage:
        return self.crm.records.list_by_column(
            self.entity.name,
            actor=self.actor,
            filter=self.filter,
            q=self.q,
            sort=self.sort,
            cursor=cursor,
            limit=self.page_size,
            action="export",
            columns=[f.name for f in self.fields],
        )

    def pages(self, first: queries.ColumnPage | None = None) -> Iterator[list[tuple[Any, ...]]]:
        """Every matching record as rows of cell values (tuples), one list per page read.

        Text cells that a spreadsheet would run as a formula (``=HYPERLINK(...)``) get a leading
        quote in text output (``typed=False``); XLSX cells are marked as text by the writer instead.
        """
        page = first if first is not None else self._page(None)
        formatters = [(f.name, self._column_formatter(f)) for f in self.fields]
        while True:
            if page.size:
                titles = self._titles(page)
                yield list(zip(*[fmt(page.column(name), titles) for name, fmt in formatters], strict=True))
            if not page.next_cursor:
                return
            page = self._page(page.next_cursor)

    def rows(self, first: queries.ColumnPage | None = None) -> ExportRows:
        """Every matching record as a list of cell values, one page of records in memory at a time."""
        return ExportRows(self.pages(first))

    # -- formatting ------------------------------------------------------------------------------
    def _titles(self, page: queries.ColumnPage) -> dict[str, dict[int, str]]:
        """Titles of every record the page references, one query per target entity."""
        wanted: dict[str, set[int]] = {}
        for f in self.fields:
            target = f.to
            if target is None or target not in self.crm.catalog:
                continue
            ids = wanted.setdefault(target, set())
            column = page.column(f.name)
            try:
                values: Iterable[Any] = set(column)  # a page references few distinct records
            except TypeError:  # lists of links (a many-to-many field)
                values = column
            for value in values:
                if isinstance(value, int) and not isinstance(value, bool):
                    ids.add(value)
                elif isinstance(value, list):
                    ids.update(i["id"] for i in value if isinstance(i, Mapping) and i.get("id"))
        return {t: self.crm.records.titles(t, ids) for t, ids in wanted.items() if ids}

    def _column_formatter(self, f: Field) -> ColumnFormatter:
        """A function ``(values, titles) -> cells`` for one field's column of a page, chosen once.

        Every cell comes out exactly as ``_formatter(f)`` makes it (``""`` for None); the column
        forms only take shortcuts: a table lookup through ``map``, one scan for formula starts.
        """
        t = f.type
        if t in PLAIN_TEXT:
            return _typed_text_column if self.typed else _text_column
        if t == "enum":
            labels = {o.value: o.text(self.lang) for o in f.options}
            return _lookup_column(labels, str)
        if t == "boolean":
            yes, no = YES_NO.get(self.lang, YES_NO["en"])
            return _lookup_column({True: yes, False: no}, lambda v: yes if v else no)
        if t == "datetime":
            return self._datetime_column()
        if t in ("date", "integer", "decimal", "money", "percent") and self.typed:
            return _typed_value_column
        if t == "date":
            return _cell_column(lambda v, titles: v.isoformat())
        if t in ("integer", "decimal", "money", "percent"):
            return _str_column
        if t == "reference" and f.to:
            return self._reference_column(f.to)
        return _cell_column(self._formatter(f))

    def _reference_column(self, target: str) -> ColumnFormatter:
        typed = self.typed

        def fmt_reference(values: Sequence[Any], titles: dict[str, dict[int, str]]) -> Sequence[Any]:
            n = len(values)
            if values.count(None) == n:
                return [""] * n
            names = titles.get(target, {})
            out = ["" if v is None else (names[v] if v in names else f"#{v}") for v in values]
            return out if typed else _defuse_column(out)

        return fmt_reference

    def _datetime_column(self) -> ColumnFormatter:
        """Datetimes in ``tz``, each distinct value formatted once (rows written together share one)."""
        tz, typed = self.tz, self.typed
        done: dict[Any, Any] = {None: ""}

        def one(v: Any) -> Any:
            if not isinstance(v, dt.datetime):
                return str(v)
            local = v.astimezone(tz) if v.tzinfo else v.replace(tzinfo=dt.UTC).astimezone(tz)
            if typed:
                return local.replace(tzinfo=None)
            if local.year >= 1000:  # isoformat is several times faster than strftime
                return local.isoformat(sep=" ", timespec="seconds")[:19]
            return local.strftime("%Y-%m-%d %H:%M:%S")

        def fmt_datetime(values: Sequence[Any], titles: dict[str, dict[int, str]]) -> Sequence[Any]:
            out = list(map(done.get, values))
            if None in out:
                if len(done) > 4096:  # every value distinct: keep memory flat
                    done.clear()
                    done[None] = ""
                for i, cell in enumerate(out):
                    if cell is None:
                        # a naive and an aware datetime never compare equal, so they never share a cell
                        v = values[i]
                        cell = done.get(v)  # an earlier cell of this page may have had it
                        out[i] = done[v] = one(v) if cell is None else cell
            return out

        return fmt_datetime

    def _formatter(self, f: Field) -> Callable[[Any, dict[str, dict[int, str]]], Any]:
        """A function ``(value, titles) -> cell`` for one non-None value of a field, chosen once per export."""
        lang, typed = self.lang, self.typed
        target = f.to
        t = f.type
        safe = _defuser(not typed)
        if t == "reference" and target:
            return lambda v, titles: safe(titles.get(target, {}).get(v, f"#{v}"))
        if t == "references":
            return lambda v, titles: safe("; ".join(
                titles.get(target, {}).get(i["id"], f"#{i['id']}") for i in v or [] if isinstance(i, Mapping)
            ))
        if t == "multi_enum":
            labels = {o.value: o.text(lang) for o in f.options}
            return lambda v, titles: ", ".join(labels.get(x, str(x)) for x in v or [])
        if t == "address":
            return lambda v, titles: safe(_address(v, lang))
        if t == "json":
            return lambda v, titles: safe(json.dumps(v, ensure_ascii=False, default=str))
        return lambda v, titles: safe(str(v))


class ExportRows(Iterator[list[Any]]):
    """The rows of :meth:`Exporter.rows` as lists, one at a time, read a page at a time.

    A writer that can take rows in batches (``csv.writer.writerows``) asks for ``pages()``
    instead: the same rows as tuples, a page per list. Use one or the other, not both.
    """

    def __init__(self, pages: Iterator[list[tuple[Any, ...]]]):
        self._pages = pages
        self._rows = map(list, itertools.chain.from_iterable(pages))

    def __next__(self) -> list[Any]:
        return next(self._rows)

    def pages(self) -> Iterator[list[tuple[Any, ...]]]:
        """The remaining rows, a page of tuples at a time."""
        return self._pages


ColumnFormatter = Callable[[Sequence[Any], dict[str, dict[int, str]]], Sequence[Any]]
_FORMULA_AFTER_NEWLINE = tuple("\n" + c for c in FORMULA_START)


def _defuse_column(cells: Sequence[str]) -> Sequence[str]:
    """Text cells with a quote before those a spreadsheet would run as a formula.

    A few substring searches of the joined column answer "none of them" (the usual case) at C
    speed; a cell holding a newline followed by a formula character only sends the column the
    slow way.
    """
    joined = "\n" + "\n".join(cells)
    if not any(start in joined for start in _FORMULA_AFTER_NEWLINE):
        return cells
    return ["'" + c if c[:1] in DANGER else c for c in cells]


def _only_text(cells: Sequence[Any]) -> Sequence[Any]:
    """``cells`` unchanged if every one is text (XLSX: the writer defuses); TypeError otherwise."""
    "".join(cells)
    return cells


def _text_column_of(
    whole: Callable[[Sequence[Any]], Sequence[Any]], one: Callable[[Any], Any]
) -> Callable[[Sequence[Any], dict[str, dict[int, str]]], Sequence[Any]]:
    """A text-column formatter: None as "", then ``whole(cells)``, or ``one`` per cell when a
    value is not text (``whole`` raises TypeError, as ``str.join`` does)."""

    def column(values: Sequence[Any], titles: dict[str, dict[int, str]]) -> Sequence[Any]:
        n = len(values)
        nones = values.count(None)
        if nones == n:
            return [""] * n
        cells = ["" if v is None else v for v in values] if nones else values
        try:
            return whole(cells)
        except TypeError:
            return [one(v) for v in cells]

    return column


def _lookup_column(table: Mapping[Any, Any], fallback: Callable[[Any], Any]) -> ColumnFormatter:
    """Cells looked up in ``table`` (None -> ""), ``fallback(value)`` for values it lacks."""
    get = {**table, None: ""}.get

    def fmt_lookup(values: Sequence[Any], titles: dict[str, dict[int, str]]) -> Sequence[Any]:
        out = list(map(get, values))
        if None in out:
            return [fallback(v) if cell is None else cell for cell, v in zip(out, values, strict=True)]
        return out

    return fmt_lookup


def _str_column(values: Sequence[Any], titles: dict[str, dict[int, str]]) -> Sequence[Any]:
    """Numbers as text (None -> "")."""
    n = len(values)
    nones = values.count(None)
    if nones == n:
        return [""] * n
    if nones:
        return ["" if v is None else str(v) for v in values]
    return list(map(str, values))


def _typed_value_column(values: Sequence[Any], titles: dict[str, dict[int, str]]) -> Sequence[Any]:
    """Values kept as they are for XLSX cells (None -> "")."""
    return ["" if v is None else v for v in values] if None in values else values


def _cell_column(cell: Callable[[Any, dict[str, dict[int, str]]], Any]) -> ColumnFormatter:
    """A column formatter applying ``cell`` to every value but None (which becomes "")."""

    def fmt_cells(values: Sequence[Any], titles: dict[str, dict[int, str]]) -> Sequence[Any]:
        n = len(values)
        if values.count(None) == n:
            return [""] * n
        return ["" if v is None else cell(v, titles) for v in values]

    return fmt_cells


def _text_cell(value: Any) -> str:
    """A text cell for CSV: as text, quoted when a spreadsheet would run it as a formula."""
    text = value if isinstance(value, str) else str(value)
    return "'" + text if text[:1] in DANGER else text


def _plain_cell(value: Any) -> str:
    """A text cell for XLSX (the writer marks formula-like text as text)."""
    return value if isinstance(value, str) else str(value)


_text_column = _text_column_of(_defuse_column, _text_cell)  # CSV: formulas quoted
_typed_text_column = _text_column_of(_only_text, _plain_cell)  # XLSX



def _defuser(on: bool):
    """A function quoting text a spreadsheet would run as a formula (identity when ``on`` is False)."""
    if not on:
        return lambda text: text
    return lambda text: "'" + text if text[:1] in DANGER else text


def _address(value: Any, lang: str) -> str:
    if not isinstance(value, Mapping):
        return "" if value is None else str(value)
    from crmkit.web.display import address_text

    return address_text(value, lang)


def build_exporter(
    crm: CRM,
    entity: str,
    actor: Actor,
    *,
    columns: Iterable[str] | str | None = None,
    filter: Any = None,
    q: str | None = None,
    sort: str | None = None,
    view: str | None = None,
    lang: str | None = None,
    tz: dt.tzinfo | None = None,
    typed: bool = False,
) -> Exporter:
    """An :class:`Exporter` for ``entity`` as ``actor`` sees it (``view`` names a YAML list view)."""
    if entity not in crm.catalog:
        raise BadRequest(f"no entity {entity!r}")
    ent = crm.catalog[entity]
    if view:
        spec = ent.list.view(view) if hasattr(ent.list, "view") else None
        if spec is None:
            raise BadRequest(f"{entity} has no list view {view!r}")
        from crmkit.core.catalog import thaw

        view_filter = thaw(spec.filter)
        filter = view_filter if filter is None else {"all": [view_filter, filter]}
        sort = sort or (",".join(spec.sort) if spec.sort else None)
    fields = export_fields(crm, ent, actor, columns)
    if not fields:
        raise BadRequest("nothing to export: none of the columns is visible to you")
    zone = tz or _zone(crm)
    return Exporter(crm, ent, actor, fields, filter, q, sort, lang or crm.config.locale or "en", zone, typed)


def _zone(crm: CRM) -> dt.tzinfo:
    from crmkit.web.templating import zone

    return zone(None, crm.config.time_zone)


__all__ = ["ExportRows", "Exporter", "build_exporter", "export_fields"]
