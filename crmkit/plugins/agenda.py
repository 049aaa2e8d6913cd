"""Built-in plugin: "My agenda" (``/admin/agenda``) — the signed-in user's overdue, today's and upcoming work.

Shows the planned activities assigned to the user (or owned by them when unassigned, or where they
are a participant): **overdue**, **today** (done ones struck through) and **upcoming** (the next
``?days=`` days, 7 by default), plus open tasks without a date. Times are in the user's time
zone. Tasks are completed right there (a CSRF-protected POST to ``/admin/activity/{id}/complete``,
so a recurring task rolls on); visits, meetings and calls link to "Report result". Every list goes
through RecordStore, so the user's read scope and the ``restrict_query`` hooks apply.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import sqlalchemy as sa
from starlette.responses import Response
from starlette.routing import Route

from crmkit.hookspecs import hookimpl
from crmkit.plugins.activities import ACTIVITY, CANCELLED, DONE, LOG_TYPES, PLANNED, RESULT_TYPES

if TYPE_CHECKING:
    from crmkit.web.site import PageContext

PATH = "/admin/agenda"
DEFAULT_DAYS, MAX_DAYS = 7, 60
SECTION_LIMIT = 100


@hookimpl
def register_routes(crm):
    """The agenda page."""
    from crmkit.web.site import admin_page

    return [Route(PATH, admin_page(agenda_page), methods=["GET", "HEAD"])]


@hookimpl
def menu_links(crm, actor, request):
    """"My agenda" in the menu, for users who may read activities."""
    if actor is None or ACTIVITY not in crm.catalog or not crm.records.can(actor, "read", ACTIVITY):
        return None
    from crmkit.web.i18n import plugin_strings, t

    lang = getattr(request.state, "crmkit_lang", None) or "en"
    return [{"href": PATH, "label": t("agenda_title", lang, extra=plugin_strings(crm)), "icon": "calendar"}]


@hookimpl
def extra_css_urls(crm, template, request):
    """The workflow stylesheet on the agenda."""
    from crmkit.web.site import admin_site

    return [admin_site(crm).static_url("workflows.css")] if template == "workflows/agenda.html" else None


@hookimpl
def register_ui_strings(crm):
    """English and Japanese words of the agenda."""
    return UI_STRINGS


UI_STRINGS = {
    "agenda_title": ("My agenda", "マイ予定"),
    "agenda_overdue": ("Overdue", "期限切れ"),
    "agenda_today": ("Today", "今日"),
    "agenda_upcoming": ("Next {days} days", "今後{days}日間"),
    "agenda_undated": ("Tasks without a date", "期限なしのタスク"),
    "agenda_nothing": ("Nothing here.", "予定はありません。"),
    "agenda_days": ("Days ahead", "表示日数"),
    "agenda_show": ("Show", "表示"),
    "agenda_timezone": ("Times in {zone}", "時刻は {zone}"),
    "agenda_new_task": ("New task", "タスクを追加"),
    "agenda_done": ("Done", "完了"),
}


def _mine(ctx: PageContext, participant_ids: list[int]) -> dict[str, Any]:
    ent = ctx.crm.catalog[ACTIVITY]
    branches: list[Any] = []
    if "assignee" in ent.fields:
        branches.append({"assignee": "$me"})
        if ent.ownable:
            branches.append({"all": [{"assignee": {"is_null": True}}, {"owner": "$me"}]})
    elif ent.ownable:
        branches.append({"owner": "$me"})
    if participant_ids:
        branches.append({"id": {"in": participant_ids}})
    return {"any": branches}


def _participating(ctx: PageContext, start: dt.datetime, end: dt.datetime) -> list[int]:
    """Planned activities in the window where the user is a participant (a many-to-many link)."""
    link = ctx.crm.schema.link_tables.get((ACTIVITY, "participants"))
    if link is None or ctx.actor.id is None:
        return []
    table = ctx.crm.table(ACTIVITY)
    stmt = (
        sa.select(table.c.id)
        .join(link, link.c.source_id == table.c.id)
        .where(link.c.target_id == ctx.actor.id, table.c.due_at < end,
               sa.or_(table.c.due_at >= start, table.c.status == PLANNED))
        .limit(SECTION_LIMIT)
    )
    with ctx.crm.engine.connect() as conn:
        return [r[0] for r in conn.execute(stmt)]


def agenda_page(ctx: PageContext) -> Response:
    """GET /admin/agenda[?days=N]."""
    from crmkit.web.display import Display
    from crmkit.web.templating import local_datetime

    ctx.require("read", ACTIVITY)
    ent = ctx.crm.catalog[ACTIVITY]
    try:
        days = max(1, min(MAX_DAYS, int(ctx.query.get("days") or DEFAULT_DAYS)))
    except ValueError:
        days = DEFAULT_DAYS
    now = dt.datetime.now(ctx.tz)
    today = dt.datetime(now.year, now.month, now.day, tzinfo=ctx.tz)
    tomorrow = today + dt.timedelta(days=1)
    horizon = tomorrow + dt.timedelta(days=days)
    mine = _mine(ctx, _participating(ctx, today - dt.timedelta(days=365), horizon))
    cols = [c for c in ("subject", "type", "status", "priority", "due_at", "location", "recurrence", "account",
                        "contact", "deal", "lead", "assignee", "owner", "team") if c in ent.fields]

    def fetch(cond: Any, sort: str) -> list[dict[str, Any]]:
        page = ctx.store.list(ACTIVITY, actor=ctx.actor, filter={"all": [mine, cond]}, sort=sort,
                              limit=SECTION_LIMIT, columns=cols, with_count=False)
        return page.items

    iso = dt.datetime.isoformat
    sections = [
        ("overdue", ctx._("agenda_overdue"),
         fetch({"status": PLANNED, "due_at": {"lt": iso(today)}}, "due_at"), "%m/%d %H:%M"),
        ("today", ctx._("agenda_today"),
         fetch({"status": {"ne": CANCELLED}, "due_at": {"gte": iso(today), "lt": iso(tomorrow)}}, "due_at"),
         "%H:%M"),
        ("upcoming", ctx._("agenda_upcoming", days=days),
         fetch({"status": PLANNED, "due_at": {"gte": iso(tomorrow), "lt": iso(horizon)}}, "due_at"),
         "%m/%d %H:%M"),
        ("undated", ctx._("agenda_undated"),
         fetch({"status": PLANNED, "type": "task", "due_at": {"is_null": True}}, "-created_at"), ""),
    ]
    display = Display(ctx, ent)
    refs = [ent.fields[n] for n in ("account", "contact", "deal", "lead") if n in ent.fields]
    display.prefetch([r for _k, _l, items, _f in sections for r in items], refs)
    here = PATH + (f"?{urlencode({'days': days})}" if days != DEFAULT_DAYS else "")
    views = []
    for key, label, items, fmt in sections:
        rows = []
        for r in items:
            due = local_datetime(r.get("due_at"), ctx.tz) if r.get("due_at") else None
            can_update = ctx.store.can(ctx.actor, "update", ACTIVITY, r)
            planned = r.get("status") == PLANNED
            rows.append({
                "id": r["id"],
                "version": r["version"],
                "subject": r.get("subject") or f"#{r['id']}",
                "when": due.strftime(fmt) if due and fmt else "",
                "when_iso": due.isoformat() if due else "",
                "type": display.html(ent.fields["type"], r.get("type")) if "type" in ent.fields else "",
                "high": r.get("priority") == "high",
                "done": r.get("status") == DONE,
                "overdue": key == "overdue",
                "recurring": bool(r.get("recurrence")),
                "location": r.get("location") or "",
                "related": [display.html(f, r[f.name], r) for f in refs if r.get(f.name)][:2],
                "report": planned and can_update and r.get("type") in RESULT_TYPES,
                "complete": planned and can_update and r.get("type") not in RESULT_TYPES,
            })
        views.append({"key": key, "label": label, "rows": rows})
    can_create = ctx.store.can(ctx.actor, "create", ACTIVITY)
    me = {"assignee": str(ctx.actor.id)} if ctx.actor.id is not None and "assignee" in ent.fields else {}
    quick = []
    if can_create:
        quick.append({"label": ctx._("agenda_new_task"),
                      "href": "/admin/activity/new?" + urlencode({"type": "task", "status": PLANNED, **me})})
        quick.append({"label": ctx._("activities_schedule_visit"),
                      "href": "/admin/activity/new?" + urlencode({"type": "visit", "status": PLANNED, **me})})
        for kind in LOG_TYPES:
            quick.append({"label": ctx._(f"activities_log_{kind}"),
                          "href": "/admin/activity/new?" + urlencode({"type": kind, "status": DONE, **me})})
    return ctx.render(
        "workflows/agenda.html",
        title=ctx._("agenda_title"),
        sections=views,
        days=days,
        here=here,
        quick=quick,
        zone_name=str(getattr(ctx.tz, "key", ctx.tz)),
        today=today.date().isoformat(),
    )
