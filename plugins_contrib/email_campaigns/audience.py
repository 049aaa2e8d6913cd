"""Who receives a campaign: the segment at send time, minus exclusions and suppressed addresses.

The selection is one SQL query per campaign (the segment's condition compiled by the condition
language, exclusion segments AND NOT-ed, opted-out and invalid addresses anti-joined); its rows
become the campaign's per-recipient send rows, unique per (campaign, address) so nobody gets the
same campaign twice, not even when two leads share an address.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from typing import Any

import sqlalchemy as sa

from crmkit.core import conditions
from plugins_contrib.email_campaigns import tables as T

AUDIENCES = ("lead", "contact")
OPT_OUT_FIELD = "do_not_email"  # a boolean field on the audience entity, honoured when present


def normalize_email(value: Any) -> str | None:
    """An address as the suppression lists store it (trimmed, lower case), or None if empty."""
    if not isinstance(value, str):
        return None
    value = value.strip().lower()
    return value if "@" in value else None


def segment_params(owner: Mapping[str, Any] | None, now: dt.datetime) -> dict[str, Any]:
    """Values of ``$me``/``$my_team``/``$now``/``$today`` for a segment: the campaign owner's."""
    me = owner.get("id") if owner else None
    team = owner.get("primary_team") if owner else None
    return {"me": me, "my_team": team, "my_teams": [team] if team else [], "now": now, "today": now.date()}


def suppressed(crm: Any, email_col: Any) -> sa.ColumnElement[bool]:
    """A clause true when the address in ``email_col`` is opted out or known to be invalid."""
    optout = crm.system_tables[T.OPTOUT]
    invalid = crm.system_tables[T.INVALID]
    low = sa.func.lower(email_col)
    return sa.or_(
        sa.exists().where(optout.c.email == low),
        sa.exists().where(invalid.c.email == low, invalid.c.hard.is_(True)),
    )


def selection(
    crm: Any, audience: str, condition: Any, exclusions: list[Any], params: Mapping[str, Any]
) -> sa.Select:
    """SELECT id, email, language of the audience records a campaign goes to (ordered by id)."""
    table = crm.table(audience)
    ent = crm.catalog[audience]
    where = [
        table.c.email.is_not(None),
        table.c.email != "",
        conditions.to_sql(condition or {}, audience, crm.catalog, crm.schema.tables, params),
        sa.not_(suppressed(crm, table.c.email)),
    ]
    for excl in exclusions:
        where.append(sa.not_(conditions.to_sql(excl or {}, audience, crm.catalog, crm.schema.tables, params)))
    if OPT_OUT_FIELD in ent.fields and OPT_OUT_FIELD in table.c:
        where.append(sa.or_(table.c[OPT_OUT_FIELD].is_(None), table.c[OPT_OUT_FIELD].is_(False)))
    language = table.c.language if "language" in table.c else sa.null()
    return sa.select(table.c.id, table.c.email, language.label("language")).where(*where).order_by(table.c.id)


def iter_recipients(conn: sa.Connection, stmt: sa.Select, chunk: int = 2000) -> Iterator[list[dict[str, Any]]]:
    """The selection's rows in chunks, streamed (a million-lead segment never sits in memory)."""
    result = conn.execute(stmt.execution_options(stream_results=True, yield_per=chunk))
    while True:
        rows = result.fetchmany(chunk)
        if not rows:
            break
        yield [dict(r._mapping) for r in rows]


def materialize(conn: sa.Connection, crm: Any, campaign_id: int, audience: str, stmt: sa.Select,
                now: dt.datetime) -> int:
    """Insert the send rows of a campaign (pending); returns how many recipients it has.

    Rows already there (a re-run after a crash) are kept: ``ON CONFLICT DO NOTHING`` on
    (campaign, address) is what makes the step idempotent.
    """
    send = crm.system_tables[T.SEND]
    insert = _insert(conn)
    seen: set[str] = set()
    for rows in iter_recipients(conn, stmt):
        batch = []
        for r in rows:
            email = normalize_email(r["email"])
            if email is None or email in seen:
                continue
            seen.add(email)
            lang = r.get("language")
            batch.append({
                "campaign_id": campaign_id, "entity": audience, "record_id": r["id"], "email": email,
                "language": lang if lang in ("en", "ja") else None, "status": T.PENDING, "created_at": now,
            })
        if batch:
            conn.execute(insert(send).on_conflict_do_nothing(index_elements=["campaign_id", "email"]), batch)
    return conn.execute(
        sa.select(sa.func.count()).select_from(send).where(send.c.campaign_id == campaign_id)
    ).scalar_one()


def _insert(conn: sa.Connection):
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


def upsert_ignore(conn: sa.Connection, table: sa.Table, values: dict[str, Any], unique: list[str]) -> None:
    """INSERT a row unless one with the same ``unique`` columns exists (both databases)."""
    conn.execute(_insert(conn)(table).values(values).on_conflict_do_nothing(index_elements=unique))
