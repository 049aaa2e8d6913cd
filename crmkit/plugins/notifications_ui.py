"""Built-in plugin: the notification bell (unread count in the admin's header) and /admin/notifications.

A user sees only their own notifications. Opening one marks it read and follows its link (local
admin paths only, so a notification can never redirect off-site); "mark all read" clears the
count. Buttons a plugin attached (``actions``, e.g. the reminders' snooze) post to their
``/admin/…`` URL with the CSRF token.
"""

from __future__ import annotations

import weakref
from typing import Any

import sqlalchemy as sa
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from crmkit.core import notifications
from crmkit.core.errors import NotFound
from crmkit.hookspecs import hookimpl

PAGE_SIZE = 30

UI_STRINGS: dict[str, tuple[str, str]] = {
    "notifications_title": ("Notifications", "通知"),
    "notifications_unread": ("{n} unread", "未読 {n} 件"),
    "notifications_bell": ("Notifications, {n} unread", "通知（未読 {n} 件）"),
    "notifications_none": ("No notifications.", "通知はありません。"),
    "notifications_none_unread": ("No unread notifications.", "未読の通知はありません。"),
    "notifications_all": ("All", "すべて"),
    "notifications_only_unread": ("Unread", "未読"),
    "notifications_mark_all": ("Mark all as read", "すべて既読にする"),
    "notifications_mark_read": ("Mark as read", "既読にする"),
    "notifications_marked": ("{n} notification(s) marked as read.", "{n} 件の通知を既読にしました。"),
    "notifications_open": ("Open", "開く"),
    "notifications_older": ("Older", "さらに古いもの"),
    "notifications_new": ("New", "未読"),
}


def _safe_link(link: str | None) -> str | None:
    """Only local paths (``/admin/...``) are followed: no open redirect through a notification."""
    if link and link.startswith("/") and not link.startswith("//") and "\\" not in link:
        return link
    return None


@hookimpl
def register_ui_strings(crm: Any) -> dict[str, tuple[str, str]]:
    """The words of the bell and the notifications page (en, ja)."""
    return UI_STRINGS


@hookimpl
def extra_template_vars(crm: Any, template: str, request: Any) -> dict[str, Any] | None:
    """``notification_bell`` ({count, label}) for signed-in pages; base.html shows it in the header."""
    ctx = getattr(request.state, "crmkit_ctx", None)
    actor = getattr(ctx, "actor", None)
    if actor is None or actor.id is None:
        return None
    n = bell_count(crm, actor.id)
    shown = f"{notifications.UNREAD_CAP}+" if n > notifications.UNREAD_CAP else str(n)
    return {"notification_bell": {"count": n, "shown": shown, "label": ctx._("notifications_bell", n=shown)}}


_BELL_STATEMENTS: weakref.WeakKeyDictionary[Any, sa.Select] = weakref.WeakKeyDictionary()


def bell_count(crm: Any, user_id: int) -> int:
    """:func:`crmkit.core.notifications.unread_count` for the bell on every page, with the statement built once.

    The same query, up to ``UNREAD_CAP + 1``; building the SQLAlchemy statement anew cost several
    times more than running it (the count is read on every admin page), so it is kept per CRM with
    the user id as a bound parameter.
    """
    stmt = _BELL_STATEMENTS.get(crm)
    if stmt is None:
        tbl = notifications.table(crm)
        inner = (
            sa.select(tbl.c.id)
            .where(tbl.c.user_id == sa.bindparam("crmkit_user"), tbl.c.read_at.is_(None), tbl.c.in_app.is_(True))
            .limit(notifications.UNREAD_CAP + 1)
            .subquery()
        )
        stmt = _BELL_STATEMENTS[crm] = sa.select(sa.func.count()).select_from(inner)
    with crm.records.reads.connect() as conn:  # one statement: no BEGIN
        return conn.execute(stmt, {"crmkit_user": user_id}).scalar_one()


@hookimpl
def extra_css_urls(crm: Any, template: str, request: Any) -> list[str]:
    """The bell's and the page's styles."""
    from crmkit.web.site import admin_site

    return [admin_site(crm).static_url("notifications.css")]


@hookimpl
def register_routes(crm: Any) -> list[Any]:
    """The notifications page, mark-read, open and the unread count for the bell's refresh."""
    from crmkit.web.site import admin_page

    return [
        Route("/admin/notifications", admin_page(notifications_page), methods=["GET", "HEAD"]),
        Route("/admin/notifications/count", admin_page(unread_json), methods=["GET"]),
        Route("/admin/notifications/read", admin_page(mark_read), methods=["POST"]),
        Route("/admin/notifications/{id:int}/open", admin_page(open_notification), methods=["POST"]),
    ]


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def notifications_page(ctx: Any) -> Response:
    """The signed-in user's notifications, newest first (``?unread=1`` for unread only)."""
    from crmkit.web.templating import format_datetime

    unread_only = ctx.query.get("unread") == "1"
    rows = notifications.list_for(ctx.crm, ctx.actor.id, unread_only=unread_only, limit=PAGE_SIZE + 1,
                                  before_id=_int(ctx.query.get("before")))
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    for row in rows:
        row["safe_link"] = _safe_link(row["link"])
        row["buttons"] = []
        for action in row["actions"]:
            href = _safe_link(str(action.get("href", "")).replace("{id}", str(row["id"]))) if isinstance(
                action, dict) else None
            if href:
                row["buttons"].append({"label": _label(action.get("label"), ctx.lang), "href": href})
    return ctx.render(
        "notifications/list.html", title=ctx._("notifications_title"), rows=rows, unread_only=unread_only,
        older=rows[-1]["id"] if more else None,
        fmt_dt=lambda v: format_datetime(v, ctx.tz, ctx.lang) if v else "",
    )


def _label(label: Any, lang: str) -> str:
    if isinstance(label, dict):
        return str(label.get(lang) or label.get("en") or next(iter(label.values()), ""))
    return str(label or "")


def unread_json(ctx: Any) -> Response:
    """``{"unread": n}`` for the bell's periodic refresh."""
    return JSONResponse({"unread": notifications.unread_count(ctx.crm, ctx.actor.id)},
                        headers={"cache-control": "no-store"})


def mark_read(ctx: Any) -> Response:
    """Mark the posted ``id``s read, or all of the user's notifications with ``all=1``."""
    if ctx.form.get("all") == "1":
        n = notifications.mark_read(ctx.crm, ctx.actor.id)
    else:
        ids = [i for i in (_int(v) for v in ctx.form.getlist("id")) if i is not None][:PAGE_SIZE * 4]
        n = notifications.mark_read(ctx.crm, ctx.actor.id, ids)
    if ctx.wants_json():
        return JSONResponse({"marked": n, "unread": notifications.unread_count(ctx.crm, ctx.actor.id)})
    nxt = ctx.form.get("next") or "/admin/notifications"
    return ctx.redirect(_safe_link(nxt) or "/admin/notifications", ctx._("notifications_marked", n=n))


def open_notification(ctx: Any) -> Response:
    """Mark one notification read and go to its link (or back to the list)."""
    row = notifications.get(ctx.crm, ctx.params["id"], user_id=ctx.actor.id)
    if row is None:
        raise NotFound("no such notification")
    notifications.mark_read(ctx.crm, ctx.actor.id, [row["id"]])
    return ctx.redirect(_safe_link(row["link"]) or "/admin/notifications")
