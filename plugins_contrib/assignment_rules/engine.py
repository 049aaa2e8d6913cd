"""Deciding who owns a new record: ordered rules, first match wins, a required fallback.

:func:`decide` runs inside the record's write transaction (``conn``). A rule matches when its
entity is the record's and its ``when`` condition holds; its strategy then chooses among the
rule's candidates those who are *available*: active, not absent (``absences:`` or the user's
``absence_field``), inside their working hours, not on a Japanese public holiday or company
holiday, under ``capacity_per_day`` (counted from the assignment log) and ``max_open``. A rule
whose strategy finds nobody passes to the next rule (the log's trace says why); the fallback
target is tried last, and its ``user`` gets the record when even the fallback finds nobody.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import holidays
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from crmkit.core import conditions
from plugins_contrib.assignment_rules.rules import AssignmentRules, Target
from plugins_contrib.assignment_rules.strategies import strategies
from plugins_contrib.assignment_rules.tables import COUNTER, LOG, TURN

if TYPE_CHECKING:
    from crmkit.app import CRM

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=64)
def _jp_holidays(year: int) -> Any:
    return holidays.country_holidays("JP", years=year)


@dataclass
class Candidate:
    """A possible owner and whether they can take a record now (``reason`` says why not)."""

    user_id: int | None
    username: str
    display_name: str = ""
    available: bool = False
    reason: str | None = None
    load: int | None = None
    team: int | None = None  # the user's primary team (the record's team when they get it)

    def as_json(self) -> dict[str, Any]:
        out = {"id": self.user_id, "user": self.username, "name": self.display_name or self.username,
               "available": self.available, "why": self.reason, "team": self.team}
        if self.load is not None:
            out["load"] = self.load
        return out


@dataclass
class Decision:
    """Who gets the record and why: what the assignment log keeps."""

    owner: int | None
    rule: str | None
    strategy: str | None
    reason: str
    candidates: list[Candidate] = field(default_factory=list)
    trace: list[dict[str, Any]] = field(default_factory=list)  # rules that matched but found nobody

    def as_dict(self) -> dict[str, Any]:
        return {"owner": self.owner, "rule": self.rule, "strategy": self.strategy, "reason": self.reason,
                "candidates": [c.as_json() for c in self.candidates], "trace": list(self.trace)}


def _skipped(rule: str, strategy: str, why: str, candidates: list[Candidate]) -> dict[str, Any]:
    return {"rule": rule, "strategy": strategy, "why": why, "candidates": [c.as_json() for c in candidates]}


class AssignContext:
    """What a strategy works with: the record, its rule's target and candidates, the clock and state."""

    def __init__(self, crm: CRM, conn: sa.Connection, entity: str, record: dict[str, Any], rules: AssignmentRules,
                 rule_name: str, target: Target, now: dt.datetime):
        self.crm, self.conn, self.entity, self.record = crm, conn, entity, record
        self.rules, self.rule_name, self.target, self.now = rules, rule_name, target, now
        self.local = now.astimezone(rules.zone)
        self.key = f"{entity}:{rule_name}"[:200]
        self.why: str | None = None
        self.users = crm.schema.tables["user"]
        self.candidates: list[Candidate] = self._pool()

    # -- candidates ----------------------------------------------------------------------------
    def _pool(self) -> list[Candidate]:
        t = self.target
        if t.members:
            return self._by_usernames(list(t.members))
        if t.team:
            if t.team in self.rules.teams:
                return self._by_usernames(list(self.rules.teams[t.team]))
            return self._team_members(t.team)
        return []

    def _rows(self, where: Any) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute(sa.select(self.users).where(where).order_by(self.users.c.id))
                .mappings()]

    def _by_usernames(self, names: list[str]) -> list[Candidate]:
        rows = {r["username"]: r for r in self._rows(self.users.c.username.in_(names))}
        out = [self._candidate(rows[n]) if n in rows else Candidate(None, n, reason="no such user") for n in names]
        return sorted(out, key=lambda c: (c.user_id is None, c.user_id or 0))

    def _team_members(self, team_name: str) -> list[Candidate]:
        teams = self.crm.schema.tables["team"]
        link = self.crm.schema.link_tables.get(("team", "members"))
        team_id = self.conn.execute(sa.select(teams.c.id).where(teams.c.name == team_name)).scalar()
        if team_id is None:
            self.why = f"no team {team_name!r}"
            return []
        # Members: the team's member list and the users whose primary team it is.
        where = self.users.c.primary_team == team_id if "primary_team" in self.users.c else sa.false()
        if link is not None:
            where = sa.or_(where, self.users.c.id.in_(sa.select(link.c.target_id).where(link.c.source_id == team_id)))
        return [self._candidate(r) for r in self._rows(where)]

    def candidate_for_username(self, username: str) -> Candidate:
        """The availability of one user, by username."""
        rows = self._rows(self.users.c.username == username)
        return self._candidate(rows[0]) if rows else Candidate(None, username, reason="no such user")

    def candidate_for_id(self, user_id: int) -> Candidate:
        """The availability of one user, by id."""
        rows = self._rows(self.users.c.id == user_id)
        return self._candidate(rows[0]) if rows else Candidate(None, f"#{user_id}", reason="no such user")

    def _candidate(self, user: dict[str, Any]) -> Candidate:
        c = Candidate(user["id"], user["username"], user.get("display_name") or "", team=user.get("primary_team"))
        c.reason = self._unavailable(user)
        c.available = c.reason is None
        return c

    # -- availability --------------------------------------------------------------------------
    def _unavailable(self, user: dict[str, Any]) -> str | None:
        rules, today = self.rules, self.local.date()
        if user.get("active") is False:
            return "inactive"
        for name, start, end in rules.absences:
            if name == user["username"] and start <= today <= end:
                return f"absent until {end.isoformat()}"
        if rules.absence_field:
            until = user.get(rules.absence_field)
            if isinstance(until, dt.datetime):
                until_utc = until if until.tzinfo else until.replace(tzinfo=dt.UTC)
                if until_utc > self.now:
                    return f"absent until {until_utc.astimezone(rules.zone):%Y-%m-%d %H:%M}"
            elif isinstance(until, dt.date) and until >= today:
                return f"absent until {until.isoformat()}"
        if today in rules.company_holidays:
            return "company holiday"
        if rules.japanese_holidays:
            name = _jp_holidays(today.year).get(today)
            if name:
                return f"public holiday ({name})"
        member = rules.members.get(user["username"])
        hours = (member.hours if member and member.hours else None) or rules.hours
        if hours is not None and not hours.contains(self.local):
            return "outside working hours"
        if member and member.capacity_per_day is not None:
            assigned = self.assigned_today(user["id"])
            if assigned >= member.capacity_per_day:
                return f"daily capacity reached ({assigned}/{member.capacity_per_day})"
        if member and member.max_open is not None:
            n = self.open_counts([user["id"]]).get(user["id"], 0)
            if n >= member.max_open:
                return f"maximum open reached ({n}/{member.max_open})"
        return None

    def assigned_today(self, user_id: int) -> int:
        """Records assigned to the user since local midnight (from the assignment log)."""
        table = self.crm.system_tables[LOG]
        midnight = dt.datetime.combine(self.local.date(), dt.time(0), self.rules.zone).astimezone(dt.UTC)
        return self.conn.execute(
            sa.select(sa.func.count()).select_from(table).where(table.c.owner == user_id, table.c.at >= midnight)
        ).scalar_one()

    def open_counts(self, user_ids: list[int]) -> dict[int, int]:
        """Open records (``open:`` conditions over ``load_entities``) owned by each user."""
        ids = [i for i in user_ids if i is not None]
        if not ids:
            return {}
        out: dict[int, int] = {}
        params = {"me": None, "my_team": None, "my_teams": [], "now": self.now, "today": self.local.date()}
        for name in self.rules.load_entities:
            table = self.crm.schema.tables[name]
            where = [table.c.owner.in_(ids)]
            if name in self.rules.open:
                where.append(self.rules.open[name].to_sql(self.crm.schema.tables, params))
            rows = self.conn.execute(sa.select(table.c.owner, sa.func.count()).where(*where).group_by(table.c.owner))
            for owner, n in rows:
                out[owner] = out.get(owner, 0) + n
        return out

    # -- turn state ----------------------------------------------------------------------------
    def _insert(self) -> Callable[..., Any]:
        return pg_dialect.insert if self.conn.dialect.name == "postgresql" else sqlite_dialect.insert

    def lock_turn(self) -> int | None:
        """Lock this rule's turn row for the rest of the transaction; returns the last user given one.

        PostgreSQL: the row is created if missing (ON CONFLICT DO NOTHING waits for a concurrent
        creator) and locked with SELECT … FOR UPDATE, so concurrent creations queue here and each
        reads the turn the previous one committed. SQLite: the write transaction is exclusive.
        """
        turn = self.crm.system_tables[TURN]
        stmt = sa.select(turn.c.key, turn.c.last_user_id).where(turn.c.key == self.key)
        if self.conn.dialect.name == "postgresql":
            stmt = stmt.with_for_update()
        row = self.conn.execute(stmt).first()
        if row is None:  # the rule's first record: create the row (or wait for who is creating it)
            self.conn.execute(
                self._insert()(turn).values(key=self.key, last_user_id=None, updated_at=self.now)
                .on_conflict_do_nothing(index_elements=["key"])
            )
            row = self.conn.execute(stmt).first()
        return row.last_user_id

    def set_turn(self, user_id: int) -> None:
        """Record that ``user_id`` got this rule's latest record."""
        turn = self.crm.system_tables[TURN]
        self.conn.execute(sa.update(turn).where(turn.c.key == self.key).values(last_user_id=user_id,
                                                                                updated_at=self.now))

    def counts(self) -> dict[int, int]:
        """Records given per member under this rule (weighted strategy)."""
        counter = self.crm.system_tables[COUNTER]
        return dict(self.conn.execute(sa.select(counter.c.user_id, counter.c.count).where(counter.c.key == self.key))
                    .all())

    def bump(self, user_id: int) -> None:
        """Count one more record for ``user_id`` under this rule."""
        counter = self.crm.system_tables[COUNTER]
        stmt = self._insert()(counter).values(key=self.key, user_id=user_id, count=1)
        stmt = stmt.on_conflict_do_update(index_elements=["key", "user_id"], set_={"count": counter.c.count + 1})
        self.conn.execute(stmt)


def _fetcher(crm: CRM, conn: sa.Connection) -> Callable[[str, Any], Any]:
    def fetch(entity: str, id: Any) -> Any:
        table = crm.schema.tables[entity]
        row = conn.execute(sa.select(table).where(table.c.id == id)).mappings().first()
        return dict(row) if row else None

    return fetch


def decide(crm: CRM, conn: sa.Connection, entity: str, record: dict[str, Any], rules: AssignmentRules,
           now: dt.datetime | None = None) -> Decision:
    """Who owns ``record`` (being created) under ``rules``, inside ``conn``'s transaction."""
    now = now or dt.datetime.now(dt.UTC)
    now = now if now.tzinfo else now.replace(tzinfo=dt.UTC)
    known = strategies(crm)
    trace: list[dict[str, Any]] = []
    fetch = _fetcher(crm, conn)
    params = {"me": None, "my_team": None, "my_teams": [], "now": now, "today": now.astimezone(rules.zone).date()}
    for rule in rules.rules:
        if rule.entity != entity:
            continue
        try:
            if rule.when is not None and not rule.when.evaluate(record, fetch=fetch, params=params):
                continue
        except conditions.ConditionError as exc:
            trace.append(_skipped(rule.name, rule.target.strategy, f"condition failed ({exc})", []))
            continue
        ctx = AssignContext(crm, conn, entity, record, rules, rule.name, rule.target, now)
        result = known[rule.target.strategy](ctx)
        if result is not None:
            owner, reason = result
            return Decision(owner, rule.name, rule.target.strategy, reason, ctx.candidates, trace)
        trace.append(_skipped(rule.name, rule.target.strategy, ctx.why or "nobody available", ctx.candidates))
    fb = rules.fallback
    ctx = AssignContext(crm, conn, entity, record, rules, "fallback", fb, now)
    result = known[fb.strategy](ctx)
    if result is not None:
        owner, reason = result
        return Decision(owner, "fallback", fb.strategy, f"fallback: {reason}", ctx.candidates, trace)
    forced = ctx.candidate_for_username(fb.user or "")
    if forced.user_id is None:
        log.error("assignment: fallback user %r does not exist; %s #new left without owner", fb.user, entity)
        return Decision(None, "fallback", "direct", f"fallback user {fb.user!r} does not exist", [forced], trace)
    why = f" ({forced.reason})" if forced.reason else ""
    if ctx.why:
        trace.append(_skipped("fallback", fb.strategy, ctx.why, ctx.candidates))
    return Decision(forced.user_id, "fallback", "direct", f"fallback user {forced.username}{why}", [forced], trace)


def write_log(crm: CRM, conn: sa.Connection, entity: str, record_id: int | None, decision: dict[str, Any],
              now: dt.datetime | None = None) -> None:
    """Append a decision to the assignment log."""
    table = crm.system_tables[LOG]
    conn.execute(sa.insert(table).values(
        entity=entity, record_id=record_id, rule=decision.get("rule"), strategy=decision.get("strategy"),
        owner=decision.get("owner"), reason=decision.get("reason") or "", candidates=decision.get("candidates") or [],
        trace=decision.get("trace") or [], at=now or dt.datetime.now(dt.UTC),
    ))


def log_of(crm: CRM, entity: str, record_id: int) -> list[dict[str, Any]]:
    """A record's assignment decisions, newest first."""
    table = crm.system_tables[LOG]
    with crm.engine.connect() as conn:
        rows = conn.execute(sa.select(table).where(table.c.entity == entity, table.c.record_id == record_id)
                            .order_by(table.c.id.desc()).limit(20)).mappings().all()
    return [dict(r) for r in rows]


def dry_run(crm: CRM, rules: AssignmentRules, *, sample: int, now: dt.datetime | None,
            echo: Callable[[str], None]) -> None:
    """Print who the ``sample`` newest records of each entity would get as if created now.

    Runs the real strategies (turns advance from record to record, capacities fill up) inside
    a transaction that is rolled back at the end, so nothing is written.
    """
    from crmkit.core.db import write_connection

    now = now or dt.datetime.now(dt.UTC)
    now = now if now.tzinfo else now.replace(tzinfo=dt.UTC)
    echo(f"Assignment rules {rules.source}, at {now.astimezone(rules.zone).isoformat(timespec='minutes')} (dry run):")
    users = crm.schema.tables["user"]
    with write_connection(crm.engine) as conn:
        trans = conn.begin()
        try:
            names = dict(conn.execute(sa.select(users.c.id, users.c.username)).all())
            for entity in rules.entities:
                table = crm.schema.tables[entity]
                title = crm.catalog[entity].title_field
                rows = conn.execute(sa.select(table).order_by(table.c.id.desc()).limit(sample)).mappings().all()
                for row in reversed(rows):
                    record = {**dict(row), "owner": None}
                    d = decide(crm, conn, entity, record, rules, now)
                    write_log(crm, conn, entity, None, d.as_dict(), now)  # so capacities count it
                    who = names.get(d.owner, "nobody") if d.owner is not None else "nobody"
                    current = names.get(row.get("owner"), "-")
                    echo(f"{entity} #{row['id']} {row.get(title) or ''}: {who} "
                         f"(rule {d.rule}, {d.strategy}: {d.reason}; owner now: {current})")
                    for c in d.candidates:
                        mark = "available" if c.available else c.reason
                        load = f", {c.load} open" if c.load is not None else ""
                        echo(f"    {c.username}: {mark}{load}")
                    for t in d.trace:
                        echo(f"    passed over rule {t['rule']} ({t['strategy']}): {t['why']}")
        finally:
            trans.rollback()
    echo("Nothing was written.")
