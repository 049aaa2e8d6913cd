"""Web-to-lead forms: public pages defined in YAML (``forms/*.yaml`` in the company project).

Enable it in crmkit.yaml (``plugins: [web_forms]``). Each form is served at ``/forms/{name}``
without login: a signed form token instead of a session, a honeypot field, a per-client rate
limit kept in the database, per-field validation messages with the input kept, the record created
through RecordStore (``source: web``; scoring and assignment hooks run), an auto-reply queued in
the lead's language, and a thank-you page or a same-site redirect. See docs/plugins/web_forms.md.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from jinja2 import FileSystemLoader
from starlette.routing import Route

from crmkit.hookspecs import hookimpl
from plugins_contrib.web_forms import submit as S
from plugins_contrib.web_forms.definitions import WebForm, load_forms

HERE = Path(__file__).parent
PRUNE_JOB = "web_forms.prune"
_CACHE = "_crmkit_web_forms"


def project_forms(crm: Any) -> dict[str, WebForm]:
    """The project's checked forms by name (loaded once, when the catalog is built)."""
    forms = crm.__dict__.get(_CACHE)
    if forms is None:
        forms, _problems = load_forms(crm, crm.catalog)
        crm.__dict__[_CACHE] = forms
    return forms


@hookimpl
def register_config_schemas(crm):
    """``web_forms: {dir: forms}`` — where the form files are, relative to the project."""
    return {"web_forms": {"type": "object", "additionalProperties": False,
                          "properties": {"dir": {"type": "string"}}}}


@hookimpl
def schema_loaded(crm, catalog):
    """Load and check every form file; problems name the file and line (``crmkit check``)."""
    forms, problems = load_forms(crm, catalog)
    crm.__dict__[_CACHE] = forms
    return problems


@hookimpl
def register_tables(crm, metadata):
    """The submission log behind the rate limit."""
    return S.define_tables(metadata)


@hookimpl
def prepare_jinja2_environment(crm, env):
    """The form templates (``web_forms/…``)."""
    env.loader.loaders.append(FileSystemLoader(str(HERE / "templates")))


@hookimpl
def register_ui_strings(crm):
    """The plugin's words in English and Japanese."""
    from plugins_contrib.web_forms.strings import STRINGS

    return STRINGS


@hookimpl
def register_routes(crm):
    """The public form pages and the admin overview."""
    from crmkit.web.site import admin_page
    from plugins_contrib.web_forms import pages

    return pages.routes() + [Route("/admin/web-forms", admin_page(overview_page), methods=["GET", "HEAD"])]


@hookimpl
def menu_links(crm, actor, request):
    """"Web forms", for admins, when the project has forms."""
    if actor is None or not actor.is_admin or not project_forms(crm):
        return None
    from crmkit.web.i18n import Translator, plugin_strings

    lang = getattr(request.state, "crmkit_lang", None) or actor.locale
    return [{"href": "/admin/web-forms", "label": Translator(lang, plugin_strings(crm))("web_forms_menu"),
             "icon": "list", "after": "lead"}]


@hookimpl
def register_job_handlers(crm):
    """Pruning of the submission log."""
    def prune_job(crm, payload, conn):
        t = crm.system_tables[S.SUBMISSIONS]
        from crmkit.core.jobs import current_job

        info = current_job()
        now = info.now if info else dt.datetime.now(dt.UTC)
        conn.execute(sa.delete(t).where(t.c.at < now - dt.timedelta(days=30)))

    return {PRUNE_JOB: prune_job}


@hookimpl
def register_periodic_jobs(crm):
    """Prune the submission log daily."""
    return [{"name": PRUNE_JOB, "every": 24 * 3600, "payload": {}}]


def overview_page(ctx):
    """Admins: every form, its public URL and its submissions of the last 30 days by outcome."""
    from crmkit.core.errors import PermissionDenied
    from plugins_contrib.email_campaigns.links import base_url

    if not ctx.actor.is_admin:
        raise PermissionDenied(ctx._("forbidden_text"))
    t = ctx.crm.system_tables[S.SUBMISSIONS]
    since = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    with ctx.crm.engine.connect() as conn:
        rows = conn.execute(sa.select(t.c.form, t.c.outcome, sa.func.count()).where(t.c.at > since)
                            .group_by(t.c.form, t.c.outcome)).all()
    stats: dict[str, dict[str, int]] = {}
    for form, outcome, n in rows:
        stats.setdefault(form, {})[outcome] = n
    items = [{"slug": f.slug, "title": f.text("title", ctx.lang, f.slug), "entity": f.entity,
              "url": f"{base_url(ctx.crm)}/forms/{f.slug}", "stats": stats.get(f.slug, {})}
             for f in project_forms(ctx.crm).values()]
    return ctx.render("web_forms/overview.html", title=ctx._("web_forms_menu"), items=items)
