"""Notifications to users: in the admin (the bell with its unread count) and by email.

:func:`notify` records a notification row — the in-app channel — and hands it to every other
channel asked for: ``email`` (built in: the user's address, through the mail outbox) and any a
plugin adds with ``register_notification_channels``. Everything happens in one transaction (the
caller's ``conn`` when given), and an idempotency ``key`` makes a repeated call a no-op, so a
notification produced by a retried job is never shown or mailed twice.
"""

from __future__ import annotations

import datetime as dt
import inspect
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from crmkit.core import jobs, mail
from crmkit.core.jobs import as_utc, insert_ignoring_conflict, utcnow
from crmkit.plugins import call_each

if TYPE_CHECKING:
    from crmkit.app import CRM

NOTIFICATION_TABLE = "crmkit_notification"
BUILTIN_CHANNELS = ("in_app", "email")
UNREAD_CAP = 99  # the bell shows "99+" beyond this; counting stops there


def define_notification_table(md: sa.MetaData) -> sa.Table:
    """Add the ``crmkit_notification`` table to ``md`` and return it."""
    return sa.Table(
        NOTIFICATION_TABLE,
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("user.id", ondelete="CASCADE", use_alter=True),
                  nullable=False),
        sa.Column("key", sa.String(255)),  # idempotency key (unique when set)
        sa.Column("subject", sa.String(500), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("link", sa.String(1000)),
        sa.Column("kind", sa.String(64)),  # who made it ("reminder"), for plugins' own pages and actions
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("actions", sa.JSON, nullable=False),  # buttons: [{"label": {en, ja}, "href": "/…"}]
        sa.Column("in_app", sa.Boolean, nullable=False),
        sa.Column("channels", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("read_at", sa.DateTime(timezone=True)),
        sa.Index("uq_crmkit_notification_key", "key", unique=True),
        sa.Index("ix_crmkit_notification_user_read", "user_id", "read_at", "id"),
    )


def table(crm: CRM) -> sa.Table:
    """The notification table of ``crm``."""
    return crm.system_tables[NOTIFICATION_TABLE]


def plugin_channels(crm: CRM) -> dict[str, Any]:
    """Channels plugins add (``register_notification_channels``), by name."""
    out: dict[str, Any] = {}
    for plugin, found in call_each(crm.pm, "register_notification_channels", crm=crm):
        for name, fn in found.items():
            if name in BUILTIN_CHANNELS or name in out:
                raise ValueError(f"notification channel {name!r} of plugin {plugin} is already defined")
            out[name] = fn
    return out


def absolute_link(crm: CRM, link: str | None) -> str | None:
    """``/admin/activity/3`` -> ``https://crm.example.com/admin/activity/3`` (base_url); others unchanged."""
    if link and link.startswith("/") and not link.startswith("//"):
        return crm.config.base_url.rstrip("/") + link
    return link


def notify(
    crm: CRM,
    user_id: int,
    *,
    subject: str,
    body: str = "",
    link: str | None = None,
    key: str | None = None,
    channels: Iterable[str] = ("in_app", "email"),
    conn: sa.Connection | None = None,
    kind: str | None = None,
    data: dict[str, Any] | None = None,
    actions: list[dict[str, Any]] | None = None,
    email_text: str | None = None,
    email_html: str | None = None,
) -> int | None:
    """Notify a user; returns the notification id, or None (key already used, or no such user).

    ``channels``: ``in_app`` shows it under the bell; ``email`` queues a mail to the user's address
    (skipped when they have none or are inactive); other names are plugin channels. ``link`` is a
    path in the admin (made absolute with ``base_url`` in emails). ``kind``, ``data`` and
    ``actions`` (buttons shown with the notification: ``{"label": {"en", "ja"}, "href"}`` posted
    with the CSRF token to a local path, where ``{id}`` stands for the notification's id) are
    for plugins such as reminders. ``email_text``/``email_html`` replace
    the email's default body (``body`` plus the link). With ``conn`` it all joins the caller's
    transaction; ``key`` makes it idempotent.
    """
    wanted = list(dict.fromkeys(channels))
    extra = crm.__dict__.get("_crmkit_notification_channels")
    if extra is None:
        extra = crm.__dict__["_crmkit_notification_channels"] = plugin_channels(crm)
    unknown = [c for c in wanted if c not in BUILTIN_CHANNELS and c not in extra]
    if unknown:
        raise ValueError(f"unknown notification channel(s): {', '.join(unknown)}")
    if not subject:
        raise ValueError("a notification needs a subject")
    users = crm.table("user")
    tbl = table(crm)
    with jobs._maybe_conn(crm, conn) as c:
        user = c.execute(sa.select(users).where(users.c.id == user_id)).mappings().first()
        if user is None:
            return None
        now = utcnow()
        values = {
            "user_id": user_id, "key": key, "subject": subject[:500], "body": body or "", "link": link,
            "kind": kind, "data": dict(data or {}), "actions": list(actions or []),
            "in_app": "in_app" in wanted, "channels": wanted, "created_at": now, "read_at": None,
        }
        if key is None:
            nid = c.execute(sa.insert(tbl).values(values).returning(tbl.c.id)).scalar_one()
        else:
            nid = insert_ignoring_conflict(c, tbl, values, ["key"])
            if nid is None:
                return None
        notification = {**values, "id": nid}
        user = dict(user)
        if "email" in wanted and user.get("email") and user.get("active", True) and mail.valid_address(user["email"]):
            url = absolute_link(crm, link)
            text = email_text if email_text is not None else "\n\n".join(p for p in (body, url) if p)
            mail.queue_mail(crm, to=user["email"], subject=subject, text=text, html=email_html,
                            key=f"notification:{nid}:email", conn=c, notification_id=nid, user_id=user_id,
                            kind=kind or "notification")
        for name in wanted:
            if name in extra:
                fn = extra[name]
                if _takes_conn(fn):
                    fn(crm=crm, user=user, notification=notification, conn=c)
                else:
                    fn(crm=crm, user=user, notification=notification)
        return nid


def _takes_conn(fn: Any) -> bool:
    try:
        return "conn" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def unread_count(crm: CRM, user_id: int, *, cap: int = UNREAD_CAP) -> int:
    """Unread in-app notifications of a user, counted up to ``cap + 1`` (the bell shows "99+")."""
    tbl = table(crm)
    inner = (sa.select(tbl.c.id).where(tbl.c.user_id == user_id, tbl.c.read_at.is_(None), tbl.c.in_app.is_(True))
             .limit(cap + 1).subquery())
    with crm.records.reads.connect() as conn:  # one statement, on every admin page: no BEGIN
        return conn.execute(sa.select(sa.func.count()).select_from(inner)).scalar_one()


def list_for(crm: CRM, user_id: int, *, unread_only: bool = False, limit: int = 30,
             before_id: int | None = None) -> list[dict[str, Any]]:
    """A user's in-app notifications, newest first (keyset-paged by ``before_id``)."""
    tbl = table(crm)
    stmt = (sa.select(tbl).where(tbl.c.user_id == user_id, tbl.c.in_app.is_(True))
            .order_by(tbl.c.id.desc()).limit(max(1, min(limit, 200))))
    if unread_only:
        stmt = stmt.where(tbl.c.read_at.is_(None))
    if before_id:
        stmt = stmt.where(tbl.c.id < before_id)
    with crm.engine.connect() as conn:
        return [_row(r) for r in conn.execute(stmt).mappings()]


def get(crm: CRM, notification_id: int, *, user_id: int | None = None) -> dict[str, Any] | None:
    """One notification (only when it belongs to ``user_id``, if given), or None."""
    tbl = table(crm)
    stmt = sa.select(tbl).where(tbl.c.id == notification_id)
    if user_id is not None:
        stmt = stmt.where(tbl.c.user_id == user_id)
    with crm.engine.connect() as conn:
        row = conn.execute(stmt).mappings().first()
    return _row(row) if row else None


def mark_read(crm: CRM, user_id: int, ids: Iterable[int] | None = None, *, now: dt.datetime | None = None,
              conn: sa.Connection | None = None) -> int:
    """Mark a user's notifications read (``ids``, or all when None); returns how many changed.

    Only the user's own notifications are touched, whatever ids are given.
    """
    tbl = table(crm)
    where = [tbl.c.user_id == user_id, tbl.c.read_at.is_(None)]
    if ids is not None:
        id_list = [int(i) for i in ids]
        if not id_list:
            return 0
        where.append(tbl.c.id.in_(id_list))
    with jobs._maybe_conn(crm, conn) as c:
        return c.execute(sa.update(tbl).where(*where).values(read_at=as_utc(now) or utcnow())).rowcount


def _row(row: Any) -> dict[str, Any]:
    out = dict(row)
    for k in ("created_at", "read_at"):
        out[k] = as_utc(out[k])
    return out


__all__ = ["NOTIFICATION_TABLE", "absolute_link", "plugin_channels", "get", "list_for", "mark_read", "notify",
           "unread_count"]
