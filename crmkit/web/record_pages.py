"""Record pages: the 360° detail view, the create/edit forms and delete.

The detail page shows the fields by form section, related lists built from the catalog's
reverse references (account -> contacts, deals), a timeline of activities that rolls children up
(an account shows its contacts' and deals' activities too) and the ``record_panels`` and
``record_actions`` of plugins.
"""

from __future__ import annotations

import json
import mimetypes
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from starlette.responses import FileResponse, Response

from crmkit.core import conditions
from crmkit.core.catalog import SYSTEM_FIELDS
from crmkit.core.errors import ConflictError, CRMError, NotFound, ValidationError
from crmkit.plugins import call_each
from crmkit.web.display import Display
from crmkit.web.forms import (
    FormBuilder,
    default_values,
    form_sections,
    form_values,
    parse_form,
    resolve_upload,
    translate_message,
)

if TYPE_CHECKING:
    from crmkit.core.catalog import Entity, Field
    from crmkit.web.site import PageContext

TIMELINE_ENTITY = "activity"
TIMELINE_DATE = "due_at"
RELATED_LIMIT = 5
TIMELINE_LIMIT = 25


def _record_id(ctx: PageContext) -> int:
    try:
        return int(ctx.params["id"])
    except (KeyError, ValueError):
        raise NotFound("no such record") from None


# ---------------------------------------------------------------------------------------------
# Detail (360°)
# ---------------------------------------------------------------------------------------------
def detail_page(ctx: PageContext) -> Response:
    """GET /admin/{entity}/{id}."""
    entity = ctx.entity()
    record = ctx.store.get(entity.name, _record_id(ctx), actor=ctx.actor)
    display = Display(ctx, entity)
    access = ctx.store.field_access(ctx.actor, entity.name)
    shown: list[Field] = []
    for section in form_sections(entity):
        shown += [entity.fields[n] for n in section.fields if n in entity.fields]
    system = [entity.fields[n] for n in ("owner", "team", "created_by") if n in entity.fields]
    display.prefetch([record], shown + system)
    sections = []
    for section in form_sections(entity):
        items = []
        for name in section.fields:
            f = entity.fields.get(name)
            if f is None or f.deprecated or access.get(name) in ("none", "write-only"):
                continue
            if f.visible_if and not _visible(ctx, entity, f, record):
                continue
            items.append(
                {
                    "label": f.text(ctx.lang),
                    "html": display.html(f, record.get(name), record),
                    "type": f.type,
                    "name": name,
                }
            )
        if items:
            sections.append(
                {
                    "label": section.label.get(ctx.lang) or section.label["en"],
                    "items": items,
                    "columns": section.columns,
                }
            )
    info = [{"label": f.text(ctx.lang), "html": display.html(f, record.get(f.name), record)} for f in system]
    info += [
        {
            "label": entity.fields[n].text(ctx.lang),
            "html": display.html(entity.fields[n], record.get(n), record),
        }
        for n in ("created_at", "updated_at")
        if n in entity.fields
    ]
    title = _title(display, entity, record)
    hooks = dict(crm=ctx.crm, entity=entity, record=record, actor=ctx.actor, request=ctx.request)
    panels = [p for _pl, items in call_each(ctx.crm.pm, "record_panels", **hooks) for p in items]
    actions = [a for _pl, items in call_each(ctx.crm.pm, "record_actions", **hooks) for a in items]
    return ctx.render(
        "detail.html",
        entity=entity,
        record=record,
        title=title,
        sections=sections,
        info=info,
        badges=_badges(display, entity, record),
        contact_links=_contact_links(display, entity, record),
        related=related_lists(ctx, entity, record),
        timeline=timeline(ctx, entity, record),
        panels=[_panel(ctx, p) for p in panels],
        actions=actions,
        history=_history(ctx, entity, record),
        can_edit=ctx.store.can(ctx.actor, "update", entity.name, record),
        can_delete=ctx.store.can(ctx.actor, "delete", entity.name, record),
    )


def _visible(ctx: PageContext, entity: Entity, f: Field, record: dict[str, Any]) -> bool:
    """Whether a field's ``visible_if`` holds for the record (paths through references are read)."""

    def fetch(target: str, id: Any) -> Any:
        try:
            return ctx.store.get(target, int(id), actor=ctx.actor)
        except (CRMError, TypeError, ValueError):
            return None

    try:
        return conditions.evaluate(
            f.visible_if, record, entity.name, ctx.crm.catalog, fetch=fetch, params=ctx.actor.params()
        )
    except conditions.ConditionError:
        return True


def _title(display: Display, entity: Entity, record: dict[str, Any]) -> str:
    f = entity.fields.get(entity.title_field)
    text = display.text(f, record.get(f.name)) if f is not None else ""
    return text or f"{entity.text(display.lang)} #{record['id']}"


def _badges(display: Display, entity: Entity, record: dict[str, Any]) -> list[Any]:
    """Coloured option chips shown under the title (status, type, rank ...)."""
    out = []
    for f in entity.visible_fields:
        if f.type == "enum" and any(o.color for o in f.options) and record.get(f.name):
            out.append({"label": f.text(display.lang), "html": display.chip(f, record[f.name])})
    return out[:4]


def _contact_links(display: Display, entity: Entity, record: dict[str, Any]) -> list[Any]:
    """Email, phone and website of the record as quick links in the header."""
    out = []
    for f in entity.visible_fields:
        if f.type in ("email", "phone", "url") and record.get(f.name):
            out.append(
                {
                    "type": f.type,
                    "label": f.text(display.lang),
                    "html": display.html(f, record[f.name], record),
                }
            )
    return out[:5]


def _panel(ctx: PageContext, panel: dict[str, Any]) -> dict[str, Any]:
    """A plugin panel: its HTML (Markup) or its template rendered with its context."""
    if "template" in panel:
        html = ctx.site.env.get_template(panel["template"]).render(
            {**panel.get("context", {}), "_": ctx._, "lang": ctx.lang, "request": ctx.request}
        )
        from markupsafe import Markup

        return {"title": panel.get("title", ""), "html": Markup(html)}
    return {"title": panel.get("title", ""), "html": panel.get("html", "")}


def related_lists(ctx: PageContext, entity: Entity, record: dict[str, Any]) -> list[dict[str, Any]]:
    """One short list per reverse reference (not system fields, not the timeline entity)."""
    out = []
    catalog = ctx.crm.catalog
    relations = [
        r
        for r in catalog.relations_to(entity.name)
        if not r.many and r.field not in SYSTEM_FIELDS and r.entity != TIMELINE_ENTITY
    ]
    counts: dict[str, int] = {}
    for r in relations:
        counts[r.entity] = counts.get(r.entity, 0) + 1
    for rel in relations:
        child = catalog[rel.entity]
        if not child.menu or not ctx.store.can(ctx.actor, "read", child.name):
            continue
        title_f = child.fields.get(child.title_field)
        in_title = (
            set(re.findall(r"[a-z_][a-z0-9_]*", title_f.compute)) if title_f and title_f.compute else set()
        )
        access = ctx.store.field_access(ctx.actor, child.name)
        cols = [
            c
            for c in child.list.columns
            if c in child.fields
            and c != rel.field
            and c not in in_title
            and access.get(c) not in ("none", "write-only")
        ][:3]
        if child.title_field not in cols and child.title_field in child.fields:
            cols.insert(0, child.title_field)
        cols = cols[:3]
        page = ctx.store.list(
            child.name,
            actor=ctx.actor,
            filter={rel.field: record["id"]},
            limit=RELATED_LIMIT,
            columns=cols,
            with_count=True,
        )
        display = Display(ctx, child)
        fields = [child.fields[c] for c in cols]
        display.prefetch(page.items, fields)
        label = child.text(ctx.lang, plural=True)
        if counts[rel.entity] > 1 or rel.entity == entity.name:
            label += f" ({child.fields[rel.field].text(ctx.lang)})"
        out.append(
            {
                "label": label,
                "count": page.count_label,
                "entity": child.name,
                "headers": [f.text(ctx.lang) for f in fields],
                "rows": [
                    {
                        "id": r["id"],
                        "title": _title(display, child, r),
                        "cells": [display.cell(f, r) for f in fields[1:]],
                    }
                    for r in page.items
                ],
                "more": f"/admin/{child.name}/?" + urlencode({f"f.{rel.field}": record["id"]}),
                "new": (f"/admin/{child.name}/new?" + urlencode({rel.field: record["id"]}))
                if ctx.store.can(ctx.actor, "create", child.name)
                else None,
            }
        )
    return out


def timeline_condition(ctx: PageContext, entity: Entity, record_id: int) -> Any:
    """Activities of the record and of its children: ``{any: [{account: 5}, {contact.account: 5}, ...]}``."""
    catalog = ctx.crm.catalog
    if TIMELINE_ENTITY not in catalog:
        return None
    act = catalog[TIMELINE_ENTITY]
    branches: list[Any] = []
    for f in act.user_fields:
        if f.type != "reference" or not f.to:
            continue
        if f.to == entity.name:
            branches.append({f.name: record_id})
            continue
        middle = catalog[f.to]
        if middle.name == entity.name or middle.name == TIMELINE_ENTITY:
            continue
        for g in middle.user_fields:
            if g.type == "reference" and g.to == entity.name and not g.system:
                branches.append({f"{f.name}.{g.name}": record_id})
    if not branches:
        return None
    return branches[0] if len(branches) == 1 else {"any": branches}


def timeline(ctx: PageContext, entity: Entity, record: dict[str, Any]) -> dict[str, Any] | None:
    """The activity timeline of a record (None when the record has no activities relation)."""
    catalog = ctx.crm.catalog
    cond = timeline_condition(ctx, entity, record["id"])
    if cond is None or not ctx.store.can(ctx.actor, "read", TIMELINE_ENTITY):
        return None
    act = catalog[TIMELINE_ENTITY]
    sort_field = TIMELINE_DATE if TIMELINE_DATE in act.fields else "created_at"
    refs = [f for f in act.user_fields if f.type == "reference" and f.to]
    cols = (
        [act.title_field, sort_field]
        + [n for n in ("type", "status", "assignee", "result", "outcome") if n in act.fields]
        + [f.name for f in refs]
    )
    page = ctx.store.list(
        TIMELINE_ENTITY,
        actor=ctx.actor,
        filter=cond,
        sort=f"-{sort_field}",
        limit=TIMELINE_LIMIT,
        columns=list(dict.fromkeys(cols)),
        with_count=True,
    )
    display = Display(ctx, act)
    display.prefetch(page.items, [f for f in refs])
    items = []
    for r in page.items:
        via = [
            display.html(f, r[f.name], r)
            for f in refs
            if r.get(f.name)
            and not (f.to == entity.name and r[f.name] == record["id"])
            and f.name not in ("assignee", "reviewer")
        ]
        items.append(
            {
                "id": r["id"],
                "title": display.text(act.fields[act.title_field], r.get(act.title_field)) or f"#{r['id']}",
                "when": display.text(act.fields[sort_field], r.get(sort_field)),
                "type": display.html(act.fields["type"], r.get("type")) if "type" in act.fields else "",
                "type_value": r.get("type") or "",
                "status": display.html(act.fields["status"], r.get("status"))
                if "status" in act.fields
                else "",
                "status_value": r.get("status") or "",
                "assignee": display.html(act.fields["assignee"], r.get("assignee"), r)
                if "assignee" in act.fields
                else "",
                "result": r.get("result") or "",
                "via": via[:2],
            }
        )
    link_field = next((f.name for f in refs if f.to == entity.name), None)
    new_url = None
    if link_field and ctx.store.can(ctx.actor, "create", TIMELINE_ENTITY):
        new_url = f"/admin/{TIMELINE_ENTITY}/new?" + urlencode({link_field: record["id"]})
    return {
        "items": items,
        "count": page.count_label,
        "more": f"/admin/{TIMELINE_ENTITY}/?"
        + urlencode({"filter": json.dumps(cond, separators=(",", ":"))}),
        "new": new_url,
    }


def _history(ctx: PageContext, entity: Entity, record: dict[str, Any]) -> list[dict[str, Any]]:
    if not entity.audit:
        return []
    try:
        rows = ctx.store.history(entity.name, record["id"], actor=ctx.actor)
    except Exception:
        return []
    out = []
    for h in rows[-20:][::-1]:
        f = entity.fields.get(h["field"] or "")
        out.append(
            {
                "at": h["at"],
                "who": h["actor_name"] or "",
                "action": h["action"],
                "field": f.text(ctx.lang) if f else "",
                "old": _short(h["old"]),
                "new": _short(h["new"]),
            }
        )
    return out


def _short(value: Any) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= 80 else text[:79] + "…"


# ---------------------------------------------------------------------------------------------
# Forms
# ---------------------------------------------------------------------------------------------
def new_page(ctx: PageContext) -> Response:
    """GET/POST /admin/{entity}/new."""
    entity = ctx.entity()
    ctx.require("create", entity.name)
    if ctx.request.method == "GET":
        return _form(ctx, entity, default_values(ctx, entity), {}, None)
    parsed = parse_form(ctx, entity, ctx.form)
    values = {**default_values(ctx, entity), **parsed.raw}
    if parsed.errors:
        return _form(ctx, entity, values, parsed.errors, None, status=422)
    from crmkit.core.duplicates import allowed_flag, possible_duplicates

    if not allowed_flag(ctx.form.get("_allow_duplicates")):  # the duplicate_candidates hooks
        found = possible_duplicates(ctx.crm, entity.name, parsed.values, ctx.actor)
        if found:
            return _form(ctx, entity, values, {}, None, status=409, duplicates=found)
    try:
        record = ctx.store.create(entity.name, parsed.values, actor=ctx.actor, source="ui")
    except ValidationError as exc:
        return _form(ctx, entity, values, exc.by_field(), None, status=422)
    title = _title(Display(ctx, entity), entity, record)
    return ctx.redirect(f"/admin/{entity.name}/{record['id']}", ctx._("created_msg", title=title))


def edit_page(ctx: PageContext) -> Response:
    """GET/POST /admin/{entity}/{id}/edit (optimistic locking through the hidden ``version``)."""
    entity = ctx.entity()
    record = ctx.store.get(entity.name, _record_id(ctx), actor=ctx.actor)
    ctx.require("update", entity.name, record)
    if ctx.request.method == "GET":
        return _form(ctx, entity, form_values(ctx, entity, record), {}, record)
    parsed = parse_form(ctx, entity, ctx.form, record)
    values = {**form_values(ctx, entity, record), **parsed.raw}
    if parsed.errors:
        return _form(ctx, entity, values, parsed.errors, record, status=422, version=parsed.version)
    try:
        ctx.store.update(
            entity.name, record["id"], parsed.values, actor=ctx.actor, version=parsed.version, source="ui"
        )
    except ValidationError as exc:
        return _form(ctx, entity, values, exc.by_field(), record, status=422, version=parsed.version)
    except ConflictError as exc:
        current = exc.current or ctx.store.get(entity.name, record["id"], actor=ctx.actor)
        conflict = _conflict(ctx, entity, values, current)
        return _form(ctx, entity, values, {}, current, status=409, conflict=conflict)
    return ctx.redirect(f"/admin/{entity.name}/{record['id']}", ctx._("saved"))


def _conflict(
    ctx: PageContext, entity: Entity, mine: dict[str, Any], current: dict[str, Any]
) -> dict[str, Any]:
    """Fields where the user's input and the saved version differ, both shown."""
    theirs = form_values(ctx, entity, current)
    display = Display(ctx, entity)
    fields = [entity.fields[n] for n in mine if n in entity.fields]
    display.prefetch([current], fields)
    rows = []
    for f in fields:
        a, b = mine.get(f.name), theirs.get(f.name)
        if _same(a, b) or f.type in ("password", "image", "file"):
            continue
        rows.append(
            {
                "label": f.text(ctx.lang),
                "mine": _plain(a),
                "theirs": display.html(f, current.get(f.name), current),
            }
        )
    return {"rows": rows, "version": current.get("version")}


def _same(a: Any, b: Any) -> bool:
    norm = [("" if x in (None, [], {}) else x) for x in (a, b)]
    return norm[0] == norm[1] or str(norm[0]) == str(norm[1])


def _plain(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v.get("id") if isinstance(v, dict) else v) for v in value)
    if isinstance(value, dict):
        return " ".join(str(v) for v in value.values() if v)
    if isinstance(value, bool):
        return "✓" if value else "—"
    return "" if value is None else str(value)


def _form(
    ctx: PageContext,
    entity: Entity,
    values: dict[str, Any],
    errors: dict[str, list[str]],
    record: dict[str, Any] | None,
    status: int = 200,
    conflict: dict[str, Any] | None = None,
    version: int | None = None,
    duplicates: list[dict[str, Any]] | None = None,
) -> Response:
    builder = FormBuilder(ctx, entity)
    sections = builder.sections(values, errors)
    shown = {w.name for s in sections for w in s.widgets}
    general = [
        translate_message(m, ctx.lang)
        for key, msgs in errors.items()
        if key not in shown and key.split(".")[0] not in shown
        for m in msgs
    ]
    title_text = None
    if record is not None:
        title_text = _title(Display(ctx, entity), entity, record)
    heading = (
        ctx._("edit_entity", entity=entity.text(ctx.lang))
        if record is not None
        else ctx._("new_entity", entity=entity.text(ctx.lang))
    )
    if version is None and record is not None:
        version = record.get("version")
    if conflict is not None:
        version = conflict["version"]
    multipart = any(w.field.type in ("image", "file") for s in sections for w in s.widgets)
    action = (
        f"/admin/{entity.name}/{record['id']}/edit" if record is not None else f"/admin/{entity.name}/new"
    )
    cancel = f"/admin/{entity.name}/{record['id']}" if record is not None else f"/admin/{entity.name}/"
    return ctx.render(
        "form.html",
        status=status,
        entity=entity,
        record=record,
        title=heading,
        record_title=title_text,
        sections=sections,
        errors=errors,
        general_errors=general,
        version=version,
        conflict=conflict,
        multipart=multipart,
        action=action,
        cancel=cancel,
        duplicates=duplicates,
    )


# ---------------------------------------------------------------------------------------------
# Delete and files
# ---------------------------------------------------------------------------------------------
def delete_page(ctx: PageContext) -> Response:
    """GET asks for confirmation; POST deletes (restrict references refuse, with the reason)."""
    entity = ctx.entity()
    record = ctx.store.get(entity.name, _record_id(ctx), actor=ctx.actor)
    ctx.require("delete", entity.name, record)
    title = _title(Display(ctx, entity), entity, record)
    if ctx.request.method == "GET":
        return ctx.render(
            "confirm_delete.html",
            entity=entity,
            title=ctx._("confirm_delete_one", title=title),
            items=[(record["id"], title)],
            single=record,
            back=f"/admin/{entity.name}/{record['id']}",
        )
    try:
        ctx.store.delete(entity.name, record["id"], actor=ctx.actor, source="ui")
    except ValidationError as exc:
        message = "; ".join(translate_message(e["message"], ctx.lang) for e in exc.errors)
        return ctx.redirect(f"/admin/{entity.name}/{record['id']}", message, "error")
    return ctx.redirect(f"/admin/{entity.name}/", ctx._("deleted", title=title))


def file_page(ctx: PageContext) -> Response:
    """GET /admin/{entity}/{id}/file/{field} — an uploaded file, for users who may read the record."""
    entity = ctx.entity()
    record = ctx.store.get(entity.name, _record_id(ctx), actor=ctx.actor)
    name = ctx.params.get("field", "")
    f = entity.fields.get(name)
    if f is None or f.type not in ("file", "image") or not record.get(name):
        raise NotFound("no file")
    path = resolve_upload(ctx, str(record[name]))
    if path is None:
        raise NotFound("no file")
    media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    inline = f.type == "image" and media.startswith("image/") and media != "image/svg+xml"
    return FileResponse(
        path,
        media_type=media if inline else "application/octet-stream",
        headers={
            "content-disposition": "inline" if inline else "attachment",
            "cache-control": "private, max-age=300",
        },
    )
