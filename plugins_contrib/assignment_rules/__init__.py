"""Assignment rules: new records get an owner automatically, on every channel.

Enable it in ``crmkit.yaml`` (``plugins: [assignment_rules]``) and write ``rules/assignment.yaml``
(``assignment_rules: {rules: PATH}`` to move it; ``example_rules.yaml`` shows every feature).
See docs/plugins/assignment_rules.md.

A record created with an empty owner — a web form, an import, the API with ``"owner": null``,
the admin form with Owner cleared, or any write as the system — is assigned in ``before_save``,
inside its write transaction: ordered rules, first match wins, required fallback; strategies
direct, round_robin, least_loaded, weighted, sticky (plugins add more with
``register_assignment_strategies``, or take over entirely with ``assign_owner``). Each
decision is written to ``assignment_log`` and shown on the record's page.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from crmkit.hookspecs import hookimpl
from plugins_contrib import rule_files
from plugins_contrib.assignment_rules import engine
from plugins_contrib.assignment_rules.rules import KIND, AssignmentRules
from plugins_contrib.assignment_rules.tables import LOG, define_tables

__version__ = "0.1.0"
log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
STATIC_URL = "/admin/plugins/assignment_rules/static"
_PENDING = "assignment_rules_pending"  # conn.info key: decisions waiting for their record's id


def rules_of(crm: Any) -> AssignmentRules | None:
    """The assignment rules in force (reloaded when the file changes; None without a valid file)."""
    return rule_files.active(crm, KIND)


@hookimpl
def register_hookspecs(pm):
    """Publish ``assign_owner`` and ``register_assignment_strategies``."""
    from plugins_contrib.assignment_rules import hookspecs

    caller = getattr(pm.hook, "assign_owner", None)
    if caller is None or caller.spec is None:  # our own hookimpl may already have created the caller
        pm.add_hookspecs(hookspecs)


@hookimpl
def register_config_schemas(crm):
    """The ``assignment_rules:`` section of crmkit.yaml."""
    return {
        "assignment_rules": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"rules": {"type": "string", "description": "Rule file, relative to the project."}},
        }
    }


@hookimpl
def register_tables(crm, metadata):
    """Turn state, weighted counters and the assignment log."""
    return define_tables(metadata)


@hookimpl
def check_project(crm):
    """Problems of the rule file; and users or teams it names that the database does not have."""
    problems: list[Any] = list(rule_files.check(crm, KIND))
    if problems:
        return problems
    rules = rule_files.load(crm, KIND)
    if rules is None:
        return []
    try:
        users, teams = crm.schema.tables["user"], crm.schema.tables["team"]
        with crm.engine.connect() as conn:
            have = set(conn.execute(sa.select(users.c.username).where(users.c.username.in_(rules.usernames())))
                       .scalars())
            have_teams = set(conn.execute(sa.select(teams.c.name).where(teams.c.name.in_(rules.team_names())))
                             .scalars())
    except sa.exc.SQLAlchemyError:  # no database yet (before `crmkit migrate`): nothing to compare
        return []
    problems += [f"{rules.source}: no user {u!r} in the database" for u in sorted(rules.usernames() - have)]
    problems += [f"{rules.source}: no team {t!r} in the database (nor under teams:)"
                 for t in sorted(rules.team_names() - have_teams)]
    return problems


# ---------------------------------------------------------------------------------------------
# Assigning
# ---------------------------------------------------------------------------------------------
@hookimpl(trylast=True)
def assign_owner(crm, entity, record, conn, actor):
    """The YAML rule engine: the decision for ``record``, or None when no rules cover the entity."""
    rules = rules_of(crm)
    if rules is None or entity.name not in rules.entities:
        return None
    return engine.decide(crm, conn, entity.name, record, rules).as_dict()


def _pending(conn: sa.Connection) -> list[tuple[Any, str, dict[str, Any]]]:
    trans = conn.get_transaction()
    stack = conn.info.setdefault(_PENDING, [])
    stack[:] = [p for p in stack if p[0] is trans]  # drop leftovers of rolled-back transactions
    return stack


@hookimpl
def before_save(crm, entity, record, old, conn, actor):
    """On create with an empty owner: ask ``assign_owner`` and set owner (and the owner's team)."""
    if old is not None or not entity.ownable or record.get("owner") is not None:
        return
    result = crm.pm.hook.assign_owner(crm=crm, entity=entity, record=record, conn=conn, actor=actor)
    if result is None:
        return
    decision = dict(result) if isinstance(result, dict) else {"owner": int(result), "reason": "assign_owner hook"}
    owner = decision.get("owner")
    if owner is None:
        return
    record["owner"] = owner
    known = [c for c in decision.get("candidates") or [] if c.get("id") == owner and "team" in c]
    if known:
        team = known[0]["team"]
    else:  # a decision from another plugin's assign_owner
        users = crm.schema.tables["user"]
        team = conn.execute(sa.select(users.c.primary_team).where(users.c.id == owner)).scalar()
    if team is not None:
        record["team"] = team
    _pending(conn).append((conn.get_transaction(), entity.name, decision))


@hookimpl
def after_save(crm, entity, record, old, conn, actor):
    """Write the decision made in ``before_save`` to the log, now that the record has an id."""
    if old is not None:
        return
    stack = _pending(conn)
    for i in range(len(stack) - 1, -1, -1):
        _trans, name, decision = stack[i]
        if name == entity.name and decision.get("owner") == record.get("owner"):
            del stack[i]
            engine.write_log(crm, conn, entity.name, record["id"], decision)
            return


@hookimpl
def after_delete(crm, entity, record, conn, actor):
    """A deleted record's log goes with it."""
    table = crm.system_tables[LOG]
    conn.execute(sa.delete(table).where(table.c.entity == entity.name, table.c.record_id == record["id"]))


# ---------------------------------------------------------------------------------------------
# Admin panel, CLI
# ---------------------------------------------------------------------------------------------
UI_STRINGS: dict[str, tuple[str, str]] = {
    "assign_panel_title": ("Assignment", "担当者の割り当て"),
    "assign_rule": ("Rule {rule} ({strategy})", "ルール {rule}（{strategy}）"),
    "assign_to": ("Assigned to {name}", "{name} に割り当て"),
    "assign_candidates": ("Candidates", "候補者"),
    "assign_available": ("available", "対応可"),
    "assign_open": ("{n} open", "対応中 {n}件"),
    "assign_skipped": ("Rules passed over", "適用されなかったルール"),
    "assign_none": ("Not assigned by rules (the owner was chosen when the record was created).",
                    "ルールによる割り当てはありません（作成時に担当者が指定されました）。"),
    "assign_rules_error": ("The assignment rule file has problems; the previous rules stay in force:",
                           "割り当てルールファイルに問題があります。以前のルールが有効です："),
}


@hookimpl
def register_ui_strings(crm):
    """The panel's words in English and Japanese."""
    return UI_STRINGS


@hookimpl
def prepare_jinja2_environment(crm, env):
    """Make ``assignment_rules/*.html`` findable by the admin's template loader."""
    from jinja2 import ChoiceLoader, FileSystemLoader

    env.loader = ChoiceLoader([env.loader, FileSystemLoader(str(HERE / "templates"))])


@hookimpl
def register_routes(crm):
    """The panel's stylesheet."""
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    return [Mount(STATIC_URL, StaticFiles(directory=str(HERE / "static")), name="assignment_rules_static")]


@hookimpl
def extra_css_urls(crm, template, request):
    """The panel's stylesheet on record pages."""
    return [f"{STATIC_URL}/assignment_rules.css"] if template == "detail.html" else None


@hookimpl
def record_panels(crm, entity, record, actor, request):
    """"Assignment": who got the record, by which rule and strategy, among which candidates."""
    if actor is None or not entity.ownable:
        return None
    rules = rules_of(crm)
    entries = engine.log_of(crm, entity.name, record["id"])
    if not entries and (rules is None or entity.name not in rules.entities):
        return None
    ctx = getattr(request.state, "crmkit_ctx", None)
    lang = getattr(ctx, "lang", None) or getattr(actor, "locale", "en")
    tz = getattr(ctx, "tz", dt.UTC)
    owners = crm.records.titles("user", [e["owner"] for e in entries if e["owner"] is not None])
    shown = []
    for e in entries:
        at = e["at"] if e["at"].tzinfo else e["at"].replace(tzinfo=dt.UTC)
        shown.append({
            "at": at.astimezone(tz).strftime("%Y-%m-%d %H:%M"), "rule": e["rule"], "strategy": e["strategy"],
            "owner": owners.get(e["owner"], "—") if e["owner"] is not None else "—",
            "reason": e["reason"], "candidates": e["candidates"] or [], "trace": e["trace"] or [],
        })
    status = rule_files.status(crm, KIND)
    title = UI_STRINGS["assign_panel_title"][1 if lang == "ja" else 0]
    return [{
        "title": title,
        "template": "assignment_rules/panel.html",
        "context": {"entries": shown,
                    "problems": [str(p) for p in status["problems"]] if actor.is_admin else []},
    }]


@hookimpl
def register_commands(cli):
    """The assignment kind of ``crmkit rules test|check|reload``."""
    rule_files.rules_group(cli).add_kind(KIND)
