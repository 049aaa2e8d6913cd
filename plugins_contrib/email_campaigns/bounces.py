"""Bounces: delivery status notifications (RFC 3464) parsed with the stdlib ``email`` package.

A DSN is a ``multipart/report; report-type=delivery-status`` message whose
``message/delivery-status`` part holds one block of per-message fields and one block per
recipient (``Final-Recipient``, ``Action``, ``Status``, ``Diagnostic-Code``); a third part returns
the original message or its headers, where crmkit's ``X-Crmkit-Send`` and ``Message-ID`` name
the send it is about. Status ``5.x.x`` is a hard bounce: the address is marked invalid and no
campaign sends to it again. ``4.x.x`` is a soft bounce: counted, and after ``soft_bounce_limit``
(default 3) of them the address is treated as invalid too.
"""

from __future__ import annotations

import datetime as dt
import email
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email import policy
from email.message import Message
from email.parser import BytesHeaderParser, HeaderParser
from typing import Any

import sqlalchemy as sa

from crmkit.core.actors import SYSTEM
from crmkit.core.events import Event
from crmkit.core.mail import mark_bounced
from plugins_contrib.email_campaigns import audience
from plugins_contrib.email_campaigns import tables as T

DEFAULT_SOFT_LIMIT = 3
_STATUS_RE = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_MBOX_SPLIT = re.compile(rb"^From [^\r\n]*\r?\n", re.MULTILINE)


@dataclass(frozen=True)
class Bounce:
    """One failed (or delayed) recipient of one DSN."""

    recipient: str
    status: str  # e.g. 5.1.1
    action: str  # failed | delayed | ...
    hard: bool
    diagnostic: str | None = None
    message_id: str | None = None  # Message-ID of the original message
    send_id: int | None = None  # crmkit's X-Crmkit-Send header of the original message


class NotADSN(ValueError):
    """The message is not a delivery status notification."""


def split_messages(data: bytes) -> list[bytes]:
    """One message, or the messages of an mbox file (``From `` separator lines)."""
    if not data.startswith(b"From "):
        return [data]
    parts = [p for p in _MBOX_SPLIT.split(data) if p.strip()]
    return [re.sub(rb"(?m)^>(>*From )", rb"\1", p) for p in parts]  # undo mboxrd quoting


def _field_blocks(part: Message) -> list[Message]:
    """The header blocks of a message/delivery-status part (the stdlib parses each into a Message)."""
    payload = part.get_payload()
    if isinstance(payload, list) and payload:
        return list(payload)
    text = part.get_payload(decode=True) or b""
    if isinstance(text, str):
        text = text.encode()
    blocks = re.split(rb"\r?\n\r?\n", text.strip())
    return [BytesHeaderParser(policy=policy.compat32).parsebytes(b + b"\n\n") for b in blocks if b.strip()]


def _original_headers(msg: Message) -> Message | None:
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype == "message/rfc822":
            inner = part.get_payload()
            if isinstance(inner, list) and inner:
                return inner[0]
        elif ctype == "text/rfc822-headers":
            text = part.get_payload(decode=True) or b""
            return HeaderParser(policy=policy.compat32).parsestr(text.decode("utf-8", "replace"))
    return None


def _address(value: str | None) -> str | None:
    if not value:
        return None
    value = str(value).strip()
    if ";" in value:
        value = value.split(";", 1)[1]  # "rfc822; user@example.com"
    return audience.normalize_email(value.strip().strip("<>"))


def parse_dsn(raw: bytes | str) -> list[Bounce]:
    """The bounced recipients of one DSN; NotADSN when the message has no delivery-status part."""
    data = raw.encode() if isinstance(raw, str) else raw
    msg = email.message_from_bytes(data, policy=policy.compat32)
    status_parts = [p for p in msg.walk() if p.get_content_type() == "message/delivery-status"]
    if not status_parts:
        raise NotADSN("no message/delivery-status part (not an RFC 3464 bounce)")
    original = _original_headers(msg)
    headers = original if original is not None else {}
    message_id = str(headers.get("Message-ID") or "").strip() or None
    send_header = str(headers.get("X-Crmkit-Send") or "").strip()
    send_id = int(send_header) if send_header.isdigit() else None
    out: list[Bounce] = []
    for part in status_parts:
        blocks = _field_blocks(part)
        for block in blocks[1:] if len(blocks) > 1 else blocks:
            recipient = _address(block.get("Final-Recipient")) or _address(block.get("Original-Recipient"))
            if recipient is None:
                continue
            action = str(block.get("Action") or "").strip().lower()
            m = _STATUS_RE.search(str(block.get("Status") or ""))
            if m is None:
                continue
            status = ".".join(m.groups())
            if m.group(1) == "2" or action in ("delivered", "relayed", "expanded"):
                continue  # a success notification, not a bounce
            hard = m.group(1) == "5" and action in ("failed", "")
            diagnostic = block.get("Diagnostic-Code")
            if diagnostic is not None:
                diagnostic = " ".join(str(diagnostic).split())
                if ";" in diagnostic[:12]:
                    diagnostic = diagnostic.split(";", 1)[1].strip()
            out.append(Bounce(recipient, status, action or "failed", hard, diagnostic, message_id, send_id))
    return out


def parse_many(data: bytes) -> Iterator[tuple[int, list[Bounce] | NotADSN]]:
    """``(index, bounces or NotADSN)`` for each message of ``data`` (a message or an mbox)."""
    for i, raw in enumerate(split_messages(data)):
        try:
            yield i, parse_dsn(raw)
        except NotADSN as exc:
            yield i, exc


def soft_limit(crm: Any) -> int:
    """Soft bounces after which an address counts as invalid (crmkit.yaml ``soft_bounce_limit``)."""
    return int(crm.config.section("email_campaigns").get("soft_bounce_limit", DEFAULT_SOFT_LIMIT))


def record_bounces(crm: Any, bounces: Iterable[Bounce], *, now: dt.datetime | None = None) -> dict[str, int]:
    """Store bounces: invalid addresses, the sends they belong to, the outbox status; counts by kind.

    One transaction for all of them; ``email.bounced`` events go to ``track_event`` after it.
    """
    now = now or dt.datetime.now(dt.UTC)
    counts = {"hard": 0, "soft": 0, "matched": 0}
    invalid = crm.system_tables[T.INVALID]
    send = crm.system_tables[T.SEND]
    events = crm.system_tables[T.EVENT]
    limit = soft_limit(crm)
    with crm.records.transaction(actor=SYSTEM, source="bounce") as tx:
        conn = tx.conn
        for b in bounces:
            audience.upsert_ignore(conn, invalid, {"email": b.recipient, "hard": False, "soft_count": 0, "at": now},
                                   ["email"])
            current = conn.execute(sa.select(invalid).where(invalid.c.email == b.recipient)).mappings().one()
            soft_count = current["soft_count"] + (0 if b.hard else 1)
            hard = bool(current["hard"]) or b.hard or soft_count >= limit
            conn.execute(sa.update(invalid).where(invalid.c.id == current["id"]).values(
                hard=hard, soft_count=soft_count, status=b.status, diagnostic=(b.diagnostic or "")[:2000] or None,
                at=now,
            ))
            counts["hard" if b.hard else "soft"] += 1
            row = _find_send(conn, send, b)
            if b.message_id:
                mark_bounced(crm, message_id=b.message_id, error=f"{b.status} {b.diagnostic or ''}".strip(),
                             conn=conn, now=now)
            if row is None:
                continue
            counts["matched"] += 1
            kind = "hard" if b.hard else "soft"
            if row["bounced_at"] is None or (b.hard and row["bounce_type"] != "hard"):
                conn.execute(sa.update(send).where(send.c.id == row["id"]).values(bounced_at=now, bounce_type=kind))
            conn.execute(sa.insert(events).values(
                campaign_id=row["campaign_id"], send_id=row["id"], type="bounce", at=now, flagged=False,
                detail=f"{kind} {b.status} {b.diagnostic or ''}".strip()[:2000],
            ))
            tx.events.append(Event("email.bounced", row["entity"], row["record_id"], SYSTEM,
                                   {"campaign_id": row["campaign_id"], "send_id": row["id"], "email": b.recipient,
                                    "hard": b.hard, "status": b.status}, "email_campaigns"))
    return counts


def _find_send(conn: sa.Connection, send: sa.Table, b: Bounce) -> dict[str, Any] | None:
    if b.send_id is not None:
        stmt = sa.select(send).where(send.c.id == b.send_id, send.c.email == b.recipient)
        row = conn.execute(stmt).mappings().first()
        if row is not None:
            return dict(row)
    stmt = sa.select(send).where(send.c.email == b.recipient, send.c.status == T.QUEUED)
    row = conn.execute(stmt.order_by(send.c.id.desc()).limit(1)).mappings().first()
    return dict(row) if row else None


def is_invalid(crm: Any, email_address: str) -> bool:
    """Whether campaigns skip ``email_address`` because it bounced."""
    invalid = crm.system_tables[T.INVALID]
    with crm.engine.connect() as conn:
        return conn.execute(
            sa.select(invalid.c.id).where(invalid.c.email == audience.normalize_email(email_address),
                                          invalid.c.hard.is_(True))
        ).first() is not None
