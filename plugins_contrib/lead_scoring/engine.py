"""The scoring engine: one set-based SQL pipeline, used for one lead and for a million.

Every rule becomes a SELECT of the items it scores (the lead itself for fit rules, activities
linked to the lead, email/web events), with the item's time and its points after half-life
decay. The UNION of those goes through window functions, in this order:

1. ``once_per`` (lead, day, week, month): only the first item of each period counts;
2. the rule's ``cap``, then the group's ``cap``, then ``max_score``: items are taken in time
   order and the one that crosses a cap contributes only what is left (negative points are
   never capped);

and the result is written to ``scoring_ledger`` (every item with its raw and effective points
and a note saying why they differ) and summed into ``lead.scoring_score`` and its grade.

The same SQL runs for a save (``ids=[lead]``, inside the save's transaction, so the score
commits or rolls back with the data it is computed from) and for ``crmkit scoring recompute``
(ranges of lead ids, one transaction per chunk). There is no second implementation in Python
that could disagree with it. Days (``once_per: day``) are calendar days in the project's time
zone at the offset in force at ``now``.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from plugins_contrib.lead_scoring.rules import ACTIVITY, LEAD, Group, Rule, ScoringRules
from plugins_contrib.lead_scoring.tables import LEDGER, THRESHOLD

if TYPE_CHECKING:
    from crmkit.app import CRM

DAY = 86400.0
SCORE = "scoring_score"
GRADE = "scoring_grade"
UPDATED = "scoring_updated_at"


# ---------------------------------------------------------------------------------------------
# Dialect helpers: seconds since the epoch and calendar months, on SQLite and PostgreSQL
# ---------------------------------------------------------------------------------------------
class epoch(FunctionElement):
    """Seconds since 1970-01-01 UTC of a date or datetime expression (a float)."""

    type = sa.Float()
    inherit_cache = True
    name = "epoch"


@compiles(epoch)
def _epoch_sqlite(element: Any, compiler: Any, **kw: Any) -> str:
    (arg,) = [compiler.process(c, **kw) for c in element.clauses]
    return f"((julianday({arg}) - 2440587.5) * 86400.0)"


@compiles(epoch, "postgresql")
def _epoch_pg(element: Any, compiler: Any, **kw: Any) -> str:
    (clause,) = list(element.clauses)
    arg = compiler.process(clause, **kw)
    if isinstance(getattr(clause, "type", None), sa.Date) and not isinstance(clause.type, sa.DateTime):
        arg = f"CAST({arg} AS TIMESTAMP)"  # a date: midnight, read as UTC like SQLite does
    return f"CAST(EXTRACT(EPOCH FROM {arg}) AS DOUBLE PRECISION)"


class month_index(FunctionElement):
    """year * 12 + month of an epoch-seconds expression (already shifted to local time)."""

    type = sa.Integer()
    inherit_cache = True
    name = "month_index"


@compiles(month_index)
def _month_sqlite(element: Any, compiler: Any, **kw: Any) -> str:
    (arg,) = [compiler.process(c, **kw) for c in element.clauses]
    return (f"(CAST(strftime('%Y', {arg}, 'unixepoch') AS INTEGER) * 12 + "
            f"CAST(strftime('%m', {arg}, 'unixepoch') AS INTEGER))")


@compiles(month_index, "postgresql")
def _month_pg(element: Any, compiler: Any, **kw: Any) -> str:
    (arg,) = [compiler.process(c, **kw) for c in element.clauses]
    ts = f"(to_timestamp({arg}) AT TIME ZONE 'UTC')"
    return f"CAST(EXTRACT(YEAR FROM {ts}) * 12 + EXTRACT(MONTH FROM {ts}) AS INTEGER)"


def _f(value: float | None) -> Any:
    return sa.cast(sa.null() if value is None else sa.literal(float(value)), sa.Float)


def _s(value: str) -> Any:
    return sa.cast(sa.literal(value), sa.String)


def _i(value: int) -> Any:
    return sa.literal_column(str(int(value)), sa.Integer)  # inlined: a small constant, not a parameter


class from_epoch(FunctionElement):
    """The UTC datetime of an epoch-seconds expression (inverse of :class:`epoch`)."""

    type = sa.DateTime(timezone=True)
    inherit_cache = True
    name = "from_epoch"


@compiles(from_epoch)
def _from_epoch_sqlite(element: Any, compiler: Any, **kw: Any) -> str:
    (arg,) = [compiler.process(c, **kw) for c in element.clauses]
    # the text SQLAlchemy stores for DateTime, microseconds included
    return f"strftime('%Y-%m-%d %H:%M:%f000', {arg}, 'unixepoch')"


@compiles(from_epoch, "postgresql")
def _from_epoch_pg(element: Any, compiler: Any, **kw: Any) -> str:
    (arg,) = [compiler.process(c, **kw) for c in element.clauses]
    return f"to_timestamp({arg})"


def utc_offset(crm: CRM, now: dt.datetime) -> int:
    """Seconds east of UTC of the project's time zone at ``now`` (for calendar-day periods)."""
    try:
        zone = ZoneInfo(crm.config.time_zone)
    except Exception:  # an unknown zone name: days in UTC rather than an error on every save
        return 0
    off = now.astimezone(zone).utcoffset()
    return int(off.total_seconds()) if off else 0


# ---------------------------------------------------------------------------------------------
# Which leads
# ---------------------------------------------------------------------------------------------
class Scope:
    """The leads a run covers: some ids, an id range (chunks of a full recompute), or all."""

    def __init__(self, ids: Sequence[int] | None = None, id_range: tuple[int, int] | None = None):
        self.ids = sorted({int(i) for i in ids}) if ids is not None else None
        self.id_range = id_range

    @property
    def narrow(self) -> bool:
        """True when the scope is some ids or an id range (not every lead)."""
        return self.ids is not None or self.id_range is not None

    def on(self, column: Any) -> Any:
        """The condition on a column holding lead ids."""
        if self.ids is not None:
            return column.in_(self.ids) if self.ids else sa.false()
        if self.id_range is not None:
            return column.between(*self.id_range)
        return sa.true()


# ---------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------
class Pipeline:
    """Builds the ledger SELECT for some rules, a time ``now`` and a :class:`Scope`."""

    def __init__(self, crm: CRM, rules: ScoringRules, now: dt.datetime):
        self.crm = crm
        self.rules = rules
        self.now = now if now.tzinfo else now.replace(tzinfo=dt.UTC)
        self.now_epoch = self.now.timestamp()
        self.offset = utc_offset(crm, self.now)
        self.tables = crm.schema.tables
        self.lead = self.tables[LEAD]
        self.sqlite = crm.engine.dialect.name == "sqlite"
        self.params = {"me": None, "my_team": None, "my_teams": [], "now": self.now,
                       "today": self.now.date()}

    # -- pieces ------------------------------------------------------------------------------
    def _decay(self, at: Any, group: Group, rule: Rule) -> Any:
        half_life = rule.half_life_days or group.half_life_days
        if not half_life:
            return None
        age = (sa.literal(self.now_epoch, sa.Float) - epoch(at)) / DAY
        age = sa.case((age < 0, 0.0), else_=age)
        return sa.func.power(0.5, age / float(half_life))

    def _bucket(self, at: Any, rule: Rule) -> Any:
        if not rule.once_per:
            return sa.cast(sa.null(), sa.Integer)
        if rule.once_per == "lead":
            return sa.cast(sa.literal(0), sa.Integer)
        local = epoch(at) + float(self.offset)
        if rule.once_per == "month":
            return month_index(local)
        days = sa.func.floor(local / DAY)
        if rule.once_per == "week":  # 1970-01-01 was a Thursday: +3 makes weeks start on Monday
            return sa.cast(sa.func.floor((days + 3) / 7), sa.Integer)
        return sa.cast(days, sa.Integer)

    def _window(self, at: Any, group: Group, lead: Any) -> list[Any]:
        w = group.window
        if w is None:
            return []
        t = epoch(at)
        if w.rolling_days is not None:
            now = sa.literal(self.now_epoch, sa.Float)
            return [t > now - w.rolling_days * DAY, t <= now]
        start = epoch(lead.c[w.from_field])
        return [lead.c[w.from_field].is_not(None), t >= start + w.start_days * DAY, t < start + w.end_days * DAY]

    def _part(self, group: Group, rule: Rule, scope: Scope, gi: int, seq: int) -> Any:
        lead = self.lead
        if group.source == "lead":
            at = lead.c.updated_at
            src, src_id, lead_id = 0, lead.c.id, lead.c.id
            where = [scope.on(lead.c.id), rule.when.to_sql(self.tables, self.params)]
            from_ = lead
        elif group.source == "activity":
            act = self.tables[ACTIVITY]
            at = sa.func.coalesce(*[act.c[d] for d in group.dates]) if len(group.dates) > 1 else act.c[group.dates[0]]
            src, src_id, lead_id = 1, act.c.id, act.c[group.link]
            when = rule.when.to_sql(self.tables, self.params)
            if self.sqlite and scope.narrow:
                # SQLite has no statistics: given ``type = 'call' AND lead BETWEEN a AND b`` it picks the
                # type index and reads every call in the table for each chunk (quadratic in a recompute).
                # Inside a CASE the rule's condition is no index candidate, so the lead index is used.
                when = sa.case((when, 1), else_=0) == 1
            where = [scope.on(act.c[group.link]), when]
            from_ = act
            if group.window is not None and group.window.from_field:
                from_ = act.join(lead, lead.c.id == act.c[group.link])
                where.append(scope.on(lead.c.id))  # so the lead table is never the outer full scan
        else:
            ev = self.crm.system_tables["scoring_event"]
            at = ev.c.at
            src, src_id, lead_id = 2, ev.c.id, ev.c.lead_id
            where = [scope.on(ev.c.lead_id), ev.c.name == rule.event]
            from_ = ev
            if group.window is not None and group.window.from_field:
                from_ = ev.join(lead, lead.c.id == ev.c.lead_id)
                where.append(scope.on(lead.c.id))
        where += self._window(at, group, lead)
        decay = self._decay(at, group, rule)
        points = _f(rule.points)
        value = points * decay if decay is not None else points
        return (
            sa.select(
                lead_id.label("lead_id"), _i(seq).label("seq"), _i(gi).label("grp"), _i(src).label("src"),
                src_id.label("source_id"), sa.cast(epoch(at), sa.Float).label("t"), points.label("points"),
                sa.cast(value, sa.Float).label("v0"), self._bucket(at, rule).label("bucket"),
                _f(rule.cap).label("rule_cap"), _f(group.cap).label("group_cap"),
            )
            .select_from(from_)
            .where(*where)
        )

    def select(self, scope: Scope, *extra: Any) -> Any:
        """The ledger rows (lead_id, group_name, rule_name, source_entity, source_id, at, points,
        effective, note, then ``extra`` columns) for the leads in ``scope``.

        Each step is a CTE rather than a nested subquery (SQLite's parser has a small stack), works
        on small values (integers for rules and groups, epoch seconds for times) and runs its window
        only over the rows it concerns (rules with ``once_per``, rules and groups with caps): window
        functions sort, and sorting is what a recompute of millions of items spends its time on.
        """
        groups = self.rules.groups
        # seq: the rule's position in the file, so items of the same time fill caps in file order
        parts = [self._part(g, r, scope, gi, gi * 1000 + ri)
                 for gi, g in enumerate(groups) for ri, r in enumerate(g.rules)]
        raw = sa.union_all(*parts).cte("raw") if len(parts) > 1 else parts[0].cte("raw")
        rules = [r for g in groups for r in g.rules]
        base = ["lead_id", "seq", "grp", "src", "source_id", "t", "points", "v0"]

        def order(src: Any) -> list[Any]:
            return [src.c.t, src.c.src, src.c.source_id, src.c.seq]

        def stage(src: Any, carry: list[str], value: str, out: str, needed: Any, partition: Callable,
                  compute: Callable, split: bool) -> Any:
            """``out`` = ``compute(windowed rows)`` where ``needed``, else ``value`` (a copy)."""
            inner = (sa.select(*[src.c[n] for n in carry], *partition(src))
                     .where(needed if split else sa.true()).cte(out + "_in"))
            done = sa.select(*[inner.c[n] for n in carry], compute(inner).label(out))
            if not split:
                return done.cte(out)
            rest = sa.select(*[src.c[n] for n in carry], src.c[value].label(out)).where(~needed)
            return sa.union_all(done, rest).cte(out)

        def cap_stage(src: Any, carry: list[str], value: str, out: str, cap: Callable, keys: Callable,
                      split: bool) -> Any:
            def window(s: Any) -> list[Any]:
                run = sa.func.sum(s.c[value]).over(partition_by=keys(s), order_by=order(s), rows=(None, 0))
                return [run.label("run")]

            def limited(s: Any) -> Any:
                val, before, capv = s.c[value], s.c.run - s.c[value], cap(s)
                return sa.case((capv.is_(None) | (val <= 0), val), (before >= capv, 0.0),
                               (before + val > capv, capv - before), else_=val)

            needed = cap(src).is_not(None) if split else sa.true()
            return stage(src, carry, value, out, needed, window, limited, split)

        # 1. once_per: only the first item of each period of a rule counts
        carry = base + ["rule_cap", "group_cap"]
        if any(r.once_per for r in rules):
            def numbered(s: Any) -> list[Any]:
                return [sa.func.row_number().over(partition_by=[s.c.lead_id, s.c.seq, s.c.bucket],
                                                  order_by=order(s)).label("rn")]

            cur = stage(raw, carry, "v0", "v1", raw.c.bucket.is_not(None), numbered,
                        lambda s: sa.case((s.c.rn == 1, s.c.v0), else_=0.0), split=True)
        else:
            cur = sa.select(*[raw.c[n] for n in carry], raw.c.v0.label("v1")).cte("v1")
        carry = carry + ["v1"]
        # 2. the rule's cap, 3. the group's cap, 4. max_score
        if any(r.cap for r in rules):
            cur = cap_stage(cur, carry, "v1", "v2", lambda s: s.c.rule_cap, lambda s: [s.c.lead_id, s.c.seq], True)
        else:
            cur = sa.select(*[cur.c[n] for n in carry], cur.c.v1.label("v2")).cte("v2")
        carry = carry + ["v2"]
        if any(g.cap for g in groups):
            cur = cap_stage(cur, carry, "v2", "v3", lambda s: s.c.group_cap, lambda s: [s.c.lead_id, s.c.grp], True)
        else:
            cur = sa.select(*[cur.c[n] for n in carry], cur.c.v2.label("v3")).cte("v3")
        carry = carry + ["v3"]
        if self.rules.max_score is not None:
            total = _f(self.rules.max_score)
            cur = cap_stage(cur, carry, "v3", "v4", lambda s: total, lambda s: [s.c.lead_id], False)
        else:
            cur = sa.select(*[cur.c[n] for n in carry], cur.c.v3.label("v4")).cte("v4")
        note = sa.case(
            ((cur.c.v1 != cur.c.v0), "once_per"),
            ((cur.c.v2 != cur.c.v1), "rule_cap"),
            ((cur.c.v3 != cur.c.v2), "group_cap"),
            ((cur.c.v4 != cur.c.v3), "max_score"),
            ((cur.c.v0 != cur.c.points), "decayed"),
            else_=sa.null(),
        )
        seqs = [(gi * 1000 + ri, g.name, r.name) for gi, g in enumerate(groups) for ri, r in enumerate(g.rules)]
        group_name = sa.case(*[(cur.c.grp == gi, g.name) for gi, g in enumerate(groups)], else_=sa.null())
        rule_name = sa.case(*[(cur.c.seq == seq, rname) for seq, _g, rname in seqs], else_=sa.null())
        source = sa.case((cur.c.src == 0, LEAD), (cur.c.src == 1, ACTIVITY), else_="event")
        return sa.select(
            cur.c.lead_id, group_name.label("group_name"), rule_name.label("rule_name"),
            source.label("source_entity"), cur.c.source_id, from_epoch(cur.c.t).label("at"),
            cur.c.points, cur.c.v4.label("effective"), note.label("note"), *extra,
        )

    # -- score ----------------------------------------------------------------------------------
    def score_values(self) -> dict[str, Any]:
        """SET clause of the lead: the rounded ledger sum and the time (the grade follows from it)."""
        ledger = self.crm.system_tables[LEDGER]
        total = (
            sa.select(sa.func.coalesce(sa.func.sum(ledger.c.effective), 0.0))
            .where(ledger.c.lead_id == self.lead.c.id)
            .scalar_subquery()
        )
        return {SCORE: sa.func.round(sa.cast(total, sa.Numeric(18, 6)), 2), UPDATED: self.now}

    def grade_values(self) -> dict[str, Any]:
        """SET clause of the lead's grade from its (already updated) score."""
        if GRADE not in self.lead.c:
            return {}
        score = self.lead.c[SCORE]
        if not self.rules.grades:
            return {GRADE: sa.null()}
        return {GRADE: sa.case(*[(score >= g_min, name) for name, g_min in self.rules.grades], else_=sa.null())}


def grade_of(rules: ScoringRules, score: float) -> str | None:
    """The grade a score gets (same rule as the SQL)."""
    for name, g_min in rules.grades:
        if score >= g_min:
            return name
    return None


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def lock_leads(conn: sa.Connection, crm: CRM, ids: Sequence[int]) -> None:
    """Serialise concurrent recomputes of the same leads (PostgreSQL row locks; SQLite's write
    transaction is already exclusive). Without it two activities saved at once for one lead
    could each compute the score without the other's points and the last commit would win."""
    if conn.dialect.name == "postgresql" and ids:
        lead = crm.schema.tables[LEAD]
        conn.execute(sa.select(lead.c.id).where(lead.c.id.in_(sorted(set(ids)))).order_by(lead.c.id).with_for_update())


def recompute(crm: CRM, conn: sa.Connection, rules: ScoringRules, scope: Scope, now: dt.datetime) -> None:
    """Replace the ledger rows and scores of the leads in ``scope``; record thresholds reached.

    Runs in ``conn``'s transaction (the caller commits). Threshold *actions* run after the commit
    (:func:`plugins_contrib.lead_scoring.actions.run_pending`).
    """
    pipe = Pipeline(crm, rules, now)
    ledger = crm.system_tables[LEDGER]
    conn.execute(sa.delete(ledger).where(scope.on(ledger.c.lead_id)))
    cols = ["lead_id", "group_name", "rule_name", "source_entity", "source_id", "at", "points", "effective", "note",
            "computed_at"]
    items = pipe.select(scope, sa.literal(pipe.now, ledger.c.computed_at.type).label("computed_at"))
    conn.execute(sa.insert(ledger).from_select(cols, items))
    lead = pipe.lead
    conn.execute(sa.update(lead).where(scope.on(lead.c.id)).values(pipe.score_values()))
    grades = pipe.grade_values()
    if grades:  # a second, cheap UPDATE: in the first, each CASE branch would re-run the sum
        conn.execute(sa.update(lead).where(scope.on(lead.c.id)).values(grades))
    record_thresholds(crm, conn, rules, scope, pipe.now)


def record_thresholds(crm: CRM, conn: sa.Connection, rules: ScoringRules, scope: Scope, now: dt.datetime) -> None:
    """Mark thresholds newly reached (actions pending) and forget those no longer reached."""
    if not rules.thresholds:
        return
    lead = crm.schema.tables[LEAD]
    state = crm.system_tables[THRESHOLD]
    insert = pg_dialect.insert if conn.dialect.name == "postgresql" else sqlite_dialect.insert
    for t in rules.thresholds:
        reached = (
            sa.select(lead.c.id, sa.literal(t.name, sa.String), sa.literal(now, state.c.reached_at.type),
                      sa.cast(lead.c[SCORE], sa.Float), sa.false())
            .where(scope.on(lead.c.id), lead.c[SCORE] >= t.min)
            .where(~sa.exists().where(state.c.lead_id == lead.c.id, state.c.name == t.name))
        )
        stmt = insert(state).from_select(["lead_id", "name", "reached_at", "score", "actions_done"], reached)
        conn.execute(stmt.on_conflict_do_nothing(index_elements=["lead_id", "name"]))
        below = sa.select(lead.c.id).where(scope.on(lead.c.id), sa.or_(lead.c[SCORE] < t.min, lead.c[SCORE].is_(None)))
        conn.execute(sa.delete(state).where(state.c.name == t.name, state.c.lead_id.in_(below)))


def recompute_all(crm: CRM, rules: ScoringRules, *, now: dt.datetime | None = None, chunk: int = 20000,
                  progress: Callable[[int], None] | None = None) -> int:
    """Recompute every lead, set-based, one transaction per chunk of ``chunk`` lead ids.

    ``progress(n)`` is called after each chunk with the number of leads it covered. Returns
    the number of leads.
    """
    from crmkit.core.db import write_connection

    now = now or dt.datetime.now(dt.UTC)
    lead = crm.schema.tables[LEAD]
    with crm.engine.connect() as conn:
        lo, hi, total = conn.execute(sa.select(sa.func.min(lead.c.id), sa.func.max(lead.c.id),
                                               sa.func.count())).one()
    if not total:
        return 0
    start = lo
    while start <= hi:
        end = start + chunk - 1
        with write_connection(crm.engine) as conn, conn.begin():
            recompute(crm, conn, rules, Scope(id_range=(start, end)), now)
            n = conn.execute(sa.select(sa.func.count()).where(lead.c.id.between(start, end))).scalar_one()
        if progress:
            progress(n)
        start = end + 1
    return total


# ---------------------------------------------------------------------------------------------
# Reading (panel, dry run)
# ---------------------------------------------------------------------------------------------
def ledger_rows(crm: CRM, lead_id: int, limit: int = 200) -> list[dict[str, Any]]:
    """A lead's ledger, newest first."""
    ledger = crm.system_tables[LEDGER]
    with crm.engine.connect() as conn:
        rows = conn.execute(
            sa.select(ledger).where(ledger.c.lead_id == lead_id)
            .order_by(ledger.c.at.desc(), ledger.c.id.desc()).limit(limit)
        ).mappings().all()
    return [dict(r) for r in rows]


def summarize(rows: Sequence[Any]) -> dict[int, dict[str, Any]]:
    """Per lead: total and per-group / per-rule effective points from ledger-shaped rows."""
    out: dict[int, dict[str, Any]] = defaultdict(lambda: {"total": 0.0, "groups": defaultdict(float),
                                                          "rules": defaultdict(float), "items": 0})
    for r in rows:
        m = r._mapping if hasattr(r, "_mapping") else r
        s = out[m["lead_id"]]
        s["total"] += m["effective"]
        s["groups"][m["group_name"]] += m["effective"]
        s["rules"][(m["group_name"], m["rule_name"])] += m["effective"]
        s["items"] += 1
    return out


def dry_run(crm: CRM, rules: ScoringRules, *, sample: int, now: dt.datetime | None,
            echo: Callable[[str], None]) -> None:
    """Print what the ``sample`` newest leads would score under ``rules``; writes nothing."""
    now = now or dt.datetime.now(dt.UTC)
    lead = crm.schema.tables[LEAD]
    title = crm.catalog[LEAD].title_field
    with crm.engine.connect() as conn:
        leads = conn.execute(
            sa.select(lead.c.id, lead.c[title], lead.c[SCORE] if SCORE in lead.c else sa.null())
            .order_by(lead.c.id.desc()).limit(sample)
        ).all()
        ids = [r[0] for r in leads]
        rows = conn.execute(Pipeline(crm, rules, now).select(Scope(ids=ids))).all() if ids else []
    sums = summarize(rows)
    echo(f"Scoring rules {rules.source} on {len(ids)} lead(s), at {now.isoformat(timespec='seconds')} (dry run):")
    for lead_id, name, current in leads:
        s = sums.get(lead_id)
        total = round(s["total"], 2) if s else 0.0
        grade = grade_of(rules, total)
        now_txt = f" (stored: {float(current):g})" if current is not None else ""
        echo(f"lead #{lead_id} {name or ''}: {total:g}{f' grade {grade}' if grade else ''}{now_txt}")
        if s:
            for g in rules.groups:
                if g.name not in s["groups"]:
                    continue
                parts = [f"{r.name} {round(s['rules'][(g.name, r.name)], 2):g}" for r in g.rules
                         if (g.name, r.name) in s["rules"]]
                echo(f"    {g.name}: {round(s['groups'][g.name], 2):g} ({', '.join(parts)})")
    echo("Nothing was written.")
