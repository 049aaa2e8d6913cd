"""Showing stored values: HTML for lists and detail pages, plain text for CSV exports.

Every value is escaped here (:func:`html_text`, the same escaping as ``markupsafe.escape``) before
it is put into markup, so a stored ``<script>`` is shown as text everywhere. Reference titles are
fetched in one query per target entity for a whole page (:meth:`Display.prefetch`), never per row.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from markupsafe import Markup

from crmkit.web.templating import (
    color_class,
    format_date,
    format_datetime,
    format_money,
    format_number,
    format_percent,
    html_text,
)

if TYPE_CHECKING:
    from crmkit.core.catalog import Entity, Field
    from crmkit.web.site import PageContext

ADDRESS_ORDER_JA = ("postal_code", "prefecture", "city", "street", "building", "country")
ADDRESS_ORDER_EN = ("building", "street", "city", "prefecture", "postal_code", "country")
_TEL_RE = re.compile(r"[^0-9+]")


_CSV_DANGER = ("=", "+", "-", "@", "\t", "\r")


def address_text(value: Any, lang: str = "en") -> str:
    """An address mapping as one line (Japanese order in Japanese)."""
    if not isinstance(value, Mapping):
        return "" if value is None else str(value)
    japanese = lang == "ja" or any(not str(v).isascii() for v in value.values() if v)
    order = ADDRESS_ORDER_JA if japanese else ADDRESS_ORDER_EN
    parts = []
    for key in order:
        part = value.get(key)
        if part:
            parts.append(f"〒{part}" if key == "postal_code" and japanese else str(part))
    return (" " if japanese else ", ").join(parts)


def file_url(entity: str, record_id: Any, field: str) -> str:
    """Where an uploaded file of a record is served (behind login and permission checks)."""
    return f"/admin/{entity}/{record_id}/file/{field}"


class Display:
    """Renders the values of one entity's records for one page (language, time zone, titles)."""

    def __init__(self, ctx: PageContext, entity: Entity):
        self.ctx = ctx
        self.entity = entity
        self.lang = ctx.lang
        self.titles: dict[str, dict[int, str]] = {}
        self._cell_hook = bool(ctx.crm.pm.hook.render_cell.get_hookimpls())
        self._chips: dict[tuple[int, Any], str] = {}
        self._links: dict[tuple[str, Any], str] = {}

    # -- titles ----------------------------------------------------------------------------------
    def prefetch(self, records: Iterable[Mapping[str, Any]], fields: Iterable[Field]) -> None:
        """Fetch the titles of every record referenced from ``records`` (one query per entity)."""
        wanted: dict[str, set[int]] = {}
        records = list(records)
        for f in fields:
            if f.type not in ("reference", "references") or not f.to:
                continue
            ids = wanted.setdefault(f.to, set())
            for r in records:
                value = r.get(f.name)
                if f.type == "reference" and isinstance(value, int):
                    ids.add(value)
                elif f.type == "references" and isinstance(value, list):
                    ids.update(i["id"] for i in value if isinstance(i, Mapping) and i.get("id"))
        for target, ids in wanted.items():
            missing = ids - set(self.titles.get(target, {}))
            if missing:
                self.titles.setdefault(target, {}).update(self.ctx.store.titles(target, missing))
                self._links.clear()  # a link drawn before its title was fetched showed "#id"

    def known_titles(self, entity: str, pairs: Iterable[tuple[int, str]]) -> None:
        """Titles this request has already read (``(id, title)`` pairs), so :meth:`prefetch` skips them.

        Only for pairs read as :meth:`RecordStore.titles` would read them (the title column as
        stored, not masked); records not among them are still fetched.
        """
        known = self.titles.setdefault(entity, {})
        for rid, text in pairs:
            known.setdefault(rid, text)
        self._links.clear()

    def title(self, entity: str, id: int | None) -> str:
        """A prefetched title (``#id`` when it was not fetched or the record is gone)."""
        if id is None:
            return ""
        return self.titles.get(entity, {}).get(id, f"#{id}")

    # -- HTML ------------------------------------------------------------------------------------
    def cell(self, f: Field, record: Mapping[str, Any]) -> Markup:
        """A list cell (plugins may take over through ``render_cell``)."""
        return Markup(self.cell_html(f, record))

    def cell_html(self, f: Field, record: Mapping[str, Any]) -> str:
        """:meth:`cell` as already-escaped text, for code that joins a whole table into one string.

        A list page has hundreds of cells: building them as plain strings and wrapping the page's
        rows in one Markup avoids a Markup object (and its Python-level constructor) per cell.
        """
        value = record.get(f.name)
        if self._cell_hook:
            custom = self.ctx.crm.pm.hook.render_cell(
                crm=self.ctx.crm,
                entity=self.entity,
                field=f,
                value=value,
                record=record,
                request=self.ctx.request,
            )
            if custom is not None:
                return html_text(custom)  # plain text is escaped; Markup passes
        return self._html(f, value, record, True)

    def cell_renderer(self, f: Field) -> Callable[[Mapping[str, Any]], str]:
        """``cell_html(f, record)`` as a function of the record, for a column drawn row after row.

        The same text, with the field-type dispatch done once per column instead of per cell
        (a list page has hundreds of cells, most of them strings, options, references or times).
        """
        if self._cell_hook:
            return lambda record: self.cell_html(f, record)
        name, t = f.name, f.type
        general = self._html

        def empty(value: Any) -> bool:
            return value is None or value == "" or value == []

        if t == "string":
            def string(record: Mapping[str, Any]) -> str:
                value = record.get(name)
                return "" if empty(value) else html_text(value)

            return string
        if t == "enum":
            chip = self._chip

            def option(record: Mapping[str, Any]) -> str:
                value = record.get(name)
                return "" if empty(value) else chip(f, value)

            return option
        if t == "datetime":
            tz, lang = self.ctx.tz, self.lang

            def when(record: Mapping[str, Any]) -> str:
                value = record.get(name)
                if isinstance(value, dt.datetime):
                    return html_text(format_datetime(value, tz, lang))
                return general(f, value, record, True)

            return when
        return lambda record: general(f, record.get(name), record, True)

    def html(
        self, f: Field, value: Any, record: Mapping[str, Any] | None = None, compact: bool = False
    ) -> Markup:
        """A value as safe HTML: links for email/phone/url/references, chips for options."""
        return Markup(self._html(f, value, record, compact))

    def _html(self, f: Field, value: Any, record: Mapping[str, Any] | None, compact: bool) -> str:
        # Escaped text as a plain ``str``: concatenating a str to a Markup would escape the str,
        # and Markup.format() goes through string.Formatter, so the hot types join plain strings.
        if value is None or value == "" or value == []:
            return ""
        t = f.type
        if t == "string":
            return html_text(value)
        if t == "enum":
            return self._chip(f, value)
        if t == "reference" and f.to:
            key = (f.to, value)  # a list page names the same few owners, stages ... again and again
            try:
                html = self._links.get(key)
            except TypeError:  # an unhashable stored value
                key, html = None, None
            if html is None:
                html = ('<a href="/admin/' + html_text(f.to) + "/" + html_text(value) + '">'
                        + html_text(self.title(f.to, value)) + "</a>")
                if key is not None:
                    self._links[key] = html
            return html
        if t == "integer" and f.name == "id":
            return html_text(value)
        if t == "email":
            v = html_text(value)
            return '<a href="mailto:' + v + '">' + v + "</a>"
        if t == "phone":
            return '<a href="tel:' + html_text(_TEL_RE.sub("", str(value))) + '">' + html_text(value) + "</a>"
        if t == "url":
            text = str(value)
            if not text.lower().startswith(("http://", "https://")):
                return html_text(text)
            shown = re.sub(r"^https?://(www\.)?", "", text).rstrip("/")
            if compact and len(shown) > 40:
                shown = shown[:39] + "…"
            return ('<a href="' + html_text(text) + '" target="_blank" rel="noopener noreferrer">'
                    + html_text(shown) + "</a>")
        if t == "multi_enum":
            values = value if isinstance(value, list) else [value]
            return " ".join(self._chip(f, v) for v in values)
        if t == "boolean":
            label = self.ctx._("yes") if value else self.ctx._("no")
            return '<span class="bool bool-' + ("y" if value else "n") + '">' + html_text(label) + "</span>"
        if t == "references" and f.to:
            items = [item for item in value if isinstance(item, Mapping)]
            links = [
                Markup('<a href="/admin/{}/{}">{}</a>').format(f.to, item["id"], self.title(f.to, item["id"]))
                for item in items
            ]
            through = self.through_fields(f)
            if compact or not through:
                return ", ".join(links)
            return str(self.through_table(f, items, links, through))
        if t == "text":
            text = str(value)
            if compact and len(text) > 80:
                text = text[:79] + "…"
            return '<span class="pre">' + html_text(text) + "</span>"
        if t in ("image", "file") and record is not None and record.get("id"):
            url = file_url(self.entity.name, record["id"], f.name)
            if t == "image" and not compact:
                return str(Markup('<a href="{0}"><img class="thumb" src="{0}" alt="{1}"></a>').format(
                    url, f.text(self.lang)
                ))
            return str(Markup('<a href="{}">{}</a>').format(url, str(value).rsplit("/", 1)[-1]))
        if t == "json":
            return "<code>" + html_text(json.dumps(value, ensure_ascii=False, default=str)[:500]) + "</code>"
        if t == "password":
            return "••••••"
        return html_text(self.text(f, value))

    def through_fields(self, f: Field) -> list[Field]:
        """The ``through`` fields of a many-to-many field (quantity, unit price ...)."""
        from crmkit.core.catalog import Field as CatalogField
        from crmkit.core.catalog import make_label

        return [
            CatalogField(name, spec.get("type", "string"), make_label(spec.get("label"), name), spec)
            for name, spec in (f.spec.get("through") or {}).items()
        ]

    def through_table(
        self, f: Field, items: list[Mapping[str, Any]], links: list[Markup], through: list[Field]
    ) -> Markup:
        """Linked records with their ``through`` values, as a small table."""
        head = Markup("").join(Markup('<th scope="col">{}</th>').format(t.text(self.lang)) for t in through)
        rows = []
        for item, link in zip(items, links, strict=True):
            cells = Markup("").join(
                Markup('<td class="{}">{}</td>').format(
                    "num" if t.type in ("integer", "money", "decimal", "percent") else "",
                    self.text(t, item.get(t.name)),
                )
                for t in through
            )
            rows.append(Markup("<tr><td>{}</td>{}</tr>").format(link, cells))
        target = self.ctx.crm.catalog[f.to].text(self.lang) if f.to in self.ctx.crm.catalog else f.to
        return Markup(
            '<table class="mini"><thead><tr><th scope="col">{}</th>{}</tr></thead><tbody>{}</tbody></table>'
        ).format(target, head, Markup("").join(rows))

    def chip(self, f: Field, value: Any) -> Markup:
        """An option as a coloured chip with its label in the UI language."""
        return Markup(self._chip(f, value))

    def _chip(self, f: Field, value: Any) -> str:
        key = (id(f), value)  # catalog fields live as long as the CRM; a Display, one page
        try:
            html = self._chips.get(key)
        except TypeError:  # an unhashable stored value
            key, html = None, None
        if html is None:
            opt = f.option(value)
            if opt is None:
                html = '<span class="chip c-none">' + html_text(value) + "</span>"
            else:
                html = ('<span class="chip ' + html_text(color_class(opt.color)) + '">'
                        + html_text(opt.text(self.lang)) + "</span>")
            if key is not None:
                self._chips[key] = html
        return html

    # -- text ------------------------------------------------------------------------------------
    def text(self, f: Field, value: Any) -> str:
        """A value as plain text (CSV, titles, timeline)."""
        if value is None:
            return ""
        t = f.type
        if t == "money":
            return format_money(value, f.spec.get("currency", "JPY"))
        if t == "percent":
            return format_percent(value)
        if t in ("decimal",):
            return format_number(value)
        if t == "integer":
            return str(value) if f.name in ("id", "version", "sort_order") else format_number(value)
        if t == "datetime" and isinstance(value, dt.datetime):
            return format_datetime(value, self.ctx.tz, self.lang)
        if t == "date" and isinstance(value, dt.date):
            return format_date(value, self.lang)
        if t == "boolean":
            return self.ctx._("yes") if value else self.ctx._("no")
        if t == "enum":
            opt = f.option(value)
            return opt.text(self.lang) if opt else str(value)
        if t == "multi_enum":
            values = value if isinstance(value, list) else [value]
            return ", ".join(self.text_option(f, v) for v in values)
        if t == "reference" and f.to:
            return self.title(f.to, value)
        if t == "references" and f.to:
            return ", ".join(self.title(f.to, i["id"]) for i in value if isinstance(i, Mapping))
        if t == "address":
            return address_text(value, self.lang)
        if t == "json":
            return json.dumps(value, ensure_ascii=False, default=str)
        if t == "password":
            return ""
        if isinstance(value, decimal.Decimal):
            return format_number(value)
        return str(value)

    def text_option(self, f: Field, value: Any) -> str:
        opt = f.option(value)
        return opt.text(self.lang) if opt else str(value)

    def csv(self, f: Field, value: Any) -> str:
        """A value for a CSV cell, defused against spreadsheet formula injection."""
        if f.type in ("money", "decimal", "percent", "integer") and value is not None:
            return str(value)
        if f.type == "datetime" and isinstance(value, dt.datetime):
            return format_datetime(value, self.ctx.tz)
        return csv_safe(self.text(f, value))


def csv_safe(text: str) -> str:
    """Prefix a cell that a spreadsheet would run as a formula (``=cmd|...``) with a quote."""
    if text and text.startswith(_CSV_DANGER):
        return "'" + text
    return text
