"""The campaign plugin's own tables: per-recipient sends, tracked links, events and suppression lists.

They are ledgers the plugin writes, not records users edit, so they are defined through the
``register_tables`` hook (created and altered by ``crmkit migrate``) rather than as entities.
"""

from __future__ import annotations

import sqlalchemy as sa

SEND = "email_campaigns_send"
LINK = "email_campaigns_link"
EVENT = "email_campaigns_event"
OPTOUT = "email_campaigns_optout"
INVALID = "email_campaigns_invalid"

TABLES = (SEND, LINK, EVENT, OPTOUT, INVALID)

# Status of one recipient of a campaign.
PENDING, QUEUED, SKIPPED = "pending", "queued", "skipped"


def _when(name: str, **kw) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), **kw)


def define_tables(md: sa.MetaData) -> list[sa.Table]:
    """Add the plugin's tables to ``md`` (crm.metadata) and return them."""
    send = sa.Table(
        SEND,
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("campaign_id", sa.Integer, nullable=False),
        # Where the recipient lives now: moves from the lead to the contact on conversion.
        sa.Column("entity", sa.String(63), nullable=False),
        sa.Column("record_id", sa.Integer, nullable=False),
        sa.Column("email", sa.String(254), nullable=False),  # lower-cased: one send per address
        sa.Column("language", sa.String(8)),
        sa.Column("status", sa.String(16), nullable=False, default=PENDING),
        sa.Column("skip_reason", sa.String(200)),
        sa.Column("outbox_id", sa.Integer),
        _when("created_at", nullable=False),
        _when("queued_at"),
        _when("opened_at"),  # first open not flagged as a machine
        _when("clicked_at"),  # first click not flagged as a machine
        _when("unsubscribed_at"),
        _when("bounced_at"),
        sa.Column("bounce_type", sa.String(8)),  # hard | soft
        # The per-recipient idempotency key: a re-run or a second worker never sends twice.
        sa.UniqueConstraint("campaign_id", "email", name="uq_email_campaigns_send_recipient"),
        sa.Index("ix_email_campaigns_send_status", "campaign_id", "status"),
        sa.Index("ix_email_campaigns_send_record", "entity", "record_id"),
        sa.Index("ix_email_campaigns_send_email", "email"),
    )
    link = sa.Table(
        LINK,
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("campaign_id", sa.Integer, nullable=False),
        sa.Column("url_hash", sa.String(64), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.UniqueConstraint("campaign_id", "url_hash", name="uq_email_campaigns_link_url"),
    )
    event = sa.Table(
        EVENT,
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("campaign_id", sa.Integer, nullable=False),
        sa.Column("send_id", sa.Integer),
        sa.Column("type", sa.String(16), nullable=False),  # open | click | unsubscribe | bounce
        _when("at", nullable=False),
        sa.Column("link_id", sa.Integer),
        sa.Column("user_agent", sa.String(500)),
        sa.Column("flagged", sa.Boolean, nullable=False, default=False),
        sa.Column("flag_reason", sa.String(100)),
        sa.Column("detail", sa.Text),
        sa.Index("ix_email_campaigns_event_campaign", "campaign_id", "type"),
        sa.Index("ix_email_campaigns_event_send", "send_id"),
    )
    optout = sa.Table(
        OPTOUT,
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("email", sa.String(254), nullable=False, unique=True),
        sa.Column("reason", sa.String(32), nullable=False),  # unsubscribe | one_click | manual | complaint
        sa.Column("campaign_id", sa.Integer),
        _when("at", nullable=False),
    )
    invalid = sa.Table(
        INVALID,
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("email", sa.String(254), nullable=False, unique=True),
        sa.Column("hard", sa.Boolean, nullable=False, default=False),  # true: never send again
        sa.Column("soft_count", sa.Integer, nullable=False, default=0),
        sa.Column("status", sa.String(16)),  # the last DSN status code, e.g. 5.1.1
        sa.Column("diagnostic", sa.Text),
        _when("at", nullable=False),
    )
    return [send, link, event, optout, invalid]
