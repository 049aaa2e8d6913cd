"""Tables the core itself owns (not generated from entity YAML).

Their names start with ``crmkit_`` so they never clash with an entity's table.
"""

from __future__ import annotations

import sqlalchemy as sa

from crmkit.core.audit import AUDIT_TABLE, define_audit_table
from crmkit.core.deferred_indexes import DEFERRED_INDEX_TABLE, define_deferred_index_table
from crmkit.core.jobs import JOB_TABLE, define_job_table
from crmkit.core.mail import OUTBOX_TABLE, define_outbox_table
from crmkit.core.notifications import NOTIFICATION_TABLE, define_notification_table
from crmkit.core.tokens import TOKEN_TABLE, define_token_table

SNAPSHOT_TABLE = "crmkit_schema_snapshot"


def define_system_tables(md: sa.MetaData) -> dict[str, sa.Table]:
    """Add the core's own tables to ``md`` and return them by name."""
    tables = {
        SNAPSHOT_TABLE: sa.Table(
            SNAPSHOT_TABLE,
            md,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("catalog", sa.JSON, nullable=False),
            sa.Column("summary", sa.Text),
        ),
    }
    tables[AUDIT_TABLE] = define_audit_table(md)
    tables[TOKEN_TABLE] = define_token_table(md)
    tables[JOB_TABLE] = define_job_table(md)
    tables[OUTBOX_TABLE] = define_outbox_table(md)
    tables[NOTIFICATION_TABLE] = define_notification_table(md)
    tables[DEFERRED_INDEX_TABLE] = define_deferred_index_table(md)
    return tables
