"""When reminders fire, and what firing one does.

Each reminder is a job ``reminders.fire`` whose idempotency key names the record, the trigger and
the time it belongs to (``reminders:activity:12:before15:2026-05-01T09:00:00+00:00``). Saving a
record recomputes its keys: unchanged ones stay queued, jobs whose key is no longer wanted (the
due time moved, the task was completed) are cancelled, new ones are enqueued. Recipients are read
when the job fires, so a participant deleted in the meantime simply drops out and the others are
still reminded; each recipient's notification has its own key, so a retried job never notifies
anyone twice.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa

from crmkit.core import conditions, jobs, notifications
from crmkit.core.db import write_connection
from crmkit.core.jobs import as_utc
from plugins_contrib.reminders import messages
from plugins_contrib.reminders.settings import EntityRule, load

FIRE_JOB = "reminders.fire"
KIND = "reminder"
SNOOZES = (("10m", dt.timedelta(minutes=10)), ("1h", dt.timedelta(hours=1)), ("tomorrow", None))
TOMORROW_AT = dt.time(9, 0)


@dataclass(frozen=True)
class Trigger:
    """One reminder to send: its kind (``at``, ``before15``, ``escalate``), time and job key."""

    kind: str
    at: dt.datetime
    key: str


def prefix(entity: str, record_id: int) -> str:
    """The key prefix shared by every reminder job of one record."""
    return f"reminders:{entity}:{record_id}:"


def _iso(value: dt.datetime) -> str:
    return as_utc(value).isoformat()


def matches(crm: Any, rule: EntityRule, record: dict[str, Any], conn: sa.Connection) -> bool:
    """Whether the record is in a state that wants reminders (``when``, e.g. status planned)."""
    if not rule.when:
        return True
    tables = crm.schema.tables

    def fetch(entity: str, id: Any) -> dict[str, Any] | None:
        t = tables[entity]
        row = conn.execute(sa.select(t).where(t.c.id == id)).mappings().first()
        return dict(row) if row else None

    return conditions.evaluate(rule.when, record, rule.entity, crm.catalog, fetch=fetch)


def triggers(crm: Any, rule: EntityRule, record: dict[str, Any], conn: sa.Connection,
             now: dt.datetime | None) -> list[Trigger]:
    """The reminders a record wants; with ``now``, times more than the grace period past are skipped."""
    if not matches(crm, rule, record, conn):
        return []
    base = prefix(rule.entity, record["id"])
    out = []
    reminder_at = as_utc(record.get(rule.reminder_field)) if rule.reminder_field else None
    due = as_utc(record.get(rule.due_field)) if rule.due_field else None
    if reminder_at is not None:
        out.append(Trigger("at", reminder_at, f"{base}at:{_iso(reminder_at)}"))
    if due is not None:
        for minutes in rule.offsets:
            out.append(Trigger(f"before{minutes}", due - dt.timedelta(minutes=minutes),
                               f"{base}before{minutes}:{_iso(due)}"))
        if rule.escalate_after_minutes:
            out.append(Trigger("escalate", due + dt.timedelta(minutes=rule.escalate_after_minutes),
                               f"{base}escalate:{_iso(due)}"))
    if now is None:
        return out
    grace = dt.timedelta(minutes=load(crm).grace_minutes)
    return [t for t in out if t.at >= now - grace]


def reschedule(crm: Any, rule: EntityRule, record: dict[str, Any], conn: sa.Connection,
               now: dt.datetime | None = None) -> list[Trigger]:
    """Bring the record's queued reminder jobs in line with the record (in the caller's transaction)."""
    now = as_utc(now) or jobs.utcnow()
    wanted = triggers(crm, rule, record, conn, now)
    keys = {t.key for t in wanted}
    jobs.cancel_matching(crm, name=FIRE_JOB, key_prefix=prefix(rule.entity, record["id"]), keep=keys, conn=conn)
    for t in wanted:
        jobs.enqueue(crm, FIRE_JOB, {"entity": rule.entity, "id": record["id"], "trigger": t.kind},
                     run_at=t.at, key=t.key, conn=conn, revive=True)
    return wanted


def cancel_all(crm: Any, entity: str, record_id: int, conn: sa.Connection) -> int:
    """Cancel every queued reminder of a record (it was deleted)."""
    return jobs.cancel_matching(crm, name=FIRE_JOB, key_prefix=prefix(entity, record_id), conn=conn)


# -------------------------------------------------------------------------------------------------
# Firing
# -------------------------------------------------------------------------------------------------


def user_zone(crm: Any, user: dict[str, Any]) -> dt.tzinfo:
    """The user's time zone (``user.time_zone``), else the project's, else UTC."""
    for name in (user.get("time_zone"), crm.config.time_zone):
        if name:
            try:
                return ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return dt.UTC


def _users(conn: sa.Connection, crm: Any, ids: list[int]) -> dict[int, dict[str, Any]]:
    users = crm.table("user")
    rows = conn.execute(sa.select(users).where(users.c.id.in_(ids))).mappings() if ids else []
    return {r["id"]: dict(r) for r in rows}


def recipients(crm: Any, rule: EntityRule, record: dict[str, Any], conn: sa.Connection) -> list[int]:
    """User ids to remind, read now: the recipient fields, else the fallback (e.g. the owner)."""
    ent = crm.catalog[rule.entity]

    def ids_of(fname: str) -> list[int]:
        if fname == "owner":
            return [record["owner"]] if record.get("owner") else []
        f = ent.fields[fname]
        if f.type == "references":
            link = crm.schema.link_tables[(rule.entity, fname)]
            return list(conn.execute(sa.select(link.c.target_id).where(link.c.source_id == record["id"])
                                     .order_by(link.c.target_id)).scalars())
        return [record[fname]] if record.get(fname) else []

    found: list[int] = []
    for fname in rule.recipients:
        found += ids_of(fname)
    if not found and rule.fallback:
        found = ids_of(rule.fallback)
    return list(dict.fromkeys(found))


def team_manager(crm: Any, rule: EntityRule, record: dict[str, Any], conn: sa.Connection) -> int | None:
    """The manager of the record's team, else of its assignee's (or owner's) primary team."""
    teams, users = crm.table("team"), crm.table("user")
    team_id = record.get("team")
    if team_id is None:
        person = next(iter(recipients(crm, rule, record, conn)), None)
        if person is not None:
            team_id = conn.execute(sa.select(users.c.primary_team).where(users.c.id == person)).scalar_one_or_none()
    if team_id is None:
        return None
    return conn.execute(sa.select(teams.c.manager).where(teams.c.id == team_id)).scalar_one_or_none()


def fire(crm: Any, payload: dict[str, Any], conn: sa.Connection) -> None:
    """Job handler: notify the record's recipients now, if the reminder is still wanted."""
    info = jobs.current_job()
    rule = load(crm).entities.get(payload.get("entity"))
    if rule is None:
        return  # the entity was opted out since the job was queued
    table = crm.table(rule.entity)
    row = conn.execute(sa.select(table).where(table.c.id == payload["id"])).mappings().first()
    if row is None:
        return  # deleted
    record = dict(row)
    trigger = payload["trigger"]
    if not matches(crm, rule, record, conn):
        return  # completed or cancelled meanwhile
    if trigger != "snooze" and info is not None and info.key is not None:
        # A job for a due time that has changed since: its replacement carries the current key.
        current = {t.key for t in triggers(crm, rule, record, conn, None)}
        if info.key not in current:
            return
    if trigger == "escalate":
        manager = team_manager(crm, rule, record, conn)
        assignees = recipients(crm, rule, record, conn)
        targets = [manager] if manager is not None and manager not in assignees[:1] else []
    elif trigger == "snooze":
        targets = [int(payload["user"])]
    else:
        targets = recipients(crm, rule, record, conn)
    users = _users(conn, crm, targets)
    key = info.key if info is not None and info.key else f"{prefix(rule.entity, record['id'])}{trigger}"
    base_trigger = payload.get("of", trigger) if trigger == "snooze" else trigger
    for uid in targets:
        user = users.get(uid)
        if user is None or not user.get("active", True):
            continue  # a deleted or deactivated person never blocks the others
        lang = user.get("locale") or crm.config.locale or "en"
        tz = user_zone(crm, user)
        text = messages.render(crm, rule, record, user, base_trigger, lang, tz, conn)
        actions = [] if base_trigger == "escalate" else messages.snooze_actions()
        notifications.notify(
            crm, uid, subject=text["subject"], body=text["body"], link=f"/admin/{rule.entity}/{record['id']}",
            key=f"{key}:u{uid}", channels=load(crm).channels, conn=conn, kind=KIND, actions=actions,
            data={"entity": rule.entity, "id": record["id"], "trigger": base_trigger},
        )


def snooze_until(choice: str, now: dt.datetime, tz: dt.tzinfo) -> dt.datetime | None:
    """When a snoozed reminder comes back: +10 min, +1 h, or tomorrow 9:00 in the user's time zone."""
    for name, delta in SNOOZES:
        if name == choice:
            if delta is not None:
                return now + delta
            local = now.astimezone(tz)
            tomorrow = dt.datetime.combine(local.date() + dt.timedelta(days=1), TOMORROW_AT, tzinfo=tz)
            return tomorrow.astimezone(dt.UTC)
    return None


def snooze(crm: Any, notification: dict[str, Any], user: dict[str, Any], choice: str,
           now: dt.datetime | None = None) -> dt.datetime | None:
    """Bring a reminder notification back later for this user; returns when (None: bad choice)."""
    now = as_utc(now) or jobs.utcnow()
    at = snooze_until(choice, now, user_zone(crm, user))
    data = notification.get("data") or {}
    if at is None or data.get("entity") not in load(crm).entities:
        return None
    key = f"{prefix(data['entity'], data['id'])}snooze:u{user['id']}:{_iso(at)}"
    with write_connection(crm.engine) as conn, conn.begin():
        jobs.enqueue(crm, FIRE_JOB, {"entity": data["entity"], "id": data["id"], "trigger": "snooze",
                                     "user": user["id"], "of": data.get("trigger", "at")},
                     run_at=at, key=key, conn=conn)
        notifications.mark_read(crm, user["id"], [notification["id"]], now=now, conn=conn)
    return at

