"""What scores make happen: threshold actions and the KPI reminders (tasks for the owner).

Both run after the score is committed, each in a transaction of its own through RecordStore,
and both are idempotent: a threshold's actions run once per crossing (``scoring_threshold``
is their outbox), a KPI reminder once per lead and checkpoint (``scoring_reminder`` has a
unique key on it).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from crmkit.core import conditions
from crmkit.core.actors import SYSTEM
from crmkit.core.db import write_connection
from crmkit.core.errors import CRMError
from plugins_contrib.lead_scoring.engine import DAY, SCORE, Scope, epoch, lock_leads, recompute
from plugins_contrib.lead_scoring.rules import ACTIVITY, KPI, LEAD, ScoringRules, Threshold
from plugins_contrib.lead_scoring.tables import LEDGER, REMINDER, THRESHOLD

if TYPE_CHECKING:
    from crmkit.app import CRM

log = logging.getLogger(__name__)
SOURCE = "lead_scoring"


def _insert(conn: sa.Connection) -> Any:
    return pg_dialect.insert if conn.dialect.name == "postgresql" else sqlite_dialect.insert


def _lang(crm: CRM, user: dict[str, Any] | None) -> str:
    lang = (user or {}).get("locale") or crm.config.locale
    return lang if lang in ("en", "ja") else "en"


def _user(conn: sa.Connection, crm: CRM, user_id: int | None) -> dict[str, Any] | None:
    if user_id is None or "user" not in crm.schema.tables:
        return None
    users = crm.schema.tables["user"]
    row = conn.execute(sa.select(users).where(users.c.id == user_id)).mappings().first()
    return dict(row) if row else None


# ---------------------------------------------------------------------------------------------
# Thresholds
# ---------------------------------------------------------------------------------------------
def run_pending(crm: CRM, rules: ScoringRules, lead_ids: Sequence[int] | None = None) -> int:
    """Run the actions of thresholds reached and not yet acted on; returns how many ran.

    Each crossing is claimed and acted on in one transaction (claim, field changes, notifications
    commit together), so a crash or a concurrent runner never acts twice or loses an action.
    """
    state = crm.system_tables[THRESHOLD]
    by_name = {t.name: t for t in rules.thresholds}
    query = (sa.select(state.c.id, state.c.lead_id, state.c.name, state.c.reached_at)
             .where(state.c.actions_done.is_(False)))
    if lead_ids is not None:
        if not lead_ids:
            return 0
        query = query.where(state.c.lead_id.in_(sorted(set(lead_ids))))
    with crm.engine.connect() as conn:
        pending = conn.execute(query.order_by(state.c.id).limit(10000)).all()
    done = 0
    for row_id, lead_id, name, reached_at in pending:
        threshold = by_name.get(name)
        try:
            with crm.records.transaction(actor=SYSTEM, source=SOURCE) as tx:
                claimed = tx.conn.execute(
                    sa.update(state).where(state.c.id == row_id, state.c.actions_done.is_(False))
                    .values(actions_done=True)
                ).rowcount
                if claimed != 1 or threshold is None:
                    continue
                _act(crm, tx, threshold, lead_id, f"{row_id}:{reached_at.isoformat()}")
                done += 1
        except CRMError as exc:  # e.g. the value to set is no longer valid: do not retry forever
            log.error("lead scoring: threshold %s on lead %s failed: %s", name, lead_id, exc)
            with write_connection(crm.engine) as conn, conn.begin():
                conn.execute(sa.update(state).where(state.c.id == row_id).values(actions_done=True))
    return done


def _act(crm: CRM, tx: Any, threshold: Threshold, lead_id: int, crossing: str) -> None:
    lead = crm.schema.tables[LEAD]
    row = tx.conn.execute(sa.select(lead).where(lead.c.id == lead_id)).mappings().first()
    if row is None:
        return
    if threshold.set:
        changes = {k: v for k, v in threshold.set.items() if row.get(k) != v}
        if changes:
            tx.update(LEAD, lead_id, changes)
    if threshold.notify:
        from crmkit.core.notifications import notify

        users = crm.schema.tables["user"]
        recipients: list[int] = []
        for who in threshold.notify:
            if who == "owner":
                if row.get("owner") is not None:
                    recipients.append(row["owner"])
            else:
                uid = tx.conn.execute(sa.select(users.c.id).where(users.c.username == who)).scalar()
                if uid is None:
                    log.warning("lead scoring: threshold %s: no user %r to notify", threshold.name, who)
                else:
                    recipients.append(uid)
        title = row.get(crm.catalog[LEAD].title_field) or f"#{lead_id}"
        for uid in dict.fromkeys(recipients):
            lang = _lang(crm, _user(tx.conn, crm, uid))
            label = threshold.label.get(lang) or threshold.label["en"]
            if lang == "ja":
                subject = f"{title}：スコア{float(row[SCORE] or 0):g}（{label}）"
            else:
                subject = f"{title}: score {float(row[SCORE] or 0):g} ({label})"
            notify(crm, uid, subject=subject, link=f"/admin/lead/{lead_id}", conn=tx.conn, kind="lead_scoring",
                   key=f"lead_scoring:threshold:{crossing}:{uid}")


# ---------------------------------------------------------------------------------------------
# KPI reminders
# ---------------------------------------------------------------------------------------------
def _due_leads(crm: CRM, conn: sa.Connection, kpi: KPI, checkpoint: int, until: int, now: dt.datetime) -> list[int]:
    """Leads between day ``checkpoint`` and day ``until`` of their period, not yet checked there."""
    lead = crm.schema.tables[LEAD]
    rem = crm.system_tables[REMINDER]
    start = epoch(lead.c[kpi.from_field])
    now_e = sa.literal(now.timestamp(), sa.Float)
    where = [
        lead.c[kpi.from_field].is_not(None),
        start + checkpoint * DAY <= now_e,
        start + until * DAY > now_e,
        ~sa.exists().where(rem.c.lead_id == lead.c.id, rem.c.kpi == kpi.name, rem.c.checkpoint == checkpoint),
    ]
    if kpi.only_if is not None:
        params = {"me": None, "my_team": None, "my_teams": [], "now": now, "today": now.date()}
        where.append(kpi.only_if.to_sql(crm.schema.tables, params))
    return [r[0] for r in conn.execute(sa.select(lead.c.id).where(*where).order_by(lead.c.id))]


def remind(crm: CRM, rules: ScoringRules, *, now: dt.datetime | None = None, batch: int = 500) -> list[dict[str, Any]]:
    """Check every KPI checkpoint that is due at ``now``; create a task for the owner of each lead
    that is behind. Returns what was decided, one dict per lead and checkpoint checked.

    A lead is checked at checkpoint ``c`` while it is between day ``c`` and the next checkpoint
    (or the end of the period): a run missed for a while checks the latest checkpoint only,
    never nags about a stale one. Leads on track are recorded as checked too.
    """
    now = now or dt.datetime.now(dt.UTC)
    now = now if now.tzinfo else now.replace(tzinfo=dt.UTC)
    out: list[dict[str, Any]] = []
    for kpi in rules.kpis:
        bounds = list(kpi.checkpoints) + [kpi.days]
        for i, checkpoint in enumerate(kpi.checkpoints):
            with crm.engine.connect() as conn:
                due = _due_leads(crm, conn, kpi, checkpoint, bounds[i + 1], now)
            for start in range(0, len(due), batch):
                out += _check_batch(crm, rules, kpi, checkpoint, due[start:start + batch], now)
    return out


def _check_batch(crm: CRM, rules: ScoringRules, kpi: KPI, checkpoint: int, ids: list[int],
                 now: dt.datetime) -> list[dict[str, Any]]:
    lead = crm.schema.tables[LEAD]
    ledger = crm.system_tables[LEDGER]
    rem = crm.system_tables[REMINDER]
    expected = round(kpi.expected(checkpoint), 2)
    out = []
    with write_connection(crm.engine) as conn, conn.begin():
        lock_leads(conn, crm, ids)
        recompute(crm, conn, rules, Scope(ids=ids), now)  # scores as of `now` (decay, windows)
        points = dict(conn.execute(
            sa.select(ledger.c.lead_id, sa.func.sum(ledger.c.effective))
            .where(ledger.c.lead_id.in_(ids), ledger.c.group_name == kpi.group)
            .group_by(ledger.c.lead_id)
        ).all())
        owners = dict(conn.execute(sa.select(lead.c.id, lead.c.owner).where(lead.c.id.in_(ids))).all())
    for lead_id in ids:
        got = round(float(points.get(lead_id) or 0.0), 2)
        behind = got < expected
        owner = owners.get(lead_id)
        decision = {"lead": lead_id, "kpi": kpi.name, "checkpoint": checkpoint, "points": got,
                    "expected": expected, "behind": behind, "task": None, "owner": owner}
        with crm.records.transaction(actor=SYSTEM, source=SOURCE) as tx:
            stmt = _insert(tx.conn)(rem).values(
                lead_id=lead_id, kpi=kpi.name, checkpoint=checkpoint, points=got, expected=expected,
                created_at=now,
            ).on_conflict_do_nothing(index_elements=["lead_id", "kpi", "checkpoint"]).returning(rem.c.id)
            if tx.conn.execute(stmt).first() is None:
                continue  # another run checked this lead at this checkpoint already
            if behind and owner is not None and ACTIVITY in crm.catalog:
                task = tx.create(ACTIVITY, _task_values(crm, tx.conn, kpi, checkpoint, lead_id, owner, got,
                                                        expected, now))
                tx.conn.execute(
                    sa.update(rem).where(rem.c.lead_id == lead_id, rem.c.kpi == kpi.name,
                                         rem.c.checkpoint == checkpoint).values(activity_id=task["id"])
                )
                decision["task"] = task["id"]
        out.append(decision)
    return out


def _task_values(crm: CRM, conn: sa.Connection, kpi: KPI, checkpoint: int, lead_id: int, owner: int,
                 got: float, expected: float, now: dt.datetime) -> dict[str, Any]:
    user = _user(conn, crm, owner)
    lang = _lang(crm, user)
    subject = kpi.subject.get(lang) or kpi.subject["en"]
    if lang == "ja":
        detail = (f"{kpi.label.get('ja') or kpi.label['en']}：{checkpoint}日目の時点で{got:g}ポイント"
                  f"（目安 {expected:g} / 目標 {kpi.target:g}ポイント、{kpi.days}日以内）。")
    else:
        detail = (f"{kpi.label['en']}: {got:g} points at day {checkpoint} (expected {expected:g}; "
                  f"goal {kpi.target:g} points within {kpi.days} days).")
    fields = crm.catalog[ACTIVITY].fields
    values: dict[str, Any] = {"subject": subject[:255], "type": "task", "lead": lead_id, "owner": owner}
    optional = {
        "status": "planned", "priority": kpi.priority, "assignee": owner,
        "due_at": now + dt.timedelta(days=kpi.due_in_days), "description": detail,
    }
    values.update({k: v for k, v in optional.items() if k in fields})
    owner_team = (user or {}).get("primary_team")
    if owner_team is not None:
        values["team"] = owner_team
    return values


def reminders_of(crm: CRM, lead_id: int) -> list[dict[str, Any]]:
    """The KPI checkpoints checked for a lead (for its panel), oldest first."""
    rem = crm.system_tables[REMINDER]
    with crm.engine.connect() as conn:
        rows = conn.execute(sa.select(rem).where(rem.c.lead_id == lead_id).order_by(rem.c.kpi, rem.c.checkpoint))
        return [dict(r._mapping) for r in rows]


def kpi_progress(crm: CRM, rules: ScoringRules, lead: dict[str, Any], now: dt.datetime | None = None
                 ) -> list[dict[str, Any]]:
    """For each KPI: the lead's points in its group, the target, the day of the period and the
    points expected by now (for the panel)."""
    now = now or dt.datetime.now(dt.UTC)
    ledger = crm.system_tables[LEDGER]
    out = []
    with crm.engine.connect() as conn:
        sums = dict(conn.execute(
            sa.select(ledger.c.group_name, sa.func.sum(ledger.c.effective))
            .where(ledger.c.lead_id == lead["id"]).group_by(ledger.c.group_name)
        ).all())
    for kpi in rules.kpis:
        start = lead.get(kpi.from_field)
        if start is None:
            continue
        if not isinstance(start, dt.datetime):
            start = dt.datetime(start.year, start.month, start.day, tzinfo=dt.UTC)
        if start.tzinfo is None:
            start = start.replace(tzinfo=dt.UTC)
        day = (now - start).total_seconds() / DAY
        applies = kpi.only_if is None or _holds(crm, kpi.only_if, lead)
        out.append({
            "kpi": kpi, "points": round(float(sums.get(kpi.group) or 0.0), 2), "day": max(0, int(day)),
            "expected": round(kpi.expected(max(0.0, day)), 2), "over": day >= kpi.days, "applies": applies,
        })
    return out


def _holds(crm: CRM, condition: conditions.ParsedCondition, lead: dict[str, Any]) -> bool:
    def fetch(entity: str, id: Any) -> Any:
        table = crm.schema.tables[entity]
        with crm.engine.connect() as conn:
            row = conn.execute(sa.select(table).where(table.c.id == id)).mappings().first()
        return dict(row) if row else None

    try:
        return condition.evaluate(lead, fetch=fetch, params={"me": None, "my_team": None, "my_teams": []})
    except conditions.ConditionError:
        return True
