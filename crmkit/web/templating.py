"""The admin's Jinja2 environment: autoescaping on, the admin_ui templates, formatting filters.

Templates are looked up in the project's ``templates/`` directory first (so a company can override
one page), then in the templates plugins add through ``prepare_jinja2_environment`` (by adding a
loader to ``env.loader.loaders``), then in crmkit's ``admin_ui/templates``.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import re
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jinja2 import (
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    TemplateNotFound,
    Undefined,
    select_autoescape,
)
from markupsafe import Markup

from crmkit.plugins import call_each

if TYPE_CHECKING:
    from crmkit.app import CRM

_HEX_RE = re.compile(r"^#?([0-9a-fA-F]{3}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})$")


def admin_ui_dir() -> Path:
    """The installed ``admin_ui`` directory (templates/ and static/)."""
    return Path(str(resources.files("crmkit.admin_ui")))


def templates_dir() -> Path:
    """Directory of crmkit's own admin templates."""
    return admin_ui_dir() / "templates"


def static_dir() -> Path:
    """Directory of crmkit's admin CSS, JS and icons."""
    return admin_ui_dir() / "static"


def make_environment(crm: CRM) -> Environment:
    """A new Jinja2 environment for ``crm``'s admin, after the ``prepare_jinja2_environment`` hooks."""
    loaders = []
    if crm.config.project_dir is not None and (crm.config.project_dir / "templates").is_dir():
        loaders.append(FileSystemLoader(str(crm.config.project_dir / "templates")))
    loaders.append(FileSystemLoader(str(templates_dir())))
    env = Environment(
        loader=ChoiceLoader(loaders),
        autoescape=select_autoescape(("html", "htm", "xml", "svg"), default_for_string=True, default=True),
        undefined=Undefined,  # templates treat optional keys as empty (StrictUndefined would refuse them)
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.filters.update(
        money=format_money,
        number=format_number,
        percent=format_percent,
        color_class=color_class,
        options=options_html,
        options_by=options_by,
        choice_templates=choice_templates,
    )
    for _plugin, _result in call_each(crm.pm, "prepare_jinja2_environment", crm=crm, env=env):
        pass
    return env


def is_builtin_template(env: Environment, name: str) -> bool:
    """Whether ``name`` resolves to crmkit's own file (no project or plugin template overrides it)."""
    try:
        _source, filename, _uptodate = env.loader.get_source(env, name)
    except TemplateNotFound:
        return False
    return filename is not None and Path(filename).resolve() == (templates_dir() / name).resolve()


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------
CURRENCY_SYMBOLS = {"JPY": "¥", "USD": "$", "EUR": "€", "GBP": "£"}
ZERO_DECIMAL_CURRENCIES = {"JPY", "KRW"}


def format_number(value: Any, places: int | None = None) -> str:
    """``1234567.5`` -> ``1,234,567.5``; trailing zeros of Decimals dropped."""
    if value is None or value == "":
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, decimal.Decimal):
        if places is not None:
            value = value.quantize(decimal.Decimal(1).scaleb(-places), rounding=decimal.ROUND_HALF_UP)
        else:
            value = value.normalize() if value == value.to_integral_value() else value
            if value == value.to_integral_value():
                value = value.quantize(decimal.Decimal(1))
        return f"{value:,}"
    if isinstance(value, int):
        return f"{value:,}"
    try:
        return f"{decimal.Decimal(str(value)):,}"
    except decimal.InvalidOperation:
        return str(value)


def format_money(value: Any, currency: str = "JPY") -> str:
    """``1234567`` -> ``¥1,234,567`` (JPY has no minor unit); other currencies keep two decimals."""
    if value is None or value == "":
        return ""
    places = 0 if currency in ZERO_DECIMAL_CURRENCIES else 2
    try:
        number = decimal.Decimal(str(value))
    except decimal.InvalidOperation:
        return str(value)
    text = format_number(number, places)
    symbol = CURRENCY_SYMBOLS.get(currency)
    if symbol is None:
        return f"{text} {currency}"
    return f"-{symbol}{text[1:]}" if text.startswith("-") else f"{symbol}{text}"


def format_percent(value: Any) -> str:
    """``Decimal('40.00')`` -> ``40%``."""
    if value is None or value == "":
        return ""
    return f"{format_number(decimal.Decimal(str(value)).normalize())}%"


def zone(name: str | None, fallback: str = "Asia/Tokyo") -> dt.tzinfo:
    """A time zone by name, falling back to ``fallback`` and then UTC for unknown names."""
    for candidate in (name, fallback):
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return dt.UTC


def local_datetime(value: dt.datetime | None, tz: dt.tzinfo) -> dt.datetime | None:
    """A stored (UTC) datetime in the user's time zone."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(tz)


def format_datetime(value: dt.datetime | None, tz: dt.tzinfo, lang: str = "en") -> str:
    """``2026-11-23 14:05`` in the user's zone (the same compact form in both languages)."""
    local = local_datetime(value, tz)
    return local.strftime("%Y-%m-%d %H:%M") if local else ""


def format_date(value: dt.date | None, lang: str = "en") -> str:
    """ISO dates read well in both languages: ``2026-11-23``."""
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        value = value.date()
    return value.isoformat()


@functools.lru_cache(maxsize=1024)  # a handful of option colours, rendered on every chip
def normalize_color(value: str | None) -> str | None:
    """``#2563EB`` / ``2563eb`` / ``#25e`` -> ``2563eb``; None for anything that is not a colour."""
    if not value:
        return None
    m = _HEX_RE.match(str(value).strip())
    if not m:
        return None
    hexpart = m.group(1).lower()
    if len(hexpart) == 3:
        hexpart = "".join(c * 2 for c in hexpart)
    return hexpart[:6]


def color_class(value: str | None) -> str:
    """The CSS class carrying a colour from ``palette.css`` (``c-2563eb``), or ``c-none``."""
    hexpart = normalize_color(value)
    return f"c-{hexpart}" if hexpart else "c-none"


def palette_css(colors: set[str]) -> str:
    """CSS rules ``.c-<hex>{--c:#<hex>}`` for every colour used by enum options (no inline styles)."""
    rules = [".c-none{--c:#94a3b8}"]
    for hexpart in sorted(c for c in (normalize_color(x) for x in colors) if c):
        rules.append(f".c-{hexpart}{{--c:#{hexpart}}}")
    return "\n".join(rules) + "\n"


def html_text(value: Any) -> str:
    """``value`` HTML-escaped as a plain ``str``, exactly as ``markupsafe.escape`` would do it.

    Plain strings (nearly every value on a page) skip the Markup object escape() builds, which
    costs more than the escaping itself; a value with ``__html__`` (Markup) passes unescaped, as
    in Jinja.
    """
    if type(value) is not str:
        if hasattr(value, "__html__"):
            return str(value.__html__())
        value = str(value)
    if "&" in value:
        value = value.replace("&", "&amp;")
    return value.replace("<", "&lt;").replace(">", "&gt;").replace('"', "&#34;").replace("'", "&#39;")


def options_html(choices: Any, selected: Any = None, sep: str = "") -> Markup:
    """``<option>`` elements for a select: ``{{ f.choices|options(f['values']) }}``.

    ``choices`` are ``(value, label)`` pairs or ``{"value", "label", "color"}`` dicts (a colour
    adds ``data-color-class``); an option is selected when its value is in ``selected`` (a list,
    set or tuple) or equal to it (anything else). Each option is followed by ``sep``. The same
    markup as a template loop, at a fraction of its cost: filters, bulk actions and form selects
    print hundreds of options per page.
    """
    if selected is None:
        chosen: Any = ()
    elif isinstance(selected, (list, tuple, set, frozenset)):
        chosen = selected
    else:
        chosen = (selected,)
    parts = []
    cache = _OPTION_HTML
    for choice in choices:
        color = None
        if isinstance(choice, dict):
            value, label, color = choice["value"], choice["label"], choice.get("color")
        else:
            value, label = choice
        # The same (value, label, colour) comes back on every page: its escaped halves are kept.
        key = (type(value), value, type(label), label, color)
        try:
            halves = cache.get(key)
        except TypeError:  # an unhashable value: draw it without keeping
            key, halves = None, None
        if halves is None:
            attrs = ' value="' + html_text(value) + '"'
            tail = ""
            if color:
                tail = ' data-color-class="' + html_text(color_class(color)) + '"'
            halves = ("<option" + attrs, tail + ">" + html_text(label) + "</option>")
            if key is not None:
                if len(cache) >= _OPTION_HTML_MAX:
                    cache.clear()
                cache[key] = halves
        parts.append(halves[0] + (" selected" if value in chosen else "") + halves[1] + sep)
    return Markup("".join(parts))


def options_by(items: Any, key: str = "name", label: str = "label") -> Markup:
    """``<option value="{{ i[key] }}">{{ i[label] }}</option>`` for each mapping of ``items``.

    ``{{ bulk|options_by('name') }}``: the markup of that template loop, through :func:`options_html`.
    """
    return options_html([(item[key], item[label]) for item in items])


def choice_templates(fields: Any) -> Markup:
    """``<template data-choices-for="{{ f.name }}">{{ f.choices|options }}</template>`` for each field with choices.

    The "Set a field" bulk action's value choices (list.html): one string instead of a template loop.
    """
    return Markup("".join(
        '<template data-choices-for="' + html_text(f["name"]) + '">' + str(options_html(f["choices"])) + "</template>"
        for f in fields if f.get("choices")
    ))


# options_html's escaped option halves by (value, label, colour): a pure function of its key, so
# it can never go stale; bounded (cleared when full) because labels come from the database too.
_OPTION_HTML: dict[tuple[Any, ...], tuple[str, str]] = {}
_OPTION_HTML_MAX = 20_000


def markup(html: str) -> Markup:
    """Mark trusted HTML built by the admin itself (every value inside already escaped)."""
    return Markup(html)
