"""The assignment plugin's tables (created by ``crmkit migrate`` through ``register_tables``).

- ``assignment_turn``: one row per rule using a rotation (round_robin, weighted, least_loaded):
  the member who got the last record. Strategies lock this row (``SELECT … FOR UPDATE`` on
  PostgreSQL) inside the write transaction, so concurrent creations take turns one at a time.
- ``assignment_counter``: records given per rule and member (the weighted strategy's state).
- ``assignment_log``: every decision — rule, strategy, the candidates with why each was or was
  not available, the owner chosen and the reason; shown on the record's page and counted for
  ``capacity_per_day``.
"""

from __future__ import annotations

import sqlalchemy as sa

TURN = "assignment_turn"
COUNTER = "assignment_counter"
LOG = "assignment_log"


def define_tables(md: sa.MetaData) -> list[sa.Table]:
    """Build the three tables on ``md``."""
    turn = sa.Table(
        TURN, md,
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("last_user_id", sa.Integer),
        sa.Column("updated_at", sa.DateTime(timezone=True)),
    )
    counter = sa.Table(
        COUNTER, md,
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("user_id", sa.Integer, primary_key=True),
        sa.Column("count", sa.Integer, nullable=False, server_default="0"),
    )
    log = sa.Table(
        LOG, md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("entity", sa.String(60), nullable=False),
        sa.Column("record_id", sa.Integer),
        sa.Column("rule", sa.String(60)),
        sa.Column("strategy", sa.String(60)),
        sa.Column("owner", sa.Integer),
        sa.Column("reason", sa.Text),
        sa.Column("candidates", sa.JSON),
        sa.Column("trace", sa.JSON),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Index("ix_assignment_log_entity_record_id", "entity", "record_id"),
        sa.Index("ix_assignment_log_owner_at", "owner", "at"),
    )
    return [turn, counter, log]
