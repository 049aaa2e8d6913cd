"""Report benchmark (a script, not a test): the forecast and RFM queries over a million deals on SQLite.

Loads ``--rows`` deals (default 1,000,000) into a SQLite file kept between runs: 20,000 accounts,
40 owners in 5 teams, the demo's 7 stages, 60 % open / 25 % won / 15 % lost, close dates over
2024–2027, and line items (8 products in 3 categories) on every fifth deal. Rows are inserted in
bulk (the benchmark is about the report queries, not about RecordStore writes).

Then times, each the median of ``--repeat`` runs after a warm-up:

a. ``forecast`` by month over twelve months, as an admin (every deal);
b. the same as a sales rep with team scope (``read: team``: owner = me OR team IN my teams);
c. ``forecast`` by product category (line items joined), as an admin;
d. ``rfm`` ranking (GROUP BY account + window functions), as an admin;
e. the floor for (a): the same GROUP BY (open and won deals, by month and status) written by hand and
   run through the stdlib ``sqlite3``.

The issue's target is under one second for the forecast and RFM reports. Results are printed and
written to ``bench/results/bench_reports.txt``.

Usage::

    python bench/bench_reports.py [--rows 1000000] [--db /tmp/crmkit_bench_reports.db] [--repeat 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

BATCH = 20_000
ACCOUNTS = 20_000
OWNERS = 40
TEAMS = 5
RESULTS = Path(__file__).resolve().parent / "results" / "bench_reports.txt"
STAGES = [("初回接触", 10, False, False), ("ヒアリング", 20, False, False), ("提案", 40, False, False),
          ("見積提示", 60, False, False), ("交渉", 80, False, False), ("受注", 100, True, True),
          ("失注", 0, True, False)]


def _setup(crm: Any) -> dict[str, list[int]]:
    """Teams, users, stages, categories, products and accounts (once)."""
    from crmkit.core.actors import SYSTEM

    t = crm.metadata.tables
    with crm.engine.connect() as conn:
        if conn.execute(sa.select(sa.func.count()).select_from(t["deal_stage"])).scalar_one():
            ids = {name: [r[0] for r in conn.execute(sa.select(t[name].c.id).order_by(t[name].c.id))]
                   for name in ("team", "user", "deal_stage", "product", "account")}
            return ids
    store = crm.records
    with store.transaction(actor=SYSTEM, source="bench") as tx:
        teams = [tx.create("team", {"name": f"Team {i}"})["id"] for i in range(TEAMS)]
        users = [tx.create("user", {"username": f"rep{i}", "display_name": f"Rep {i}", "role": "sales_rep",
                                    "primary_team": teams[i % TEAMS]})["id"] for i in range(OWNERS)]
        stages = [tx.create("deal_stage", {"name": n, "sort_order": i, "probability": p, "is_closed": c,
                                           "is_won": w})["id"] for i, (n, p, c, w) in enumerate(STAGES)]
        cats = [tx.create("product_category", {"name": n})["id"] for n in ("Software", "Hardware", "Services")]
        products = [tx.create("product", {"name": f"P{i}", "unit_price": 10_000 * (i + 1),
                                          "category": cats[i % 3]})["id"] for i in range(8)]
    now = dt.datetime.now(dt.UTC)
    with crm.engine.begin() as conn:
        conn.execute(t["account"].insert(), [
            {"name": f"Account {i}", "created_at": now, "updated_at": now, "version": 1, "owner": users[i % OWNERS],
             "team": teams[i % OWNERS % TEAMS]} for i in range(ACCOUNTS)])
        accounts = [r[0] for r in conn.execute(sa.select(t["account"].c.id))]
    return {"team": teams, "user": users, "deal_stage": stages, "product": products, "account": accounts}


def load(crm: Any, rows: int) -> dict[str, list[int]]:
    """Make the deal table hold at least ``rows`` deals."""
    from crmkit.core.tables import fts_table_name

    ids = _setup(crm)
    deal, line = crm.metadata.tables["deal"], crm.metadata.tables["deal_line_item"]
    with crm.engine.connect() as conn:
        have = conn.execute(sa.select(sa.func.count()).select_from(deal)).scalar_one()
    if have >= rows:
        print(f"deal table already holds {have:,} rows: no load")
        return ids
    with crm.engine.begin() as conn:
        conn.exec_driver_sql(f'DROP TRIGGER IF EXISTS "{fts_table_name("deal")}_ai"')
    now = dt.datetime.now(dt.UTC)
    first = dt.date(2024, 1, 1)
    t0 = time.perf_counter()
    next_id = have + 1
    for lo in range(have, rows, BATCH):
        rng = random.Random(lo)
        deals, lines = [], []
        for i in range(lo, min(lo + BATCH, rows)):
            roll = rng.random()
            status = "open" if roll < 0.6 else ("won" if roll < 0.85 else "lost")
            stage_i = rng.randrange(5) if status == "open" else (5 if status == "won" else 6)
            owner_i = rng.randrange(OWNERS)
            amount = rng.randrange(10, 5000) * 1000
            prob = STAGES[stage_i][1]
            deals.append({
                "id": next_id, "name": f"Deal {i}", "account": ids["account"][rng.randrange(ACCOUNTS)],
                "stage": ids["deal_stage"][stage_i], "status": status, "amount": amount, "probability": prob,
                "expected_revenue": amount * prob / 100, "close_date": first + dt.timedelta(days=rng.randrange(1461)),
                "owner": ids["user"][owner_i], "team": ids["team"][owner_i % TEAMS],
                "created_at": now, "updated_at": now, "version": 1,
            })
            if i % 5 == 0:
                product = ids["product"][rng.randrange(len(ids["product"]))]
                lines.append({"deal": next_id, "product": product, "quantity": 1, "unit_price": amount,
                              "discount": 0, "line_total": amount, "sort_order": 0,
                              "created_at": now, "updated_at": now, "version": 1})
            next_id += 1
        with crm.engine.begin() as conn:
            conn.execute(deal.insert(), deals)
            if lines:
                conn.execute(line.insert(), lines)
        if (lo // BATCH) % 10 == 9:
            print(f"  {lo + len(deals):,} deals, {time.perf_counter() - t0:.1f} s", flush=True)
    with crm.engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    print(f"loaded {rows - have:,} deals in {time.perf_counter() - t0:.1f} s")
    return ids


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def median_ms(fn: Callable[[], Any], repeat: int, clock: Callable[[], float] = time.perf_counter) -> float:
    fn()  # warm-up (page cache, statement cache)
    times = []
    for _ in range(repeat):
        t = clock()
        fn()
        times.append((clock() - t) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="deals to load (default 1,000,000)")
    parser.add_argument("--db", default="/tmp/crmkit_bench_reports.db", help="SQLite file (kept between runs)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per case (median reported)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or this process's CPU time (steadier on a busy machine; SQLite runs "
                             "in-process, so its work is counted either way)")
    args = parser.parse_args(argv)

    from crmkit import CRM
    from crmkit.core.actors import SYSTEM, Actor
    from crmkit.core.migrations import apply_migration
    from crmkit.plugins.forecast import ForecastQuery, forecast
    from crmkit.plugins.reports import rfm

    with tempfile.TemporaryDirectory() as project, \
            CRM(project, database_url=f"sqlite:///{args.db}", entry_points=False) as crm:
        apply_migration(crm)
        ids = load(crm, args.rows)
        with crm.engine.connect() as conn:
            total = conn.exec_driver_sql("SELECT count(*) FROM deal").scalar_one()
        rep = Actor(ids["user"][0], "rep0", "sales_rep", frozenset({ids["team"][0]}), ids["team"][0])
        q = ForecastQuery(start=dt.date(2026, 1, 1), end=dt.date(2026, 12, 31))
        qc = ForecastQuery(start=dt.date(2026, 1, 1), end=dt.date(2026, 12, 31), group="category")
        raw = sqlite3.connect(args.db)
        floor_sql = ("SELECT strftime('%Y-%m', close_date) AS k, status, count(*), sum(coalesce(amount, 0)), "
                     "sum(coalesce(amount, 0) * coalesce(probability, 0)) / 100 FROM deal "
                     "WHERE status IN ('open', 'won') AND close_date BETWEEN '2026-01-01' AND '2026-12-31' "
                     "GROUP BY k, status")
        cases = [
            ("a. forecast by month (admin)", lambda: forecast(crm, SYSTEM, q)),
            ("b. forecast by month (rep, team scope)", lambda: forecast(crm, rep, q)),
            ("c. forecast by product category (admin)", lambda: forecast(crm, SYSTEM, qc)),
            ("d. RFM ranking (admin)", lambda: rfm(crm, SYSTEM, as_of=dt.date(2027, 12, 31))),
            ("e. floor for (a): hand-written sqlite3", lambda: raw.execute(floor_sql).fetchall()),
        ]
        lines = [f"deals: {total:,}  (SQLite {sqlite3.sqlite_version}; median of {args.repeat} runs, "
                 f"{args.clock} clock)"]
        results = {}
        for name, fn in cases:
            results[name] = median_ms(fn, args.repeat, CLOCKS[args.clock])
            lines.append(f"{name:<44} {results[name]:>9.1f} ms")
        a, e = results[cases[0][0]], results[cases[-1][0]]
        lines.append(f"ratio (a) / floor: {a / e:.2f}x")
        text = "\n".join(lines)
        print(text)
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
