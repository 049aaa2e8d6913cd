"""Field-level history for entities with ``audit: true``: who changed what, when, from where.

Rows: one per changed field for updates; one per delete and merge (JSON in ``new_value``); and one
per create — the record's initial values as one JSON object in ``new_value`` with ``field`` NULL
(a *snapshot*). A create used to be written as one row per initial value; an import of a million
records then wrote twelve million audit rows, most of its time. :func:`entries` turns both forms
into the same per-field history, so databases written before the change read the same.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa

from crmkit.core.permissions import mask_value

AUDIT_TABLE = "crmkit_audit"
SOURCES = ("ui", "api", "import", "plugin", "system", "cli")


def define_audit_table(md: sa.MetaData) -> sa.Table:
    """The audit table: one row per changed field, one per create (a snapshot), delete and merge."""
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


def audited_fields(ent: Any) -> list[str]:
    """The fields of ``ent`` whose values the history keeps (every user field but passwords)."""
    return [f.name for f in ent.user_fields if f.type != "password"] + ["owner", "team"]


def snapshot(values: Mapping[str, Any], fields: list[str]) -> str | None:
    """A create's audit ``new_value``: the non-empty initial values of ``fields`` as one JSON object.

    None when no field has a value (the create row then carries no values, as before).
    """
    out = {}
    get = values.get
    for name in fields:
        value = get(name)
        if value is not None:
            kind = type(value)
            # encode() of an int or a bool is str() of it
            out[name] = value if kind is str else str(value) if kind is int or kind is bool else encode(value)
    if not out:
        return None
    # The text json.dumps(out, ensure_ascii=False) gives, written piece by piece (twice as fast):
    # every value is text, the '"name": ' prefixes are made once, the values go through json's
    # own string encoder.
    prefixes = _PREFIXES
    return "{" + ", ".join([(prefixes.get(k) or _prefix(k)) + _json_string(v) for k, v in out.items()]) + "}"


_PREFIXES: dict[str, str] = {}
_json_string = json.encoder.encode_basestring  # what json.dumps uses with ensure_ascii=False


def _prefix(name: str) -> str:
    """``"name": `` as json.dumps writes an object key (bounded: names of fields)."""
    if len(_PREFIXES) >= 65536:
        _PREFIXES.clear()
    prefix = _PREFIXES[name] = _json_string(name) + ": "
    return prefix


def entries(rows: Iterable[Mapping[str, Any]], access: Mapping[str, str]) -> list[dict[str, Any]]:
    """History entries of audit ``rows`` (oldest first) as ``access`` lets the reader see them.

    A create snapshot becomes one ``create`` entry per initial value; fields the reader may not
    see are left out and masked ones masked (``access``: field -> read/mask/none/write-only).
    """
    out: list[dict[str, Any]] = []
    for r in rows:
        at = r["at"]
        if isinstance(at, dt.datetime) and at.tzinfo is None:
            at = at.replace(tzinfo=dt.UTC)
        base = {"at": at, "actor_id": r["actor_id"], "actor_name": r["actor_name"], "source": r["source"],
                "action": r["action"]}
        field, new = r["field"], r["new_value"]
        if field is None and r["action"] == "create" and new:
            cells = [(name, None, value) for name, value in json.loads(new).items()]
        else:
            cells = [(field, r["old_value"], new)]
        for name, old, value in cells:
            level = access.get(name, "read") if name else "read"
            if level in ("none", "write-only"):
                continue
            if level == "mask":
                old, value = mask_value(old), mask_value(value)
            out.append({**base, "field": name, "old": old, "new": value})
    return out


def changes(old: Mapping[str, Any] | None, new: Mapping[str, Any], fields: list[str]) -> list[tuple[str, Any, Any]]:
    """(field, old, new) for every field whose value differs."""
    out = []
    for name in fields:
        before = old.get(name) if old else None
        after = new.get(name)
        if encode(before) != encode(after):
            out.append((name, before, after))
    return out
