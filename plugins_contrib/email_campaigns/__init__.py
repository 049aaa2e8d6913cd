"""Email campaigns: bulk email to a segment, tracked, throttled, honouring every opt-out.

Enable it in crmkit.yaml (``plugins: [email_campaigns]``). It ships two entities
(``email_segment``, ``email_campaign``), its own tables (per-recipient sends, tracked links,
events, the global opt-out list, invalid addresses), the ``email_campaigns.send`` job that sends a
campaign in batches through the mail core's outbox, public tracking and unsubscribe endpoints
under ``/t/``, a results page per campaign, an admin page for the suppression lists, the
``crmkit campaigns bounces`` command and ``POST /api/v1/email_campaigns/bounces``.

It publishes two hooks of its own (``campaign_merge_fields``, ``campaign_should_send``) and
implements ``lead_converted`` to move a lead's campaign history to the contact it became.
See docs/plugins/email_campaigns.md.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import sqlalchemy as sa
from jinja2 import FileSystemLoader

from crmkit.cli import project_option
from crmkit.hookspecs import hookimpl
from plugins_contrib.email_campaigns import hookspecs as _hookspecs
from plugins_contrib.email_campaigns import sending
from plugins_contrib.email_campaigns import tables as T

HERE = Path(__file__).parent
CAMPAIGN, SEGMENT = "email_campaign", "email_segment"

CONFIG_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "unsubscribe_mailto": {"type": "string", "format": "email",
                               "description": "Address for mailto: unsubscribes in List-Unsubscribe."},
        "machine_seconds": {"type": "number", "minimum": 0,
                            "description": "Opens/clicks this soon after sending are flagged as machines'."},
        "soft_bounce_limit": {"type": "integer", "minimum": 1,
                              "description": "Soft bounces after which an address counts as invalid."},
        "tick_seconds": {"type": "integer", "minimum": 1,
                         "description": "How often the worker looks for due campaigns (default 60)."},
    },
}


# ---------------------------------------------------------------------------------------------
# Setup and schema
# ---------------------------------------------------------------------------------------------
@hookimpl
def register_hookspecs(pm):
    """``campaign_merge_fields`` and ``campaign_should_send``."""
    pm.add_hookspecs(_hookspecs)


@hookimpl
def register_config_schemas(crm):
    """The ``email_campaigns:`` section of crmkit.yaml."""
    return {"email_campaigns": CONFIG_SCHEMA}


@hookimpl
def schema_paths(crm):
    """email_segment.yaml and email_campaign.yaml."""
    return [str(HERE / "schemas")]


@hookimpl
def register_tables(crm, metadata):
    """Sends, links, events, the opt-out list and the invalid addresses."""
    return T.define_tables(metadata)


@hookimpl
def prepare_jinja2_environment(crm, env):
    """The plugin's templates (``email_campaigns/…``)."""
    env.loader.loaders.append(FileSystemLoader(str(HERE / "templates")))


@hookimpl
def register_ui_strings(crm):
    """The plugin's words in English and Japanese."""
    from plugins_contrib.email_campaigns.strings import STRINGS

    return STRINGS


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------
@hookimpl
def validate_record(crm, entity, record, old, conn, actor):
    """Segment conditions compile for their audience; campaign templates use known merge fields."""
    from plugins_contrib.email_campaigns import campaigns

    if entity.name == SEGMENT:
        return campaigns.validate_segment(crm, record)
    if entity.name == CAMPAIGN:
        return campaigns.validate_campaign(crm, record, old, conn, actor)
    return None


@hookimpl
def permission_allowed(crm, actor, action, entity, record):
    """A campaign being sent, or one that sent mail, cannot be deleted: its results and its
    recipients' unsubscribe links depend on its history (cancel it instead)."""
    if entity != CAMPAIGN or action != "delete" or record is None or actor is None or actor.system:
        return None
    if record.get("status") in sending.LIVE:
        return False
    send = crm.system_tables[T.SEND]
    with crm.engine.connect() as conn:
        sent = conn.execute(
            sa.select(send.c.id).where(send.c.campaign_id == record["id"], send.c.status == T.QUEUED).limit(1)
        ).first()
    return False if sent is not None else None


@hookimpl
def after_delete(crm, entity, record, conn, actor):
    """A deleted (never sent) campaign takes its recipient list and links with it."""
    if entity.name != CAMPAIGN:
        return
    for name in (T.EVENT, T.LINK, T.SEND):
        table = crm.system_tables[name]
        conn.execute(sa.delete(table).where(table.c.campaign_id == record["id"]))


@hookimpl(optionalhook=True)
def lead_converted(crm, lead, account, contact, deal, tx, actor):
    """The lead's campaign history (sends, and so opens and clicks) now belongs to the contact."""
    if contact is None:
        return
    send = crm.system_tables[T.SEND]
    tx.conn.execute(
        sa.update(send).where(send.c.entity == "lead", send.c.record_id == lead["id"])
        .values(entity="contact", record_id=contact["id"])
    )


# ---------------------------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------------------------
@hookimpl
def register_job_handlers(crm):
    """The send step and the periodic tick."""
    return {sending.JOB: sending.send_step, sending.TICK: sending.tick}


@hookimpl
def register_periodic_jobs(crm):
    """Look for due campaigns every minute (``tick_seconds``)."""
    every = int(crm.config.section("email_campaigns").get("tick_seconds", 60))
    return [{"name": sending.TICK, "every": every, "payload": {}}]


# ---------------------------------------------------------------------------------------------
# Web
# ---------------------------------------------------------------------------------------------
@hookimpl
def register_routes(crm):
    """Tracking, unsubscribe, results, suppression lists, bounce API."""
    from plugins_contrib.email_campaigns import web

    return web.routes()


@hookimpl
def menu_links(crm, actor, request):
    """The suppression lists, for admins, after the campaigns."""
    if actor is None or not actor.is_admin:
        return None
    from crmkit.web.i18n import Translator, plugin_strings

    lang = getattr(request.state, "crmkit_lang", None) or actor.locale
    _ = Translator(lang, plugin_strings(crm))
    return [{"href": "/admin/email-suppression", "label": _("email_campaigns_suppression"), "icon": "mail",
             "after": CAMPAIGN}]


@hookimpl
def record_actions(crm, entity, record, actor, request):
    """Schedule / pause / resume / cancel buttons, as the campaign's status allows."""
    from plugins_contrib.email_campaigns import campaigns

    if entity.name != CAMPAIGN or not crm.records.can(actor, "update", CAMPAIGN, record):
        return None
    ctx = request.state.crmkit_ctx
    out = []
    for action, states in campaigns.ACTIONS.items():
        if record.get("status") in states:
            out.append({"name": action, "label": ctx._(f"email_campaigns_action_{action}"),
                        "action": f"/admin/email_campaign/{record['id']}/do/{action}", "method": "post"})
    out.append({"name": "results", "label": ctx._("email_campaigns_results"),
                "href": f"/admin/email_campaign/{record['id']}/results"})
    return out


@hookimpl
def record_panels(crm, entity, record, actor, request):
    """Results on a campaign's page; campaign history and opt-out status on a lead's or contact's."""
    from plugins_contrib.email_campaigns import results

    ctx = request.state.crmkit_ctx
    if entity.name == CAMPAIGN:
        return [{"title": ctx._("email_campaigns_results"), "template": "email_campaigns/panel_campaign.html",
                 "context": {"r": results.campaign_results(crm, record), "campaign_id": record["id"]}}]
    if entity.name in ("lead", "contact") and CAMPAIGN in crm.catalog and crm.records.can(actor, "read", CAMPAIGN):
        return [{"title": ctx._("email_campaigns_history"), "template": "email_campaigns/panel_history.html",
                 "context": {"sends": results.record_history(crm, entity.name, record["id"]),
                             "status": results.suppression_status(crm, record.get("email"))}}]
    return None


def _api_action(name: str):
    def handler(crm, record, actor):
        from plugins_contrib.email_campaigns import campaigns

        return {"email_campaign": campaigns.run_action(crm, record["id"], name, actor)}

    handler.__name__ = f"email_campaign_{name}"
    return handler


@hookimpl
def register_record_actions(crm):
    """``POST /api/v1/email_campaign/{id}/schedule|pause|resume|cancel``."""
    descriptions = {
        "schedule": "Schedule a draft campaign (it is sent at send_at, or now).",
        "pause": "Pause a scheduled or sending campaign.",
        "resume": "Resume a paused campaign.",
        "cancel": "Cancel the campaign; recipients not yet sent to are skipped.",
    }
    return [{"entity": CAMPAIGN, "name": name, "handler": _api_action(name), "description": text}
            for name, text in descriptions.items()]


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
@hookimpl
def register_commands(cli):
    """``crmkit campaigns …``."""
    cli.add_command(campaigns_group)


@click.group("campaigns")
def campaigns_group() -> None:
    """Email campaigns: bounces and the opt-out list."""


@campaigns_group.command("bounces")
@project_option
@click.argument("source", type=click.File("rb"))
def bounces_command(project: Path, source: Any) -> None:
    """Record bounces from SOURCE: a DSN message or an mbox of them (``-`` reads standard input)."""
    from crmkit.cli import open_crm
    from plugins_contrib.email_campaigns.web import process_bounces

    crm = open_crm(project)
    try:
        summary = process_bounces(crm, source.read())
    finally:
        crm.close()
    click.echo(f"hard bounces: {summary['hard']}, soft bounces: {summary['soft']}, "
               f"matched to campaign sends: {summary['matched']}, not a DSN: {summary['not_dsn']}")
    if summary["not_dsn"] and not (summary["hard"] or summary["soft"]):
        sys.exit(1)


@campaigns_group.command("optout")
@project_option
@click.argument("emails", nargs=-1, required=True)
def optout_command(project: Path, emails: tuple[str, ...]) -> None:
    """Add EMAILS to the global opt-out list."""
    from crmkit.cli import open_crm
    from plugins_contrib.email_campaigns import suppression

    crm = open_crm(project)
    bad = 0
    try:
        for address in emails:
            try:
                suppression.add_optout(crm, address)
                click.echo(f"opted out: {address}")
            except ValueError as exc:
                bad += 1
                click.echo(f"error: {exc}", err=True)
    finally:
        crm.close()
    if bad:
        sys.exit(1)

