"""Field-level history for entities with ``audit: true``: who changed what, when, from where."""

from __future__ import annotations

import datetime as dt
import decimal
import json
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

AUDIT_TABLE = "crmkit_audit"
SOURCES = ("ui", "api", "import", "plugin", "system", "cli")


def define_audit_table(md: sa.MetaData) -> sa.Table:
    """The audit table: one row per changed field (and one per create/delete)."""
    return sa.Table(
        AUDIT_TABLE,
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("entity", sa.String(64), nullable=False),
        sa.Column("record_id", sa.Integer, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),  # create, update, delete, merge
        sa.Column("field", sa.String(64)),
        sa.Column("old_value", sa.Text),
        sa.Column("new_value", sa.Text),
        sa.Column("actor_id", sa.Integer),
        sa.Column("actor_name", sa.String(150)),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Index("ix_crmkit_audit_entity_record_id", "entity", "record_id", "id"),
    )


def encode(value: Any) -> str | None:
    """Store any field value as text (JSON for structures) so history keeps exact values."""
    if value is None:
        return None
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return str(value)


def changes(old: Mapping[str, Any] | None, new: Mapping[str, Any], fields: list[str]) -> list[tuple[str, Any, Any]]:
    """(field, old, new) for every field whose value differs."""
    out = []
    for name in fields:
        before = old.get(name) if old else None
        after = new.get(name)
        if encode(before) != encode(after):
            out.append((name, before, after))
    return out
