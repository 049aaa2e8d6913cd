"""Reminders: due and reminder times on tasks and planned activities become notifications, once.

Enable it in crmkit.yaml with ``plugins: [reminders]``. By default ``activity`` records whose
status is ``planned`` (tasks and scheduled visits, calls, meetings) remind their assignee and
participants (or, with neither, the owner) at ``reminder_at``, and the team manager when the
activity is still open a day after ``due_at``. Configure other entities, offsets before the due
time and the escalation delay in the ``reminders:`` section::

    reminders:
      channels: [in_app, email]
      entities:
        activity: {offsets: [15, 60], escalate_after_minutes: 120}
        deal: {due_field: null, reminder_field: follow_up_at, recipients: [], fallback: owner, when: null}

How it stays exactly-once (see :mod:`plugins_contrib.reminders.schedule`): every reminder is a
job whose idempotency key contains the record, the trigger and the due time; saving a record
cancels the jobs it no longer wants and enqueues the new ones in the same transaction; the job
notifies each recipient with a per-recipient key in the job's own transaction. Notifications carry
snooze buttons (+10 min, +1 h, tomorrow 9:00 in the user's time zone).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import sqlalchemy as sa
from starlette.responses import Response
from starlette.routing import Route

from crmkit.cli import project_option
from crmkit.core import notifications
from crmkit.core.errors import BadRequest, NotFound
from crmkit.hookspecs import hookimpl
from plugins_contrib.reminders import hookspecs as reminder_hookspecs
from plugins_contrib.reminders import messages, schedule
from plugins_contrib.reminders.settings import CONFIG_SCHEMA, load, problems

__version__ = "0.1.0"

UI_STRINGS: dict[str, tuple[str, str]] = {
    "reminders_snoozed": ("Snoozed until {when}.", "{when} に再通知します。"),
    "reminders_bad_snooze": ("Choose 10m, 1h or tomorrow.", "10m・1h・tomorrow のいずれかを選んでください。"),
    "reminders_panel": ("Reminders", "リマインダー"),
    "reminders_none": ("No reminders scheduled.", "予定されているリマインダーはありません。"),
    "reminders_trigger_at": ("Reminder", "リマインダー"),
    "reminders_trigger_escalate": ("Overdue escalation", "期限超過エスカレーション"),
    "reminders_trigger_before": ("{n} min before due", "期限の{n}分前"),
    "reminders_trigger_snooze": ("Snoozed", "スヌーズ"),
}


@hookimpl
def register_hookspecs(pm: Any) -> None:
    """Publish ``format_reminder``."""
    pm.add_hookspecs(reminder_hookspecs)


@hookimpl
def register_config_schemas(crm: Any) -> dict[str, Any]:
    """The ``reminders:`` section of crmkit.yaml."""
    return {"reminders": CONFIG_SCHEMA}


@hookimpl
def schema_loaded(crm: Any, catalog: Any) -> list[str]:
    """Refuse a configuration naming unknown entities or fields of the wrong type."""
    return problems(crm, catalog)


@hookimpl
def register_ui_strings(crm: Any) -> dict[str, tuple[str, str]]:
    """The plugin's words (en, ja)."""
    return UI_STRINGS


@hookimpl
def register_job_handlers(crm: Any) -> dict[str, Any]:
    """``reminders.fire``: notify a record's recipients (in the job's transaction)."""
    return {schedule.FIRE_JOB: schedule.fire}


@hookimpl
def after_save(crm: Any, entity: Any, record: dict[str, Any], old: dict[str, Any] | None, conn: Any,
               actor: Any) -> None:
    """Reschedule the record's reminders in the save's transaction (cancel stale, enqueue new)."""
    rule = load(crm).entities.get(entity.name)
    if rule is not None:
        schedule.reschedule(crm, rule, record, conn)


@hookimpl
def after_delete(crm: Any, entity: Any, record: dict[str, Any], conn: Any, actor: Any) -> None:
    """A deleted record's reminders are called off."""
    if entity.name in load(crm).entities:
        schedule.cancel_all(crm, entity.name, record["id"], conn)


@hookimpl
def register_routes(crm: Any) -> list[Any]:
    """``POST /admin/reminders/snooze/{notification_id}?for=10m|1h|tomorrow``."""
    from crmkit.web.site import admin_page

    return [Route("/admin/reminders/snooze/{id:int}", admin_page(snooze_page), methods=["POST"])]


@hookimpl
def record_panels(crm: Any, entity: Any, record: dict[str, Any], actor: Any,
                  request: Any) -> list[dict[str, Any]] | None:
    """The record's upcoming reminders on its page."""
    if entity.name not in load(crm).entities:
        return None
    from markupsafe import Markup, escape

    from crmkit.core import jobs
    from crmkit.web.i18n import plugin_strings, t

    ctx = getattr(request.state, "crmkit_ctx", None)
    lang = getattr(ctx, "lang", "en")
    tz = getattr(ctx, "tz", None)
    strings = plugin_strings(crm)
    tbl = jobs.table(crm)
    prefix = schedule.prefix(entity.name, record["id"]).replace("_", "\\_").replace("%", "\\%")
    with crm.engine.connect() as conn:
        rows = conn.execute(
            sa.select(tbl.c.payload, tbl.c.run_at).where(
                tbl.c.name == schedule.FIRE_JOB, tbl.c.status == "queued", tbl.c.key.like(prefix + "%", escape="\\")
            ).order_by(tbl.c.run_at).limit(20)
        ).all()
    if not rows:
        html = Markup('<p class="empty">{}</p>').format(t("reminders_none", lang, extra=strings))
    else:
        items = []
        for payload, run_at in rows:
            trig = payload.get("trigger", "")
            if trig.startswith("before"):
                label = t("reminders_trigger_before", lang, extra=strings, n=trig[len("before"):])
            else:
                label = t(f"reminders_trigger_{trig}", lang, extra=strings)
            when = messages.format_when(run_at, lang, tz) if tz else str(run_at)
            items.append(Markup("<li>{}: {}</li>").format(escape(label), escape(when)))
        html = Markup("<ul class='plain'>") + Markup("").join(items) + Markup("</ul>")
    return [{"title": t("reminders_panel", lang, extra=strings), "html": html}]


def snooze_page(ctx: Any) -> Response:
    """Snooze one of the signed-in user's reminder notifications."""
    note = notifications.get(ctx.crm, ctx.params["id"], user_id=ctx.actor.id)
    if note is None or note.get("kind") != schedule.KIND:
        raise NotFound("no such reminder")
    users = ctx.crm.table("user")
    with ctx.crm.engine.connect() as conn:
        user = conn.execute(sa.select(users).where(users.c.id == ctx.actor.id)).mappings().first()
    choice = ctx.query.get("for") or (ctx.form.get("for") if ctx.form else None) or ""
    at = schedule.snooze(ctx.crm, note, dict(user), choice)
    if at is None:
        raise BadRequest(ctx._("reminders_bad_snooze"))
    when = messages.format_when(at, ctx.lang, schedule.user_zone(ctx.crm, dict(user)))
    return ctx.redirect("/admin/notifications", ctx._("reminders_snoozed", when=when))


# -------------------------------------------------------------------------------------------------
# Command line
# -------------------------------------------------------------------------------------------------


@hookimpl
def register_commands(cli: Any) -> None:
    """``crmkit reminders schedule``."""
    cli.add_command(reminders_group)


@click.group("reminders")
def reminders_group() -> None:
    """Reminders on tasks and planned activities."""


@reminders_group.command("schedule")
@project_option
def schedule_cmd(project: Path) -> None:
    """Schedule reminders for existing records (after enabling the plugin or changing its settings)."""
    from crmkit.cli import open_crm
    from crmkit.core.db import write_connection

    crm = open_crm(project)
    try:
        total = 0
        for name, rule in load(crm).entities.items():
            table = crm.table(name)
            last = 0
            while True:
                with write_connection(crm.engine) as conn, conn.begin():
                    rows = conn.execute(sa.select(table).where(table.c.id > last).order_by(table.c.id).limit(500))
                    batch = [dict(r) for r in rows.mappings()]
                    for record in batch:
                        total += len(schedule.reschedule(crm, rule, record, conn))
                if not batch:
                    break
                last = batch[-1]["id"]
        click.echo(f"{total} upcoming reminder(s) scheduled.")
    finally:
        crm.close()
