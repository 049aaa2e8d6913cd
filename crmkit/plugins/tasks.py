"""Built-in plugin: recurring tasks (RFC 5545 RRULE through python-dateutil).

An activity with ``recurrence: FREQ=WEEKLY;BYDAY=MO`` creates its next occurrence when it is
completed — by the Complete button, the agenda, the API or a plain edit — in the same
transaction. The next due date is the first occurrence after the later of the current due date
and now (a task completed late never spawns one that is already overdue), computed in the
assignee's time zone so "every Monday 9:00" stays 9:00 local. The reminder keeps its distance to
the due date; ``COUNT`` counts down across occurrences and ``UNTIL`` ends the series.

An invalid rule, a rule without a due date, or a frequency below daily is a field error at save time.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from dateutil.rrule import rrule, rrulestr

from crmkit.hookspecs import hookimpl
from crmkit.plugins import per_record
from crmkit.plugins.activities import ACTIVITY, PLANNED, became_done

if TYPE_CHECKING:
    from crmkit.app import CRM

ALLOWED_FREQ = ("DAILY", "WEEKLY", "MONTHLY", "YEARLY")
_PART_RE = re.compile(r"^[A-Z]+=[A-Z0-9,+\-:]+$")
_COUNT_RE = re.compile(r"(?<![A-Z])COUNT=\d+")
# Fields a next occurrence copies from the completed one (the rest starts fresh).
COPIED = ("subject", "type", "priority", "duration_minutes", "location", "purpose", "description", "assignee",
          "reviewer", "participants", "lead", "account", "contact", "deal", "owner", "team")


class RecurrenceError(ValueError):
    """An RRULE crmkit cannot use; the message is shown next to the field."""


def normalize_rule(text: str | None) -> str | None:
    """``"rrule: freq=weekly; byday=mo "`` -> ``"FREQ=WEEKLY;BYDAY=MO"``; blank -> None."""
    if text is None or not str(text).strip():
        return None
    rule = str(text).strip()
    if rule.upper().startswith("RRULE:"):
        rule = rule[6:]
    return ";".join(p.strip().upper() for p in rule.split(";") if p.strip())


def parse_rule(text: str, dtstart: dt.datetime) -> rrule:
    """The dateutil rule of ``text`` starting at ``dtstart`` (local wall time, aware or naive).

    Raises :class:`RecurrenceError` with a readable message.
    """
    rule = normalize_rule(text) or ""
    if not rule:
        raise RecurrenceError("is empty")
    parts: dict[str, str] = {}
    for part in rule.split(";"):
        if not _PART_RE.match(part):
            raise RecurrenceError(f"{part!r} is not NAME=VALUE")
        key, value = part.split("=", 1)
        if key in ("DTSTART", "RDATE", "EXDATE"):
            raise RecurrenceError(f"{key} is not allowed: the due date is the start of the series")
        parts[key] = value
    if parts.get("FREQ") not in ALLOWED_FREQ:
        raise RecurrenceError(f"FREQ must be one of {', '.join(ALLOWED_FREQ)}")
    if "COUNT" in parts and "UNTIL" in parts:
        raise RecurrenceError("use COUNT or UNTIL, not both")
    start = dtstart if _utc_until(rule) else dtstart.replace(tzinfo=None)
    try:
        parsed = rrulestr(rule, dtstart=start)
    except (ValueError, TypeError, KeyError) as exc:
        raise RecurrenceError(str(exc)) from None
    if not isinstance(parsed, rrule):  # pragma: no cover - rrulestr returns an rruleset only for RDATE etc.
        raise RecurrenceError("only a single RRULE is supported")
    return parsed


def _utc_until(rule: str) -> bool:
    """dateutil wants UNTIL in UTC (``…Z``) with an aware start, and in local time with a naive one."""
    return bool(re.search(r"(?<![A-Z])UNTIL=[0-9T]+Z", rule))


def next_occurrence(text: str, due: dt.datetime, now: dt.datetime) -> tuple[dt.datetime, str] | None:
    """The next due date (aware, ``due``'s zone) and the rule the next occurrence carries, or None.

    ``due`` and ``now`` are aware datetimes in the assignee's zone. The next date is the first
    occurrence after both; with ``COUNT`` the returned rule counts the remaining occurrences.
    """
    rule_text = normalize_rule(text) or ""
    rule = parse_rule(rule_text, due)
    zone = due.tzinfo
    threshold = max(due, now)

    def aware(value: dt.datetime) -> dt.datetime:
        return value if value.tzinfo is not None else value.replace(tzinfo=zone)

    count = re.search(r"(?<![A-Z])COUNT=(\d+)", rule_text)
    if count is None:
        start = threshold if _utc_until(rule_text) else threshold.replace(tzinfo=None)
        nxt = rule.after(start)
        return (aware(nxt), rule_text) if nxt is not None else None
    used = 1  # the occurrence being completed is one (RFC 5545: DTSTART is always the first)
    for occurrence in rule:
        occurrence = aware(occurrence)
        if occurrence <= due:
            continue  # the current one, already counted
        if occurrence > threshold:
            remaining = int(count.group(1)) - used
            if remaining < 1:
                return None
            return occurrence, _COUNT_RE.sub(f"COUNT={remaining}", rule_text)
        used += 1  # skipped: completed late, these dates have passed
    return None


def _zone(crm: CRM, conn: sa.Connection, user_id: int | None) -> dt.tzinfo:
    from crmkit.web.templating import zone

    name = None
    if user_id is not None and "time_zone" in crm.table("user").c:
        table = crm.table("user")
        name = conn.execute(sa.select(table.c.time_zone).where(table.c.id == user_id)).scalar()
    return zone(name, crm.config.time_zone)


# ---------------------------------------------------------------------------------------------
# Hooks
# ---------------------------------------------------------------------------------------------
@hookimpl
def validate_record(crm, entity, record, old, conn, actor):
    """An RRULE must parse, allow no faster than daily, and have a due date to start from."""
    if entity.name != ACTIVITY or "recurrence" not in entity.fields:
        return None
    rule = normalize_rule(record.get("recurrence"))
    if rule is None:
        return None
    changed = old is None or normalize_rule(old.get("recurrence")) != rule or old.get("due_at") != record.get("due_at")
    if not changed:
        return None
    due = record.get("due_at")
    if due is None:
        return {"recurrence": "a recurring task needs a due date to start from"}
    if due.tzinfo is None:
        due = due.replace(tzinfo=dt.UTC)
    try:
        parse_rule(rule, due.astimezone(_zone(crm, conn, record.get("assignee") or record.get("owner"))))
    except RecurrenceError as exc:
        return {"recurrence": f"not a valid RRULE: {exc} (e.g. FREQ=WEEKLY;BYDAY=MO)"}
    return None


@hookimpl
def before_save(crm, entity, record, old, conn, actor):
    """Store the rule in its normal form (``FREQ=WEEKLY;BYDAY=MO``)."""
    if entity.name == ACTIVITY and "recurrence" in record:
        record["recurrence"] = normalize_rule(record.get("recurrence"))


@hookimpl
def after_save(crm, entity, record, old, conn, actor):
    """Completing a recurring activity creates its next occurrence in the same transaction."""
    if entity.name != ACTIVITY or "previous_occurrence" not in entity.fields:
        return
    rule = normalize_rule(record.get("recurrence"))
    if not rule or not record.get("due_at") or not became_done(record, old):
        return
    table = crm.table(ACTIVITY)
    exists = conn.execute(sa.select(table.c.id).where(table.c.previous_occurrence == record["id"]).limit(1)).first()
    if exists:
        return  # reopened and completed again: the series already moved on
    zone = _zone(crm, conn, record.get("assignee") or record.get("owner"))
    due = record["due_at"].astimezone(zone)
    found = next_occurrence(rule, due, dt.datetime.now(zone))
    if found is None:
        return  # COUNT used up or UNTIL passed: the series ends here
    nxt, next_rule = found
    values = next_values(entity, record, nxt.astimezone(dt.UTC), next_rule)
    # A follow-up the triggering write implies: its readonly link fields need system rights; it is
    # created under the actor's name so the audit and created_by say who caused it.
    crm.records.tx_for(conn).create(ACTIVITY, values, actor=dataclasses.replace(actor, system=True))


def next_values(entity: Any, record: Mapping[str, Any], due: dt.datetime, rule: str) -> dict[str, Any]:
    """The next occurrence of ``record``: same task, new due date, reminder shifted alike."""
    values: dict[str, Any] = {k: record.get(k) for k in COPIED if k in entity.fields and record.get(k) is not None}
    if "participants" in values:
        values["participants"] = [{"id": p["id"]} for p in values["participants"]]
    values.update(status=PLANNED, due_at=due, recurrence=rule, previous_occurrence=record["id"])
    reminder = record.get("reminder_at")
    if reminder is not None and "reminder_at" in entity.fields:
        values["reminder_at"] = due - (record["due_at"] - reminder)
    return values


# Bulk creates (imports) run the per-record hooks only for the entities they concern.
before_create_many = hookimpl(per_record(before_save, ACTIVITY), specname="before_create_many")
after_create_many = hookimpl(per_record(after_save, ACTIVITY), specname="after_create_many")
