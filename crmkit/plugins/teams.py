"""Built-in plugin: teams — member roles and the "member activity" page.

A team's members are its ``members`` (each with the role ``manager`` or ``member``) plus the users
whose primary team it is; the team's ``manager`` field counts as a manager too. Team scope in
permissions is the core's (``read: team`` in an entity's YAML: records owned by the user or
belonging to one of their teams); this plugin makes it visible and useful:

- ``/admin/team/{id}/activity``: for each member, their open deals (count, amount, weighted,
  the next ones to close), planned visits and meetings (overdue ones flagged) and open tasks,
  plus visits done in the last 30 days. Every figure comes from RecordStore queries as the
  viewer, so it shows only what the viewer may read; the counts are one GROUP BY each.
- ``/admin/my-team``: the signed-in user's (primary) team page.
- Who may open a team's page: admins, users with the manager role, and the team's members.
"""

from __future__ import annotations

import datetime as dt
import decimal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from crmkit.core import queries
from crmkit.core.actors import Actor
from crmkit.core.errors import NotFound, PermissionDenied
from crmkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from crmkit.app import CRM
    from crmkit.web.site import PageContext

TEAM, USER, DEAL, ACTIVITY = "team", "user", "deal", "activity"
MANAGER, MEMBER = "manager", "member"
LIST_LIMIT = 5
VISIT_TYPES = ["visit", "meeting"]

UI_STRINGS = {
    "teams_member_activity": ("Member activity", "メンバーの活動"),
    "teams_my_team": ("My team", "マイチーム"),
    "teams_manager": ("Manager", "マネージャー"),
    "teams_member": ("Member", "メンバー"),
    "teams_open_deals": ("Open deals", "進行中の商談"),
    "teams_planned_visits": ("Planned visits", "予定の訪問"),
    "teams_open_tasks": ("Open tasks", "未完了のタスク"),
    "teams_visits_done": ("Visits in the last 30 days", "直近30日の訪問"),
    "teams_weighted": ("Weighted", "加重金額"),
    "teams_overdue": ("overdue", "期限切れ"),
    "teams_none": ("None", "なし"),
    "teams_no_members": ("This team has no members yet.", "このチームにはまだメンバーがいません。"),
    "teams_no_team": ("You are not in a team yet.", "まだどのチームにも所属していません。"),
    "teams_summary": (
        "{members} members · {deals} open deals · {amount}", "メンバー {members} 人・進行中の商談 {deals} 件・{amount}"
    ),
    "teams_chart_title": ("Open pipeline per member", "メンバー別の進行中パイプライン"),
    "teams_chart_desc": ("Weighted amount of each member's open deals.", "各メンバーの進行中の商談の加重金額です。"),
    "teams_data_table": ("Data table", "データ表"),
    "teams_member_col": ("Member", "メンバー"),
}


@dataclass
class Member:
    """A team member and what they are working on."""

    id: int
    name: str
    role: str
    deals: int = 0
    amount: decimal.Decimal = decimal.Decimal("0.00")
    weighted: decimal.Decimal = decimal.Decimal("0.00")
    visits: int = 0
    overdue_visits: int = 0
    tasks: int = 0
    overdue_tasks: int = 0
    visits_done: int = 0
    deal_items: list[dict[str, Any]] = field(default_factory=list)
    visit_items: list[dict[str, Any]] = field(default_factory=list)
    task_items: list[dict[str, Any]] = field(default_factory=list)


def members(crm: CRM, team_id: int) -> list[tuple[int, str]]:
    """``[(user_id, role)]`` of a team: managers first, then members, by name."""
    team = crm.records.get(TEAM, team_id, actor=_system())
    roles: dict[int, str] = {}
    for m in team.get("members") or []:
        roles[m["id"]] = MANAGER if m.get("role") == MANAGER else MEMBER
    users = crm.table(USER)
    with crm.engine.connect() as conn:
        for (uid,) in conn.execute(sa.select(users.c.id).where(users.c.primary_team == team_id)):
            roles.setdefault(uid, MEMBER)
    if team.get("manager"):
        roles[team["manager"]] = MANAGER
    titles = crm.records.titles(USER, roles)
    return sorted(roles.items(), key=lambda kv: (kv[1] != MANAGER, titles.get(kv[0], "")))


def is_team_manager(crm: CRM, actor: Actor, team_id: int) -> bool:
    """Whether the actor manages the team (``manager`` field or a member with the manager role)."""
    return actor.id is not None and (actor.id, MANAGER) in members(crm, team_id)


def may_view(crm: CRM, actor: Actor, team_id: int) -> bool:
    """Admins, users with the manager role and the team's members may see its activity page."""
    if actor.is_admin or actor.role == MANAGER:
        return True
    return actor.id is not None and any(uid == actor.id for uid, _r in members(crm, team_id))


def _system() -> Actor:
    from crmkit.core.actors import SYSTEM

    return SYSTEM


def _grouped(crm: CRM, conn: sa.Connection, actor: Actor, entity: str, by: Any, condition: Any,
             sums: list[Any]) -> dict[Any, tuple]:
    """``{group: (count, *sums)}`` over the records of ``entity`` the actor may read."""
    store = crm.records
    ent = crm.catalog[entity]
    where = queries.build_where(conn, crm.catalog, crm.schema.tables, ent, condition, None,
                                store.restrictions(actor, ent), actor.params())
    return {r[0]: tuple(r[1:]) for r in conn.execute(
        sa.select(by, sa.func.count(), *sums).where(where).group_by(by))}


def member_activity(crm: CRM, actor: Actor, team_id: int, *, now: dt.datetime | None = None) -> list[Member]:
    """Each member's open deals, planned visits, open tasks and recent visits, as ``actor`` sees them."""
    if not may_view(crm, actor, team_id):
        raise PermissionDenied("you may not see this team's activity")
    now = now or dt.datetime.now(dt.UTC)
    people = members(crm, team_id)
    if not people:
        return []
    ids = [uid for uid, _r in people]
    titles = crm.records.titles(USER, ids)
    out = {uid: Member(uid, titles.get(uid, f"#{uid}"), role) for uid, role in people}
    store = crm.records
    with crm.engine.connect() as conn:
        if DEAL in crm.catalog and store.can(actor, "read", DEAL):
            deal = crm.table(DEAL)
            amount = sa.func.coalesce(deal.c.amount, 0)
            prob = sa.func.coalesce(deal.c.probability, 0)
            for uid, (n, total, weighted) in _grouped(
                crm, conn, actor, DEAL, deal.c.owner, {"all": [{"status": "open"}, {"owner": {"in": ids}}]},
                [sa.func.sum(amount), sa.func.sum(amount * prob) / 100],
            ).items():
                m = out[uid]
                m.deals = int(n)
                m.amount = _money(total)
                m.weighted = _money(weighted)
        if ACTIVITY in crm.catalog and store.can(actor, "read", ACTIVITY):
            act = crm.table(ACTIVITY)
            late = sa.func.sum(sa.case((act.c.due_at < now, 1), else_=0))
            mine = {"assignee": {"in": ids}}
            for kind, types in (("visits", VISIT_TYPES), ("tasks", ["task"])):
                for uid, (n, overdue) in _grouped(
                    crm, conn, actor, ACTIVITY, act.c.assignee,
                    {"all": [{"type": {"in": types}}, {"status": "planned"}, mine]}, [late],
                ).items():
                    setattr(out[uid], kind, int(n))
                    setattr(out[uid], f"overdue_{kind}", int(overdue or 0))
            since = (now - dt.timedelta(days=30)).isoformat()
            for uid, (n,) in _grouped(
                crm, conn, actor, ACTIVITY, act.c.assignee,
                {"all": [{"type": {"in": VISIT_TYPES}}, {"status": "done"}, mine, {"due_at": {"gte": since}}]}, [],
            ).items():
                out[uid].visits_done = int(n)
    for m in out.values():
        _fill_lists(crm, actor, m, now)
    return [out[uid] for uid in ids]


def _money(value: Any) -> decimal.Decimal:
    return decimal.Decimal(str(value or 0)).quantize(decimal.Decimal("0.01"), rounding=decimal.ROUND_HALF_UP)


def _fill_lists(crm: CRM, actor: Actor, m: Member, now: dt.datetime) -> None:
    store = crm.records
    if m.deals:
        page = store.list(DEAL, actor=actor, filter={"all": [{"status": "open"}, {"owner": m.id}]},
                          sort="close_date", limit=LIST_LIMIT, with_count=False,
                          columns=["name", "amount", "close_date", "stage"])
        m.deal_items = page.items
    for kind, types, attr in (("visits", VISIT_TYPES, "visit_items"), ("tasks", ["task"], "task_items")):
        if getattr(m, kind):
            page = store.list(ACTIVITY, actor=actor, filter={"all": [
                {"type": {"in": types}}, {"status": "planned"}, {"assignee": m.id}]},
                sort="due_at", limit=LIST_LIMIT, with_count=False, columns=["subject", "due_at", "type"])
            for item in page.items:
                item["overdue"] = bool(item.get("due_at") and item["due_at"] < now)
            setattr(m, attr, page.items)


# ---------------------------------------------------------------------------------------------
# Pages
# ---------------------------------------------------------------------------------------------
def activity_page(ctx: PageContext) -> Response:
    """GET /admin/team/{id}/activity."""
    from crmkit.web.charts import Chart, Series, hbar_chart
    from crmkit.web.templating import format_datetime, format_money

    team_id = int(ctx.params["id"])
    team = ctx.store.get(TEAM, team_id, actor=ctx.actor)
    rows = member_activity(ctx.crm, ctx.actor, team_id)
    _ = ctx._
    stage_titles = ctx.store.titles("deal_stage", [d.get("stage") for m in rows for d in m.deal_items])

    def when(value: Any) -> str:
        return format_datetime(value, ctx.tz, ctx.lang) if value else ""

    shown = [
        {
            "id": m.id, "name": m.name, "role": _("teams_manager") if m.role == MANAGER else _("teams_member"),
            "deals": m.deals, "amount": format_money(m.amount), "weighted": format_money(m.weighted),
            "visits": m.visits, "overdue_visits": m.overdue_visits, "tasks": m.tasks,
            "overdue_tasks": m.overdue_tasks, "visits_done": m.visits_done,
            "deal_items": [{"id": d["id"], "name": d.get("name"), "amount": format_money(d.get("amount")),
                            "close_date": d.get("close_date"), "stage": stage_titles.get(d.get("stage"), "")}
                           for d in m.deal_items],
            "visit_items": [{"id": a["id"], "subject": a.get("subject"), "when": when(a.get("due_at")),
                             "overdue": a["overdue"]} for a in m.visit_items],
            "task_items": [{"id": a["id"], "subject": a.get("subject"), "when": when(a.get("due_at")),
                            "overdue": a["overdue"]} for a in m.task_items],
        }
        for m in rows
    ]
    chart = hbar_chart(Chart(
        title=_("teams_chart_title"), desc=_("teams_chart_desc"), categories=[m.name for m in rows],
        series=[Series(_("teams_weighted"), [m.weighted for m in rows])], fmt=format_money,
        table_label=_("teams_data_table"), category_label=_("teams_member_col"),
    )) if rows else ""
    total = sum((m.amount for m in rows), decimal.Decimal(0))
    return ctx.render(
        "reports/team_activity.html", title=f"{team['name']} · {_('teams_member_activity')}", team=team,
        members=shown, chart=chart,
        summary=_("teams_summary", members=len(rows), deals=sum(m.deals for m in rows), amount=format_money(total)),
    )


def my_team_page(ctx: PageContext) -> Response:
    """GET /admin/my-team — the signed-in user's primary team (or their first team)."""
    teams = sorted(ctx.actor.team_ids)
    target = ctx.actor.primary_team or (teams[0] if teams else None)
    if target is None:
        raise NotFound(ctx._("teams_no_team"))
    return RedirectResponse(f"/admin/team/{target}/activity", status_code=303)


# ---------------------------------------------------------------------------------------------
# Hooks
# ---------------------------------------------------------------------------------------------
@hookimpl
def register_ui_strings(crm):
    """The team pages' words."""
    return UI_STRINGS


@hookimpl
def register_routes(crm):
    """The member activity page and the "my team" shortcut."""
    if TEAM not in crm.catalog:
        return None
    from crmkit.web.site import admin_page

    return [
        Route("/admin/team/{id:int}/activity", admin_page(activity_page), methods=["GET", "HEAD"]),
        Route("/admin/my-team", admin_page(my_team_page), methods=["GET", "HEAD"]),
    ]


@hookimpl
def menu_links(crm, actor, request):
    """"My team" for users who belong to one."""
    if actor is None or TEAM not in crm.catalog or not (actor.primary_team or actor.team_ids):
        return None
    from crmkit.web.i18n import t

    lang = getattr(request.state, "crmkit_lang", None) or actor.locale
    return [{"href": "/admin/my-team", "label": t("teams_my_team", lang, extra=UI_STRINGS), "icon": "users"}]


@hookimpl
def record_actions(crm, entity, record, actor, request):
    """A "Member activity" button on a team's page."""
    if entity.name != TEAM or not may_view(crm, actor, record["id"]):
        return None
    ctx = request.state.crmkit_ctx
    return [{"name": "member_activity", "label": ctx._("teams_member_activity"),
             "href": f"/admin/team/{record['id']}/activity"}]
