"""The scoring engine: one set-based SQL pipeline, used for one lead and for a million.

Every rule becomes a SELECT of the items it scores (the lead itself for fit rules, activities
linked to the lead, email/web events), with the item's time and its points after half-life
decay. Each source table is read once for all the groups on it, with a 0/1 flag per rule
(conditions are evaluated once per row, and the only condition the planner sees is the leads'
scope). The items then go through window functions, each only over the rows it concerns:

1. ``once_per`` (lead, day, week, month): only the first item of each period counts (over the
   rule's items);
2. the rule's ``cap`` (over the rule's items), then the group's ``cap`` (over the group's), then
   ``max_score`` (over all the lead's): items are taken in time order and the one that crosses a
   cap contributes only what is left (negative points are never capped);

and the result is written to ``scoring_ledger`` (every item with its raw and effective points
and a note saying why they differ) and summed into ``lead.scoring_score`` and its grade.

The same SQL runs for a save (``ids=[lead]``, inside the save's transaction, so the score
commits or rolls back with the data it is computed from) and for ``crmkit scoring recompute``
(ranges of lead ids, one transaction per chunk; there the group caps and ``max_score`` are
applied in a second pass to the few leads that reach them, see :func:`recompute`). There is no
second implementation in Python that could disagree with it. Days (``once_per: day``) are
calendar days in the project's time zone at the offset in force at ``now``.
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

    def __init__(self, ids: Sequence[int] | None = None, id_range: tuple[int, int] | None = None,
                 bound: bool = False):
        self.ids = sorted({int(i) for i in ids}) if ids is not None else None
        self.id_range = id_range
        self.bound = bound  # ids as the expanding parameter ``sc_ids`` (a statement kept for reuse)

    @property
    def size(self) -> float:
        """How many leads the scope can hold at most (infinite for all leads)."""
        if self.ids is not None:
            return len(self.ids)
        if self.id_range is not None:
            return max(0, self.id_range[1] - self.id_range[0] + 1)
        return float("inf")

    def on(self, column: Any) -> Any:
        """The condition on a column holding lead ids."""
        if self.bound:
            return column.in_(sa.bindparam("sc_ids", expanding=True))
        if self.ids is not None:
            return column.in_(self.ids) if self.ids else sa.false()
        if self.id_range is not None:
            return column.between(*self.id_range)
        return sa.true()


# ---------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------
# The columns of an item between the steps of the pipeline, and its notes (why an item counts
# less than its points) as small integers: a step notes an item it changes unless an earlier step
# did; "decayed" is the weakest note, kept only when no step changed the item.
ITEM = ["lead_id", "seq", "src", "source_id", "t", "v", "note"]
NOTE_CODES = {"decayed": 1, "once_per": 2, "rule_cap": 3, "group_cap": 4, "max_score": 5}


def _noted(note: Any, changed: Any, code: int) -> Any:
    """The note of an item after a step with note ``code``; ``changed``: the step changed it."""
    return sa.case((note > NOTE_CODES["decayed"], note), (changed, code), else_=note)


class Pipeline:
    """Builds the ledger SELECT for some rules, a time ``now`` and a :class:`Scope`."""

    def __init__(self, crm: CRM, rules: ScoringRules, now: dt.datetime, bound: bool = False):
        self.crm = crm
        self.rules = rules
        self.now = now if now.tzinfo else now.replace(tzinfo=dt.UTC)
        self.now_epoch = self.now.timestamp()
        # bound: "now" is the parameter sc_now_epoch, so the statement serves every later save
        self.now_sql = (sa.bindparam("sc_now_epoch", type_=sa.Float) if bound
                        else sa.literal(self.now_epoch, sa.Float))
        self.offset = utc_offset(crm, self.now)
        self.tables = crm.schema.tables
        self.lead = self.tables[LEAD]
        self.params = {"me": None, "my_team": None, "my_teams": [], "now": self.now,
                       "today": self.now.date()}

    # -- pieces ------------------------------------------------------------------------------
    def _decay(self, t: Any, group: Group, rule: Rule) -> Any:
        half_life = rule.half_life_days or group.half_life_days
        if not half_life:
            return None
        age = (self.now_sql - t) / DAY
        age = sa.case((age < 0, 0.0), else_=age)
        return sa.func.power(0.5, age / float(half_life))

    def _bucket(self, t: Any, rule: Rule) -> Any:
        """The ``once_per`` period of an item whose time is ``t`` (epoch seconds)."""
        if rule.once_per == "lead":
            return sa.cast(sa.literal(0), sa.Integer)
        local = t + float(self.offset)
        if rule.once_per == "month":
            return month_index(local)
        days = sa.func.floor(local / DAY)
        if rule.once_per == "week":  # 1970-01-01 was a Thursday: +3 makes weeks start on Monday
            return sa.cast(sa.func.floor((days + 3) / 7), sa.Integer)
        return sa.cast(days, sa.Integer)

    def _window(self, src: Any, group: Group) -> list[Any]:
        w = group.window
        if w is None:
            return []
        t = src.c.t
        if w.rolling_days is not None:
            now = self.now_sql
            return [t > now - w.rolling_days * DAY, t <= now]
        start = src.c["w_" + w.from_field]
        return [start.is_not(None), t >= start + w.start_days * DAY, t < start + w.end_days * DAY]

    @staticmethod
    def _key(group: Group) -> tuple:
        """Groups with the same key read the same rows (one pass over the table serves them all)."""
        if group.source == "activity":
            return ("activity", group.link, group.dates)
        return (group.source,)

    def _source(self, key: tuple, members: list[tuple[int, Group]], scope: Scope, n: int) -> Any:
        """One read of a source table for all the groups on it: each row once, with its lead, its
        time (epoch seconds), the window start dates of its lead and, per rule, a 0/1 flag saying
        whether the rule's condition holds.

        The conditions are evaluated in the SELECT list, never in WHERE: the only condition the
        planner sees is the scope's, so each chunk range-scans its own leads' rows through the
        lead index (SQLite has no statistics and, given ``type = 'call' AND lead BETWEEN a AND b``,
        would pick the type index and read every call in the table for each chunk).
        """
        lead = self.lead
        if key[0] == "lead":
            table = lead
            lead_id, at = lead.c.id, lead.c.updated_at
        elif key[0] == "activity":
            table = self.tables[ACTIVITY]
            lead_id = table.c[key[1]]
            dates = [table.c[d] for d in key[2]]
            at = sa.func.coalesce(*dates) if len(dates) > 1 else dates[0]
        else:
            table = self.crm.system_tables["scoring_event"]
            lead_id, at = table.c.lead_id, table.c.at
        flags = []
        for gi, g in members:
            for ri, r in enumerate(g.rules):
                holds = table.c.name == r.event if key[0] == "event" else r.when.to_sql(self.tables, self.params)
                flags.append(sa.case((holds, 1), else_=0).label(f"m{gi * 1000 + ri}"))
        from_ = table
        starts = sorted({g.window.from_field for _gi, g in members if g.window is not None and g.window.from_field})
        if starts:  # (never for source: lead) an outer join keeps the source table the outer loop
            from_ = table.outerjoin(lead, lead.c.id == lead_id)
        cols = [lead_id.label("lead_id"), table.c.id.label("source_id"), sa.cast(epoch(at), sa.Float).label("t")]
        cols += [sa.cast(epoch(lead.c[f]), sa.Float).label("w_" + f) for f in starts]
        return sa.select(*cols, *flags).select_from(from_).where(scope.on(lead_id)).cte(f"src{n}")

    @staticmethod
    def _capped(cur: Any, run: Any, cap: float, code: int) -> list[Any]:
        """``v`` and ``note`` of items under ``cap``, given ``run``, the running sum of ``v`` up to and
        including each item: what is left below the cap (negative points are never capped)."""
        capv = _f(cap)
        v = cur.c.v
        before = run - v
        limited = sa.case((v <= 0, v), (before >= capv, 0.0), (before + v > capv, capv - before), else_=v)
        return [limited.label("v"), _noted(cur.c.note, limited != v, code).label("note")]

    def _rule(self, src: Any, group: Group, rule: Rule, seq: int, srcno: int) -> Any:
        """A rule's items (:data:`ITEM`), after decay, ``once_per`` and the rule's cap; both windows
        run over this rule's rows only."""
        decay = self._decay(src.c.t, group, rule)
        points = _f(rule.points)
        v0 = sa.cast(points * decay if decay is not None else points, sa.Float)
        note = sa.case((v0 != points, NOTE_CODES["decayed"]), else_=0) if decay is not None else _i(0)
        keys = [src.c.lead_id, _i(seq).label("seq"), _i(srcno).label("src"), src.c.source_id, src.c.t]
        where = [src.c[f"m{seq}"] == 1, *self._window(src, group)]
        if not rule.once_per:
            cur = sa.select(*keys, v0.label("v"), note.label("note")).where(*where)
        else:  # only the first item of each period counts
            cur = sa.select(*keys, v0.label("v"), note.label("note"), self._bucket(src.c.t, rule).label("bucket")) \
                .where(*where).cte(f"r{seq}_in")
            rn = sa.func.row_number().over(partition_by=[cur.c.lead_id, cur.c.bucket],
                                           order_by=[cur.c.t, cur.c.source_id])
            cur = sa.select(*[cur.c[n] for n in ITEM], rn.label("rn")).cte(f"r{seq}_rn")
            first = sa.case((cur.c.rn == 1, cur.c.v), else_=0.0)
            cur = sa.select(*[cur.c[n] for n in ITEM[:-2]], first.label("v"),
                            _noted(cur.c.note, first != cur.c.v, NOTE_CODES["once_per"]).label("note"))
        if rule.cap is None or not self._may_exceed(group, [rule], rule.cap):
            return cur
        cur = cur.cte(f"r{seq}_v1")
        run = sa.func.sum(cur.c.v).over(partition_by=[cur.c.lead_id], order_by=[cur.c.t, cur.c.source_id],
                                        rows=(None, 0))
        cur = sa.select(*[cur.c[n] for n in ITEM], run.label("run")).cte(f"r{seq}_run")
        return sa.select(*[cur.c[n] for n in ITEM[:-2]], *self._capped(cur, cur.c.run, rule.cap,
                                                                        NOTE_CODES["rule_cap"]))

    @staticmethod
    def _may_exceed(group: Group, rules: Sequence[Rule], cap: float) -> bool:
        """False when ``rules`` can never give a lead more than ``cap`` (fit rules score once per
        lead and rule, ``once_per: lead`` once per lead): that cap's window is then not needed."""
        if group.source != "lead" and any(r.once_per != "lead" for r in rules):
            return True
        return sum(max(r.points, 0.0) for r in rules) > cap

    def capped_groups(self) -> list[Group]:
        """The groups whose cap may bind (a window over the group's items is needed)."""
        return [g for g in self.rules.groups if g.cap is not None and self._may_exceed(g, g.rules, g.cap)]

    def select(self, scope: Scope, *extra: Any, caps: bool = True) -> Any:
        """The ledger rows (lead_id, group_name, rule_name, source_entity, source_id, at, points,
        effective, note, then ``extra`` columns) for the leads in ``scope``; with ``caps=False``
        without the groups' caps and ``max_score`` (see :func:`recompute`).

        Each source table is read once for all the groups on it (:meth:`_source`); each rule then
        takes its rows from that read. An item's value goes through, in order, ``once_per`` and the
        rule's cap (windows over the rule's rows only), the group's cap (over the group's rows) and
        ``max_score`` (over all), each only where the rules ask for it: window functions sort, and
        sorting is what a recompute of millions of items spends its time on. Items carry few, small
        values (rule number, epoch seconds, the value so far and a note code: names, points and
        texts are filled in at the end), and every step is a CTE rather than a nested subquery
        (SQLite's parser has a small stack).
        """
        groups = self.rules.groups
        keys: dict[tuple, list[tuple[int, Group]]] = {}
        for gi, g in enumerate(groups):
            keys.setdefault(self._key(g), []).append((gi, g))
        sources = {key: self._source(key, members, scope, n) for n, (key, members) in enumerate(keys.items())}
        srcno = {LEAD: 0, ACTIVITY: 1, "event": 2}
        parts = []
        capped = self.capped_groups()
        for gi, g in enumerate(groups):
            src = sources[self._key(g)]
            # seq: the rule's position in the file, so items of the same time fill caps in file order
            rules = [self._rule(src, g, r, gi * 1000 + ri, srcno[g.source]) for ri, r in enumerate(g.rules)]
            if not caps or g not in capped:
                parts += rules  # (flat: SQLite has no parenthesised compound SELECTs)
                continue
            cur = (sa.union_all(*rules) if len(rules) > 1 else rules[0]).cte(f"g{gi}")
            run = sa.func.sum(cur.c.v).over(partition_by=[cur.c.lead_id],
                                            order_by=[cur.c.t, cur.c.source_id, cur.c.seq], rows=(None, 0))
            cur = sa.select(*[cur.c[n] for n in ITEM], run.label("run")).cte(f"g{gi}_run")
            parts.append(sa.select(*[cur.c[n] for n in ITEM[:-2]],
                                   *self._capped(cur, cur.c.run, g.cap, NOTE_CODES["group_cap"])))
        cur = (sa.union_all(*parts) if len(parts) > 1 else parts[0]).cte("items")
        if caps and self.rules.max_score is not None:
            run = sa.func.sum(cur.c.v).over(partition_by=[cur.c.lead_id],
                                            order_by=[cur.c.t, cur.c.src, cur.c.source_id, cur.c.seq], rows=(None, 0))
            cur = sa.select(*[cur.c[n] for n in ITEM], run.label("run")).cte("total_run")
            cur = sa.select(*[cur.c[n] for n in ITEM[:-2]],
                            *self._capped(cur, cur.c.run, self.rules.max_score, NOTE_CODES["max_score"])).cte("total")
        # "CASE x WHEN ...": x is read once per row, not once per branch
        rules = {gi * 1000 + ri: (g, r) for gi, g in enumerate(groups) for ri, r in enumerate(g.rules)}
        group_name = sa.case({seq: g.name for seq, (g, _r) in rules.items()}, value=cur.c.seq, else_=sa.null())
        rule_name = sa.case({seq: r.name for seq, (_g, r) in rules.items()}, value=cur.c.seq, else_=sa.null())
        points = sa.case({seq: _f(r.points) for seq, (_g, r) in rules.items()}, value=cur.c.seq, else_=sa.null())
        note = sa.case({code: text for text, code in NOTE_CODES.items()}, value=cur.c.note, else_=sa.null())
        source = sa.case({0: LEAD, 1: ACTIVITY}, value=cur.c.src, else_="event")
        return sa.select(
            cur.c.lead_id, group_name.label("group_name"), rule_name.label("rule_name"),
            source.label("source_entity"), cur.c.source_id, from_epoch(cur.c.t).label("at"),
            sa.cast(points, sa.Float).label("points"), cur.c.v.label("effective"), note.label("note"), *extra,
        )


    # -- score ----------------------------------------------------------------------------------
    def score_values(self, now: Any = None) -> dict[str, Any]:
        """SET clause of the lead: the rounded ledger sum and the time (the grade follows from it)."""
        ledger = self.crm.system_tables[LEDGER]
        total = (
            sa.select(sa.func.coalesce(sa.func.sum(ledger.c.effective), 0.0))
            .where(ledger.c.lead_id == self.lead.c.id)
            .scalar_subquery()
        )
        return {SCORE: sa.func.round(sa.cast(total, sa.Numeric(18, 6)), 2), UPDATED: self.now if now is None else now}

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

    For many leads at once (a chunk of a full recompute) the ledger is first written without the
    groups' caps and ``max_score``: their windows are the largest sorts of the pipeline, yet a cap
    changes nothing for a lead whose positive points under it add up to at most the cap (each item
    then fits below it). One pass over the ledger's lead index (no sort) finds the leads above a
    cap, and only they are written again with every cap: the result is the same as with the
    whole pipeline at once.
    """
    if scope.ids is not None and 0 < len(scope.ids) <= SMALL_SCOPE:
        kept = _kept_statements(crm, conn.dialect.name, rules, now)
        if kept is not None:
            now = now if now.tzinfo else now.replace(tzinfo=dt.UTC)
            params = {"sc_ids": list(scope.ids), "sc_now_epoch": now.timestamp(), "sc_now": now}
            for stmt in kept:
                conn.execute(stmt, params)
            return
    pipe = Pipeline(crm, rules, now)
    ledger = crm.system_tables[LEDGER]
    cols = ["lead_id", "group_name", "rule_name", "source_entity", "source_id", "at", "points", "effective", "note",
            "computed_at"]
    computed_at = sa.literal(pipe.now, ledger.c.computed_at.type).label("computed_at")

    def write(where: Scope, caps: bool) -> None:
        conn.execute(sa.delete(ledger).where(where.on(ledger.c.lead_id)))
        conn.execute(sa.insert(ledger).from_select(cols, pipe.select(where, computed_at, caps=caps)))

    capped = [(g.cap, ledger.c.group_name == g.name) for g in pipe.capped_groups()]
    if rules.max_score is not None:
        capped.append((rules.max_score, sa.true()))
    if not capped or (scope.ids is not None and len(scope.ids) <= SMALL_SCOPE):
        write(scope, True)
    else:
        write(scope, False)
        over = [r[0] for r in conn.execute(
            sa.select(ledger.c.lead_id).where(scope.on(ledger.c.lead_id)).group_by(ledger.c.lead_id)
            .having(sa.or_(*[_positive(ledger, which) > _below(cap) for cap, which in capped]))
        )]
        if len(over) * 2 > scope.size:  # (caps that most leads reach) the whole scope again, at once
            write(scope, True)
        else:
            for start in range(0, len(over), REDO_IDS):
                write(Scope(ids=over[start:start + REDO_IDS]), True)
    lead = pipe.lead
    conn.execute(sa.update(lead).where(scope.on(lead.c.id)).values(pipe.score_values()))
    grades = pipe.grade_values()
    if grades:  # a second, cheap UPDATE: in the first, each CASE branch would re-run the sum
        conn.execute(sa.update(lead).where(scope.on(lead.c.id)).values(grades))
    record_thresholds(crm, conn, rules, scope, pipe.now)


SMALL_SCOPE = 100
"""Up to this many leads (a save, a batch of reminders), the whole pipeline runs at once."""
REDO_IDS = 500
"""Leads above a cap are written again this many at a time (bound parameters of one statement)."""


def _positive(ledger: sa.Table, which: Any) -> Any:
    """The sum of a lead's positive ledger points (those ``which`` selects)."""
    return sa.func.sum(sa.case((which & (ledger.c.effective > 0), ledger.c.effective), else_=0.0))


def _below(cap: float) -> float:
    # a margin, so that sums rounded differently than the pipeline's running sums never hide a lead
    return cap - 1e-6 * max(1.0, abs(cap))


def record_thresholds(crm: CRM, conn: sa.Connection, rules: ScoringRules, scope: Scope, now: dt.datetime) -> None:
    """Mark thresholds newly reached (actions pending) and forget those no longer reached."""
    state = crm.system_tables[THRESHOLD]
    for stmt in _threshold_statements(crm, conn.dialect.name, rules, scope, sa.literal(now, state.c.reached_at.type)):
        conn.execute(stmt)


def _threshold_statements(crm: CRM, dialect: str, rules: ScoringRules, scope: Scope, now: Any) -> list[Any]:
    lead = crm.schema.tables[LEAD]
    state = crm.system_tables[THRESHOLD]
    insert = pg_dialect.insert if dialect == "postgresql" else sqlite_dialect.insert
    out: list[Any] = []
    for t in rules.thresholds:
        reached = (
            sa.select(lead.c.id, sa.literal(t.name, sa.String), now, sa.cast(lead.c[SCORE], sa.Float), sa.false())
            .where(scope.on(lead.c.id), lead.c[SCORE] >= t.min)
            .where(~sa.exists().where(state.c.lead_id == lead.c.id, state.c.name == t.name))
        )
        stmt = insert(state).from_select(["lead_id", "name", "reached_at", "score", "actions_done"], reached)
        out.append(stmt.on_conflict_do_nothing(index_elements=["lead_id", "name"]))
        below = sa.select(lead.c.id).where(scope.on(lead.c.id), sa.or_(lead.c[SCORE] < t.min, lead.c[SCORE].is_(None)))
        out.append(sa.delete(state).where(state.c.name == t.name, state.c.lead_id.in_(below)))
    return out


# Statements of a save's recompute, kept per rules object, tables and dialect: building the
# pipeline costs far more than running it for one lead (about 30 ms of Python per save). Rules
# whose conditions use $now/$today are not kept (those values are inlined when built).
_KEPT: dict[tuple[int, int, int, str], tuple[Any, Any, list[Any]]] = {}
_KEPT_MAX = 16


def _uses_now(rules: ScoringRules) -> bool:
    import json

    for group in rules.groups:
        for rule in group.rules:
            if rule.when is not None:
                text = json.dumps(rule.when.source, default=str)
                if "$now" in text or "$today" in text:
                    return True
    return False


def _kept_statements(crm: CRM, dialect: str, rules: ScoringRules, now: dt.datetime) -> list[Any] | None:
    """The statements that recompute a few leads (parameters ``sc_ids``, ``sc_now_epoch``,
    ``sc_now``), built once; None when they cannot be kept."""
    pipe = Pipeline(crm, rules, now, bound=True)
    key = (id(rules), id(pipe.tables), pipe.offset, dialect)
    hit = _KEPT.get(key)
    if hit is not None and hit[0] is rules and hit[1] is pipe.tables:
        return hit[2]
    if _uses_now(rules):
        return None
    ledger = crm.system_tables[LEDGER]
    lead = pipe.lead
    scope = Scope(ids=(), bound=True)
    cols = ["lead_id", "group_name", "rule_name", "source_entity", "source_id", "at", "points", "effective", "note",
            "computed_at"]
    stamp = sa.bindparam("sc_now", type_=ledger.c.computed_at.type)
    stmts = [
        sa.delete(ledger).where(scope.on(ledger.c.lead_id)),
        sa.insert(ledger).from_select(cols, pipe.select(scope, stamp.label("computed_at"), caps=True)),
        sa.update(lead).where(scope.on(lead.c.id)).values(
            pipe.score_values(sa.bindparam("sc_now", type_=lead.c[UPDATED].type))),
    ]
    grades = pipe.grade_values()
    if grades:
        stmts.append(sa.update(lead).where(scope.on(lead.c.id)).values(grades))
    state = crm.system_tables[THRESHOLD]
    stmts += _threshold_statements(crm, dialect, rules, scope, sa.bindparam("sc_now", type_=state.c.reached_at.type))
    if len(_KEPT) >= _KEPT_MAX:
        _KEPT.clear()
    _KEPT[key] = (rules, pipe.tables, stmts)
    return stmts


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
