"""Opens, clicks and unsubscribes: recorded per send, flagged when a machine made them.

Mail privacy proxies and security scanners fetch images and follow links without a person
reading the mail: Apple Mail Privacy Protection preloads every image (its requests carry the bare
user agent ``Mozilla/5.0``), Gmail fetches images through ``GoogleImageProxy``, corporate
scanners click every link seconds after delivery. Such events are kept but flagged (with the
reason) and left out of the unique open/click rates; the ``email.opened`` / ``email.clicked``
events that other plugins (lead scoring) receive are sent only for the first unflagged open of a
send and the first unflagged click of each of its links.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from crmkit.core.actors import SYSTEM
from crmkit.core.db import write_connection
from crmkit.core.errors import NotFound
from crmkit.core.events import Event, dispatch
from crmkit.core.mail import outbox_table
from plugins_contrib.email_campaigns import audience
from plugins_contrib.email_campaigns import tables as T

DEFAULT_MACHINE_SECONDS = 10  # an open or click this soon after the send is a scanner, not a reader

# (pattern, reason): user agents of privacy proxies, prefetchers and link scanners.
MACHINE_AGENTS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p, re.IGNORECASE), reason)
    for p, reason in (
        (r"^Mozilla/5\.0$", "Apple Mail Privacy Protection"),
        (r"GoogleImageProxy|ggpht\.com", "Gmail image proxy"),
        (r"YahooMailProxy", "Yahoo image proxy"),
        (r"Barracuda|Mimecast|Proofpoint|Symantec|Trend ?Micro|SafeLinks|Forcepoint|Cisco.*ESA",
         "mail security scanner"),
        (r"bot\b|crawler|spider|preview|python-requests|python-urllib|curl/|wget/|Go-http-client|HeadlessChrome",
         "automated client"),
    )
)


@dataclass(frozen=True)
class Flag:
    """Why an event looks automated (``flagged`` False: a person, as far as we can tell)."""

    flagged: bool
    reason: str | None = None


def machine_seconds(crm: Any) -> float:
    """Seconds after sending within which an open or click is flagged (crmkit.yaml setting)."""
    value = crm.config.section("email_campaigns").get("machine_seconds", DEFAULT_MACHINE_SECONDS)
    return float(value)


def classify(user_agent: str | None, sent_at: dt.datetime | None, now: dt.datetime, window: float) -> Flag:
    """Whether an open/click looks like a machine's: its user agent, or how soon after sending."""
    agent = (user_agent or "").strip()
    if not agent:
        return Flag(True, "no user agent")
    for pattern, reason in MACHINE_AGENTS:
        if pattern.search(agent):
            return Flag(True, reason)
    if sent_at is not None and (now - sent_at).total_seconds() < window:
        return Flag(True, f"within {int(window)} seconds of sending")
    return Flag(False)


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


def _send(conn: sa.Connection, crm: Any, send_id: int) -> dict[str, Any]:
    send = crm.system_tables[T.SEND]
    outbox = outbox_table(crm)
    row = conn.execute(
        sa.select(send, outbox.c.sent_at.label("mail_sent_at"))
        .select_from(send.outerjoin(outbox, outbox.c.id == send.c.outbox_id))
        .where(send.c.id == send_id)
    ).mappings().first()
    if row is None:
        raise NotFound("no such message")
    out = dict(row)
    out["sent_at"] = _utc(out.pop("mail_sent_at")) or _utc(out.get("queued_at"))
    return out


def _event(kind: str, row: Mapping[str, Any], **data: Any) -> Event:
    return Event(f"email.{kind}", row["entity"], row["record_id"], SYSTEM,
                 {"campaign_id": row["campaign_id"], "send_id": row["id"], "email": row["email"], **data},
                 "email_campaigns")


def record_open(crm: Any, send_id: int, user_agent: str | None, now: dt.datetime | None = None) -> Flag:
    """Record an open of one send (the pixel was fetched); returns how it was classified."""
    now = now or dt.datetime.now(dt.UTC)
    send = crm.system_tables[T.SEND]
    events = crm.system_tables[T.EVENT]
    out: list[Event] = []
    with write_connection(crm.engine) as conn, conn.begin():
        row = _send(conn, crm, send_id)
        flag = classify(user_agent, row["sent_at"], now, machine_seconds(crm))
        conn.execute(sa.insert(events).values(
            campaign_id=row["campaign_id"], send_id=send_id, type="open", at=now,
            user_agent=(user_agent or "")[:500], flagged=flag.flagged, flag_reason=flag.reason,
        ))
        if not flag.flagged:
            first = conn.execute(
                sa.update(send).where(send.c.id == send_id, send.c.opened_at.is_(None)).values(opened_at=now)
            ).rowcount
            if first:
                out.append(_event("opened", row))
    dispatch(crm, out)
    return flag


def record_click(crm: Any, send_id: int, link_id: int, user_agent: str | None,
                 now: dt.datetime | None = None) -> str:
    """Record a click and return the URL to redirect to — one of the campaign's own links only."""
    now = now or dt.datetime.now(dt.UTC)
    send = crm.system_tables[T.SEND]
    link = crm.system_tables[T.LINK]
    events = crm.system_tables[T.EVENT]
    out: list[Event] = []
    with write_connection(crm.engine) as conn, conn.begin():
        row = _send(conn, crm, send_id)
        url = conn.execute(
            sa.select(link.c.url).where(link.c.id == link_id, link.c.campaign_id == row["campaign_id"])
        ).scalar_one_or_none()
        if url is None:
            raise NotFound("no such link")
        flag = classify(user_agent, row["sent_at"], now, machine_seconds(crm))
        earlier = conn.execute(
            sa.select(events.c.id).where(events.c.send_id == send_id, events.c.type == "click",
                                         events.c.link_id == link_id, events.c.flagged.is_(False)).limit(1)
        ).first()
        conn.execute(sa.insert(events).values(
            campaign_id=row["campaign_id"], send_id=send_id, type="click", at=now, link_id=link_id,
            user_agent=(user_agent or "")[:500], flagged=flag.flagged, flag_reason=flag.reason,
        ))
        if not flag.flagged:
            conn.execute(sa.update(send).where(send.c.id == send_id, send.c.clicked_at.is_(None))
                         .values(clicked_at=now))
            if earlier is None:
                out.append(_event("clicked", row, url=url))
    dispatch(crm, out)
    return url


def send_language(crm: Any, send_id: int | None) -> str | None:
    """The language a send was written in (for the unsubscribe page), if known."""
    if send_id is None:
        return None
    send = crm.system_tables[T.SEND]
    with crm.engine.connect() as conn:
        return conn.execute(sa.select(send.c.language).where(send.c.id == send_id)).scalar_one_or_none()


def is_opted_out(crm: Any, email: str) -> bool:
    """Whether ``email`` is on the global opt-out list."""
    optout = crm.system_tables[T.OPTOUT]
    with crm.engine.connect() as conn:
        return conn.execute(
            sa.select(optout.c.id).where(optout.c.email == audience.normalize_email(email))
        ).first() is not None


def send_email(crm: Any, send_id: int) -> str | None:
    """The address a send went to (None for an unknown send)."""
    send = crm.system_tables[T.SEND]
    with crm.engine.connect() as conn:
        return conn.execute(sa.select(send.c.email).where(send.c.id == send_id)).scalar_one_or_none()


def unsubscribe(crm: Any, email: str, *, send_id: int | None = None, reason: str = "unsubscribe",
                now: dt.datetime | None = None, actor: Any = SYSTEM) -> bool:
    """Put ``email`` on the global opt-out list; returns False when nothing changed (already there).

    Also marks the send (if any) and sets ``do_not_email`` / ``email_opt_out_at`` on every lead
    and contact with that address (through RecordStore, so the change is audited), all in one
    transaction. Idempotent: a second request changes nothing.
    """
    now = now or dt.datetime.now(dt.UTC)
    address = audience.normalize_email(email)
    if address is None:
        raise ValueError(f"not an email address: {email!r}")
    optout = crm.system_tables[T.OPTOUT]
    send = crm.system_tables[T.SEND]
    events = crm.system_tables[T.EVENT]
    with crm.records.transaction(actor=actor, source="unsubscribe") as tx:
        conn = tx.conn
        row = None
        if send_id is not None:
            row = conn.execute(sa.select(send).where(send.c.id == send_id, send.c.email == address)).mappings().first()
        campaign_id = row["campaign_id"] if row else None
        existed = conn.execute(sa.select(optout.c.id).where(optout.c.email == address)).first() is not None
        audience.upsert_ignore(conn, optout, {"email": address, "reason": reason, "campaign_id": campaign_id,
                                              "at": now}, ["email"])
        changed = not existed
        if row is not None and row["unsubscribed_at"] is None:
            conn.execute(sa.update(send).where(send.c.id == row["id"]).values(unsubscribed_at=now))
            conn.execute(sa.insert(events).values(campaign_id=campaign_id, send_id=row["id"], type="unsubscribe",
                                                  at=now, flagged=False, detail=reason))
            tx.events.append(_event("unsubscribed", row))
            changed = True
        for entity in audience.AUDIENCES:
            changed = _opt_out_records(crm, tx, entity, address, now) or changed
    return changed


def _opt_out_records(crm: Any, tx: Any, entity: str, address: str, now: dt.datetime) -> bool:
    if entity not in crm.catalog or audience.OPT_OUT_FIELD not in crm.catalog[entity].fields:
        return False
    table = crm.table(entity)
    ids = tx.conn.execute(
        sa.select(table.c.id).where(sa.func.lower(table.c.email) == address,
                                    sa.or_(table.c[audience.OPT_OUT_FIELD].is_(None),
                                           table.c[audience.OPT_OUT_FIELD].is_(False)))
        .limit(1000)
    ).scalars().all()
    values: dict[str, Any] = {audience.OPT_OUT_FIELD: True}
    if "email_opt_out_at" in crm.catalog[entity].fields:
        values["email_opt_out_at"] = now
    for record_id in ids:
        tx.update(entity, record_id, values, actor=SYSTEM)
    return bool(ids)


def resubscribe(crm: Any, email: str) -> bool:
    """Take ``email`` off the opt-out list (an admin acting on the person's request)."""
    optout = crm.system_tables[T.OPTOUT]
    with write_connection(crm.engine) as conn, conn.begin():
        return conn.execute(sa.delete(optout).where(optout.c.email == audience.normalize_email(email))).rowcount > 0
