"""Lead scoring: points from rules over a lead's fields, its activities and its email/web events.

Enable it in ``crmkit.yaml`` (``plugins: [lead_scoring]``). Rules live in
``rules/lead_scoring.yaml`` of the project (``lead_scoring: {rules: PATH}`` to move it; the
shipped ``default_rules.yaml`` is used when the project has none). See docs/plugins/lead_scoring.md.

What it adds, all through public hooks:

- lead fields ``scoring_score``, ``scoring_grade``, ``scoring_updated_at`` (``extend_entity``);
- tables ``scoring_ledger``, ``scoring_event``, ``scoring_threshold``, ``scoring_reminder``
  (``register_tables``);
- recomputation inside the transaction of every lead or activity save and delete
  (``after_save``/``after_delete``), and on ``email.opened``/``email.clicked``/``web.visit``
  events (``track_event``);
- ``POST /api/v1/lead/{id}/track_visit`` (``register_record_actions``);
- the score panel on the lead page (``record_panels``);
- ``crmkit scoring recompute|remind`` and the shared ``crmkit rules test|check|reload``;
- periodic jobs: KPI reminders (hourly) and, for rules that change with time, a daily recompute.

Why recompute inside the save's transaction rather than after the commit (``track_event``)? The
score then commits or rolls back with the data it is computed from, every reader sees a score
consistent with the activities it can see, and a crash between commit and recompute cannot
leave a stale score. On PostgreSQL the lead's row is locked first, so two activities saved at
the same moment for one lead are scored one after the other, the second seeing the first.
What must not happen inside a transaction that may still roll back (setting fields by
threshold, notifying people) runs after the commit, from an outbox (``scoring_threshold``).
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from crmkit.hookspecs import hookimpl
from plugins_contrib import rule_files
from plugins_contrib.lead_scoring import actions, engine
from plugins_contrib.lead_scoring.rules import ACTIVITY, KIND, LEAD, ScoringRules
from plugins_contrib.lead_scoring.tables import EVENT, LEDGER, REMINDER, THRESHOLD, define_tables

__version__ = "0.1.0"
log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
EMAIL_EVENTS = ("email.opened", "email.clicked")
WEB_VISIT = "web.visit"
STATIC_URL = "/admin/plugins/lead_scoring/static"


def rules_of(crm: Any) -> ScoringRules | None:
    """The scoring rules in force (reloaded when the file changes; None when none could load)."""
    return rule_files.active(crm, KIND)


def _now() -> dt.datetime:
    try:  # inside a job, the worker's clock (tests run the worker "in the future")
        from crmkit.core.jobs import current_job

        job = current_job()
        if job is not None and getattr(job, "now", None) is not None:
            return job.now
    except ImportError:  # pragma: no cover - the jobs core is optional
        pass
    return dt.datetime.now(dt.UTC)


def recompute_leads(crm: Any, conn: sa.Connection, lead_ids: Any, now: dt.datetime | None = None) -> None:
    """Recompute the given leads' ledgers and scores inside ``conn``'s transaction."""
    rules = rules_of(crm)
    ids = sorted({int(i) for i in lead_ids if i is not None})
    if rules is None or not ids:
        return
    engine.lock_leads(conn, crm, ids)
    engine.recompute(crm, conn, rules, engine.Scope(ids=ids), now or _now())


# ---------------------------------------------------------------------------------------------
# Setup and schema
# ---------------------------------------------------------------------------------------------
@hookimpl
def register_config_schemas(crm):
    """The ``lead_scoring:`` section of crmkit.yaml."""
    return {
        "lead_scoring": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "rules": {"type": "string", "description": "Rule file, relative to the project."},
                "remind_every": {"type": "integer", "minimum": 60},
                "recompute_every": {"type": "integer", "minimum": 3600},
            },
        }
    }


@hookimpl
def register_tables(crm, metadata):
    """Ledger, events, threshold outbox and KPI reminders."""
    return define_tables(metadata)


@hookimpl
def extend_entity(crm, name, definition):
    """Score, grade and time of computation on the lead (read-only: the engine writes them)."""
    if name != LEAD:
        return None
    return {
        "fields": {
            "scoring_score": {"type": "decimal", "scale": 2, "readonly": True, "index": True,
                              "label": {"en": "Score", "ja": "スコア"},
                              "help": {"en": "Computed by the lead scoring rules.",
                                       "ja": "リードスコアリングのルールで計算されます。"}},
            "scoring_grade": {"type": "string", "max_length": 20, "readonly": True,
                              "label": {"en": "Grade", "ja": "ランク"}},
            "scoring_updated_at": {"type": "datetime", "readonly": True,
                                   "label": {"en": "Score computed at", "ja": "スコア計算日時"}},
        }
    }


@hookimpl
def check_project(crm):
    """Problems of the scoring rule file, as ``file:line: path: message``."""
    return rule_files.check(crm, KIND)


@hookimpl
def prepare_jinja2_environment(crm, env):
    """Make ``lead_scoring/*.html`` findable by the admin's template loader."""
    from jinja2 import ChoiceLoader, FileSystemLoader

    env.loader = ChoiceLoader([env.loader, FileSystemLoader(str(HERE / "templates"))])


# ---------------------------------------------------------------------------------------------
# Recomputation
# ---------------------------------------------------------------------------------------------
def _activity_links(rules: ScoringRules) -> set[str]:
    return {g.link for g in rules.groups if g.source == "activity"} or {LEAD}


@hookimpl
def after_save(crm, entity, record, old, conn, actor):
    """Rescore the lead saved, or the lead(s) of the activity saved, in the same transaction."""
    if entity.name == LEAD:
        recompute_leads(crm, conn, [record["id"]])
    elif entity.name == ACTIVITY:
        rules = rules_of(crm)
        if rules is None:
            return
        ids = set()
        for link in _activity_links(rules):
            ids.add(record.get(link))
            if old is not None:
                ids.add(old.get(link))
        recompute_leads(crm, conn, ids)


@hookimpl
def after_create_many(crm, entity, records, conn, actor):
    """Imports: one set-based recompute per batch of leads (or of the leads of a batch of activities)."""
    if entity.name == LEAD:
        recompute_leads(crm, conn, [r["id"] for r in records])
    elif entity.name == ACTIVITY:
        rules = rules_of(crm)
        if rules is not None:
            links = _activity_links(rules)
            recompute_leads(crm, conn, {r.get(link) for r in records for link in links})


@hookimpl
def after_delete(crm, entity, record, conn, actor):
    """A deleted activity no longer scores; a deleted lead takes its plugin rows with it."""
    if entity.name == LEAD:
        for name in (LEDGER, EVENT, THRESHOLD, REMINDER):
            table = crm.system_tables[name]
            conn.execute(sa.delete(table).where(table.c.lead_id == record["id"]))
    elif entity.name == ACTIVITY:
        rules = rules_of(crm)
        if rules is not None:
            recompute_leads(crm, conn, {record.get(link) for link in _activity_links(rules)})


def _leads_of(crm: Any, conn: sa.Connection, entity: str | None, record_id: Any) -> list[int]:
    """The leads an email/web event is about: the lead itself, or the lead a contact came from."""
    if record_id is None:
        return []
    lead = crm.schema.tables[LEAD]
    if entity == LEAD:
        return [r[0] for r in conn.execute(sa.select(lead.c.id).where(lead.c.id == int(record_id)))]
    if entity == "contact" and "converted_contact" in lead.c:
        return [r[0] for r in conn.execute(sa.select(lead.c.id).where(lead.c.converted_contact == int(record_id)))]
    return []


def record_event(crm: Any, name: str, entity: str | None, record_id: Any, *, at: dt.datetime | None = None,
                 data: dict[str, Any] | None = None, conn: sa.Connection | None = None) -> list[int]:
    """Store an email/web event for the lead(s) it is about and rescore them; returns the lead ids.

    With ``conn`` it joins that transaction; otherwise it runs in one of its own.
    """
    at = at or _now()
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)

    def run(c: sa.Connection) -> list[int]:
        ids = _leads_of(crm, c, entity, record_id)
        if not ids:
            return []
        table = crm.system_tables[EVENT]
        c.execute(sa.insert(table), [
            {"lead_id": i, "name": name, "at": at, "source_entity": entity,
             "source_id": int(record_id), "data": data or {}} for i in ids
        ])
        recompute_leads(crm, c, ids)
        return ids

    if conn is not None:
        return run(conn)
    from crmkit.core.db import write_connection

    with write_connection(crm.engine) as c, c.begin():
        return run(c)


def _event_time(event: Any) -> dt.datetime | None:
    value = (event.data or {}).get("at")
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


@hookimpl
def track_event(crm, event):
    """Email opens/clicks and web visits score; after any lead/activity write, run pending actions."""
    rules = rules_of(crm)
    if rules is None:
        return
    leads: list[int] = []
    names = set(EMAIL_EVENTS) | {WEB_VISIT} | rules.events
    if event.name in names and (event.data or {}).get("lead_scoring_recorded"):
        leads = [event.record_id]  # recorded and scored by track_visit in its own transaction
    elif event.name in names:
        leads = record_event(crm, event.name, event.entity, event.record_id, at=_event_time(event),
                             data={k: v for k, v in (event.data or {}).items() if isinstance(v, str | int | float)})
    elif event.name.startswith("record.") and event.entity == LEAD:
        leads = [event.record_id]
    elif event.name.startswith("record.") and event.entity == ACTIVITY:
        rec = (event.data or {}).get("record") or {}
        old = (event.data or {}).get("old") or {}
        leads = [r.get(link) for r in (rec, old) for link in _activity_links(rules) if r.get(link)]
    if leads and rules.thresholds:
        actions.run_pending(crm, rules, leads)


# ---------------------------------------------------------------------------------------------
# API: web visits
# ---------------------------------------------------------------------------------------------
def track_visit(crm, record, payload, actor):
    """POST /api/v1/lead/{id}/track_visit — record a web visit (``url``, optional ``at``) and rescore."""
    from crmkit.core.errors import ValidationError
    from crmkit.core.events import Event

    at = None
    if payload.get("at") is not None:
        try:
            at = dt.datetime.fromisoformat(str(payload["at"]))
        except ValueError:
            raise ValidationError([{"field": "at", "message": "not a date and time (ISO 8601)"}]) from None
    url = payload.get("url")
    if url is not None and (not isinstance(url, str) or len(url) > 2000):
        raise ValidationError([{"field": "url", "message": "a URL of at most 2000 characters"}])
    if not crm.records.can(actor, "update", LEAD, record):
        from crmkit.core.errors import PermissionDenied

        raise PermissionDenied("you may not track visits of this lead")
    with crm.records.transaction(actor=actor, source="api") as tx:
        record_event(crm, WEB_VISIT, LEAD, record["id"], at=at, data={"url": url} if url else {}, conn=tx.conn)
        tx.events.append(Event(WEB_VISIT, LEAD, record["id"], actor,
                               {"url": url, "lead_scoring_recorded": True}, "api"))
        lead = tx.get(LEAD, record["id"])
    return {"lead": lead}


@hookimpl
def register_record_actions(crm):
    """``lead/{id}/track_visit``."""
    return [{
        "entity": LEAD, "name": "track_visit", "handler": track_visit,
        "description": "Record a web visit of the lead (scored by event rules on web.visit).",
        "input_schema": {"type": "object", "additionalProperties": False, "properties": {
            "url": {"type": "string", "maxLength": 2000},
            "at": {"type": "string", "format": "date-time"},
        }},
    }]


# ---------------------------------------------------------------------------------------------
# Admin: the score panel
# ---------------------------------------------------------------------------------------------
@hookimpl
def register_routes(crm):
    """The panel's stylesheet."""
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    return [Mount(STATIC_URL, StaticFiles(directory=str(HERE / "static")), name="lead_scoring_static")]


@hookimpl
def extra_css_urls(crm, template, request):
    """The panel's stylesheet on record pages."""
    return [f"{STATIC_URL}/lead_scoring.css"] if template == "detail.html" else None


@hookimpl
def record_panels(crm, entity, record, actor, request):
    """"Why this score": the lead's total, grade, points per group, KPI progress and ledger."""
    if entity.name != LEAD or actor is None:
        return None
    from plugins_contrib.lead_scoring.panel import score_panel

    return [score_panel(crm, record, actor, request)]


@hookimpl
def register_ui_strings(crm):
    """The panel's words in English and Japanese."""
    from plugins_contrib.lead_scoring.panel import UI_STRINGS

    return UI_STRINGS


# ---------------------------------------------------------------------------------------------
# CLI and jobs
# ---------------------------------------------------------------------------------------------
@hookimpl
def register_commands(cli):
    """``crmkit scoring recompute|remind`` and the scoring kind of ``crmkit rules``."""
    from plugins_contrib.lead_scoring.commands import scoring

    cli.add_command(scoring)
    rule_files.rules_group(cli).add_kind(KIND)


def _job_remind(crm, payload, conn):
    rules = rules_of(crm)
    if rules is None:
        return
    actions.remind(crm, rules, now=_now())
    if rules.thresholds:
        actions.run_pending(crm, rules)


def _job_recompute(crm, payload, conn):
    rules = rules_of(crm)
    if rules is not None:
        engine.recompute_all(crm, rules, now=_now())
        if rules.thresholds:
            actions.run_pending(crm, rules)


try:  # the handlers commit their own (chunked) transactions
    from crmkit.core.jobs import own_transactions

    _job_remind = own_transactions(_job_remind)
    _job_recompute = own_transactions(_job_recompute)
except ImportError:  # pragma: no cover
    pass


@hookimpl
def register_job_handlers(crm):
    """``lead_scoring.remind`` and ``lead_scoring.recompute``."""
    return {"lead_scoring.remind": _job_remind, "lead_scoring.recompute": _job_recompute}


@hookimpl
def register_periodic_jobs(crm):
    """KPI reminders hourly; a daily recompute when rules decay or use rolling windows."""
    section = crm.config.section("lead_scoring")
    jobs = [{"name": "lead_scoring.remind", "every": int(section.get("remind_every", 3600))}]
    rules = rules_of(crm)
    if rules is not None and rules.time_dependent:
        jobs.append({"name": "lead_scoring.recompute", "every": int(section.get("recompute_every", 86400))})
    return jobs

