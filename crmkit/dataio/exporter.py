"""Exporting a list view: the records an actor may export, in the columns asked for, as text
that the importer reads back (labels, titles, ISO dates), page by page with flat memory.

Everything is read through ``RecordStore.list(action="export")``, so the export scope of the
actor's role, ``restrict_query`` hooks, hidden fields and masks apply exactly as on screen.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
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
    """Rows of one entity for one actor: ``header()`` then ``rows()`` (a generator).

    ``lang`` picks the labels (headers, options, yes/no); ``tz`` the zone datetimes are shown in;
    ``typed`` keeps numbers, dates and datetimes as Python values (for XLSX cells) instead of text.
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

    def first_page(self):
        """Read the first page now, so permission and query errors surface before streaming starts."""
        return self._page(None)

    def _page(self, cursor: str | None):
        return self.crm.records.list(
            self.entity.name,
            actor=self.actor,
            filter=self.filter,
            q=self.q,
            sort=self.sort,
            cursor=cursor,
            limit=self.page_size,
            with_count=False,
            action="export",
            columns=[f.name for f in self.fields],
        )

    def rows(self, first=None) -> Iterator[list[Any]]:
        """Every matching record as a list of cell values, one page of records in memory at a time.

        Text cells that a spreadsheet would run as a formula (``=HYPERLINK(...)``) get a leading
        quote in text output (``typed=False``); XLSX cells are marked as text by the writer instead.
        """
        page = first if first is not None else self._page(None)
        make_row = self._row_function()
        while True:
            titles = self._titles(page.items)
            for record in page.items:
                yield make_row(record, titles)
            if not page.next_cursor:
                return
            page = self._page(page.next_cursor)

    def _row_function(self) -> Callable[[Mapping[str, Any], dict[str, dict[int, str]]], list[Any]]:
        """``(record, titles) -> cells``, generated once per export with one expression per column.

        A loop over the columns costs a tuple unpack, a lookup and a branch per cell; a generated
        list display does the same work inline (the way ``collections.namedtuple`` builds its
        methods). Only identifiers made here go into the source: field names and formatters are
        passed in the namespace, never spliced into the code.
        """
        namespace: dict[str, Any] = {"_text": _text_cell if not self.typed else _plain_cell, "_danger": DANGER}
        lines, cells = [], []
        for i, f in enumerate(self.fields):
            namespace[f"_n{i}"] = f.name
            lines.append(f"    v{i} = record_get(_n{i})")
            if f.type in PLAIN_TEXT:
                # text cells: the common case (None or safe text) without a function call
                safe = "" if self.typed else f" and v{i}[:1] not in _danger"
                cells.append(f'"" if v{i} is None else (v{i} if v{i}.__class__ is str{safe} else _text(v{i}))')
            else:
                namespace[f"_f{i}"] = self._formatter(f)
                cells.append(f'"" if v{i} is None else _f{i}(v{i}, titles)')
        source = "def make_row(record, titles):\n    record_get = record.get\n" + "\n".join(lines)
        source += "\n    return [\n        " + ",\n        ".join(cells) + ",\n    ]\n"
        exec(compile(source, f"<crmkit export row of {self.entity.name}>", "exec"), namespace)  # noqa: S102
        return namespace["make_row"]

    # -- formatting ------------------------------------------------------------------------------
    def _titles(self, items: list[Mapping[str, Any]]) -> dict[str, dict[int, str]]:
        """Titles of every record the page references, one query per target entity."""
        wanted: dict[str, set[int]] = {}
        for f in self.fields:
            target = f.to
            if target is None or target not in self.crm.catalog:
                continue
            ids = wanted.setdefault(target, set())
            for r in items:
                value = r.get(f.name)
                if isinstance(value, int) and not isinstance(value, bool):
                    ids.add(value)
                elif isinstance(value, list):
                    ids.update(i["id"] for i in value if isinstance(i, Mapping) and i.get("id"))
        return {t: self.crm.records.titles(t, ids) for t, ids in wanted.items() if ids}

    def _formatter(self, f: Field):
        """A function ``(value, titles) -> cell`` for one field, chosen once per export."""
        lang, tz, typed = self.lang, self.tz, self.typed
        target = f.to
        t = f.type
        safe = _defuser(not typed)
        if t == "reference" and target:
            return lambda v, titles: "" if v is None else safe(titles.get(target, {}).get(v, f"#{v}"))
        if t == "references":
            return lambda v, titles: safe("; ".join(
                titles.get(target, {}).get(i["id"], f"#{i['id']}") for i in v or [] if isinstance(i, Mapping)
            ))
        if t == "enum":
            labels = {o.value: o.text(lang) for o in f.options}
            return lambda v, titles: "" if v is None else labels.get(v, str(v))
        if t == "multi_enum":
            labels = {o.value: o.text(lang) for o in f.options}
            return lambda v, titles: ", ".join(labels.get(x, str(x)) for x in v or [])
        if t == "boolean":
            yes, no = YES_NO.get(lang, YES_NO["en"])
            return lambda v, titles: "" if v is None else (yes if v else no)
        if t == "datetime":
            last: list[Any] = [None, None]  # rows written together often share a timestamp

            def fmt_datetime(v, titles):
                if not isinstance(v, dt.datetime):
                    return "" if v is None else str(v)
                if v == last[0] and (v.tzinfo is None) == (last[0].tzinfo is None):
                    return last[1]
                local = v.astimezone(tz) if v.tzinfo else v.replace(tzinfo=dt.UTC).astimezone(tz)
                if typed:
                    out = local.replace(tzinfo=None)
                elif local.year >= 1000:  # isoformat is several times faster than strftime
                    out = local.isoformat(sep=" ", timespec="seconds")[:19]
                else:
                    out = local.strftime("%Y-%m-%d %H:%M:%S")
                last[0], last[1] = v, out
                return out
            return fmt_datetime
        if t == "date":
            return lambda v, titles: "" if v is None else (v if typed else v.isoformat())
        if t in ("integer", "decimal", "money", "percent"):
            return lambda v, titles: "" if v is None else (v if typed else str(v))
        if t == "address":
            return lambda v, titles: safe(_address(v, lang))
        if t == "json":
            return lambda v, titles: "" if v is None else safe(json.dumps(v, ensure_ascii=False, default=str))
        return lambda v, titles: "" if v is None else safe(str(v))


def _text_cell(value: Any) -> str:
    """A text cell for CSV: as text, quoted when a spreadsheet would run it as a formula."""
    text = value if isinstance(value, str) else str(value)
    return "'" + text if text[:1] in DANGER else text


def _plain_cell(value: Any) -> str:
    """A text cell for XLSX (the writer marks formula-like text as text)."""
    return value if isinstance(value, str) else str(value)


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


__all__ = ["Exporter", "build_exporter", "export_fields"]
