"""Background jobs: a table of work to do later, claimed safely by any number of workers.

A job is a row in ``crmkit_job`` (name, JSON payload, when to run, how often it may be tried).
Workers (``crmkit worker``) claim due jobs in a short transaction that marks them ``running``
with a lease (``locked_by``/``locked_until``):

- PostgreSQL: ``SELECT … FOR UPDATE SKIP LOCKED``, so workers on many machines never claim the
  same job and never wait for each other;
- SQLite: the claim takes the database's write lock (``BEGIN IMMEDIATE``), one writer at a time.

A worker that dies leaves its jobs ``running``; once their lease has passed, any worker reclaims
them. Handlers come from the ``register_job_handlers`` hook and run in one of two modes:

* **transactional** (the default): the handler gets ``conn``, a connection inside a write
  transaction. The runner marks the job ``done`` in that same transaction and commits it after
  the handler returns, so the handler's database writes and the job's completion happen
  together, exactly once. If the handler raises, everything it wrote is rolled back and the job
  is retried later. On PostgreSQL the job row stays locked while the handler runs, so a slow
  handler is never reclaimed by another worker while its own worker is alive.
* **own transactions** (:func:`own_transactions`): the handler gets ``conn=None`` and commits its
  own work; it must be idempotent (the mail sender is: the outbox row's status says whether the
  message already went out).
  With ``own_transactions(batch=True)`` the handler gets a claimed batch's payloads in one call
  and reports each job's outcome (the mail sender claims and sends a batch's messages together).

External effects (mail, HTTP calls) never happen inside a handler's transaction directly: the
handler records them (``crmkit.core.mail.queue_mail(..., conn=conn)``) and a separate job
performs them once, tracking their status in their own table.

Retries back off exponentially with jitter; after ``max_attempts`` the job is ``failed`` and shown
with its error and traceback on the admin's failed-jobs page, which can retry it. An idempotency
``key`` makes :func:`enqueue` a no-op when a job with that key already exists (periodic jobs use
``name + period start``, so several workers schedule each period once).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import functools
import logging
import os
import random
import socket
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from crmkit.core.db import count_by, newest_rows, write_connection
from crmkit.plugins import call_each

if TYPE_CHECKING:
    from crmkit.app import CRM

log = logging.getLogger(__name__)

JOB_TABLE = "crmkit_job"
STATUSES = ("queued", "running", "done", "failed", "cancelled")

CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "lease_seconds": {"type": "number", "minimum": 1},
        "retry_base_seconds": {"type": "number", "minimum": 0},
        "retry_max_seconds": {"type": "number", "minimum": 0},
        "poll_seconds": {"type": "number", "minimum": 0.01},
        "batch_size": {"type": "integer", "minimum": 1, "maximum": 1000},
        "concurrency": {"type": "integer", "minimum": 1, "maximum": 64},
        "keep_done_days": {"type": "number", "minimum": 0},
        "async_commit": {"type": "boolean"},
    },
}
"""The ``jobs:`` section of crmkit.yaml."""


def define_job_table(md: sa.MetaData) -> sa.Table:
    """Add the ``crmkit_job`` table to ``md`` and return it."""
    return sa.Table(
        JOB_TABLE,
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("key", sa.String(255)),  # idempotency key (unique when set)
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("run_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("locked_by", sa.String(100)),
        sa.Column("locked_until", sa.DateTime(timezone=True)),
        sa.Column("last_error", sa.Text),
        sa.Column("traceback", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Index("uq_crmkit_job_key", "key", unique=True),
        sa.Index("ix_crmkit_job_status_run_at", "status", "run_at"),
        sa.Index("ix_crmkit_job_status_locked_until", "status", "locked_until"),
    )


# -------------------------------------------------------------------------------------------------
# Settings, errors, the current job
# -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobSettings:
    """Worker tuning from crmkit.yaml ``jobs:`` (all optional)."""

    lease_seconds: float = 300.0
    retry_base_seconds: float = 30.0
    retry_max_seconds: float = 3600.0
    poll_seconds: float = 1.0
    batch_size: int = 20
    concurrency: int = 1
    keep_done_days: float = 30.0
    async_commit: bool = False

    @classmethod
    def of(cls, crm: CRM) -> JobSettings:
        """The settings of ``crm`` (its ``jobs:`` section over the defaults)."""
        section = crm.config.section("jobs")
        return cls(**{k: v for k, v in section.items() if k in cls.__dataclass_fields__})


class Retry(Exception):  # noqa: N818 - it is a request, not an error
    """Raise from a handler to run the job again later without using up an attempt.

    Give ``seconds`` (from now) or ``at`` (an aware datetime). For "not now" answers such as
    throttling or quiet hours; the handler's writes in ``conn`` are rolled back.
    """

    def __init__(self, seconds: float | None = None, *, at: dt.datetime | None = None, reason: str = ""):
        self.seconds, self.at, self.reason = seconds, at, reason
        super().__init__(reason or "retry later")


class Fail(Exception):  # noqa: N818 - it is a verdict, not an unexpected error
    """Raise from a handler to fail the job at once (no more attempts): the input can never work."""


@dataclass(frozen=True)
class JobInfo:
    """The job a handler is running (see :func:`current_job`)."""

    id: int
    name: str
    key: str | None
    attempt: int  # 1 for the first try
    max_attempts: int
    worker_id: str
    now: dt.datetime  # the worker's clock for this run (tests pass ``now=``)

    @property
    def last_attempt(self) -> bool:
        """True when a failure now would fail the job for good."""
        return self.attempt >= self.max_attempts


_CURRENT: contextvars.ContextVar[JobInfo | None] = contextvars.ContextVar("crmkit_job", default=None)


_BATCH: contextvars.ContextVar[list[JobInfo] | None] = contextvars.ContextVar("crmkit_job_batch", default=None)


def current_job() -> JobInfo | None:
    """The job being run by this thread's worker, or None outside a handler.

    Inside a ``batch=True`` handler (see :func:`own_transactions`) it is None: use
    :func:`current_batch`.
    """
    return _CURRENT.get()


def current_batch() -> list[JobInfo]:
    """The jobs a ``batch=True`` handler is running, in the order of its payloads ([] elsewhere)."""
    return list(_BATCH.get() or [])


def own_transactions(handler: Callable[..., Any] | None = None, *, batch_done: bool = False,
                     batch: bool = False) -> Any:
    """Mark a handler that manages its own transactions: it is called with ``conn=None``.

    Use it when the handler performs an external effect whose status it records itself (the
    mail sender), or calls ``crm.records.create(...)`` and friends directly. Such a handler must
    be idempotent: after a crash it may run again for the same job.

    With ``batch_done=True`` (``@own_transactions(batch_done=True)``) the worker marks the
    handler's successful jobs ``done`` together, in one transaction after the claimed batch,
    instead of one transaction per job: a worker killed in between leaves up to a batch of them
    to run again after their lease, which an idempotent handler turns into no-ops.

    With ``batch=True`` (implies ``batch_done``) the handler is called *once per claimed batch*
    with the list of its jobs' payloads — ``handler(crm, payloads, None)`` — so it can share
    work between them (the mail sender claims their outbox rows in one statement and sends them
    over one connection). It returns None when every job succeeded, or a list as long as
    ``payloads`` holding, per job, None (done) or the exception that job ended with (a
    :class:`Retry`, a :class:`Fail` or any error: handled as if a single-job handler had raised
    it). An exception raised by the handler itself counts for every job of the call.
    :func:`current_batch` gives the jobs' :class:`JobInfo` in the same order.
    """
    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.crmkit_own_transactions = True  # type: ignore[attr-defined]
        fn.crmkit_batch_done = batch_done or batch  # type: ignore[attr-defined]
        fn.crmkit_batch = batch  # type: ignore[attr-defined]
        return fn

    return mark if handler is None else mark(handler)


def utcnow() -> dt.datetime:
    """Now, aware, in UTC."""
    return dt.datetime.now(dt.UTC)


def as_utc(value: dt.datetime | None) -> dt.datetime | None:
    """An aware UTC datetime (naive values are taken as UTC, as SQLite returns them)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def default_worker_id() -> str:
    """``host:pid:thread`` — unique among live workers, readable on the admin page."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{threading.get_ident() % 100000}"


# -------------------------------------------------------------------------------------------------
# Enqueueing
# -------------------------------------------------------------------------------------------------


def table(crm: CRM) -> sa.Table:
    """The job table of ``crm``."""
    return crm.system_tables[JOB_TABLE]


def insert_ignoring_conflict(conn: sa.Connection, tbl: sa.Table, values: dict[str, Any],
                             unique: list[str]) -> int | None:
    """``INSERT … ON CONFLICT DO NOTHING RETURNING id``: the new id, or None when the key exists.

    Safe under concurrency on both databases: on PostgreSQL a second inserter of the same key
    waits for the first transaction and then does nothing.
    """
    return conn.execute(_insert_ignoring(conn.dialect.name, tbl, tuple(unique)), values).scalar_one_or_none()


@functools.lru_cache(maxsize=256)
def _insert_ignoring(dialect: str, tbl: sa.Table, unique: tuple[str, ...]) -> Any:
    """The statement of :func:`insert_ignoring_conflict`, built once per table: constructing it per
    row (values baked in) cost more than executing it when a campaign queues thousands of messages."""
    insert = pg_dialect.insert if dialect == "postgresql" else sqlite_dialect.insert
    return insert(tbl).on_conflict_do_nothing(index_elements=list(unique)).returning(tbl.c.id)


@functools.lru_cache(maxsize=256)
def _insert_ignoring_returning(dialect: str, tbl: sa.Table, unique: tuple[str, ...], returning: tuple[str, ...]) -> Any:
    """``INSERT … ON CONFLICT (unique) DO NOTHING RETURNING returning``, built once: with a list of
    parameter sets SQLAlchemy sends it as one multi-row INSERT ("insertmanyvalues")."""
    insert = pg_dialect.insert if dialect == "postgresql" else sqlite_dialect.insert
    return insert(tbl).on_conflict_do_nothing(index_elements=list(unique)).returning(
        *(tbl.c[name] for name in returning))


@functools.lru_cache(maxsize=256)
def _plain_insert(tbl: sa.Table) -> Any:
    """``INSERT … RETURNING id`` for ``tbl``, built once (values are passed as parameters)."""
    return sa.insert(tbl).returning(tbl.c.id)


@contextmanager
def _maybe_conn(crm: CRM, conn: sa.Connection | None) -> Iterator[sa.Connection]:
    """``conn`` as given (the caller's transaction), or a fresh write transaction committed on exit."""
    if conn is not None:
        yield conn
        return
    with write_connection(crm.engine) as own, own.begin():
        yield own


def enqueue(
    crm: CRM,
    name: str,
    payload: dict[str, Any],
    *,
    run_at: dt.datetime | None = None,
    key: str | None = None,
    max_attempts: int = 5,
    conn: sa.Connection | None = None,
    revive: bool = False,
) -> int | None:
    """Add a job; returns its id, or None when a job with the same idempotency ``key`` exists.

    With ``conn`` the job is inserted in that connection's transaction, so it exists only if the
    surrounding write commits (a record saved and its follow-up job are one unit). Without it the
    job is committed at once. ``run_at`` (aware datetime, default now) delays the job. The key
    stays taken while the job row exists — also after it is done, failed or cancelled — so use
    keys that name the effect (``reminder:activity:12:2026-05-01T09:00``). With ``revive``, a
    *cancelled* job with that key is queued again instead (with this payload and ``run_at``) and
    its id returned: an effect that was called off and is wanted again (a due time moved away
    and back) still happens, once.
    """
    if not name or len(name) > 100:
        raise ValueError("a job needs a name of 1-100 characters")
    if key is not None and len(key) > 255:
        raise ValueError("a job key is at most 255 characters")
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    now = utcnow()
    values = {
        "name": name, "payload": dict(payload or {}), "key": key, "status": "queued",
        "run_at": as_utc(run_at) or now, "attempts": 0, "max_attempts": int(max_attempts),
        "created_at": now, "updated_at": now,
    }
    with _maybe_conn(crm, conn) as c:
        tbl = table(crm)
        if key is None:
            return c.execute(_plain_insert(tbl), values).scalar_one()
        new_id = insert_ignoring_conflict(c, tbl, values, ["key"])
        if new_id is None and revive:
            new_id = c.execute(
                sa.update(tbl).where(tbl.c.key == key, tbl.c.status == "cancelled")
                .values(status="queued", payload=values["payload"], run_at=values["run_at"], attempts=0,
                        max_attempts=values["max_attempts"], updated_at=now, finished_at=None, last_error=None)
                .returning(tbl.c.id)
            ).scalar_one_or_none()
        return new_id


def enqueue_many(crm: CRM, name: str, items: list[dict[str, Any]], *, conn: sa.Connection | None = None) -> int:
    """Add many jobs called ``name`` in one statement; returns how many were new.

    Each item: ``payload`` (dict), and optionally ``key``, ``run_at``, ``max_attempts`` (default 5),
    as for :func:`enqueue`; an item whose key exists already is skipped.
    """
    if not name or len(name) > 100:
        raise ValueError("a job needs a name of 1-100 characters")
    now = utcnow()
    rows = []
    for item in items:
        key, attempts = item.get("key"), int(item.get("max_attempts", 5))
        if key is not None and len(key) > 255:
            raise ValueError("a job key is at most 255 characters")
        if attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        rows.append({"name": name, "payload": dict(item.get("payload") or {}), "key": key, "status": "queued",
                     "run_at": as_utc(item.get("run_at")) or now, "attempts": 0, "max_attempts": attempts,
                     "created_at": now, "updated_at": now})
    if not rows:
        return 0
    with _maybe_conn(crm, conn) as c:
        tbl = table(crm)
        return len(c.execute(_insert_ignoring_returning(c.dialect.name, tbl, ("key",), ("id",)), rows).all())


def cancel(crm: CRM, *, key: str | None = None, id: int | None = None, conn: sa.Connection | None = None) -> int:
    """Cancel a queued job (by ``key`` or ``id``); returns how many were cancelled (0 or 1).

    A job already running, done or failed is left alone. The key stays taken.
    """
    if (key is None) == (id is None):
        raise ValueError("give exactly one of key or id")
    tbl = table(crm)
    where = tbl.c.key == key if key is not None else tbl.c.id == id
    with _maybe_conn(crm, conn) as c:
        now = utcnow()
        result = c.execute(
            sa.update(tbl).where(where, tbl.c.status == "queued")
            .values(status="cancelled", updated_at=now, finished_at=now)
        )
        return result.rowcount


def cancel_matching(crm: CRM, *, name: str, key_prefix: str, conn: sa.Connection | None = None,
                    except_key: str | None = None, keep: Iterable[str] = ()) -> int:
    """Cancel the queued jobs called ``name`` whose key starts with ``key_prefix``; returns how many.

    Jobs whose key is ``except_key`` or in ``keep`` stay queued. For rescheduling: a reminder's
    key contains its due time, so a changed due time cancels the old reminders by prefix and
    enqueues new ones.
    """
    tbl = table(crm)
    escaped = key_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    where = [tbl.c.name == name, tbl.c.status == "queued", tbl.c.key.like(escaped + "%", escape="\\")]
    kept = set(keep) | ({except_key} if except_key is not None else set())
    if kept:
        where.append(tbl.c.key.not_in(sorted(kept)))
    with _maybe_conn(crm, conn) as c:
        now = utcnow()
        return c.execute(sa.update(tbl).where(*where).values(status="cancelled", updated_at=now,
                                                             finished_at=now)).rowcount


def retry(crm: CRM, job_id: int, *, now: dt.datetime | None = None, conn: sa.Connection | None = None) -> bool:
    """Put a failed (or cancelled) job back in the queue with a fresh set of attempts."""
    now = as_utc(now) or utcnow()
    tbl = table(crm)
    with _maybe_conn(crm, conn) as c:
        result = c.execute(
            sa.update(tbl).where(tbl.c.id == job_id, tbl.c.status.in_(("failed", "cancelled")))
            .values(status="queued", attempts=0, run_at=now, locked_by=None, locked_until=None,
                    finished_at=None, updated_at=now)
        )
        return result.rowcount == 1


def get(crm: CRM, job_id: int) -> dict[str, Any] | None:
    """One job row as a dict (datetimes in UTC), or None."""
    tbl = table(crm)
    with crm.engine.connect() as conn:
        row = conn.execute(sa.select(tbl).where(tbl.c.id == job_id)).mappings().first()
    return _row(row) if row else None


def list_jobs(crm: CRM, *, status: str | None = None, name: str | None = None, limit: int = 50,
              before_id: int | None = None) -> list[dict[str, Any]]:
    """Jobs newest first (keyset-paged by ``before_id``), for the admin page and tests."""
    rows = newest_rows(crm.engine, table(crm), equal={"status": status, "name": name}, limit=limit,
                       before_id=before_id)
    return [_row(r) for r in rows]


def counts(crm: CRM) -> dict[str, int]:
    """Number of jobs per status."""
    return count_by(crm.engine, table(crm), "status", STATUSES)


def _row(row: Any) -> dict[str, Any]:
    out = dict(row)
    for k in ("run_at", "locked_until", "created_at", "updated_at", "finished_at"):
        out[k] = as_utc(out[k])
    return out


# -------------------------------------------------------------------------------------------------
# Handlers and periodic jobs
# -------------------------------------------------------------------------------------------------


def handlers(crm: CRM) -> dict[str, Callable[..., Any]]:
    """``{job_name: handler}`` from every ``register_job_handlers`` hook (a duplicate name is an error)."""
    cached = crm.__dict__.get("_crmkit_job_handlers")
    if cached is not None:
        return cached
    out: dict[str, Callable[..., Any]] = {}
    owners: dict[str, str] = {}
    for plugin, found in call_each(crm.pm, "register_job_handlers", crm=crm):
        for name, handler in found.items():
            if name in out:
                raise ValueError(f"job handler {name!r} registered by both {owners[name]} and {plugin}")
            out[name], owners[name] = handler, plugin
    crm.__dict__["_crmkit_job_handlers"] = out
    return out


def periodic_jobs(crm: CRM) -> list[dict[str, Any]]:
    """The ``register_periodic_jobs`` entries, checked (``name``, ``every`` seconds, ``payload``)."""
    out = []
    for plugin, items in call_each(crm.pm, "register_periodic_jobs", crm=crm):
        for item in items:
            every = item.get("every")
            if not item.get("name") or not isinstance(every, int | float) or every < 1:
                raise ValueError(f"plugin {plugin}: periodic job {item!r} needs a name and every >= 1 second")
            out.append({"name": item["name"], "every": every, "payload": dict(item.get("payload") or {}),
                        "max_attempts": int(item.get("max_attempts", 3))})
    return out


def schedule_periodic(crm: CRM, *, now: dt.datetime | None = None) -> int:
    """Enqueue each periodic job for the period containing ``now``, once: returns how many were new.

    The idempotency key is the name plus the period's start (periods are aligned to the Unix
    epoch), so any number of workers calling this schedule each period exactly once.
    """
    now = as_utc(now) or utcnow()
    specs = periodic_jobs(crm)
    if not specs:
        return 0
    # Each process remembers the periods it already scheduled, so an idle worker polling every
    # second does not take the write lock just to find its periodic jobs already there.
    done: set[str] = crm.__dict__.setdefault("_crmkit_periodic_scheduled", set())
    todo = []
    for spec in specs:
        every = float(spec["every"])
        start = dt.datetime.fromtimestamp((now.timestamp() // every) * every, dt.UTC)
        key = f"periodic:{spec['name']}:{start.isoformat()}"
        if key not in done:
            todo.append((spec, start, key))
    if not todo:
        return 0
    added = 0
    with write_connection(crm.engine) as conn, conn.begin():
        for spec, start, key in todo:
            if enqueue(crm, spec["name"], spec["payload"], run_at=start, key=key,
                       max_attempts=spec["max_attempts"], conn=conn) is not None:
                added += 1
    if len(done) > 10000:  # a long-running worker: forget old periods
        done.clear()
    done.update(key for _spec, _start, key in todo)
    return added


def prune(crm: CRM, *, now: dt.datetime | None = None, older_than_days: float | None = None) -> int:
    """Delete done and cancelled jobs that finished more than ``keep_done_days`` ago; returns how many.

    Failed jobs stay until someone retries or deletes them. Pruning frees their idempotency keys,
    so keep jobs at least as long as an effect could be enqueued again.
    """
    now = as_utc(now) or utcnow()
    days = JobSettings.of(crm).keep_done_days if older_than_days is None else older_than_days
    tbl = table(crm)
    with write_connection(crm.engine) as conn, conn.begin():
        return conn.execute(
            sa.delete(tbl).where(tbl.c.status.in_(("done", "cancelled")),
                                 tbl.c.finished_at < now - dt.timedelta(days=days))
        ).rowcount


# -------------------------------------------------------------------------------------------------
# Claiming and running
# -------------------------------------------------------------------------------------------------


@dataclass
class _Claimed:
    id: int
    name: str
    key: str | None
    payload: dict[str, Any]
    attempt: int
    max_attempts: int


def claim_leased(conn: sa.Connection, tbl: sa.Table, *, ready: Any, busy: str, now: dt.datetime, worker_id: str,
                 lease_seconds: float, where: Iterable[Any] = (), order_by: Iterable[Any] = (),
                 limit: int | None = None, skip_locked: bool = False,
                 returning: Iterable[Any] | None = None) -> list[Any]:
    """Claim rows of a work table with a lease, in ``conn``'s transaction; return them as updated.

    The one claim of the job table and the mail outbox (both have ``status``, ``attempts``,
    ``locked_by``, ``locked_until``, ``updated_at``). A row is claimable when ``ready`` (a
    condition, e.g. queued and due) holds, or when it is ``busy`` with an expired lease (its
    worker died). Claimed rows become ``busy``, locked by ``worker_id`` until ``now +
    lease_seconds``, with one more attempt. ``where`` narrows the rows, ``order_by``/``limit``
    pick which. On PostgreSQL the rows are locked first (``FOR UPDATE``, with ``skip_locked``
    ``SKIP LOCKED`` so concurrent claimers take different rows instead of waiting); on SQLite
    the write transaction already excludes other writers. Returns the ``returning`` columns
    (default: all) of the claimed rows after the update, in ``order_by`` order.
    """
    due = sa.or_(ready, sa.and_(tbl.c.status == busy, tbl.c.locked_until < now))
    pick = sa.select(tbl.c.id).where(due, *where).order_by(*order_by)
    if limit is not None:
        pick = pick.limit(limit)
    if conn.dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=skip_locked)
    ids = list(conn.execute(pick).scalars())
    if not ids:
        return []
    rows = conn.execute(
        sa.update(tbl).where(tbl.c.id.in_(ids))
        .values(status=busy, attempts=tbl.c.attempts + 1, locked_by=worker_id,
                locked_until=now + dt.timedelta(seconds=lease_seconds), updated_at=now)
        .returning(*(returning if returning is not None else tbl.c))
    ).all()
    order = {id_: i for i, id_ in enumerate(ids)}
    return sorted(rows, key=lambda r: order[r.id])


def claim(crm: CRM, *, worker_id: str, now: dt.datetime, limit: int, lease_seconds: float,
          names: list[str] | None = None) -> list[_Claimed]:
    """Mark up to ``limit`` due jobs ``running`` for ``worker_id`` with a lease; return them.

    Due means queued with ``run_at <= now``, or running with an expired lease (its worker died).
    """
    tbl = table(crm)
    ready = sa.and_(tbl.c.status == "queued", tbl.c.run_at <= now)
    where = [tbl.c.name.in_(names)] if names else []
    if crm.engine.dialect.name == "sqlite":
        # Look before taking the database's only write lock: idle workers then never block writers.
        due = sa.or_(ready, sa.and_(tbl.c.status == "running", tbl.c.locked_until < now))
        with crm.engine.connect() as conn:
            if conn.execute(sa.select(tbl.c.id).where(due, *where).limit(1)).first() is None:
                return []
    with write_connection(crm.engine) as conn, conn.begin():
        rows = claim_leased(conn, tbl, ready=ready, busy="running", now=now, worker_id=worker_id,
                            lease_seconds=lease_seconds, where=where, order_by=(tbl.c.run_at, tbl.c.id),
                            limit=limit, skip_locked=True,
                            returning=(tbl.c.id, tbl.c.name, tbl.c.key, tbl.c.payload, tbl.c.attempts,
                                       tbl.c.max_attempts))
    return [_Claimed(r.id, r.name, r.key, r.payload or {}, r.attempts, r.max_attempts) for r in rows]


class _LostLease(Exception):  # noqa: N818
    """Another worker reclaimed the job (our lease expired): our run must not commit."""


def run_once(crm: CRM, *, worker_id: str | None = None, now: dt.datetime | None = None, limit: int = 1000,
             names: list[str] | None = None) -> int:
    """Process the jobs due at ``now`` until none is left or ``limit`` were run; return how many ran.

    Schedules the periodic jobs of the current period first. Failed attempts count as processed.
    ``now`` (default: the clock) lets tests run "in the future" without sleeping; ``names``
    restricts the run to some job names.
    """
    settings = JobSettings.of(crm)
    worker_id = worker_id or default_worker_id()
    fixed_now = as_utc(now)
    schedule_periodic(crm, now=fixed_now)
    registry = handlers(crm)
    done = 0
    while done < limit:
        at = fixed_now or utcnow()
        batch = claim(crm, worker_id=worker_id, now=at, limit=min(settings.batch_size, limit - done),
                      lease_seconds=settings.lease_seconds, names=names)
        if not batch:
            break
        finished: list[dict[str, Any]] = []  # batch_done handlers' jobs, marked done together below
        grouped: dict[str, list[_Claimed]] = {}  # batch=True handlers' jobs, one call per name below
        try:
            for job in batch:
                if getattr(registry.get(job.name), "crmkit_batch", False):
                    grouped.setdefault(job.name, []).append(job)
                    continue
                _run_job(crm, registry, job, worker_id, fixed_now or utcnow(), settings, finished)
                done += 1
            for name, group in grouped.items():
                _run_batch(crm, registry[name], group, worker_id, fixed_now or utcnow(), settings, finished)
                done += len(group)
        finally:
            _mark_all_done(crm, finished)
    return done


def _run_batch(crm: CRM, handler: Callable[..., Any], group: list[_Claimed], worker_id: str, now: dt.datetime,
               settings: JobSettings, finished: list[dict[str, Any]]) -> None:
    """Run a ``batch=True`` handler for its jobs of one claimed batch and record each job's outcome."""
    token = _BATCH.set([JobInfo(j.id, j.name, j.key, j.attempt, j.max_attempts, worker_id, now) for j in group])
    try:
        outcome = handler(crm, [j.payload for j in group], None)
        if outcome is None:
            outcome = [None] * len(group)
        elif len(outcome) != len(group):
            raise ValueError(f"batch handler {group[0].name!r} returned {len(outcome)} outcomes for {len(group)} jobs")
    except Exception as exc:  # the whole call failed: every job of it did
        outcome = [exc] * len(group)
    finally:
        _BATCH.reset(token)
    for job, result in zip(group, outcome, strict=True):
        if result is None:
            finished.append({"job_id": job.id, "worker": worker_id, "attempt": job.attempt, "now": now})
        elif isinstance(result, Retry):
            _reschedule(crm, job, worker_id, now, result)
        else:
            _record_failure(crm, job, worker_id, now, result, settings)


def relax_commit(crm: CRM, conn: sa.Connection) -> None:
    """Let the transaction of ``conn`` commit without waiting for its WAL flush (PostgreSQL, when
    ``jobs.async_commit`` is on; off by default); a no-op otherwise.

    For the workers' own bookkeeping only — outbox claims and ``sent`` marks, batch done marks —
    where waiting for the disk on every commit capped sending at the disk's flush rate. The
    commit is visible to every other session at once and survives a worker crash; only a crash
    of the database server itself can lose the last fraction of a second of such commits, which
    makes the affected messages or jobs run again (see :mod:`crmkit.core.mail` for why that
    repeats, never loses, a message). Never use it for a handler's own writes.
    """
    if conn.dialect.name == "postgresql" and JobSettings.of(crm).async_commit:
        conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")


def _mark_all_done(crm: CRM, finished: list[dict[str, Any]]) -> None:
    """Mark the jobs of ``finished`` (``_mark_done`` parameters) done in one transaction.

    A job whose lease another worker took meanwhile is simply not updated: that worker runs the
    (idempotent) handler again and finds nothing left to do.
    """
    if not finished:
        return
    try:
        with write_connection(crm.engine) as conn, conn.begin():
            relax_commit(crm, conn)
            conn.execute(_statements(crm).done, finished)
    except Exception:  # the database went away: the jobs are run again (as no-ops) after their lease
        log.exception("could not mark %s finished jobs done", len(finished))


def _run_job(crm: CRM, registry: dict[str, Callable[..., Any]], job: _Claimed, worker_id: str,
             now: dt.datetime, settings: JobSettings, finished: list[dict[str, Any]] | None = None) -> None:
    info = JobInfo(job.id, job.name, job.key, job.attempt, job.max_attempts, worker_id, now)
    token = _CURRENT.set(info)
    try:
        handler = registry.get(job.name)
        if handler is None:
            raise LookupError(f"no handler for job {job.name!r} (is its plugin enabled in this worker?)")
        if getattr(handler, "crmkit_own_transactions", False):
            handler(crm, job.payload, None)
            if finished is not None and getattr(handler, "crmkit_batch_done", False):
                finished.append({"job_id": job.id, "worker": worker_id, "attempt": job.attempt, "now": now})
                return
            with write_connection(crm.engine) as conn, conn.begin():
                _mark_done(crm, conn, job, worker_id, now)
            return
        with write_connection(crm.engine) as conn:
            with conn.begin(), crm.records.joined(conn, source="system") as tx:
                _hold(crm, conn, job, worker_id)
                handler(crm, job.payload, conn)
                _mark_done(crm, conn, job, worker_id, now)
        if tx.events:  # record events of the handler's writes, now that they are committed
            from crmkit.core.events import dispatch

            dispatch(crm, tx.events)
    except _LostLease:
        log.warning("job %s (%s): lease lost to another worker; this run was rolled back", job.id, job.name)
    except Retry as exc:
        _reschedule(crm, job, worker_id, now, exc)
    except Exception as exc:
        _record_failure(crm, job, worker_id, now, exc, settings)
    finally:
        _CURRENT.reset(token)


@dataclass(frozen=True)
class _Statements:
    """The per-job statements, built once per CRM: building SQLAlchemy constructs per job was
    most of a small job's cost (the compiled forms are cached by SQLAlchemy either way)."""

    hold: Any
    hold_for_update: Any
    done: Any


def _statements(crm: CRM) -> _Statements:
    cached = crm.__dict__.get("_crmkit_job_statements")
    if cached is None:
        tbl = table(crm)
        mine = (tbl.c.id == sa.bindparam("job_id"), tbl.c.locked_by == sa.bindparam("worker"),
                tbl.c.status == "running", tbl.c.attempts == sa.bindparam("attempt"))
        hold = sa.select(tbl.c.id).where(*mine)
        done = sa.update(tbl).where(*mine).values(
            status="done", locked_by=None, locked_until=None, updated_at=sa.bindparam("now"),
            finished_at=sa.bindparam("now"), last_error=None, traceback=None)
        cached = crm.__dict__["_crmkit_job_statements"] = _Statements(hold, hold.with_for_update(), done)
    return cached


def _hold(crm: CRM, conn: sa.Connection, job: _Claimed, worker_id: str) -> None:
    """Lock our job row for the handler's transaction and check we still own it (PostgreSQL).

    On SQLite the transaction already holds the database's write lock, and ``_mark_done``
    checks ownership before the commit, so there is nothing to do here.
    """
    if conn.dialect.name != "postgresql":
        return
    params = {"job_id": job.id, "worker": worker_id, "attempt": job.attempt}
    if conn.execute(_statements(crm).hold_for_update, params).first() is None:
        raise _LostLease()


def _mark_done(crm: CRM, conn: sa.Connection, job: _Claimed, worker_id: str, now: dt.datetime) -> None:
    params = {"job_id": job.id, "worker": worker_id, "attempt": job.attempt, "now": now}
    if conn.execute(_statements(crm).done, params).rowcount != 1:
        raise _LostLease()


def backoff(attempt: int, settings: JobSettings, rng: random.Random | None = None) -> float:
    """Seconds before retry number ``attempt``: exponential, capped, with jitter in [d/2, d].

    The jitter spreads retries of jobs that failed together (an SMTP server that was down) so
    they do not all hit it again in the same second.
    """
    delay = min(settings.retry_max_seconds, settings.retry_base_seconds * (2 ** max(0, attempt - 1)))
    return delay / 2 + (rng or random).uniform(0, delay / 2)


def _record_failure(crm: CRM, job: _Claimed, worker_id: str, now: dt.datetime, exc: BaseException,
                    settings: JobSettings) -> None:
    final = isinstance(exc, Fail) or job.attempt >= job.max_attempts
    log.log(logging.ERROR if final else logging.WARNING, "job %s (%s) attempt %s/%s failed: %s",
            job.id, job.name, job.attempt, job.max_attempts, exc)
    tbl = table(crm)
    values: dict[str, Any] = {
        "last_error": f"{type(exc).__name__}: {exc}"[:4000],
        "traceback": "".join(traceback.format_exception(exc))[-20000:],
        "locked_by": None, "locked_until": None, "updated_at": now,
    }
    if final:
        values.update(status="failed", finished_at=now)
    else:
        values.update(status="queued", run_at=now + dt.timedelta(seconds=backoff(job.attempt, settings)))
    with write_connection(crm.engine) as conn, conn.begin():
        conn.execute(sa.update(tbl).where(tbl.c.id == job.id, tbl.c.locked_by == worker_id,
                                          tbl.c.attempts == job.attempt).values(values))


def _reschedule(crm: CRM, job: _Claimed, worker_id: str, now: dt.datetime, exc: Retry) -> None:
    at = as_utc(exc.at) if exc.at is not None else now + dt.timedelta(seconds=exc.seconds or 0)
    tbl = table(crm)
    with write_connection(crm.engine) as conn, conn.begin():
        conn.execute(
            sa.update(tbl).where(tbl.c.id == job.id, tbl.c.locked_by == worker_id, tbl.c.attempts == job.attempt)
            .values(status="queued", run_at=at, attempts=tbl.c.attempts - 1, locked_by=None, locked_until=None,
                    updated_at=now, last_error=exc.reason or None)
        )


# -------------------------------------------------------------------------------------------------
# The long-running worker
# -------------------------------------------------------------------------------------------------


@dataclass
class Worker:
    """``crmkit worker``: ``concurrency`` threads each running :func:`run_once` until stopped.

    :meth:`stop` (SIGTERM/SIGINT in the CLI) lets every thread finish the job it is running.
    """

    crm: CRM
    concurrency: int = 1
    poll_seconds: float = 1.0
    names: list[str] | None = None
    stopping: threading.Event = field(default_factory=threading.Event)
    processed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def stop(self) -> None:
        """Ask the threads to stop after their current job."""
        self.stopping.set()

    def _loop(self, index: int) -> None:
        worker_id = f"{default_worker_id()}#{index}"
        while not self.stopping.is_set():
            try:
                n = run_once(self.crm, worker_id=worker_id, limit=JobSettings.of(self.crm).batch_size,
                             names=self.names)
            except Exception:  # the database went away: log, wait, try again
                log.exception("worker %s: cannot claim jobs", worker_id)
                n = 0
            with self._lock:
                self.processed += n
            if n == 0:
                self.stopping.wait(self.poll_seconds)

    def run(self) -> int:
        """Run until :meth:`stop`; returns the number of jobs processed."""
        threads = [threading.Thread(target=self._loop, args=(i,), name=f"crmkit-worker-{i}", daemon=True)
                   for i in range(max(1, self.concurrency))]
        for t in threads:
            t.start()
        try:
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(timeout=0.5)
        finally:
            self.stop()
            for t in threads:
                t.join()
        return self.processed


__all__ = [
    "JOB_TABLE", "Fail", "JobInfo", "JobSettings", "Retry", "Worker", "backoff", "cancel", "cancel_matching",
    "claim", "claim_leased", "counts", "current_batch", "current_job", "enqueue", "enqueue_many", "get", "handlers",
    "list_jobs", "own_transactions", "periodic_jobs", "prune", "relax_commit", "retry", "run_once", "schedule_periodic",
]
