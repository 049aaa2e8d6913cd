"""Campaign and segment rules: what may be saved, and the schedule / pause / resume / cancel actions.

Validation runs in ``validate_record`` (so the admin form, the API and imports refuse the same
things): segment conditions must compile for their audience, templates must compile and use only
known merge fields, a campaign that is sending cannot have its content changed. The status field is
read-only for users; only the actions below (and the send job) move it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa

from crmkit.core import conditions
from crmkit.core.actors import Actor
from crmkit.core.errors import PermissionDenied, ValidationError
from plugins_contrib.email_campaigns import audience, render, sending
from plugins_contrib.email_campaigns import tables as T

CAMPAIGN = "email_campaign"
SEGMENT = "email_segment"
TEMPLATE_FIELDS = tuple(f"{part}_{lang}" for lang in ("en", "ja") for part in ("subject", "html", "text"))
CONTENT_FIELDS = ("segment", "exclude_segments", "from_name", "from_email", "reply_to", "default_language",
                  *TEMPLATE_FIELDS)
# status -> actions allowed from it
ACTIONS = {
    "schedule": ("draft",),
    "pause": ("scheduled", "sending"),
    "resume": ("paused",),
    "cancel": ("draft", "scheduled", "sending", "paused"),
}


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------
def validate_segment(crm: Any, record: Mapping[str, Any]) -> list[dict[str, str]]:
    """Errors of an email_segment: its audience and its condition for that audience."""
    target = record.get("audience")
    if target not in audience.AUDIENCES or target not in crm.catalog:
        return [{"field": "audience", "message": "choose leads or contacts"}]
    if "email" not in crm.catalog[target].fields:
        return [{"field": "audience", "message": f"{target} has no email field"}]
    condition = record.get("condition")
    if condition is None:
        return []  # "is required" is reported by the core
    if not isinstance(condition, dict):
        return [{"field": "condition", "message": 'a condition is a JSON object, e.g. {"prefecture": "東京都"}'}]
    problems = conditions.check(condition, target, crm.catalog)
    return [{"field": "condition", "message": _where(path) + message} for path, message in problems[:5]]


def _where(path: tuple) -> str:
    return f"{'.'.join(map(str, path))}: " if path else ""


def validate_campaign(crm: Any, record: Mapping[str, Any], old: Mapping[str, Any] | None, conn: Any,
                      actor: Actor) -> list[dict[str, str]]:
    """Errors of an email_campaign about to be saved (see the module docstring)."""
    errors: list[dict[str, str]] = []
    if old is not None and not actor.system:
        status = old.get("status")
        changed = [f for f in CONTENT_FIELDS if _differs(record.get(f), old.get(f))]
        if status in ("sending", "scheduled") and changed:
            errors.append({"field": changed[0], "message": f"the campaign is {status}: pause it before changing it"})
        elif status in ("sent", "cancelled") and changed:
            errors.append({"field": changed[0], "message": f"the campaign is {status}; copy it to send again"})
    segment = _segment(crm, conn, record.get("segment"))
    target = segment["audience"] if segment else "lead"
    for item in record.get("exclude_segments") or []:
        other = _segment(crm, conn, item.get("id") if isinstance(item, Mapping) else item)
        if segment and other and other["audience"] != target:
            errors.append({"field": "exclude_segments",
                           "message": f"segment {other['name']!r} is for {other['audience']}s, not {target}s"})
    fields = sending.recipient_fields(crm, target) if target in crm.catalog else []
    extra = list(sending.merge_field_hooks(crm, target)) if target in crm.catalog else []
    for name in TEMPLATE_FIELDS:
        for problem in render.check_template(record.get(name) or "", fields, extra)[:3]:
            errors.append({"field": name, "message": problem})
    start, end = record.get("quiet_start"), record.get("quiet_end")
    if bool(start) != bool(end):
        errors.append({"field": "quiet_end" if start else "quiet_start",
                       "message": "give both ends of the quiet hours, or neither"})
    zone = record.get("time_zone")
    if zone:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            errors.append({"field": "time_zone", "message": f"unknown time zone {zone!r} (e.g. Asia/Tokyo)"})
    return errors


def _differs(a: Any, b: Any) -> bool:
    def norm(v: Any) -> Any:
        return sorted(i["id"] if isinstance(i, Mapping) else i for i in v) if isinstance(v, list) else v

    return norm(a or None) != norm(b or None)


def _segment(crm: Any, conn: Any, segment_id: Any) -> dict[str, Any] | None:
    if segment_id is None:
        return None
    table = crm.table(SEGMENT)
    row = conn.execute(sa.select(table).where(table.c.id == int(segment_id))).mappings().first()
    return dict(row) if row else None


def ready_errors(crm: Any, campaign: Mapping[str, Any]) -> list[dict[str, str]]:
    """What a campaign lacks before it can be scheduled: a subject and a body in its default language."""
    lang = campaign.get("default_language") or "en"
    errors = []
    if not campaign.get(f"subject_{lang}"):
        errors.append({"field": f"subject_{lang}", "message": "is required to schedule the campaign"})
    if not (campaign.get(f"html_{lang}") or campaign.get(f"text_{lang}")):
        errors.append({"field": f"html_{lang}", "message": "write an HTML or a text body to schedule the campaign"})
    return errors


# ---------------------------------------------------------------------------------------------
# Actions
# ---------------------------------------------------------------------------------------------
def _as_system(actor: Actor) -> Actor:
    # The status field is read-only for users; the action checked their permission already, and
    # the audit still names them.
    return dataclasses.replace(actor, system=True)


def run_action(crm: Any, campaign_id: int, action: str, actor: Actor, *, now: dt.datetime | None = None
               ) -> dict[str, Any]:
    """Move a campaign: ``schedule``, ``pause``, ``resume`` or ``cancel``; returns the campaign.

    Raises PermissionDenied when the actor may not update it, ValidationError when the action does
    not fit its status (or the campaign is not ready to be scheduled).
    """
    if action not in ACTIONS:
        raise ValidationError([{"field": "", "message": f"unknown action {action!r}"}])
    now = now or dt.datetime.now(dt.UTC)
    with crm.records.transaction(actor=actor, source="email_campaigns") as tx:
        campaign = tx.get(CAMPAIGN, campaign_id)
        if not crm.records.can(actor, "update", CAMPAIGN, campaign):
            raise PermissionDenied("you may not change this campaign")
        status = campaign["status"]
        if status not in ACTIONS[action]:
            raise ValidationError([{"field": "status", "message": f"a {status} campaign cannot be {_past(action)}"}])
        system = _as_system(actor)
        values: dict[str, Any]
        if action == "schedule":
            errors = ready_errors(crm, campaign)
            if errors:
                raise ValidationError(errors)
            values = {"status": "scheduled"}
        elif action == "pause":
            values = {"status": "paused"}
        elif action == "resume":
            values = {"status": "sending" if campaign.get("started_at") else "scheduled"}
        else:
            values = {"status": "cancelled", "finished_at": now}
            send = crm.system_tables[T.SEND]
            tx.conn.execute(
                sa.update(send).where(send.c.campaign_id == campaign_id, send.c.status == T.PENDING)
                .values(status=T.SKIPPED, skip_reason="campaign cancelled")
            )
        updated = tx.update(CAMPAIGN, campaign_id, values, actor=system)
        if values["status"] in sending.LIVE:
            at = sending.as_utc(updated.get("send_at"))
            sending.kick(crm, tx.conn, campaign_id, at if at and at > now else now)
    return updated


def _past(action: str) -> str:
    return {"schedule": "scheduled", "pause": "paused", "resume": "resumed", "cancel": "cancelled"}[action]
