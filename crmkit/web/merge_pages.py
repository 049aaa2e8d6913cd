"""Admin pages of the duplicates plugin: the duplicate groups, the merge page and record panels.

- ``/admin/data/duplicates/?entity=lead``: groups of records that share a duplicate rule's key
  (from the key index), each with a "Merge…" link; admins can rebuild the index here.
- ``/admin/{entity}/merge?ids=1&ids=2``: one column per record, one row per field; radio buttons
  pick the record to keep and, field by field, the value it keeps. POST merges in one
  transaction (:func:`crmkit.core.duplicates.merge`) and opens the kept record.
- Record panels: "Possible duplicates" (with a merge link) and "Merged records" with the audit
  history of every record merged into this one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from starlette.responses import Response

from crmkit.core import duplicates as dup
from crmkit.core.errors import BadRequest, CRMError, PermissionDenied, ValidationError
from crmkit.web.display import Display

if TYPE_CHECKING:
    from starlette.requests import Request

    from crmkit.core.catalog import Entity, Field
    from crmkit.web.site import PageContext

MAX_MERGE = 5
SKIP_FIELDS = ("id", "created_at", "updated_at", "created_by", "version", "search_text")


def _entities(ctx: PageContext) -> list[Entity]:
    return [e for e in ctx.crm.catalog if dup.rules_of(e) and ctx.store.can(ctx.actor, "read", e.name)]


def duplicates_page(ctx: PageContext) -> Response:
    """GET /admin/data/duplicates/ (POST: rebuild the key index, admins only)."""
    entities = _entities(ctx)
    if not entities:
        raise PermissionDenied(ctx._("forbidden_text"))
    name = ctx.query.get("entity") or (ctx.form.get("entity") if ctx.form is not None else None)
    entity = next((e for e in entities if e.name == name), entities[0])
    if ctx.request.method == "POST":
        if not ctx.actor.is_admin:
            raise PermissionDenied(ctx._("forbidden_text"))
        n = dup.keys_for(ctx.crm).rebuild(entity.name)
        return ctx.redirect(f"/admin/data/duplicates/?entity={entity.name}", ctx._("dup_rebuilt", n=n))
    rule = ctx.query.get("rule") or None
    rules = dup.rules_of(entity)
    if rule is not None and rule not in {r.name for r in rules}:
        raise BadRequest(f"{entity.name} has no duplicate rule {rule!r}")
    found = dup.groups(ctx.crm, entity.name, actor=ctx.actor, rule=rule, limit=50)
    display = Display(ctx, entity)
    columns = [entity.fields[c.split(".")[0]] for c in entity.list.columns if c.split(".")[0] in entity.fields][:5]
    rows_by_id: dict[int, dict[str, Any]] = {}
    ids = sorted({i for g in found for i in g.ids})
    for start in range(0, len(ids), 500):
        page = ctx.store.list(entity.name, actor=ctx.actor, filter={"id": {"in": ids[start:start + 500]}},
                              limit=500, with_count=False, columns=[f.name for f in columns])
        rows_by_id.update({r["id"]: r for r in page.items})
    display.prefetch(rows_by_id.values(), columns)
    titles = ctx.store.titles(entity.name, ids)
    can_merge = ctx.store.can(ctx.actor, "delete", entity.name)
    groups = []
    for g in found:
        records = [rows_by_id[i] for i in g.ids if i in rows_by_id]
        groups.append({
            "rule": g.rule.text(ctx.lang),
            "records": [{
                "id": r["id"], "title": titles.get(r["id"], f"#{r['id']}"),
                "cells": [display.cell(f, r) for f in columns], "score": g.scores.get(r["id"]),
            } for r in records],
            "merge": f"/admin/{entity.name}/merge?" + urlencode([("ids", i) for i in g.ids[:MAX_MERGE]])
            if can_merge else None,
        })
    return ctx.render(
        "data/dup_list.html", title=ctx._("dup_title"), entity=entity, entities=entities, groups=groups,
        columns=[f.text(ctx.lang) for f in columns], rules=rules, rule=rule, can_rebuild=ctx.actor.is_admin,
    )


def _merge_ids(ctx: PageContext) -> list[int]:
    source = ctx.form if ctx.request.method == "POST" else ctx.query
    raw = source.getlist("ids")
    if len(raw) == 1 and "," in raw[0]:
        raw = raw[0].split(",")
    try:
        ids = list(dict.fromkeys(int(v) for v in raw if str(v).strip()))
    except ValueError:
        raise BadRequest("ids must be record ids") from None
    return ids[:MAX_MERGE]


def merge_page(ctx: PageContext) -> Response:
    """GET/POST /admin/{entity}/merge?ids=… — pick the record and the values to keep, then merge."""
    entity = ctx.entity()
    ctx.require("update", entity.name)
    ctx.require("delete", entity.name)
    ids = _merge_ids(ctx)
    if len(ids) < 2:
        raise BadRequest(ctx._("dup_pick_two"))
    records = {i: ctx.store.get(entity.name, i, actor=ctx.actor) for i in ids}
    fields = _merge_fields(ctx, entity)
    errors: list[str] = []
    if ctx.request.method == "POST":
        try:
            winner = int(ctx.form.get("winner") or ids[0])
        except ValueError:
            raise BadRequest("winner must be a record id") from None
        if winner not in records:
            raise BadRequest("the kept record must be one of the merged ones")
        choose = {}
        for f in fields:
            picked = ctx.form.get(f"f.{f.name}")
            if picked is not None and str(picked).isdigit() and int(picked) in records:
                choose[f.name] = int(picked)
        try:
            result = dup.merge(ctx.crm, entity.name, winner, [i for i in ids if i != winner], actor=ctx.actor,
                               choose=choose, source="ui")
        except ValidationError as exc:
            from crmkit.web.forms import translate_message

            errors = [f"{e['field']}: {translate_message(e['message'], ctx.lang)}" if e["field"]
                      else translate_message(e["message"], ctx.lang) for e in exc.errors]
        except CRMError as exc:
            errors = [str(exc)]
        else:
            title = ctx.store.titles(entity.name, [winner]).get(winner, f"#{winner}")
            return ctx.redirect(f"/admin/{entity.name}/{winner}",
                                ctx._("dup_merged", n=len(result.merged) + 1, title=title))
    display = Display(ctx, entity)
    display.prefetch(records.values(), fields)
    titles = ctx.store.titles(entity.name, ids)
    winner = int(ctx.form.get("winner") or ids[0]) if ctx.form is not None else ids[0]
    rows = []
    for f in fields:
        values = [records[i].get(f.name) for i in ids]
        default = _default_source(ids, values, winner)
        picked = ctx.form.get(f"f.{f.name}") if ctx.form is not None else None
        rows.append({
            "field": f, "label": f.text(ctx.lang),
            "same": len({repr(v) for v in values}) == 1,
            "cells": [{"id": i, "html": display.html(f, records[i].get(f.name), records[i]),
                       "checked": str(i) == str(picked) if picked else i == default} for i in ids],
        })
    return ctx.render(
        "data/dup_merge.html", status=422 if errors else 200,
        title=ctx._("dup_merge_title", entity=entity.text(ctx.lang, plural=True)), entity=entity, ids=ids,
        titles=titles, rows=rows, winner=winner, errors=errors,
    )


def _merge_fields(ctx: PageContext, entity: Entity) -> list[Field]:
    access = ctx.store.field_access(ctx.actor, entity.name)
    out = []
    for f in entity.fields.values():
        if f.name in SKIP_FIELDS or f.deprecated or f.compute or f.type in ("password",):
            continue
        if f.readonly and f.name not in ("owner", "team"):
            continue
        if access.get(f.name, "write") not in ("write", "write-only"):
            continue
        out.append(f)
    return out


def _default_source(ids: list[int], values: list[Any], winner: int) -> int:
    """The kept record's own value, unless it is empty and another record has one."""
    by_id = dict(zip(ids, values, strict=True))
    if by_id.get(winner) not in (None, "", [], {}):
        return winner
    for i, v in by_id.items():
        if v not in (None, "", [], {}):
            return i
    return winner


# ---------------------------------------------------------------------------------------------
# Record panels
# ---------------------------------------------------------------------------------------------
def duplicates_panel(request: Request, entity: Entity, record: dict[str, Any]) -> dict[str, Any] | None:
    """"Possible duplicates" of a record, when its rules find any the viewer may read."""
    ctx = getattr(request.state, "crmkit_ctx", None)
    if ctx is None or not dup.rules_of(entity):
        return None
    found = dup.find_candidates(ctx.crm, entity.name, record, actor=ctx.actor, exclude=[record["id"]], limit=10)
    if not found:
        return None
    rule_labels = {r.name: r.text(ctx.lang) for r in dup.rules_of(entity)}
    can_merge = ctx.store.can(ctx.actor, "delete", entity.name) and ctx.store.can(ctx.actor, "update", entity.name)
    merge = None
    if can_merge:
        merge = f"/admin/{entity.name}/merge?" + urlencode(
            [("ids", record["id"])] + [("ids", c.id) for c in found[: MAX_MERGE - 1]]
        )
    return {
        "title": ctx._("dup_possible"),
        "template": "data/dup_panel.html",
        "context": {
            "entity": entity, "merge": merge,
            "items": [{"id": c.id, "title": c.title, "score": c.score,
                       "rules": [rule_labels.get(r, r) for r in c.rules]} for c in found],
        },
    }


def merged_panel(request: Request, entity: Entity, record: dict[str, Any]) -> dict[str, Any] | None:
    """"Merged records": the field history of every record merged into this one."""
    ctx = getattr(request.state, "crmkit_ctx", None)
    if ctx is None:
        return None
    history = dup.merged_history(ctx.crm, entity.name, record["id"], actor=ctx.actor)
    if not history:
        return None
    labels = {name: f.text(ctx.lang) for name, f in entity.fields.items()}
    items = []
    for merged_id, entries in history.items():
        title = next((e["new"] for e in reversed(entries) if e["action"] == "delete"), None)
        items.append({
            "id": merged_id,
            "title": _title_of(title) or ctx._("dup_merged_from", id=merged_id),
            "entries": [{**e, "label": labels.get(e["field"] or "", e["field"] or "")} for e in entries],
        })
    return {
        "title": ctx._("dup_merged_records"),
        "template": "data/dup_history.html",
        "context": {"items": items, "tz": ctx.tz},
    }


def _title_of(value: Any) -> str | None:
    import json

    try:
        data = json.loads(value or "{}")
    except ValueError:
        return None
    return data.get("title") if isinstance(data, dict) else None
