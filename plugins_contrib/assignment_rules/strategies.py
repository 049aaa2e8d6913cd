"""The built-in assignment strategies: direct, round_robin, least_loaded, weighted, sticky.

A strategy gets an :class:`~plugins_contrib.assignment_rules.engine.AssignContext` and returns
``(user_id, reason)`` or None when nobody fits (the engine then tries the next rule). Strategies
that keep turns lock the rule's state row first (:meth:`AssignContext.lock_turn`), so concurrent
creations never see the same turn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

if TYPE_CHECKING:
    from plugins_contrib.assignment_rules.engine import AssignContext

Strategy = Callable[["AssignContext"], "tuple[int, str] | None"]


def direct(ctx: AssignContext) -> tuple[int, str] | None:
    """The rule's ``user``, when available."""
    cand = ctx.candidate_for_username(ctx.target.user or "")
    ctx.candidates = [cand]
    if cand.user_id is not None and (cand.available or ctx.target.ignore_availability):
        return cand.user_id, f"direct: {cand.username}"
    ctx.why = f"{cand.username}: {cand.reason}"
    return None


def _rotation(ctx: AssignContext, last: int | None) -> list[Any]:
    """Candidates in turn order: those after the last one first, then from the start."""
    pool = [c for c in ctx.candidates if c.user_id is not None]
    if last is None:
        return pool
    after = [c for c in pool if c.user_id > last]
    return after + [c for c in pool if c.user_id <= last]


def round_robin(ctx: AssignContext) -> tuple[int, str] | None:
    """The next available member after the one who got the last record of this rule."""
    last = ctx.lock_turn()
    for cand in _rotation(ctx, last):
        if cand.available or ctx.target.ignore_availability:
            ctx.set_turn(cand.user_id)
            return cand.user_id, f"round robin: next in turn ({len(ctx.candidates)} members)"
    ctx.why = "no member available"
    return None


def least_loaded(ctx: AssignContext) -> tuple[int, str] | None:
    """The available member with the fewest open records (ties: in turn)."""
    last = ctx.lock_turn()
    pool = _rotation(ctx, last)
    loads = ctx.open_counts([c.user_id for c in pool])
    best = None
    for cand in pool:
        cand.load = loads.get(cand.user_id, 0)
        if not (cand.available or ctx.target.ignore_availability):
            continue
        if best is None or cand.load < best.load:
            best = cand
    if best is None:
        ctx.why = "no member available"
        return None
    ctx.set_turn(best.user_id)
    return best.user_id, f"least loaded: {best.load} open"


def weighted(ctx: AssignContext) -> tuple[int, str] | None:
    """Members in proportion to their weights: the one furthest behind its share goes next."""
    ctx.lock_turn()
    counts = ctx.counts()
    best, best_key = None, None
    for i, cand in enumerate(c for c in ctx.candidates if c.user_id is not None):
        if not (cand.available or ctx.target.ignore_availability):
            continue
        weight = float(ctx.target.weights.get(cand.username, 1.0))
        key = ((counts.get(cand.user_id, 0) + 1) / weight, i)
        if best_key is None or key < best_key:
            best, best_key = cand, key
    if best is None:
        ctx.why = "no member available"
        return None
    ctx.bump(best.user_id)
    ctx.set_turn(best.user_id)
    weight = ctx.target.weights.get(best.username, 1)
    return best.user_id, f"weighted: weight {weight:g}, {counts.get(best.user_id, 0) + 1} so far"


def sticky(ctx: AssignContext) -> tuple[int, str] | None:
    """The owner of an existing record matching the new one (its account, an earlier lead)."""
    tables = ctx.crm.schema.tables
    tried = []
    for m in ctx.target.match:
        value = ctx.record.get(m["value"])
        if value in (None, ""):
            continue
        table = tables[m["entity"]]
        row = ctx.conn.execute(
            sa.select(table.c.id, table.c.owner)
            .where(table.c[m["field"]] == value, table.c.owner.is_not(None))
            .order_by(table.c.updated_at.desc(), table.c.id.desc()).limit(1)
        ).first()
        if row is None:
            tried.append(f"no {m['entity']} with {m['field']} = {value!r}")
            continue
        cand = ctx.candidate_for_id(row.owner)
        ctx.candidates = [cand]
        if cand.available or ctx.target.ignore_availability:
            return cand.user_id, f"sticky: owner of {m['entity']} #{row.id}"
        tried.append(f"owner of {m['entity']} #{row.id} ({cand.username}) {cand.reason}")
    ctx.why = "; ".join(tried) or "nothing to match on"
    return None


BUILTIN: dict[str, Strategy] = {
    "direct": direct,
    "round_robin": round_robin,
    "least_loaded": least_loaded,
    "weighted": weighted,
    "sticky": sticky,
}


def strategies(crm: Any) -> dict[str, Strategy]:
    """Every strategy: the built-ins plus ``register_assignment_strategies`` (cached per CRM)."""
    cached = crm.__dict__.get("_assignment_strategies")
    if cached is not None:
        return cached
    out = dict(BUILTIN)
    hook = getattr(crm.pm.hook, "register_assignment_strategies", None)
    if hook is not None:
        from crmkit.plugins import call_each

        for _plugin, found in call_each(crm.pm, "register_assignment_strategies", crm=crm):
            out.update(found)
    crm.__dict__["_assignment_strategies"] = out
    return out
