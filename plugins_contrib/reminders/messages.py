"""The words of a reminder (en/ja), in the recipient's language and time zone."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from crmkit.core.jobs import as_utc

JA_WEEKDAYS = "月火水木金土日"

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "subject": "Reminder: {title}",
        "subject_escalate": "Overdue: {title} ({who})",
        "due": "Due: {when}",
        "starts_in": "Due in {minutes} minutes: {when}",
        "overdue": "{title} was due {when} and is not done yet. Assignee: {who}.",
        "nobody": "nobody",
    },
    "ja": {
        "subject": "リマインダー: {title}",
        "subject_escalate": "期限超過: {title}（{who}）",
        "due": "期限: {when}",
        "starts_in": "あと{minutes}分: {when}",
        "overdue": "{title} は {when} が期限でしたが、まだ完了していません。担当者: {who}",
        "nobody": "未割り当て",
    },
}

SNOOZE_LABELS = {
    "10m": {"en": "Snooze 10 min", "ja": "10分後に再通知"},
    "1h": {"en": "Snooze 1 hour", "ja": "1時間後に再通知"},
    "tomorrow": {"en": "Tomorrow 9:00", "ja": "明日9:00に再通知"},
}


def format_when(value: dt.datetime | None, lang: str, tz: dt.tzinfo) -> str:
    """``Fri 1 May 2026, 18:00 (Asia/Tokyo)`` / ``2026年5月1日(金) 18:00（Asia/Tokyo）``."""
    if value is None:
        return "-"
    local = as_utc(value).astimezone(tz)
    zone = getattr(tz, "key", None) or local.tzname() or "UTC"
    if lang == "ja":
        return f"{local.year}年{local.month}月{local.day}日({JA_WEEKDAYS[local.weekday()]}) {local:%H:%M}（{zone}）"
    return f"{local:%a} {local.day} {local:%b %Y, %H:%M} ({zone})"


def snooze_actions() -> list[dict[str, Any]]:
    """Snooze buttons for a reminder notification (``{id}`` is the notification's id)."""
    return [{"label": label, "href": f"/admin/reminders/snooze/{{id}}?for={choice}"}
            for choice, label in SNOOZE_LABELS.items()]


def render(crm: Any, rule: Any, record: dict[str, Any], user: dict[str, Any], trigger: str, lang: str,
           tz: dt.tzinfo, conn: sa.Connection) -> dict[str, str]:
    """Subject and body: the ``format_reminder`` hook's answer, else the built-in wording."""
    ent = crm.catalog[rule.entity]
    hook = getattr(crm.pm.hook, "format_reminder", None)
    if hook is not None:
        answer = hook(crm=crm, entity=ent, record=record, user=user, trigger=trigger, lang=lang, tz=tz)
        if answer:
            return {"subject": str(answer["subject"]), "body": str(answer.get("body", ""))}
    words = TEXTS["ja" if lang == "ja" else "en"]
    title = str(record.get(ent.title_field) or f"#{record['id']}")
    due = record.get(rule.due_field) if rule.due_field else None
    when = format_when(due or (record.get(rule.reminder_field) if rule.reminder_field else None), lang, tz)
    if trigger == "escalate":
        who = _assignee_name(crm, rule, record, conn) or words["nobody"]
        return {"subject": words["subject_escalate"].format(title=title, who=who),
                "body": words["overdue"].format(title=title, when=when, who=who)}
    if trigger.startswith("before"):
        body = words["starts_in"].format(minutes=trigger[len("before"):], when=when)
    else:
        body = words["due"].format(when=when)
    return {"subject": words["subject"].format(title=title), "body": body}


def _assignee_name(crm: Any, rule: Any, record: dict[str, Any], conn: sa.Connection) -> str | None:
    from plugins_contrib.reminders.schedule import recipients

    ids = recipients(crm, rule, record, conn)
    if not ids:
        return None
    users = crm.table("user")
    row = conn.execute(sa.select(users.c.display_name, users.c.username).where(users.c.id == ids[0])).first()
    return (row.display_name or row.username) if row else None
