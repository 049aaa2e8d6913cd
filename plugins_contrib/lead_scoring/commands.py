"""``crmkit scoring recompute`` and ``crmkit scoring remind``."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import click

from crmkit.cli import project_option
from crmkit.core.loader import SchemaError
from plugins_contrib import rule_files
from plugins_contrib.lead_scoring.rules import KIND


def _now(value: str | None) -> dt.datetime:
    if not value:
        return dt.datetime.now(dt.UTC)
    try:
        now = dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("use ISO 8601, e.g. 2026-04-14T10:00:00+09:00", param_hint="--now") from None
    return now if now.tzinfo else now.replace(tzinfo=dt.UTC)


def _rules(crm):
    """The project's rules, or exit 1 printing their problems (no stale rules in a CLI run)."""
    try:
        rules = rule_files.load(crm, KIND)
    except SchemaError as exc:
        for p in exc.problems:
            click.echo(str(p), err=True)
        click.echo(f"{len(exc.problems)} problem(s) found; nothing done.", err=True)
        sys.exit(1)
    rule_files.set_rules(crm, KIND, rules)
    return rules


@click.group()
def scoring() -> None:
    """Lead scoring: recompute scores, send KPI reminders."""


@scoring.command()
@project_option
@click.option("--now", "now_text", help="Score as of this time (ISO 8601; default: now).")
@click.option("--chunk", default=20000, show_default=True, type=click.IntRange(100, 1_000_000),
              help="Leads per transaction.")
def recompute(project: Path, now_text: str | None, chunk: int) -> None:
    """Recompute every lead's score and ledger in SQL (set-based, one transaction per chunk)."""
    from crmkit.cli import open_crm
    from plugins_contrib.lead_scoring import actions, engine

    crm = open_crm(project, enable=["lead_scoring"])
    try:
        rules = _rules(crm)
        now = _now(now_text)
        import sqlalchemy as sa

        lead = crm.schema.tables["lead"]
        with crm.engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(lead)).scalar_one()
        with click.progressbar(length=total, label="Recomputing lead scores", file=sys.stderr,
                               show_pos=True) as bar:
            engine.recompute_all(crm, rules, now=now, chunk=chunk, progress=bar.update)
        acted = actions.run_pending(crm, rules) if rules.thresholds else 0
    finally:
        crm.close()
    click.echo(f"Recomputed {total} lead(s); {acted} threshold action(s) run.")


@scoring.command()
@project_option
@click.option("--now", "now_text", help="Pretend it is this time (ISO 8601; default: now).")
def remind(project: Path, now_text: str | None) -> None:
    """Check the KPI checkpoints due now and create reminder tasks for leads that are behind."""
    from crmkit.cli import open_crm
    from plugins_contrib.lead_scoring import actions

    crm = open_crm(project, enable=["lead_scoring"])
    try:
        rules = _rules(crm)
        decisions = actions.remind(crm, rules, now=_now(now_text))
        if rules.thresholds:
            actions.run_pending(crm, rules)
    finally:
        crm.close()
    tasks = [d for d in decisions if d["task"]]
    for d in decisions:
        verdict = f"behind -> task #{d['task']}" if d["task"] else ("behind (no owner)" if d["behind"] else "on track")
        click.echo(f"lead #{d['lead']} {d['kpi']} day {d['checkpoint']}: {d['points']:g}/{d['expected']:g} {verdict}")
    click.echo(f"{len(decisions)} checkpoint(s) checked, {len(tasks)} reminder task(s) created.")
