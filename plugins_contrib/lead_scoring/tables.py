"""The lead scoring plugin's own tables (created by ``crmkit migrate`` through ``register_tables``).

- ``scoring_ledger``: every item that scored, with its rule, source, time, raw points and the
  points it contributes after decay and caps (``note`` says why it contributes less). It is
  derived data: recomputing a lead replaces its rows.
- ``scoring_event``: email and web events per lead (``email.opened``, ``email.clicked``,
  ``web.visit``); the source of event rules.
- ``scoring_threshold``: which thresholds each lead has reached, and whether their actions ran
  (an outbox: actions run after the commit, exactly once).
- ``scoring_reminder``: KPI reminders sent, one per lead, KPI and checkpoint (idempotency).

No foreign keys to ``lead``: deleting a lead removes its rows in ``after_delete`` instead, so
these tables never constrain the order ``crmkit migrate`` creates tables in.
"""

from __future__ import annotations

import sqlalchemy as sa

LEDGER = "scoring_ledger"
EVENT = "scoring_event"
THRESHOLD = "scoring_threshold"
REMINDER = "scoring_reminder"


def define_tables(md: sa.MetaData) -> list[sa.Table]:
    """Build the four tables on ``md``."""
    ledger = sa.Table(
        LEDGER, md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("lead_id", sa.Integer, nullable=False),
        sa.Column("group_name", sa.String(60), nullable=False),
        sa.Column("rule_name", sa.String(60), nullable=False),
        sa.Column("source_entity", sa.String(60), nullable=False),
        sa.Column("source_id", sa.Integer),
        sa.Column("at", sa.DateTime(timezone=True)),
        sa.Column("points", sa.Float, nullable=False),
        sa.Column("effective", sa.Float, nullable=False),
        sa.Column("note", sa.String(20)),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Index("ix_scoring_ledger_lead_id", "lead_id"),
    )
    event = sa.Table(
        EVENT, md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("lead_id", sa.Integer, nullable=False),
        sa.Column("name", sa.String(60), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source_entity", sa.String(60)),
        sa.Column("source_id", sa.Integer),
        sa.Column("data", sa.JSON),
        sa.Index("ix_scoring_event_lead_id_name", "lead_id", "name"),
    )
    threshold = sa.Table(
        THRESHOLD, md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("lead_id", sa.Integer, nullable=False),
        sa.Column("name", sa.String(60), nullable=False),
        sa.Column("reached_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("score", sa.Float),
        sa.Column("actions_done", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.UniqueConstraint("lead_id", "name", name="uq_scoring_threshold_lead_id_name"),
        sa.Index("ix_scoring_threshold_actions_done", "actions_done"),
    )
    reminder = sa.Table(
        REMINDER, md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("lead_id", sa.Integer, nullable=False),
        sa.Column("kpi", sa.String(60), nullable=False),
        sa.Column("checkpoint", sa.Integer, nullable=False),
        sa.Column("points", sa.Float),
        sa.Column("expected", sa.Float),
        sa.Column("activity_id", sa.Integer),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("lead_id", "kpi", "checkpoint", name="uq_scoring_reminder_lead_id_kpi_checkpoint"),
    )
    return [ledger, event, threshold, reminder]
