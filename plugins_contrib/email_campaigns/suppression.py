"""The suppression lists an admin manages: the global opt-out list and the invalid addresses."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from crmkit.core.actors import SYSTEM
from crmkit.core.db import write_connection
from plugins_contrib.email_campaigns import audience, tracking
from plugins_contrib.email_campaigns import tables as T

PAGE = 200


def add_optout(crm: Any, email: str, *, actor: Any = SYSTEM) -> bool:
    """Opt an address out by hand (a phone call, a letter); ValueError for a non-address."""
    if audience.normalize_email(email) is None:
        raise ValueError(f"not an email address: {email!r}")
    return tracking.unsubscribe(crm, email, reason="manual", actor=actor)


def clear_invalid(crm: Any, email: str) -> bool:
    """Forget that an address bounced (the person fixed their mailbox)."""
    address = audience.normalize_email(email)
    if address is None:
        raise ValueError(f"not an email address: {email!r}")
    invalid = crm.system_tables[T.INVALID]
    with write_connection(crm.engine) as conn, conn.begin():
        return conn.execute(sa.delete(invalid).where(invalid.c.email == address)).rowcount > 0


def listing(crm: Any, *, q: str | None = None, limit: int = PAGE) -> dict[str, Any]:
    """Newest opt-outs and invalid addresses (optionally those containing ``q``), with totals."""
    optout = crm.system_tables[T.OPTOUT]
    invalid = crm.system_tables[T.INVALID]
    out: dict[str, Any] = {}
    with crm.engine.connect() as conn:
        for name, table in (("optouts", optout), ("invalids", invalid)):
            stmt = sa.select(table).order_by(table.c.at.desc(), table.c.id.desc()).limit(limit)
            if q:
                escaped = q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                stmt = stmt.where(table.c.email.like(f"%{escaped}%", escape="\\"))
            out[name] = [_utc(dict(r)) for r in conn.execute(stmt).mappings()]
            out[f"{name}_total"] = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
    return out


def _utc(row: dict[str, Any]) -> dict[str, Any]:
    at = row.get("at")
    if isinstance(at, dt.datetime) and at.tzinfo is None:
        row["at"] = at.replace(tzinfo=dt.UTC)
    return row
