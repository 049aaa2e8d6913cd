"""Handling a submission: signed form token, honeypot, per-IP rate limit, record, auto-reply.

Nothing here needs a session. The form carries a token signed with the CRM's secret (salt per
purpose) naming the form and when it was shown; a post without a valid, recent token is refused.
A filled-in honeypot field (invisible to people) gets the thank-you page and creates nothing, so
bots learn nothing. The rate limit counts submissions per client address (hashed, never stored in
clear) and form in the database, so it holds across worker processes and servers.

The record is created through RecordStore as the system, with ``source="web"`` — validation,
scoring and assignment hooks run as for any other lead — and the auto-reply is queued in the
outbox in the same transaction, in the lead's language.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from itsdangerous import BadData, URLSafeTimedSerializer

from crmkit.core.actors import SYSTEM
from crmkit.core.db import write_connection
from crmkit.core.errors import ValidationError
from plugins_contrib.email_campaigns import render
from plugins_contrib.web_forms.definitions import WebForm, text_of

SUBMISSIONS = "web_forms_submission"
TOKEN_SALT = "crmkit.web_forms.form"
TOKEN_MAX_AGE = 24 * 3600
HONEYPOT = "website_url_2"  # a plausible name bots fill in; people never see the field
LANGUAGE_FIELD = "language"


def define_tables(md: sa.MetaData) -> list[sa.Table]:
    """The submissions ledger (rate limit and statistics)."""
    return [sa.Table(
        SUBMISSIONS,
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("form", sa.String(63), nullable=False),
        sa.Column("client", sa.String(64), nullable=False),  # HMAC of the client address
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),  # created | invalid | spam | limited
        sa.Column("record_id", sa.Integer),
        sa.Index("ix_web_forms_submission_client", "form", "client", "at"),
        sa.Index("ix_web_forms_submission_at", "at"),
    )]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# ---------------------------------------------------------------------------------------------
# Tokens and clients
# ---------------------------------------------------------------------------------------------
def _serializer(crm: Any) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(crm.secret_key, salt=TOKEN_SALT)


def form_token(crm: Any, form: WebForm) -> str:
    """The signed token a form page embeds (names the form; its timestamp limits its age)."""
    return _serializer(crm).dumps({"f": form.slug})


def token_ok(crm: Any, form: WebForm, token: str | None) -> bool:
    """Whether ``token`` was issued by us for this form within the last day."""
    if not token:
        return False
    try:
        data = _serializer(crm).loads(token, max_age=TOKEN_MAX_AGE)
    except BadData:
        return False
    return isinstance(data, dict) and data.get("f") == form.slug


def client_key(crm: Any, address: str | None) -> str:
    """A keyed hash of the client's address: enough to count, useless to anyone who reads the table."""
    return hmac.new(crm.secret_key.encode(), (address or "unknown").encode(), hashlib.sha256).hexdigest()


def _log(conn: sa.Connection, crm: Any, form: WebForm, client: str, outcome: str, now: dt.datetime,
         record_id: int | None = None) -> None:
    conn.execute(sa.insert(crm.system_tables[SUBMISSIONS]).values(
        form=form.slug, client=client, at=now, outcome=outcome, record_id=record_id))


def over_limit(conn: sa.Connection, crm: Any, form: WebForm, client: str, now: dt.datetime) -> bool:
    """Whether this client already submitted ``per_ip`` times within the form's window."""
    t = crm.system_tables[SUBMISSIONS]
    since = now - dt.timedelta(seconds=form.window_seconds)
    n = conn.execute(
        sa.select(sa.func.count()).select_from(
            sa.select(t.c.id).where(t.c.form == form.slug, t.c.client == client, t.c.at > since,
                                    t.c.outcome != "limited").limit(form.per_ip).subquery()
        )
    ).scalar_one()
    return n >= form.per_ip


# ---------------------------------------------------------------------------------------------
# Submitting
# ---------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """What happened to a submission: ``created`` (record), ``invalid`` (errors), ``spam``, ``limited``."""

    status: str
    record: dict[str, Any] | None = None
    errors: dict[str, str] = field(default_factory=dict)
    values: dict[str, str] = field(default_factory=dict)


def form_values(form: WebForm, data: Mapping[str, Any], kinds: Mapping[str, str]) -> dict[str, Any]:
    """The posted values of the form's fields (trimmed strings; multi-selects as lists)."""
    out: dict[str, Any] = {}
    for f in form.fields:
        if kinds.get(f.name) == "multi_enum" and hasattr(data, "getlist"):
            out[f.name] = [v for v in data.getlist(f.name) if isinstance(v, str) and v]
            continue
        raw = data.get(f.name)
        out[f.name] = raw.strip() if isinstance(raw, str) else None
    return out


def submit(crm: Any, form: WebForm, data: Mapping[str, Any], *, client_address: str | None, lang: str,
           now: dt.datetime | None = None) -> Outcome:
    """Process one posted form (token already checked by the caller)."""
    now = now or utcnow()
    client = client_key(crm, client_address)
    ent = crm.catalog[form.entity]
    kinds = {f.name: ent.fields[f.name].type for f in form.fields}
    values = form_values(form, data, kinds)
    with write_connection(crm.engine) as conn, conn.begin():
        if over_limit(conn, crm, form, client, now):
            _log(conn, crm, form, client, "limited", now)
            return Outcome("limited", values=values)
        if data.get(HONEYPOT):
            _log(conn, crm, form, client, "spam", now)
            return Outcome("spam")
    errors: dict[str, str] = {}
    record_values: dict[str, Any] = dict(form.values)
    for f in form.fields:
        value = values.get(f.name)
        if kinds[f.name] == "boolean":
            value = bool(value) and value not in ("0", "false", "off")
        empty = value in (None, "", [])
        if f.required and (empty or (kinds[f.name] == "boolean" and not value)):
            errors[f.name] = "required"
        if not empty:
            record_values[f.name] = value
    if form.data.get("consent") and not data.get("_consent"):
        errors["_consent"] = "consent"
    if LANGUAGE_FIELD in ent.fields and LANGUAGE_FIELD not in record_values:
        record_values[LANGUAGE_FIELD] = lang
    if errors:
        return _invalid(crm, form, client, now, errors, values)
    try:
        with crm.records.transaction(actor=SYSTEM, source="web") as tx:
            record = tx.create(form.entity, record_values)
            _log(tx.conn, crm, form, client, "created", now, record["id"])
            queue_auto_reply(crm, form, record, lang, tx.conn)
    except ValidationError as exc:
        for e in exc.errors:
            name = e.get("field") or ""
            errors[name if name in kinds else ""] = e["message"]
        return _invalid(crm, form, client, now, errors, values)
    return Outcome("created", record=record)


def _invalid(crm: Any, form: WebForm, client: str, now: dt.datetime, errors: dict[str, str],
             values: dict[str, Any]) -> Outcome:
    with write_connection(crm.engine) as conn, conn.begin():
        _log(conn, crm, form, client, "invalid", now)
    return Outcome("invalid", errors=errors, values=values)


def reply_language(record: Mapping[str, Any], lang: str) -> str:
    """The lead's language when it has one, else the language the form was shown in."""
    value = record.get(LANGUAGE_FIELD)
    return value if value in ("en", "ja") else lang


def queue_auto_reply(crm: Any, form: WebForm, record: Mapping[str, Any], lang: str, conn: sa.Connection) -> int | None:
    """Queue the form's auto-reply to the new record's address (in its language), if configured."""
    reply = form.data.get("auto_reply")
    email = record.get("email")
    if not reply or not email:
        return None
    from crmkit.core.mail import queue_mail

    lang = reply_language(record, lang)
    ent = crm.catalog[form.entity]
    recipient = {"id": record.get("id")}
    recipient.update({f.name: record.get(f.name) for f in ent.user_fields if not f.is_many and f.type != "password"})
    context = {"recipient": recipient, "form": {"slug": form.slug, "title": form.text("title", lang, form.slug)}}
    html = text_of(reply.get("html"), lang) or None
    text = text_of(reply.get("text"), lang) or None
    message = render.render_message(text_of(reply.get("subject"), lang), html, text, context)
    headers = {"Auto-Submitted": "auto-replied"}
    if reply.get("reply_to"):
        headers["Reply-To"] = reply["reply_to"]
    return queue_mail(
        crm, to=email, subject=message.subject, text=message.text, html=message.html, headers=headers,
        sender=reply.get("sender"), key=f"web_forms:{form.slug}:{form.entity}:{record['id']}", conn=conn,
        web_form=form.slug, entity=form.entity, record_id=record["id"],
    )


def prune(crm: Any, *, now: dt.datetime | None = None, keep_days: float = 30) -> int:
    """Delete submission log rows older than ``keep_days`` (the rate limit needs only the window)."""
    now = now or utcnow()
    t = crm.system_tables[SUBMISSIONS]
    with write_connection(crm.engine) as conn, conn.begin():
        return conn.execute(sa.delete(t).where(t.c.at < now - dt.timedelta(days=keep_days))).rowcount
