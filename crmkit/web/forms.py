"""Record forms: one widget per field type, parsing submitted forms, keeping the user's input.

:func:`build_form` lays a record out in the YAML's form sections, each field with its widget
(``widgets/<name>.html``; plugins register more through ``register_field_widgets`` or a field's
``widget:`` option). :func:`parse_form` turns a submitted form back into values for RecordStore
(which coerces and validates them) plus the raw input to show again when the save fails.
``visible_if``/``required_if`` travel to the browser as JSON (admin.js applies them live) and
are applied again here: a field hidden by its condition is not written.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from markupsafe import Markup
from starlette.datastructures import FormData, UploadFile

from crmkit.core import conditions
from crmkit.core.catalog import Field, FormSection, make_label
from crmkit.core.errors import CRMError
from crmkit.web.templating import color_class, html_text, local_datetime, options_html

if TYPE_CHECKING:
    from crmkit.core.catalog import Entity
    from crmkit.web.site import PageContext

INPUT_TYPES = {
    "text": "text",
    "email": "email",
    "tel": "tel",
    "url": "url",
    "number": "number",
    "decimal": "text",
    "money": "text",
    "percent": "number",
    "date": "date",
    "datetime": "datetime-local",
    "password": "password",
}
BUILTIN_WIDGETS = {
    **{name: "widgets/input.html" for name in INPUT_TYPES},
    "textarea": "widgets/textarea.html",
    "checkbox": "widgets/checkbox.html",
    "select": "widgets/select.html",
    "multiselect": "widgets/multiselect.html",
    "reference": "widgets/reference.html",
    "references": "widgets/references.html",
    "file": "widgets/file.html",
    "image": "widgets/file.html",
    "address": "widgets/address.html",
    "json": "widgets/textarea.html",
}
ADDRESS_PARTS = ("postal_code", "prefecture", "city", "street", "building")
ADDRESS_LABELS = {
    "postal_code": {"en": "Postal code", "ja": "郵便番号"},
    "prefecture": {"en": "Prefecture", "ja": "都道府県"},
    "city": {"en": "City", "ja": "市区町村"},
    "street": {"en": "Street", "ja": "番地"},
    "building": {"en": "Building", "ja": "建物名"},
}
SMALL_CHOICES = 50  # a reference to at most this many records is a <select>, otherwise autocomplete
PILL_OPTIONS = 5  # an enum with at most this many coloured options shows as radio pills
MAX_UPLOAD = 10 * 1024 * 1024
IMAGE_MAGIC = {b"\x89PNG\r\n\x1a\n": ".png", b"\xff\xd8\xff": ".jpg", b"GIF87a": ".gif", b"GIF89a": ".gif"}

# Translations of RecordStore's most common messages (they are English in the core).
MESSAGES_JA = [
    (re.compile(r"^is required$"), "必須項目です。"),
    (re.compile(r"^must be at most (\d+) characters.*$"), r"\1文字以内で入力してください。"),
    (
        re.compile(r"^must be an email address.*$"),
        "メールアドレスの形式で入力してください（例: name@example.com）。",
    ),
    (re.compile(r"^must be a phone number.*$"), "電話番号の形式で入力してください。"),
    (re.compile(r"^must be a web address.*$"), "http:// または https:// で始まるURLを入力してください。"),
    (re.compile(r"^must be a whole number$"), "整数で入力してください。"),
    (re.compile(r"^must be a number$"), "数値で入力してください。"),
    (re.compile(r"^must be a date \(YYYY-MM-DD\)$"), "日付（YYYY-MM-DD）で入力してください。"),
    (re.compile(r"^must be a date and time.*$"), "日時を入力してください。"),
    (re.compile(r"^must be at least (\S+)$"), r"\1 以上で入力してください。"),
    (re.compile(r"^must be at most (\S+)$"), r"\1 以下で入力してください。"),
    (re.compile(r"^must be between (\S+) and (\S+)$"), r"\1〜\2 の範囲で入力してください。"),
    (re.compile(r"^another \w+ already has this value$"), "同じ値のレコードが既に存在します。"),
    (re.compile(r"^must be at least 8 characters$"), "8文字以上で入力してください。"),
    (re.compile(r"^must be one of: .*$"), "選択肢から選んでください。"),
]


def translate_message(message: str, lang: str) -> str:
    """A RecordStore validation message in the UI language (known ones only)."""
    if lang != "ja":
        return message
    for pattern, replacement in MESSAGES_JA:
        if pattern.match(message):
            return pattern.sub(replacement, message)
    return message


class WidgetExtra(dict):
    """A widget's type-specific settings; a missing key reads as None (``w.extra.step``).

    Jinja looks ``w.extra.step`` up as an attribute first: on a plain dict every absent key would
    cost a raised AttributeError, and an input widget asks for half a dozen of them.
    """

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # copy, pickle ... probe dunders: not settings
            raise AttributeError(name)
        return self.get(name)


@dataclass
class Widget:
    """One field of a form, ready for its widget template."""

    field: Field
    name: str
    label: str
    template: str
    kind: str
    value: Any = None
    errors: list[str] = field(default_factory=list)
    help: str = ""
    placeholder: str = ""
    required: bool = False
    readonly: bool = False
    input_type: str = "text"
    choices: list[dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=WidgetExtra)
    visible_if: str = ""
    required_if: str = ""
    macro: str = ""  # the widgets/_macros.html macro drawing it ("": include ``template``)
    python: bool = False  # drawn by :meth:`box_html` (the built-in markup of ``macro``, in Python)

    @property
    def id(self) -> str:
        return "f-" + self.name.replace(".", "-")

    @property
    def describedby(self) -> str:
        ids = []
        if self.help:
            ids.append(self.id + "-help")
        if self.errors:
            ids.append(self.id + "-err")
        return " ".join(ids)

    # The attributes every widget repeats, as one string each: a form has dozens of widgets and
    # each ``{% if w.x %}`` in a template costs an attribute lookup and a branch.
    # The Python widgets join plain (already escaped) strings: the ``_…_text`` helpers below are
    # the Markup properties' text, without a Markup object per attribute per widget.
    def _state_text(self, locked: str) -> str:
        out = ' required aria-required="true"' if self.required else ""
        if self.readonly:
            out += locked
        if self.errors:
            out += ' aria-invalid="true"'
        if self.help or self.errors:
            out += ' aria-describedby="' + html_text(self.describedby) + '"'
        return out

    @property
    def state_attrs(self) -> Markup:
        """`` required aria-required="true" readonly aria-invalid="true" aria-describedby="…"`` as they apply."""
        return Markup(self._state_text(" readonly"))

    @property
    def state_attrs_disabled(self) -> Markup:
        """:attr:`state_attrs` with ``disabled`` for ``readonly`` (selects cannot be read-only)."""
        return Markup(self._state_text(" disabled"))

    @property
    def box_attrs(self) -> Markup:
        """The attributes of the ``<div class="field …">`` around the widget in form.html."""
        return Markup(self._box_attrs_text())

    def _box_attrs_text(self) -> str:
        ftype = html_text(self.field.type)
        out = 'class="field field-' + ftype
        if self.errors:
            out += " has-error"
        if self.kind in ("textarea", "references", "address", "json"):
            out += " span-all"
        out += '" data-field="' + html_text(self.name) + '" data-type="' + ftype + '"'
        if self.visible_if:
            out += ' data-visible-if="' + html_text(self.visible_if) + '"'
        if self.required_if:
            out += ' data-required-if="' + html_text(self.required_if) + '"'
        return out

    # -- the built-in widgets in Python ------------------------------------------------------------
    # form.html draws a widget whose ``python`` is set with one call to box_html instead of the
    # _macros.html macro: the same markup, byte for byte (tests/test_admin_render.py compares them),
    # without the macro's hundreds of escapes and attribute lookups per form.

    def box_html(self, translate: Callable[[str], str]) -> Markup:
        """The widget's whole ``<div class="field …">`` block of form.html (help and errors included)."""
        out = "      <div " + self._box_attrs_text() + ">\n" + PYTHON_WIDGETS[self.macro](self, translate)
        if self.help:
            out += '<p class="help" id="' + html_text(self.id) + '-help">' + html_text(self.help) + "</p>"
        if self.errors:
            out += (
                '<p class="error" id="' + html_text(self.id) + '-err">'
                + " ".join(html_text(m) for m in self.errors) + "</p>"
            )
        return Markup(out + "      </div>\n")

    def _label_html(self) -> str:
        return (
            '<label for="' + html_text(self.id) + '"' + (' class="req"' if self.required else "") + ">"
            + html_text(self.label) + "</label>"
        )

    def _value_text(self) -> str:
        return "" if self.value is None else html_text(self.value)

    def _describedby_attr(self) -> str:
        describedby = self.describedby
        return ' aria-describedby="' + html_text(describedby) + '"' if describedby else ""


def _input_html(w: Widget, translate: Callable[[str], str]) -> str:
    """widgets/_macros.html ``input``."""
    extra = w.extra
    prefix, suffix = extra.get("prefix"), extra.get("suffix")
    out = w._label_html()
    if prefix or suffix:
        out += '<div class="affix">'
        if prefix:
            out += '<span class="pre-fix" aria-hidden="true">' + html_text(prefix) + "</span>"
    out += (
        '<input id="' + html_text(w.id) + '" name="' + html_text(w.name) + '" type="' + html_text(w.input_type)
        + '" value="' + w._value_text() + '"'
    )
    if w.kind == "money" or w.kind == "decimal":
        out += ' inputmode="decimal"'
    if extra.get("step"):
        out += ' step="' + html_text(extra["step"]) + '"'
    if extra.get("min") is not None and w.input_type == "number":
        out += ' min="' + html_text(extra["min"]) + '"'
    if extra.get("max") is not None and w.input_type == "number":
        out += ' max="' + html_text(extra["max"]) + '"'
    if extra.get("maxlength"):
        out += ' maxlength="' + html_text(extra["maxlength"]) + '"'
    if w.placeholder:
        out += ' placeholder="' + html_text(w.placeholder) + '"'
    out += w._state_text(" readonly")
    if w.kind == "password":
        out += ' autocomplete="new-password"'
    elif w.kind == "email":
        out += ' autocomplete="email"'
    elif w.kind == "tel":
        out += ' autocomplete="tel"'
    out += ">\n"
    if prefix or suffix:
        if suffix:
            out += '<span class="post-fix" aria-hidden="true">' + html_text(suffix) + "</span>"
        out += "</div>"
    return out


def _textarea_html(w: Widget, translate: Callable[[str], str]) -> str:
    """widgets/_macros.html ``textarea``."""
    json_kind = w.kind == "json"
    out = (
        w._label_html() + '<textarea id="' + html_text(w.id) + '" name="' + html_text(w.name) + '" rows="'
        + ("6" if json_kind else "3") + '"'
    )
    if json_kind:
        out += ' class="mono" spellcheck="false"'
    if w.placeholder:
        out += ' placeholder="' + html_text(w.placeholder) + '"'
    return out + w._state_text(" readonly") + ">" + w._value_text() + "</textarea>"


def _checkbox_html(w: Widget, translate: Callable[[str], str]) -> str:
    """widgets/_macros.html ``checkbox``."""
    out = (
        '<div class="check">\n<input type="checkbox" id="' + html_text(w.id) + '" name="' + html_text(w.name)
        + '" value="1"'
    )
    if w.value:
        out += " checked"
    if w.readonly:
        out += " disabled"
    return (
        out + w._describedby_attr() + '>\n<label for="' + html_text(w.id) + '">' + html_text(w.label)
        + "</label>\n</div>"
    )


def _select_html(w: Widget, translate: Callable[[str], str]) -> str:
    """widgets/_macros.html ``select`` (radio pills for a few coloured options)."""
    if not w.extra.get("pills"):
        return (
            w._label_html() + '<div class="select-wrap">\n<span class="swatch" aria-hidden="true" data-swatch></span>\n'
            '<select id="' + html_text(w.id) + '" name="' + html_text(w.name) + '"' + w._state_text(" disabled")
            + '>\n<option value="">' + html_text(translate("choose")) + "</option>\n"
            + str(options_html(w.choices, w.value, "\n")) + "</select>\n</div>\n"
        )
    name = html_text(w.name)
    disabled = " disabled" if w.readonly else ""
    out = '<fieldset class="pills" id="' + html_text(w.id) + '"' + w._describedby_attr()
    if w.errors:
        out += ' aria-invalid="true"'
    out += (
        ">\n<legend" + (' class="req"' if w.required else "") + ">" + html_text(w.label)
        + '</legend>\n<div class="pill-row">\n'
    )
    if not w.required:
        out += (
            '<label class="pill c-none"><input type="radio" name="' + name + '" value=""'
            + ("" if w.value else " checked") + disabled + "><span>" + html_text(translate("none_value"))
            + "</span></label>"
        )
    required = " required" if w.required else ""
    for c in w.choices or ():
        out += (
            '<label class="pill ' + html_text(color_class(c.get("color"))) + '"><input type="radio" name="' + name
            + '" value="' + html_text(c["value"]) + '"' + (" checked" if c["value"] == w.value else "")
            + disabled + required + "><span>" + html_text(c["label"]) + "</span></label>"
        )
    return out + "</div>\n</fieldset>\n"


def _multiselect_html(w: Widget, translate: Callable[[str], str]) -> str:
    """widgets/_macros.html ``multiselect``."""
    name = html_text(w.name)
    disabled = " disabled" if w.readonly else ""
    out = (
        '<fieldset class="checks" id="' + html_text(w.id) + '"' + w._describedby_attr() + ">\n<legend"
        + (' class="req"' if w.required else "") + ">" + html_text(w.label) + "</legend>\n"
    )
    for c in w.choices or ():
        checked = " checked" if w.value and c["value"] in w.value else ""
        out += (
            '<label class="pill ' + html_text(color_class(c.get("color"))) + '"><input type="checkbox" name="' + name
            + '" value="' + html_text(c["value"]) + '"' + checked + disabled + "><span>" + html_text(c["label"])
            + "</span></label>"
        )
    return out + "</fieldset>"


def _reference_html(w: Widget, translate: Callable[[str], str]) -> str:
    """widgets/_macros.html ``reference``: a select for a small target, otherwise an autocomplete."""
    if w.choices is not None:
        return (
            w._label_html() + '<select id="' + html_text(w.id) + '" name="' + html_text(w.name) + '"'
            + w._state_text(" disabled") + '>\n<option value="">' + html_text(translate("choose")) + "</option>\n"
            + str(options_html(w.choices, str(w.value))) + "</select>\n"
        )
    return (
        w._label_html() + '<div class="ac" data-ac="/admin/' + html_text(w.field.to) + '/autocomplete">\n'
        '<input id="' + html_text(w.id) + '" class="ac-input" role="combobox" aria-autocomplete="list" '
        'aria-expanded="false" autocomplete="off" value="' + html_text(w.extra.get("title") or "")
        + '" placeholder="' + html_text(translate("type_to_search")) + '"' + w._state_text(" readonly") + ">\n"
        '<input type="hidden" name="' + html_text(w.name) + '" value="' + w._value_text() + '">\n</div>\n'
    )


def _address_html(w: Widget, translate: Callable[[str], str]) -> str:
    """widgets/_macros.html ``address``: one input per part, in a fieldset."""
    wid, name = html_text(w.id), html_text(w.name)
    value = w.value or {}
    out = '<fieldset class="address" id="' + wid + '"' + w._describedby_attr() + ">\n<legend>" + html_text(w.label)
    out += '</legend>\n<div class="addr-grid">\n'
    readonly = " readonly" if w.readonly else ""
    for part, label in w.extra.get("parts") or ():
        p = html_text(part)
        out += (
            '<div class="addr-' + p + '"><label for="' + wid + "-" + p + '">' + html_text(label) + '</label><input id="'
            + wid + "-" + p + '" name="' + name + "." + p + '" value="' + html_text(value.get(part, "")) + '"'
            + (' autocomplete="postal-code" inputmode="numeric"' if part == "postal_code" else "") + readonly
            + "></div>"
        )
    return out + "</div>\n</fieldset>"


#: The _macros.html macros drawn in Python (file and references stay macros).
PYTHON_WIDGETS: dict[str, Callable[[Widget, Callable[[str], str]], str]] = {
    "input": _input_html,
    "textarea": _textarea_html,
    "checkbox": _checkbox_html,
    "select": _select_html,
    "multiselect": _multiselect_html,
    "reference": _reference_html,
    "address": _address_html,
}


@dataclass
class Section:
    label: str
    columns: int
    widgets: list[Widget]

    def widgets_html(self, translate: Callable[[str], str]) -> Markup | None:
        """form.html's widget loop for this section when every widget is drawn in Python, else None.

        One call per section instead of a loop step, a test and a call per widget.
        """
        if not all(w.python for w in self.widgets):
            return None
        return Markup("".join(str(w.box_html(translate)) for w in self.widgets))


def form_sections(entity: Entity) -> tuple[FormSection, ...]:
    """The entity's form sections, or one section with every visible field."""
    if entity.form:
        return entity.form
    names = tuple(f.name for f in entity.visible_fields)
    return (FormSection(make_label(None, entity.text("en")), names, 2),)


def editable(ctx: PageContext, entity: Entity, f: Field, access: Mapping[str, str] | None = None) -> bool:
    """Whether the actor may type into this field (``access``: the actor's field access, if known)."""
    if f.name in ("owner", "team") and entity.ownable:
        pass  # system columns a user may set, when the role's field access allows it
    elif f.readonly or f.compute or f.deprecated:
        return False
    if access is None:
        access = ctx.store.field_access(ctx.actor, entity.name)
    return access.get(f.name, "write") in ("write", "write-only")


def form_fields(ctx: PageContext, entity: Entity) -> list[Field]:
    """Fields the form shows: the sections' fields the actor may see, plus owner where allowed."""
    access = ctx.store.field_access(ctx.actor, entity.name)
    out = []
    for section in form_sections(entity):
        for name in section.fields:
            f = entity.fields.get(name)
            if f is None or f.deprecated or access.get(name) == "none":
                continue
            out.append(f)
    if entity.ownable and "owner" in entity.fields and access.get("owner", "write") == "write":
        out.append(entity.fields["owner"])
    return out


# ---------------------------------------------------------------------------------------------
# Building forms
# ---------------------------------------------------------------------------------------------
class FormBuilder:
    """Builds the widgets of one entity's form for one request (caching reference choices)."""

    def __init__(self, ctx: PageContext, entity: Entity):
        self.ctx = ctx
        self.entity = entity
        self._choices: dict[str, list[dict[str, Any]] | None] = {}
        self._access = ctx.store.field_access(ctx.actor, entity.name)  # one copy for every widget

    def sections(
        self, values: Mapping[str, Any], errors: Mapping[str, list[str]] | None = None
    ) -> list[Section]:
        """Widgets grouped by the YAML sections; ``values`` are form values (see :func:`form_values`)."""
        errors = errors or {}
        access = self._access
        lang = self.ctx.lang
        out: list[Section] = []
        for section in form_sections(self.entity):
            widgets = []
            for name in section.fields:
                f = self.entity.fields.get(name)
                if f is None or f.deprecated or access.get(name) == "none":
                    continue
                widgets.append(self.widget(f, values.get(name), errors))
            if widgets:
                out.append(Section(section.label.get(lang) or section.label["en"], section.columns, widgets))
        owner = self.entity.fields.get("owner")
        if self.entity.ownable and owner is not None and access.get("owner", "write") == "write":
            out.append(
                Section(self.ctx._("record_info"), 2, [self.widget(owner, values.get("owner"), errors)])
            )
        return out

    def widget(self, f: Field, value: Any, errors: Mapping[str, list[str]]) -> Widget:
        """The widget of one field with its value, messages and conditions."""
        lang = self.ctx.lang
        attrs, extra, choices = self._static(f, lang)
        field_errors = [
            translate_message(m, lang)
            for key, msgs in errors.items()
            if key == f.name or key.startswith(f.name + ".")
            for m in msgs
        ] if errors else []
        w = Widget(
            field=f,
            value=value,
            errors=field_errors,
            readonly=not editable(self.ctx, self.entity, f, self._access),
            extra=WidgetExtra(extra),
            **attrs,
        )
        if f.type in ("enum", "multi_enum"):
            if choices is not None:
                w.choices = list(choices)
            else:
                current = value if isinstance(value, (list, tuple)) else (value,)
                w.choices = [{"value": o.value, "label": o.text(lang), "color": o.color} for o in f.options
                             if not o.system or o.value in current]  # a workflow's option, unless already set
        elif f.type == "reference" and f.to:
            w.choices = self.reference_choices(f.to)
            if value not in (None, ""):
                # A select already holds the current record's title; only an autocomplete (or a
                # value outside the choices) needs the query.
                shown = str(value)
                title = next((c["label"] for c in w.choices or () if c["value"] == shown), None)
                w.extra["title"] = title if title is not None else self._title(f.to, value)
        elif f.type == "references" and f.to:
            w.extra["through"] = [
                Field(n, s.get("type", "string"), make_label(s.get("label"), n), s)
                for n, s in (f.spec.get("through") or {}).items()
            ]
            rows = list(value or [])
            titles = self.ctx.store.titles(
                f.to, [r.get("id") for r in rows if str(r.get("id", "")).isdigit()]
            )
            for r in rows:
                rid = r.get("id")
                r["title"] = titles.get(int(rid), f"#{rid}") if str(rid or "").isdigit() else ""
            w.extra["rows"] = rows
            w.choices = self.reference_choices(f.to)
        elif f.type == "password":
            w.value = ""
        if f.type == "string" and f.spec.get("max_length"):
            w.extra["maxlength"] = f.spec["max_length"]
        return w

    def _static(
        self, f: Field, lang: str
    ) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]] | None]:
        """What a field's widget shows whatever the record and the actor, kept per site and language.

        ``(Widget keyword arguments, extra settings, enum choices)``; the choices are None when an
        option is a workflow's (``system``), whose presence depends on the value. A form has dozens
        of widgets and these labels, JSON conditions and option lists are the same on every request.
        """
        statics = self.ctx.site.widget_statics
        key = (id(f), lang)
        cached = statics.get(key)
        if cached is not None and cached[0] is f:  # the field itself is kept: its id is never reused
            return cached[1]
        site = self.ctx.site
        ftype = self.ctx.crm.field_types.get(f.type)
        kind = f.spec.get("widget") or (ftype.widget if ftype else "text")
        template = site.widgets.get(kind) or BUILTIN_WIDGETS.get(kind, "widgets/input.html")
        macro = site.widget_macros.get(template, "")
        attrs: dict[str, Any] = {
            "name": f.name,
            "label": f.text(lang),
            "template": template,
            "macro": macro,
            "python": macro in site.python_widgets,
            "kind": kind,
            "help": _label(f.spec.get("help"), lang),
            "placeholder": _label(f.spec.get("placeholder"), lang),
            "required": f.required,
            "input_type": INPUT_TYPES.get(kind, "text"),
            "visible_if": json.dumps(_plain(f.visible_if), ensure_ascii=False) if f.visible_if else "",
            "required_if": json.dumps(_plain(f.required_if), ensure_ascii=False) if f.required_if else "",
        }
        extra: dict[str, Any] = {}
        choices = None
        if f.type in ("enum", "multi_enum"):
            if not any(o.system for o in f.options):
                choices = [{"value": o.value, "label": o.text(lang), "color": o.color} for o in f.options]
            extra["pills"] = f.type == "enum" and len(f.options) <= PILL_OPTIONS and any(o.color for o in f.options)
        elif f.type == "address":
            extra["parts"] = [(p, ADDRESS_LABELS[p][lang]) for p in ADDRESS_PARTS]
        elif f.type in ("money", "decimal", "percent", "integer"):
            extra["step"] = "1" if f.type in ("integer",) else "any"
            extra["min"] = f.spec.get("min")
            extra["max"] = f.spec.get("max")
            extra["prefix"] = "¥" if f.type == "money" and f.spec.get("currency", "JPY") == "JPY" else ""
            extra["suffix"] = "%" if f.type == "percent" else ""
        elif f.type in ("image", "file"):
            extra["accept"] = f.spec.get("accept") or (
                "image/png,image/jpeg,image/gif,image/webp" if f.type == "image" else ""
            )
        statics[key] = (f, (attrs, extra, choices))
        return attrs, extra, choices

    def reference_choices(self, target: str) -> list[dict[str, Any]] | None:
        """All records of a small target entity (for a select), or None (use autocomplete)."""
        if target not in self._choices:
            try:
                pairs = self.ctx.store.search_titles(
                    target, "", actor=self.ctx.actor, limit=SMALL_CHOICES + 1
                )
            except CRMError:
                pairs = []
            if len(pairs) > SMALL_CHOICES:
                self._choices[target] = None
            else:
                self._choices[target] = [{"value": str(i), "label": t} for i, t in pairs]
        return self._choices[target]

    def _title(self, target: str, value: Any) -> str:
        try:
            rid = int(value)
        except (TypeError, ValueError):
            return ""
        return self.ctx.store.titles(target, [rid]).get(rid, f"#{rid}")


def _label(value: Any, lang: str) -> str:
    if not value:
        return ""
    if isinstance(value, str):
        return value
    return value.get(lang) or value.get("en") or ""


def _plain(value: Any) -> Any:
    from crmkit.core.catalog import thaw

    return thaw(value)


# ---------------------------------------------------------------------------------------------
# Values: stored record <-> form
# ---------------------------------------------------------------------------------------------
def form_values(ctx: PageContext, entity: Entity, record: Mapping[str, Any]) -> dict[str, Any]:
    """A stored record as the strings and lists the widgets show."""
    out: dict[str, Any] = {}
    for f in entity.fields.values():
        if f.name not in record:
            continue
        out[f.name] = _to_form(ctx, f, record[f.name])
    return out


def _to_form(ctx: PageContext, f: Field, value: Any) -> Any:
    if value is None:
        return [] if f.type in ("references", "multi_enum") else ({} if f.type == "address" else "")
    t = f.type
    if t == "datetime" and isinstance(value, dt.datetime):
        local = local_datetime(value, ctx.tz)
        return local.strftime("%Y-%m-%dT%H:%M") if local else ""
    if t == "date" and isinstance(value, dt.date):
        return value.isoformat()
    if t == "money" and isinstance(value, decimal.Decimal):
        return f"{value:,.0f}" if value == value.to_integral_value() else f"{value:,.2f}"
    if isinstance(value, decimal.Decimal):
        text = format(value.normalize(), "f") if value == value.to_integral_value() else format(value, "f")
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        return text
    if t == "boolean":
        return bool(value)
    if t == "references":
        return [{k: ("" if v is None else _to_form_scalar(v)) for k, v in item.items()} for item in value]
    if t == "json":
        return json.dumps(value, ensure_ascii=False, indent=2)
    if t == "password":
        return ""
    if t in ("multi_enum", "address"):
        return value
    return str(value)


def _to_form_scalar(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        text = format(value, "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    return value


def default_values(ctx: PageContext, entity: Entity) -> dict[str, Any]:
    """Form values of a new record: YAML defaults, the actor as owner, and ``?field=`` prefills."""
    out: dict[str, Any] = {}
    for f in entity.user_fields:
        if f.default is not None:
            out[f.name] = _to_form(ctx, f, f.default) if not isinstance(f.default, bool) else f.default
    if entity.ownable and ctx.actor is not None and ctx.actor.id is not None:
        out["owner"] = str(ctx.actor.id)
    for key, value in ctx.query.items():  # "New contact" from an account page: ?account=12
        f = entity.fields.get(key)
        if f is not None and not f.system and f.type in ("reference", "string", "enum", "date"):
            out[key] = value
    return out


# ---------------------------------------------------------------------------------------------
# Parsing a submitted form
# ---------------------------------------------------------------------------------------------
@dataclass
class Parsed:
    """A submitted form: ``values`` for RecordStore, ``raw`` to re-render, ``errors`` from parsing."""

    values: dict[str, Any]
    raw: dict[str, Any]
    errors: dict[str, list[str]]
    version: int | None


def parse_form(
    ctx: PageContext, entity: Entity, form: FormData, old: Mapping[str, Any] | None = None
) -> Parsed:
    """Read the fields the actor may write from ``form``; apply ``visible_if`` on the server."""
    values: dict[str, Any] = {}
    raw: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    fields = [f for f in form_fields(ctx, entity) if editable(ctx, entity, f)]
    for f in fields:
        name, t = f.name, f.type
        if t == "boolean":
            raw[name] = values[name] = "1" in form.getlist(name)
        elif t == "multi_enum":
            raw[name] = values[name] = [v for v in form.getlist(name) if isinstance(v, str) and v]
        elif t == "references":
            rows = _rows(form, name, f)
            raw[name] = rows
            values[name] = [r for r in rows if str(r.get("id", "")).strip()]
        elif t == "address":
            parts = {p: str(form.get(f"{name}.{p}") or "").strip() for p in ADDRESS_PARTS}
            raw[name] = parts
            values[name] = {k: v for k, v in parts.items() if v} or None
        elif t == "datetime":
            text = str(form.get(name) or "").strip()
            raw[name] = text
            values[name] = _local_to_utc(text, ctx.tz)
        elif t in ("image", "file"):
            upload = form.get(name)
            if isinstance(upload, UploadFile) and upload.filename:
                try:
                    values[name] = save_upload(ctx, entity, f, upload)
                except ValueError as exc:
                    errors.setdefault(name, []).append(str(exc))
            elif form.get(f"{name}.clear") == "1":
                values[name] = None
        elif t == "password":
            text = str(form.get(name) or "")
            if text:
                values[name] = text
        else:
            if name not in form and f.name == "owner":
                continue
            text = form.get(name)
            text = "" if text is None or isinstance(text, UploadFile) else str(text)
            raw[name] = text
            values[name] = text
    _apply_visibility(ctx, entity, values, old)
    version = form.get("version")
    try:
        version_int = int(str(version)) if version not in (None, "") else None
    except ValueError:
        version_int = None
    return Parsed(values, raw, errors, version_int)


def _rows(form: FormData, name: str, f: Field) -> list[dict[str, Any]]:
    """``products.0.id``, ``products.0.quantity`` ... -> ``[{"id": "3", "quantity": "2"}]``."""
    through = list((f.spec.get("through") or {}).keys())
    indexes = sorted(
        {int(m.group(1)) for key in form.keys() if (m := re.fullmatch(re.escape(name) + r"\.(\d+)\.id", key))}
    )
    rows = []
    for i in indexes:
        row: dict[str, Any] = {"id": str(form.get(f"{name}.{i}.id") or "").strip()}
        for t in through:
            row[t] = str(form.get(f"{name}.{i}.{t}") or "").strip()
        rows.append(row)
    return rows


def _local_to_utc(text: str, tz: dt.tzinfo) -> str | None:
    """``2026-11-23T10:00`` typed in the user's zone -> an ISO string with the offset."""
    if not text:
        return None
    try:
        local = dt.datetime.fromisoformat(text.replace("/", "-"))
    except ValueError:
        return text  # let the field type report it
    if local.tzinfo is None:
        local = local.replace(tzinfo=tz)
    return local.isoformat()


def _apply_visibility(
    ctx: PageContext, entity: Entity, values: dict[str, Any], old: Mapping[str, Any] | None
) -> None:
    """Drop values of fields whose ``visible_if`` is false for the record as submitted."""
    conditional = [f for f in entity.visible_fields if f.visible_if and f.name in values]
    if not conditional:
        return
    probe = dict(old or {})
    for name, value in values.items():
        f = entity.fields[name]
        try:
            probe[name] = ctx.crm.field_types[f.type].coerce(f, value)
        except Exception:  # invalid input: the store will report it; treat as empty here
            probe[name] = None

    def fetch(target: str, id: Any) -> Any:
        try:
            return ctx.store.get(target, int(id), actor=ctx.actor)
        except (CRMError, TypeError, ValueError):
            return None

    for f in conditional:
        try:
            visible = conditions.evaluate(
                f.visible_if,
                probe,
                entity.name,
                ctx.crm.catalog,
                fetch=fetch,
                params=ctx.actor.params() if ctx.actor else {},
            )
        except conditions.ConditionError:
            visible = True
        if not visible:
            values.pop(f.name, None)


# ---------------------------------------------------------------------------------------------
# Uploads
# ---------------------------------------------------------------------------------------------
def upload_root(ctx: PageContext) -> Path:
    """Where uploaded files live (``upload_dir`` in crmkit.yaml; ./uploads by default)."""
    cfg = ctx.crm.config
    if cfg.upload_dir is not None:
        return Path(cfg.upload_dir)
    base = cfg.project_dir or Path.cwd()
    return Path(base) / "uploads"


def save_upload(ctx: PageContext, entity: Entity, f: Field, upload: UploadFile) -> str:
    """Store an uploaded file under a random name; returns its path relative to the upload root.

    Images must really be PNG, JPEG, GIF or WebP (checked by content, not by name), so an
    uploaded SVG or HTML file can never be served back as an active document.
    """
    limit = int(f.spec.get("max_size") or MAX_UPLOAD)
    data = upload.file.read(limit + 1)
    if len(data) > limit:
        raise ValueError(ctx._("upload_too_large", mb=round(limit / 1024 / 1024, 1)))
    suffix = _image_suffix(data)
    if f.type == "image" and suffix is None:
        raise ValueError(ctx._("upload_not_image"))
    if suffix is None:
        suffix = Path(upload.filename or "").suffix.lower()
        if not re.fullmatch(r"\.[a-z0-9]{1,8}", suffix):
            suffix = ".bin"
    rel = f"{entity.name}/{secrets.token_urlsafe(16)}{suffix}"
    path = upload_root(ctx) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return rel


def _image_suffix(data: bytes) -> str | None:
    for magic, suffix in IMAGE_MAGIC.items():
        if data.startswith(magic):
            return suffix
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return None


def resolve_upload(ctx: PageContext, rel: str) -> Path | None:
    """The file of a stored upload path, refusing anything outside the upload root."""
    root = upload_root(ctx).resolve()
    path = (root / rel).resolve()
    if root not in path.parents or not path.is_file():
        return None
    return path
