"""Built-in plugin: the dashboard widgets, the pipeline board (kanban) and its menu link.

Everything here uses public hooks only (``dashboard_widgets``, ``menu_links``,
``register_routes``), the way a third-party plugin would:

- widgets "my open tasks", "today's visits" and "pipeline summary";
- ``/admin/{entity}/kanban``: cards grouped by a reference to ordered master data (deals by
  ``stage``) or by an enum; dragging a card (or ←/→ on a focused card) posts to
  ``/admin/{entity}/{id}/move``, which updates the record through RecordStore, so permissions,
  validation, hooks, audit and optimistic locking all apply.

Boards are configured in crmkit.yaml (``admin: {boards: {deal: stage}}``; deals by stage is the default).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from markupsafe import Markup
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from crmkit.core import queries
from crmkit.core.errors import ConflictError, CRMError, PermissionDenied, ValidationError
from crmkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from crmkit.core.catalog import Entity
    from crmkit.web.site import PageContext

DEFAULT_BOARDS = {"deal": "stage"}
CARDS_PER_COLUMN = 30
TASKS = "activity"


def boards(crm: Any) -> dict[str, str]:
    """``{entity: group_field}`` of the configured boards whose entity and field exist."""
    configured = crm.config.section("admin").get("boards")
    mapping = configured if isinstance(configured, dict) else DEFAULT_BOARDS
    out = {}
    for entity, field in mapping.items():
        if entity in crm.catalog and field in crm.catalog[entity].fields:
            f = crm.catalog[entity].fields[field]
            if f.type in ("reference", "enum"):
                out[entity] = field
    return out


def board_field(crm: Any, entity: str) -> str | None:
    """The field a board of ``entity`` groups by, or None when the entity has no board."""
    return boards(crm).get(entity)


# ---------------------------------------------------------------------------------------------
# Hooks
# ---------------------------------------------------------------------------------------------
@hookimpl
def register_config_schemas(crm):
    """The ``admin:`` section of crmkit.yaml: boards and the session idle timeout."""
    return {
        "admin": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "boards": {"type": "object", "additionalProperties": {"type": "string"}},
                "session_idle": {"type": "integer", "minimum": 60},
            },
        }
    }


@hookimpl
def menu_links(crm, actor, request):
    """A "Pipeline board" link right after each board's entity in the menu."""
    lang = getattr(request.state, "crmkit_lang", None) or getattr(actor, "locale", "en")
    from crmkit.web.i18n import t

    out = []
    for entity in boards(crm):
        if actor is not None and crm.records.can(actor, "read", entity):
            out.append(
                {
                    "href": f"/admin/{entity}/kanban",
                    "label": t("kanban", lang),
                    "icon": "columns",
                    "after": entity,
                }
            )
    return out


@hookimpl
def register_routes(crm):
    """The board page and the card move endpoint."""
    from crmkit.web.site import admin_page

    return [
        Route("/admin/{entity}/kanban", admin_page(kanban_page), methods=["GET", "HEAD"]),
        Route("/admin/{entity}/{id:int}/move", admin_page(move_card), methods=["POST"]),
    ]


@hookimpl
def dashboard_widgets(crm, actor, request):
    """My open tasks, today's visits and the pipeline summary (each only if the actor may read it)."""
    if actor is None:
        return None
    ctx = request.state.crmkit_ctx
    out = []
    if TASKS in crm.catalog and crm.records.can(actor, "read", TASKS):
        out.append(_open_tasks(ctx))
        out.append(_todays_visits(ctx))
    if "deal" in crm.catalog and crm.records.can(actor, "read", "deal"):
        out.append(_pipeline(ctx))
    return [w for w in out if w]


# ---------------------------------------------------------------------------------------------
# Widgets
# ---------------------------------------------------------------------------------------------
def _activity_items(ctx: PageContext, condition: Any, sort: str, limit: int = 8) -> tuple[list[dict], str]:
    from crmkit.web.display import Display

    ent = ctx.crm.catalog[TASKS]
    cols = [
        c
        for c in (
            "subject",
            "type",
            "status",
            "priority",
            "due_at",
            "account",
            "contact",
            "deal",
            "lead",
            "location",
        )
        if c in ent.fields
    ]
    page = ctx.store.list(
        TASKS, actor=ctx.actor, filter=condition, sort=sort, limit=limit, columns=cols, with_count=True
    )
    display = Display(ctx, ent)
    refs = [ent.fields[c] for c in ("account", "contact", "deal", "lead") if c in ent.fields]
    display.prefetch(page.items, refs)
    now = dt.datetime.now(dt.UTC)
    items = []
    for r in page.items:
        due = r.get("due_at")
        related = next((display.html(f, r[f.name], r) for f in refs if r.get(f.name)), Markup(""))
        items.append(
            {
                "id": r["id"],
                "subject": r.get("subject") or f"#{r['id']}",
                "when": display.text(ent.fields["due_at"], due) if due else "",
                "overdue": bool(due and due < now and r.get("status") == "planned"),
                "type": display.html(ent.fields["type"], r.get("type")) if "type" in ent.fields else "",
                "priority": display.html(ent.fields["priority"], r.get("priority"))
                if r.get("priority") == "high"
                else "",
                "related": related,
                "location": r.get("location") or "",
            }
        )
    return items, page.count_label


def _open_tasks(ctx: PageContext) -> dict[str, Any]:
    cond = {
        "all": [
            {"type": "task"},
            {"status": "planned"},
            {"any": [{"assignee": "$me"}, {"assignee": {"is_null": True}, "owner": "$me"}]},
        ]
    }
    items, count = _activity_items(ctx, cond, "due_at")
    link = "/admin/activity/?" + _query({"f.type": "task", "f.status": "planned", "f.assignee": "me"})
    return {
        "title": ctx._("my_open_tasks"),
        "template": "widgets_dashboard/activities.html",
        "context": {"items": items, "count": count, "empty": ctx._("no_open_tasks")},
        "link": link,
        "link_label": ctx._("view_all"),
    }


def _todays_visits(ctx: PageContext) -> dict[str, Any]:
    today = dt.datetime.now(ctx.tz).date()
    start = dt.datetime(today.year, today.month, today.day, tzinfo=ctx.tz)
    end = start + dt.timedelta(days=1)
    cond = {
        "all": [
            {"type": "visit"},
            {"due_at": {"gte": start.isoformat(), "lt": end.isoformat()}},
            {"any": [{"assignee": "$me"}, {"owner": "$me"}]},
        ]
    }
    items, count = _activity_items(ctx, cond, "due_at")
    link = "/admin/activity/?" + _query(
        {"f.type": "visit", "f.due_at.from": today.isoformat(), "f.due_at.to": today.isoformat()}
    )
    return {
        "title": ctx._("todays_visits"),
        "template": "widgets_dashboard/activities.html",
        "context": {"items": items, "count": count, "empty": ctx._("no_visits_today"), "visits": True},
        "link": link,
        "link_label": ctx._("view_all"),
    }


def _query(params: dict[str, str]) -> str:
    from urllib.parse import urlencode

    return urlencode(params)


def group_totals(
    ctx: PageContext, entity: Entity, group: str, sums: list[str], condition: Any
) -> dict[Any, dict]:
    """``{group_value: {"count": n, <sum field>: total}}`` over the records the actor may read.

    One aggregate query with the same restrictions RecordStore applies to lists.
    """
    store = ctx.store
    if not store.can(ctx.actor, "read", entity.name):
        raise PermissionDenied("you may not read these records")
    table = ctx.crm.table(entity.name)
    with ctx.crm.engine.connect() as conn:
        where = queries.build_where(
            conn,
            ctx.crm.catalog,
            ctx.crm.schema.tables,
            entity,
            condition,
            None,
            store.restrictions(ctx.actor, entity),
            ctx.actor.params(),
        )
        cols = [table.c[group], sa.func.count().label("count")]
        cols += [sa.func.coalesce(sa.func.sum(table.c[s]), 0).label(s) for s in sums if s in table.c]
        rows = conn.execute(sa.select(*cols).where(where).group_by(table.c[group])).mappings().all()
    return {r[group]: dict(r) for r in rows}


def _stages(ctx: PageContext, entity: Entity, field: str) -> list[dict[str, Any]]:
    """The board's columns: the target records in their list order, or the enum's options."""
    f = entity.fields[field]
    if f.type == "enum":
        return [
            {"value": o.value, "label": o.text(ctx.lang), "color": o.color, "closed": False}
            for o in f.options
        ]
    target = ctx.crm.catalog[f.to]
    cols = [c for c in ("color", "is_closed", "is_won", "probability") if c in target.fields]
    page = ctx.store.list(
        f.to, actor=ctx.actor, limit=100, with_count=False, columns=[target.title_field, *cols]
    )
    titles = ctx.store.titles(f.to, [r["id"] for r in page.items])
    return [
        {
            "value": r["id"],
            "label": titles.get(r["id"], f"#{r['id']}"),
            "color": r.get("color"),
            "closed": bool(r.get("is_closed")),
            "won": bool(r.get("is_won")),
            "probability": r.get("probability"),
        }
        for r in page.items
    ]


def _pipeline(ctx: PageContext) -> dict[str, Any] | None:
    from crmkit.web.templating import format_money

    ent = ctx.crm.catalog["deal"]
    if "stage" not in ent.fields:
        return None
    cond = {"status": "open"} if "status" in ent.fields else None
    sums = [s for s in ("amount", "expected_revenue") if s in ent.fields]
    totals = group_totals(ctx, ent, "stage", sums, cond)
    stages = [s for s in _stages(ctx, ent, "stage") if not s["closed"]]
    biggest = max([t.get("amount", 0) or 0 for t in totals.values()] + [1])
    rows = []
    for s in stages:
        t = totals.get(s["value"], {})
        amount = t.get("amount", 0) or 0
        rows.append(
            {
                "label": s["label"],
                "count": t.get("count", 0),
                "amount": format_money(amount),
                "weighted": format_money(t.get("expected_revenue", 0) or 0),
                "value": float(amount),
                "max": float(biggest),
                "href": "/admin/deal/?" + _query({"f.stage": str(s["value"]), "f.status": "open"}),
            }
        )
    total_amount = sum((t.get("amount", 0) or 0) for t in totals.values())
    total_weighted = sum((t.get("expected_revenue", 0) or 0) for t in totals.values())
    return {
        "title": ctx._("pipeline_summary"),
        "template": "widgets_dashboard/pipeline.html",
        "wide": True,
        "context": {
            "rows": rows,
            "total": format_money(total_amount),
            "weighted": format_money(total_weighted),
            "count": sum(t.get("count", 0) for t in totals.values()),
            "empty": ctx._("no_open_deals"),
        },
        "link": "/admin/deal/kanban",
        "link_label": ctx._("kanban"),
    }


# ---------------------------------------------------------------------------------------------
# Kanban
# ---------------------------------------------------------------------------------------------
def kanban_page(ctx: PageContext) -> Response:
    """GET /admin/{entity}/kanban — cards grouped by the board field, draggable between columns."""
    from crmkit.core.errors import NotFound
    from crmkit.web.display import Display
    from crmkit.web.templating import format_money

    entity = ctx.entity()
    field = board_field(ctx.crm, entity.name)
    if field is None:
        raise NotFound("no board")
    ctx.require("read", entity.name)
    group = entity.fields[field]
    card_fields = [c for c in ("account", "amount", "close_date", "owner") if c in entity.fields]
    access = ctx.store.field_access(ctx.actor, entity.name)
    card_fields = [c for c in card_fields if access.get(c) not in ("none", "write-only")]
    columns = []
    display = Display(ctx, entity)
    can_update = ctx.store.can(ctx.actor, "update", entity.name)
    sums = ["amount"] if "amount" in entity.fields else []
    # The board shows the list view in force (``?view=``, else the YAML default, e.g. open deals).
    from crmkit.core.catalog import thaw
    from crmkit.web.listing import ListState, builtin_views, chosen_view

    view, explicit = chosen_view(ctx, entity)
    view_cond = thaw(view.filter) if view is not None and view.filter else None
    state = ListState(view=view.name if view else ("all" if explicit else ""), view_explicit=explicit)
    totals = group_totals(ctx, entity, field, sums, view_cond)
    all_items = []
    for stage in _stages(ctx, entity, field):
        page = ctx.store.list(
            entity.name,
            actor=ctx.actor,
            filter={"all": [{field: stage["value"]}, view_cond]} if view_cond else {field: stage["value"]},
            limit=CARDS_PER_COLUMN,
            columns=[entity.title_field, *card_fields],
            with_count=False,
        )
        all_items += page.items
        stage["cards"] = page.items
        t = totals.get(stage["value"], {})
        stage["count"] = t.get("count", 0)
        stage["total"] = format_money(t.get("amount", 0) or 0) if sums else ""
        stage["more"] = max(0, stage["count"] - len(page.items))
        columns.append(stage)
    display.prefetch(all_items, [entity.fields[c] for c in card_fields])
    for col in columns:
        col["cards"] = [
            {
                "id": r["id"],
                "version": r["version"],
                "title": display.text(entity.fields[entity.title_field], r.get(entity.title_field))
                or f"#{r['id']}",
                **{
                    name: display.text(entity.fields[name], r.get(name)) if name in card_fields else ""
                    for name in ("account", "amount", "close_date", "owner")
                },
            }
            for r in col["cards"]
        ]
    return ctx.render(
        "kanban.html",
        entity=entity,
        title=f"{entity.text(ctx.lang, plural=True)} · {ctx._('kanban')}",
        columns=columns,
        field=group,
        can_update=can_update,
        builtin_views=builtin_views(ctx, entity, state, base=f"/admin/{entity.name}/kanban"),
        view_query=f"&view={state.view}" if state.view else "",
    )


def move_card(ctx: PageContext) -> Response:
    """POST /admin/{entity}/{id}/move (``value``, ``version``) — change the board field of a record."""
    entity = ctx.entity()
    field = board_field(ctx.crm, entity.name)
    if field is None:
        return JSONResponse({"error": "no board"}, status_code=404)
    form = ctx.form
    version = form.get("version")
    try:
        record = ctx.store.update(
            entity.name,
            int(ctx.params["id"]),
            {field: form.get("value")},
            actor=ctx.actor,
            version=int(version) if version else None,
            source="ui",
        )
    except ValidationError as exc:
        return JSONResponse({"error": "; ".join(e["message"] for e in exc.errors)}, status_code=422)
    except ConflictError as exc:
        current = exc.current or {}
        return JSONResponse(
            {"error": str(exc), "version": current.get("version"), "value": current.get(field)},
            status_code=409,
        )
    except CRMError as exc:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)
    return JSONResponse({"ok": True, "version": record["version"], "value": record.get(field)})
