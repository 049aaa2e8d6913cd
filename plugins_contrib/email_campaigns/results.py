"""A campaign's results: delivery, engagement and the money it brought, in a few aggregate queries.

Engagement counts people, not events: ``opened`` is the number of sends with at least one open not
flagged as a machine's (privacy proxies, scanners); flagged ones are shown apart. Business results
are attributed through the campaign's marketing activity: the leads whose ``marketing_activity``
is it, and the won deals that either name it or were converted from those leads. ROI compares that
won revenue with the activity's cost (``(revenue - cost) / cost``).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from crmkit.core.mail import outbox_table
from plugins_contrib.email_campaigns import tables as T


def _rate(part: int, whole: int) -> Decimal | None:
    if not whole:
        return None
    return (Decimal(part) * 100 / Decimal(whole)).quantize(Decimal("0.1"))


def campaign_results(crm: Any, campaign: dict[str, Any]) -> dict[str, Any]:
    """Numbers of one campaign (counts, rates in %, revenue, cost, ROI, links)."""
    cid = campaign["id"]
    send = crm.system_tables[T.SEND]
    event = crm.system_tables[T.EVENT]
    link = crm.system_tables[T.LINK]
    outbox = outbox_table(crm)
    count = sa.func.count
    with crm.engine.connect() as conn:
        row = conn.execute(
            sa.select(
                count().label("recipients"),
                count().filter(send.c.status == T.PENDING).label("pending"),
                count().filter(send.c.status == T.SKIPPED).label("skipped"),
                count().filter(send.c.status == T.QUEUED).label("queued"),
                count().filter(outbox.c.status.in_(("sent", "bounced"))).label("sent"),
                count().filter(outbox.c.status == "failed").label("failed"),
                count().filter(send.c.opened_at.is_not(None)).label("opened"),
                count().filter(send.c.clicked_at.is_not(None)).label("clicked"),
                count().filter(send.c.unsubscribed_at.is_not(None)).label("unsubscribed"),
                count().filter(send.c.bounced_at.is_not(None)).label("bounced"),
                count().filter(send.c.bounce_type == "hard").label("hard_bounced"),
            )
            .select_from(send.outerjoin(outbox, outbox.c.id == send.c.outbox_id))
            .where(send.c.campaign_id == cid)
        ).mappings().one()
        out: dict[str, Any] = dict(row)
        machine = conn.execute(
            sa.select(count(sa.distinct(event.c.send_id))).where(
                event.c.campaign_id == cid, event.c.type == "open", event.c.flagged.is_(True)
            )
        ).scalar_one()
        out["machine_opens"] = machine
        reasons = conn.execute(
            sa.select(send.c.skip_reason, count()).where(send.c.campaign_id == cid, send.c.status == T.SKIPPED)
            .group_by(send.c.skip_reason).order_by(count().desc()).limit(10)
        ).all()
        out["skip_reasons"] = [{"reason": r or "", "count": n} for r, n in reasons]
        clicks = conn.execute(
            sa.select(
                link.c.url,
                count(sa.distinct(event.c.send_id)).filter(event.c.flagged.is_(False)).label("people"),
                count(event.c.id).label("total"),
            )
            .select_from(link.join(event, sa.and_(event.c.link_id == link.c.id, event.c.type == "click")))
            .where(link.c.campaign_id == cid)
            .group_by(link.c.url)
            .order_by(sa.desc("people"), link.c.url)
            .limit(20)
        ).mappings().all()
        out["links"] = [dict(c) for c in clicks]
        out.update(_business(conn, crm, campaign))
    delivered = max(0, out["sent"] - out["bounced"])
    out["delivered"] = delivered
    out["open_rate"] = _rate(out["opened"], delivered)
    out["click_rate"] = _rate(out["clicked"], delivered)
    out["click_to_open_rate"] = _rate(out["clicked"], out["opened"])
    out["unsubscribe_rate"] = _rate(out["unsubscribed"], delivered)
    out["bounce_rate"] = _rate(out["bounced"], out["sent"])
    return out


def _business(conn: sa.Connection, crm: Any, campaign: dict[str, Any]) -> dict[str, Any]:
    activity_id = campaign.get("marketing_activity")
    out: dict[str, Any] = {"leads_created": 0, "won_deals": 0, "won_revenue": Decimal(0), "cost": None, "roi": None}
    if activity_id is None:
        return out
    lead = crm.table("lead")
    deal = crm.table("deal")
    activity = crm.table("marketing_activity")
    out["leads_created"] = conn.execute(
        sa.select(sa.func.count()).select_from(lead).where(lead.c.marketing_activity == activity_id)
    ).scalar_one()
    from_leads = sa.select(lead.c.converted_deal).where(
        lead.c.marketing_activity == activity_id, lead.c.converted_deal.is_not(None)
    )
    won = conn.execute(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(deal.c.amount), 0)).where(
            deal.c.status == "won",
            sa.or_(deal.c.marketing_activity == activity_id, deal.c.id.in_(from_leads)),
        )
    ).one()
    out["won_deals"], out["won_revenue"] = int(won[0]), Decimal(won[1] or 0)
    cost = conn.execute(sa.select(activity.c.cost).where(activity.c.id == activity_id)).scalar_one_or_none()
    out["cost"] = Decimal(cost) if cost is not None else None
    if out["cost"]:
        out["roi"] = ((out["won_revenue"] - out["cost"]) * 100 / out["cost"]).quantize(Decimal("0.1"))
    return out


def record_history(crm: Any, entity: str, record_id: int, limit: int = 20) -> list[dict[str, Any]]:
    """The campaigns a lead or contact received, newest first (for its 360° page)."""
    send = crm.system_tables[T.SEND]
    campaign = crm.table("email_campaign")
    with crm.engine.connect() as conn:
        rows = conn.execute(
            sa.select(send, campaign.c.name.label("campaign_name"))
            .select_from(send.join(campaign, campaign.c.id == send.c.campaign_id))
            .where(send.c.entity == entity, send.c.record_id == record_id)
            .order_by(send.c.id.desc()).limit(limit)
        ).mappings().all()
    return [dict(r) for r in rows]


def suppression_status(crm: Any, address: str | None) -> dict[str, Any]:
    """Whether an address is opted out or invalid, with when and why."""
    from plugins_contrib.email_campaigns.audience import normalize_email

    email = normalize_email(address)
    if email is None:
        return {"optout": None, "invalid": None}
    optout = crm.system_tables[T.OPTOUT]
    invalid = crm.system_tables[T.INVALID]
    with crm.engine.connect() as conn:
        o = conn.execute(sa.select(optout).where(optout.c.email == email)).mappings().first()
        i = conn.execute(sa.select(invalid).where(invalid.c.email == email)).mappings().first()
    return {"optout": dict(o) if o else None, "invalid": dict(i) if i else None}
