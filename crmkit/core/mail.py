"""Outgoing mail: an outbox table, a send job per message, and a pluggable transport.

Every message is recorded in ``crmkit_mail_outbox`` (status ``queued``) before anything is sent,
in the caller's transaction when one is given — so a message exists if and only if the write that
caused it committed. A ``mail.send`` job then delivers it through the transport returned by the
``mail_transport`` hook (SMTP, :mod:`crmkit.core.smtp`, is the built-in trylast default).

Sending once, even when workers crash
-------------------------------------
A message moves ``queued → sending → sent`` (or ``failed``; ``bounced`` when a bounce arrives
later). The transport calls ``confirm()`` right before its point of no return — for SMTP, before
writing the final ``.`` of the DATA command, which is what makes the server accept the message.
``confirm()`` commits ``sent``. So:

- a worker killed before ``confirm()`` leaves the message ``sending`` with an expired lease; the
  server never got the final dot and discarded it, so the next attempt may safely send it again;
- a worker killed after ``confirm()`` finds ``sent`` on the next attempt and sends nothing.

The only unsafe moment is between that commit and one socket write: a worker killed there has
recorded a message the server never took (lost, never sent twice). The connection for that commit
is taken before the send and given back after it, so the commit's own answer is all that stands in
that moment; ``locked_by`` keeps the worker that sent a message. A server that refuses a
command (4xx), disconnects or cannot be reached leaves the message ``queued`` for the job's
retries with backoff; a permanent refusal (5xx) marks it ``failed`` with the server's answer.

Throughput: the ``mail.send`` jobs of a claimed batch are one call of :func:`deliver_many`, which
claims their outbox rows in one statement (:func:`crmkit.core.jobs.claim_leased`) and sends them
over the transport's open connection; each message keeps its own ``confirm()`` commit (one
autocommitted statement on PostgreSQL). With ``jobs.async_commit: true`` (opt-in; off by default,
so a message is never sent twice) those commits do not wait for PostgreSQL's WAL flush: a *worker*
crash loses nothing, and a *database server*
crash within a fraction of a second of a ``sent`` commit can only make that message ``sending``
again, so it is sent a second time with the same ``Message-ID`` (at least once, never lost) —
receivers and the bounce handling recognise it by that header.
"""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import logging
import re
from collections.abc import Callable
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime, getaddresses, make_msgid, parseaddr
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol
from urllib.parse import urlsplit

import sqlalchemy as sa

from crmkit.core import jobs, mime
from crmkit.core.db import count_by, newest_rows, write_connection
from crmkit.core.jobs import as_utc, insert_ignoring_conflict, utcnow

if TYPE_CHECKING:
    from crmkit.app import CRM

log = logging.getLogger(__name__)

OUTBOX_TABLE = "crmkit_mail_outbox"
SEND_JOB = "mail.send"
STATUSES = ("queued", "sending", "sent", "failed", "bounced", "cancelled")

# 7-bit transfer encodings (quoted-printable/base64) so any server, with or without 8BITMIME, takes them.
MESSAGE_POLICY = SMTP_POLICY.clone(cte_type="7bit")
_EMAIL_RE = re.compile(r"^[^@\s<>\"]+@[^@\s<>\"]+\.[^@\s<>\"]+$")


def define_outbox_table(md: sa.MetaData) -> sa.Table:
    """Add the ``crmkit_mail_outbox`` table to ``md`` and return it."""
    return sa.Table(
        OUTBOX_TABLE,
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("message_id", sa.String(255), nullable=False),
        sa.Column("key", sa.String(255)),  # idempotency key (unique when set)
        sa.Column("sender", sa.String(320), nullable=False),
        sa.Column("to_addr", sa.String(320), nullable=False),
        sa.Column("subject", sa.String(998), nullable=False),
        sa.Column("text_body", sa.Text, nullable=False),
        sa.Column("html_body", sa.Text),
        sa.Column("headers", sa.JSON, nullable=False),
        sa.Column("meta", sa.JSON, nullable=False),  # the caller's **meta (campaign id, user id, …)
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("locked_by", sa.String(100)),
        sa.Column("locked_until", sa.DateTime(timezone=True)),
        sa.Column("error", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True)),
        sa.Column("bounced_at", sa.DateTime(timezone=True)),
        sa.Index("uq_crmkit_mail_outbox_key", "key", unique=True),
        sa.Index("uq_crmkit_mail_outbox_message_id", "message_id", unique=True),
        sa.Index("ix_crmkit_mail_outbox_status_id", "status", "id"),
        sa.Index("ix_crmkit_mail_outbox_to_addr", "to_addr"),
    )


# -------------------------------------------------------------------------------------------------
# Transports
# -------------------------------------------------------------------------------------------------


class MailError(Exception):
    """A transport could not deliver a message.

    ``permanent``: the server refused for good (5xx) — retrying cannot help. Otherwise the failure
    is transient (4xx, connection refused or lost) and the message is retried. ``confirmed``: the
    failure came after ``confirm()`` was called (the server refused the message data itself).
    """

    def __init__(self, message: str, *, permanent: bool = False, confirmed: bool = False, code: int | None = None):
        super().__init__(message)
        self.permanent, self.confirmed, self.code = permanent, confirmed, code


class MailTransport(Protocol):
    """What the ``mail_transport`` hook returns.

    ``send`` delivers ``message`` (its envelope recipients are its To/Cc/Bcc addresses) and must
    call ``confirm()`` immediately before the step that makes delivery irreversible; if
    ``confirm()`` raises, it must abandon the message without delivering it. It raises
    :class:`MailError` (or ``OSError``) on failure. ``close()`` (optional) releases connections.
    A transport may also offer ``send_raw(envelope_from, recipients, data, *, confirm)`` taking
    the serialised message (:func:`crmkit.core.mime.render`); the outbox worker then prefers it.
    """

    def send(self, message: EmailMessage, *, confirm: Callable[[], None]) -> None: ...


def transport(crm: CRM) -> Any:
    """The transport of ``crm``: the first ``mail_transport`` hook answer (SMTP by default), cached."""
    cached = crm.__dict__.get("_crmkit_mail_transport")
    if cached is None:
        cached = crm.pm.hook.mail_transport(crm=crm)
        if cached is None:
            raise RuntimeError("no mail transport: the built-in SMTP plugin was disabled and none replaced it")
        crm.__dict__["_crmkit_mail_transport"] = cached
    return cached


def close_transport(crm: CRM) -> None:
    """Close the cached transport's connections (at shutdown)."""
    cached = crm.__dict__.pop("_crmkit_mail_transport", None)
    close = getattr(cached, "close", None)
    if callable(close):
        close()


def _call_send(tr: Any, message: EmailMessage, confirm: Callable[[], None]) -> None:
    """Call ``tr.send``; a simple transport without ``confirm`` gets it called just before."""
    try:
        params = inspect.signature(tr.send).parameters
    except (TypeError, ValueError):
        params = {}
    if "confirm" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        tr.send(message, confirm=confirm)
    else:
        confirm()
        tr.send(message)


# -------------------------------------------------------------------------------------------------
# Queueing
# -------------------------------------------------------------------------------------------------


def default_sender(crm: CRM) -> str:
    """``smtp.sender`` from crmkit.yaml (or CRMKIT_SMTP_SENDER), else ``noreply@<base_url host>``."""
    sender = crm.config.smtp.get("sender")
    if sender:
        return str(sender)
    host = urlsplit(crm.config.base_url).hostname or "localhost"
    if "." not in host:
        host += ".localdomain"
    return f"noreply@{host}"


def _domain(address: str) -> str:
    return parseaddr(address)[1].rpartition("@")[2] or "localhost"


def valid_address(value: str) -> bool:
    """True for one plain mailbox ``name@domain.tld`` (no display name, no line breaks)."""
    return bool(value) and len(value) <= 320 and _EMAIL_RE.match(value) is not None


def _check_header(name: str, value: str) -> None:
    if "\r" in value or "\n" in value:
        raise ValueError(f"mail header {name!r} must not contain line breaks")


def queue_mail(
    crm: CRM,
    *,
    to: str,
    subject: str,
    text: str,
    html: str | None = None,
    headers: dict[str, str] | None = None,
    key: str | None = None,
    conn: sa.Connection | None = None,
    run_at: dt.datetime | None = None,
    sender: str | None = None,
    max_attempts: int = 8,
    **meta: Any,
) -> int | None:
    """Record a message in the outbox (status ``queued``) and enqueue its ``mail.send`` job.

    Returns the outbox id, or None when a message with the same idempotency ``key`` was queued
    before (nothing is added then). ``to`` is one address (``Name <a@b.jp>`` is accepted);
    ``headers`` adds headers such as ``List-Unsubscribe``; ``run_at`` delays the send; ``sender``
    overrides the configured From. Keyword arguments beyond these (``campaign_id=3``) are kept as
    the message's JSON ``meta``. With ``conn``, the message and its job are part of the caller's
    transaction. Raises ValueError for an invalid address or a header containing a line break.
    """
    values = _outbox_values(crm, to=to, subject=subject, text=text, html=html, headers=headers, key=key,
                            sender=sender, meta=meta)
    tbl = outbox_table(crm)
    with jobs._maybe_conn(crm, conn) as c:
        if key is None:
            outbox_id = c.execute(jobs._plain_insert(tbl), values).scalar_one()
        else:
            outbox_id = insert_ignoring_conflict(c, tbl, values, ["key"])
            if outbox_id is None:
                return None
        jobs.enqueue(crm, SEND_JOB, {"outbox_id": outbox_id}, run_at=run_at, key=f"mail:{outbox_id}",
                     max_attempts=max_attempts, conn=c)
    return outbox_id


def queue_many(crm: CRM, messages: list[dict[str, Any]], *, conn: sa.Connection | None = None) -> list[int | None]:
    """:func:`queue_mail` for many messages at once: one outbox insert and one job insert in all.

    Each item holds :func:`queue_mail`'s keyword arguments (``to``, ``subject``, ``text``, ``html``,
    ``headers``, ``key``, ``run_at``, ``sender``, ``max_attempts``; any other key is ``meta``).
    Returns the outbox ids in order, None where a message with the same ``key`` already existed
    (or appears earlier in ``messages``). Every message is checked before anything is written, so
    a ValueError leaves nothing behind. With ``conn``, part of the caller's transaction.
    """
    fixed = ("to", "subject", "text", "html", "headers", "key", "sender")
    rows, extras = [], []
    for item in messages:
        meta = {k: v for k, v in item.items() if k not in (*fixed, "run_at", "max_attempts")}
        rows.append(_outbox_values(crm, **{k: item.get(k) for k in fixed}, meta=meta))
        extras.append((item.get("run_at"), int(item.get("max_attempts", 8))))
    if not rows:
        return []
    tbl = outbox_table(crm)
    with jobs._maybe_conn(crm, conn) as c:
        ids = _insert_many_ignoring(c, tbl, rows)
        jobs.enqueue_many(crm, SEND_JOB, [
            {"payload": {"outbox_id": oid}, "key": f"mail:{oid}", "run_at": run_at, "max_attempts": attempts}
            for oid, (run_at, attempts) in zip(ids, extras, strict=True) if oid is not None
        ], conn=c)
    return ids


def _insert_many_ignoring(conn: sa.Connection, tbl: sa.Table, rows: list[dict[str, Any]]) -> list[int | None]:
    """Insert outbox rows in one executemany (``INSERT … ON CONFLICT (key) DO NOTHING RETURNING``),
    matching the returned ids back to the rows by their unique Message-ID."""
    result = conn.execute(
        jobs._insert_ignoring_returning(conn.dialect.name, tbl, ("key",), ("id", "message_id")), rows)
    by_mid = {mid: id_ for id_, mid in result.all()}
    return [by_mid.get(r["message_id"]) for r in rows]


def _outbox_values(crm: CRM, *, to: str | None, subject: str | None, text: str | None, html: str | None,
                   headers: dict[str, str] | None, key: str | None, sender: str | None,
                   meta: dict[str, Any]) -> dict[str, Any]:
    """The outbox row of one message, checked (ValueError for a bad address or header)."""
    name, address = parseaddr(to or "")
    if not valid_address(address):
        raise ValueError(f"not a valid email address: {to!r}")
    sender = sender or default_sender(crm)
    if not valid_address(parseaddr(sender)[1]):
        raise ValueError(f"not a valid sender address: {sender!r}")
    subject = subject or ""
    for header, value in {"To": to, "Subject": subject, "From": sender, **(headers or {})}.items():
        _check_header(header, str(value))
    now = utcnow()
    return {
        "message_id": make_msgid(domain=_domain(sender)),
        "key": key,
        "sender": sender,
        "to_addr": str(Address(display_name=name, addr_spec=address)) if name else address,
        "subject": subject[:998],
        "text_body": text or "",
        "html_body": html,
        "headers": {str(k): str(v) for k, v in (headers or {}).items()},
        "meta": _jsonable(meta),
        "status": "queued",
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
    }


def _jsonable(meta: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in meta.items():
        if isinstance(v, dt.datetime | dt.date):
            v = v.isoformat()
        elif not isinstance(v, str | int | float | bool | list | dict | type(None)):
            v = str(v)
        out[k] = v
    return out


def outbox_table(crm: CRM) -> sa.Table:
    """The outbox table of ``crm``."""
    return crm.system_tables[OUTBOX_TABLE]


def get_message(crm: CRM, outbox_id: int) -> dict[str, Any] | None:
    """One outbox row as a dict, or None."""
    tbl = outbox_table(crm)
    with crm.engine.connect() as conn:
        row = conn.execute(sa.select(tbl).where(tbl.c.id == outbox_id)).mappings().first()
    return _row(row) if row else None


def list_messages(crm: CRM, *, status: str | None = None, to: str | None = None, limit: int = 50,
                  before_id: int | None = None) -> list[dict[str, Any]]:
    """Outbox rows newest first (keyset-paged by ``before_id``)."""
    rows = newest_rows(crm.engine, outbox_table(crm), equal={"status": status, "to_addr": to}, limit=limit,
                       before_id=before_id)
    return [_row(r) for r in rows]


def status_counts(crm: CRM) -> dict[str, int]:
    """Number of outbox messages per status."""
    return count_by(crm.engine, outbox_table(crm), "status", STATUSES)


def _row(row: Any) -> dict[str, Any]:
    out = dict(row)
    for k in ("locked_until", "created_at", "updated_at", "sent_at", "bounced_at"):
        out[k] = as_utc(out[k])
    return out


def requeue(crm: CRM, outbox_id: int, *, conn: sa.Connection | None = None) -> bool:
    """Send a ``failed`` message again (admin "retry"): back to ``queued`` with a new send job."""
    tbl = outbox_table(crm)
    with jobs._maybe_conn(crm, conn) as c:
        now = utcnow()
        done = c.execute(
            sa.update(tbl).where(tbl.c.id == outbox_id, tbl.c.status == "failed")
            .values(status="queued", error=None, locked_by=None, locked_until=None, updated_at=now)
        ).rowcount == 1
        if done:
            jobs.enqueue(crm, SEND_JOB, {"outbox_id": outbox_id}, key=f"mail:{outbox_id}:retry:{now.timestamp()}",
                         conn=c)
        return done


def mark_bounced(crm: CRM, *, message_id: str, error: str = "", conn: sa.Connection | None = None,
                 now: dt.datetime | None = None) -> int | None:
    """Record a bounce (a DSN naming ``message_id``); returns the outbox id, or None if unknown.

    Called by whoever parses bounce messages (the campaigns plugin); the status becomes ``bounced``.
    """
    tbl = outbox_table(crm)
    mid = message_id.strip()
    if not mid.startswith("<"):
        mid = f"<{mid}>"
    now = as_utc(now) or utcnow()
    with jobs._maybe_conn(crm, conn) as c:
        row = c.execute(sa.select(tbl.c.id).where(tbl.c.message_id == mid)).first()
        if row is None:
            return None
        c.execute(sa.update(tbl).where(tbl.c.id == row.id)
                  .values(status="bounced", bounced_at=now, updated_at=now, error=error[:4000] or None))
        return row.id


# -------------------------------------------------------------------------------------------------
# Delivering
# -------------------------------------------------------------------------------------------------


def build_message(row: dict[str, Any]) -> EmailMessage:
    """The MIME message of an outbox row: text part, optional HTML alternative, its headers."""
    msg = EmailMessage(policy=MESSAGE_POLICY)
    msg["From"] = row["sender"]
    msg["To"] = row["to_addr"]
    msg["Subject"] = row["subject"]
    msg["Date"] = format_datetime(as_utc(row["created_at"]) or utcnow())
    msg["Message-ID"] = row["message_id"]
    for name, value in (row.get("headers") or {}).items():
        if name.lower() in ("from", "to", "subject", "date", "message-id"):
            del msg[name]
        msg[name] = value
    msg.set_content(row["text_body"] or "")
    if row.get("html_body"):
        msg.add_alternative(row["html_body"], subtype="html")
    return msg


def recipients(message: EmailMessage) -> list[str]:
    """Envelope recipients: the addresses of To, Cc and Bcc."""
    pairs = getaddresses([str(v) for h in ("To", "Cc", "Bcc") for v in message.get_all(h, [])])
    return [addr for _name, addr in pairs if addr]


class _Statements(NamedTuple):
    """The per-message statements, built once per outbox table (values are bound parameters)."""

    confirm: Any
    confirm_async: Any  # PostgreSQL: the same, committing without waiting for the WAL flush


@functools.lru_cache(maxsize=64)
def _statements(tbl: sa.Table) -> _Statements:
    now = sa.bindparam("now", type_=tbl.c.updated_at.type)
    confirm = (
        sa.update(tbl)
        .where(tbl.c.id == sa.bindparam("outbox_id"), tbl.c.status == "sending",
               tbl.c.locked_by == sa.bindparam("worker"))
        # locked_by stays: the worker that sent the message (its lease ends with locked_until)
        .values(status="sent", sent_at=now, updated_at=now, locked_until=None, error=None)
    )
    # set_config(..., is_local) in the statement itself: run in autocommit mode, the UPDATE is its own
    # transaction and needs one round trip, where BEGIN, SET LOCAL, UPDATE and COMMIT needed four.
    confirm_async = confirm.where(sa.func.set_config("synchronous_commit", "off", True).is_not(None))
    return _Statements(confirm, confirm_async)


class _Busy(Exception):  # noqa: N818
    """Another worker holds a live claim on the message."""


def deliver(crm: CRM, outbox_id: int, *, now: dt.datetime | None = None, worker_id: str | None = None) -> str:
    """Send one outbox message if it still needs sending; returns its status afterwards.

    Idempotent: a message already ``sent``, ``bounced``, ``failed`` or ``cancelled`` is left alone.
    Raises :class:`MailError`/``OSError`` after a transient failure (the message is ``queued``
    again, or ``failed`` on the job's last attempt), and :class:`crmkit.core.jobs.Retry` while
    another worker is sending it.
    """
    info = jobs.current_job()
    result = deliver_many(crm, [outbox_id], now=now or (info.now if info else None),
                          worker_id=worker_id or (info.worker_id if info else None),
                          last_attempt=[info.last_attempt] if info else None)[0]
    if isinstance(result, Exception):
        raise result
    return result


def deliver_many(crm: CRM, outbox_ids: list[int], *, now: dt.datetime | None = None, worker_id: str | None = None,
                 last_attempt: list[bool] | None = None) -> list[str | Exception]:
    """Send several outbox messages: one claim for all of them, then one after the other over the
    transport's open connection. Returns, per id, its status afterwards or the exception
    :func:`deliver` would have raised for it (the ``mail.send`` batch handler hands those to the
    worker). ``last_attempt[i]`` says whether a transient failure of message ``i`` is final.

    Each message keeps its own ``confirm()`` commit right before its final dot (see the module
    docstring): sharing one commit between messages would widen the window in which a crash loses
    or duplicates messages from one socket write to a whole batch.
    """
    now = as_utc(now) or utcnow()
    worker_id = worker_id or jobs.default_worker_id()
    finals = list(last_attempt) if last_attempt is not None else [False] * len(outbox_ids)
    lease = jobs.JobSettings.of(crm).lease_seconds  # a "sending" claim lasts as long as a job's
    tbl = outbox_table(crm)
    wanted = sorted(set(outbox_ids))
    with write_connection(crm.engine) as conn, conn.begin():
        jobs.relax_commit(crm, conn)
        claimed = {r.id: r._asdict() for r in jobs.claim_leased(
            conn, tbl, ready=tbl.c.status == "queued", busy="sending", now=now, worker_id=worker_id,
            lease_seconds=lease, where=[tbl.c.id.in_(wanted)], order_by=[tbl.c.id])}
        others = {r.id: r for r in conn.execute(
            sa.select(tbl.c.id, tbl.c.status, tbl.c.locked_until)
            .where(tbl.c.id.in_([i for i in wanted if i not in claimed])))} if len(claimed) < len(wanted) else {}
    results: dict[int, str | Exception] = {}
    for outbox_id in wanted:
        if outbox_id in claimed:
            continue
        current = others.get(outbox_id)
        if current is None:
            results[outbox_id] = jobs.Fail(f"outbox message {outbox_id} does not exist")
        elif current.status == "sending":  # someone else is sending it right now: look again after their lease
            results[outbox_id] = jobs.Retry(at=as_utc(current.locked_until),
                                            reason="another worker is sending this message")
        else:
            results[outbox_id] = current.status
    final_of = dict(zip(outbox_ids, finals, strict=True))
    for outbox_id, row in claimed.items():
        try:
            results[outbox_id] = _send_claimed(crm, row, worker_id, now, final_of[outbox_id])
        except Exception as exc:
            results[outbox_id] = exc
    return [results[i] for i in outbox_ids]


def _send_claimed(crm: CRM, row: dict[str, Any], worker_id: str, now: dt.datetime, final: bool) -> str:
    """Send one message we hold the claim of; ``confirm()`` commits ``sent`` before the final dot."""
    outbox_id = row["id"]
    confirmed = False
    # The connection that commits "sent" is taken from the pool before the send and given back after
    # it, so that nothing but the commit's own round trip stands between "sent" and the final dot
    # (the one moment a killed worker loses a message; see the module docstring).
    with _confirming_connection(crm) as db:

        def confirm() -> None:
            nonlocal confirmed
            _confirm_sent(crm, db, outbox_id, worker_id, now)
            confirmed = True

        try:
            tr = transport(crm)
            send_raw = getattr(tr, "send_raw", None)
            if callable(send_raw):  # bytes straight from the row: no EmailMessage round trip (see crmkit.core.mime)
                raw = mime.render(row)
                send_raw(raw.envelope_from, raw.recipients, raw.data, confirm=confirm)
            else:
                _call_send(tr, build_message(row), confirm)
        except Exception as exc:
            failure = exc
        else:
            failure = None
            if not confirmed:  # a transport that returned without calling confirm(): record the send now
                _confirm_sent(crm, db, outbox_id, worker_id, now)
    if failure is not None:
        return _after_failure(crm, outbox_id, worker_id, now, failure, confirmed, final)
    return "sent"


def _confirming_connection(crm: CRM) -> sa.Connection:
    """The connection :func:`_confirm_sent` commits on: autocommit on PostgreSQL (one statement, one
    round trip), a write connection (SQLite's write lock at BEGIN) elsewhere."""
    if crm.engine.dialect.name == "postgresql":
        return crm.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    return write_connection(crm.engine)


def _confirm_sent(crm: CRM, conn: sa.Connection, outbox_id: int, worker_id: str, now: dt.datetime) -> None:
    """Commit ``sent`` for our claim on ``conn`` (see :func:`_confirming_connection`); raise if the
    claim was lost (so the transport aborts)."""
    tbl = outbox_table(crm)
    params = {"outbox_id": outbox_id, "worker": worker_id, "now": now}
    try:
        if conn.dialect.name == "postgresql":
            stmt = _statements(tbl).confirm_async if jobs.JobSettings.of(crm).async_commit else _statements(tbl).confirm
            updated = conn.execute(stmt, params).rowcount
        else:
            with conn.begin():
                updated = conn.execute(_statements(tbl).confirm, params).rowcount
        if updated != 1:
            raise _Busy(f"outbox message {outbox_id}: claim lost to another worker")
    except _Busy:
        raise
    except Exception:
        # The commit's outcome is unknown (connection lost while committing): ask the database.
        with crm.engine.connect() as conn:
            status = conn.execute(sa.select(tbl.c.status, tbl.c.sent_at).where(tbl.c.id == outbox_id)).first()
        if status is None or status.status != "sent" or as_utc(status.sent_at) != now:
            raise


def _after_failure(crm: CRM, outbox_id: int, worker_id: str, now: dt.datetime, exc: Exception, confirmed: bool,
                   last_attempt: bool) -> str:
    """Record a failed send: ``failed`` for permanent refusals, else ``queued`` and re-raise for a retry."""
    if isinstance(exc, _Busy):
        raise jobs.Retry(jobs.JobSettings.of(crm).lease_seconds, reason=str(exc)) from exc
    permanent = isinstance(exc, MailError) and exc.permanent
    final = permanent or last_attempt
    status = "failed" if final else "queued"
    tbl = outbox_table(crm)
    owner = tbl.c.locked_by == worker_id if not confirmed else tbl.c.status == "sent"
    with write_connection(crm.engine) as conn, conn.begin():
        conn.execute(
            sa.update(tbl).where(tbl.c.id == outbox_id, owner)
            .values(status=status, error=f"{type(exc).__name__}: {exc}"[:4000], locked_by=None, locked_until=None,
                    sent_at=None, updated_at=now)
        )
    if permanent:
        log.warning("mail %s refused permanently: %s", outbox_id, exc)
        return status
    raise exc


__all__ = [
    "OUTBOX_TABLE", "SEND_JOB", "MailError", "MailTransport", "build_message", "close_transport", "default_sender",
    "deliver", "deliver_many", "get_message", "list_messages", "mark_bounced", "outbox_table", "queue_mail",
    "queue_many", "recipients", "requeue", "status_counts", "transport", "valid_address",
]
