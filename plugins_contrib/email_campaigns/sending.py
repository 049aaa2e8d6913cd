"""Sending a campaign: the ``email_campaigns.send`` job, one batch per run.

Each run locks the campaign row, and then:

1. waits (re-enqueues itself) until ``send_at``, and outside the campaign's quiet hours;
2. on the first run, selects the recipients (the segment *at send time*) into send rows;
3. takes the next pending send rows within the hourly throttle, re-checks each against the
   opt-out and invalid-address lists, ``do_not_email`` and the ``campaign_should_send`` hooks,
   renders its message in the recipient's language and records it in the outbox with
   ``queue_mail(..., conn=conn)`` — in the same transaction that marks the send row ``queued``;
4. enqueues the next run, or marks the campaign ``sent`` when nobody is left.

The job runs in the worker's transaction (see :mod:`crmkit.core.jobs`): a crash rolls a batch back
as a whole, and the send row's uniqueness plus ``queue_mail``'s key (campaign + address) mean a
re-run or a second worker never sends a message twice. The SMTP delivery itself is the mail
core's job, which records each message's status in the outbox.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import math
import re
from collections.abc import Mapping
from email.utils import formataddr
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa

from crmkit.core.errors import NotFound
from crmkit.core.records import Tx
from crmkit.plugins import call_each
from plugins_contrib.email_campaigns import audience, links, render
from plugins_contrib.email_campaigns import tables as T

log = logging.getLogger(__name__)

JOB = "email_campaigns.send"
TICK = "email_campaigns.tick"
ENTITY = "email_campaign"
BATCH = 500
LIVE = ("scheduled", "sending")

FOOTER = {
    "en": ("You are receiving this email from {sender}. To stop receiving these emails, unsubscribe here:",
           "Unsubscribe"),
    "ja": ("このメールは {sender} からお送りしています。今後の配信を希望されない場合は、こちらから配信停止できます:",
           "配信停止"),
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def as_utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def job_now() -> dt.datetime:
    """The worker's clock for this run (tests run the worker "in the future" with ``now=``)."""
    from crmkit.core.jobs import current_job

    info = current_job()
    return as_utc(info.now) if info else utcnow()


# ---------------------------------------------------------------------------------------------
# Enqueueing runs
# ---------------------------------------------------------------------------------------------
def _key_prefix(campaign_id: int) -> str:
    return f"{JOB}:{campaign_id}:"


def live_job(crm: Any, conn: sa.Connection, campaign_id: int, *, besides: int | None = None) -> bool:
    """Whether a send run of this campaign is queued or running (other than job ``besides``)."""
    from crmkit.core import jobs

    tbl = jobs.table(crm)
    prefix = _key_prefix(campaign_id).replace("_", "\\_").replace("%", "\\%")
    stmt = sa.select(tbl.c.id).where(
        tbl.c.name == JOB, tbl.c.status.in_(("queued", "running")), tbl.c.key.like(prefix + "%", escape="\\")
    )
    if besides is not None:
        stmt = stmt.where(tbl.c.id != besides)
    return conn.execute(stmt.limit(1)).first() is not None


def kick(crm: Any, conn: sa.Connection, campaign_id: int, at: dt.datetime | None = None) -> int | None:
    """Enqueue a send run of the campaign at ``at`` (now) unless another run is already waiting."""
    from crmkit.core import jobs

    current = jobs.current_job()
    if live_job(crm, conn, campaign_id, besides=current.id if current else None):
        return None
    at = as_utc(at) or job_now()
    return jobs.enqueue(crm, JOB, {"campaign_id": campaign_id}, run_at=at,
                        key=f"{_key_prefix(campaign_id)}{at.isoformat()}", conn=conn)


def tick(crm: Any, payload: Mapping[str, Any], conn: sa.Connection) -> None:
    """Periodic job: restart the run chain of any due campaign that has none (the safety net)."""
    now = job_now()
    table = crm.table(ENTITY)
    rows = conn.execute(
        sa.select(table.c.id).where(
            table.c.status.in_(LIVE), sa.or_(table.c.send_at.is_(None), table.c.send_at <= now)
        )
    ).all()
    for (cid,) in rows:
        kick(crm, conn, cid, now)


# ---------------------------------------------------------------------------------------------
# Time windows
# ---------------------------------------------------------------------------------------------
def _zone(name: str | None) -> dt.tzinfo:
    try:
        return ZoneInfo(name) if name else dt.UTC
    except (ZoneInfoNotFoundError, ValueError):
        return dt.UTC


def _hm(value: str) -> dt.time:
    h, m = value.split(":")
    return dt.time(int(h), int(m))


def quiet_until(campaign: Mapping[str, Any], now: dt.datetime) -> dt.datetime | None:
    """When the campaign's quiet hours end, if ``now`` is inside them (else None).

    The window is local time in the campaign's time zone and may wrap midnight (21:00-08:00).
    """
    start, end = campaign.get("quiet_start"), campaign.get("quiet_end")
    if not start or not end or start == end:
        return None
    tz = _zone(campaign.get("time_zone"))
    local = now.astimezone(tz)
    s, e = _hm(start), _hm(end)
    t = local.time()
    inside = (s <= t < e) if s < e else (t >= s or t < e)
    if not inside:
        return None
    day = local.date() if t < e else local.date() + dt.timedelta(days=1)
    return dt.datetime.combine(day, e, tzinfo=tz).astimezone(dt.UTC)


def allowance(conn: sa.Connection, crm: Any, campaign: Mapping[str, Any], now: dt.datetime
              ) -> tuple[int, dt.datetime | None]:
    """How many messages may be queued now, and when the next run should be.

    Without a throttle: a full batch, next run at once. With ``throttle_per_hour`` N: at most N in
    any sliding hour, released a minute's share (N/60, at least 1) at a time so the sends spread
    over the hour instead of leaving in one burst.
    """
    limit = campaign.get("throttle_per_hour")
    if not limit:
        return BATCH, now
    send = crm.system_tables[T.SEND]
    hour_ago = now - dt.timedelta(hours=1)
    recent = conn.execute(
        sa.select(sa.func.count(), sa.func.min(send.c.queued_at)).where(
            send.c.campaign_id == campaign["id"], send.c.status == T.QUEUED, send.c.queued_at > hour_ago
        )
    ).one()
    left = int(limit) - int(recent[0])
    if left <= 0:
        return 0, as_utc(recent[1]) + dt.timedelta(hours=1, seconds=1)
    share = max(1, math.ceil(int(limit) / 60))
    return min(left, share, BATCH), now + dt.timedelta(minutes=1)


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------
def _lock(conn: sa.Connection, crm: Any, campaign_id: int) -> None:
    # Serialises runs of one campaign across workers (SQLite writers are serial anyway).
    if conn.dialect.name == "postgresql":
        table = crm.table(ENTITY)
        conn.execute(sa.select(table.c.id).where(table.c.id == campaign_id).with_for_update())


def send_step(crm: Any, payload: Mapping[str, Any], conn: sa.Connection) -> None:
    """Run one step of a campaign (the ``email_campaigns.send`` job handler)."""
    campaign_id = int(payload["campaign_id"])
    now = job_now()
    _lock(conn, crm, campaign_id)
    tx = crm.records.tx_for(conn)  # the worker's transaction: its record events fire after the commit
    try:
        campaign = tx.get(ENTITY, campaign_id)
    except NotFound:
        return
    if campaign["status"] not in LIVE:
        return  # paused, cancelled or finished since this run was enqueued
    send_at = as_utc(campaign.get("send_at"))
    if send_at and send_at > now:
        kick(crm, conn, campaign_id, send_at)
        return
    if campaign["status"] == "scheduled":
        campaign = start(crm, tx, campaign, now)
    wait = quiet_until(campaign, now)
    if wait is not None:
        kick(crm, conn, campaign_id, wait)
        return
    limit, next_at = allowance(conn, crm, campaign, now)
    if limit:
        queue_batch(crm, tx, campaign, limit, now)
    send = crm.system_tables[T.SEND]
    pending = conn.execute(
        sa.select(send.c.id).where(send.c.campaign_id == campaign_id, send.c.status == T.PENDING).limit(1)
    ).first()
    if pending is None:
        tx.update(ENTITY, campaign_id, {"status": "sent", "finished_at": now})
    else:
        kick(crm, conn, campaign_id, next_at)


def start(crm: Any, tx: Tx, campaign: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    """Select the recipients (the segment as it is now) and mark the campaign ``sending``."""
    conn = tx.conn
    segment = tx.get("email_segment", campaign["segment"])
    excluded = [tx.get("email_segment", item["id"]) for item in campaign.get("exclude_segments") or []]
    owner = tx.get("user", campaign["owner"]) if campaign.get("owner") else None
    params = audience.segment_params(owner, now)
    stmt = audience.selection(
        crm, segment["audience"], segment["condition"], [s["condition"] for s in excluded], params
    )
    count = audience.materialize(conn, crm, campaign["id"], segment["audience"], stmt, now)
    return tx.update(ENTITY, campaign["id"], {"status": "sending", "started_at": now, "recipient_count": count})


# ---------------------------------------------------------------------------------------------
# One batch
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Batch:
    """What one batch shares: the campaign, its links, the people involved."""

    crm: Any
    conn: sa.Connection
    campaign: dict[str, Any]
    entity: str
    now: dt.datetime
    links: dict[str, int] = dataclasses.field(default_factory=dict)
    users: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)


def queue_batch(crm: Any, tx: Tx, campaign: dict[str, Any], limit: int, now: dt.datetime) -> int:
    """Queue up to ``limit`` pending messages of the campaign; returns how many were queued."""
    from crmkit.core.mail import queue_many

    conn = tx.conn
    send = crm.system_tables[T.SEND]
    stmt = (
        sa.select(send).where(send.c.campaign_id == campaign["id"], send.c.status == T.PENDING)
        .order_by(send.c.id).limit(limit)
    )
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    rows = [dict(r) for r in conn.execute(stmt).mappings()]
    if not rows:
        return 0
    entity = rows[0]["entity"]
    batch = _Batch(crm, conn, campaign, entity, now, links=_load_links(conn, crm, campaign["id"]))
    records = _records(conn, crm, rows)
    emails = [r["email"] for r in rows]
    blocked = _blocked(conn, crm, emails)
    merge_hooks = merge_field_hooks(crm, entity)
    updates: list[dict[str, Any]] = []
    outgoing: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (send row update, message), queued below at once
    for row in rows:
        record = records.get((row["entity"], row["record_id"]))
        reason = _skip_reason(crm, conn, campaign, row, record, blocked)
        if reason is None:
            try:
                message = build_message(batch, row, record, merge_hooks)
            except render.TemplateProblem as exc:
                reason = f"template error: {exc}"[:200]
        if reason is not None:
            updates.append({"_id": row["id"], "_status": T.SKIPPED, "_reason": reason, "_outbox": None,
                            "_queued": None})
            continue
        update = {"_id": row["id"], "_status": T.QUEUED, "_reason": None, "_outbox": None, "_queued": now}
        outgoing.append((update, {
            "to": row["email"], "subject": message["subject"], "text": message["text"], "html": message["html"],
            "headers": message["headers"], "key": f"email_campaigns:send:{row['id']}", "sender": message["sender"],
            "campaign_id": campaign["id"], "send_id": row["id"],
        }))
        updates.append(update)
    # One outbox insert and one job insert for the whole batch (queue_mail per message was most of the
    # queueing time); the keys keep it idempotent as before.
    for (update, _message), outbox_id in zip(outgoing, queue_many(crm, [m for _u, m in outgoing], conn=conn),
                                              strict=True):
        update["_outbox"] = outbox_id
    conn.execute(
        sa.update(send).where(send.c.id == sa.bindparam("_id")).values(
            status=sa.bindparam("_status"), skip_reason=sa.bindparam("_reason"),
            outbox_id=sa.bindparam("_outbox"), queued_at=sa.bindparam("_queued"),
        ),
        updates,
    )
    return len(outgoing)


def _records(conn: sa.Connection, crm: Any, rows: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    out: dict[tuple[str, int], dict[str, Any]] = {}
    by_entity: dict[str, list[int]] = {}
    for r in rows:
        by_entity.setdefault(r["entity"], []).append(r["record_id"])
    for entity, ids in by_entity.items():
        table = crm.table(entity)
        for rec in conn.execute(sa.select(table).where(table.c.id.in_(ids))).mappings():
            out[(entity, rec["id"])] = dict(rec)
    return out


def _blocked(conn: sa.Connection, crm: Any, emails: list[str]) -> dict[str, str]:
    optout = crm.system_tables[T.OPTOUT]
    invalid = crm.system_tables[T.INVALID]
    out: dict[str, str] = {}
    for (email,) in conn.execute(sa.select(invalid.c.email).where(invalid.c.email.in_(emails),
                                                                  invalid.c.hard.is_(True))):
        out[email] = "invalid address (bounced)"
    for (email,) in conn.execute(sa.select(optout.c.email).where(optout.c.email.in_(emails))):
        out[email] = "unsubscribed"
    return out


def _skip_reason(crm: Any, conn: sa.Connection, campaign: dict[str, Any], row: dict[str, Any],
                 record: dict[str, Any] | None, blocked: dict[str, str]) -> str | None:
    if row["email"] in blocked:
        return blocked[row["email"]]
    if record is None:
        return "record deleted"
    if record.get(audience.OPT_OUT_FIELD):
        return "do not email"
    if audience.normalize_email(record.get("email")) != row["email"]:
        return "address changed since the campaign started"
    for plugin, ok in call_each(crm.pm, "campaign_should_send", crm=crm, campaign=campaign,
                                entity=row["entity"], record=record, conn=conn):
        if ok is False:
            return f"refused by plugin {plugin}"
    return None


# ---------------------------------------------------------------------------------------------
# Building one message
# ---------------------------------------------------------------------------------------------
def variant(campaign: Mapping[str, Any], language: str | None) -> tuple[str, str, str | None, str | None] | None:
    """``(language, subject, html, text)`` for a recipient: their language if the campaign has it,
    else the campaign's default language, else whichever exists; None when there is no content."""
    for lang in (language, campaign.get("default_language"), "en", "ja"):
        if lang not in ("en", "ja"):
            continue
        subject, html, text = (campaign.get(f"{k}_{lang}") for k in ("subject", "html", "text"))
        if subject and (html or text):
            return lang, subject, html or None, text or None
    return None


def merge_field_hooks(crm: Any, entity: str) -> dict[str, Any]:
    """``{name: callable(crm, record, conn)}`` from every ``campaign_merge_fields`` hook."""
    out: dict[str, Any] = {}
    for _plugin, fields in call_each(crm.pm, "campaign_merge_fields", crm=crm, entity=entity):
        out.update(fields)
    return out


def recipient_fields(crm: Any, entity: str) -> list[str]:
    """The ``recipient.x`` merge fields of an audience entity: its fields (no passwords, no lists)."""
    ent = crm.catalog[entity]
    return ["id"] + [f.name for f in ent.user_fields if not f.is_many and f.type != "password"]


def recipient_values(conn: sa.Connection, crm: Any, entity: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """A record as merge fields: references become the referenced record's title."""
    ent = crm.catalog[entity]
    out: dict[str, Any] = {"id": record.get("id")}
    for f in ent.user_fields:
        if f.is_many or f.type == "password":
            continue
        value = record.get(f.name)
        if f.is_reference and value is not None:
            value = _title(conn, crm, f.to, value)
        out[f.name] = value
    return out


def _title(conn: sa.Connection, crm: Any, entity: str, id: int) -> str:
    ent = crm.catalog[entity]
    table = crm.table(entity)
    col = table.c[ent.title_field] if ent.title_field in table.c else table.c.id
    value = conn.execute(sa.select(col).where(table.c.id == id)).scalar_one_or_none()
    return str(value) if value not in (None, "") else f"#{id}"


def _user(batch: _Batch, user_id: int | None) -> dict[str, Any]:
    if user_id is None:
        return {}
    if user_id not in batch.users:
        table = batch.crm.table("user")
        row = batch.conn.execute(sa.select(table).where(table.c.id == user_id)).mappings().first()
        user = dict(row) if row else {}
        batch.users[user_id] = {
            "id": user.get("id"), "display_name": user.get("display_name"), "name": user.get("display_name"),
            "email": user.get("email"), "username": user.get("username"),
        }
    return batch.users[user_id]


def _load_links(conn: sa.Connection, crm: Any, campaign_id: int) -> dict[str, int]:
    link = crm.system_tables[T.LINK]
    rows = conn.execute(sa.select(link.c.url, link.c.id).where(link.c.campaign_id == campaign_id))
    return {url: id for url, id in rows}


def link_id(batch: _Batch, url: str) -> int:
    """The id of a campaign link (created on first use; unique per campaign and URL)."""
    if url not in batch.links:
        link = batch.crm.system_tables[T.LINK]
        digest = hashlib.sha256(url.encode()).hexdigest()
        values = {"campaign_id": batch.campaign["id"], "url_hash": digest, "url": url}
        audience.upsert_ignore(batch.conn, link, values, ["campaign_id", "url_hash"])
        batch.links[url] = batch.conn.execute(
            sa.select(link.c.id).where(link.c.campaign_id == batch.campaign["id"], link.c.url_hash == digest)
        ).scalar_one()
    return batch.links[url]


def sender_address(crm: Any, campaign: Mapping[str, Any]) -> str | None:
    """``From`` of the campaign: its own name/address, else the SMTP sender of crmkit.yaml."""
    address = campaign.get("from_email") or crm.config.smtp.get("sender")
    if not address:
        return None
    return formataddr((campaign.get("from_name") or "", address)) if campaign.get("from_name") else address


def list_unsubscribe(crm: Any, url: str) -> str:
    """The ``List-Unsubscribe`` value: the one-click URL, plus a mailto: when configured."""
    mailto = crm.config.section("email_campaigns").get("unsubscribe_mailto")
    value = f"<{url}>"
    if mailto:
        token = url.rsplit("/", 1)[-1]
        value += f", <mailto:{mailto}?subject=unsubscribe%20{token}>"
    return value


def build_message(batch: _Batch, row: Mapping[str, Any], record: Mapping[str, Any],
                  merge_hooks: Mapping[str, Any]) -> dict[str, Any]:
    """Subject, HTML, text and headers of one recipient's message (tracked links, pixel, footer)."""
    crm, campaign = batch.crm, batch.campaign
    chosen = variant(campaign, row.get("language") or record.get("language"))
    if chosen is None:
        raise render.TemplateProblem("the campaign has no subject and body")
    lang, subject, html, text = chosen
    unsubscribe = links.unsubscribe_url(crm, send_id=row["id"])
    context: dict[str, Any] = {
        "recipient": recipient_values(batch.conn, crm, row["entity"], record),
        "owner": _user(batch, record.get("owner")),
        "campaign": {"id": campaign["id"], "name": campaign["name"]},
        "unsubscribe_url": unsubscribe,
        "language": lang,
    }
    for name, fn in merge_hooks.items():
        context[name] = fn(crm=crm, record=record, conn=batch.conn)
    out = render.render_message(subject, html, text, context)
    sender = campaign.get("from_name") or campaign.get("from_email") or crm.config.smtp.get("sender") or ""
    html_out, text_out = out.html, out.text
    if html and not render.uses_name(html, "unsubscribe_url"):
        html_out = _html_footer(html_out or "", lang, sender, unsubscribe)
    if not render.uses_name(text or html or "", "unsubscribe_url"):
        text_out = _text_footer(text_out, lang, sender, unsubscribe)
    unsubscribe_prefix = f"{links.base_url(crm)}/t/"

    def track(url: str) -> str | None:
        if url.startswith(unsubscribe_prefix):
            return None  # our own links (unsubscribe) are never wrapped
        return links.click_url(crm, row["id"], link_id(batch, url))

    if html_out:
        html_out = render.rewrite_html_links(html_out, track)
        html_out = _pixel(html_out, links.open_url(crm, row["id"]))
    text_out = render.rewrite_text_links(text_out, track)
    headers = {
        "List-Unsubscribe": list_unsubscribe(crm, unsubscribe),
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        "X-Crmkit-Campaign": str(campaign["id"]),
        "X-Crmkit-Send": str(row["id"]),
        "Precedence": "bulk",
    }
    if campaign.get("reply_to"):
        headers["Reply-To"] = campaign["reply_to"]
    return {"subject": out.subject, "html": html_out, "text": text_out, "headers": headers, "language": lang,
            "sender": sender_address(crm, campaign)}


def _html_footer(html: str, lang: str, sender: str, url: str) -> str:
    import html as htmllib

    text, label = FOOTER[lang]
    footer = (
        f'<p style="font-size:12px;color:#6b7280">{htmllib.escape(text.format(sender=sender))} '
        f'<a href="{htmllib.escape(url, quote=True)}">{htmllib.escape(label)}</a></p>'
    )
    return _before_body_end(html, footer)


def _text_footer(text: str, lang: str, sender: str, url: str) -> str:
    line, _label = FOOTER[lang]
    return text.rstrip("\n") + f"\n\n--\n{line.format(sender=sender)}\n{url}\n"


def _pixel(html: str, url: str) -> str:
    import html as htmllib

    img = f'<img src="{htmllib.escape(url, quote=True)}" width="1" height="1" alt="" style="display:block;border:0">'
    return _before_body_end(html, img)


_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)


def _before_body_end(html: str, snippet: str) -> str:
    matches = list(_BODY_END.finditer(html))
    if not matches:
        return html + snippet
    at = matches[-1].start()
    return html[:at] + snippet + html[at:]
