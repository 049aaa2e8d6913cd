"""Charts as server-rendered SVG: no JavaScript library, no CDN, readable without a mouse.

Each chart is a ``<figure>`` holding an ``<svg role="img">`` with ``<title>`` and ``<desc>``
(what a screen reader announces) and, under it, the same numbers as a ``<table>`` in a
``<details>`` element — the accessible fallback and a way to copy the figures. Every piece of text
(names of stages, products, accounts …) is escaped, so a record name cannot inject markup.
The SVG uses a ``viewBox`` and scales to the container, so charts fit a 375 px phone screen.
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup

from crmkit.web.templating import normalize_color

PALETTE = ("#2563eb", "#16a34a", "#ea580c", "#7c3aed", "#0891b2", "#db2777", "#ca8a04", "#64748b")
_ids = iter(range(1, 1 << 62))


@dataclass
class Series:
    """One data series: a name and one value per category (None for no value)."""

    name: str
    values: Sequence[Any]
    color: str | None = None


@dataclass
class Chart:
    """What every chart needs: a title, a description, the categories and the series."""

    title: str
    desc: str
    categories: Sequence[str]
    series: Sequence[Series]
    fmt: Callable[[Any], str] = field(default=lambda v: _plain(v))
    table_label: str = "Data table"
    category_label: str = ""
    colors: Sequence[str | None] = ()  # per category (horizontal bars), e.g. stage colours


def _plain(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, decimal.Decimal | float):
        return f"{value:,.2f}".rstrip("0").rstrip(".")
    return f"{value:,}" if isinstance(value, int) else str(value)


def _num(value: Any) -> float:
    try:
        return float(value) if value is not None else 0.0
    except (TypeError, ValueError):
        return 0.0


def nice_ticks(top: float, count: int = 4) -> list[float]:
    """Round tick values from 0 up to at least ``top`` (1, 2, 2.5, 5 × 10^n steps)."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    n = math.ceil(top / step - 1e-9)
    return [i * step for i in range(n + 1)]


def short_number(value: float) -> str:
    """Axis labels: 1,200,000 -> 1.2M; 35,000 -> 35k."""
    for limit, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            text = f"{value / limit:.1f}".rstrip("0").rstrip(".")
            return f"{text}{suffix}"
    return f"{value:g}"


def hex_color(value: str | None) -> str | None:
    """A safe ``#rrggbb`` for an SVG ``fill`` (None for anything that is not a colour)."""
    hexpart = normalize_color(value)
    return f"#{hexpart}" if hexpart else None


def _color(chart: Chart, i: int, s: Series) -> str:
    return hex_color(s.color) or PALETTE[i % len(PALETTE)]


def _table(chart: Chart) -> Markup:
    head = Markup("").join(Markup('<th scope="col">{}</th>').format(s.name) for s in chart.series)
    rows = []
    for c, cat in enumerate(chart.categories):
        cells = Markup("").join(
            Markup('<td class="num">{}</td>').format(chart.fmt(s.values[c] if c < len(s.values) else None))
            for s in chart.series
        )
        rows.append(Markup('<tr><th scope="row">{}</th>{}</tr>').format(cat, cells))
    return Markup(
        '<details class="chart-data"><summary>{label}</summary><div class="table-wrap"><table>'
        '<thead><tr><th scope="col">{cat}</th>{head}</tr></thead><tbody>{rows}</tbody></table></div></details>'
    ).format(label=chart.table_label, cat=chart.category_label, head=head, rows=Markup("").join(rows))


def _legend(chart: Chart) -> Markup:
    if len(chart.series) < 2:
        return Markup("")
    items = Markup("").join(
        Markup('<li><svg class="swatch" viewBox="0 0 10 10" aria-hidden="true"><rect width="10" height="10" rx="2" '
               'fill="{}"/></svg>{}</li>').format(
            _color(chart, i, s), s.name
        )
        for i, s in enumerate(chart.series)
    )
    return Markup('<ul class="chart-legend">{}</ul>').format(items)


def _figure(chart: Chart, svg: Markup, kind: str) -> Markup:
    return Markup('<figure class="chart chart-{kind}">{svg}{legend}<figcaption class="sr">{title}</figcaption>'
                  "{table}</figure>").format(
        kind=kind, svg=svg, legend=_legend(chart), title=chart.title, table=_table(chart)
    )


def _head(chart: Chart, width: int, height: int) -> tuple[Markup, str]:
    uid = f"ch{next(_ids)}"
    return Markup(
        '<svg class="chart-svg" viewBox="0 0 {w} {h}" preserveAspectRatio="xMinYMin meet" role="img" '
        'aria-labelledby="{u}t {u}d" xmlns="http://www.w3.org/2000/svg"><title id="{u}t">{title}</title>'
        '<desc id="{u}d">{desc}</desc>'
    ).format(w=width, h=height, u=uid, title=chart.title, desc=chart.desc), uid


def bar_chart(chart: Chart, *, width: int = 640, height: int = 260) -> Markup:
    """Vertical bars, grouped when there are several series (e.g. pipeline vs weighted per month)."""
    left, right, top, bottom = 52, 8, 12, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [_num(v) for s in chart.series for v in s.values]
    ticks = nice_ticks(max(values + [0.0]))
    top_value = ticks[-1] or 1.0
    svg, _uid = _head(chart, width, height)
    parts = [svg]
    for t in ticks:
        y = top + plot_h - plot_h * t / top_value
        parts.append(Markup('<line class="grid" x1="{}" x2="{}" y1="{:.1f}" y2="{:.1f}"/>'
                            '<text class="tick" x="{}" y="{:.1f}" text-anchor="end">{}</text>').format(
            left, width - right, y, y, left - 6, y + 4, short_number(t)))
    n = max(1, len(chart.categories))
    band = plot_w / n
    k = max(1, len(chart.series))
    bar_w = max(2.0, band * 0.7 / k)
    step_label = max(1, math.ceil(n / 12))  # at most ~12 labels fit under the axis
    for c, cat in enumerate(chart.categories):
        x0 = left + band * c + band * 0.15
        for i, s in enumerate(chart.series):
            raw = s.values[c] if c < len(s.values) else None
            v = _num(raw)
            h = plot_h * max(v, 0) / top_value
            parts.append(Markup(
                '<rect class="bar" x="{:.1f}" y="{:.1f}" width="{:.1f}" height="{:.1f}" fill="{}">'
                "<title>{}: {} — {}</title></rect>"
            ).format(x0 + i * bar_w, top + plot_h - h, bar_w, h, _color(chart, i, s), cat, s.name, chart.fmt(raw)))
        if c % step_label == 0:
            parts.append(Markup('<text class="cat" x="{:.1f}" y="{}" text-anchor="middle">{}</text>').format(
                left + band * c + band / 2, height - bottom + 16, _clip(cat, 10)))
    parts.append(Markup('<line class="axis" x1="{}" x2="{}" y1="{}" y2="{}"/></svg>').format(
        left, width - right, top + plot_h, top + plot_h))
    return _figure(chart, Markup("").join(parts), "bar")


def hbar_chart(chart: Chart, *, width: int = 640, row: int = 30) -> Markup:
    """Horizontal bars, one row per category (long names such as stages, sources, campaigns)."""
    label_w, right, top = 150, 90, 8
    n = max(1, len(chart.categories))
    height = top * 2 + row * n
    s = chart.series[0] if chart.series else Series("", [])
    values = [_num(v) for v in s.values]
    biggest = max(values + [0.0]) or 1.0
    plot_w = width - label_w - right
    svg, _uid = _head(chart, width, height)
    parts = [svg]
    for c, cat in enumerate(chart.categories):
        raw = s.values[c] if c < len(s.values) else None
        v = _num(raw)
        y = top + row * c
        w = plot_w * max(v, 0) / biggest
        color = hex_color(chart.colors[c] if c < len(chart.colors) else None) or _color(chart, 0, s)
        parts.append(Markup(
            '<text class="cat" x="{}" y="{:.1f}" text-anchor="end">{}</text>'
            '<rect class="bar" x="{}" y="{:.1f}" width="{:.1f}" height="{:.1f}" rx="2" fill="{}">'
            "<title>{}: {}</title></rect>"
            '<text class="val" x="{:.1f}" y="{:.1f}">{}</text>'
        ).format(label_w - 8, y + row * 0.62, _clip(cat, 16), label_w, y + row * 0.15, w, row * 0.7, color,
                 cat, chart.fmt(raw), label_w + w + 6, y + row * 0.62, chart.fmt(raw)))
    parts.append(Markup("</svg>"))
    return _figure(chart, Markup("").join(parts), "hbar")


def _clip(text: str, n: int) -> str:
    text = str(text)
    return text if len(text) <= n else text[: n - 1] + "…"


__all__ = ["Chart", "Series", "bar_chart", "hbar_chart", "nice_ticks", "short_number"]
