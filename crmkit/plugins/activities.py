"""Built-in plugin: visits and activities — schedule, log, complete, report a result, get it confirmed.

- A visit is an ``activity`` of type ``visit`` with status ``planned`` (customer, date and time,
  purpose, participants); calls, emails and meetings are logged as activities too. Record pages of
  leads, contacts, accounts and deals get "Schedule visit" / "Log call" / "Log email" / "Log meeting"
  buttons opening the activity form pre-filled.
- **Complete** (tasks) and **Report result** (visits, meetings, calls) set status ``done``,
  ``completed_at`` and the result/outcome: ``POST /api/v1/activity/{id}/complete`` and
  ``/report_result``, and admin buttons. Completing a done activity is refused with a message.
- When an activity becomes done and has a **reviewer**, a confirmation task assigned to the
  reviewer is created in the same transaction (whatever the path: action, form, API, import).
- The assignee owns the activity (as a task's "assigned to" is its owner in most CRMs), so role
  scopes let the assignee see and complete what was assigned to them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import sqlalchemy as sa
from starlette.responses import Response
from starlette.routing import Route

from crmkit.core.actors import Actor
from crmkit.core.errors import CRMError, ValidationError
from crmkit.hookspecs import hookimpl
from crmkit.plugins import per_record

if TYPE_CHECKING:
    from crmkit.app import CRM
    from crmkit.core.records import Tx
    from crmkit.web.site import PageContext

ACTIVITY = "activity"
DONE, PLANNED, CANCELLED = "done", "planned", "cancelled"
RESULT_TYPES = ("visit", "meeting", "call")  # activities whose completion is a reported result
LOG_TYPES = ("call", "email", "meeting")
LINKABLE = ("lead", "contact", "account", "deal")
_UNSET: Any = object()

CONFIRM_SUBJECT = {"en": "Confirm result: {subject}", "ja": "結果確認: {subject}"}


# ---------------------------------------------------------------------------------------------
# Services
# ---------------------------------------------------------------------------------------------
def complete_activity(
    crm: CRM,
    activity_id: int,
    actor: Actor,
    *,
    result: str | None = None,
    outcome: str | None = None,
    reviewer: Any = _UNSET,
    version: int | None = None,
    require_result: bool = False,
    source: str = "api",
) -> dict[str, Any]:
    """Mark an activity done (with its result); returns the activity and the records that follow.

    ``{"activity", "confirmation_task", "next_occurrence"}`` — the reviewer's confirmation task
    and a recurring task's next occurrence are created by the save hooks in the same transaction.
    Refuses a done or cancelled activity, and (``require_result``) an empty result.
    """
    store = crm.records
    with store.transaction(actor=actor, source=source) as tx:
        current = tx.get(ACTIVITY, activity_id)
        if current.get("status") == DONE:
            when = current.get("completed_at")
            day = f" on {when:%Y-%m-%d}" if isinstance(when, dt.datetime) else ""
            raise ValidationError([{"field": "status", "message": f"this activity is already done{day}"}])
        if current.get("status") == CANCELLED:
            raise ValidationError([{"field": "status", "message": "a cancelled activity cannot be completed"}])
        values: dict[str, Any] = {"status": DONE}
        text = (result or "").strip() if isinstance(result, str) else result
        if require_result and not text:
            raise ValidationError([{"field": "result", "message": "is required"}])
        if text:
            values["result"] = text
        if outcome not in (None, ""):
            values["outcome"] = outcome
        if reviewer is not _UNSET:
            values["reviewer"] = reviewer or None
        tx.update(ACTIVITY, activity_id, values, version=version)
        follow = follow_ups(tx, activity_id)
    return {
        "activity": _visible(crm, activity_id, actor),
        "confirmation_task": _visible(crm, follow["confirmation_task"], actor),
        "next_occurrence": _visible(crm, follow["next_occurrence"], actor),
    }


def follow_ups(tx: Tx, activity_id: int) -> dict[str, int | None]:
    """Ids of the confirmation task and the next occurrence created from an activity (or None)."""
    table = tx.store.tables[ACTIVITY]
    out: dict[str, int | None] = {"confirmation_task": None, "next_occurrence": None}
    for key, column in (("confirmation_task", "confirms"), ("next_occurrence", "previous_occurrence")):
        if column in table.c:
            out[key] = tx.conn.execute(
                sa.select(table.c.id).where(table.c[column] == activity_id).order_by(table.c.id.desc()).limit(1)
            ).scalar()
    return out


def _visible(crm: CRM, activity_id: int | None, actor: Actor) -> dict[str, Any] | None:
    if activity_id is None:
        return None
    try:
        return crm.records.get(ACTIVITY, activity_id, actor=actor)
    except CRMError:  # e.g. a confirmation task now owned by a reviewer in another team
        return None


def became_done(record: Mapping[str, Any], old: Mapping[str, Any] | None) -> bool:
    """True when this write turns the activity done (created done, or planned -> done)."""
    return record.get("status") == DONE and (old is None or old.get("status") != DONE)


def _user(conn: sa.Connection, crm: CRM, user_id: int | None) -> dict[str, Any] | None:
    if user_id is None:
        return None
    table = crm.table("user")
    row = conn.execute(sa.select(table).where(table.c.id == user_id)).mappings().first()
    return dict(row) if row else None


# ---------------------------------------------------------------------------------------------
# Record hooks
# ---------------------------------------------------------------------------------------------
@hookimpl
def before_save(crm, entity, record, old, conn, actor):
    """Keep ``completed_at`` in step with the status; the assignee owns the activity."""
    if entity.name != ACTIVITY:
        return
    fields = entity.fields
    if "completed_at" in fields and "status" in fields:
        if became_done(record, old) and not record.get("completed_at"):
            record["completed_at"] = dt.datetime.now(dt.UTC)
        elif record.get("status") != DONE and old is not None and old.get("status") == DONE:
            record["completed_at"] = None  # reopened
    if "due_at" in fields and old is None and record.get("status") == DONE and not record.get("due_at"):
        record["due_at"] = record.get("completed_at") or dt.datetime.now(dt.UTC)  # a logged call happened now
    assignee = record.get("assignee")
    if entity.ownable and assignee and (old is None or old.get("assignee") != assignee):
        if record.get("owner") != assignee:
            user = _user(conn, crm, assignee)
            if user is not None:
                record["owner"] = assignee
                record["team"] = user.get("primary_team")


@hookimpl
def after_save(crm, entity, record, old, conn, actor):
    """An activity with a reviewer that becomes done gets a confirmation task for the reviewer."""
    if entity.name != ACTIVITY or "reviewer" not in entity.fields or "confirms" not in entity.fields:
        return
    reviewer = record.get("reviewer")
    if not reviewer or not became_done(record, old) or reviewer == actor.id:
        return  # nobody to ask, or the reviewer reported it themselves
    table = crm.table(ACTIVITY)
    if conn.execute(sa.select(table.c.id).where(table.c.confirms == record["id"]).limit(1)).first():
        return  # reopened and completed again: the reviewer already has the task
    user = _user(conn, crm, reviewer) or {}
    lang = user.get("locale") if user.get("locale") in CONFIRM_SUBJECT else crm.config.locale
    subject = CONFIRM_SUBJECT.get(lang, CONFIRM_SUBJECT["en"]).format(subject=record.get("subject") or "")
    done_at = record.get("completed_at") or dt.datetime.now(dt.UTC)
    values: dict[str, Any] = {
        "subject": subject[:255],
        "type": "task",
        "status": PLANNED,
        "priority": "normal",
        "assignee": reviewer,
        "due_at": done_at + dt.timedelta(days=1),
        "confirms": record["id"],
        "description": "\n\n".join(str(x) for x in (record.get("result"), record.get("purpose")) if x) or None,
    }
    for name in LINKABLE:
        if name in entity.fields and record.get(name):
            values[name] = record[name]
    values = {k: v for k, v in values.items() if k in entity.fields}
    # A follow-up the triggering write implies: its readonly link fields need system rights; it is
    # created under the actor's name so the audit and created_by say who caused it.
    crm.records.tx_for(conn).create(ACTIVITY, values, actor=dataclasses.replace(actor, system=True))


# ---------------------------------------------------------------------------------------------
# API actions
# ---------------------------------------------------------------------------------------------
_COMPLETE_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "result": {"type": "string"},
        "outcome": {"type": "string"},
        "version": {"type": "integer", "description": "Refuse (409) if the activity changed since this version."},
    },
}
_REPORT_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["result"],
    "properties": {
        **_COMPLETE_SCHEMA["properties"],
        "reviewer": {"type": ["integer", "null"], "description": "User who confirms the result (a task is created)."},
    },
}


def _check_payload(payload: Mapping[str, Any], schema: Mapping[str, Any]) -> None:
    errors = [{"field": k, "message": "unknown option"} for k in sorted(set(payload) - set(schema["properties"]))]
    for key in ("result", "outcome"):
        if payload.get(key) is not None and not isinstance(payload[key], str):
            errors.append({"field": key, "message": "must be text"})
    for key in ("version", "reviewer"):
        value = payload.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            errors.append({"field": key, "message": "must be an integer"})
    if errors:
        raise ValidationError(errors)


@hookimpl
def register_record_actions(crm):
    """``POST /api/v1/activity/{id}/complete`` and ``/report_result``."""
    if ACTIVITY not in crm.catalog:
        return None

    def complete(crm, record, payload, actor):
        _check_payload(payload, _COMPLETE_SCHEMA)
        return complete_activity(crm, record["id"], actor, result=payload.get("result"),
                                 outcome=payload.get("outcome"), version=payload.get("version"))

    def report_result(crm, record, payload, actor):
        _check_payload(payload, _REPORT_SCHEMA)
        reviewer = payload["reviewer"] if "reviewer" in payload else _UNSET
        return complete_activity(crm, record["id"], actor, result=payload.get("result"),
                                 outcome=payload.get("outcome"), reviewer=reviewer,
                                 version=payload.get("version"), require_result=True)

    return [
        {"entity": ACTIVITY, "name": "complete", "handler": complete, "input_schema": _COMPLETE_SCHEMA,
         "description": "Mark the activity done (a recurring task gets its next occurrence)."},
        {"entity": ACTIVITY, "name": "report_result", "handler": report_result, "input_schema": _REPORT_SCHEMA,
         "description": "Report a visit's (meeting's, call's) result: done, with result and outcome; a reviewer "
         "gets a confirmation task."},
    ]


# ---------------------------------------------------------------------------------------------
# Admin: buttons and pages
# ---------------------------------------------------------------------------------------------
@hookimpl
def record_actions(crm, entity, record, actor, request):
    """Complete / Report result on planned activities; Schedule visit / Log … on customer records."""
    if actor is None or ACTIVITY not in crm.catalog:
        return None
    store = crm.records
    lang = getattr(request.state, "crmkit_lang", None) or "en"
    if entity.name == ACTIVITY:
        if record.get("status") != PLANNED or not store.can(actor, "update", ACTIVITY, record):
            return None
        back = urlencode({"next": f"/admin/activity/{record['id']}"})
        if record.get("type") in RESULT_TYPES:
            return [{"name": "report_result", "label": _t(crm, lang, "activities_report_result"),
                     "href": f"/admin/activity/{record['id']}/report?{back}"}]
        return [{"name": "complete", "label": _t(crm, lang, "activities_complete"), "method": "post",
                 "href": f"/admin/activity/{record['id']}/complete?{back}"}]
    link = link_field(crm, entity.name)
    if link is None or not store.can(actor, "create", ACTIVITY):
        return None
    prefill = activity_prefill(crm, entity.name, record)
    out = []
    for kind, key, status in (("visit", "activities_schedule_visit", PLANNED), ("call", "activities_log_call", DONE),
                              ("email", "activities_log_email", DONE), ("meeting", "activities_log_meeting", DONE)):
        query = urlencode({**prefill, "type": kind, "status": status})
        out.append({"name": f"activity_{kind}", "label": _t(crm, lang, key), "href": f"/admin/activity/new?{query}"})
    return out


def link_field(crm: CRM, entity: str) -> str | None:
    """The activity field that refers to ``entity`` (``contact`` for contacts), if any."""
    fields = crm.catalog[ACTIVITY].fields
    return entity if entity in LINKABLE and entity in fields and fields[entity].to == entity else None


def activity_prefill(crm: CRM, entity: str, record: Mapping[str, Any]) -> dict[str, str]:
    """Form pre-fills linking a new activity to ``record`` (and to its account, for contacts and deals)."""
    out = {entity: str(record["id"])}
    fields = crm.catalog[ACTIVITY].fields
    if entity in ("contact", "deal") and record.get("account") and "account" in fields:
        out["account"] = str(record["account"])
    if entity == "deal" and record.get("contact") and "contact" in fields:
        out["contact"] = str(record["contact"])
    return out


@hookimpl
def register_routes(crm):
    """``/admin/activity/{id}/report`` (form) and ``/admin/activity/{id}/complete`` (POST)."""
    from crmkit.web.site import admin_page

    return [
        Route("/admin/activity/{id:int}/report", admin_page(report_page), methods=["GET", "HEAD", "POST"]),
        Route("/admin/activity/{id:int}/complete", admin_page(complete_page), methods=["POST"]),
    ]


@hookimpl
def extra_css_urls(crm, template, request):
    """The workflow stylesheet on the report form."""
    from crmkit.web.site import admin_site

    return [admin_site(crm).static_url("workflows.css")] if template == "workflows/report.html" else None


def safe_next(ctx: PageContext, default: str) -> str:
    """The ``next`` URL of the request if it is a local admin path."""
    from crmkit.web.auth import safe_next as _safe

    value = (ctx.form.get("next") if ctx.form is not None else None) or ctx.query.get("next")
    return _safe(str(value) if value else None, default)


def complete_page(ctx: PageContext) -> Response:
    """POST /admin/activity/{id}/complete — from the agenda or the activity page."""
    activity_id = int(ctx.params["id"])
    back = safe_next(ctx, f"/admin/activity/{activity_id}")
    version = str(ctx.form.get("version") or "")
    try:
        out = complete_activity(ctx.crm, activity_id, ctx.actor, version=int(version) if version.isdigit() else None,
                                source="ui")
    except ValidationError as exc:
        return ctx.redirect(back, "; ".join(e["message"] for e in exc.errors), "error")
    except CRMError as exc:
        if exc.status == 409:
            return ctx.redirect(back, str(exc), "error")
        raise
    return ctx.redirect(back, done_message(ctx, out))


def done_message(ctx: PageContext, out: Mapping[str, Any]) -> str:
    """"Done: X" plus what followed (the next occurrence's date, the reviewer's task)."""
    from crmkit.web.templating import format_datetime

    activity = out.get("activity") or {}
    parts = [ctx._("activities_done", subject=activity.get("subject") or "")]
    nxt = out.get("next_occurrence")
    if nxt and nxt.get("due_at"):
        parts.append(ctx._("activities_next_on", when=format_datetime(nxt["due_at"], ctx.tz, ctx.lang)))
    if out.get("confirmation_task") or (activity.get("reviewer") and activity.get("reviewer") != ctx.actor.id):
        parts.append(ctx._("activities_sent_to_reviewer"))
    return " ".join(parts)


def report_page(ctx: PageContext) -> Response:
    """GET: the "report result" form; POST: complete the activity with its result."""
    activity_id = int(ctx.params["id"])
    activity = ctx.store.get(ACTIVITY, activity_id, actor=ctx.actor)
    back = safe_next(ctx, f"/admin/activity/{activity_id}")
    ent = ctx.crm.catalog[ACTIVITY]
    if activity.get("status") != PLANNED:
        return ctx.redirect(back, ctx._("activities_not_planned"), "error")
    ctx.require("update", ACTIVITY, activity)
    form = {"result": "", "outcome": "", "reviewer": str(activity.get("reviewer") or ""),
            "version": str(activity["version"])}
    errors: dict[str, list[str]] = {}
    status = 200
    if ctx.request.method == "POST":
        form.update({k: str(ctx.form.get(k) or "").strip() for k in form})
        reviewer: Any = form["reviewer"]
        if reviewer and not reviewer.isdigit():
            errors["reviewer"] = [ctx._("activities_bad_reviewer")]
        else:
            try:
                out = complete_activity(
                    ctx.crm, activity_id, ctx.actor, result=form["result"], outcome=form["outcome"] or None,
                    reviewer=int(reviewer) if reviewer else None, require_result=True, source="ui",
                    version=int(form["version"]) if form["version"].isdigit() else None,
                )
            except ValidationError as exc:
                errors = exc.by_field()
            else:
                return ctx.redirect(back, done_message(ctx, out))
        status = 422
    outcome = ent.fields.get("outcome")
    from crmkit.web.display import Display

    display = Display(ctx, ent)
    refs = [ent.fields[n] for n in ("account", "contact", "deal", "lead") if n in ent.fields]
    display.prefetch([activity], refs)
    return ctx.render(
        "workflows/report.html",
        status=status,
        title=ctx._("activities_report_title", subject=activity.get("subject") or ""),
        activity=activity,
        when=display.text(ent.fields["due_at"], activity.get("due_at")) if "due_at" in ent.fields else "",
        related=[display.html(f, activity.get(f.name), activity) for f in refs if activity.get(f.name)],
        outcomes=[{"value": o.value, "label": o.text(ctx.lang), "color": o.color} for o in outcome.options]
        if outcome else [],
        reviewers=_user_choices(ctx),
        form=form,
        errors=errors,
        next=back,
    )


def _user_choices(ctx: PageContext) -> list[dict[str, str]]:
    ent = ctx.crm.catalog["user"]
    filt = {"active": True} if "active" in ent.fields else None
    page = ctx.store.list("user", actor=ctx.actor, filter=filt, sort=ent.title_field, limit=500, with_count=False,
                          columns=[ent.title_field])
    return [{"value": str(r["id"]), "label": str(r.get(ent.title_field) or f"#{r['id']}")} for r in page.items]


@hookimpl
def register_ui_strings(crm):
    """English and Japanese words of the activity screens."""
    return UI_STRINGS


UI_STRINGS = {
    "activities_complete": ("Complete", "完了にする"),
    "activities_report_result": ("Report result", "結果を報告"),
    "activities_report_title": ("Report result: {subject}", "結果報告: {subject}"),
    "activities_result": ("Result", "結果"),
    "activities_result_help": ("What happened, what was agreed, next steps.", "面談内容・合意事項・次のアクションなど"),
    "activities_outcome": ("Outcome", "手応え"),
    "activities_reviewer": ("Reviewer", "確認者"),
    "activities_reviewer_help": ("Gets a task to confirm this result.", "この結果を確認するタスクが作成されます。"),
    "activities_no_reviewer": ("No reviewer", "確認者なし"),
    "activities_bad_reviewer": ("Choose a user from the list.", "一覧からユーザーを選んでください。"),
    "activities_submit_report": ("Report and complete", "報告して完了"),
    "activities_done": ("Done: {subject}.", "完了しました: {subject}"),
    "activities_next_on": ("Next occurrence: {when}.", "次回: {when}"),
    "activities_sent_to_reviewer": ("The reviewer got a confirmation task.", "確認者に確認タスクを送りました。"),
    "activities_not_planned": ("This activity is not planned any more.", "この活動は予定の状態ではありません。"),
    "activities_schedule_visit": ("Schedule visit", "訪問を予定"),
    "activities_log_call": ("Log call", "電話を記録"),
    "activities_log_email": ("Log email", "メールを記録"),
    "activities_log_meeting": ("Log meeting", "打ち合わせを記録"),
    "activities_when": ("When", "日時"),
    "activities_related": ("Related to", "関連先"),
}


def _t(crm: CRM, lang: str, key: str, **kwargs: Any) -> str:
    from crmkit.web.i18n import plugin_strings, t

    return t(key, lang, extra=plugin_strings(crm), **kwargs)


# Bulk creates (imports) run the per-record hooks only for the entities they concern.
before_create_many = hookimpl(per_record(before_save, ACTIVITY), specname="before_create_many")
after_create_many = hookimpl(per_record(after_save, ACTIVITY), specname="after_create_many")
