"""Web-to-lead form definitions: ``forms/*.yaml`` in the company project, checked like schemas.

A form names its target entity, the fields people fill in (entity fields, with optional labels
and help), fixed values for the new record (``source: web``, a marketing activity), an optional
consent checkbox, the auto-reply (subject/text/html per language, Jinja2 sandbox), the thank-you
message or a same-site redirect, and its rate limit. Problems are reported with file and line by
``crmkit check`` (the ``schema_loaded`` hook) and stop the CRM from starting.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema

from crmkit.core.loader import SchemaProblem, SourceDoc, load_yaml
from plugins_contrib.email_campaigns import render

LANGS = ("en", "ja")
FORMABLE_TYPES = ("string", "text", "email", "phone", "url", "integer", "decimal", "money", "enum", "boolean",
                  "date", "multi_enum")
SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")

_TEXT = {"oneOf": [{"type": "string", "minLength": 1},
                   {"type": "object", "additionalProperties": False, "minProperties": 1,
                    "properties": {"en": {"type": "string"}, "ja": {"type": "string"}}}]}
FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["fields"],
    "properties": {
        "form": {"type": "string", "pattern": SLUG_RE.pattern},
        "title": _TEXT,
        "intro": _TEXT,
        "entity": {"type": "string"},
        "fields": {
            "type": "array", "minItems": 1,
            "items": {
                "type": "object", "additionalProperties": False, "required": ["name"],
                "properties": {"name": {"type": "string"}, "required": {"type": "boolean"}, "label": _TEXT,
                               "help": _TEXT, "placeholder": _TEXT},
            },
        },
        "values": {"type": "object"},
        "consent": {"type": "object", "additionalProperties": False, "required": ["label"],
                    "properties": {"label": _TEXT, "url": {"type": "string"}}},
        "submit_label": _TEXT,
        "auto_reply": {
            "type": "object", "additionalProperties": False, "required": ["subject"],
            "properties": {"subject": _TEXT, "text": _TEXT, "html": _TEXT, "sender": {"type": "string"},
                           "reply_to": {"type": "string"}},
        },
        "thank_you": {
            "type": "object", "additionalProperties": False,
            "properties": {"title": _TEXT, "message": _TEXT, "redirect": {"type": "string"}},
        },
        "rate_limit": {
            "type": "object", "additionalProperties": False,
            "properties": {"per_ip": {"type": "integer", "minimum": 1},
                           "window_seconds": {"type": "integer", "minimum": 1}},
        },
    },
}


def text_of(value: Any, lang: str, default: str = "") -> str:
    """A ``{en, ja}`` text (or a plain string) in ``lang``, falling back to the other language."""
    if value is None:
        return default
    if isinstance(value, str):
        return value
    return value.get(lang) or value.get("en") or value.get("ja") or default


@dataclass(frozen=True)
class FormField:
    """One input of a form, bound to a field of the target entity."""

    name: str
    required: bool
    spec: Mapping[str, Any]


@dataclass(frozen=True)
class WebForm:
    """A checked form definition."""

    slug: str
    entity: str
    fields: tuple[FormField, ...]
    data: Mapping[str, Any]
    source: str
    values: Mapping[str, Any] = field(default_factory=dict)

    def text(self, key: str, lang: str, default: str = "") -> str:
        return text_of(self.data.get(key), lang, default)

    @property
    def per_ip(self) -> int:
        return int((self.data.get("rate_limit") or {}).get("per_ip", 10))

    @property
    def window_seconds(self) -> int:
        return int((self.data.get("rate_limit") or {}).get("window_seconds", 3600))


def same_site(url: str, base_url: str) -> bool:
    """True for a path on this site (``/thanks``) or an absolute URL on the ``base_url`` host."""
    if not url or "\\" in url or any(ord(c) < 32 for c in url):
        return False
    parts = urlsplit(url)
    if not parts.scheme and not parts.netloc:
        return url.startswith("/") and not url.startswith("//")
    base = urlsplit(base_url)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == base.netloc.lower()


def forms_dir(crm: Any) -> Path | None:
    """Where the project keeps its forms (``web_forms: {dir: forms}``), or None without a project."""
    if crm.config.project_dir is None:
        return None
    return crm.config.project_dir / str(crm.config.section("web_forms").get("dir", "forms"))


def load_forms(crm: Any, catalog: Any) -> tuple[dict[str, WebForm], list[SchemaProblem]]:
    """Every form of the project, checked against ``catalog``; ``(forms by slug, problems)``."""
    directory = forms_dir(crm)
    forms: dict[str, WebForm] = {}
    problems: list[SchemaProblem] = []
    if directory is None or not directory.is_dir():
        return forms, problems
    for path in sorted(list(directory.glob("*.yaml")) + list(directory.glob("*.yml"))):
        try:
            doc = load_yaml(path)
        except Exception as exc:  # a YAML syntax error names its own line
            problems.append(SchemaProblem(str(path), getattr(exc, "line", 1) or 1, "", str(exc)))
            continue
        form, found = check_form(crm, catalog, doc, path)
        problems += found
        if form is None:
            continue
        if form.slug in forms:
            problems.append(doc.problem(("form",), f"form {form.slug!r} is also defined in {forms[form.slug].source}"))
            continue
        forms[form.slug] = form
    return forms, problems


def check_form(crm: Any, catalog: Any, doc: SourceDoc, path: Path) -> tuple[WebForm | None, list[SchemaProblem]]:
    """One form file: its shape (JSON Schema), fields, fixed values, redirect and templates."""
    data = doc.data
    if not isinstance(data, dict):
        return None, [doc.problem((), "a form file is a mapping")]
    problems = [doc.problem(tuple(e.absolute_path), e.message)
                for e in jsonschema.Draft202012Validator(FORM_SCHEMA).iter_errors(data)]
    if problems:
        return None, problems
    slug = data.get("form") or path.stem
    if not SLUG_RE.match(slug):
        problems.append(doc.problem(("form",), f"{slug!r}: use lower-case letters, digits, - and _"))
    entity = data.get("entity", "lead")
    if entity not in catalog:
        return None, problems + [doc.problem(("entity",), f"unknown entity {entity!r}")]
    ent = catalog[entity]
    fields: list[FormField] = []
    for i, item in enumerate(data["fields"]):
        f = ent.fields.get(item["name"])
        where = ("fields", i, "name")
        if f is None:
            problems.append(doc.problem(where, f"{entity} has no field {item['name']!r}"))
        elif f.system or f.compute or f.spec.get("readonly") or f.type not in FORMABLE_TYPES:
            problems.append(doc.problem(where, f"{entity}.{f.name} ({f.type}) cannot be filled in on a web form"))
        else:
            fields.append(FormField(f.name, bool(item.get("required")) or f.required, item))
    values = dict(data.get("values") or {})
    for name in values:
        if name not in ent.fields:
            problems.append(doc.problem(("values", name), f"{entity} has no field {name!r}"))
    if "source" in ent.fields and "source" not in values:
        values["source"] = "web"  # web-to-lead: the lead's source says where it came from
    redirect = (data.get("thank_you") or {}).get("redirect")
    if redirect and not same_site(redirect, crm.config.base_url):
        problems.append(doc.problem(("thank_you", "redirect"),
                                    "redirect only to a path of this site (/thanks) or a URL on base_url's host"))
    reply = data.get("auto_reply")
    if reply:
        if "email" not in ent.fields:
            problems.append(doc.problem(("auto_reply",), f"{entity} has no email field to reply to"))
        merge = ["id"] + [f.name for f in ent.user_fields if not f.is_many and f.type != "password"]
        for part in ("subject", "text", "html"):
            value = reply.get(part)
            texts = {"": value} if isinstance(value, str) else (value or {})
            for lang, source in texts.items():
                for message in render.check_template(source or "", merge, ["form"]):
                    problems.append(doc.problem(("auto_reply", part) + ((lang,) if lang else ()), message))
        if not (reply.get("text") or reply.get("html")):
            problems.append(doc.problem(("auto_reply",), "give the auto-reply a text or an html body"))
    if problems:
        return None, problems
    return WebForm(slug, entity, tuple(fields), data, f"{path}:{doc.line_of(())}", values), []
